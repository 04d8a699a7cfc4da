//! Hardening against a hostile client or environment (issue 19): names that would take over a
//! model the service was started with, special and oversized files in the model store, and
//! the other findings of the black-box attack, each against a real server or real files.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use dnsexfil::model::convert::ESCU_MODEL_NAME;
use dnsexfil::model::Model;

/// A model file of the ESCU network under another name and label: what answers is told apart
/// by its output columns (`pred_<target>`).
fn impostor_file(name: &str, target: &str) -> Vec<u8> {
    let mut model = Model::from_bytes(escu_model_bytes(), "escu").unwrap();
    model.info.name = name.to_string();
    model.info.target = target.to_string();
    let tensors = model.mlp.tensors().unwrap();
    dnsexfil::model::file::encode(&model.info, &tensors).unwrap()
}

/// `serve` over plain HTTP with the ESCU artifact and the data directory `data_dir`.
fn serve_escu_in(data_dir: &Path, extra: &[&str]) -> ServedBinary {
    let mut args: Vec<&std::ffi::OsStr> = vec![
        "--enable-https".as_ref(),
        "false".as_ref(),
        "--model".as_ref(),
    ];
    let artifact = artifact();
    args.push(artifact.as_os_str());
    args.extend(extra.iter().map(|a| std::ffi::OsStr::new(*a)));
    ServedBinary::start_in(data_dir, &args)
}

fn post(address: &str, path: &str, body: &serde_json::Value) -> serde_json::Value {
    TestServer::client()
        .post(format!("http://{address}{path}"))
        .header("Authorization", TOKEN)
        .json(body)
        .send()
        .unwrap()
        .json()
        .unwrap()
}

const GOOD_ROWS: &str = "src,query,rank\n10.1.1.1,www.google.com,1\n";

fn labelled_rows() -> String {
    let mut csv = String::from("src,query,rank,is_exfiltration\n");
    for i in 0..40 {
        csv.push_str(&format!("10.0.0.{i},www.example{i}.com,1,{}\n", i % 2));
    }
    csv
}

fn fit_envelope(algo: &str, model_name: &str) -> serde_json::Value {
    serde_json::json!({
        "data": labelled_rows(),
        "meta": {
            "options": {"params": {"algo": algo, "base": "dnsexfil_v2"},
                        "args": ["is_exfiltration", "src", "query", "rank"],
                        "target_variable": ["is_exfiltration"],
                        "feature_variables": ["src", "query", "rank"],
                        "model_name": model_name, "algo_name": "MLTKContainer"},
            "feature_variables": ["src", "query", "rank"],
            "target_variables": ["is_exfiltration"]
        }
    })
}

// Issue 19, item 1: a fit can take over the ESCU model's answers.

#[test]
fn a_fit_whose_name_the_escu_search_would_find_first_is_refused() {
    let server = TestServer::start();
    // Saved as `<ESCU>_<ESCU>`, the name `apply <ESCU>` with algo = <ESCU> looks for first.
    let model_name = format!("{}_{ESCU_MODEL_NAME}", &ESCU_MODEL_NAME["detect_".len()..]);
    let answer = server.post_json("/fit", &fit_envelope("detect", &model_name));
    assert_eq!(answer["status"], "error", "{answer}");
    let message = answer["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("ends in `_{ESCU_MODEL_NAME}`")),
        "{message}"
    );
    assert!(std::fs::read_dir(server.model_dir())
        .map(|d| d.count() == 0)
        .unwrap_or(true));
    let (header, _) = results_of(&server.apply(GOOD_ROWS));
    assert_eq!(header[3], "pred_is_dns_data_exfiltration_proba");
}

#[test]
fn a_started_with_model_answers_to_its_own_name_whatever_the_store_holds() {
    let data = tempfile::tempdir().unwrap();
    let store = data.path().join("app/model/data");
    std::fs::create_dir_all(&store).unwrap();
    // Left by a fit of an earlier version (or copied in): `<ESCU>_<ESCU>.safetensors`.
    let takeover = format!("{ESCU_MODEL_NAME}_{ESCU_MODEL_NAME}");
    std::fs::write(
        store.join(format!("{takeover}.safetensors")),
        impostor_file(&takeover, "takeover"),
    )
    .unwrap();
    let served = serve_escu_in(data.path(), &[]);
    let (header, _) = results_of(&post(&served.address, "/apply", &escu_envelope(GOOD_ROWS)));
    assert_eq!(
        header[3], "pred_is_dns_data_exfiltration_proba",
        "{header:?}"
    );
    // The file itself still serves under its own name.
    let mut by_name = escu_envelope(GOOD_ROWS);
    by_name["meta"]["options"]["model_name"] = takeover.clone().into();
    by_name["meta"]["options"]["params"] = serde_json::json!({});
    let (header, _) = results_of(&post(&served.address, "/apply", &by_name));
    assert_eq!(header[3], "pred_takeover_proba", "{header:?}");
}

/// `dnsexfil serve` over plain HTTP in `data_dir`, its log lines as they come; the caller kills it.
fn spawn_serve(
    data_dir: &Path,
    extra: &[&str],
) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    spawn_serve_with_token(data_dir, extra, TOKEN)
}

fn spawn_serve_with_token(
    data_dir: &Path,
    extra: &[&str],
    token: &str,
) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    spawn_serve_limited(data_dir, extra, token, None)
}

/// `spawn_serve_with_token`, under an address-space limit (`ulimit -v`, KiB) when given.
fn spawn_serve_limited(
    data_dir: &Path,
    extra: &[&str],
    token: &str,
    address_space_kib: Option<u64>,
) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    use std::io::{BufRead, BufReader};
    let mut command = dnsexfil_command();
    if let Some(kib) = address_space_kib {
        let mut limited = std::process::Command::new("sh");
        limited
            .arg("-c")
            .arg(format!("ulimit -v {kib} && exec \"$0\" \"$@\""))
            .arg(command.get_program());
        for (var, value) in command.get_envs() {
            match value {
                Some(value) => limited.env(var, value),
                None => limited.env_remove(var),
            };
        }
        command = limited;
    }
    let mut child = command
        .args([
            "serve",
            "--port",
            "0",
            "--host",
            "127.0.0.1",
            "--log-format",
            "json",
        ])
        .args(["--enable-https", "false", "--data-dir"])
        .arg(data_dir)
        .args(extra)
        .env("api_token", token)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (send, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            if send.send(line.unwrap_or_default()).is_err() {
                break;
            }
        }
    });
    (child, lines)
}

/// Waits (at most `limit`) for the log line with the listening address; returns the address
/// and the lines before it. Kills the server and fails if it does not come.
fn wait_listening(
    child: &mut std::process::Child,
    lines: &std::sync::mpsc::Receiver<String>,
    limit: Duration,
) -> (String, Vec<String>) {
    let deadline = Instant::now() + limit;
    let mut before = Vec::new();
    while let Ok(line) = lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if let Some(a) = v["fields"]["address"].as_str() {
            return (a.to_string(), before);
        }
        before.push(line);
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("the server did not listen (within {limit:?}); its log: {before:#?}");
}

/// Kills the server when dropped, whatever the test's outcome.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn quick_client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

fn mkfifo(path: &Path) {
    let made = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .unwrap();
    assert!(made.success(), "mkfifo {}", path.display());
}

/// The log lines that say a file of the store was skipped, with their reasons.
fn skipped(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .filter(|l| l.contains("skipped"))
        .cloned()
        .collect()
}

// Issue 19, item 2: a FIFO in the model store hangs everything.

#[test]
fn a_fifo_in_the_store_at_start_up_is_skipped_and_the_service_listens() {
    let data = tempfile::tempdir().unwrap();
    let store = data.path().join("app/model/data");
    std::fs::create_dir_all(&store).unwrap();
    mkfifo(&store.join("x.safetensors"));
    let (mut child, lines) = spawn_serve(data.path(), &[]);
    let (address, startup) = wait_listening(&mut child, &lines, Duration::from_secs(30));
    let _server = Killed(child);
    let reasons = skipped(&startup);
    assert!(
        reasons
            .iter()
            .any(|l| l.contains("x.safetensors") && l.contains("FIFO")),
        "{startup:#?}"
    );
    let health = quick_client()
        .get(format!("http://{address}/healthz"))
        .send()
        .unwrap();
    assert_eq!(health.status(), 200);
}

#[test]
fn a_fifo_added_to_the_store_at_run_time_blocks_no_request() {
    let data = tempfile::tempdir().unwrap();
    let store = data.path().join("app/model/data");
    std::fs::create_dir_all(&store).unwrap();
    let (mut child, lines) = spawn_serve(data.path(), &[]);
    let (address, _) = wait_listening(&mut child, &lines, Duration::from_secs(30));
    let _server = Killed(child);
    mkfifo(&store.join("x.safetensors"));
    // A small /apply naming an unknown model scans the store (on the async worker before).
    let client = quick_client();
    let started = Instant::now();
    let answer: serde_json::Value = client
        .post(format!("http://{address}/apply"))
        .header("Authorization", TOKEN)
        .json(&escu_envelope_for(GOOD_ROWS, "nothing_here"))
        .send()
        .expect("the /apply is answered")
        .json()
        .unwrap();
    assert_eq!(answer["status"], "error", "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("no model named"),
        "{answer}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    for _ in 0..3 {
        let health = client
            .get(format!("http://{address}/healthz"))
            .send()
            .expect("/healthz answers");
        assert_eq!(health.status(), 200);
    }
    let reason = lines
        .recv_timeout(Duration::from_secs(5))
        .into_iter()
        .chain(lines.try_iter())
        .find(|l| l.contains("x.safetensors"));
    assert!(
        reason.as_deref().is_some_and(|l| l.contains("FIFO")),
        "{reason:?}"
    );
}

#[test]
fn a_store_file_read_slowly_holds_up_no_other_request() {
    use std::sync::{mpsc, Mutex};
    // The read of `a_slow.safetensors` hangs, as on a hung network mount, until the test ends;
    // the test learns when it has begun.
    let (begun, reading) = mpsc::channel();
    let (release, held) = mpsc::channel::<()>();
    let (begun, held) = (Mutex::new(begun), Mutex::new(held));
    let registry = dnsexfil::store::Registry::new()
        .with_read_time_limit(Duration::from_secs(2))
        .with_read_hook(move |path| {
            if path.ends_with("a_slow.safetensors") {
                let _ = begun.lock().unwrap().send(());
                let _ = held.lock().unwrap().recv();
            }
        });
    registry.insert(Model::from_bytes(escu_model_bytes(), "escu").unwrap());
    registry.pin(ESCU_MODEL_NAME);
    // One async worker: a request that waited for the read there would hold up all others.
    let server = TestServer::start_with(ServerOptions {
        registry: Some(std::sync::Arc::new(registry)),
        async_workers: Some(1),
        ..Default::default()
    });
    let store = server.model_dir();
    std::fs::create_dir_all(&store).unwrap();
    for (name, target) in [("a_slow", "slow"), ("b_good", "good")] {
        std::fs::write(
            store.join(format!("{name}.safetensors")),
            impostor_file(name, target),
        )
        .unwrap();
    }
    let apply_named = |name: &str| {
        let mut body = escu_envelope_for(GOOD_ROWS, name);
        body["meta"]["options"]["params"] = serde_json::json!({});
        body
    };
    // A small /apply naming a model not loaded yet looks in the store, and its read hangs.
    let slow_apply = {
        let (url, body) = (server.url.clone(), apply_named("a_slow"));
        std::thread::spawn(move || {
            quick_client()
                .post(format!("{url}/apply"))
                .header("Authorization", TOKEN)
                .json(&body)
                .send()
                .unwrap()
                .json::<serde_json::Value>()
                .unwrap()
        })
    };
    reading
        .recv_timeout(PATIENCE)
        .expect("the store file's read begins");
    let started = Instant::now();
    let health = quick_client()
        .get(format!("{}/healthz", server.url))
        .send()
        .unwrap();
    let took = started.elapsed();
    assert_eq!(health.status(), 200);
    assert!(
        took < Duration::from_secs(1),
        "/healthz took {took:?} while a store file was being read"
    );
    // The /apply waits for the scan only so long, and the stuck file is not loaded.
    let answer = slow_apply.join().unwrap();
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("no model named `a_slow`"),
        "{answer}"
    );
    // Its read is given up at the time limit, and the scan goes on to the next file.
    wait_until("b_good loaded", PATIENCE, || {
        let answer = server.post_json("/apply", &apply_named("b_good"));
        answer["status"] == "success"
    });
    drop(release);
}

// Issue 19, item 3: a huge or endless file in the store kills the process.

#[test]
fn a_huge_sparse_file_in_the_store_is_skipped_before_it_is_read() {
    let data = tempfile::tempdir().unwrap();
    let store = data.path().join("app/model/data");
    std::fs::create_dir_all(&store).unwrap();
    // Sparse: no disk space, but reading it would take 200 MiB of memory.
    let huge = std::fs::File::create(store.join("huge.safetensors")).unwrap();
    huge.set_len(200 << 20).unwrap();
    drop(huge);
    let (mut child, lines) = spawn_serve(data.path(), &[]);
    let (address, startup) = wait_listening(&mut child, &lines, Duration::from_secs(30));
    let _server = Killed(child);
    let reasons = skipped(&startup);
    assert!(
        reasons.iter().any(|l| l.contains("huge.safetensors")
            && l.contains("more than the 64 MiB")
            && l.contains("--max-model-file-mb")),
        "{startup:#?}"
    );
    let health = quick_client()
        .get(format!("http://{address}/healthz"))
        .send()
        .unwrap();
    assert_eq!(health.status(), 200);
}

/// A sparse file of `len` bytes (no disk space) starting with `head`.
fn sparse_file(path: &Path, head: &[u8], len: u64) {
    use std::io::Write;
    let mut file = std::fs::File::create(path).unwrap();
    file.write_all(head).unwrap();
    file.set_len(len).unwrap();
}

#[test]
fn store_files_whose_header_does_not_fit_are_refused_without_reading_them() {
    // The same service with an empty store: its peak memory after start-up is the baseline.
    let empty = tempfile::tempdir().unwrap();
    let (mut child, lines) = spawn_serve(empty.path(), &[]);
    wait_listening(&mut child, &lines, Duration::from_secs(30));
    let baseline = Killed(child);
    let baseline_kib = status_kib(baseline.0.id(), "VmHWM:");
    drop(baseline);

    let data = tempfile::tempdir().unwrap();
    let store = data.path().join("app/model/data");
    std::fs::create_dir_all(&store).unwrap();
    // Within the 64 MiB file limit, so only the header tells them apart from a model: read
    // whole, each would take 60 MiB.
    sparse_file(
        &store.join("tebibyte.safetensors"),
        &(1u64 << 40).to_le_bytes(),
        60 << 20,
    );
    sparse_file(
        &store.join("wide.safetensors"),
        &(48u64 << 20).to_le_bytes(),
        60 << 20,
    );
    sparse_file(
        &store.join("short.safetensors"),
        &4096u64.to_le_bytes(),
        100,
    );
    let (mut child, lines) = spawn_serve(data.path(), &[]);
    let (address, startup) = wait_listening(&mut child, &lines, Duration::from_secs(30));
    let server = Killed(child);
    let reasons = skipped(&startup);
    for (file, reason) in [
        (
            "tebibyte.safetensors",
            "its header claims 1099511627776 bytes, more than the 1 MiB",
        ),
        (
            "wide.safetensors",
            "its header claims 50331648 bytes, more than the 1 MiB",
        ),
        (
            "short.safetensors",
            "its header claims 4096 bytes, more than the 92 bytes that follow",
        ),
    ] {
        assert!(
            reasons
                .iter()
                .any(|l| l.contains(file) && l.contains(reason)),
            "{file}: {startup:#?}"
        );
    }
    let peak_kib = status_kib(server.0.id(), "VmHWM:");
    assert!(
        peak_kib < baseline_kib + (30 << 10),
        "peak {} MiB after start-up, {} MiB with an empty store",
        peak_kib >> 10,
        baseline_kib >> 10
    );
    let health = quick_client()
        .get(format!("http://{address}/healthz"))
        .send()
        .unwrap();
    assert_eq!(health.status(), 200);
}

#[test]
fn the_model_file_size_limit_is_configurable() {
    let data = tempfile::tempdir().unwrap();
    let store = data.path().join("app/model/data");
    std::fs::create_dir_all(&store).unwrap();
    // A real model over a 1 MiB limit (padded: the ESCU model is smaller).
    let mut bytes = impostor_file("padded", "is_dns_data_exfiltration");
    bytes.resize(bytes.len() + (1 << 20), 0);
    std::fs::write(store.join("padded.safetensors"), bytes).unwrap();
    let (mut child, lines) = spawn_serve(data.path(), &["--max-model-file-mb", "1"]);
    let (_, startup) = wait_listening(&mut child, &lines, Duration::from_secs(30));
    let _server = Killed(child);
    assert!(
        skipped(&startup)
            .iter()
            .any(|l| l.contains("padded.safetensors") && l.contains("more than the 1 MiB")),
        "{startup:#?}"
    );
}

#[test]
fn an_endless_file_linked_into_the_store_at_run_time_is_never_read() {
    if !Path::new("/dev/zero").exists() {
        return;
    }
    let data = tempfile::tempdir().unwrap();
    let store = data.path().join("app/model/data");
    std::fs::create_dir_all(&store).unwrap();
    let (mut child, lines) = spawn_serve(data.path(), &["--store-rescan-secs", "1"]);
    let (address, _) = wait_listening(&mut child, &lines, Duration::from_secs(30));
    let server = Killed(child);
    std::os::unix::fs::symlink("/dev/zero", store.join("zero.safetensors")).unwrap();
    // The next scans see it: it is skipped with its reason, and the memory stays put.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut reason = None;
    while reason.is_none() && Instant::now() < deadline {
        if let Ok(line) = lines.recv_timeout(Duration::from_millis(200)) {
            if line.contains("zero.safetensors") {
                reason = Some(line);
            }
        }
    }
    let reason = reason.expect("the skipped file is logged");
    assert!(reason.contains("a device"), "{reason}");
    std::thread::sleep(Duration::from_secs(2));
    let rss_kib = std::fs::read_to_string(format!("/proc/{}/status", server.0.id()))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap();
    assert!(rss_kib < 512 << 10, "RSS {rss_kib} KiB");
    let health = quick_client()
        .get(format!("http://{address}/healthz"))
        .send()
        .unwrap();
    assert_eq!(health.status(), 200);
}

// Issue 19, item 12: a token with surrounding whitespace can never match.

#[test]
fn a_token_with_a_trailing_newline_is_trimmed_with_a_warning() {
    let data = tempfile::tempdir().unwrap();
    let (mut child, lines) = spawn_serve_with_token(data.path(), &[], &format!(" {TOKEN}\n"));
    let (address, startup) = wait_listening(&mut child, &lines, Duration::from_secs(30));
    let _server = Killed(child);
    assert!(
        startup
            .iter()
            .any(|l| l.contains("WARN") && l.contains("api_token starts or ends with whitespace")),
        "{startup:#?}"
    );
    assert!(startup.iter().all(|l| !l.contains(TOKEN)));
    let summary = quick_client()
        .get(format!("http://{address}/summary"))
        .header("Authorization", TOKEN)
        .send()
        .unwrap();
    assert_eq!(summary.status(), 200);
}

// Issue 19, item 15: small things seen through Splunk's client.

#[test]
fn an_unknown_model_is_named_once_per_name_looked_for() {
    let server = TestServer::start();
    let mut body = escu_envelope_for(GOOD_ROWS, "x");
    body["meta"]["options"]["params"] = serde_json::json!({"algo": "x"});
    let answer = server.post_json("/apply", &body);
    let message = answer["message"].as_str().unwrap();
    assert!(
        message.contains("no model named `x_x` or `x` is loaded"),
        "{message}"
    );
}

#[test]
fn an_empty_dataframe_is_told_no_events_were_sent() {
    let server = TestServer::start();
    for data in ["\n", ""] {
        let answer = server.post_json("/apply", &escu_envelope(data));
        assert_eq!(answer["status"], "error", "{answer}");
        let message = answer["message"].as_str().unwrap();
        assert!(message.contains("no events were sent"), "{message}");
        assert!(!message.contains("needs a header row"), "{message}");
    }
}

#[test]
fn summary_keeps_the_stock_containers_keys() {
    let server = TestServer::start();
    let text = TestServer::client()
        .get(format!("{}/summary", server.url))
        .header("Authorization", TOKEN)
        .send()
        .unwrap()
        .text()
        .unwrap();
    let once: String = serde_json::from_str(&text).unwrap();
    let inner: serde_json::Value = serde_json::from_str(&once).unwrap();
    assert_eq!(
        inner["app"],
        "Splunk App for Data Science and Deep Learning"
    );
    assert_eq!(inner["version"], "5.2.4");
    assert_eq!(inner["token"], "valid");
    assert_eq!(inner["model"], ESCU_MODEL_NAME);
    assert_eq!(inner["service"], "dnsexfil");
    assert_eq!(inner["service_version"], env!("CARGO_PKG_VERSION"));
}

// Issue 19, item 10: a model file's `target` is not validated on load.

#[test]
fn a_store_file_whose_target_would_break_the_results_header_is_skipped() {
    let data = tempfile::tempdir().unwrap();
    let store = data.path().join("app/model/data");
    std::fs::create_dir_all(&store).unwrap();
    std::fs::write(
        store.join("evil.safetensors"),
        impostor_file("evil", "x\",evil\ncol"),
    )
    .unwrap();
    let (mut child, lines) = spawn_serve(data.path(), &[]);
    let (address, startup) = wait_listening(&mut child, &lines, Duration::from_secs(30));
    let _server = Killed(child);
    assert!(
        skipped(&startup)
            .iter()
            .any(|l| l.contains("evil.safetensors") && l.contains("metadata key `target`")),
        "{startup:#?}"
    );
    let mut body = escu_envelope_for(GOOD_ROWS, "evil");
    body["meta"]["options"]["params"] = serde_json::json!({});
    let answer = post(&address, "/apply", &body);
    assert_eq!(answer["status"], "error", "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("no model named `evil`"),
        "{answer}"
    );
}

// Issue 19, item 11: store change detection misses same-size, same-mtime replacements.

/// The label (`pred_<target>` column) of the model that answers for `model_name`.
fn answering_target(address: &str, model_name: &str) -> String {
    let mut body = escu_envelope_for(GOOD_ROWS, model_name);
    body["meta"]["options"]["params"] = serde_json::json!({});
    let (header, _) = results_of(&post(address, "/apply", &body));
    header[4].trim_start_matches("pred_").to_string()
}

#[test]
fn a_same_size_replacement_keeping_the_modification_time_is_reloaded() {
    let data = tempfile::tempdir().unwrap();
    let store = data.path().join("app/model/data");
    std::fs::create_dir_all(&store).unwrap();
    let path = store.join("corp.safetensors");
    let (old, new) = (impostor_file("corp", "aaa"), impostor_file("corp", "bbb"));
    assert_eq!(old.len(), new.len());
    std::fs::write(&path, &old).unwrap();
    let modified = std::fs::metadata(&path).unwrap().modified().unwrap();
    let (mut child, lines) = spawn_serve(data.path(), &["--store-rescan-secs", "1"]);
    let (address, _) = wait_listening(&mut child, &lines, Duration::from_secs(30));
    let _server = Killed(child);
    assert_eq!(answering_target(&address, "corp"), "aaa");
    // Rewritten in place, same size, the old modification time put back (as `cp -p` does).
    {
        use std::io::Write;
        let mut file = std::fs::File::options()
            .write(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        file.write_all(&new).unwrap();
        file.set_modified(modified).unwrap();
    }
    assert_eq!(
        std::fs::metadata(&path).unwrap().modified().unwrap(),
        modified
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while answering_target(&address, "corp") != "bbb" {
        assert!(
            Instant::now() < deadline,
            "the replacement was never loaded"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

// Issue 19, item 9: a failed stage write leaves a mixed pair.

fn dir_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn a_stage_that_cannot_write_both_files_changes_neither() {
    let server = TestServer::start();
    let staged = server.post_json("/fit", &escu_envelope_for(GOOD_ROWS, "s7"));
    assert_eq!(staged["status"], "staged", "{staged}");
    let csv = server.staging_dir.join("s7.csv");
    assert_eq!(std::fs::read_to_string(&csv).unwrap(), GOOD_ROWS);
    // The description cannot be replaced (something else now stands at its name): the data
    // written first must not be left newer than it.
    let json = server.staging_dir.join("s7.json");
    std::fs::remove_file(&json).unwrap();
    std::fs::create_dir(&json).unwrap();
    let newer = "src,query,rank\n10.9.9.9,www.example.org,1\n";
    let failed = server.post_json("/fit", &escu_envelope_for(newer, "s7"));
    assert_eq!(failed["status"], "error", "{failed}");
    assert!(
        failed["message"]
            .as_str()
            .unwrap()
            .contains("check that the staging directory is writable"),
        "{failed}"
    );
    assert_eq!(std::fs::read_to_string(&csv).unwrap(), GOOD_ROWS);
    // A first stage of a name fails the same way: no data without its description.
    std::fs::create_dir(server.staging_dir.join("t8.json")).unwrap();
    let failed = server.post_json("/fit", &escu_envelope_for(newer, "t8"));
    assert_eq!(failed["status"], "error", "{failed}");
    // And nothing else is left behind.
    assert_eq!(
        dir_names(&server.staging_dir),
        vec!["s7.csv", "s7.json", "t8.json"]
    );
}

// Issue 19, item 14: an unusable store is discovered only after training.

#[test]
fn a_data_dir_that_is_a_regular_file_shows_in_readiness_and_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::write(&data, b"not a directory").unwrap();
    let (mut child, lines) = spawn_serve(&data, &[]);
    let (address, startup) = wait_listening(&mut child, &lines, Duration::from_secs(30));
    let _server = Killed(child);
    assert!(
        startup
            .iter()
            .any(|l| l.contains("WARN") && l.contains("fits cannot be saved")),
        "{startup:#?}"
    );
    let ready = quick_client()
        .get(format!("http://{address}/readyz"))
        .send()
        .unwrap();
    // It still scores with the models it was started with: ready, and says what is wrong.
    assert_eq!(ready.status(), 200);
    let ready: serde_json::Value = ready.json().unwrap();
    assert_eq!(ready["model_store"]["status"], "unusable", "{ready}");
    assert!(
        ready["model_store"]["problem"]
            .as_str()
            .unwrap()
            .contains("cannot be created"),
        "{ready}"
    );
}

#[test]
fn a_fit_into_an_unusable_store_is_refused_before_training() {
    let server = TestServer::start();
    let ready: serde_json::Value = quick_client()
        .get(format!("{}/readyz", server.url))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(ready["model_store"]["status"], "writable", "{ready}");
    // The store goes away and a regular file takes its place.
    let store = server.model_dir();
    std::fs::remove_dir_all(&store).unwrap();
    std::fs::write(&store, b"not a directory").unwrap();
    let mut body = fit_envelope("dnsexfil", "corp");
    body["meta"]["options"]["params"] = serde_json::json!({"algo": "dnsexfil"});
    let answer = server.post_json("/fit", &body);
    assert_eq!(answer["status"], "error", "{answer}");
    let message = answer["message"].as_str().unwrap();
    assert!(
        message.contains("nothing was trained") && message.contains("--model-dir"),
        "{message}"
    );
    let ready: serde_json::Value = quick_client()
        .get(format!("{}/readyz", server.url))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(ready["model_store"]["status"], "unusable", "{ready}");
}

// Issue 19, item 5: the /fit body upload has no time limit.

/// A client that sends a request's headers and then its body one byte every `every`, for as
/// long as the server reads; returns what the server answered.
fn trickle(address: &str, path: &str, every: Duration, stop: Instant) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{{"
    )
    .unwrap();
    stream.set_nonblocking(true).unwrap();
    let mut answer = Vec::new();
    while Instant::now() < stop {
        std::thread::sleep(every);
        let mut buf = [0u8; 4096];
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                answer.extend_from_slice(&buf[..n]);
                continue;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => break,
        }
        if stream.write_all(b" ").is_err() {
            break;
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

#[test]
fn a_trickled_fit_body_times_out_and_frees_its_slot() {
    let server = TestServer::start_with(ServerOptions {
        limits: dnsexfil::http::limits::Limits {
            max_concurrent_requests: 2,
            request_timeout: Duration::from_secs(2),
            ..Default::default()
        },
        ..Default::default()
    });
    let address = server.url.trim_start_matches("http://").to_string();
    // The tricklers would go on for two minutes: only the server's time limit ends them sooner.
    let stop = Instant::now() + Duration::from_secs(120);
    let tricklers: Vec<_> = (0..2)
        .map(|_| {
            let address = address.clone();
            std::thread::spawn(move || trickle(&address, "/fit", Duration::from_millis(300), stop))
        })
        .collect();
    // The /apply below must not take a slot a trickler has not got yet (that trickler would be
    // refused 429): it starts once both hold one, or once both have been answered.
    wait_until(
        "both tricklers admitted or answered",
        Duration::from_secs(60),
        || in_flight(&address) >= 2.0 || tricklers.iter().all(|t| t.is_finished()),
    );
    // Both slots are taken by the uploads for their first 2 s, not for as long as they trickle:
    // an /apply is answered long before the tricklers would stop (however loaded the machine).
    let envelope = serde_json::to_vec(&escu_envelope(GOOD_ROWS)).unwrap();
    wait_until(
        "an /apply answered beside the tricklers",
        Duration::from_secs(60),
        || {
            let (status, text) = server.post_raw("/apply", envelope.clone());
            status == 200
                && serde_json::from_str::<serde_json::Value>(&text).unwrap()["status"] == "success"
        },
    );
    for trickler in tricklers {
        let answer = trickler.join().unwrap();
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        assert!(answer.contains("--request-timeout-secs"), "{answer}");
    }
}

// Issue 19, item 4: clients that never read their answer pin memory and slots.

fn in_flight(address: &str) -> f64 {
    gauge(address, "dnsexfil_requests_in_flight")
}

/// The value of the unlabelled gauge `name` in the server's /metrics.
fn gauge(address: &str, name: &str) -> f64 {
    let text = quick_client()
        .get(format!("http://{address}/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("{name} in /metrics"))
        .parse()
        .unwrap()
}

fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Write timeout given to the server in the test below.
const WRITE_TIMEOUT: &[&str] = &["--write-timeout-secs", "2"];

#[test]
fn clients_that_never_read_their_answer_are_dropped_after_the_write_timeout() {
    use std::io::Write;
    let data = tempfile::tempdir().unwrap();
    let mut args = vec!["--max-concurrent-requests", "2"];
    args.extend_from_slice(WRITE_TIMEOUT);
    let (mut child, lines) = spawn_serve(data.path(), &args);
    let (address, _) = wait_listening(&mut child, &lines, Duration::from_secs(30));
    let _server = Killed(child);
    // 100,000 tiny events: a 3 MB body, an answer of more than 20 MB, far more than the
    // socket buffers hold.
    let mut body = String::from("{\"events\": [");
    for i in 0..100_000 {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&format!(
            "{{\"src\": \"10.0.{}.{}\", \"query\": \"a{i}.example.com\"}}",
            i % 200,
            i % 250
        ));
    }
    body.push_str("]}");
    let stalled: Vec<std::net::TcpStream> = (0..2)
        .map(|_| {
            let mut stream = std::net::TcpStream::connect(&address).unwrap();
            write!(
                stream,
                "POST /v1/score HTTP/1.1\r\nHost: x\r\nAuthorization: {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .unwrap();
            stream.write_all(body.as_bytes()).unwrap();
            stream
        })
        .collect();
    // (Not both at once necessarily: on a slow machine the first may be dropped before the
    // second has been computed.)
    wait_until("the requests in flight", Duration::from_secs(30), || {
        in_flight(&address) >= 1.0
    });
    // They never read; their sockets stay open. The write timeout frees their slots.
    wait_until("the slots freed", Duration::from_secs(60), || {
        in_flight(&address) == 0.0
    });
    let answer: serde_json::Value = quick_client()
        .post(format!("http://{address}/apply"))
        .header("Authorization", TOKEN)
        .json(&escu_envelope(GOOD_ROWS))
        .send()
        .unwrap()
        .json()
        .unwrap();
    // Answered (this service has no ESCU model), not refused for want of a slot.
    let message = answer["message"].as_str().unwrap();
    assert!(message.contains("no model named"), "{message}");
    drop(stalled);
}

// Issue 19, item 7: holding every connection slot makes the service unreachable.

/// Sends `GET /healthz` on a kept-alive connection and reads the answer; false when the
/// connection is gone.
fn health_on(stream: &mut std::net::TcpStream) -> bool {
    use std::io::{Read, Write};
    if stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return false,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
        let text = String::from_utf8_lossy(&answer);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if body.len() >= length {
                return head.starts_with("HTTP/1.1 200");
            }
        }
    }
}

#[test]
fn keep_alive_health_pollers_holding_every_slot_do_not_lock_new_clients_out() {
    let data = tempfile::tempdir().unwrap();
    let (mut child, lines) = spawn_serve(data.path(), &["--max-connections", "10"]);
    let (address, _) = wait_listening(&mut child, &lines, Duration::from_secs(30));
    let _server = Killed(child);
    let stop = Instant::now() + Duration::from_secs(20);
    // 12 clients, each asking for health every second on its kept-alive connection, and
    // reconnecting at once when it is closed.
    let pollers: Vec<_> = (0..12)
        .map(|_| {
            let address = address.clone();
            std::thread::spawn(move || {
                let mut stream: Option<std::net::TcpStream> = None;
                while Instant::now() < stop {
                    let connected = stream
                        .take()
                        .or_else(|| std::net::TcpStream::connect(&address).ok());
                    if let Some(mut s) = connected {
                        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                        if health_on(&mut s) {
                            stream = Some(s);
                        }
                    }
                    std::thread::sleep(Duration::from_secs(1));
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(3));
    let fresh = || {
        reqwest::blocking::Client::builder()
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap()
            .get(format!("http://{address}/healthz"))
            .send()
            .is_ok_and(|r| r.status() == 200)
    };
    let answered = (0..5)
        .filter(|_| {
            let ok = fresh();
            std::thread::sleep(Duration::from_millis(500));
            ok
        })
        .count();
    assert_eq!(
        answered, 5,
        "new clients answered while the pollers held every slot"
    );
    for poller in pollers {
        poller.join().unwrap();
    }
}

// Issue 19, item 13: a corrupted ESCU .pt aborts start-up under an address-space limit.

/// The published `.pt` with the length of its first tensor-name string in the pickle made
/// huge (the zip stores the pickle as it is, so the bytes are found in place).
fn pt_with_a_huge_string_length() -> Vec<u8> {
    let mut bytes = dnsexfil::model::convert::find_pt(&artifact())
        .unwrap()
        .bytes;
    let at = (0..bytes.len() - 5)
        .find(|&i| {
            let len = u32::from_le_bytes(bytes[i + 1..i + 5].try_into().unwrap()) as usize;
            bytes[i] == b'X'
                && (4..64).contains(&len)
                && bytes.get(i + 5..i + 5 + len).is_some_and(|name| {
                    let name = String::from_utf8_lossy(name);
                    name.ends_with("weight") || name.ends_with("bias")
                })
        })
        .expect("a tensor name in the pickle");
    bytes[at + 1..at + 5].copy_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
    bytes
}

#[test]
fn a_pt_claiming_a_huge_string_is_refused_before_anything_is_allocated() {
    let dir = tempfile::tempdir().unwrap();
    let pt = dir.path().join(format!("{ESCU_MODEL_NAME}.pt"));
    std::fs::write(&pt, pt_with_a_huge_string_length()).unwrap();
    let e = dnsexfil::model::convert::convert(&pt, None)
        .err()
        .expect("refused")
        .to_string();
    assert!(e.contains("claims 4294967280 bytes"), "{e}");
}

#[test]
fn a_damaged_escu_pt_in_the_store_does_not_abort_start_up_under_a_memory_limit() {
    let data = tempfile::tempdir().unwrap();
    let store = data.path().join("app/model/data");
    std::fs::create_dir_all(&store).unwrap();
    std::fs::write(
        store.join(format!("{ESCU_MODEL_NAME}.pt")),
        pt_with_a_huge_string_length(),
    )
    .unwrap();
    // 2 GiB of address space: the service runs in far less, a 4 GiB allocation fails.
    let (mut child, lines) = spawn_serve_limited(data.path(), &[], TOKEN, Some(2 << 20));
    let (_, startup) = wait_listening(&mut child, &lines, Duration::from_secs(30));
    let _server = Killed(child);
    assert!(
        startup
            .iter()
            .any(|l| l.contains(".pt in the store skipped") && l.contains("claims")),
        "{startup:#?}"
    );
}

#[test]
fn the_pickle_check_never_panics_on_random_bytes() {
    // Seeded: the same cases every run.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..20_000 {
        let len = (next() % 64) as usize;
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                // Mostly op-codes the reader knows, so the walk goes deep.
                const OPS: &[u8] = b"\x80cqrRX(JtQKMNhjsu}dbG]ae.\x8a\x85\x86\x87\x88\x89\x81)";
                let r = next();
                if r % 3 == 0 {
                    r as u8
                } else {
                    OPS[(r >> 8) as usize % OPS.len()]
                }
            })
            .collect();
        let _ = dnsexfil::model::convert::check_pickle(&bytes);
    }
}

// Issue 19, item 8 (in part): every refusal of a DSDL request is logged with its size and limit.

#[test]
fn an_over_limit_dsdl_body_is_logged_with_its_size_and_the_limit() {
    let data = tempfile::tempdir().unwrap();
    let (mut child, lines) = spawn_serve(data.path(), &["--max-body-mb", "1"]);
    let (address, _) = wait_listening(&mut child, &lines, Duration::from_secs(30));
    let _server = Killed(child);
    let mut csv = String::from("src,query,rank\n");
    while csv.len() < 2 << 20 {
        csv.push_str("10.1.1.1,www.example.com,1\n");
    }
    let answer = post(&address, "/apply", &escu_envelope(&csv));
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("exceeds the 1 MiB limit"),
        "{answer}"
    );
    let logged = (0..50)
        .filter_map(|_| lines.recv_timeout(Duration::from_millis(100)).ok())
        .find(|l| l.contains("exceeds --max-body-mb"))
        .expect("the refusal is logged");
    let v: serde_json::Value = serde_json::from_str(&logged).unwrap();
    assert_eq!(v["level"], "WARN", "{logged}");
    assert_eq!(v["fields"]["limit_bytes"], 1 << 20, "{logged}");
    assert!(
        v["fields"]["received_bytes"].as_u64().unwrap() > 2 << 20,
        "{logged}"
    );
}

/// The fields of the next log line containing `marker` (waiting up to [`PATIENCE`]), asserted
/// to be at warn level.
fn warned(lines: &std::sync::mpsc::Receiver<String>, marker: &str) -> serde_json::Value {
    let deadline = Instant::now() + PATIENCE;
    while let Ok(line) = lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        if line.contains(marker) {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            assert_eq!(v["level"], "WARN", "{line}");
            return v["fields"].clone();
        }
    }
    panic!("no log line with {marker:?}");
}

#[test]
fn dsdl_requests_over_the_row_limits_are_logged_with_their_rows_and_the_limit() {
    let data = tempfile::tempdir().unwrap();
    let (mut child, lines) =
        spawn_serve(data.path(), &["--max-rows", "100", "--max-fit-rows", "20"]);
    let (address, _) = wait_listening(&mut child, &lines, Duration::from_secs(30));
    let _server = Killed(child);
    let mut csv = String::from("src,query,rank\n");
    for i in 0..150 {
        csv.push_str(&format!("10.1.1.{},www.example{i}.com,1\n", i % 250));
    }
    let answer = post(&address, "/apply", &escu_envelope_for(&csv, "dnsexfil_v7"));
    let message = answer["message"].as_str().unwrap();
    assert!(
        message.contains("has 150 rows, more than the 100 allowed"),
        "{answer}"
    );
    let logged_rows = |message: &str| {
        let fields = warned(&lines, message);
        (fields["rows"].as_u64(), fields["limit_rows"].as_u64())
    };
    assert_eq!(
        logged_rows("more rows than --max-rows"),
        (Some(150), Some(100))
    );
    // A fit's own, lower limit (40 labelled rows).
    let mut fit = fit_envelope("dnsexfil", "rowcap");
    fit["meta"]["options"]["params"] = serde_json::json!({"algo": "dnsexfil"});
    let answer = post(&address, "/fit", &fit);
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("--max-fit-rows"),
        "{answer}"
    );
    assert_eq!(
        logged_rows("more rows than --max-fit-rows"),
        (Some(40), Some(20))
    );
}

// Issue 19, item 6 (in part): every scoring path takes a compute permit.

#[test]
fn a_fit_without_a_label_waits_for_a_compute_permit_like_an_apply() {
    use dnsexfil::http::dsdl::Endpoint;
    use dnsexfil::http::state::{AppState, ServerConfig};
    let config = ServerConfig {
        token: dnsexfil::http::auth::Token::Unset,
        max_body_bytes: 1 << 20,
        max_rows: 1000,
        staging_dir: std::env::temp_dir(),
        model_store: None,
        fit_time_limit: Duration::from_secs(1),
        max_fit_rows: 1000,
        limits: Default::default(),
    };
    let state = AppState::new(escu_registry(), config, 1);
    // A fit envelope without a label field: it only applies the model.
    let mut body = escu_envelope(GOOD_ROWS);
    body["meta"]["options"]["params"] = serde_json::json!({"algo": ESCU_MODEL_NAME});
    let body = serde_json::to_vec(&body).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    // The one compute permit is taken (a large /apply computing).
    let held = state.compute.clone().try_acquire_owned().unwrap();
    let worker = state.clone();
    let fit = runtime
        .spawn_blocking(move || dnsexfil::http::dsdl::process(&worker, &body, Endpoint::Fit));
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !fit.is_finished(),
        "the fit scored without a compute permit"
    );
    drop(held);
    let answer = runtime.block_on(fit).unwrap();
    assert_eq!(answer.status, "success", "{}", answer.message);
}

/// Posts `body` to `/apply` and checks it is refused for the in-flight budget: 503, told to
/// retry after a second, with `told` in the DSDL message.
fn assert_refused_for_the_budget(
    client: &reqwest::blocking::Client,
    address: &str,
    body: &[u8],
    told: &str,
) {
    let refused = client
        .post(format!("http://{address}/apply"))
        .header("Authorization", TOKEN)
        .body(body.to_vec())
        .send()
        .unwrap();
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "1");
    let answer: serde_json::Value = refused.json().unwrap();
    assert!(
        answer["message"].as_str().unwrap().contains(told),
        "{answer}"
    );
}

// Issue 19, item 6 (in part): a budget for the bodies of all requests in flight.

#[test]
fn bodies_over_the_in_flight_budget_are_refused_with_retry_after() {
    use std::io::Write;
    let data = tempfile::tempdir().unwrap();
    let (mut child, lines) = spawn_serve(
        data.path(),
        &["--max-body-mb", "4", "--max-bodies-in-flight-mb", "6"],
    );
    let (address, _) = wait_listening(&mut child, &lines, Duration::from_secs(30));
    let _server = Killed(child);
    let mut csv = String::from("src,query,rank\n");
    while csv.len() < 3 << 20 {
        csv.push_str("10.1.1.1,www.example.com,1\n");
    }
    let body = serde_json::to_vec(&escu_envelope_for(&csv, "dnsexfil_v7")).unwrap();
    // One request holds 3.5 MiB of its body (the rest still to come).
    let mut holding = std::net::TcpStream::connect(&address).unwrap();
    write!(
        holding,
        "POST /apply HTTP/1.1\r\nHost: x\r\nAuthorization: {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len() + (1 << 20)
    )
    .unwrap();
    holding.write_all(&body).unwrap();
    holding.write_all(&vec![b' '; 512 << 10]).unwrap();
    // Once the server has counted what it sent (however long that takes on a loaded machine),
    // another 3.5 MiB would take the bodies in flight over 6 MiB: refused, and told to retry.
    let sent = (body.len() + (512 << 10)) as f64;
    wait_until("the first body counted", Duration::from_secs(60), || {
        gauge(&address, "dnsexfil_body_bytes_in_flight") >= sent
    });
    assert_eq!(
        gauge(&address, "dnsexfil_max_body_bytes_in_flight"),
        (6 << 20) as f64
    );
    let client = quick_client();
    assert_refused_for_the_budget(&client, &address, &body, "--max-bodies-in-flight-mb");
    // Logged with the body's size and the budget.
    let fields = warned(&lines, "the bodies in flight take the budget");
    assert_eq!(fields["budget_bytes"], 6 << 20, "{fields}");
    assert_eq!(fields["received_bytes"], body.len(), "{fields}");
    // A body that fits what is left, but whose answer (its rows back, every one scored, with
    // two more cells each) would not: refused as well once its body is read, and logged with
    // the answer's size.
    let mut rows = String::from("src,query,rank\n");
    while rows.len() < 1 << 20 {
        rows.push_str(&format!("10.1.1.1,a{}.example.com,1\n", rows.len()));
    }
    let small_body = serde_json::to_vec(&escu_envelope_for(&rows, "dnsexfil_v7")).unwrap();
    assert_refused_for_the_budget(
        &client,
        &address,
        &small_body,
        "this request's answer would not fit",
    );
    let fields = warned(&lines, "its answer would take the budget over");
    assert_eq!(fields["budget_bytes"], 6 << 20, "{fields}");
    let answer_bytes = fields["answer_bytes"].as_u64().unwrap();
    assert!(
        answer_bytes > small_body.len() as u64 && answer_bytes < 6 << 20,
        "{fields}"
    );
    // The same on /v1.
    let v1 = client
        .post(format!("http://{address}/v1/score"))
        .header("Authorization", TOKEN)
        .header("Content-Type", "application/json")
        .body(format!(
            "{{\"events\": [], \"pad\": \"{}\"}}",
            "x".repeat(3 << 20)
        ))
        .send()
        .unwrap();
    assert_eq!(v1.status(), 503);
    assert_eq!(v1.headers()["retry-after"], "1");
    // Once the first is gone, the budget is back (for a body as large, with a small answer:
    // answers are counted too, and those rows' answer would be twice the budget).
    drop(holding);
    let mut padded = serde_json::to_vec(&escu_envelope_for(GOOD_ROWS, "dnsexfil_v7")).unwrap();
    padded.resize(body.len(), b' ');
    wait_until("the budget back", Duration::from_secs(60), || {
        let answer = client
            .post(format!("http://{address}/apply"))
            .header("Authorization", TOKEN)
            .body(padded.clone())
            .send()
            .unwrap();
        answer.status() == 200 && answer.json::<serde_json::Value>().unwrap()["status"] == "success"
    });
}

#[test]
fn a_body_budget_below_the_body_limit_is_refused_at_start_up() {
    let data = tempfile::tempdir().unwrap();
    let out = dnsexfil_command()
        .args([
            "serve",
            "--port",
            "0",
            "--enable-https",
            "false",
            "--data-dir",
        ])
        .arg(data.path())
        .args(["--max-body-mb", "64", "--max-bodies-in-flight-mb", "32"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--max-bodies-in-flight-mb (32) is smaller than --max-body-mb (64)"),
        "{stderr}"
    );
}

// Issue 19, item 8: a detection hour can be switched off by long names.

/// `rows` rows of the longest legal DNS names in presentation form: 250 octets in labels of
/// 63, 63, 63 and 61 (255 on the wire with the length octets and the root), every octet a
/// `\DDD` escape, as a heavy tunnel's names reach Splunk; in the envelope Splunk's client sends.
fn longest_names_envelope(rows: usize) -> Vec<u8> {
    let mut csv = String::with_capacity(rows * 1020 + 32);
    csv.push_str("src,query,rank\n");
    let mut state = 7u64;
    for i in 0..rows {
        csv.push_str(&format!("10.{}.{}.{},", i % 256, (i / 256) % 256, i % 251));
        for (n, len) in [63, 63, 63, 61].into_iter().enumerate() {
            if n > 0 {
                csv.push('.');
            }
            for _ in 0..len {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let octet = (state >> 56) as u8;
                csv.push('\\');
                for digit in [octet / 100, octet / 10 % 10, octet % 10] {
                    csv.push(char::from(b'0' + digit));
                }
            }
        }
        csv.push_str(",1\n");
    }
    let mut body = escu_envelope_for(&csv, "dnsexfil_v7");
    body["meta"]["options"]["params"] = serde_json::json!({"algo": "dnsexfil_v7"});
    serde_json::to_vec(&body).unwrap()
}

#[test]
fn the_default_limits_take_an_hour_of_the_longest_names() {
    // MLTK sends up to max_inputs = 100,000 rows.
    let body = longest_names_envelope(100_000);
    assert!(body.len() > 120 << 20, "{} bytes", body.len());
    assert!(
        body.len() <= dnsexfil::app::DEFAULT_MAX_BODY_MB << 20,
        "{} bytes do not fit the default --max-body-mb",
        body.len()
    );
    assert!(body.len() <= dnsexfil::http::limits::DEFAULT_MAX_BODIES_IN_FLIGHT_MB << 20);
}

#[test]
fn the_longest_names_are_scored_as_they_are_sent() {
    // More than the 32 MiB body limit of before, with the service's default limits.
    let rows = 27_000;
    let body = longest_names_envelope(rows);
    assert!(body.len() > 32 << 20, "{} bytes", body.len());
    let data = tempfile::tempdir().unwrap();
    let (mut child, lines) = spawn_serve(data.path(), &[]);
    let (address, _) = wait_listening(&mut child, &lines, Duration::from_secs(30));
    let _server = Killed(child);
    // Drained, so the log of a long request never fills the pipe.
    std::thread::spawn(move || while lines.recv().is_ok() {});
    let answer = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(600))
        .build()
        .unwrap()
        .post(format!("http://{address}/apply"))
        .header("Authorization", TOKEN)
        .body(body)
        .send()
        .unwrap();
    assert_eq!(answer.status(), 200);
    let answer: serde_json::Value = answer.json().unwrap();
    let (header, results) = results_of(&answer);
    assert_eq!(results.len(), rows);
    let proba = header.iter().position(|h| h.ends_with("_proba")).unwrap();
    assert!(
        results.iter().all(|r| !r[proba].is_empty()),
        "every row is scored"
    );
}

// Issue 19, item 4 (answers): answers not yet sent count against the budget for bodies.

#[test]
fn unsent_answers_count_against_the_budget_for_bodies_in_flight() {
    use std::io::Write;
    let data = tempfile::tempdir().unwrap();
    let (mut child, lines) = spawn_serve(
        data.path(),
        &["--max-body-mb", "8", "--max-bodies-in-flight-mb", "12"],
    );
    let (address, _) = wait_listening(&mut child, &lines, Duration::from_secs(30));
    let _server = Killed(child);
    // 100,000 tiny events: a 5 MB body, an answer of more than 20 MB that is never read.
    let mut body = String::from("{\"events\": [");
    for i in 0..100_000 {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&format!(
            "{{\"src\": \"10.0.0.{}\", \"query\": \"a{i}.example.com\"}}",
            i % 250
        ));
    }
    body.push_str("]}");
    let mut never_reads = std::net::TcpStream::connect(&address).unwrap();
    write!(
        never_reads,
        "POST /v1/score HTTP/1.1\r\nHost: x\r\nAuthorization: {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    never_reads.write_all(body.as_bytes()).unwrap();
    wait_until("the answer being sent", Duration::from_secs(30), || {
        in_flight(&address) >= 1.0
    });
    // Once the answer is made (and stuck), a new body finds the budget taken: what the answer
    // is written from stays counted (about the body's size here) until it has been sent.
    let mut small = serde_json::to_vec(&escu_envelope_for(GOOD_ROWS, "dnsexfil_v7")).unwrap();
    small.resize(15 << 19, b' ');
    let mut retry_after = None;
    wait_until("a new body refused", Duration::from_secs(30), || {
        let answer = quick_client()
            .post(format!("http://{address}/apply"))
            .header("Authorization", TOKEN)
            .body(small.clone())
            .send()
            .unwrap();
        retry_after = answer.headers().get("retry-after").cloned();
        answer.status() == 503
    });
    assert_eq!(retry_after.unwrap(), "1");
    // The client goes away: its answer's memory, and the budget, come back.
    drop(never_reads);
    wait_until("the budget back", Duration::from_secs(30), || {
        quick_client()
            .post(format!("http://{address}/apply"))
            .header("Authorization", TOKEN)
            .body(small.clone())
            .send()
            .is_ok_and(|r| r.status() == 200)
    });
}

// Issue 19, item 4 (memory): an answer nobody reads holds a piece of it, not all of it.

/// A field of `/proc/<pid>/status` in KiB (`VmRSS`, `VmHWM`).
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
}

/// A `/v1/score` JSON body of `events` tiny events: the answer is about seven times the body.
fn tiny_events_body(events: usize) -> String {
    let mut body = String::with_capacity(events * 24 + 16);
    body.push_str("{\"events\":[");
    for i in 0..events {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&format!(
            "{{\"src\":\"{}\",\"query\":\"{}\"}}",
            i % 10,
            i % 7
        ));
    }
    body.push_str("]}");
    body
}

/// Sends `body` to `/v1/score` on a new connection and returns it unread.
fn post_unread(address: &str, body: &str) -> std::net::TcpStream {
    use std::io::Write;
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    write!(
        stream,
        "POST /v1/score HTTP/1.1\r\nHost: x\r\nAuthorization: {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    stream.write_all(body.as_bytes()).unwrap();
    stream
}

/// Waits for the head of the answer on `stream` without reading it (peeked, the bytes stay in
/// the socket); returns its status and `Content-Length`.
fn peek_head(stream: &std::net::TcpStream) -> (u16, usize) {
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut buf = vec![0u8; 4096];
    let deadline = Instant::now() + PATIENCE;
    loop {
        let n = stream
            .peek(&mut buf)
            .expect("the answer's head within the patience");
        let text = String::from_utf8_lossy(&buf[..n]);
        if let Some((head, _)) = text.split_once("\r\n\r\n") {
            let status = head[9..12].parse().unwrap();
            let length = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(|v| v.parse().unwrap())
                })
                .unwrap_or_else(|| panic!("a Content-Length: {head}"));
            return (status, length);
        }
        assert!(Instant::now() < deadline, "no complete head: {text}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn answers_nobody_reads_hold_a_fraction_of_their_size() {
    let data = tempfile::tempdir().unwrap();
    // A write timeout longer than the test: the answers stay unread for as long as it lasts.
    let (mut child, lines) = spawn_serve(data.path(), &["--write-timeout-secs", "3600"]);
    let (address, _) = wait_listening(&mut child, &lines, Duration::from_secs(30));
    let pid = child.id();
    let _server = Killed(child);
    // Idle, once the scoring path has run.
    let small = tiny_events_body(2_000);
    let answer = quick_client()
        .post(format!("http://{address}/v1/score"))
        .header("Authorization", TOKEN)
        .header("Content-Type", "application/json")
        .body(small)
        .send()
        .unwrap();
    assert_eq!(answer.status(), 200);
    answer.bytes().unwrap();
    let idle = status_kib(pid, "VmRSS:") << 10;
    // Four clients post 200,000 tiny events each (a 5 MB body, a 30 MB answer) and never read.
    let body = tiny_events_body(200_000);
    let unread: Vec<_> = (0..4).map(|_| post_unread(&address, &body)).collect();
    let mut answers = 0;
    for stream in &unread {
        let (status, length) = peek_head(stream);
        assert_eq!(status, 200);
        answers += length;
    }
    assert!(answers > 4 * 6 * body.len(), "{answers} bytes of answers");
    // Every answer is being sent (its head arrived) and none is read: what the service holds
    // for them comes to well under half of them once the work's memory is handed back. An
    // answer made whole before it is sent held all of it until the client read nearly all.
    let mut held = 0;
    let settled = Instant::now() + PATIENCE;
    while Instant::now() < settled {
        held = (status_kib(pid, "VmRSS:") << 10).saturating_sub(idle);
        if held * 2 < answers as u64 {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        held * 2 < answers as u64,
        "{} MiB held above idle for {} MiB of unread answers",
        held >> 20,
        answers >> 20
    );
    assert_eq!(
        in_flight(&address),
        4.0,
        "the four answers are still being sent"
    );
    drop(unread);
}

// Issue 19, item 6: the Kubernetes manifest's memory limit holds for any mix of requests
// within its limits.

/// The Deployment's `DNSEXFIL_*` settings, and its container's memory limit (bytes) and CPU
/// limit, from docker/kubernetes/deployment.yaml.
fn manifest_settings() -> (Vec<(String, String)>, u64, usize) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docker/kubernetes/deployment.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    let mut env = Vec::new();
    for pair in lines.windows(2) {
        if let (Some(name), Some(value)) = (
            pair[0].strip_prefix("- name: DNSEXFIL_"),
            pair[1].strip_prefix("value: "),
        ) {
            env.push((
                format!("DNSEXFIL_{name}"),
                value.trim_matches('"').to_string(),
            ));
        }
    }
    let limits = lines
        .iter()
        .position(|l| *l == "limits:")
        .expect("resources.limits in the manifest");
    let field = |name: &str| {
        lines[limits + 1..limits + 3]
            .iter()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("limits.{name} in the manifest"))
            .trim()
            .trim_matches('"')
            .to_string()
    };
    let memory = field("memory:");
    let memory = match memory.split_at(memory.len() - 2) {
        (n, "Gi") => n.parse::<u64>().unwrap() << 30,
        (n, "Mi") => n.parse::<u64>().unwrap() << 20,
        _ => panic!("memory limit {memory}: expected Mi or Gi"),
    };
    let cpus = field("cpu:")
        .parse::<f64>()
        .expect("a whole number of CPUs")
        .ceil() as usize;
    (env, memory, cpus)
}

/// `dnsexfil serve` with the manifest's settings (and as many compute threads as its CPU
/// limit gives): the child, its log, and its effective limits from its "listening" line.
fn serve_as_the_manifest(data_dir: &Path) -> (Killed, String, serde_json::Value) {
    let (env, _, cpus) = manifest_settings();
    let mut args: Vec<String> = Vec::new();
    // The limits the service enforces and its history; paths, port and logging are the test's
    // own.
    for (name, value) in env.iter().filter(|(name, _)| {
        name.starts_with("DNSEXFIL_MAX_") || name.starts_with("DNSEXFIL_HISTORY")
    }) {
        let flag = name
            .trim_start_matches("DNSEXFIL_")
            .to_lowercase()
            .replace('_', "-");
        args.push(format!("--{flag}"));
        args.push(value.clone());
    }
    args.extend(["--compute-threads".to_string(), cpus.to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (mut child, lines) = spawn_serve(data_dir, &args);
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Ok(line) = lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if let Some(address) = v["fields"]["address"].as_str() {
            let address = address.to_string();
            std::thread::spawn(move || while lines.recv().is_ok() {});
            return (Killed(child), address, v["fields"].clone());
        }
    }
    let _ = child.kill();
    panic!("the server did not listen");
}

/// `rows` CSV rows (`src,query,rank` and, with `label`, a 0/1 label) whose names make the
/// envelope about `bytes` long; every name has a `\DDD` escape, so the CSV is unescaped into a
/// copy (the most memory a DSDL body takes).
fn dsdl_rows_filling(rows: usize, bytes: usize, label: bool) -> String {
    let row = |i: usize, fill: usize| {
        format!(
            "10.{}.{}.{},\\{:03}{}.t.example.com,1{}\n",
            i % 256,
            (i / 256) % 256,
            i % 251,
            i % 256,
            "x".repeat(fill),
            if label {
                format!(",{}", i % 2)
            } else {
                String::new()
            }
        )
    };
    // JSON doubles the backslash and escapes the line end: two bytes more a row.
    let fixed = row(rows, 0).len() + 2;
    let fill = (bytes.saturating_sub(4096) / rows).saturating_sub(fixed);
    let mut csv = String::from(if label {
        "src,query,rank,is_exfiltration\n"
    } else {
        "src,query,rank\n"
    });
    for i in 0..rows {
        csv.push_str(&row(i, fill));
    }
    csv
}

/// `rows` `/v1/score` events whose queries make the body about `bytes` long; with `bad_rank`,
/// every event's rank is a string (each event answered with an error, its text kept).
fn events_filling(rows: usize, bytes: usize, bad_rank: bool) -> Vec<String> {
    let event = |i: usize, fill: usize| {
        format!(
            "{{\"src\":\"10.{}.{}.{}\",\"query\":\"{}{i}.t.example.com\"{}}}",
            i % 256,
            (i / 256) % 256,
            i % 251,
            "x".repeat(fill),
            if bad_rank {
                format!(",\"rank\":\"{}\"", "r".repeat(4))
            } else {
                String::new()
            }
        )
    };
    let fixed = event(rows, 0).len() + 1;
    let fill = (bytes.saturating_sub(4096) / rows).saturating_sub(fixed);
    (0..rows).map(|i| event(i, fill)).collect()
}

/// Peak resident memory one request of `body` to `path` takes above a fresh server's idle, with
/// the manifest's settings; the answer's status and its first bytes.
fn peak_above_idle(path: &str, content_type: &str, body: Vec<u8>) -> (u64, u64, String) {
    let data = tempfile::tempdir().unwrap();
    let (server, address, _) = serve_as_the_manifest(data.path());
    let pid = server.0.id();
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(600))
        .build()
        .unwrap();
    // Idle once a small request has run the same path.
    let warm = client
        .get(format!("http://{address}/readyz"))
        .send()
        .unwrap();
    assert_eq!(warm.status(), 200);
    let idle = status_kib(pid, "VmRSS:") << 10;
    let answer = client
        .post(format!("http://{address}{path}"))
        .header("Authorization", TOKEN)
        .header("Content-Type", content_type)
        .body(body)
        .send()
        .unwrap();
    let status = answer.status().as_u16();
    let text = answer.text().unwrap();
    assert_eq!(status, 200, "{path}: {}", &text[..text.len().min(300)]);
    let peak = status_kib(pid, "VmHWM:") << 10;
    (idle, peak - idle, text[..text.len().min(120)].to_string())
}

#[test]
fn the_manifest_memory_limit_holds_for_any_mix_of_requests_within_its_limits() {
    let (_, memory_limit, cpus) = manifest_settings();
    let data = tempfile::tempdir().unwrap();
    let (server, _, limits) = serve_as_the_manifest(data.path());
    drop(server);
    let setting = |name: &str| {
        limits[name]
            .as_u64()
            .unwrap_or_else(|| panic!("{name} in {limits}"))
    };
    let (body_limit, rows) = (setting("max_body_mb") << 20, setting("max_rows") as usize);
    let fit_rows = setting("max_fit_rows") as usize;
    let budget = setting("max_bodies_in_flight_mb") << 20;
    let compute = setting("compute_threads");
    assert_eq!(compute as usize, cpus);
    let connections = setting("max_connections");
    // The in-process history holds at most its cap (nothing with Redis or off).
    let history = match limits["history"].as_str() {
        Some("memory") => setting("history_max_mb") << 20,
        _ => 0,
    };
    // Each kind of request at once at the body limit and the row limit, the shapes that take
    // the most memory a byte: DSDL bodies that must be unescaped into a copy, events whose
    // answers are the largest, events that are each answered with an error.
    let target = body_limit as usize - (64 << 10);
    let dsdl = |path: &str, csv: &str, params: serde_json::Value| {
        // A fit saves `<algo>_<model_name>`: not a name ending in a built-in model's.
        let model_name = if params["algo"] == "dnsexfil" {
            "sizing"
        } else {
            "dnsexfil_v7"
        };
        let mut envelope = escu_envelope_for(csv, model_name);
        envelope["meta"]["options"]["params"] = params;
        if path == "/fit" && csv.starts_with("src,query,rank,is_exfiltration") {
            envelope["meta"]["options"]["target_variable"] = serde_json::json!(["is_exfiltration"]);
            envelope["meta"]["target_variables"] = serde_json::json!(["is_exfiltration"]);
        }
        let body = serde_json::to_vec(&envelope).unwrap();
        assert!(
            body.len() as u64 <= body_limit,
            "{path}: {} bytes",
            body.len()
        );
        body
    };
    let csv = dsdl_rows_filling(rows, target, false);
    let json_events = events_filling(rows, target, false);
    let bad_events = events_filling(rows, target, true);
    let mut measured: Vec<(&str, u64, u64)> = Vec::new();
    let cases: Vec<(&str, &str, &str, Vec<u8>)> = vec![
        (
            "/apply",
            "/apply",
            "application/json",
            dsdl("/apply", &csv, serde_json::json!({"algo": "dnsexfil_v7"})),
        ),
        (
            "/fit, no label",
            "/fit",
            "application/json",
            dsdl("/fit", &csv, serde_json::json!({"algo": "dnsexfil_v7"})),
        ),
        (
            "/v1/score JSON",
            "/v1/score",
            "application/json",
            format!("{{\"events\":[{}]}}", json_events.join(",")).into_bytes(),
        ),
        (
            "/v1/score NDJSON",
            "/v1/score",
            "application/x-ndjson",
            json_events.join("\n").into_bytes(),
        ),
        (
            "/v1/score, errors",
            "/v1/score",
            "application/json",
            format!("{{\"events\":[{}]}}", bad_events.join(",")).into_bytes(),
        ),
    ];
    drop((csv, json_events, bad_events));
    let mut idle = 0;
    for (name, path, content_type, body) in cases {
        let size = body.len() as u64;
        assert!(
            size <= body_limit && size > body_limit / 2,
            "{name}: {size} bytes"
        );
        let (idle_here, peak, _) = peak_above_idle(path, content_type, body);
        idle = idle.max(idle_here);
        measured.push((name, size, peak));
    }
    // A fit that trains (one at a time, outside the compute permits), at the fit row limit.
    let fit_csv = dsdl_rows_filling(fit_rows, target, true);
    let fit_body = dsdl(
        "/fit",
        &fit_csv,
        serde_json::json!({"algo": "dnsexfil", "epochs": "1"}),
    );
    let fit_size = fit_body.len() as u64;
    let (_, training, answer) = peak_above_idle("/fit", "application/json", fit_body);
    assert!(answer.contains("\"success\""), "{answer}");
    let computing = measured.iter().map(|m| m.2).max().unwrap();
    // Requests that are not computing hold at most the budget (bodies waiting for a compute
    // permit, answers not yet sent: each counted before it is made); at most `compute`
    // requests compute at once, each at most at the peak measured; one fit trains. Besides: a
    // request in flight may have grown its connection's read buffer to hyper's 400 KiB while
    // its body came, and every open connection keeps its buffers and TLS state (64 KiB, an
    // allowance, not a measurement).
    let per_request = 512 << 10;
    let per_connection = 64 << 10;
    let in_flight = setting("max_concurrent_requests");
    let bound = idle
        + history
        + budget
        + compute * computing
        + training
        + in_flight * per_request
        + connections * per_connection;
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    for (name, size, peak) in &measured {
        eprintln!(
            "{name}: {:.1} MiB body, peak {:.0} MiB above idle ({:.1}x)",
            mib(*size),
            mib(*peak),
            *peak as f64 / *size as f64
        );
    }
    eprintln!(
        "training fit of {fit_rows} rows: {:.1} MiB body, peak {:.0} MiB above idle",
        mib(fit_size),
        mib(training)
    );
    eprintln!(
        "bound: idle {:.0} + history {:.0} + budget {:.0} + {compute} x {:.0} computing + {:.0} training + {in_flight} requests x {:.1} + {connections} connections x {:.2} = {:.0} MiB of the manifest's {:.0} MiB",
        mib(idle), mib(history), mib(budget), mib(computing), mib(training), mib(per_request), mib(per_connection), mib(bound), mib(memory_limit)
    );
    assert!(
        bound <= memory_limit,
        "the manifest's settings allow {:.0} MiB, over its {:.0} MiB memory limit: lower DNSEXFIL_MAX_BODIES_IN_FLIGHT_MB, DNSEXFIL_MAX_BODY_MB, DNSEXFIL_MAX_ROWS, DNSEXFIL_MAX_FIT_ROWS or DNSEXFIL_HISTORY_MAX_MB, or raise the limit",
        mib(bound),
        mib(memory_limit)
    );
}

#[test]
fn bodies_and_answers_in_flight_stay_within_the_budget() {
    let data = tempfile::tempdir().unwrap();
    let (mut child, lines) = spawn_serve(
        data.path(),
        &[
            "--max-body-mb",
            "8",
            "--max-bodies-in-flight-mb",
            "24",
            "--write-timeout-secs",
            "3600",
        ],
    );
    let (address, _) = wait_listening(&mut child, &lines, Duration::from_secs(30));
    let pid = child.id();
    let _server = Killed(child);
    let warm = quick_client()
        .post(format!("http://{address}/v1/score"))
        .header("Authorization", TOKEN)
        .header("Content-Type", "application/json")
        .body(tiny_events_body(2_000))
        .send()
        .unwrap();
    assert_eq!(warm.status(), 200);
    warm.bytes().unwrap();
    let idle = status_kib(pid, "VmRSS:") << 10;
    // Sixteen bodies of 1 MB fit the 24 MiB budget at once; their answers (6 MB each) would
    // not. None is read.
    let body = tiny_events_body(40_000);
    let unread: Vec<_> = (0..16).map(|_| post_unread(&address, &body)).collect();
    let (mut answered, mut refused) = (0, 0);
    for stream in &unread {
        match peek_head(stream) {
            (200, _) => answered += 1,
            (503, _) => refused += 1,
            (status, _) => panic!("answered {status}"),
        }
    }
    assert!(answered > 0, "{refused} refused");
    // What the unread answers hold comes to within the budget, once the work's memory is
    // handed back (an answer made whole while the budget had no room for it held it all).
    // These bodies are under a megabyte, so only the making of their large answers tells the
    // service to hand the work's memory back: without that, 84 MiB stayed held. Slack for what
    // the budget does not count: each connection's buffers, and freed memory the allocator
    // keeps in pages still partly in use (32 MiB held in all on a debug build once handed
    // back). The answers themselves, made whole, would hold about 100 MiB.
    let budget = 24u64 << 20;
    let slack = 40u64 << 20;
    let mut held = 0;
    let settled = Instant::now() + PATIENCE;
    while Instant::now() < settled {
        held = (status_kib(pid, "VmRSS:") << 10).saturating_sub(idle);
        if held <= budget + slack {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        held <= budget + slack,
        "{} MiB held above idle by {answered} unread answers ({refused} refused), over the {} MiB budget and {} MiB of slack",
        held >> 20,
        budget >> 20,
        slack >> 20
    );
    drop(unread);
}
