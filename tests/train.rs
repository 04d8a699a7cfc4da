//! Training from a labelled log: `dnsexfil train` reproduces the shipped models bit for bit
//! (the default `dnsexfil_v4` and the earlier `dnsexfil_v2`), the pinned `dnsexfil_v3` still
//! loads and scores, the built-in default is served
//! with no flags, and `dnsexfil evaluate` leaves tools out of training and scores them.

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
    let out_path = dir.path().join("dnsexfil_v4.safetensors");
    // The command of models/README.md.
    let out = assert_reproduces(
        &mut train_on_dev(&out_path),
        &out_path,
        "dnsexfil_v4.safetensors",
    );
    let progress = String::from_utf8_lossy(&out.stderr);
    assert!(
        progress.contains("epoch   1: train loss"),
        "progress per epoch: {progress}"
    );
    let report: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("dnsexfil_v4.safetensors.report.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(report["schema"], "dnsexfil-v4");
    assert_eq!(report["params"]["threat_sessions"], 24);
    assert!(
        report["validation"]["roc_auc"].as_f64().unwrap() > 0.99,
        "{report}"
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
    let mut rng = dnsexfil::synth::SplitMix64::new(3);
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
    assert_tells_a_tunnel_from_ordinary_names(&server.address, "dnsexfil_v4");
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

/// The model card's "held-out development hosts" figures for `dnsexfil_v4`, as `evaluate.py`
/// measures them through `/apply` of a real server: the documented split command, then the
/// documented replay. Fails when a change moves them (then the card must say the new ones).
#[test]
fn the_model_cards_held_out_host_figures_hold() {
    let python = ["python3", "python"]
        .into_iter()
        .find(|p| {
            Command::new(p)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .expect("python3 for tests/fixtures/eval/evaluate.py");
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("dnsexfil_v4.safetensors");
    run_ok(
        train_on_dev(&model)
            .args(["--test-fraction", "0.3", "--split-out"])
            .arg(dir.path()),
    );
    let server = ServedBinary::start(&[
        "--enable-https".as_ref(),
        "false".as_ref(),
        "--no-default-model".as_ref(),
        "--model".as_ref(),
        model.as_os_str(),
    ]);
    let report_path = dir.path().join("report.json");
    run_ok(
        Command::new(python)
            .arg(fixtures().join("eval/evaluate.py"))
            .arg("--events")
            .arg(dir.path().join("test_events.csv"))
            .arg("--labels")
            .arg(dir.path().join("test_labels.csv"))
            .arg("--url")
            .arg(format!("http://{}", server.address))
            .args(["--token", TOKEN, "--model-name", "dnsexfil_v4", "--report"])
            .arg(&report_path),
    );
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report_path).unwrap()).unwrap();
    // models/README.md, "Held-out development hosts".
    assert_eq!(r["rank1_events"], 14408, "{r}");
    assert_eq!(r["positives"], 1352, "{r}");
    assert_eq!(r["roc_auc"].as_f64().unwrap(), 0.999334, "{r}");
    assert_eq!(r["tpr_at_fpr_0.001"].as_f64().unwrap(), 0.9993, "{r}");
    assert_eq!(r["fpr_at_threshold"].as_f64().unwrap(), 0.001762, "{r}");
    assert_eq!(r["benign_alerts"], 23, "{r}");
    assert_eq!(r["benign_srcs_alerting"], 6, "{r}");
    assert_eq!(r["sessions_detected"], "4/4", "{r}");
    assert!(server.terminate().success());
}
