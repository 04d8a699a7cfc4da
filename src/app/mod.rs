//! Command line: every flag documented here is the `--help` text, and every serve setting can
//! also come from the environment (DSDL's variable names where they exist).

pub mod healthcheck;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::builder::BoolishValueParser;
use clap::{ArgAction, Parser, Subcommand, ValueEnum};

use crate::engine::recipe::{EvaluateArgs, TrainArgs};
use crate::engine::suppress::{Suppressions, BUILTIN_ALLOWLIST};
use crate::http;
use crate::http::auth::Token;
use crate::http::limits::{Limits, DEFAULT_MAX_CONCURRENT_REQUESTS, DEFAULT_REQUEST_TIMEOUT_SECS};
use crate::http::state;
use crate::http::state::{AppState, ServerConfig};
use crate::http::Transport;
use crate::model::convert::{self, ESCU_MODEL_NAME};
use crate::store::{ModelStore, Registry};

#[derive(Parser, Debug)]
#[command(
    name = "dnsexfil",
    version,
    about = "DNS data-exfiltration detection service, a drop-in for Splunk's DSDL container"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Serve the DSDL container protocol, the /v1 REST API, health, readiness and metrics over
    /// HTTPS or HTTP.
    #[command(
        after_help = "Environment:\n  api_token    the token every /fit, /apply, /summary, /, /compute and /v1 request \
must send as `Authorization: <token>` or `Authorization: Bearer <token>` (unset or empty: all are refused \
with 401, as the stock container does). Read from the environment only, so it never shows in a process list.\n  \
RUST_LOG     log level (default info), e.g. RUST_LOG=dnsexfil=debug"
    )]
    Serve(ServeArgs),
    /// Convert Splunk's published artifact (tarball, .pt, or DSDL model directory) to a model file.
    Convert(ConvertArgs),
    /// Train a dnsexfil-v4 (or -v5, -v3, -v2) model from a labelled DNS log (events.csv + labels.csv).
    Train(TrainArgs),
    /// Leave-one-tool-out evaluation: for each tool, train without it and score it, with
    /// benign look-alikes, on held-out hosts; prints the table of the model card.
    Evaluate(EvaluateArgs),
    /// Write a synthetic DSDL batch (CSV, or the whole /apply envelope) for benchmarks and load tests.
    Synth(SynthArgs),
    /// Print the service's OpenAPI 3 document (what GET /openapi.json serves):
    /// `dnsexfil openapi > openapi/openapi.json` regenerates the committed copy.
    Openapi,
    /// Check that the local service answers GET /healthz (the container image's HEALTHCHECK):
    /// exit 0 when it answers 200, 1 otherwise. Follows the service's DNSEXFIL_HOST,
    /// DNSEXFIL_PORT and ENABLE_HTTPS; any certificate is accepted.
    Healthcheck(crate::app::healthcheck::HealthcheckArgs),
}

pub fn run_train(args: &TrainArgs) -> anyhow::Result<()> {
    crate::engine::training::run_offline(args)
}

pub fn run_evaluate(args: &EvaluateArgs) -> anyhow::Result<()> {
    crate::engine::evaluation::run(args)
}

#[derive(clap::Args, Debug)]
pub struct SynthArgs {
    /// Number of CSV rows (events) in the batch.
    #[arg(long, default_value_t = 1000)]
    pub rows: usize,
    /// Seed: the same seed always gives the same batch.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Write the JSON envelope `POST /apply` takes instead of bare CSV.
    #[arg(long)]
    pub envelope: bool,
    /// Model name to put in the envelope.
    #[arg(long, default_value = ESCU_MODEL_NAME)]
    pub model_name: String,
    /// Output file (default: standard output).
    #[arg(short, long)]
    pub output: Option<PathBuf>,
}

pub fn run_synth(args: &SynthArgs) -> anyhow::Result<()> {
    let csv = crate::data::synth::dsdl_csv(args.rows, args.seed);
    let text = if args.envelope {
        crate::data::synth::dsdl_envelope(&csv, &args.model_name)
    } else {
        csv
    };
    match &args.output {
        Some(path) => crate::util::fs::write_atomic(path, text.as_bytes())
            .with_context(|| format!("cannot write {}", path.display())),
        None => {
            use std::io::Write;
            std::io::stdout()
                .write_all(text.as_bytes())
                .context("cannot write to standard output")
        }
    }
}

/// Default for `--max-body-mb` (see there).
pub const DEFAULT_MAX_BODY_MB: usize = 160;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "DNSEXFIL_HOST", default_value = "0.0.0.0")]
    pub host: String,
    /// Port to listen on (DSDL's containers use 5000).
    #[arg(long, env = "DNSEXFIL_PORT", default_value_t = 5000)]
    pub port: u16,
    /// Model to load at start-up: a .safetensors model file, or Splunk's artifact tarball / .pt
    /// (converted in memory). Repeat the flag (or separate with commas) for several models.
    #[arg(long = "model", env = "DNSEXFIL_MODELS", value_delimiter = ',')]
    pub models: Vec<PathBuf>,
    /// Do not load the built-in default model (dnsexfil_v7); serve only --model files and the
    /// model directory.
    #[arg(long, env = "DNSEXFIL_NO_DEFAULT_MODEL")]
    pub no_default_model: bool,
    /// Data directory: models live in <DATA_DIR>/app/model/data and staged data in
    /// <DATA_DIR>/notebooks/data, like /srv in the stock DSDL image.
    #[arg(long, env = "DNSEXFIL_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,
    /// Model store directory (default <DATA_DIR>/app/model/data). Every *.safetensors in it is
    /// loaded at start-up, and a DSDL-deployed ESCU .pt there is converted in memory.
    #[arg(long, env = "DNSEXFIL_MODEL_DIR")]
    pub model_dir: Option<PathBuf>,
    /// Where `/fit` with mode=stage writes <model_name>.csv and .json (default <DATA_DIR>/notebooks/data).
    #[arg(long, env = "DNSEXFIL_STAGING_DIR")]
    pub staging_dir: Option<PathBuf>,
    /// Serve HTTPS (true) or plain HTTP (false), like DSDL's ENABLE_HTTPS.
    #[arg(long, env = "ENABLE_HTTPS", default_value = "true", value_parser = BoolishValueParser::new(), action = ArgAction::Set)]
    pub enable_https: bool,
    /// TLS certificate (PEM). Without a cert/key pair, a self-signed pair is generated once into
    /// <DATA_DIR>/tls/self-signed.pem and reused at every start (replaced when unreadable or
    /// within 30 days of expiry); its SHA-256 fingerprint is logged.
    #[arg(long, env = "API_SSL_CERT", requires = "ssl_key")]
    pub ssl_cert: Option<PathBuf>,
    /// TLS private key (PEM) for --ssl-cert.
    #[arg(long, env = "API_SSL_KEY", requires = "ssl_cert")]
    pub ssl_key: Option<PathBuf>,
    /// Extra DNS names or addresses for a generated self-signed certificate, beside localhost,
    /// 127.0.0.1 and ::1 (comma-separated): the names clients connect by, for those that check
    /// the host name. Used when the certificate is generated; a stored one is kept.
    #[arg(long = "tls-name", env = "DNSEXFIL_TLS_NAMES", value_delimiter = ',')]
    pub tls_names: Vec<String>,
    /// Largest request body accepted, in MiB (a 100,000-row ESCU batch is about 6 MiB). The
    /// default takes an hour of 100,000 rows of the longest legal DNS names in presentation form
    /// (`\DDD` escapes, then JSON's), about 122 MiB as Splunk sends it: a heavy tunnel must not
    /// switch its own detection off.
    #[arg(long, env = "DNSEXFIL_MAX_BODY_MB", default_value_t = DEFAULT_MAX_BODY_MB)]
    pub max_body_mb: usize,
    /// Requests computed at once (features and network); more wait their turn. Default: the CPUs
    /// this process may use, container CPU quota included.
    #[arg(long, env = "DNSEXFIL_COMPUTE_THREADS")]
    pub compute_threads: Option<usize>,
    /// Largest number of CSV rows one request may carry (ESCU sends up to max_inputs = 100,000).
    #[arg(long, env = "DNSEXFIL_MAX_ROWS", default_value_t = 1_000_000)]
    pub max_rows: usize,
    /// Seconds to let requests in flight finish after SIGTERM or Ctrl-C.
    #[arg(long, env = "DNSEXFIL_SHUTDOWN_GRACE_SECS", default_value_t = 30)]
    pub shutdown_grace_secs: u64,
    /// Allowlist file: one domain or suffix per line (`example.com` covers every name under it),
    /// `#` comments. Scored rows under it keep their probability, get label 0, and say why in
    /// the `suppressed_by` column. Added to the built-in list.
    #[arg(long, env = "DNSEXFIL_ALLOWLIST")]
    pub allowlist: Option<PathBuf>,
    /// Do not use the built-in allowlist of well-known benign high-entropy services.
    #[arg(long, env = "DNSEXFIL_NO_DEFAULT_ALLOWLIST")]
    pub no_default_allowlist: bool,
    /// Muted sources file: one source per line, exact (`10.0.0.5`, `host-7`) or a network
    /// (`10.1.0.0/16`); a `# comment` after an entry is shown as part of the reason.
    #[arg(long, env = "DNSEXFIL_MUTED_SOURCES")]
    pub muted_sources: Option<PathBuf>,
    /// Seconds between scans of the model store for models another replica fitted or someone
    /// copied in (new or changed files are loaded; 0 turns scanning off). An `/apply` naming an
    /// unknown model also looks at the store once.
    #[arg(long, env = "DNSEXFIL_STORE_RESCAN_SECS", default_value_t = 10)]
    pub store_rescan_secs: u64,
    /// Largest number of CSV rows one `/fit` may train on (training memory: about 4 KiB a row
    /// when fine-tuning the ESCU model, less for our own schemas).
    #[arg(long, env = "DNSEXFIL_MAX_FIT_ROWS", default_value_t = 200_000)]
    pub max_fit_rows: usize,
    /// Longest a `/fit` may train, in seconds (1 or more); a longer one stops with an error and
    /// saves nothing.
    #[arg(long, env = "DNSEXFIL_FIT_TIME_LIMIT_SECS", default_value_t = 900,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub fit_time_limit_secs: u64,
    /// Requests in flight at once on the DSDL and /v1 routes; more are refused at once with 429
    /// (health, readiness and metrics are exempt).
    #[arg(long, env = "DNSEXFIL_MAX_CONCURRENT_REQUESTS", default_value_t = DEFAULT_MAX_CONCURRENT_REQUESTS,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_concurrent_requests: usize,
    /// MiB of request bodies all requests in flight may hold together (at least --max-body-mb);
    /// a body that would go over is refused with 503 and Retry-After, so many large requests at
    /// once cannot exhaust the memory.
    #[arg(long, env = "DNSEXFIL_MAX_BODIES_IN_FLIGHT_MB", default_value_t = crate::http::limits::DEFAULT_MAX_BODIES_IN_FLIGHT_MB,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1 << 20))]
    pub max_bodies_in_flight_mb: usize,
    /// Connections open at once; one more is closed at once (before its TLS handshake).
    #[arg(long, env = "DNSEXFIL_MAX_CONNECTIONS", default_value_t = crate::http::connections::DEFAULT_MAX_CONNECTIONS,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_connections: usize,
    /// Seconds a client may take to send a request's headers (an idle keep-alive connection is
    /// closed after as long); a slower one is disconnected.
    #[arg(long, env = "DNSEXFIL_HEADER_READ_TIMEOUT_SECS", default_value_t = crate::http::connections::DEFAULT_HEADER_READ_TIMEOUT_SECS,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub header_read_timeout_secs: u64,
    /// Seconds a client may leave its answer unread (taking no byte of it) before the
    /// connection is closed: a client that never reads would otherwise hold its request's
    /// in-flight slot and its answer's memory.
    #[arg(long, env = "DNSEXFIL_WRITE_TIMEOUT_SECS", default_value_t = crate::http::connections::DEFAULT_WRITE_TIMEOUT_SECS,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub write_timeout_secs: u64,
    /// Longest time one request may take, body upload included, before it is answered 503
    /// (on POST /fit only the body upload: training has its own limit).
    #[arg(long, env = "DNSEXFIL_REQUEST_TIMEOUT_SECS", default_value_t = DEFAULT_REQUEST_TIMEOUT_SECS,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub request_timeout_secs: u64,
    /// Largest model file loaded, in MiB (models are about 20 to 100 KiB): a larger file in the
    /// store is skipped with a message instead of being read into memory. Only regular files
    /// are read; a FIFO, device or directory named *.safetensors is skipped and logged.
    #[arg(long, env = "DNSEXFIL_MAX_MODEL_FILE_MB", default_value_t = 64,
          value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub max_model_file_mb: u64,
    /// What the service remembers of each source across requests (for `GET /v1/history/{src}`):
    /// `memory` (this process; lost at restart), `redis://host:port/db` (shared by replicas), or
    /// `off`. Only events scored by models of our own schemas are remembered (not the ESCU
    /// model's). DNS names are personal data in many places: see docs/history.md on retention.
    #[arg(long, env = "DNSEXFIL_HISTORY", default_value = "memory")]
    pub history: String,
    /// How long the history remembers an event, in seconds (default 24 hours).
    #[arg(long, env = "DNSEXFIL_HISTORY_WINDOW_SECS", default_value_t = 86_400,
          value_parser = clap::value_parser!(i64).range(60..=30 * 86_400))]
    pub history_window_secs: i64,
    /// The history's time buckets, in seconds: a name queried again within one counts once.
    #[arg(long, env = "DNSEXFIL_HISTORY_BUCKET_SECS", default_value_t = 300,
          value_parser = clap::value_parser!(i64).range(1..=3600))]
    pub history_bucket_secs: i64,
    /// Most MiB the in-process history may hold; past it, the sources seen longest ago are
    /// evicted whole (counted in /metrics). Redis is bounded by its own maxmemory.
    #[arg(long, env = "DNSEXFIL_HISTORY_MAX_MB", default_value_t = 256,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1 << 20))]
    pub history_max_mb: usize,
    /// Keep the in-process history across restarts: written to
    /// <DATA_DIR>/history/snapshot.json (owner-only, atomically) at shutdown and read back at
    /// start, less what left the window meanwhile. Only with --history memory.
    #[arg(long, env = "DNSEXFIL_HISTORY_SNAPSHOT", default_value = "false", value_parser = BoolishValueParser::new(), action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub history_snapshot: bool,
    /// Log format: text for people, json for log pipelines. The level comes from RUST_LOG (default info).
    #[arg(long, env = "DNSEXFIL_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

/// The history store `--history` names. Redis need not be up: until it answers, the service
/// runs degraded (scores from each request alone) and says so in its log and metrics.
fn open_history(args: &ServeArgs) -> anyhow::Result<crate::history::History> {
    use crate::history::{History, HistoryConfig};
    if args.history_bucket_secs > args.history_window_secs {
        bail!(
            "--history-bucket-secs ({}) is longer than --history-window-secs ({}); use buckets shorter than the window",
            args.history_bucket_secs,
            args.history_window_secs
        );
    }
    let config = HistoryConfig {
        window_seconds: args.history_window_secs,
        bucket_seconds: args.history_bucket_secs,
        max_bytes: args.history_max_mb << 20,
    };
    Ok(match args.history.as_str() {
        "off" => History::off(),
        "memory" => History::memory(config),
        url if url.starts_with("redis://") => {
            let store = crate::history::redis::RedisHistory::new(url, config)
                .map_err(|e| anyhow::anyhow!("--history: {e}"))?;
            History::redis(store, tokio::runtime::Handle::current())
        }
        other => bail!(
            "--history `{}` is not a history store: use memory, off, or redis://host:port/db",
            crate::util::clip(other, 100)
        ),
    })
}

/// With `--history-snapshot`: restores the in-process history from the data directory's
/// snapshot and returns its path, where shutdown writes it again. An unreadable snapshot does
/// not stop the service: it is moved aside (`.unreadable`), named in the log, and the history
/// starts empty.
fn history_snapshot(
    args: &ServeArgs,
    history: &crate::history::History,
) -> anyhow::Result<Option<PathBuf>> {
    if !args.history_snapshot {
        return Ok(None);
    }
    let Some(store) = history.in_process() else {
        bail!(
            "--history-snapshot keeps the in-process history, but --history is `{}`; use --history memory, or drop --history-snapshot (Redis keeps its own data)",
            history.kind()
        );
    };
    let path = args.data_dir.join("history").join("snapshot.json");
    match crate::history::snapshot::restore(store, &path, crate::history::unix_now()) {
        Ok(Some(restored)) => tracing::info!(path = %path.display(), sources = restored.sources,
            entries = restored.entries, skipped = restored.skipped, "history restored"),
        Ok(None) => {
            tracing::info!(path = %path.display(), "no history snapshot yet: starting empty")
        }
        Err(error) => {
            let aside = path.with_extension("json.unreadable");
            let moved = std::fs::rename(&path, &aside).is_ok();
            tracing::error!(%error, moved_to = %if moved { aside.display().to_string() } else { "(left in place)".into() },
                "history snapshot not restored: starting with an empty history");
        }
    }
    Ok(Some(path))
}

/// Says what became of the stored self-signed certificate: reused, generated (and why), or not
/// storable (then it changes at every start, which breaks clients that pin it).
fn log_stored_certificate(stored: &crate::http::tls::StoredTls) {
    use crate::http::tls::StoredOutcome;
    let expires = crate::http::tls::date_text(stored.not_after);
    let file = stored.pair_file.display();
    let cert = stored.cert_file.display();
    match &stored.outcome {
        StoredOutcome::Reused => {
            tracing::info!(%file, %cert, %expires, "self-signed TLS certificate reused")
        }
        StoredOutcome::Generated { reason } if reason.starts_with("none") => tracing::info!(
            %file, %cert, %expires,
            "self-signed TLS certificate generated and stored ({reason}); it is reused at every start"
        ),
        StoredOutcome::Generated { reason } => tracing::warn!(
            %file, %cert, %expires,
            "self-signed TLS certificate replaced: {reason}; clients that pinned the previous one need the new certificate"
        ),
        StoredOutcome::NotStored { problem } => tracing::warn!(
            %expires,
            "self-signed TLS certificate generated for this run only ({problem}): it changes at every start, so clients cannot pin it; make the data directory writable or pass --ssl-cert/--ssl-key"
        ),
    }
    if !stored.missing_names.is_empty() {
        tracing::warn!(
            %file,
            names = ?stored.missing_names,
            "the stored self-signed certificate does not name these hosts (it was generated before they were set); delete the file to generate one that does"
        );
    }
}

/// Every `every`, loads models that appeared or changed in the store (fitted by another replica).
fn spawn_store_rescan(registry: Arc<Registry>, dir: PathBuf, every: Duration) {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            ticks.tick().await;
            let (registry, dir) = (registry.clone(), dir.clone());
            let scanned = tokio::task::spawn_blocking(move || registry.refresh_dir(&dir)).await;
            let Ok((loaded, failed)) = scanned else {
                continue;
            };
            for name in loaded {
                tracing::info!(model = %name, "model loaded from the store");
            }
            for (file, problem) in failed {
                tracing::warn!(file = %file.display(), %problem, "model file in the store skipped");
            }
        }
    });
}

#[derive(clap::Args, Debug)]
pub struct ConvertArgs {
    /// Splunk's artifact tarball (.tar.gz), the .pt inside it, or a DSDL model directory that holds
    /// the .pt flat or in a sub-folder.
    pub input: PathBuf,
    /// Model file to write (safetensors).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Model name requests select it by (default: the .pt file's name without extension).
    #[arg(long)]
    pub name: Option<String>,
}

pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Writes the OpenAPI document to standard output.
pub fn run_openapi() -> anyhow::Result<()> {
    use std::io::Write;
    std::io::stdout()
        .write_all(crate::http::openapi::document_json().as_bytes())
        .context("cannot write to standard output")
}

pub fn run_convert(args: &ConvertArgs) -> anyhow::Result<()> {
    let converted = convert::convert(&args.input, args.name.as_deref())?;
    crate::util::fs::write_atomic(&args.output, &converted.bytes)
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    println!(
        "wrote {}: model `{}`, schema {}, source {} (sha256 {}{})",
        args.output.display(),
        converted.info.name,
        converted.info.schema,
        converted.info.source_file,
        converted.info.source_sha256,
        if converted.is_published_artifact {
            ", Splunk's published ESCU artifact"
        } else {
            ", not the published ESCU artifact"
        }
    );
    let stem = args.output.file_stem().and_then(|s| s.to_str());
    if stem != Some(converted.info.name.as_str()) {
        // Not an error: `serve --model FILE` takes any name. The store is stricter.
        println!(
            "note: a model store (--model-dir) loads this file only as {}.safetensors, named after its model; `serve --model {}` takes it as it is",
            converted.info.name,
            args.output.display()
        );
    }
    Ok(())
}

/// The models the service starts with: the built-in one (unless told not to), `--model` files,
/// and the model store's. Reads files: run it on a blocking thread.
fn load_models(
    max_file_bytes: u64,
    no_default_model: bool,
    models: &[PathBuf],
    model_dir: &Path,
) -> anyhow::Result<Arc<Registry>> {
    let registry = Arc::new(Registry::with_max_file_bytes(max_file_bytes));
    if !no_default_model {
        // First, so a model of the same name from --model replaces it. The model directory
        // (the store) never replaces a model the service was started with.
        let name = registry
            .insert(crate::model::default_model()?)
            .info
            .name
            .clone();
        registry.pin(&name);
        tracing::info!(model = %name, "built-in default model loaded");
    }
    for path in models {
        let name = registry
            .load_file(path)
            .with_context(|| format!("cannot load --model {}", path.display()))?;
        registry.pin_from(&name, path);
        tracing::info!(model = %name, file = %path.display(), "model loaded");
    }
    for name in registry
        .load_dir(model_dir)
        .with_context(|| format!("cannot load the model directory {}", model_dir.display()))?
    {
        tracing::info!(model = %name, dir = %model_dir.display(), "model loaded");
    }
    Ok(registry)
}

pub async fn run_serve(args: ServeArgs) -> anyhow::Result<()> {
    let model_dir = args
        .model_dir
        .clone()
        .unwrap_or_else(|| args.data_dir.join("app/model/data"));
    let staging_dir = args
        .staging_dir
        .clone()
        .unwrap_or_else(|| args.data_dir.join("notebooks/data"));

    let store = ModelStore::new(&model_dir);
    let removed = store.remove_stale_temporaries();
    if removed > 0 {
        tracing::info!(removed, dir = %model_dir.display(), "removed leftovers of interrupted model saves");
    }
    // Model files are read on a blocking thread, each within a time limit (see `Registry`):
    // nothing that reads a file runs on an async worker.
    let (max_file_bytes, no_default_model) = (args.max_model_file_mb << 20, args.no_default_model);
    let (models, dir) = (args.models.clone(), model_dir.clone());
    let registry = tokio::task::spawn_blocking(move || {
        load_models(max_file_bytes, no_default_model, &models, &dir)
    })
    .await
    .context("model loading stopped")??;
    if registry.is_empty() {
        bail!(
            "no model to serve (--no-default-model is set). Convert Splunk's published artifact and pass the result with --model:\n  \
             dnsexfil convert {ESCU_MODEL_NAME}.tar.gz -o escu.safetensors\n  \
             dnsexfil serve --model escu.safetensors\n\
             (--model also takes the tarball or .pt directly; or put model files, named <model name>.safetensors, in {})",
            model_dir.display()
        );
    }

    let token_value = std::env::var("api_token").ok();
    // A secret created from a file often ends in a newline: an HTTP header cannot carry
    // surrounding whitespace, so such a token could never match. Trimmed, and said so.
    let untrimmed = token_value.as_deref().is_some_and(|v| v.trim() != v);
    let token = Token::from_env_value(token_value.map(|v| v.trim().to_string()));
    if untrimmed {
        tracing::warn!(
            "api_token starts or ends with whitespace (a newline, as in a secret created from a file?); it was trimmed, and clients must send it without; remove the whitespace from the secret to silence this warning"
        );
    }
    match token {
        Token::Set(_) => {}
        Token::Unset => tracing::warn!(
            "api_token is not set: every DSDL request will be refused with 401 `No token setup`"
        ),
        Token::Empty => tracing::warn!(
            "api_token is empty: every DSDL request will be refused with 401 `No token defined`"
        ),
    }
    if args.max_bodies_in_flight_mb < args.max_body_mb {
        bail!(
            "--max-bodies-in-flight-mb ({}) is smaller than --max-body-mb ({}): a body of the largest size allowed could never be accepted; raise --max-bodies-in-flight-mb (DNSEXFIL_MAX_BODIES_IN_FLIGHT_MB) or lower --max-body-mb",
            args.max_bodies_in_flight_mb,
            args.max_body_mb
        );
    }
    let config = ServerConfig {
        token,
        max_body_bytes: args
            .max_body_mb
            .checked_mul(1 << 20)
            .context("--max-body-mb is too large")?,
        max_rows: args.max_rows,
        staging_dir,
        model_store: Some(store),
        fit_time_limit: Duration::from_secs(args.fit_time_limit_secs),
        max_fit_rows: args.max_fit_rows,
        limits: Limits {
            max_concurrent_requests: args.max_concurrent_requests,
            request_timeout: Duration::from_secs(args.request_timeout_secs),
            max_body_bytes_in_flight: args.max_bodies_in_flight_mb << 20,
        },
    };
    let compute_threads = args
        .compute_threads
        .unwrap_or_else(state::default_compute_threads);
    let mut suppressions = Suppressions::none();
    if !args.no_default_allowlist {
        suppressions.add_allowlist(BUILTIN_ALLOWLIST, "built-in")?;
    }
    if let Some(path) = &args.allowlist {
        suppressions.add_allowlist_file(path)?;
    }
    if let Some(path) = &args.muted_sources {
        suppressions.add_mutes_file(path)?;
    }
    tracing::info!(
        allowlisted_domains = suppressions.domain_count(),
        muted_sources = suppressions.mute_count(),
        "suppressions"
    );
    let history = open_history(&args)?;
    let snapshot = history_snapshot(&args, &history)?;
    tracing::info!(
        history = history.kind(),
        window_secs = args.history_window_secs,
        bucket_secs = args.history_bucket_secs,
        max_mb = args.history_max_mb,
        "history"
    );
    // A long-window model without a history scores every source as one never seen before,
    // with more false alarms than a model that never reads it (docs/history.md).
    if !history.is_on() {
        for name in registry.names() {
            if registry
                .get(&name)
                .is_some_and(|model| model.info.schema.uses_prior())
            {
                tracing::warn!(
                    model = %name,
                    "this model reads the history's long window, but --history is off: it will score every source as new, with more false alarms; turn the history on (--history memory or redis://...) or use the default dnsexfil_v7"
                );
            }
        }
    }
    let state = AppState::new(registry, config, compute_threads)
        .with_suppressions(suppressions)
        .with_history(history.clone());
    let history_kept = history;
    if let Some(problem) = state
        .store_problem
        .lock()
        .expect("store problem lock")
        .as_ref()
    {
        tracing::warn!(dir = %model_dir.display(), %problem,
            "fits cannot be saved: /fit will refuse to train until the model store is a writable directory (--model-dir, --data-dir); scoring is not affected");
    }

    let transport = if args.enable_https {
        let tls = match (&args.ssl_cert, &args.ssl_key) {
            (Some(cert), Some(key)) => crate::http::tls::from_files(cert, key).await?,
            _ => {
                let mut names = vec![args.host.clone()];
                names.extend(args.tls_names.iter().cloned());
                let stored = crate::http::tls::self_signed_stored(&args.data_dir, &names).await?;
                log_stored_certificate(&stored);
                stored.tls
            }
        };
        tracing::info!(
            fingerprint_sha256 = %tls.fingerprint,
            self_signed = tls.self_signed,
            "TLS certificate"
        );
        Transport::Https(tls.config)
    } else {
        Transport::Http
    };

    if args.store_rescan_secs > 0 {
        spawn_store_rescan(
            state.registry.clone(),
            model_dir.clone(),
            Duration::from_secs(args.store_rescan_secs),
        );
    }

    let addr = format!("{}:{}", args.host, args.port);
    let listener = TcpListener::bind(&addr).with_context(|| format!("cannot listen on {addr}"))?;
    tracing::info!(
        address = %listener.local_addr()?,
        scheme = if args.enable_https { "https" } else { "http" },
        models = ?state.registry.names(),
        compute_threads,
        max_body_mb = args.max_body_mb,
        max_rows = args.max_rows,
        max_fit_rows = args.max_fit_rows,
        max_bodies_in_flight_mb = args.max_bodies_in_flight_mb,
        max_concurrent_requests = args.max_concurrent_requests,
        max_connections = args.max_connections,
        request_timeout_secs = args.request_timeout_secs,
        history = state.history.kind(),
        history_max_mb = args.history_max_mb,
        "listening"
    );
    http::serve(
        listener,
        transport,
        http::app(state),
        Duration::from_secs(args.shutdown_grace_secs),
        crate::http::connections::ConnectionSettings {
            max_open: args.max_connections,
            header_read_timeout: Duration::from_secs(args.header_read_timeout_secs),
            write_timeout: Duration::from_secs(args.write_timeout_secs),
        },
    )
    .await?;
    if let (Some(path), Some(store)) = (&snapshot, history_kept.in_process()) {
        match crate::history::snapshot::save(store, path, crate::history::unix_now()) {
            Ok(saved) => tracing::info!(path = %path.display(), sources = saved.sources,
                entries = saved.entries, "history snapshot written"),
            Err(error) => tracing::error!(%error, "history snapshot not written"),
        }
    }
    tracing::info!("stopped");
    Ok(())
}
