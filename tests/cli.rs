//! The `dnsexfil` binary as users run it: `serve` without a model explains what to do; `serve`
//! with the artifact listens with HTTPS by default and logs its certificate fingerprint.

mod common;

use std::process::Command;

use common::*;

fn bin() -> Command {
    dnsexfil_command()
}

#[test]
fn serve_without_any_model_says_how_to_convert_the_artifact() {
    let dir = tempfile::tempdir().unwrap();
    let out = bin()
        .args(["serve", "--no-default-model", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no model to serve"), "{err}");
    assert!(
        err.contains("dnsexfil convert") && err.contains("--model"),
        "{err}"
    );
}

#[test]
fn serve_loads_the_artifact_and_speaks_https_by_default() {
    let server = ServedBinary::start(&["--model".as_ref(), artifact().as_os_str()]);
    let address = server.address.clone();
    assert!(server
        .fingerprint
        .as_deref()
        .expect("the self-signed fingerprint is logged")
        .contains(':'));

    let client = unverified_tls_client();
    let resp = client
        .post(format!("https://{address}/apply"))
        .header("Authorization", TOKEN)
        .json(&escu_envelope(
            "src,query,rank\n10.1.1.1,www.google.com,1\n",
        ))
        .send()
        .unwrap();
    let v: serde_json::Value = resp.json().unwrap();
    // The built-in allowlist is on by default, so the results say what it suppressed (nothing).
    assert_eq!(v["results"], "src,query,rank,pred_is_dns_data_exfiltration_proba,pred_is_dns_data_exfiltration,suppressed_by\n10.1.1.1,www.google.com,1,0.0,0,\n");

    // SIGTERM: a graceful exit with status 0.
    let status = server.terminate();
    assert!(status.success(), "{status:?}");
}

#[test]
fn convert_writes_a_model_file_and_explains_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("escu.safetensors");
    let out = run_ok(
        bin()
            .arg("convert")
            .arg(artifact())
            .arg("-o")
            .arg(&out_path),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("Splunk's published ESCU artifact"),
        "{stdout}"
    );
    // Named otherwise than its model: fine for --model, and the store's rule is said.
    assert!(
        stdout.contains(
            "loads this file only as detect_dns_data_exfiltration_using_pretrained_model_in_dsdl.safetensors"
        ),
        "{stdout}"
    );
    assert!(out_path.is_file());

    let junk = dir.path().join("junk.pt");
    std::fs::write(&junk, b"not a model").unwrap();
    let out = bin()
        .arg("convert")
        .arg(&junk)
        .arg("-o")
        .arg(dir.path().join("x.safetensors"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("neither a PyTorch .pt file"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one-line error: {err}");
    assert!(!dir.path().join("x.safetensors").exists());
}

#[test]
fn out_of_range_training_settings_are_refused_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.safetensors");
    for (flag, value, range) in [
        ("--window", "0", "60 to 86,400"),
        ("--learning-rate", "-0.01", "above 0 and at most 1"),
        ("--positive-weight", "0", "above 0"),
        ("--positive-weight", "NaN", "above 0"),
        ("--val-fraction", "0", "0.05 to 0.9"),
        ("--patience", "0", "1..=1000"),
        ("--epochs", "0", "1..=10000"),
    ] {
        // The events and labels need not exist: the settings are checked first.
        let result = bin()
            .args([
                "train",
                "--events",
                "missing.csv",
                "--labels",
                "missing.csv",
                "-o",
            ])
            .arg(&out)
            .arg(format!("{flag}={value}"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&result.stderr);
        assert!(!result.status.success(), "{flag} {value} was accepted");
        assert!(
            stderr.contains(flag) && stderr.contains(range),
            "{flag} {value}: {stderr}"
        );
    }
    let result = bin()
        .args(["serve", "--fit-time-limit-secs", "0"])
        .output()
        .unwrap();
    assert!(!result.status.success());
    assert!(
        String::from_utf8_lossy(&result.stderr).contains("--fit-time-limit-secs"),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    assert!(!out.exists());
}

#[test]
fn the_token_is_never_logged_even_at_trace_level() {
    let dir = tempfile::tempdir().unwrap();
    // HTTPS (the default) and every target at trace: the TLS, HTTP and service layers all log.
    let server = ServedBinary::start_with_env(
        dir.path(),
        &["--model".as_ref(), artifact().as_os_str()],
        &[("RUST_LOG", "trace")],
    );
    let base = format!("https://{}", server.address);
    let client = unverified_tls_client();
    let csv = "src,query,rank\n10.1.1.1,www.google.com,1\n";
    for auth in [TOKEN.to_string(), format!("Bearer {TOKEN}")] {
        let answer: serde_json::Value = client
            .post(format!("{base}/apply"))
            .header("Authorization", &auth)
            .json(&escu_envelope(csv))
            .send()
            .unwrap()
            .json()
            .unwrap();
        assert_eq!(answer["status"], "success", "{answer}");
        let resp = client
            .post(format!("{base}/v1/score"))
            .header("Authorization", &auth)
            .json(&serde_json::json!({"events": [{"src": "a", "query": "b.c"}]}))
            .send()
            .unwrap();
        assert_eq!(resp.status(), 200);
        let resp = client
            .get(format!("{base}/v1/models"))
            .header("Authorization", &auth)
            .send()
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    // Refused requests log why; a wrong token is not the token, but is refused and logged.
    let resp = client
        .get(format!("{base}/v1/models"))
        .header("Authorization", "Bearer wrong")
        .send()
        .unwrap();
    assert_eq!(resp.status(), 401);
    server.wait_for_log("request refused");
    let mut server = server;
    server.signal_term();
    assert!(server.wait().success());
    // The check means something only if trace lines were written, requests' included.
    let logs = server.logs.lock().unwrap().clone();
    assert!(
        logs.iter().any(|l| l.contains(r#""level":"TRACE""#)),
        "trace lines were logged"
    );
    // Each of the seven requests is logged at debug level, with its path and id.
    let requests = logs
        .iter()
        .filter(|l| l.contains(r#""level":"DEBUG""#) && l.contains("started processing request"))
        .count();
    assert_eq!(requests, 7);
    // Every line, start-up and after, read to the end of the process's output.
    server.assert_token_never_logged();
}
