//! The `dnsexfil` binary as users run it: `serve` without a model explains what to do; `serve`
//! with the artifact listens with HTTPS by default and logs its certificate fingerprint.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::*;

fn bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dnsexfil"));
    for var in [
        "DNSEXFIL_NO_DEFAULT_MODEL",
        "api_token",
        "ENABLE_HTTPS",
        "API_SSL_CERT",
        "API_SSL_KEY",
        "DNSEXFIL_MODELS",
        "DNSEXFIL_DATA_DIR",
    ] {
        cmd.env_remove(var);
    }
    cmd
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
    let dir = tempfile::tempdir().unwrap();
    let mut child = bin()
        .args([
            "serve",
            "--port",
            "0",
            "--host",
            "127.0.0.1",
            "--log-format",
            "json",
            "--model",
        ])
        .arg(artifact())
        .arg("--data-dir")
        .arg(dir.path())
        .env("api_token", TOKEN)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut fingerprint = None;
    let mut address = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        assert!(!line.contains(TOKEN), "the token never appears in logs");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if let Some(f) = v["fields"]["fingerprint_sha256"].as_str() {
            fingerprint = Some(f.to_string());
        }
        if let Some(a) = v["fields"]["address"].as_str() {
            address = Some(a.to_string());
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    let address = address.expect("the server logs its address");
    assert!(fingerprint
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
    assert_eq!(v["results"], "src,query,rank,pred_is_dns_data_exfiltration_proba,pred_is_dns_data_exfiltration\n10.1.1.1,www.google.com,1,0.0,0\n");

    // SIGTERM: a graceful exit with status 0.
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

#[test]
fn convert_writes_a_model_file_and_explains_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("escu.safetensors");
    let out = bin()
        .arg("convert")
        .arg(artifact())
        .arg("-o")
        .arg(&out_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("Splunk's published ESCU artifact"),
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
