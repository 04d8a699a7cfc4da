//! Real training over `/fit`: a labelled CSV from the dev traffic trains a model that `/apply`
//! then uses, fits replace models without a restart, errors name the problem and save nothing,
//! `/apply` keeps answering during a fit, and killing the server mid-fit leaves the store loadable.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::*;
use dnsexfil::model::convert::ESCU_MODEL_NAME;

/// A CSV `src,query,rank,is_exfiltration` of whole hourly windows of the dev traffic (ranks
/// recomputed per window, as the search sends them), taking windows that hold tunnel traffic and
/// windows that do not until about `max_rows` rows.
fn labelled_csv(max_rows: usize) -> String {
    static EVENTS: OnceLock<(
        Vec<dnsexfil::data::dataset::Event>,
        HashMap<(String, String), f32>,
    )> = OnceLock::new();
    let (events, labels) = EVENTS.get_or_init(|| {
        let dev = fixtures().join("dev");
        (
            dnsexfil::data::dataset::read_events(&dev.join("events.csv")).unwrap(),
            dnsexfil::data::dataset::read_labels(&dev.join("labels.csv")).unwrap(),
        )
    });
    let label = |src: &str, query: &str| labels.get(&(src.to_string(), query.to_string()));
    let mut csv = String::from("src,query,rank,is_exfiltration\n");
    let (mut rows, mut with_tunnels, mut without) = (0, 0, 0);
    for window in dnsexfil::data::dataset::windows(events, 3600.0) {
        let tunnels = window.iter().any(|(s, q, _)| label(s, q) == Some(&1.0));
        // Alternate so both kinds of window are in the sample.
        if (tunnels && with_tunnels > without) || (!tunnels && without > with_tunnels) {
            continue;
        }
        if tunnels {
            with_tunnels += 1;
        } else {
            without += 1;
        }
        for (src, query, rank) in window {
            if let Some(y) = label(src, query) {
                csv.push_str(&format!("{src},{query},{rank},{y}\n"));
                rows += 1;
            }
        }
        if rows >= max_rows {
            break;
        }
    }
    csv
}

/// The same CSV without its last (label) column: what `| apply` sends.
fn without_labels(csv: &str) -> String {
    csv.lines()
        .map(|l| l.rsplit_once(',').unwrap().0.to_string() + "\n")
        .collect()
}

fn fit_envelope(
    csv: &str,
    algo: &str,
    model_name: &str,
    params: &[(&str, &str)],
) -> serde_json::Value {
    let mut p = serde_json::Map::new();
    p.insert("algo".into(), algo.into());
    for (k, v) in params {
        // MLTK sends every value as a string, sometimes still quoted.
        p.insert(k.to_string(), format!("\"{v}\"").into());
    }
    serde_json::json!({
        "data": csv,
        "meta": {
            "options": {"params": p, "args": ["is_exfiltration", "src", "query", "rank"],
                        "target_variable": ["is_exfiltration"],
                        "feature_variables": ["src", "query", "rank"],
                        "model_name": model_name, "algo_name": "MLTKContainer"},
            "feature_variables": ["src", "query", "rank"],
            "target_variables": ["is_exfiltration"]
        }
    })
}

fn apply_envelope(csv: &str, algo: &str, model_name: &str) -> serde_json::Value {
    serde_json::json!({
        "data": csv,
        "meta": {"options": {"params": {"algo": algo}, "model_name": model_name,
                             "feature_variables": ["src", "query", "rank"]}}
    })
}

/// The probability column of a results CSV, as sent (empty for rows that were not scored).
fn probabilities(answer: &serde_json::Value) -> Vec<String> {
    let (header, rows) = results_of(answer);
    let col = header.iter().position(|h| h.ends_with("_proba")).unwrap();
    rows.iter().map(|r| r[col].clone()).collect()
}

/// Asserts two score columns are equal without printing thousands of numbers.
fn assert_same_scores(a: &[String], b: &[String], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: row counts");
    if let Some(i) = (0..a.len()).find(|&i| a[i] != b[i]) {
        panic!("{what}: row {} differs: {} vs {}", i + 1, a[i], b[i]);
    }
}

fn store_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn fit_trains_saves_and_serves_a_model_and_a_refit_replaces_it() {
    let server = TestServer::start();
    let csv = labelled_csv(3000);
    let answer = server.post_json(
        "/fit",
        &fit_envelope(
            &csv,
            "dnsexfil",
            "tunnels",
            &[("epochs", "8"), ("seed", "1")],
        ),
    );
    assert_eq!(answer["status"], "success", "{answer}");
    let message = answer["message"].as_str().unwrap();
    assert!(
        message.starts_with("/fit done successfully; model `dnsexfil_tunnels`"),
        "{message}"
    );
    assert!(message.contains("from scratch"), "{message}");
    assert_eq!(
        store_files(&server.model_dir()),
        vec!["dnsexfil_tunnels.safetensors"]
    );

    // The fit's results score the training rows, one row per row, with the target's columns.
    let (header, rows) = results_of(&answer);
    assert_eq!(
        header,
        [
            "src",
            "query",
            "rank",
            "pred_is_exfiltration_proba",
            "pred_is_exfiltration"
        ]
    );
    assert_eq!(rows.len(), csv.lines().count() - 1);
    let fitted = probabilities(&answer);
    let (_, input) = parse_csv(&csv);
    // It learned: tunnel rows score higher than benign ones on average.
    let mean = |label: &str| {
        let v: Vec<f64> = input
            .iter()
            .zip(&fitted)
            .filter(|(r, p)| r[3] == label && !p.is_empty())
            .map(|(_, p)| p.parse::<f64>().unwrap())
            .collect();
        v.iter().sum::<f64>() / v.len() as f64
    };
    assert!(
        mean("1") > 0.8 && mean("0") < 0.2,
        "{} vs {}",
        mean("1"),
        mean("0")
    );

    // `| apply tunnels` (MLTK sends the fit's algo) now uses it: the same scores.
    let apply_csv = without_labels(&csv);
    let applied = server.post_json("/apply", &apply_envelope(&apply_csv, "dnsexfil", "tunnels"));
    assert_same_scores(&probabilities(&applied), &fitted, "apply after fit");

    // A new fit of the same name replaces it for the next requests, without a restart.
    let refit = server.post_json(
        "/fit",
        &fit_envelope(
            &csv,
            "dnsexfil",
            "tunnels",
            &[("epochs", "3"), ("seed", "2")],
        ),
    );
    assert_eq!(refit["status"], "success", "{refit}");
    let reapplied = server.post_json("/apply", &apply_envelope(&apply_csv, "dnsexfil", "tunnels"));
    assert_same_scores(
        &probabilities(&reapplied),
        &probabilities(&refit),
        "apply after refit",
    );
    assert!(
        probabilities(&reapplied) != fitted,
        "the refit changed the scores"
    );
    assert_eq!(
        store_files(&server.model_dir()),
        vec!["dnsexfil_tunnels.safetensors"]
    );
}

#[test]
fn fitting_the_published_model_fine_tunes_its_weights() {
    let server = TestServer::start();
    let csv = labelled_csv(2000);
    let apply_csv = without_labels(&csv);
    let before = probabilities(&server.apply(&apply_csv));
    // Fitted into the ESCU model's own name, it would be saved as `<algo>_<model_name>`, which
    // the ESCU detection's `apply` finds first: refused, and nothing changes for that search.
    let in_place = server.post_json(
        "/fit",
        &fit_envelope(&csv, ESCU_MODEL_NAME, ESCU_MODEL_NAME, &[("epochs", "2")]),
    );
    assert_eq!(in_place["status"], "error", "{in_place}");
    let message = in_place["message"].as_str().unwrap();
    assert!(
        message.contains("is a model this service was started with")
            && message.contains("into app:OTHER"),
        "{message}"
    );
    assert!(store_files(&server.model_dir()).is_empty());
    assert_eq!(probabilities(&server.apply(&apply_csv)), before);
    // Into another name, the algorithm fine-tunes the published weights.
    let answer = server.post_json(
        "/fit",
        &fit_envelope(&csv, ESCU_MODEL_NAME, "corp", &[("epochs", "2")]),
    );
    assert_eq!(answer["status"], "success", "{answer}");
    let message = answer["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("fine-tuned from `{ESCU_MODEL_NAME}`")),
        "{message}"
    );
    assert!(message.contains("escu-v1"), "{message}");
    let after = probabilities(&server.post_json(
        "/apply",
        &apply_envelope(&apply_csv, ESCU_MODEL_NAME, "corp"),
    ));
    assert_same_scores(&after, &probabilities(&answer), "apply after fine-tune");
    let changed = before.iter().zip(&after).filter(|(a, b)| a != b).count();
    assert!(changed > 0, "the fine-tune changed no score");
    // The ESCU detection's own `apply` still reaches the published model.
    assert_eq!(probabilities(&server.apply(&apply_csv)), before);
    let file = format!("{ESCU_MODEL_NAME}_corp.safetensors");
    assert_eq!(store_files(&server.model_dir()), vec![file]);
}

#[test]
fn bad_fits_are_explained_and_save_nothing() {
    let server = TestServer::start();
    let csv = labelled_csv(500);
    let error_of = |body: serde_json::Value| {
        let answer = server.post_json("/fit", &body);
        assert_eq!(answer["status"], "error", "{answer}");
        assert!(answer.get("results").is_none());
        answer["message"].as_str().unwrap().to_string()
    };
    let e = error_of(fit_envelope(&csv, "dnsexfil", "m", &[("epochs", "lots")]));
    assert!(
        e.starts_with("/fit: ERROR: fit parameter `epochs` has the value `lots`"),
        "{e}"
    );
    let e = error_of(fit_envelope(
        &csv,
        "dnsexfil",
        "m",
        &[("learning_rte", "0.1")],
    ));
    assert!(e.contains("unknown fit parameter `learning_rte`"), "{e}");
    let e = error_of(fit_envelope(&csv, "isolation_forest", "m", &[]));
    assert!(e.contains("unknown algorithm `isolation_forest`"), "{e}");
    let no_target: String = csv.replace(",is_exfiltration\n", ",label\n");
    let e = error_of(fit_envelope(&no_target, "dnsexfil", "m", &[]));
    assert!(e.contains("no `is_exfiltration` column to train on"), "{e}");
    let bad_label = csv.replacen(",0\n", ",maybe\n", 1);
    let e = error_of(fit_envelope(&bad_label, "dnsexfil", "m", &[]));
    assert!(e.contains("must be 0 or 1") && e.contains("`maybe`"), "{e}");
    let benign_only: String = csv
        .lines()
        .filter(|l| !l.ends_with(",1"))
        .map(|l| format!("{l}\n"))
        .collect();
    let e = error_of(fit_envelope(&benign_only, "dnsexfil", "m", &[]));
    assert!(e.contains("at least 2 rows labelled 1"), "{e}");
    let mut rank_as_label = fit_envelope(&csv, "dnsexfil", "m", &[]);
    rank_as_label["meta"]["target_variables"] = serde_json::json!(["rank"]);
    let e = error_of(rank_as_label);
    assert!(e.contains("`rank` is an input field, not a label"), "{e}");
    // Fitting into the name of a model the service was started with would replace it for
    // every search: refused.
    let mut pinned = fit_envelope(&csv, "dnsexfil", ESCU_MODEL_NAME, &[]);
    pinned["meta"]["options"]["params"] = serde_json::json!({});
    let e = error_of(pinned);
    assert!(
        e.contains("is a model this service was started with"),
        "{e}"
    );
    assert!(store_files(&server.model_dir()).is_empty());
    // And the service still answers the next request normally.
    assert_eq!(server.apply(GOOD_ROWS)["status"], "success");
}

const GOOD_ROWS: &str = "src,query,rank\n10.1.1.1,www.google.com,1\n";

#[test]
fn a_fit_over_the_time_limit_stops_and_keeps_the_previous_model() {
    let csv = labelled_csv(500);
    let apply = apply_envelope(&without_labels(&csv), "dnsexfil", "m");
    // A previous version of `m`, trained where fits have time.
    let trainer = TestServer::start();
    let previous = probabilities(&trainer.post_json(
        "/fit",
        &fit_envelope(&csv, "dnsexfil", "m", &[("epochs", "3")]),
    ));
    let file = "dnsexfil_m.safetensors";
    let bytes = std::fs::read(trainer.model_dir().join(file)).unwrap();

    let server = TestServer::start_with(ServerOptions {
        fit_time_limit: Duration::ZERO,
        ..Default::default()
    });
    std::fs::create_dir_all(server.model_dir()).unwrap();
    std::fs::write(server.model_dir().join(file), &bytes).unwrap();
    assert_same_scores(
        &probabilities(&server.post_json("/apply", &apply)),
        &previous,
        "the previous version before the fit",
    );
    let answer = server.post_json(
        "/fit",
        &fit_envelope(&csv, "dnsexfil", "m", &[("seed", "7")]),
    );
    let e = answer["message"].as_str().unwrap();
    assert!(
        e.contains("time limit") && e.contains("--fit-time-limit-secs"),
        "{e}"
    );
    assert!(e.contains("nothing was saved"), "{e}");
    assert_eq!(store_files(&server.model_dir()), vec![file]);
    assert!(
        std::fs::read(server.model_dir().join(file)).unwrap() == bytes,
        "the stored previous version is untouched"
    );
    assert_same_scores(
        &probabilities(&server.post_json("/apply", &apply)),
        &previous,
        "the previous version after the stopped fit",
    );
}

#[test]
fn apply_keeps_answering_while_a_fit_trains() {
    // A fit far longer than the test: it ends only when the service stops, so its training is
    // known to span everything the test does meanwhile, however slow the machine.
    let served = ServedBinary::start(&[
        "--enable-https=false".as_ref(),
        "--model".as_ref(),
        artifact().as_os_str(),
        "--fit-time-limit-secs".as_ref(),
        "3600".as_ref(),
    ]);
    let csv = labelled_csv(3000);
    let address = served.address.clone();
    let body = fit_envelope(
        &csv,
        "dnsexfil",
        "long",
        &[
            ("epochs", "10000"),
            ("patience", "1000"),
            ("batch_size", "16"),
        ],
    );
    let post = |address: &str, path: &str, body: &serde_json::Value| {
        TestServer::client()
            .post(format!("http://{address}{path}"))
            .header("Authorization", TOKEN)
            .json(body)
            .send()
            .unwrap()
            .json::<serde_json::Value>()
            .unwrap()
    };
    let fit = std::thread::spawn(move || post(&address, "/fit", &body));
    let epochs_before = served.wait_for_logs("fit epoch", 1).len();
    for _ in 0..20 {
        let answer = post(&served.address, "/apply", &escu_envelope(GOOD_ROWS));
        assert_eq!(answer["status"], "success", "{answer}");
    }
    // Training went on meanwhile: more epochs, and no answer yet.
    served.wait_for_logs("fit epoch", epochs_before + 1);
    assert!(
        !fit.is_finished(),
        "the fit was still training while /apply answered"
    );
    // A second fit meanwhile is refused with a reason rather than queued behind the first.
    let second = post(
        &served.address,
        "/fit",
        &fit_envelope(&csv, "dnsexfil", "other", &[]),
    );
    assert!(
        second["message"]
            .as_str()
            .unwrap()
            .contains("another fit is training"),
        "{second}"
    );
    assert!(served.terminate().success());
    let text = fit.join().unwrap().to_string();
    assert!(text.contains("shutting down"), "{text}");
}

#[test]
fn killing_the_server_during_fits_leaves_the_store_loadable() {
    let model_dir = tempfile::tempdir().unwrap();
    let csv = labelled_csv(2000);
    let apply_csv = without_labels(&csv);
    let args = |dir: &Path| {
        vec![
            std::ffi::OsString::from("--enable-https=false"),
            "--model-dir".into(),
            dir.as_os_str().to_owned(),
        ]
    };
    let post = |address: &str, path: &str, body: &serde_json::Value| {
        TestServer::client()
            .post(format!("http://{address}{path}"))
            .header("Authorization", TOKEN)
            .json(body)
            .send()
            .and_then(|r| r.json::<serde_json::Value>())
    };
    let served = |dir: &Path| {
        let a = args(dir);
        let refs: Vec<&std::ffi::OsStr> = a.iter().map(|s| s.as_os_str()).collect();
        ServedBinary::start(&refs)
    };

    // Training is deterministic for a seed, so each version's scores are known in advance.
    let fit_body = |seed: u64| {
        fit_envelope(
            &csv,
            "dnsexfil",
            "m",
            &[
                ("epochs", "30"),
                ("patience", "1000"),
                ("seed", &seed.to_string()),
            ],
        )
    };
    let reference = TestServer::start();
    let version = |seed: u64| probabilities(&reference.post_json("/fit", &fit_body(seed)));

    // A first version of the model, saved completely.
    let server = served(model_dir.path());
    let first = post(&server.address, "/fit", &fit_body(0)).unwrap();
    // Shows (with --nocapture) how long a fit takes, so the kill delays below can span it.
    eprintln!("{}", first["message"]);
    assert_same_scores(
        &probabilities(&first),
        &version(0),
        "a fit in the binary and in-process",
    );
    drop(server);

    // Refit the same name and kill the process (SIGKILL) at a different moment each time:
    // during training, around the save, after it. Every restart must load the store, and serve
    // either the previous version or the new one, complete. Moments are found from the log:
    // once the first epoch is logged (previous version), at delays after the fit started, and
    // once the save is logged (new version).
    #[derive(Debug, Clone, Copy)]
    enum KillAt {
        FirstEpoch,
        AfterStart(u64),
        Saved,
    }
    let planned = [
        KillAt::FirstEpoch,
        KillAt::AfterStart(0),
        KillAt::AfterStart(50),
        KillAt::AfterStart(150),
        KillAt::AfterStart(400),
        KillAt::Saved,
    ];
    let mut current = version(0);
    let (mut saw_previous, mut saw_new) = (0, 0);
    let mut seed = 0u64;
    let mut extra = 0;
    loop {
        let at = match planned.get(seed as usize) {
            Some(&at) => at,
            // Both outcomes must have been seen, or the test shows nothing: a few more
            // attempts at the moment that gives the missing one.
            None if saw_previous == 0 && extra < 6 => KillAt::FirstEpoch,
            None if saw_new == 0 && extra < 6 => KillAt::Saved,
            None => break,
        };
        if seed as usize >= planned.len() {
            extra += 1;
        }
        seed += 1;
        let new = version(seed);
        assert_ne!(new, current, "seed {seed} trains a different version");
        let mut server = served(model_dir.path());
        let address = server.address.clone();
        let body = fit_body(seed);
        let fit = std::thread::spawn(move || post(&address, "/fit", &body).ok());
        match at {
            KillAt::FirstEpoch => drop(server.wait_for_log("fit epoch")),
            KillAt::AfterStart(ms) => {
                server.wait_for_log("fit started");
                std::thread::sleep(Duration::from_millis(ms));
            }
            KillAt::Saved => drop(server.wait_for_log("fit saved and serving")),
        }
        server.child.kill().unwrap();
        server.child.wait().unwrap();
        let _ = fit.join();
        let restarted = served(model_dir.path());
        let applied = post(
            &restarted.address,
            "/apply",
            &apply_envelope(&apply_csv, "dnsexfil", "m"),
        )
        .unwrap();
        let scores = probabilities(&applied);
        if scores == current {
            saw_previous += 1;
        } else if scores == new {
            saw_new += 1;
        } else {
            panic!(
                "after a kill at {at:?} the store serves neither the previous nor the new version"
            );
        }
        current = scores;
        let stray: Vec<String> = store_files(model_dir.path())
            .into_iter()
            .filter(|f| !f.ends_with(".tmp"))
            .collect();
        assert_eq!(stray, vec!["dnsexfil_m.safetensors"]);
    }
    eprintln!("kills: {saw_previous} kept the previous version, {saw_new} gave the new one");
    assert!(
        saw_previous > 0 && saw_new > 0,
        "both outcomes observed: previous {saw_previous}, new {saw_new}"
    );
}

#[test]
fn replicas_sharing_the_store_serve_what_another_replica_fitted() {
    let store = tempfile::tempdir().unwrap();
    let args: Vec<std::ffi::OsString> = vec![
        "--enable-https=false".into(),
        "--store-rescan-secs".into(),
        "1".into(),
        "--model-dir".into(),
        store.path().as_os_str().to_owned(),
    ];
    let refs: Vec<&std::ffi::OsStr> = args.iter().map(|s| s.as_os_str()).collect();
    let (a, b) = (ServedBinary::start(&refs), ServedBinary::start(&refs));
    let post = |address: &str, path: &str, body: &serde_json::Value| {
        TestServer::client()
            .post(format!("http://{address}{path}"))
            .header("Authorization", TOKEN)
            .json(body)
            .send()
            .unwrap()
            .json::<serde_json::Value>()
            .unwrap()
    };
    let csv = labelled_csv(1500);
    let apply_csv = without_labels(&csv);
    let apply_body = apply_envelope(&apply_csv, "dnsexfil", "shared");

    // Fitted on A, applied on B right away: B finds it in the store on the miss.
    let fitted = post(
        &a.address,
        "/fit",
        &fit_envelope(&csv, "dnsexfil", "shared", &[("epochs", "3")]),
    );
    assert_same_scores(
        &probabilities(&post(&b.address, "/apply", &apply_body)),
        &probabilities(&fitted),
        "replica B after a fit on A",
    );
    // Refitted on A: B picks the new version up at its next store scan.
    let refit = post(
        &a.address,
        "/fit",
        &fit_envelope(
            &csv,
            "dnsexfil",
            "shared",
            &[("epochs", "3"), ("seed", "99")],
        ),
    );
    // B rescans every second; a minute allows for a loaded machine.
    wait_until(PATIENCE, "replica B to pick up the refit", || {
        probabilities(&post(&b.address, "/apply", &apply_body)) == probabilities(&refit)
    });
}

#[test]
fn sigterm_during_a_fit_stops_its_training_saves_nothing_and_exits_0() {
    let store = tempfile::tempdir().unwrap();
    let args: Vec<std::ffi::OsString> = vec![
        "--enable-https=false".into(),
        "--model-dir".into(),
        store.path().as_os_str().to_owned(),
    ];
    let refs: Vec<&std::ffi::OsStr> = args.iter().map(|s| s.as_os_str()).collect();
    let served = ServedBinary::start(&refs);
    // Far more epochs than the test waits for: only the stop can end this fit in time.
    let body = fit_envelope(
        &labelled_csv(2000),
        "dnsexfil",
        "long",
        &[("epochs", "1000"), ("patience", "1000")],
    );
    let address = served.address.clone();
    let fit = std::thread::spawn(move || {
        TestServer::client()
            .post(format!("http://{address}/fit"))
            .header("Authorization", TOKEN)
            .json(&body)
            .send()
            .and_then(|r| r.json::<serde_json::Value>())
    });
    served.wait_for_log("fit epoch");
    let signalled = Instant::now();
    let exit = served.terminate();
    assert!(exit.success(), "{exit:?}");
    let answer = fit.join().unwrap().expect("the fit is answered");
    assert_eq!(answer["status"], "error", "{answer}");
    let message = answer["message"].as_str().unwrap();
    assert!(
        message.contains("shutting down") && message.contains("nothing was saved"),
        "{message}"
    );
    // Well within the shutdown grace period (30 s by default), which a fit used to outlast.
    assert!(
        signalled.elapsed() < Duration::from_secs(15),
        "{:?}",
        signalled.elapsed()
    );
    assert_eq!(store_files(store.path()), Vec::<String>::new());
}

#[test]
fn a_fit_over_max_fit_rows_is_refused_over_http_and_one_at_the_limit_trains() {
    let csv = labelled_csv(1500);
    let rows = csv.lines().count() - 1;
    let store = tempfile::tempdir().unwrap();
    let limit = rows.to_string();
    let served = ServedBinary::start(&[
        "--enable-https=false".as_ref(),
        "--model-dir".as_ref(),
        store.path().as_os_str(),
        "--max-fit-rows".as_ref(),
        limit.as_ref(),
    ]);
    let fit = |csv: &str| {
        TestServer::client()
            .post(format!("http://{}/fit", served.address))
            .header("Authorization", TOKEN)
            .json(&fit_envelope(csv, "dnsexfil", "m", &[("epochs", "2")]))
            .send()
            .unwrap()
            .json::<serde_json::Value>()
            .unwrap()
    };
    // One row more than the limit: refused before any training, with the flag named.
    let last = csv.lines().last().unwrap();
    let over = format!("{csv}{last}\n");
    let answer = fit(&over);
    assert_eq!(answer["status"], "error", "{answer}");
    let message = answer["message"].as_str().unwrap();
    assert!(
        message.contains(&format!(
            "the fit has {} rows, more than the {rows} a fit may train on",
            rows + 1
        )) && message.contains("--max-fit-rows"),
        "{message}"
    );
    assert!(served.logs_with("fit started").is_empty());
    assert!(store_files(store.path()).is_empty());
    // Exactly the limit: trained and saved.
    let answer = fit(&csv);
    assert_eq!(answer["status"], "success", "{answer}");
    assert_eq!(store_files(store.path()), vec!["dnsexfil_m.safetensors"]);
}
