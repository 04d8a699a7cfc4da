//! Command line: every flag documented here is the `--help` text, and every serve setting can
//! also come from the environment (DSDL's variable names where they exist).

use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::builder::BoolishValueParser;
use clap::{ArgAction, Parser, Subcommand, ValueEnum};

use crate::dsdl::auth::Token;
use crate::limits::{Limits, DEFAULT_MAX_CONCURRENT_REQUESTS, DEFAULT_REQUEST_TIMEOUT_SECS};
use crate::model::convert::{self, ESCU_MODEL_NAME};
use crate::model::Registry;
use crate::server::{self, AppState, ServerConfig, Transport};

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
    /// Train a dnsexfil-v2 model from a labelled DNS log (events.csv + labels.csv).
    Train(TrainArgs),
    /// Write a synthetic DSDL batch (CSV, or the whole /apply envelope) for benchmarks and load tests.
    Synth(SynthArgs),
    /// Print the service's OpenAPI 3 document (what GET /openapi.json serves):
    /// `dnsexfil openapi > openapi/openapi.json` regenerates the committed copy.
    Openapi,
}

#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// Events: `src,query,rank,_time` (rank is recomputed per window).
    #[arg(long)]
    pub events: PathBuf,
    /// Labels: `src,query,is_exfiltration[,...]`, keyed by (src, query).
    #[arg(long)]
    pub labels: PathBuf,
    /// Model file to write (safetensors); a `<output>.report.json` is written beside it.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Model name requests select it by.
    #[arg(long, default_value = "dnsexfil_v2")]
    pub name: String,
    #[arg(long, default_value_t = 60)]
    pub epochs: usize,
    #[arg(long, default_value_t = 2e-3)]
    pub learning_rate: f64,
    #[arg(long, default_value_t = 256)]
    pub batch_size: usize,
    /// Epochs without a better validation loss before stopping.
    #[arg(long, default_value_t = 8)]
    pub patience: usize,
    /// Seed for the source split, initialisation and shuffling: same seed, same model bytes.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Share of sources (hosts) held out for validation and early stopping.
    #[arg(long, default_value_t = 0.2)]
    pub val_fraction: f64,
    /// Share of sources held out entirely as a test set; with --split-out, their events and
    /// labels are written there for `eval/evaluate.py`.
    #[arg(long, default_value_t = 0.0)]
    pub test_fraction: f64,
    /// Directory for the held-out test set (test_events.csv, test_labels.csv).
    #[arg(long)]
    pub split_out: Option<PathBuf>,
    /// Window width in seconds (the hourly ESCU search: 3600).
    #[arg(long, default_value_t = 3600.0)]
    pub window: f64,
    /// Synthetic tunnel sessions (hex, base32, base64url, base36 names) added to the training
    /// and validation sources, so the model learns encodings the log lacks. Never in the test set.
    #[arg(long, default_value_t = 30)]
    pub synthetic_sessions: usize,
}

pub fn run_train(args: &TrainArgs) -> anyhow::Result<()> {
    use crate::dataset;
    use crate::features::Schema;
    use crate::model::train::{train, TrainParams};

    crate::validate_name(&args.name).map_err(anyhow::Error::msg)?;
    let mut events = dataset::read_events(&args.events).map_err(anyhow::Error::msg)?;
    let mut labels = dataset::read_labels(&args.labels).map_err(anyhow::Error::msg)?;
    let (synthetic_events, synthetic_labels) =
        dataset::synthetic_tunnels(&events, args.synthetic_sessions, args.seed);
    let synthetic_srcs: std::collections::BTreeSet<String> =
        synthetic_events.iter().map(|e| e.src.clone()).collect();
    events.extend(synthetic_events);
    labels.extend(synthetic_labels);
    let schema = Schema::DnsexfilV2;
    let labelled = dataset::labelled_features(&events, &labels, schema, args.window)
        .map_err(anyhow::Error::msg)?;
    eprintln!(
        "{} labelled rank-1 events from {} events",
        labelled.data.len(),
        events.len()
    );

    let (rest, test) = if args.test_fraction > 0.0 {
        // The test set holds real sources only; synthetic ones always train.
        let real = dataset::Labelled {
            data: dataset::subset(
                &labelled,
                &labelled
                    .srcs
                    .iter()
                    .filter(|s| !synthetic_srcs.contains(*s))
                    .cloned()
                    .collect(),
            ),
            srcs: labelled
                .srcs
                .iter()
                .filter(|s| !synthetic_srcs.contains(*s))
                .cloned()
                .collect(),
        };
        let (_, test) = dataset::split_sources(&real, args.test_fraction, args.seed);
        let rest = labelled
            .srcs
            .iter()
            .filter(|s| !test.contains(*s))
            .cloned()
            .collect();
        (rest, test)
    } else {
        (labelled.srcs.iter().cloned().collect(), Default::default())
    };
    if let Some(dir) = &args.split_out {
        write_split(dir, &args.events, &args.labels, &test)?;
    }
    let kept = dataset::Labelled {
        data: dataset::subset(&labelled, &rest),
        srcs: labelled
            .srcs
            .iter()
            .filter(|s| rest.contains(*s))
            .cloned()
            .collect(),
    };
    let (train_srcs, val_srcs) =
        dataset::split_sources(&kept, args.val_fraction, args.seed.wrapping_add(1));
    let train_set = dataset::subset(&kept, &train_srcs);
    let val_set = dataset::subset(&kept, &val_srcs);
    eprintln!(
        "sources: {} train ({} rows), {} validation ({} rows), {} test",
        train_srcs.len(),
        train_set.len(),
        val_srcs.len(),
        val_set.len(),
        test.len()
    );
    let params = TrainParams {
        epochs: args.epochs,
        learning_rate: args.learning_rate,
        batch_size: args.batch_size,
        patience: args.patience,
        seed: args.seed,
        ..Default::default()
    };
    let shape = crate::model::file::shape_for(schema);
    let (tensors, report) = train(shape, &train_set, &val_set, &params, |e| {
        eprintln!(
            "epoch {:3}: train loss {:.5}, validation loss {:.5}, validation AUC {:.5}",
            e.epoch, e.train_loss, e.val_loss, e.val_auc
        )
    })?;

    let info = crate::model::ModelInfo {
        name: args.name.clone(),
        schema,
        // The ESCU detection's column names, so its search can switch to this model by name.
        target: crate::model::convert::ESCU_TARGET.into(),
        threshold: 0.5,
        source_file: args
            .events
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        source_sha256: crate::model::sha256_hex(&std::fs::read(&args.events)?),
        created_by: format!("dnsexfil {} train", env!("CARGO_PKG_VERSION")),
    };
    let bytes = crate::model::file::encode(&info, &tensors)?;
    let model = crate::model::Model::from_bytes(&bytes, &args.name)?;
    let val_scores = model.mlp.predict(&val_set.x, val_set.len())?;
    let (tpr, _) = crate::model::metrics::tpr_at_fpr(&val_scores, &val_set.y, 0.001);
    crate::fsutil::write_atomic(&args.output, &bytes)
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    let report_json = serde_json::json!({
        "model": args.output.file_name().map(|n| n.to_string_lossy().into_owned()),
        "model_sha256": crate::model::sha256_hex(&bytes),
        "schema": schema.name(),
        "params": {"epochs": args.epochs, "learning_rate": args.learning_rate, "batch_size": args.batch_size,
                   "patience": args.patience, "seed": args.seed, "val_fraction": args.val_fraction,
                   "test_fraction": args.test_fraction, "window": args.window,
                   "synthetic_sessions": args.synthetic_sessions},
        "rows": {"train": report.train_rows, "validation": report.val_rows},
        "sources": {"train": train_srcs, "validation": val_srcs, "test": test},
        "positive_weight": report.positive_weight,
        "epochs_run": report.epochs_run,
        "best_epoch": report.best.epoch,
        "validation": {"loss": report.best.val_loss, "roc_auc": report.best.val_auc, "tpr_at_fpr_0.001": tpr},
    });
    let report_path = PathBuf::from(format!("{}.report.json", args.output.display()));
    crate::fsutil::write_atomic(
        &report_path,
        serde_json::to_string_pretty(&report_json)?.as_bytes(),
    )?;
    println!(
        "wrote {} (best epoch {}, validation AUC {:.5}, TPR {:.4} at FPR 0.1%) and {}",
        args.output.display(),
        report.best.epoch,
        report.best.val_auc,
        tpr,
        report_path.display()
    );
    Ok(())
}

/// Writes the events and labels of the `test` sources, for `eval/evaluate.py`.
fn write_split(
    dir: &std::path::Path,
    events: &std::path::Path,
    labels: &std::path::Path,
    test: &std::collections::BTreeSet<String>,
) -> anyhow::Result<()> {
    for (from, to) in [(events, "test_events.csv"), (labels, "test_labels.csv")] {
        let text = std::fs::read_to_string(from)?;
        let mut out = String::new();
        for (i, line) in text.lines().enumerate() {
            // Both files start with the `src` column; a source never contains a comma.
            if i == 0 || line.split(',').next().is_some_and(|src| test.contains(src)) {
                out.push_str(line);
                out.push('\n');
            }
        }
        crate::fsutil::write_atomic(&dir.join(to), out.as_bytes())?;
    }
    Ok(())
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
    let csv = crate::synth::dsdl_csv(args.rows, args.seed);
    let text = if args.envelope {
        crate::synth::dsdl_envelope(&csv, &args.model_name)
    } else {
        csv
    };
    match &args.output {
        Some(path) => crate::fsutil::write_atomic(path, text.as_bytes())
            .with_context(|| format!("cannot write {}", path.display())),
        None => {
            use std::io::Write;
            std::io::stdout()
                .write_all(text.as_bytes())
                .context("cannot write to standard output")
        }
    }
}

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
    /// Do not load the built-in default model (dnsexfil_v2); serve only --model files and the
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
    /// TLS certificate (PEM). Without a cert/key pair, a self-signed one is generated at start-up
    /// and its SHA-256 fingerprint is logged.
    #[arg(long, env = "API_SSL_CERT", requires = "ssl_key")]
    pub ssl_cert: Option<PathBuf>,
    /// TLS private key (PEM) for --ssl-cert.
    #[arg(long, env = "API_SSL_KEY", requires = "ssl_cert")]
    pub ssl_key: Option<PathBuf>,
    /// Largest request body accepted, in MiB (a 100,000-row ESCU batch is about 6 MiB).
    #[arg(long, env = "DNSEXFIL_MAX_BODY_MB", default_value_t = 32)]
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
    /// Requests in flight at once on the DSDL and /v1 routes; more are refused at once with 429
    /// (health, readiness and metrics are exempt).
    #[arg(long, env = "DNSEXFIL_MAX_CONCURRENT_REQUESTS", default_value_t = DEFAULT_MAX_CONCURRENT_REQUESTS,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_concurrent_requests: usize,
    /// Longest time one request may take, body upload included, before it is answered 503
    /// (POST /fit is exempt: training has its own limit).
    #[arg(long, env = "DNSEXFIL_REQUEST_TIMEOUT_SECS", default_value_t = DEFAULT_REQUEST_TIMEOUT_SECS,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub request_timeout_secs: u64,
    /// Log format: text for people, json for log pipelines. The level comes from RUST_LOG (default info).
    #[arg(long, env = "DNSEXFIL_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
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
        .write_all(crate::openapi::document_json().as_bytes())
        .context("cannot write to standard output")
}

pub fn run_convert(args: &ConvertArgs) -> anyhow::Result<()> {
    let converted = convert::convert(&args.input, args.name.as_deref())?;
    crate::fsutil::write_atomic(&args.output, &converted.bytes)
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
    Ok(())
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

    let registry = Arc::new(Registry::new());
    if !args.no_default_model {
        // First, so a model of the same name from --model or the model directory replaces it.
        let name = registry
            .insert(crate::model::default_model()?)
            .info
            .name
            .clone();
        tracing::info!(model = %name, "built-in default model loaded");
    }
    for path in &args.models {
        let name = registry
            .load_file(path)
            .with_context(|| format!("cannot load --model {}", path.display()))?;
        tracing::info!(model = %name, file = %path.display(), "model loaded");
    }
    for name in registry
        .load_dir(&model_dir)
        .with_context(|| format!("cannot load the model directory {}", model_dir.display()))?
    {
        tracing::info!(model = %name, dir = %model_dir.display(), "model loaded");
    }
    if registry.is_empty() {
        bail!(
            "no model to serve (--no-default-model is set). Convert Splunk's published artifact and pass the result with --model:\n  \
             dnsexfil convert {ESCU_MODEL_NAME}.tar.gz -o escu.safetensors\n  \
             dnsexfil serve --model escu.safetensors\n\
             (--model also takes the tarball or .pt directly; or put model files in {})",
            model_dir.display()
        );
    }

    let token = Token::from_env_value(std::env::var("api_token").ok());
    match token {
        Token::Set(_) => {}
        Token::Unset => tracing::warn!(
            "api_token is not set: every DSDL request will be refused with 401 `No token setup`"
        ),
        Token::Empty => tracing::warn!(
            "api_token is empty: every DSDL request will be refused with 401 `No token defined`"
        ),
    }
    let config = ServerConfig {
        token,
        max_body_bytes: args
            .max_body_mb
            .checked_mul(1 << 20)
            .context("--max-body-mb is too large")?,
        max_rows: args.max_rows,
        staging_dir,
        limits: Limits {
            max_concurrent_requests: args.max_concurrent_requests,
            request_timeout: Duration::from_secs(args.request_timeout_secs),
        },
    };
    let compute_threads = args
        .compute_threads
        .unwrap_or_else(server::default_compute_threads);
    let state = AppState::new(registry, config, compute_threads);

    let transport = if args.enable_https {
        let tls = match (&args.ssl_cert, &args.ssl_key) {
            (Some(cert), Some(key)) => crate::tls::from_files(cert, key).await,
            _ => crate::tls::self_signed(&[args.host.clone()]).await,
        }
        .map_err(anyhow::Error::msg)?;
        tracing::info!(
            fingerprint_sha256 = %tls.fingerprint,
            self_signed = tls.self_signed,
            "TLS certificate"
        );
        Transport::Https(tls.config)
    } else {
        Transport::Http
    };

    let addr = format!("{}:{}", args.host, args.port);
    let listener = TcpListener::bind(&addr).with_context(|| format!("cannot listen on {addr}"))?;
    tracing::info!(
        address = %listener.local_addr()?,
        scheme = if args.enable_https { "https" } else { "http" },
        models = ?state.registry.names(),
        compute_threads,
        max_concurrent_requests = args.max_concurrent_requests,
        request_timeout_secs = args.request_timeout_secs,
        "listening"
    );
    server::serve(
        listener,
        transport,
        server::app(state),
        Duration::from_secs(args.shutdown_grace_secs),
    )
    .await?;
    tracing::info!("stopped");
    Ok(())
}
