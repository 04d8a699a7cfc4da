//! The DSDL wire contract over a real socket: auth, status codes, summary encoding, staging,
//! HTTPS, and bad input that gets a clear error without affecting the next request.

mod common;

use std::fs;

use common::*;
use dnsexfil::http::auth::Token;
use dnsexfil::model::convert::ESCU_MODEL_NAME;

const GOOD_CSV: &str = "src,query,rank\n10.1.1.1,www.google.com,1\n10.2.2.2,mzxw6ytboi2dgnzsgq3dmnzwgq2dgnrrgm3tkmzsgi.t.exfil-example.net,1\n";

/// A golden request answered exactly as the stock model answers it (probabilities within 1e-6).
fn assert_good_request_still_works(server: &TestServer) {
    let dir = fixtures().join("golden/all_rank1_small");
    let (_, got) = results_of(&server.apply(&fs::read_to_string(dir.join("input.csv")).unwrap()));
    let (_, expected) = parse_csv(&fs::read_to_string(dir.join("expected.csv")).unwrap());
    assert_eq!(got.len(), expected.len());
    for (g, e) in got.iter().zip(&expected) {
        assert_eq!((&g[..3], &g[4]), (&e[..3], &e[4]));
        let (gp, ep): (f64, f64) = (g[3].parse().unwrap(), e[3].parse().unwrap());
        assert!((gp - ep).abs() <= 1e-6, "{gp} vs {ep}");
    }
}

fn get(url: &str, auth: Option<&str>) -> (u16, Option<String>, String) {
    let mut req = TestServer::client().get(url);
    if let Some(a) = auth {
        req = req.header("Authorization", a);
    }
    let resp = req.send().unwrap();
    let www = resp
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string());
    (resp.status().as_u16(), www, resp.text().unwrap())
}

#[test]
fn token_is_required_raw_or_bearer_with_stock_reasons() {
    let server = TestServer::start();
    let url = format!("{}/summary", server.url);
    assert_eq!(get(&url, Some(TOKEN)).0, 200);
    assert_eq!(get(&url, Some(&format!("Bearer {TOKEN}"))).0, 200);
    let (status, www, body) = get(&url, None);
    assert_eq!((status, www.as_deref()), (401, Some("Bearer")));
    assert_eq!(body, r#"{"detail":"No header with token"}"#);
    let (status, _, body) = get(&url, Some("wrong"));
    assert_eq!(
        (status, body.as_str()),
        (401, r#"{"detail":"Invalid token"}"#)
    );
    // The stock container accepted any header containing the token; we do not.
    assert_eq!(get(&url, Some(&format!("x{TOKEN}x"))).0, 401);
    for path in ["/", "/apply", "/fit", "/compute"] {
        let method_ok = if path == "/" {
            get(&format!("{}{path}", server.url), None).0
        } else {
            TestServer::client()
                .post(format!("{}{path}", server.url))
                .body("{}")
                .send()
                .unwrap()
                .status()
                .as_u16()
        };
        assert_eq!(method_ok, 401, "{path} is protected");
    }

    let unset = TestServer::start_with(ServerOptions {
        token: Token::Unset,
        ..Default::default()
    });
    let (status, _, body) = get(&format!("{}/summary", unset.url), Some(TOKEN));
    assert_eq!(
        (status, body.as_str()),
        (401, r#"{"detail":"No token setup"}"#)
    );
    let empty = TestServer::start_with(ServerOptions {
        token: Token::Empty,
        ..Default::default()
    });
    let (status, _, body) = get(&format!("{}/summary", empty.url), Some(TOKEN));
    assert_eq!(
        (status, body.as_str()),
        (401, r#"{"detail":"No token defined"}"#)
    );
}

#[test]
fn summary_is_json_encoded_twice_with_model_details() {
    let server = TestServer::start();
    for path in ["/summary", "/"] {
        let (status, _, body) = get(&format!("{}{path}", server.url), Some(TOKEN));
        assert_eq!(status, 200);
        let once: serde_json::Value = serde_json::from_str(&body).unwrap();
        let inner: serde_json::Value =
            serde_json::from_str(once.as_str().expect("a JSON string literal")).unwrap();
        assert_eq!(inner["token"], "valid");
        assert_eq!(inner["model"], ESCU_MODEL_NAME);
        assert_eq!(inner["models"][0]["schema"], "escu-v1");
        assert_eq!(
            inner["models"][0]["source_sha256"],
            "701d1c031e8af7c9b807ba7b1a31d933c34f65581dba750e77e5b1ee3ee652bf"
        );
    }
}

#[test]
fn unknown_paths_methods_and_compute_answer_like_the_stock_container() {
    let server = TestServer::start();
    let (status, _, body) = get(&format!("{}/nope", server.url), Some(TOKEN));
    assert_eq!((status, body.as_str()), (404, r#"{"detail":"Not Found"}"#));
    let (status, _, body) = get(&format!("{}/apply", server.url), Some(TOKEN));
    assert_eq!(
        (status, body.as_str()),
        (405, r#"{"detail":"Method Not Allowed"}"#)
    );
    let (status, body) = server.post_raw("/compute", "{}");
    assert_eq!(status, 410);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "deprecated");
    assert_eq!(
        v["message"],
        "/compute has been deprecated and disabled. Use /fit and /apply instead."
    );
    let (status, _, body) = get(&format!("{}/healthz", server.url), None);
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));
}

#[test]
fn fit_with_mode_stage_writes_data_and_meta_without_the_session_key() {
    let server = TestServer::start();
    let body = serde_json::json!({
        "data": "src,query,rank,is_exfiltration\n10.0.0.1,a.example.com,1,0\n",
        "meta": {"options": {"params": {"mode": "\"stage\"", "algo": "my_algo"}, "model_name": "my_model",
                 "session_key": "SPLUNK-SESSION-SECRET"},
                 "feature_variables": ["src", "query", "rank"], "target_variables": ["is_exfiltration"]}
    });
    let answer = server.post_json("/fit", &body);
    assert_eq!(answer["status"], "staged", "{answer}");
    let csv_path = server.staging_dir.join("my_model.csv");
    assert_eq!(
        answer["message"],
        format!(
            "Model data staged successfully in {} - no model was built yet.",
            csv_path.display()
        )
    );
    assert!(answer.get("results").is_none());
    assert_eq!(
        fs::read_to_string(&csv_path).unwrap(),
        body["data"].as_str().unwrap()
    );
    let meta_text = fs::read_to_string(server.staging_dir.join("my_model.json")).unwrap();
    assert!(!meta_text.contains("SPLUNK-SESSION-SECRET"));
    let meta: serde_json::Value = serde_json::from_str(&meta_text).unwrap();
    assert_eq!(meta["target_variables"][0], "is_exfiltration");
    assert_eq!(meta["options"]["model_name"], "my_model");

    // A path-like model name is refused before it touches the disk.
    let mut evil = body.clone();
    evil["meta"]["options"]["model_name"] = "../../etc/passwd".into();
    let answer = server.post_json("/fit", &evil);
    assert_eq!(answer["status"], "error");
    assert!(answer["message"]
        .as_str()
        .unwrap()
        .starts_with("/fit: ERROR: model_name: `../../etc/passwd` is not a valid name"));
    // Dotted names keep their full name (`v1.2.csv`, not `v1.csv`); `.` alone is refused.
    let mut dotted = body.clone();
    dotted["meta"]["options"]["model_name"] = "v1.2".into();
    assert_eq!(server.post_json("/fit", &dotted)["status"], "staged");
    assert!(
        server.staging_dir.join("v1.2.csv").is_file()
            && server.staging_dir.join("v1.2.json").is_file()
    );
    dotted["meta"]["options"]["model_name"] = ".".into();
    assert_eq!(server.post_json("/fit", &dotted)["status"], "error");
    let staged: Vec<_> = fs::read_dir(&server.staging_dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(staged.len(), 4, "nothing else was written: {staged:?}");
    assert!(!server
        .staging_dir
        .parent()
        .unwrap()
        .join("data.csv")
        .exists());
}

#[test]
fn fit_without_a_label_field_applies_the_pretrained_model() {
    let server = TestServer::start();
    let mut body = escu_envelope(GOOD_CSV);
    body["meta"]["options"]["params"] = serde_json::json!({"algo": ESCU_MODEL_NAME});
    let answer = server.post_json("/fit", &body);
    assert_eq!(answer["message"], "/fit done successfully");
    assert_eq!(answer["results"], server.apply(GOOD_CSV)["results"]);

    body["meta"]["options"]["params"]["algo"] = "some_new_algo".into();
    body["meta"]["options"]["model_name"] = "fresh".into();
    let answer = server.post_json("/fit", &body);
    assert_eq!(answer["status"], "error");
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("training needs a 0/1 label field"),
        "{answer}"
    );
}

#[test]
fn apply_ignores_mode_and_resolves_names_like_dsdl() {
    let server = TestServer::start();
    // `| apply NAME` with the bare model name, no algo.
    let body =
        serde_json::json!({"data": GOOD_CSV, "meta": {"options": {"model_name": ESCU_MODEL_NAME}}});
    assert_eq!(server.post_json("/apply", &body)["status"], "success");
    // No meta at all (a curl client) falls back to `default`, which is not loaded: a clear error.
    let answer = server.post_json("/apply", &serde_json::json!({"data": GOOD_CSV}));
    assert_eq!(answer["status"], "error");
    let msg = answer["message"].as_str().unwrap();
    assert!(
        msg.starts_with("/apply: ERROR: no model named `default` is loaded"),
        "{msg}"
    );
    assert!(
        msg.contains(ESCU_MODEL_NAME),
        "lists the loaded models: {msg}"
    );
}

#[test]
fn bad_input_gets_a_clear_error_and_the_next_request_is_unaffected() {
    let server = TestServer::start();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "malformed JSON",
            b"{\"data\": \"src,query".to_vec(),
            "not valid JSON",
        ),
        (
            "missing data",
            br#"{"meta": {}}"#.to_vec(),
            "no `data` field",
        ),
        (
            "non-UTF-8 bytes",
            b"{\"data\": \"src,query\n\xff\xfe\"}".to_vec(),
            "not UTF-8",
        ),
        (
            "no query column",
            serde_json::to_vec(&escu_envelope("src,rank\n10.0.0.1,1\n")).unwrap(),
            "no `query` column",
        ),
        (
            "path-like model name",
            {
                let mut e = escu_envelope(GOOD_CSV);
                e["meta"]["options"]["model_name"] = "../../etc/passwd".into();
                e["meta"]["options"]["params"] = serde_json::json!({});
                serde_json::to_vec(&e).unwrap()
            },
            "is not a valid name",
        ),
    ];
    for (what, body, expect) in cases {
        let (status, text) = server.post_raw("/apply", body);
        assert_eq!(status, 200, "{what}: DSDL errors are HTTP 200");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["status"], "error", "{what}");
        let msg = v["message"].as_str().unwrap();
        assert!(
            msg.starts_with("/apply: ERROR: ") && msg.contains(expect),
            "{what}: {msg}"
        );
        assert!(v.get("results").is_none(), "{what}");
        assert_good_request_still_works(&server);
    }
}

#[test]
fn ragged_and_unparsable_rows_are_reported_while_good_rows_are_scored() {
    let server = TestServer::start();
    let csv = "src,query,rank\n10.1.1.1,www.google.com,1\n10.1.1.1,a,b,1\n10.1.1.1,x.example.com,abc\n10.2.2.2,mzxw6ytboi2dgnzsgq3dmnzwgq2dgnrrgm3tkmzsgi.t.exfil-example.net,1\n";
    let answer = server.apply(csv);
    let msg = answer["message"].as_str().unwrap();
    assert_eq!(
        msg,
        "/apply done successfully; 2 of 4 rows were not scored: row 2: 4 fields where the header has 3 (quote cells that contain commas); row 3: rank `abc` is not a number"
    );
    let (_, rows) = results_of(&answer);
    assert_eq!(rows.len(), 4);
    assert_eq!((rows[1][3].as_str(), rows[2][3].as_str()), ("", ""));
    // The good rows score as they do without the bad ones (which share no (src, tld) group).
    let (_, alone) = results_of(&server.apply(GOOD_CSV));
    assert_eq!(rows[0][3], alone[0][3]);
    assert_eq!(rows[3][3], alone[1][3]);
    assert!(!rows[0][3].is_empty() && !rows[3][3].is_empty());
    assert_eq!(
        rows[0][4], "0.0",
        "labels print as floats once a row is unscored"
    );
}

#[test]
fn an_oversized_body_gets_a_dsdl_error_and_the_server_keeps_serving() {
    let server = TestServer::start_with(ServerOptions {
        max_body_bytes: 8 << 20,
        ..Default::default()
    });
    let mut big = String::from("{\"data\": \"src,query,rank\\n");
    while big.len() < 50 << 20 {
        big.push_str("10.0.0.1,aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.example.com,1\\n");
    }
    big.push_str("\"}");
    let (status, text) = server.post_raw("/apply", big);
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["status"], "error");
    let msg = v["message"].as_str().unwrap();
    assert!(
        msg.contains("exceeds the 8 MiB limit") && msg.contains("--max-body-mb"),
        "{msg}"
    );
    assert_good_request_still_works(&server);
}

#[test]
fn rows_without_a_rank_column_are_all_scored() {
    let server = TestServer::start();
    let (header, rows) = results_of(&server.apply("query,src\nwww.google.com,10.1.1.1\n"));
    assert_eq!(
        header,
        [
            "src",
            "query",
            "pred_is_dns_data_exfiltration_proba",
            "pred_is_dns_data_exfiltration"
        ]
    );
    assert_eq!(rows, [["10.1.1.1", "www.google.com", "0.0", "0"]]);
}

#[test]
fn a_csv_read_in_place_answers_as_one_read_after_unescaping() {
    // `/apply` reads a plain CSV where it stands in the body, still JSON-escaped; one row that
    // needs unescaping (a tab, a quoted cell, a \u escape) sends the whole request the general
    // way. Both must answer the other rows alike. The odd rows have sources of their own, so
    // they share no history with the rest.
    let server = TestServer::start();
    let csv = dnsexfil::data::synth::dsdl_csv(6000, 9);
    let in_place = server.apply(&csv);
    assert_eq!(in_place["status"], "success", "{in_place}");
    let in_place = in_place["results"].as_str().unwrap().to_string();
    for odd_rows in [
        "10.250.0.1,odd\tname.example.com,1\n",
        "10.250.0.2,\"quoted,name.example.com\",1\n",
        "10.250.0.3,caf\u{e9}.example.com,1\r\n10.250.0.4,x.example.com,2\n",
    ] {
        let answer = server.apply(&format!("{csv}{odd_rows}"));
        assert_eq!(answer["status"], "success", "{answer}");
        let unescaped = answer["results"].as_str().unwrap();
        assert!(unescaped.starts_with(&in_place), "{odd_rows:?}");
        let extra = odd_rows.lines().count();
        assert_eq!(unescaped.lines().count(), in_place.lines().count() + extra);
    }
    // Python writes non-ASCII as \u escapes; `data` need not come first; spaces are allowed.
    let body = format!(
        "{{ \"meta\" : {{\"options\": {{\"model_name\": \"{ESCU_MODEL_NAME}\"}}}} , \"data\" : {} }}",
        serde_json::to_string(&format!("{csv}10.250.0.5,caf\u{e9}.example.com,1\n"))
            .unwrap()
            .replace('\u{e9}', "\\u00e9")
    );
    let (status, text) = server.post_raw("/apply", body);
    assert_eq!(status, 200, "{text}");
    let answer: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(answer["results"].as_str().unwrap().starts_with(&in_place));
    // Two `data` fields: the last one counts, as with any JSON object read into a map.
    let body = format!(
        "{{\"data\": \"src,query\\nnot,this\\n\", \"data\": {}, \"meta\": {{\"options\": {{\"model_name\": \"{ESCU_MODEL_NAME}\"}}}}}}",
        serde_json::to_string(&csv).unwrap()
    );
    let (status, text) = server.post_raw("/apply", body);
    assert_eq!(status, 200, "{text}");
    let answer: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(answer["results"].as_str().unwrap(), in_place);
    // A raw control character is not JSON: the error says so, as for any bad body.
    let (status, text) = server.post_raw("/apply", "{\"data\": \"src,query\\na,b\tc\"}");
    assert_eq!(status, 200, "{text}");
    let answer: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(answer["status"], "error", "{answer}");
    let message = answer["message"].as_str().unwrap();
    assert!(
        message.contains("not valid JSON") && message.contains("control character"),
        "{message}"
    );
}

#[test]
fn a_large_batch_answers_every_row_in_order_with_its_exact_length() {
    // Enough rows for the results to be written on two cores and sent in two parts: the
    // response must still say its exact length and read as one results CSV, row for row.
    let server = TestServer::start();
    let csv = dnsexfil::data::synth::dsdl_csv(3 * dnsexfil::features::PARALLEL_MIN_ROWS + 11, 4);
    let resp = TestServer::client()
        .post(format!("{}/apply", server.url))
        .header("Authorization", common::TOKEN)
        .body(serde_json::to_vec(&common::escu_envelope(&csv)).unwrap())
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers().get("transfer-encoding").is_none(),
        "{:?}",
        resp.headers()
    );
    let length = resp.content_length().expect("a Content-Length");
    let body = resp.bytes().unwrap();
    assert_eq!(body.len() as u64, length);
    let answer: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(answer["status"], "success", "{answer}");
    let results = answer["results"].as_str().unwrap();
    let mut sent = csv.lines().skip(1);
    let mut answered = results.lines().skip(1);
    let mut scored = 0;
    for (row, (input, output)) in sent.by_ref().zip(answered.by_ref()).enumerate() {
        let cells = output
            .strip_prefix(input)
            .and_then(|rest| rest.strip_prefix(','))
            .unwrap_or_else(|| panic!("row {row}: {output:?} does not answer {input:?}"));
        if input.ends_with(",1") {
            let (p, label) = cells.split_once(',').unwrap();
            let p: f64 = p.parse().unwrap();
            assert!(
                (0.0..=1.0).contains(&p) && ["0.0", "1.0"].contains(&label),
                "{output}"
            );
            scored += 1;
        } else {
            assert_eq!(cells, ",", "row {row}");
        }
    }
    assert_eq!((sent.next(), answered.next()), (None, None));
    assert!(scored > 1000, "{scored} rows scored");
}

/// A memory figure of process `pid` from its status file (`VmRSS`, `VmHWM`), in bytes.
fn memory_of(pid: u32, field: &str) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in kB"));
    kib << 10
}

/// Whether process `pid` may use transparent huge pages (`THP_enabled` of its status file,
/// Linux 5.0 and later); `None` where the kernel does not say.
fn thp_enabled(pid: u32) -> Option<bool> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let value = status
        .lines()
        .find_map(|line| line.strip_prefix("THP_enabled:"))?;
    Some(value.trim() == "1")
}

#[test]
fn the_service_runs_without_transparent_huge_pages_unless_told_otherwise() {
    // Only where the kernel tells, where this test process itself may use them (else the
    // server inherits their absence and the test would show nothing), and where
    // MIMALLOC_ALLOW_THP is not already set for the server to inherit.
    if thp_enabled(std::process::id()) != Some(true)
        || std::env::var_os("MIMALLOC_ALLOW_THP").is_some()
    {
        return;
    }
    let served = ServedBinary::start(&["--enable-https".as_ref(), "false".as_ref()]);
    assert_eq!(thp_enabled(served.child.id()), Some(false));
    // MIMALLOC_ALLOW_THP leaves the choice to the allocator.
    let dir = tempfile::tempdir().unwrap();
    let told = ServedBinary::start_with_env(
        dir.path(),
        &["--enable-https".as_ref(), "false".as_ref()],
        &[("MIMALLOC_ALLOW_THP", "1")],
    );
    assert_eq!(thp_enabled(told.child.id()), Some(true));
}

#[test]
fn memory_of_large_requests_goes_back_to_the_os_once_they_stop() {
    if !std::path::Path::new("/proc/self/status").exists() {
        return; // memory figures are read from /proc
    }
    let served = ServedBinary::start(&[
        "--enable-https".as_ref(),
        "false".as_ref(),
        "--model".as_ref(),
        artifact().as_os_str(),
    ]);
    let pid = served.child.id();
    // Idle after one small request: what any first request sets up once (thread stacks, the
    // model's first pass) is part of the baseline, not of what the batches must give back.
    let warm_up: serde_json::Value = TestServer::client()
        .post(format!("http://{}/apply", served.address))
        .header("Authorization", TOKEN)
        .json(&escu_envelope("src,query,rank\na,b.c,1\n"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(warm_up["status"], "success");
    let idle = memory_of(pid, "VmRSS");
    // Large requests (over 1 MiB) back to back, as one Splunk search sends its chunks.
    let body =
        serde_json::to_vec(&escu_envelope(&dnsexfil::data::synth::dsdl_csv(40_000, 5))).unwrap();
    assert!(body.len() > dnsexfil::engine::memory::LARGE_REQUEST_BYTES);
    for _ in 0..3 {
        let answer: serde_json::Value = TestServer::client()
            .post(format!("http://{}/apply", served.address))
            .header("Authorization", TOKEN)
            .body(body.clone())
            .send()
            .unwrap()
            .json()
            .unwrap();
        assert_eq!(answer["status"], "success");
    }
    // The peak, not the figure now: a slow client leaves quiet moments between the requests,
    // in which memory may already have gone back.
    let grown = grown_at_peak(pid, idle, 16 << 20, "the batches");
    // After the quiet moment, most of what the batches left cached is handed back.
    wait_for_resident_at_most(pid, idle + grown / 2, "after the batches");
}

/// How far process `pid`'s peak resident memory rose above `idle`, checked to be more than
/// `at_least` (else the test would show nothing about handing memory back).
fn grown_at_peak(pid: u32, idle: u64, at_least: u64, what: &str) -> u64 {
    let peak = memory_of(pid, "VmHWM");
    let grown = peak.saturating_sub(idle);
    assert!(
        grown > at_least,
        "{what} used too little memory to tell: idle {idle}, peak {peak}"
    );
    grown
}

/// Waits until process `pid` holds at most `bound` bytes resident: memory is handed back after
/// the quiet moment (or at once above the budget). That takes well under a second on a quiet
/// machine; the ceiling is generous for a loaded one, where the release task waits its turn.
fn wait_for_resident_at_most(pid: u32, bound: u64, when: &str) {
    let deadline =
        std::time::Instant::now() + dnsexfil::engine::memory::RELEASE_AFTER_QUIET + PATIENCE;
    let mut now = memory_of(pid, "VmRSS");
    while now > bound {
        let peak = memory_of(pid, "VmHWM");
        assert!(
            std::time::Instant::now() < deadline,
            "resident memory stays at {now} bytes {when} (bound {bound}, peak {peak})"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
        now = memory_of(pid, "VmRSS");
    }
}

#[test]
fn memory_of_an_answer_much_larger_than_its_request_goes_back_once_it_is_sent() {
    if !std::path::Path::new("/proc/self/status").exists() {
        return; // memory figures are read from /proc
    }
    let served = ServedBinary::start(&["--enable-https".as_ref(), "false".as_ref()]);
    let pid = served.child.id();
    // Idle after one small request (see the test above).
    let warm_up = TestServer::client()
        .post(format!("http://{}/v1/score", served.address))
        .header("Authorization", format!("Bearer {TOKEN}"))
        .json(&serde_json::json!({"events": [{"src": "a", "query": "b.c"}]}))
        .send()
        .unwrap();
    assert_eq!(warm_up.status(), 200);
    let idle = memory_of(pid, "VmRSS");
    // Empty events: under 1 MiB of request, so only its answer (one error result of about
    // 270 bytes per event) makes it large.
    let events = 300_000;
    let body = format!("{{\"events\":[{}]}}", vec!["{}"; events].join(","));
    assert!(body.len() < dnsexfil::engine::memory::LARGE_REQUEST_BYTES);
    let answer = TestServer::client()
        .post(format!("http://{}/v1/score", served.address))
        .header("Authorization", format!("Bearer {TOKEN}"))
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .unwrap()
        .bytes()
        .unwrap();
    assert!(answer.len() > 50 << 20, "{} bytes", answer.len());
    let answer: serde_json::Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!(answer["errors"], events);
    let grown = grown_at_peak(pid, idle, 50 << 20, "the answer");
    // Once sent, the answer's memory goes back (after the quiet moment, or at once above the
    // budget), with no later request to trigger it.
    wait_for_resident_at_most(pid, idle + grown / 4, "after the answer");
}

/// The Kubernetes manifest's value of `name` in its container `env`, or of a resource
/// `limits` line such as `memory:`.
fn manifest_value(manifest: &str, name: &str) -> String {
    let mut lines = manifest.lines().map(str::trim);
    while let Some(line) = lines.next() {
        if line == format!("- name: {name}") {
            let value = lines.next().unwrap();
            return value
                .strip_prefix("value: ")
                .unwrap()
                .trim_matches('"')
                .to_string();
        }
    }
    panic!("{name} in the manifest")
}

#[test]
fn the_kubernetes_manifests_largest_requests_stay_well_within_its_memory_limit() {
    if !std::path::Path::new("/proc/self/status").exists() {
        return; // memory figures are read from /proc
    }
    let manifest = fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docker/kubernetes/deployment.yaml"),
    )
    .unwrap();
    let limit = manifest
        .lines()
        .map(str::trim)
        .skip_while(|l| *l != "limits:")
        .find_map(|l| l.strip_prefix("memory: "))
        .expect("the memory limit");
    assert_eq!(
        limit, "1Gi",
        "docs/deployment.md sizes the settings for 1Gi"
    );
    let settings: Vec<(&str, String)> = [
        "DNSEXFIL_MAX_ROWS",
        "DNSEXFIL_MAX_BODY_MB",
        "DNSEXFIL_MAX_CONCURRENT_REQUESTS",
    ]
    .into_iter()
    .map(|name| (name, manifest_value(&manifest, name)))
    .collect();
    let mut env: Vec<(&str, &str)> = settings.iter().map(|(n, v)| (*n, v.as_str())).collect();
    // limits.cpu is 2, and the service follows it.
    env.push(("DNSEXFIL_COMPUTE_THREADS", "2"));
    let dir = tempfile::tempdir().unwrap();
    let served = ServedBinary::start_with_env(
        dir.path(),
        &["--enable-https".as_ref(), "false".as_ref()],
        &env,
    );
    let pid = served.child.id();
    // Three requests at once of the most rows the manifest allows, with the built-in model.
    let max_rows: usize = settings[0].1.parse().unwrap();
    let body = serde_json::to_vec(&escu_envelope_for(
        &dnsexfil::data::synth::dsdl_csv(max_rows, 9),
        "dnsexfil_v7",
    ))
    .unwrap();
    let max_body: usize = settings[1].1.parse().unwrap();
    assert!(body.len() < max_body << 20, "{} bytes", body.len());
    let address = served.address.clone();
    let requests: Vec<_> = (0..3)
        .map(|_| {
            let (address, body) = (address.clone(), body.clone());
            std::thread::spawn(move || {
                TestServer::client()
                    .post(format!("http://{address}/apply"))
                    .header("Authorization", TOKEN)
                    .body(body)
                    .send()
                    .unwrap()
                    .json::<serde_json::Value>()
                    .unwrap()
            })
        })
        .collect();
    for r in requests {
        let answer = r.join().unwrap();
        assert_eq!(answer["status"], "success", "{}", answer["message"]);
    }
    // docs/deployment.md: three at once peaked at about 220 MiB. Half the limit leaves the
    // margin the page claims (bodies of waiting requests, a fit, the allocator's slack).
    let peak = memory_of(pid, "VmHWM");
    eprintln!(
        "three {max_rows}-row requests at once: peak {} MiB",
        peak >> 20
    );
    assert!(peak < 512 << 20, "peak resident memory {} MiB", peak >> 20);
    assert!(peak > 64 << 20, "the requests ran: peak {} MiB", peak >> 20);
}
