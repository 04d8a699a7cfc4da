//! Training from a labelled log: `dnsexfil train` reproduces the shipped models bit for bit
//! (the default `dnsexfil_v7`, the long-window `dnsexfil_v5` and the earlier `dnsexfil_v6`,
//! `dnsexfil_v4` and `dnsexfil_v2`),
//! the pinned `dnsexfil_v3` still loads and scores, the built-in default is served with no
//! flags, and `dnsexfil evaluate` leaves tools out of training and scores them.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

fn bin() -> Command {
    dnsexfil_command()
}

fn dev(file: &str) -> std::path::PathBuf {
    fixtures().join("dev").join(file)
}

/// `dnsexfil train` on the development log, writing `out`.
fn train_on_dev(out: &Path) -> Command {
    let mut command = bin();
    command
        .arg("train")
        .arg("--events")
        .arg(dev("events.csv"))
        .arg("--labels")
        .arg(dev("labels.csv"))
        .arg("-o")
        .arg(out);
    command
}

/// Runs `command`, then checks that it wrote exactly the shipped `models/<file>`.
fn assert_reproduces(command: &mut Command, out_path: &Path, file: &str) -> std::process::Output {
    let out = run_ok(command);
    let shipped = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("models")
            .join(file),
    )
    .unwrap();
    assert!(
        std::fs::read(out_path).unwrap() == shipped,
        "the trained model differs from models/{file}"
    );
    out
}

#[test]
fn the_documented_command_reproduces_the_shipped_default_model_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("dnsexfil_v7.safetensors");
    // The command of models/README.md.
    let out = assert_reproduces(
        &mut train_on_dev(&out_path),
        &out_path,
        "dnsexfil_v7.safetensors",
    );
    let progress = String::from_utf8_lossy(&out.stderr);
    assert!(
        progress.contains("epoch   1: train loss"),
        "progress per epoch: {progress}"
    );
    let report: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("dnsexfil_v7.safetensors.report.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(report["schema"], "dnsexfil-v4");
    assert_eq!(report["params"]["threat_sessions"], 24);
    // The servers' own lookups are the default recipe's for dnsexfil-v4.
    assert_eq!(report["params"]["server_lookalikes"], true, "{report}");
    // It alerts where the trained network scored 0.9.
    assert_eq!(report["params"]["alert_at"], 0.9, "{report}");
    // models/README.md states the file's SHA-256.
    let card =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("models/README.md"))
            .unwrap();
    let stated_sha = format!(
        "(SHA-256 `{}`)",
        dnsexfil::model::sha256_hex(&std::fs::read(&out_path).unwrap())
    );
    assert!(
        card.contains(&stated_sha),
        "models/README.md states {stated_sha}"
    );
    // models/README.md: "best epoch 5, validation ROC AUC 0.99993".
    assert_eq!(report["best_epoch"], 5, "{report}");
    assert_eq!(
        stated(&report["validation"], "roc_auc", 5, false),
        "0.99993"
    );
}

/// Trains with the card's `args` into `file`, checks the bytes are `models/<file>`'s and that each
/// of `pages` states their SHA-256.
fn assert_rebuilds_as_documented(args: &[&str], file: &str, pages: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join(file);
    let mut command = train_on_dev(&out_path);
    command.args(args);
    assert_reproduces(&mut command, &out_path, file);
    let sha = dnsexfil::model::sha256_hex(&std::fs::read(&out_path).unwrap());
    for page in pages {
        let text =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(page)).unwrap();
        assert!(text.contains(&sha), "{page} states the SHA-256 {sha}");
    }
}

#[test]
fn the_previous_default_v6_still_rebuilds_exactly_alerting_at_the_networks_half() {
    // The command of models/README.md.
    assert_rebuilds_as_documented(
        &["--alert-at", "0.5", "--name", "dnsexfil_v6"],
        "dnsexfil_v6.safetensors",
        &["models/README.md"],
    );
}

#[test]
fn the_earlier_default_v4_still_rebuilds_exactly_without_the_servers_lookups() {
    // The command of models/README.md and docs/training.md.
    assert_rebuilds_as_documented(
        &[
            "--server-lookalikes",
            "false",
            "--alert-at",
            "0.5",
            "--name",
            "dnsexfil_v4",
        ],
        "dnsexfil_v4.safetensors",
        &["models/README.md"],
    );
}

#[test]
fn the_earlier_v2_model_still_rebuilds_exactly_for_users_who_pinned_it() {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("dnsexfil_v2.safetensors");
    let mut command = train_on_dev(&out_path);
    command.args(["--schema", "dnsexfil-v2", "--name", "dnsexfil_v2"]);
    assert_reproduces(&mut command, &out_path, "dnsexfil_v2.safetensors");
}

#[test]
fn the_long_window_model_rebuilds_exactly_from_its_documented_command() {
    // The command of docs/history.md and models/README.md.
    assert_rebuilds_as_documented(
        &["--schema", "dnsexfil-v5", "--name", "dnsexfil_v5"],
        "dnsexfil_v5.safetensors",
        &["models/README.md", "docs/history.md"],
    );
}

#[test]
fn evaluate_leaves_a_tool_out_and_reports_it() {
    let dir = tempfile::tempdir().unwrap();
    let report_path = dir.path().join("lofo.json");
    let out = run_ok(
        bin()
            .arg("evaluate")
            .arg("--events")
            .arg(dev("events.csv"))
            .arg("--labels")
            .arg(dev("labels.csv"))
            .args([
                "--tools",
                "eight_bit,dnsteal",
                "--threat-sessions",
                "2",
                "--lookalike-sessions",
                "2",
            ])
            .args([
                "--eval-sessions",
                "3",
                "--epochs",
                "2",
                "--source-groups",
                "0",
                // Left out of training in every run, scored in none.
                "--also-leave-out",
                "randomised",
            ])
            .arg("--report")
            .arg(&report_path),
    );
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.starts_with("| tool left out |"), "{table}");
    assert!(
        table.lines().any(|l| l.starts_with("| eight_bit | ")),
        "{table}"
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report_path).unwrap()).unwrap();
    let results = report["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    assert_eq!(report["also_left_out"], serde_json::json!(["randomised"]));
    for (r, tool) in results.iter().zip(["eight_bit", "dnsteal"]) {
        assert_eq!(r["tool"], tool);
        assert_eq!(r["left_out"], true);
        // The log's 2 dnsteal sessions; the 3 generated ones of the synthetic tool.
        let sessions = r["sessions"].as_u64().unwrap();
        assert_eq!(sessions, if tool == "dnsteal" { 2 } else { 3 }, "{r}");
        assert!(r["sessions_detected"].as_u64().unwrap() <= sessions, "{r}");
        assert!(r["positives"].as_u64().unwrap() > 0, "{r}");
        assert!(r["benign_rows"].as_u64().unwrap() > 1000, "{r}");
        let recall = r["recall_at_threshold"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&recall), "{r}");
    }
    lofo_seeds_summarises_saved_reports(&report);
    // An unknown tool is named in the error with the known ones.
    let err = run_fails(
        bin()
            .arg("evaluate")
            .arg("--events")
            .arg(dev("events.csv"))
            .arg("--labels")
            .arg(dev("labels.csv"))
            .args(["--tools", "nosuchtool"]),
    );
    assert!(
        err.contains("unknown tool `nosuchtool`") && err.contains("packetwhisper"),
        "{err}"
    );
    let err = run_fails(
        bin()
            .arg("evaluate")
            .arg("--events")
            .arg(dev("events.csv"))
            .arg("--labels")
            .arg(dev("labels.csv"))
            .args(["--also-leave-out", "nosuchtool"]),
    );
    assert!(
        err.contains("unknown tool `nosuchtool` in --also-leave-out"),
        "{err}"
    );
}

#[test]
fn bad_training_input_gets_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let labels = dir.path().join("labels.csv");
    std::fs::write(
        &labels,
        "src,query,is_exfiltration\n10.0.0.1,a.example.com,maybe\n",
    )
    .unwrap();
    let out = bin()
        .arg("train")
        .arg("--events")
        .arg(dev("events.csv"))
        .arg("--labels")
        .arg(&labels)
        .arg("-o")
        .arg(dir.path().join("m.safetensors"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("`is_exfiltration` must be 0 or 1, found `maybe`"),
        "{err}"
    );
    assert!(!dir.path().join("m.safetensors").exists());

    // A tool to leave out that does not exist is named, with the known ones, before training.
    let out =
        run_fails(train_on_dev(&dir.path().join("m.safetensors")).args(["--leave-out", "dnscat3"]));
    assert!(
        out.contains("--leave-out: unknown tool `dnscat3`") && out.contains("dnscat2"),
        "{out}"
    );
    assert!(!dir.path().join("m.safetensors").exists());

    // An experiment for the long window, on a schema without one, is refused, not ignored.
    let out =
        run_fails(train_on_dev(&dir.path().join("m.safetensors")).args(["--empty-window-copy"]));
    assert!(
        out.contains("--empty-window-copy") && out.contains("--schema dnsexfil-v5"),
        "{out}"
    );
    // The server-role look-alikes are threat-model families, which the v2 recipe has none of.
    let out = run_fails(train_on_dev(&dir.path().join("m.safetensors")).args([
        "--server-lookalikes",
        "--schema",
        "dnsexfil-v2",
    ]));
    assert!(
        out.contains("--server-lookalikes") && out.contains("dnsexfil-v3 or later"),
        "{out}"
    );
    let mut evaluate = bin();
    evaluate
        .arg("evaluate")
        .arg("--events")
        .arg(dev("events.csv"))
        .arg("--labels")
        .arg(dev("labels.csv"))
        .arg("--score-without-long-window");
    let out = run_fails(&mut evaluate);
    assert!(
        out.contains("--score-without-long-window") && out.contains("--schema dnsexfil-v5"),
        "{out}"
    );
    assert!(!dir.path().join("m.safetensors").exists());
}

/// Runs `command`, expects it to fail, and returns its standard error.
fn run_fails(command: &mut Command) -> String {
    let out = command.output().unwrap();
    assert!(!out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Sends a base32 tunnel from one host and ordinary names from several to `model_name` on
/// `address`, and checks that the tunnel alerts while the ordinary names stay quiet.
fn assert_tells_a_tunnel_from_ordinary_names(address: &str, model_name: &str) {
    let mut csv = String::from("src,query,rank\n");
    let mut rng = dnsexfil::util::rng::SplitMix64::new(3);
    for _ in 0..30 {
        let label: String = (0..48)
            .map(|_| b"abcdefghijklmnopqrstuvwxyz234567"[rng.below(32)] as char)
            .collect();
        csv.push_str(&format!("10.9.9.9,{label}.t.tunnel-example.net,1\n"));
    }
    for src in ["10.1.1.1", "10.1.1.2", "10.1.1.3"] {
        csv.push_str(&format!(
            "{src},www.google.com,1\n{src},outlook.office365.com,1\n"
        ));
    }
    let body = serde_json::json!({"data": csv, "meta": {"options": {"model_name": model_name}}});
    let resp: serde_json::Value = TestServer::client()
        .post(format!("http://{address}/apply"))
        .header("Authorization", TOKEN)
        .json(&body)
        .send()
        .unwrap()
        .json()
        .unwrap();
    let (_, rows) = results_of(&resp);
    let p = |i: usize| rows[i][3].parse::<f64>().unwrap();
    assert!(p(0) > 0.5, "{model_name}: the tunnel alerts: {}", p(0));
    assert!(
        (30..36).all(|i| p(i) < 0.5),
        "{model_name}: benign names stay quiet: {rows:?}"
    );
}

#[test]
fn serve_with_no_flags_serves_the_built_in_default_model() {
    let server = ServedBinary::start(&["--enable-https".as_ref(), "false".as_ref()]);
    assert_tells_a_tunnel_from_ordinary_names(&server.address, "dnsexfil_v7");
    assert!(server.terminate().success());
}

/// `dnsexfil_v3` was the default before v4. Its generator no longer exists in this code (it
/// rebuilds at the commit that introduced v4's schema), so users who pinned it get the file.
#[test]
fn the_pinned_v3_model_file_still_loads_and_scores() {
    let v3 = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/dnsexfil_v3.safetensors");
    let server = ServedBinary::start(&[
        "--enable-https".as_ref(),
        "false".as_ref(),
        "--no-default-model".as_ref(),
        "--model".as_ref(),
        v3.as_os_str(),
    ]);
    assert_tells_a_tunnel_from_ordinary_names(&server.address, "dnsexfil_v3");
    assert!(server.terminate().success());
}

#[test]
fn one_source_group_is_the_whole_log_once_as_zero_groups_is() {
    let dir = tempfile::tempdir().unwrap();
    let rows_trained_on = |groups: &str| {
        let out = run_ok(
            train_on_dev(&dir.path().join(format!("g{groups}.safetensors"))).args([
                "--epochs",
                "1",
                "--threat-sessions",
                "0",
                "--lookalike-sessions",
                "0",
                "--source-groups",
                groups,
            ]),
        );
        let progress = String::from_utf8_lossy(&out.stderr).into_owned();
        progress
            .lines()
            .find(|l| l.contains("labelled rank-1 events"))
            .unwrap_or_else(|| panic!("no row count in {progress}"))
            .to_string()
    };
    assert_eq!(rows_trained_on("1"), rows_trained_on("0"));
}

/// `benches/lofo_seeds.py --reuse` on two seeds' reports: `report` as seed 7, and as seed 8 the
/// same with eight_bit's recall and real benign alerts changed, so the means and sums it prints
/// can be checked against the reports (no training: --reuse reads the saved reports).
fn lofo_seeds_summarises_saved_reports(report: &serde_json::Value) {
    let dir = tempfile::tempdir().unwrap();
    let mut seed_8 = report.clone();
    seed_8["results"][0]["recall_at_threshold"] = 0.25.into();
    seed_8["results"][0]["benign_alerts_real"] = 10_000.into();
    seed_8["results"][0]["benign_alerts_real_by_host"] = serde_json::json!({"10.9.9.9": 10_000});
    for (seed, r) in [(7, report), (8, &seed_8)] {
        let path = dir.path().join(format!("seed-{seed}.json"));
        std::fs::write(path, serde_json::to_vec(r).unwrap()).unwrap();
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/lofo_seeds.py");
    let out = run_ok(
        Command::new(python())
            .arg(script)
            .args(["--seeds", "7,8", "--tools", "eight_bit,dnsteal", "--reuse"])
            .arg("--out")
            .arg(dir.path())
            // Never run: both reports are there.
            .args(["--bin", "/nonexistent/dnsexfil"]),
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    let eight_bit = &report["results"][0];
    assert_eq!(eight_bit["tool"], "eight_bit");
    let recall = eight_bit["recall_at_threshold"].as_f64().unwrap();
    let benign = eight_bit["benign_alerts_real"].as_u64().unwrap();
    let line = printed
        .lines()
        .find(|l| l.starts_with("| eight_bit | "))
        .unwrap_or_else(|| panic!("eight_bit's row in {printed}"));
    // | row | recall per seed | mean | TPR | AUC | sessions | benign per seed | sum |
    let cells: Vec<&str> = line.split('|').map(str::trim).collect();
    let per_seed: Vec<f64> = cells[2].split(" / ").map(|x| x.parse().unwrap()).collect();
    assert_eq!(per_seed.len(), 2, "{line}");
    assert!(
        (per_seed[0] - recall).abs() < 6e-4 && per_seed[1] == 0.25,
        "{line}"
    );
    let mean: f64 = cells[3].parse().unwrap();
    assert!((mean - (recall + 0.25) / 2.0).abs() < 6e-4, "{line}");
    assert_eq!(cells[7], format!("{benign} / 10000"), "{line}");
    assert_eq!(cells[8], (benign + 10_000).to_string(), "{line}");
    assert!(
        printed.lines().any(|l| l.starts_with("| dnsteal | ")),
        "{printed}"
    );
    // The host that raised the most alerts is listed first.
    assert!(
        printed.contains("summed over the rows):\n  8, 10.9.9.9: 10000\n"),
        "{printed}"
    );
}

/// python3 (or python) for `tests/fixtures/eval/evaluate.py` and the bench scripts.
fn python() -> &'static str {
    ["python3", "python"]
        .into_iter()
        .find(|p| {
            Command::new(p)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .expect("python3 for tests/fixtures/eval/evaluate.py")
}

/// `evaluate.py` replaying `events`/`labels` through `/apply` of the server at `address` with
/// `model_name`: its report.
fn evaluate(events: &Path, labels: &Path, address: &str, model_name: &str) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let report_path = dir.path().join("report.json");
    run_ok(
        Command::new(python())
            .arg(fixtures().join("eval/evaluate.py"))
            .arg("--events")
            .arg(events)
            .arg("--labels")
            .arg(labels)
            .arg("--url")
            .arg(format!("http://{address}"))
            .args(["--token", TOKEN, "--model-name", model_name, "--report"])
            .arg(&report_path),
    );
    serde_json::from_slice(&std::fs::read(&report_path).unwrap()).unwrap()
}

/// A figure of a report `r` written as the model card writes it: `decimals` places, as a
/// percentage when `percent`. Compares the claim as stated, digit for digit.
fn stated(r: &serde_json::Value, key: &str, decimals: usize, percent: bool) -> String {
    let v = r[key].as_f64().unwrap_or_else(|| panic!("{key} in {r}"));
    let v = if percent { v * 100.0 } else { v };
    format!("{v:.decimals$}{}", if percent { "%" } else { "" })
}

/// The card's per-tool recall cells (dns2tcp / iodine / dnsteal), from `recall_by_tool`
/// ("0.9940 of 353"), as percentages with `decimals` places (100% as "100%").
fn recalls(r: &serde_json::Value, decimals: usize) -> String {
    ["dns2tcp", "iodine", "dnsteal"]
        .iter()
        .map(|tool| {
            let cell = r["recall_by_tool"][tool]
                .as_str()
                .unwrap_or_else(|| panic!("{tool} in {r}"));
            let recall: f64 = cell.split(' ').next().unwrap().parse().unwrap();
            if recall == 1.0 {
                "100%".to_string()
            } else {
                format!("{:.decimals$}%", recall * 100.0)
            }
        })
        .collect::<Vec<_>>()
        .join(" / ")
}

/// How many sources of the held-out `test_events` file send only benign names, and how many
/// send some tunnel traffic (by the development log's labels).
fn held_out_sources(test_events: &Path) -> (usize, usize) {
    let (_, held_out) = parse_csv(&std::fs::read_to_string(test_events).unwrap());
    let held_out: std::collections::HashSet<String> =
        held_out.into_iter().map(|r| r[0].clone()).collect();
    let (header, labels) = parse_csv(&std::fs::read_to_string(dev("labels.csv")).unwrap());
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    let (src, y) = (col("src"), col("is_exfiltration"));
    let tunnels: std::collections::HashSet<&str> = labels
        .iter()
        .filter(|r| r[y] == "1" && held_out.contains(&r[src]))
        .map(|r| r[src].as_str())
        .collect();
    (held_out.len() - tunnels.len(), tunnels.len())
}

/// The development log's events from sources not in the held-out `test_events` file, with
/// their labels, as a `/fit` CSV (`src,query,rank,_time,is_dns_data_exfiltration`: the ESCU
/// label's name, so the results have the columns `evaluate.py` reads); and their count.
fn training_rows_without(test_events: &Path) -> (String, usize) {
    let (_, held_out) = parse_csv(&std::fs::read_to_string(test_events).unwrap());
    let held_out: std::collections::HashSet<String> =
        held_out.into_iter().map(|r| r[0].clone()).collect();
    let (header, labels) = parse_csv(&std::fs::read_to_string(dev("labels.csv")).unwrap());
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    let (src, query, y) = (col("src"), col("query"), col("is_exfiltration"));
    let label: std::collections::HashMap<(&str, &str), &str> = labels
        .iter()
        .map(|r| ((r[src].as_str(), r[query].as_str()), r[y].as_str()))
        .collect();
    let (_, events) = parse_csv(&std::fs::read_to_string(dev("events.csv")).unwrap());
    let mut csv = String::from("src,query,rank,_time,is_dns_data_exfiltration\n");
    let mut rows = 0;
    for e in events.iter().filter(|e| !held_out.contains(&e[0])) {
        let y = label[&(e[0].as_str(), e[1].as_str())];
        csv.push_str(&format!("{},{},{},{},{y}\n", e[0], e[1], e[2], e[3]));
        rows += 1;
    }
    (csv, rows)
}

/// `| fit MLTKContainer algo=ALGO is_dns_data_exfiltration from src query rank _time into app:NAME`
/// over HTTP, with every parameter at its default: the answer.
fn fit_over_http(address: &str, csv: &str, algo: &str, name: &str) -> serde_json::Value {
    let envelope = serde_json::json!({
        "data": csv,
        "meta": {
            "options": {"params": {"algo": algo},
                        "args": ["is_dns_data_exfiltration", "src", "query", "rank", "_time"],
                        "target_variable": ["is_dns_data_exfiltration"],
                        "feature_variables": ["src", "query", "rank", "_time"],
                        "model_name": name, "algo_name": "MLTKContainer"},
            "feature_variables": ["src", "query", "rank", "_time"],
            "target_variables": ["is_dns_data_exfiltration"]
        }
    });
    TestServer::client()
        .post(format!("http://{address}/fit"))
        .header("Authorization", TOKEN)
        .json(&envelope)
        .send()
        .unwrap()
        .json()
        .unwrap()
}

/// The model card's "held-out development hosts" figures for `dnsexfil_v7`, as `evaluate.py`
/// measures them through `/apply` of a real server: the documented split command, then the
/// documented replay. Fails when a change moves them (then the card must say the new ones).
#[test]
fn the_model_cards_held_out_host_figures_hold() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("dnsexfil_v7.safetensors");
    run_ok(
        train_on_dev(&model)
            .args(["--test-fraction", "0.3", "--split-out"])
            .arg(dir.path()),
    );
    // The card's second command: dnsexfil_v2's recipe on the same split.
    let v2 = dir.path().join("dnsexfil_v2.safetensors");
    run_ok(train_on_dev(&v2).args([
        "--test-fraction",
        "0.3",
        "--schema",
        "dnsexfil-v2",
        "--name",
        "dnsexfil_v2",
    ]));
    let server = ServedBinary::start(&[
        "--enable-https".as_ref(),
        "false".as_ref(),
        "--no-default-model".as_ref(),
        "--model".as_ref(),
        model.as_os_str(),
        "--model".as_ref(),
        v2.as_os_str(),
        "--model".as_ref(),
        artifact().as_os_str(),
    ]);
    let (events, labels) = (
        dir.path().join("test_events.csv"),
        dir.path().join("test_labels.csv"),
    );
    // README and models/README.md: the held-out 30% are 8 benign hosts and 4 tunnel sources.
    assert_eq!(held_out_sources(&events), (8, 4));
    let r = evaluate(&events, &labels, &server.address, "dnsexfil_v7");
    // models/README.md, "Held-out development hosts".
    assert_eq!(r["rank1_events"], 14408, "{r}");
    assert_eq!(r["positives"], 1352, "{r}");
    assert_eq!(r["roc_auc"].as_f64().unwrap(), 0.999547, "{r}");
    assert_eq!(r["tpr_at_fpr_0.001"].as_f64().unwrap(), 0.9993, "{r}");
    assert_eq!(r["fpr_at_threshold"].as_f64().unwrap(), 0.000536, "{r}");
    assert_eq!(r["benign_alerts"], 7, "{r}");
    assert_eq!(r["benign_srcs_alerting"], 3, "{r}");
    assert_eq!(r["sessions_detected"], "4/4", "{r}");
    // Every cell of the table's three columns, as the card states it.
    let column = |r: &serde_json::Value, auc_decimals: usize, pct: usize| {
        vec![
            stated(r, "roc_auc", auc_decimals, false),
            stated(r, "tpr_at_fpr_0.001", pct, true),
            format!(
                "{} / {}",
                stated(r, "tpr_at_threshold", pct, true),
                stated(r, "fpr_at_threshold", 2, true)
            ),
            format!("{} ({})", r["benign_alerts"], r["benign_srcs_alerting"]),
            recalls(r, 1),
            r["sessions_detected"].as_str().unwrap().to_string(),
        ]
    };
    assert_eq!(
        column(&r, 5, 2),
        [
            "0.99955",
            "99.93%",
            "99.93% / 0.05%",
            "7 (3)",
            "100% / 100% / 99.7%",
            "4/4"
        ]
    );
    let r = evaluate(&events, &labels, &server.address, "dnsexfil_v2");
    assert_eq!(
        (&r["rank1_events"], &r["positives"]),
        (&14408.into(), &1352.into())
    );
    let mut v2_column = column(&r, 5, 2);
    // The card writes a zero rate as "0%".
    v2_column[2] = v2_column[2].replace("0.00%", "0%");
    assert_eq!(
        v2_column,
        [
            "0.99959",
            "99.85%",
            "99.85% / 0%",
            "0 (0)",
            "100% / 100% / 99.4%",
            "4/4"
        ]
    );
    let r = evaluate(
        &events,
        &labels,
        &server.address,
        dnsexfil::model::convert::ESCU_MODEL_NAME,
    );
    assert_eq!(
        (&r["rank1_events"], &r["positives"]),
        (&14408.into(), &1352.into())
    );
    let mut escu_column = column(&r, 4, 1);
    escu_column[1] = escu_column[1].replace("0.0%", "0%");
    assert_eq!(
        escu_column,
        [
            "0.9881",
            "0%",
            "77.1% / 0.31%",
            "40 (4)",
            "65.0% / 77.6% / 100%",
            "4/4"
        ]
    );

    // docs/training.md: the rest of the log sent as one `/fit` (with `_time`), then replayed
    // on the held-out hosts.
    let (fit_csv, fit_rows) = training_rows_without(&events);
    assert_eq!(fit_rows, 34_808, "docs/training.md: 34,808 events");
    let fitted = fit_over_http(&server.address, &fit_csv, "dnsexfil", "corp_dns");
    assert_eq!(fitted["status"], "success", "{}", fitted["message"]);
    let r = evaluate(&events, &labels, &server.address, "dnsexfil_corp_dns");
    assert_eq!(
        (
            stated(&r, "roc_auc", 5, false),
            stated(&r, "tpr_at_fpr_0.001", 2, true),
            &r["benign_alerts"]
        ),
        ("0.99980".to_string(), "98.82%".to_string(), &3.into()),
        "{r}"
    );
    // The published ESCU model fine-tuned by the same fit (algo = its name starts from its
    // weights), under another name.
    let fitted = fit_over_http(
        &server.address,
        &fit_csv,
        dnsexfil::model::convert::ESCU_MODEL_NAME,
        "corp_escu",
    );
    assert_eq!(fitted["status"], "success", "{}", fitted["message"]);
    let r = evaluate(
        &events,
        &labels,
        &server.address,
        &format!("{}_corp_escu", dnsexfil::model::convert::ESCU_MODEL_NAME),
    );
    assert_eq!(
        (
            stated(&r, "roc_auc", 4, false),
            stated(&r, "tpr_at_fpr_0.001", 0, true),
            &r["benign_alerts"]
        ),
        ("1.0000".to_string(), "100%".to_string(), &0.into()),
        "{r}"
    );
    assert!(server.terminate().success());
}

/// The card's figures over the whole development log ("for reference only"), README's
/// "234 benign alerts from 17 of 25 hosts in 48 h" and docs/dsdl.md's table for the published
/// ESCU model.
#[test]
fn the_whole_log_figures_of_the_model_card_and_readme_hold() {
    let v3 = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/dnsexfil_v3.safetensors");
    // The built-in default (the shipped dnsexfil_v7), the pinned v3 and the ESCU model.
    let server = ServedBinary::start(&[
        "--enable-https".as_ref(),
        "false".as_ref(),
        "--model".as_ref(),
        v3.as_os_str(),
        "--model".as_ref(),
        artifact().as_os_str(),
    ]);
    let (events, labels) = (dev("events.csv"), dev("labels.csv"));
    // The log itself: 50,910 events over 48 hours from 37 sources: 12 tunnel sessions' sources
    // and 25 benign hosts (sources that send no tunnel traffic).
    let text = std::fs::read_to_string(&events).unwrap();
    let (_, rows) = parse_csv(&text);
    assert_eq!(rows.len(), 50_910);
    let times: Vec<f64> = rows.iter().map(|r| r[3].parse().unwrap()).collect();
    let hours = (times.iter().cloned().fold(f64::MIN, f64::max)
        - times.iter().cloned().fold(f64::MAX, f64::min))
        / 3600.0;
    assert!(hours > 47.0 && hours <= 48.0, "{hours} hours");
    let sources: std::collections::BTreeSet<&str> = rows.iter().map(|r| r[0].as_str()).collect();
    let (header, label_rows) = parse_csv(&std::fs::read_to_string(&labels).unwrap());
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    let (src, y) = (col("src"), col("is_exfiltration"));
    let tunnel_sources: std::collections::BTreeSet<&str> = label_rows
        .iter()
        .filter(|r| r[y] == "1")
        .map(|r| r[src].as_str())
        .collect();
    assert_eq!(tunnel_sources.len(), 12);
    assert_eq!(sources.difference(&tunnel_sources).count(), 25);

    let r = evaluate(&events, &labels, &server.address, "dnsexfil_v7");
    assert_eq!(
        (
            stated(&r, "roc_auc", 6, false),
            stated(&r, "tpr_at_fpr_0.001", 2, true),
            &r["benign_alerts"],
            &r["benign_srcs_alerting"],
            &r["sessions_detected"]
        ),
        (
            "0.999982".to_string(),
            "99.96%".to_string(),
            &2.into(),
            &2.into(),
            &"12/12".into()
        ),
        "{r}"
    );
    let r = evaluate(&events, &labels, &server.address, "dnsexfil_v3");
    assert_eq!(
        (&r["benign_alerts"], &r["benign_srcs_alerting"]),
        (&3.into(), &2.into()),
        "{r}"
    );
    let r = evaluate(
        &events,
        &labels,
        &server.address,
        dnsexfil::model::convert::ESCU_MODEL_NAME,
    );
    assert_eq!(
        (
            stated(&r, "roc_auc", 3, false),
            stated(&r, "tpr_at_fpr_0.001", 0, true),
            &r["benign_alerts"],
            &r["benign_srcs_alerting"]
        ),
        (
            "0.983".to_string(),
            "0%".to_string(),
            &234.into(),
            &17.into()
        ),
        "{r}"
    );
    // docs/dsdl.md, "Detection quality of the published ESCU model": the same replay.
    assert_eq!(
        (
            stated(&r, "roc_auc", 6, false),
            stated(&r, "tpr_at_threshold", 2, true),
            stated(&r, "fpr_at_threshold", 2, true),
            recalls(&r, 1),
            &r["errors"],
            &r["nan_scores"],
        ),
        (
            "0.982811".to_string(),
            "84.63%".to_string(),
            "0.60%".to_string(),
            "76.0% / 96.8% / 100%".to_string(),
            &serde_json::json!([]),
            &0.into(),
        ),
        "{r}"
    );
    assert!(server.terminate().success());
}

/// The model card: `dnsexfil_v7` is `dnsexfil_v6` with its output bias lowered by ln 9, so it
/// scores 0.5 where v6 scored 0.9 and ranks every row as v6 does.
#[test]
fn the_default_scores_what_v6_scores_with_the_odds_divided_by_nine() {
    let read = |file: &str| {
        std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("models")
                .join(file),
        )
        .unwrap()
    };
    let v7_bytes = read("dnsexfil_v7.safetensors");
    assert!(
        v7_bytes == dnsexfil::model::DEFAULT_MODEL_BYTES,
        "the built-in default is models/dnsexfil_v7.safetensors"
    );
    let load = |bytes: &[u8], name: &str| dnsexfil::model::Model::from_bytes(bytes, name).unwrap();
    let v6 = load(&read("dnsexfil_v6.safetensors"), "dnsexfil_v6");
    let v7 = load(&v7_bytes, "dnsexfil_v7");
    assert_eq!(v7.info.name, dnsexfil::model::DEFAULT_MODEL_NAME);
    // Every tensor the same but the output bias, which is ln 9 lower.
    let (t6, t7) = (v6.mlp.tensors().unwrap(), v7.mlp.tensors().unwrap());
    assert_eq!(
        t6.keys().collect::<std::collections::BTreeSet<_>>(),
        t7.keys().collect()
    );
    let values = |t: &candle_core::Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    for (name, tensor) in &t6 {
        let (a, b) = (values(tensor), values(&t7[name]));
        if name == "layer_out.bias" {
            assert!(
                (a[0] - b[0] - 9f32.ln()).abs() < 1e-6,
                "{name}: {a:?} {b:?}"
            );
        } else {
            assert_eq!(a, b, "{name}");
        }
    }
    // And so the answers: feature rows within two standard deviations of the training rows'
    // means (the model's own standardisation), where the network is seldom saturated.
    let column = |name: &str| values(&t6[name]);
    let (mean, std) = (column("norm.mean"), column("norm.std"));
    let (width, rows) = (mean.len(), 4_000);
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut x = Vec::with_capacity(rows * width);
    for _ in 0..rows {
        for (m, s) in mean.iter().zip(&std) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            x.push(m + s * ((state % 4_001) as f32 / 1_000.0 - 2.0));
        }
    }
    let p6 = v6.mlp.predict(&x, rows).unwrap();
    let p7 = v7.mlp.predict(&x, rows).unwrap();
    let logit = |p: f32| (p as f64 / (1.0 - p as f64)).ln();
    let mut compared = 0;
    for (a, b) in p6.iter().zip(&p7) {
        // Away from 0 and 1, where float32 keeps the logit.
        if (1e-3..1.0 - 1e-3).contains(a) && (1e-3..1.0 - 1e-3).contains(b) {
            assert!(
                (logit(*a) - logit(*b) - 9f64.ln()).abs() < 2e-3,
                "v6 {a}, v7 {b}"
            );
            compared += 1;
            // v7 alerts where v6 scored above 0.9 (rows at the threshold itself aside).
            if (logit(*a) - 9f64.ln()).abs() > 1e-2 {
                assert_eq!(*a > 0.9, *b > 0.5, "v6 {a}, v7 {b}");
            }
        }
    }
    assert!(compared > 500, "{compared} rows compared");
}
