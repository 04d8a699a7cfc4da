//! Shared test helpers: the fixtures folder, a converted ESCU model, a real server on a loopback
//! socket, and DSDL envelopes.
#![allow(dead_code)]

pub mod dev_stream;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use dnsexfil::http;
use dnsexfil::http::auth::Token;
use dnsexfil::http::state::{AppState, ServerConfig};
use dnsexfil::http::Transport;
use dnsexfil::model::convert::ESCU_MODEL_NAME;
use dnsexfil::model::Model;
use dnsexfil::store::{ModelStore, Registry};

pub const TOKEN: &str = "test-token-5f2c";

/// `tests/fixtures` of the repository: golden cases, Splunk's artifact, the development log
/// (see its README.md). Tests read nothing outside the repository.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Splunk's published ESCU artifact tarball (a test fixture; never shipped).
pub fn artifact() -> PathBuf {
    fixtures()
        .join("escu")
        .join(format!("{ESCU_MODEL_NAME}.tar.gz"))
}

/// The ESCU model converted from the published tarball, once per test binary.
pub fn escu_model_bytes() -> &'static [u8] {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| {
        dnsexfil::model::convert::convert(&artifact(), None)
            .expect("convert the published artifact")
            .bytes
    })
}

pub fn escu_registry() -> Arc<Registry> {
    let registry = Registry::new();
    registry.insert(Model::from_bytes(escu_model_bytes(), "escu").unwrap());
    // As `serve --model` does: a fit may not replace a model the service was started with.
    registry.pin(ESCU_MODEL_NAME);
    Arc::new(registry)
}

/// The state a test server runs with: its model store and staging directory under `dir`, the
/// models and limits of `opts` (its `https` and `async_workers` are the listener's business).
pub fn app_state(dir: &Path, opts: ServerOptions) -> AppState {
    let config = ServerConfig {
        token: opts.token,
        max_body_bytes: opts.max_body_bytes,
        max_rows: 1_000_000,
        staging_dir: dir.join("notebooks/data"),
        model_store: Some(ModelStore::new(dir.join("app/model/data"))),
        fit_time_limit: opts.fit_time_limit,
        max_fit_rows: 200_000,
        limits: opts.limits,
    };
    let registry = opts.registry.unwrap_or_else(escu_registry);
    AppState::new(registry, config, 2)
}

pub struct TestServer {
    pub url: String,
    pub staging_dir: PathBuf,
    _dir: tempfile::TempDir,
}

pub struct ServerOptions {
    pub token: Token,
    pub max_body_bytes: usize,
    pub https: Option<axum_server::tls_rustls::RustlsConfig>,
    pub fit_time_limit: Duration,
    /// The models to serve (default: the converted ESCU model only).
    pub registry: Option<Arc<Registry>>,
    pub limits: dnsexfil::http::limits::Limits,
    /// Async worker threads of the server's runtime (default: one per core). With one, any
    /// work that blocks a worker shows as a delay of every other request.
    pub async_workers: Option<usize>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            token: Token::Set(TOKEN.into()),
            max_body_bytes: 32 << 20,
            https: None,
            fit_time_limit: Duration::from_secs(600),
            registry: None,
            limits: Default::default(),
            async_workers: None,
        }
    }
}

impl TestServer {
    pub fn start() -> Self {
        Self::start_with(ServerOptions::default())
    }

    /// Starts the real server on 127.0.0.1 with an ephemeral port, on its own runtime thread.
    pub fn start_with(mut opts: ServerOptions) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let staging_dir = dir.path().join("notebooks/data");
        let https = opts.https.take();
        let async_workers = opts.async_workers;
        let state = app_state(dir.path(), opts);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let transport = match https {
            Some(c) => Transport::Https(c),
            None => Transport::Http,
        };
        let https = matches!(transport, Transport::Https(_));
        std::thread::spawn(move || {
            let mut rt = tokio::runtime::Builder::new_multi_thread();
            if let Some(workers) = async_workers {
                rt.worker_threads(workers);
            }
            let rt = rt.enable_all().build().unwrap();
            rt.block_on(http::serve(
                listener,
                transport,
                http::app(state),
                Duration::from_secs(5),
                Default::default(),
            ))
            .unwrap();
        });
        let url = format!("{}://{addr}", if https { "https" } else { "http" });
        Self {
            url,
            staging_dir,
            _dir: dir,
        }
    }

    pub fn client() -> reqwest::blocking::Client {
        reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .unwrap()
    }

    /// The model store `/fit` saves into.
    pub fn model_dir(&self) -> PathBuf {
        self._dir.path().join("app/model/data")
    }

    /// POSTs a raw body with the test token; returns status and body text.
    pub fn post_raw(&self, path: &str, body: impl Into<reqwest::blocking::Body>) -> (u16, String) {
        let resp = Self::client()
            .post(format!("{}{path}", self.url))
            .header("Authorization", TOKEN)
            .header("Content-Type", "application/json")
            .body(body)
            .send()
            .unwrap();
        (resp.status().as_u16(), resp.text().unwrap())
    }

    /// POSTs a DSDL envelope and returns the parsed JSON answer (asserting HTTP 200).
    pub fn post_json(&self, path: &str, body: &serde_json::Value) -> serde_json::Value {
        let (status, text) = self.post_raw(path, serde_json::to_vec(body).unwrap());
        assert_eq!(status, 200, "{path}: {text}");
        serde_json::from_str(&text).unwrap()
    }

    /// Sends `csv` to /apply the way the ESCU search does; returns the JSON answer.
    pub fn apply(&self, csv: &str) -> serde_json::Value {
        self.post_json("/apply", &escu_envelope(csv))
    }
}

/// Polls `done` until it holds, failing with `what` after `ceiling`. Tests wait on events they
/// can observe (a log line, a counter, a closed socket) rather than sleep for a guessed time; the
/// ceiling is generous because a loaded machine can be many times slower than a quiet one.
pub fn wait_until(ceiling: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < ceiling,
            "timed out after {ceiling:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The ceiling for events that take milliseconds on a quiet machine.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// `dnsexfil` as users run it, without any of the service's settings from this environment.
pub fn dnsexfil_command() -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_dnsexfil"));
    // Every setting of the service, so a developer's shell cannot point tests at a real store.
    for (var, _) in std::env::vars_os() {
        let name = var.to_string_lossy();
        if name.starts_with("DNSEXFIL_")
            || ["api_token", "ENABLE_HTTPS", "API_SSL_CERT", "API_SSL_KEY"].contains(&name.as_ref())
        {
            cmd.env_remove(&var);
        }
    }
    cmd
}

/// Runs a `dnsexfil` command to its end and asserts it succeeded (showing its stderr if not).
pub fn run_ok(cmd: &mut std::process::Command) -> std::process::Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A `dnsexfil serve` process on an ephemeral loopback port, ended when dropped.
pub struct ServedBinary {
    pub child: std::process::Child,
    pub address: String,
    /// The certificate fingerprint the service logged (HTTPS only).
    pub fingerprint: Option<String>,
    /// Log lines after the start-up ones, as they arrive.
    pub logs: Arc<std::sync::Mutex<Vec<String>>>,
    /// The start-up log lines, up to the one with the address.
    pub startup_logs: Vec<String>,
    /// Reads the server's stderr into `logs`; ends when the process has exited.
    drain: Option<std::thread::JoinHandle<()>>,
    _data_dir: Option<tempfile::TempDir>,
}

impl ServedBinary {
    /// Runs `dnsexfil serve <extra args>` with JSON logs and the test token, and waits until it
    /// logs its address. Every log line is checked not to contain the token.
    pub fn start(extra_args: &[&std::ffi::OsStr]) -> Self {
        let data_dir = tempfile::tempdir().unwrap();
        let mut served = Self::start_in(data_dir.path(), extra_args);
        served._data_dir = Some(data_dir);
        served
    }

    /// `start` with the data directory `data_dir` (kept when the server stops).
    pub fn start_in(data_dir: &Path, extra_args: &[&std::ffi::OsStr]) -> Self {
        Self::start_with_env(data_dir, extra_args, &[])
    }

    /// `start_in` with extra environment variables (e.g. `RUST_LOG`).
    pub fn start_with_env(
        data_dir: &Path,
        extra_args: &[&std::ffi::OsStr],
        env: &[(&str, &str)],
    ) -> Self {
        use std::io::{BufRead, BufReader};
        let mut child = dnsexfil_command()
            .args([
                "serve",
                "--port",
                "0",
                "--host",
                "127.0.0.1",
                "--log-format",
                "json",
                "--data-dir",
            ])
            .arg(data_dir)
            .args(extra_args)
            .env("api_token", TOKEN)
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut fingerprint = None;
        let mut address = None;
        let mut startup_logs = Vec::new();
        for line in lines.by_ref() {
            let line = line.unwrap();
            assert!(!line.contains(TOKEN), "the token never appears in logs");
            startup_logs.push(line.clone());
            let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            if let Some(f) = v["fields"]["fingerprint_sha256"].as_str() {
                fingerprint = Some(f.to_string());
            }
            if let Some(a) = v["fields"]["address"].as_str() {
                address = Some(a.to_string());
                break;
            }
        }
        let logs = Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = logs.clone();
        let drain = std::thread::spawn(move || {
            // Keep draining whatever the lines hold (a full pipe would block the server); the
            // token check runs on the collected lines when the server is stopped.
            for line in lines {
                kept.lock().unwrap().push(line.unwrap_or_default());
            }
        });
        let address = address.expect("the server logs its address");
        Self {
            child,
            address,
            fingerprint,
            logs,
            startup_logs,
            drain: Some(drain),
            _data_dir: None,
        }
    }

    /// Waits (up to [`PATIENCE`]) for a log line containing `marker` and returns it.
    pub fn wait_for_log(&self, marker: &str) -> String {
        self.wait_for_logs(marker, 1).pop().unwrap()
    }

    /// Waits (up to [`PATIENCE`]) until `count` log lines contain `marker`; returns them all.
    pub fn wait_for_logs(&self, marker: &str, count: usize) -> Vec<String> {
        let mut found = Vec::new();
        wait_until(
            PATIENCE,
            &format!("{count} log lines with {marker:?}"),
            || {
                found = self.logs_with(marker);
                found.len() >= count
            },
        );
        found
    }

    /// The log lines so far that contain `marker`.
    pub fn logs_with(&self, marker: &str) -> Vec<String> {
        let logs = self.logs.lock().unwrap();
        logs.iter()
            .filter(|l| l.contains(marker))
            .cloned()
            .collect()
    }

    /// Sends SIGTERM (the process keeps running until it has stopped; see `wait`).
    pub fn signal_term(&self) {
        let pid = self.child.id().to_string();
        assert!(std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
    }

    /// Waits for the process to exit and for its last log lines to be read; its exit status.
    pub fn wait(&mut self) -> std::process::ExitStatus {
        let status = self.child.wait().unwrap();
        self.join_drain();
        status
    }

    /// The drain thread ends at the end of the stderr pipe, once the process has exited: after
    /// this, `logs` holds every line the server wrote.
    fn join_drain(&mut self) {
        if let Some(drain) = self.drain.take() {
            drain.join().expect("the log reader");
        }
    }

    /// SIGTERM, then the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        self.signal_term();
        let status = self.wait();
        self.assert_token_never_logged();
        status
    }

    /// The token never appears in a log line of the server (checked once it has stopped and
    /// every line is read).
    pub fn assert_token_never_logged(&self) {
        assert!(self.drain.is_none(), "checked only once every line is read");
        let logs = self.logs.lock().unwrap();
        if let Some(line) = logs.iter().find(|l| l.contains(TOKEN)) {
            panic!("the token appears in a log line: {line}");
        }
    }
}

impl Drop for ServedBinary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !std::thread::panicking() {
            self.join_drain();
            self.assert_token_never_logged();
        }
    }
}

/// A client that does not verify the server's certificate, like Splunk's DSDL client by default.
pub fn unverified_tls_client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .danger_accept_invalid_certs(true)
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// The envelope the ESCU detection's `apply` sends.
pub fn escu_envelope(csv: &str) -> serde_json::Value {
    escu_envelope_for(csv, ESCU_MODEL_NAME)
}

/// The ESCU detection's `apply` envelope, switched to the model `model_name` (`into app:NAME`).
pub fn escu_envelope_for(csv: &str, model_name: &str) -> serde_json::Value {
    serde_json::json!({
        "data": csv,
        "meta": {
            "options": {
                "params": {"mode": "stage", "algo": ESCU_MODEL_NAME},
                "args": ["src", "query", "rank"],
                "feature_variables": ["src", "query", "rank"],
                "model_name": model_name,
                "algo_name": "MLTKContainer",
                "mlspl_limits": {"max_inputs": "100000", "use_sampling": "true"},
                "kfold_cv": null
            },
            "feature_variables": ["src", "query", "rank"]
        }
    })
}

/// Parses CSV text into a header and records.
pub fn parse_csv(text: &str) -> (Vec<String>, Vec<Vec<String>>) {
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(text.as_bytes());
    let header = rdr.headers().unwrap().iter().map(String::from).collect();
    let rows = rdr
        .records()
        .map(|r| r.unwrap().iter().map(String::from).collect())
        .collect();
    (header, rows)
}

/// Results of a successful /apply, asserting success.
pub fn results_of(answer: &serde_json::Value) -> (Vec<String>, Vec<Vec<String>>) {
    assert_eq!(answer["status"], "success", "{answer}");
    parse_csv(answer["results"].as_str().expect("results CSV"))
}
