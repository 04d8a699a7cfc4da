//! Hardening against a hostile client or environment (issue 19): names that would take over a
//! model the service was started with, special and oversized files in the model store, and
//! the other findings of the black-box attack, each against a real server or real files.

mod common;

use std::path::Path;

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
