//! The history across requests (in-process store), through the real binary over HTTP: what
//! `/v1/score` and DSDL `/apply` remember, re-sent events counted once, `GET` and `DELETE
//! /v1/history/{src}`, the ESCU model remembering nothing, `--history off`, and the metrics.

mod common;

use common::{artifact, escu_envelope_for, ServedBinary, TestServer, TOKEN};
use dnsexfil::history::unix_now as now;
use serde_json::{json, Value};

const ESCU: &str = "detect_dns_data_exfiltration_using_pretrained_model_in_dsdl";

struct Api {
    base: String,
    client: reqwest::blocking::Client,
}

impl Api {
    fn of(served: &ServedBinary) -> Api {
        Api {
            base: format!("http://{}", served.address),
            client: TestServer::client(),
        }
    }

    fn score(&self, events: Value) -> Value {
        let resp = self
            .client
            .post(format!("{}/v1/score", self.base))
            .header("Authorization", format!("Bearer {TOKEN}"))
            .json(&json!({ "events": events }))
            .send()
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.json().unwrap()
    }

    fn apply(&self, csv: &str, model: &str) -> Value {
        let resp = self
            .client
            .post(format!("{}/apply", self.base))
            .header("Authorization", TOKEN)
            .json(&escu_envelope_for(csv, model))
            .send()
            .unwrap();
        assert_eq!(resp.status(), 200);
        let answer: Value = resp.json().unwrap();
        assert_eq!(answer["status"], "success", "{answer}");
        answer
    }

    /// `GET /v1/history/{src}`: status and body.
    fn history(&self, src: &str) -> (u16, Value) {
        let resp = self
            .client
            .get(format!("{}/v1/history/{src}", self.base))
            .header("Authorization", format!("Bearer {TOKEN}"))
            .send()
            .unwrap();
        (resp.status().as_u16(), resp.json().unwrap())
    }

    fn forget(&self, src: &str) -> u16 {
        self.client
            .delete(format!("{}/v1/history/{src}", self.base))
            .header("Authorization", format!("Bearer {TOKEN}"))
            .send()
            .unwrap()
            .status()
            .as_u16()
    }

    fn metric(&self, name: &str) -> f64 {
        let text = self
            .client
            .get(format!("{}/metrics", self.base))
            .send()
            .unwrap()
            .text()
            .unwrap();
        text.lines()
            .find_map(|line| line.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} in /metrics"))
            .parse()
            .unwrap()
    }
}

fn plain_http(extra: &[&str]) -> ServedBinary {
    let mut args: Vec<&std::ffi::OsStr> = vec!["--enable-https".as_ref(), "false".as_ref()];
    args.extend(extra.iter().map(std::ffi::OsStr::new));
    ServedBinary::start(&args)
}

#[test]
fn events_sent_one_at_a_time_are_remembered_once_and_can_be_forgotten() {
    let served = plain_http(&[]);
    let api = Api::of(&served);
    let t = now() - 600;
    // A slow tunnel: one name per request, three of them ten seconds apart; and one benign name.
    let events: Vec<Value> = (0..3)
        .map(|i| json!({"src": "10.9.8.7", "query": format!("{i:02x}c0ffee.tunnel-x.net"), "time": t + 10 * i}))
        .chain([json!({"src": "10.9.8.7", "query": "www.example.com", "time": t})])
        .collect();
    for event in &events {
        api.score(json!([event]));
    }
    let (status, report) = api.history("10.9.8.7");
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["distinct_names"], 4);
    assert_eq!(report["name_buckets"], 4);
    assert_eq!(report["first_seen"], t);
    assert_eq!(report["last_seen"], t + 20);
    assert_eq!(report["window_seconds"], 86_400);
    let tunnel = &report["domains"][0];
    assert_eq!(tunnel["domain"], "tunnel-x.net");
    assert_eq!(tunnel["distinct_names"], 3);
    assert_eq!(tunnel["recent_names"][0], "02c0ffee.tunnel-x.net");
    assert_eq!(report["domains"][1]["domain"], "example.com");

    // The same events again (a retry, a re-run search), all at once: counted once.
    let recorded = api.metric("dnsexfil_history_recorded_total");
    assert_eq!(recorded, 4.0);
    api.score(json!(events));
    assert_eq!(api.history("10.9.8.7").1["name_buckets"], 4);
    assert_eq!(api.metric("dnsexfil_history_recorded_total"), 4.0);
    assert_eq!(api.metric("dnsexfil_history_sources"), 1.0);
    assert!(api.metric("dnsexfil_history_bytes") > 0.0);

    // An analyst forgets the source: gone, and a second delete says there is nothing.
    assert_eq!(api.forget("10.9.8.7"), 204);
    let (status, answer) = api.history("10.9.8.7");
    assert_eq!(status, 404);
    assert_eq!(answer["error"]["code"], "not_remembered");
    assert_eq!(api.forget("10.9.8.7"), 404);
    assert_eq!(api.metric("dnsexfil_history_bytes"), 0.0);
    // A source with a `/` is asked for percent-encoded, as docs/history.md says.
    api.score(json!([{"src": "site/host-7", "query": "a.example.org", "time": t}]));
    let (status, report) = api.history("site%2Fhost-7");
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["src"], "site/host-7");
    // A source whose percent-encoding is not UTF-8 is told so, in /v1's error shape.
    let (status, answer) = api.history("%FF%FE");
    assert_eq!(status, 400);
    assert_eq!(answer["error"]["code"], "invalid_source");
}

#[test]
fn apply_remembers_rows_at_their_time_for_our_models_only() {
    let served = plain_http(&["--model", artifact().to_str().unwrap()]);
    let api = Api::of(&served);
    // At the start of a 5-minute bucket (the default size), so that `t` and `t + 5` always share
    // one: from an arbitrary second they straddled a bucket boundary once in 60 runs.
    let t = (now() - 3000) / 300 * 300;
    let csv = format!(
        "_time,src,query,rank\n{t},10.1.1.1,a1.dnsx.org,1\n{},10.1.1.1,a2.dnsx.org,1\n{},10.1.1.1,a1.dnsx.org,2\n",
        t + 5,
        t + 1200
    );
    // The ESCU model's features stay per request: nothing is remembered.
    api.apply(&csv, ESCU);
    assert_eq!(api.history("10.1.1.1").0, 404);
    // The default model's are: a1 twice (two buckets), a2 once.
    api.apply(&csv, "dnsexfil_v7");
    let (status, report) = api.history("10.1.1.1");
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["distinct_names"], 2);
    assert_eq!(report["name_buckets"], 3);
    assert_eq!(report["first_seen"], t);
    assert_eq!(report["last_seen"], t + 1200);
    assert_eq!(report["domains"][0]["active_buckets"], 2);
    // The search re-run: the same rows, counted once.
    api.apply(&csv, "dnsexfil_v7");
    assert_eq!(api.history("10.1.1.1").1["name_buckets"], 3);
    // Rows older than the window are not remembered.
    let old = format!(
        "_time,src,query,rank\n{},10.2.2.2,x.dnsx.org,1\n",
        t - 90_000
    );
    api.apply(&old, "dnsexfil_v7");
    assert_eq!(api.history("10.2.2.2").0, 404);
    assert_eq!(api.metric("dnsexfil_history_skipped_total"), 1.0);
}

#[test]
fn with_history_off_nothing_is_remembered_and_the_api_says_how_to_turn_it_on() {
    let served = plain_http(&["--history", "off"]);
    let api = Api::of(&served);
    api.score(json!([{"src": "h", "query": "a.example.com"}]));
    let (status, answer) = api.history("h");
    assert_eq!(status, 404);
    assert_eq!(answer["error"]["code"], "history_off");
    assert!(answer["error"]["message"]
        .as_str()
        .unwrap()
        .contains("--history memory"));
    assert_eq!(api.forget("h"), 404);
    assert_eq!(api.metric("dnsexfil_history_recorded_total"), 0.0);
}

#[test]
fn a_history_setting_that_is_no_store_stops_the_service_with_the_forms_it_takes() {
    let out = common::dnsexfil_command()
        .args(["serve", "--port", "0", "--history", "mongodb://x"])
        .env("api_token", TOKEN)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("memory, off, or redis://host:port/db"),
        "{err}"
    );
}

/// The start-up log line (logged before the address) containing `marker`.
fn startup_line(served: &ServedBinary, marker: &str) -> String {
    served
        .startup_logs
        .iter()
        .find(|l| l.contains(marker))
        .unwrap_or_else(|| {
            panic!(
                "no start-up line with {marker:?}: {:?}",
                served.startup_logs
            )
        })
        .clone()
}

#[test]
fn a_snapshot_keeps_the_history_across_a_restart_and_a_bad_one_is_set_aside() {
    let data = tempfile::tempdir().unwrap();
    let args = ["--enable-https", "false", "--history-snapshot"].map(std::ffi::OsStr::new);
    let t = now() - 900;
    let first = ServedBinary::start_in(data.path(), &args);
    startup_line(&first, "no history snapshot yet");
    let api = Api::of(&first);
    api.score(json!([
        {"src": "10.1.2.3", "query": "aa11.slow-tunnel.net", "time": t},
        {"src": "10.1.2.3", "query": "bb22.slow-tunnel.net", "time": t + 3600 / 4},
        {"src": "10.4.5.6", "query": "www.example.com", "time": t},
    ]));
    let before = api.history("10.1.2.3").1;
    assert_eq!(before["distinct_names"], 2, "{before}");
    assert!(first.terminate().success());
    let path = data.path().join("history").join("snapshot.json");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(
        mode & 0o777,
        0o600,
        "DNS names are personal data: owner-only"
    );

    // Restarted on the same data directory: the analyst's view is what it was.
    let second = ServedBinary::start_in(data.path(), &args);
    let restored = startup_line(&second, "history restored");
    assert!(restored.contains("\"sources\":2"), "{restored}");
    let api = Api::of(&second);
    assert_eq!(api.history("10.1.2.3").1, before);
    assert_eq!(api.history("10.4.5.6").1["distinct_names"], 1);
    // A re-sent event is still known: counted once.
    api.score(json!([{"src": "10.1.2.3", "query": "aa11.slow-tunnel.net", "time": t}]));
    assert_eq!(api.history("10.1.2.3").1["name_buckets"], 2);
    assert!(second.terminate().success());

    // A damaged snapshot does not stop the service: moved aside, named in the log, and the
    // history starts empty; the next shutdown writes a good one.
    std::fs::write(
        &path,
        b"{\"format\": \"dnsexfil-history/1\", \"sources\": [tru",
    )
    .unwrap();
    let third = ServedBinary::start_in(data.path(), &args);
    let problem = startup_line(&third, "history snapshot not restored");
    assert!(problem.contains("snapshot.json"), "{problem}");
    let api = Api::of(&third);
    assert_eq!(api.history("10.1.2.3").0, 404);
    assert!(third.terminate().success());
    let aside =
        std::fs::read(data.path().join("history").join("snapshot.json.unreadable")).unwrap();
    assert!(aside.ends_with(b"[tru"));
    let fresh: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(fresh["format"], "dnsexfil-history/1");
}

#[test]
fn a_snapshot_without_the_in_process_history_is_refused_with_what_to_do() {
    let out = common::dnsexfil_command()
        .args([
            "serve",
            "--port",
            "0",
            "--history",
            "off",
            "--history-snapshot",
        ])
        .env("api_token", TOKEN)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("use --history memory"), "{err}");
}
