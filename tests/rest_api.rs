//! The /v1 REST API and the operations endpoints over real sockets: scoring (JSON and NDJSON)
//! against what `/apply` gives, errors and their codes, limits, readiness, metrics, request ids,
//! the committed OpenAPI document, and a graceful stop under load.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use dnsexfil::http::limits::Limits;
use dnsexfil::model::convert::ESCU_MODEL_NAME;
use dnsexfil::store::Registry;
use serde_json::{json, Value};

/// The built-in default model.
const DEFAULT: &str = "dnsexfil_v7";

/// The ESCU model and the built-in default model, side by side.
fn both_models() -> Arc<Registry> {
    let registry = escu_registry();
    registry.insert(dnsexfil::model::default_model().unwrap());
    registry
}

/// A synthetic batch as (src, query, rank) cells: about one row in five is rank 1.
fn synthetic_rows(rows: usize) -> Vec<Vec<String>> {
    parse_csv(&dnsexfil::data::synth::dsdl_csv(rows, 42)).1
}

fn event(row: &[String]) -> Value {
    json!({"src": row[0], "query": row[1], "rank": row[2].parse::<f64>().unwrap()})
}

/// POSTs to /v1/score; returns status and parsed body.
fn score(server: &TestServer, query: &str, content_type: &str, body: Vec<u8>) -> (u16, Value) {
    let resp = TestServer::client()
        .post(format!("{}/v1/score{query}", server.url))
        .header("Authorization", format!("Bearer {TOKEN}"))
        .header("Content-Type", content_type)
        .body(body)
        .send()
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().unwrap())
}

fn score_json(server: &TestServer, body: &Value) -> Value {
    let (status, answer) = score(
        server,
        "",
        "application/json",
        body.to_string().into_bytes(),
    );
    assert_eq!(status, 200, "{answer}");
    answer
}

/// Probability and label columns of an /apply answer (`None` where a row was not scored).
fn apply_predictions(
    server: &TestServer,
    model: &str,
    rows: &[Vec<String>],
) -> Vec<Option<(f64, u8)>> {
    let mut csv = String::from("src,query,rank\n");
    for r in rows {
        csv.push_str(&format!("{},{},{}\n", r[0], r[1], r[2]));
    }
    let mut envelope = escu_envelope(&csv);
    envelope["meta"]["options"]["model_name"] = json!(model);
    let (header, results) = results_of(&server.post_json("/apply", &envelope));
    let p = header.iter().position(|h| h.ends_with("_proba")).unwrap();
    results
        .iter()
        .map(|r| {
            (!r[p].is_empty()).then(|| {
                (
                    r[p].parse().unwrap(),
                    r[p + 1].parse::<f64>().unwrap() as u8,
                )
            })
        })
        .collect()
}

fn error_code(answer: &Value) -> &str {
    answer["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("not a /v1 error: {answer}"))
}

#[test]
fn json_scores_equal_apply_keep_order_and_bad_events_get_their_own_error() {
    let server = TestServer::start_with(ServerOptions {
        registry: Some(both_models()),
        ..Default::default()
    });
    let rows = synthetic_rows(400);
    for model in [ESCU_MODEL_NAME, DEFAULT] {
        let expected = apply_predictions(&server, model, &rows);
        // Bad events between good ones: they must neither move the results nor feed the history.
        let mut events: Vec<Value> = rows.iter().map(|r| event(r)).collect();
        events.insert(3, json!({"src": "10.0.0.1"}));
        events.insert(10, json!({"src": 17, "query": "a.example.com"}));
        events.insert(20, json!("not an event"));
        let mut body = json!({"events": events});
        // The built-in model is the default: name only the other one.
        if model != DEFAULT {
            body["model"] = json!(model);
        }
        let answer = score_json(&server, &body);
        assert_eq!(answer["model"], model);
        let results = answer["results"].as_array().unwrap();
        assert_eq!(results.len(), rows.len() + 3);
        assert_eq!(answer["errors"], 3);
        let mut good = expected.iter();
        let mut scored = 0;
        for (i, r) in results.iter().enumerate() {
            assert_eq!(r["index"], i);
            assert_eq!(r["model"], model);
            assert!(r["reason"].is_null(), "{r}");
            if [3, 10, 20].contains(&i) {
                assert_eq!(r["scored"], false);
                assert!(r["probability"].is_null() && r["label"].is_null());
                assert_eq!(r["error"]["code"], "invalid_event", "{r}");
                continue;
            }
            assert!(r["error"].is_null(), "{r}");
            match good.next().unwrap() {
                Some((p, label)) => {
                    scored += 1;
                    assert_eq!(r["scored"], true);
                    // The same f32 from the same model; compared as f32 because JSON parsing
                    // here may be one f64 ulp off the exact text.
                    let got = r["probability"].as_f64().unwrap();
                    assert_eq!(got as f32, *p as f32, "event {i}: {r}");
                    assert!((got - p).abs() < 1e-12, "event {i}: {got} vs {p}");
                    assert_eq!(r["label"], *label);
                }
                None => {
                    assert_eq!(r["scored"], false, "{r}");
                    assert!(r["probability"].is_null());
                }
            }
        }
        assert!(scored > 20, "the batch has rank-1 events");
        assert_eq!(answer["scored"], scored);
        let missing = &results[3]["error"]["message"];
        assert!(
            missing.as_str().unwrap().contains("`query` is missing"),
            "{missing}"
        );
        let wrong_type = &results[10]["error"]["message"];
        assert!(
            wrong_type
                .as_str()
                .unwrap()
                .contains("`src` must be a string"),
            "{wrong_type}"
        );
    }
}

#[test]
fn ndjson_gives_the_same_scores_as_json_and_a_bad_line_its_own_error() {
    let server = TestServer::start();
    let rows = synthetic_rows(200);
    let events: Vec<Value> = rows.iter().map(|r| event(r)).collect();
    let from_json = score_json(&server, &json!({"events": events}));

    let mut ndjson = String::new();
    for (i, e) in events.iter().enumerate() {
        if i == 5 {
            ndjson.push_str("{not json\n\n");
        }
        ndjson.push_str(&format!("{e}\r\n"));
    }
    let (status, answer) = score(&server, "", "application/x-ndjson", ndjson.into_bytes());
    assert_eq!(status, 200, "{answer}");
    let (a, b) = (
        from_json["results"].as_array().unwrap(),
        answer["results"].as_array().unwrap(),
    );
    assert_eq!(b.len(), a.len() + 1);
    assert_eq!(b[5]["error"]["code"], "invalid_json");
    for (x, y) in a.iter().zip(b.iter().filter(|r| r["error"].is_null())) {
        assert_eq!(
            (&x["query"], &x["probability"], &x["label"]),
            (&y["query"], &y["probability"], &y["label"])
        );
    }
    // The model of an NDJSON body comes from the query string.
    let (status, answer) = score(
        &server,
        "?model=nope",
        "application/x-ndjson",
        b"{}\n".to_vec(),
    );
    assert_eq!((status, error_code(&answer)), (404, "model_not_found"));
}

#[test]
fn models_are_listed_with_schema_threshold_and_hashes() {
    let server = TestServer::start_with(ServerOptions {
        registry: Some(both_models()),
        ..Default::default()
    });
    let resp = TestServer::client()
        .get(format!("{}/v1/models", server.url))
        .header("Authorization", TOKEN)
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let list: Value = resp.json().unwrap();
    let models = list["models"].as_array().unwrap();
    let names: Vec<&str> = models.iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(names, [ESCU_MODEL_NAME, DEFAULT]);
    let escu = &models[0];
    assert_eq!(escu["schema"], "escu-v1");
    assert_eq!(escu["features"], 98);
    assert_eq!(escu["threshold"], 0.5);
    assert_eq!(escu["default"], false);
    assert_eq!(
        escu["file_sha256"],
        dnsexfil::model::sha256_hex(escu_model_bytes())
    );
    assert_eq!(escu["source_sha256"].as_str().unwrap().len(), 64);
    assert_eq!(models[1]["schema"], "dnsexfil-v4");
    assert_eq!(models[1]["default"], true);
    assert!(models[1]["created_by"]
        .as_str()
        .unwrap()
        .starts_with("dnsexfil"));
}

#[test]
fn v1_errors_are_json_with_a_code_and_a_status() {
    let server = TestServer::start_with(ServerOptions {
        max_body_bytes: 4096,
        ..Default::default()
    });
    let client = TestServer::client();
    let url = format!("{}/v1/score", server.url);
    let body = json!({"events": [{"src": "a", "query": "b.c"}]}).to_string();

    for auth in [None, Some("Bearer wrong"), Some("wrong")] {
        let mut req = client
            .post(&url)
            .header("Content-Type", "application/json")
            .body(body.clone());
        if let Some(a) = auth {
            req = req.header("Authorization", a);
        }
        let resp = req.send().unwrap();
        assert_eq!(resp.status(), 401);
        assert_eq!(resp.headers()["www-authenticate"], "Bearer");
        let answer: Value = resp.json().unwrap();
        assert_eq!(error_code(&answer), "unauthorized");
        assert!(answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Authorization: Bearer"));
    }

    let cases: Vec<(&str, &str, Vec<u8>, u16, &str)> = vec![
        (
            "?model=nope",
            "application/json",
            body.clone().into(),
            404,
            "model_not_found",
        ),
        (
            "",
            "application/json",
            vec![b'x'; 5000],
            413,
            "body_too_large",
        ),
        (
            "",
            "text/csv",
            body.clone().into(),
            415,
            "unsupported_media_type",
        ),
        (
            "",
            "application/json",
            b"{\"events\": 3}".to_vec(),
            422,
            "invalid_request",
        ),
        (
            "",
            "application/json",
            b"[]".to_vec(),
            422,
            "invalid_request",
        ),
        (
            "?model=a",
            "application/json",
            br#"{"model": "b", "events": []}"#.to_vec(),
            422,
            "conflicting_model",
        ),
        (
            // The client's text is echoed clipped, as in every other message.
            "?model=a",
            "application/json",
            format!(r#"{{"model": "{}", "events": []}}"#, "m".repeat(2000)).into_bytes(),
            422,
            "conflicting_model",
        ),
        (
            "",
            "application/json",
            b"{\"events\": [".to_vec(),
            400,
            "invalid_json",
        ),
        (
            // A misspelt `model` is refused, not scored with the default model.
            "",
            "application/json",
            br#"{"Model": "dnsexfil_v7", "events": []}"#.to_vec(),
            422,
            "invalid_request",
        ),
    ];
    for (query, content_type, body, status, code) in cases {
        let (got, answer) = score(&server, query, content_type, body);
        assert_eq!(
            (got, error_code(&answer)),
            (status, code),
            "{query} {content_type}: {answer}"
        );
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(!message.is_empty() && message.len() < 1000, "{message}");
    }

    // Unknown /v1 paths and methods answer in the /v1 format; DSDL's stay as they were.
    for path in ["/v1/nothing", "/v1"] {
        let resp = client.get(format!("{}{path}", server.url)).send().unwrap();
        assert_eq!(resp.status(), 404, "{path}");
        assert_eq!(error_code(&resp.json().unwrap()), "not_found", "{path}");
    }
    let resp = client
        .get(&url)
        .header("Authorization", TOKEN)
        .send()
        .unwrap();
    assert_eq!(resp.status(), 405);
    assert_eq!(error_code(&resp.json().unwrap()), "method_not_allowed");
    let resp = client
        .get(format!("{}/nothing", server.url))
        .send()
        .unwrap();
    assert_eq!(resp.text().unwrap(), r#"{"detail":"Not Found"}"#);
    let (status, text) = server.post_raw("/apply", vec![b'x'; 5000]);
    assert_eq!(
        status, 200,
        "an oversized DSDL body keeps DSDL's convention"
    );
    assert!(text.contains("\"status\":\"error\""), "{text}");
}

/// Sends a request whose body stops after `sent` bytes of `body`: the server holds it in flight
/// until the rest comes or the connection closes.
fn start_request(
    base_url: &str,
    path: &str,
    content_type: &str,
    body: &[u8],
    sent: usize,
) -> TcpStream {
    let addr = base_url.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {TOKEN}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(&body[..sent]).unwrap();
    stream
}

/// Reads a whole HTTP/1.1 response (the server closes the connection after it): status, body.
fn read_response(mut stream: TcpStream) -> (u16, String) {
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .expect("a complete response head");
    let status = head[9..12].parse().unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(|v| v.parse().unwrap())
        })
        .expect("a Content-Length");
    assert_eq!(body.len(), length, "the whole body arrived: {head}");
    (status, body.to_string())
}

/// The value of a metric line `name value` in the /metrics text.
fn metric(base_url: &str, name: &str) -> f64 {
    let text = reqwest::blocking::get(format!("{base_url}/metrics"))
        .unwrap()
        .text()
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("{name} in {text}"))
        .parse()
        .unwrap()
}

#[test]
fn a_saturated_service_answers_429_in_each_format_and_recovers() {
    let server = TestServer::start_with(ServerOptions {
        limits: Limits {
            max_concurrent_requests: 2,
            ..Default::default()
        },
        ..Default::default()
    });
    let body = json!({"events": [{"src": "a", "query": "b.c"}]})
        .to_string()
        .into_bytes();
    let blocked: Vec<TcpStream> = (0..2)
        .map(|_| start_request(&server.url, "/v1/score", "application/json", &body, 5))
        .collect();
    wait_until(PATIENCE, "two requests in flight", || {
        metric(&server.url, "dnsexfil_requests_in_flight") == 2.0
    });

    let (status, answer) = score(&server, "", "application/json", body.clone());
    assert_eq!((status, error_code(&answer)), (429, "too_many_requests"));
    let (status, text) = server.post_raw(
        "/apply",
        serde_json::to_vec(&escu_envelope("src,query\na,b\n")).unwrap(),
    );
    let dsdl: Value = serde_json::from_str(&text).unwrap();
    assert_eq!((status, &dsdl["status"]), (429, &json!("error")), "{text}");
    assert!(
        dsdl["message"]
            .as_str()
            .unwrap()
            .starts_with("/apply: ERROR: 2 requests are already in flight"),
        "{text}"
    );
    // Probes are exempt.
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(
            reqwest::blocking::get(format!("{}{path}", server.url))
                .unwrap()
                .status(),
            200,
            "{path}"
        );
    }

    drop(blocked);
    wait_until(PATIENCE, "the slots to free", || {
        metric(&server.url, "dnsexfil_requests_in_flight") == 0.0
    });
    let (status, answer) = score(&server, "", "application/json", body);
    assert_eq!(status, 200, "{answer}");
}

#[test]
fn an_answer_the_client_does_not_read_stays_in_flight_until_it_is_sent() {
    let server = TestServer::start_with(ServerOptions {
        limits: Limits {
            max_concurrent_requests: 1,
            ..Default::default()
        },
        ..Default::default()
    });
    // 200,000 events that are all errors: a 600 kB request with a 54 MB answer, far more than
    // the two sockets' buffers hold, so most of it waits for the client.
    let events = vec!["{}"; 200_000].join(",");
    let body = format!(r#"{{"events": [{events}]}}"#).into_bytes();
    let mut stalled = start_request(
        &server.url,
        "/v1/score",
        "application/json",
        &body,
        body.len(),
    );
    // The answer has been made once its first bytes arrive; then the client stops reading.
    let mut head = [0u8; 12];
    stalled.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(metric(&server.url, "dnsexfil_requests_in_flight"), 1.0);
    let small = json!({"events": [{"src": "a", "query": "b.c"}]})
        .to_string()
        .into_bytes();
    let (status, answer) = score(&server, "", "application/json", small.clone());
    assert_eq!((status, error_code(&answer)), (429, "too_many_requests"));
    // Read to the end: the answer is whole, and the slot is free again.
    let mut raw = head.to_vec();
    stalled.read_to_end(&mut raw).unwrap();
    let at = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let answer: Value = serde_json::from_slice(&raw[at + 4..]).unwrap();
    assert_eq!(answer["errors"], 200_000);
    wait_until(PATIENCE, "the slot to free", || {
        metric(&server.url, "dnsexfil_requests_in_flight") == 0.0
    });
    let (status, answer) = score(&server, "", "application/json", small);
    assert_eq!(status, 200, "{answer}");
}

#[test]
fn slow_requests_time_out_with_503_except_fit() {
    let server = TestServer::start_with(ServerOptions {
        limits: Limits {
            request_timeout: Duration::from_millis(700),
            ..Default::default()
        },
        ..Default::default()
    });
    let body = json!({"events": [{"src": "a", "query": "b.c"}]})
        .to_string()
        .into_bytes();
    let (status, text) = read_response(start_request(
        &server.url,
        "/v1/score",
        "application/json",
        &body,
        3,
    ));
    let answer: Value = serde_json::from_str(&text).unwrap();
    assert_eq!((status, error_code(&answer)), (503, "timeout"));

    let envelope = serde_json::to_vec(&escu_envelope("src,query,rank\na,b.c,1\n")).unwrap();
    let (status, text) = read_response(start_request(
        &server.url,
        "/apply",
        "application/json",
        &envelope,
        3,
    ));
    let dsdl: Value = serde_json::from_str(&text).unwrap();
    assert_eq!((status, &dsdl["status"]), (503, &json!("error")), "{text}");
    assert!(dsdl["message"]
        .as_str()
        .unwrap()
        .starts_with("/apply: ERROR: the request took longer"));

    // /fit's training is exempt, not its upload: a body still arriving after the limit is
    // answered 503 (issue 19: trickled fit bodies held every slot).
    // The rest of the body is never sent: the answer comes from the time limit alone, however
    // late the server's timer fires on a loaded machine.
    let fit = start_request(&server.url, "/fit", "application/json", &envelope, 3);
    let (status, text) = read_response(fit);
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("did not arrive within"), "{text}");
}

#[test]
fn readiness_needs_a_model_and_health_does_not() {
    let empty = TestServer::start_with(ServerOptions {
        registry: Some(Arc::new(Registry::new())),
        ..Default::default()
    });
    let resp = reqwest::blocking::get(format!("{}/readyz", empty.url)).unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(
        resp.json::<Value>().unwrap(),
        json!({"status": "not_ready", "models": [], "model_store": {"status": "writable"}})
    );
    assert_eq!(
        reqwest::blocking::get(format!("{}/healthz", empty.url))
            .unwrap()
            .status(),
        200
    );
    let (status, answer) = score(
        &empty,
        "",
        "application/json",
        br#"{"events": []}"#.to_vec(),
    );
    assert_eq!((status, error_code(&answer)), (503, "no_model_loaded"));

    let server = TestServer::start();
    let resp = reqwest::blocking::get(format!("{}/readyz", server.url)).unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.json::<Value>().unwrap(),
        json!({"status": "ready", "models": [ESCU_MODEL_NAME], "model_store": {"status": "writable"}})
    );
}

#[test]
fn metrics_count_requests_by_route_template_and_scoring_by_api() {
    // A process of its own: the counters are process-wide, and the in-process test servers of
    // this file run in parallel, so only a fresh process gives exact counts.
    let served = ServedBinary::start(&[
        "--enable-https".as_ref(),
        "false".as_ref(),
        "--model".as_ref(),
        artifact().as_os_str(),
    ]);
    let base = format!("http://{}", served.address);
    let client = TestServer::client();
    // Two /v1/score requests, each with one event to score and one history event.
    let body =
        json!({"events": [{"src": "a", "query": "b.c"}, {"src": "a", "query": "d.c", "rank": 2}]});
    for query in ["", "&x=1"] {
        let resp = client
            .post(format!("{base}/v1/score?model={ESCU_MODEL_NAME}{query}"))
            .header("Authorization", format!("Bearer {TOKEN}"))
            .json(&body)
            .send()
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.json::<Value>().unwrap()["scored"], 1);
    }
    // One /apply with three rank-1 rows and one history row.
    let resp = client
        .post(format!("{base}/apply"))
        .header("Authorization", TOKEN)
        .json(&escu_envelope(
            "src,query,rank\na,b.c,1\na,e.c,1\nb,f.c,2\nb,g.c,1\n",
        ))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.json::<Value>().unwrap()["status"], "success");
    for n in [42, 43, 44] {
        let resp = client
            .get(format!("{base}/no/such/path/{n}"))
            .send()
            .unwrap();
        assert_eq!(resp.status(), 404);
    }
    // A first scrape, counted in the second.
    assert_eq!(
        client
            .get(format!("{base}/metrics"))
            .send()
            .unwrap()
            .status(),
        200
    );

    let resp = client.get(format!("{base}/metrics")).send().unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = resp.text().unwrap();
    let value = |series: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("{series} in\n{text}"))
            .parse()
            .unwrap()
    };
    let requests = |route: &str, method: &str, status: u16| {
        value(&format!(
            r#"dnsexfil_http_requests_total{{route="{route}",method="{method}",status="{status}"}}"#
        ))
    };
    // The route is the template: the query string or path never makes a new series.
    assert_eq!(requests("/v1/score", "POST", 200), 2.0);
    assert_eq!(requests("/apply", "POST", 200), 1.0);
    assert_eq!(requests("unmatched", "GET", 404), 3.0);
    assert_eq!(requests("/metrics", "GET", 200), 1.0);
    assert!(!text.contains("/no/such/path"));
    let v1_score = r#"route="/v1/score",method="POST",status="200""#;
    assert_eq!(
        value(&format!(
            "dnsexfil_http_request_duration_seconds_count{{{v1_score}}}"
        )),
        2.0
    );
    assert_eq!(
        value(&format!(
            r#"dnsexfil_http_request_duration_seconds_bucket{{{v1_score},le="+Inf"}}"#
        )),
        2.0
    );
    // Per API: rows scored (rank-1 rows only), and one feature and inference pass per request.
    for (api, rows, passes) in [("v1", 2.0, 2.0), ("dsdl", 3.0, 1.0)] {
        let labels = format!(r#"{{api="{api}",model="{ESCU_MODEL_NAME}"}}"#);
        assert_eq!(
            value(&format!("dnsexfil_rows_scored_total{labels}")),
            rows,
            "{api}"
        );
        assert_eq!(
            value(&format!("dnsexfil_feature_seconds_count{labels}")),
            passes,
            "{api}"
        );
        assert_eq!(
            value(&format!("dnsexfil_inference_seconds_count{labels}")),
            passes,
            "{api}"
        );
        assert!(
            value(&format!("dnsexfil_inference_seconds_sum{labels}")) > 0.0,
            "{api}"
        );
    }
    let sha = dnsexfil::model::sha256_hex(escu_model_bytes());
    assert_eq!(
        value(&format!(
            r#"dnsexfil_model_info{{name="{ESCU_MODEL_NAME}",schema="escu-v1",sha256="{sha}"}}"#
        )),
        1.0
    );
}

#[test]
fn request_ids_are_echoed_or_generated() {
    let server = TestServer::start();
    let client = TestServer::client();
    let id_of = |path: &str, given: Option<&str>| -> String {
        let mut req = client.get(format!("{}{path}", server.url));
        if let Some(g) = given {
            req = req.header("x-request-id", g);
        }
        let resp = req.send().unwrap();
        resp.headers()["x-request-id"].to_str().unwrap().to_string()
    };
    assert_eq!(id_of("/v1/models", Some("client-42")), "client-42");
    assert_eq!(id_of("/summary", Some("client-43")), "client-43");
    let (a, b) = (id_of("/healthz", None), id_of("/healthz", None));
    assert_ne!(a, b);
    assert!(
        a.len() == 32 && a.bytes().all(|c| c.is_ascii_hexdigit()),
        "{a}"
    );
    let replaced = id_of("/healthz", Some(&"x".repeat(200)));
    assert_eq!(replaced.len(), 32, "an over-long id is replaced");
}

#[test]
fn the_committed_openapi_document_is_current_and_served() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi/openapi.json");
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    let generated = dnsexfil::http::openapi::document_json();
    assert!(
        committed == generated,
        "openapi/openapi.json is stale: regenerate it with `cargo run -- openapi > openapi/openapi.json` and commit it"
    );
    let server = TestServer::start();
    let resp = reqwest::blocking::get(format!("{}/openapi.json", server.url)).unwrap();
    assert_eq!(resp.status(), 200, "served without a token");
    assert_eq!(resp.text().unwrap(), generated);
    let doc: Value = serde_json::from_str(&generated).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for p in ["/v1/score", "/v1/models", "/readyz", "/metrics", "/apply"] {
        assert!(doc["paths"][p].is_object(), "{p} is documented");
    }
    assert_eq!(
        doc["components"]["securitySchemes"]["api_token"]["scheme"],
        "bearer"
    );
}

#[test]
fn sigterm_lets_accepted_requests_finish_then_the_process_exits_0() {
    let served = ServedBinary::start(&[
        "--enable-https".as_ref(),
        "false".as_ref(),
        "--max-concurrent-requests".as_ref(),
        "64".as_ref(),
        "--request-timeout-secs".as_ref(),
        "30".as_ref(),
    ]);
    let base = format!("http://{}", served.address);
    assert_eq!(
        metric(&base, "dnsexfil_max_concurrent_requests"),
        64.0,
        "the flag is applied"
    );
    let logs = served.logs.clone();

    // The request id is in the span of every log line of a request; the token never is (checked
    // on every line by ServedBinary).
    let resp = TestServer::client()
        .get(format!("{base}/v1/models"))
        .header("x-request-id", "trace-me-42")
        .header("Authorization", "Bearer wrong")
        .send()
        .unwrap();
    assert_eq!(resp.status(), 401);
    wait_until(PATIENCE, "the refusal to be logged", || {
        logs.lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("request refused") && l.contains(r#""request_id":"trace-me-42""#))
    });

    // Requests the server has accepted, their bodies still arriving when SIGTERM comes.
    let events: Vec<Value> = synthetic_rows(2000).iter().map(|r| event(r)).collect();
    let body = json!({"events": events}).to_string().into_bytes();
    let pending: Vec<TcpStream> = (0..4)
        .map(|_| start_request(&base, "/v1/score", "application/json", &body, 100))
        .collect();
    wait_until(PATIENCE, "four requests in flight", || {
        metric(&base, "dnsexfil_requests_in_flight") >= 4.0
    });

    // A stream of new requests from other clients around the signal.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let answered_so_far = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let streams: Vec<_> = (0..3)
        .map(|_| {
            let (base, stop) = (base.clone(), stop.clone());
            let answered_so_far = answered_so_far.clone();
            std::thread::spawn(move || {
                let client = reqwest::blocking::Client::builder()
                    .pool_max_idle_per_host(0)
                    .build()
                    .unwrap();
                let (mut answered, mut refused) = (0, 0);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let sent = client
                        .post(format!("{base}/v1/score"))
                        .header("Authorization", TOKEN)
                        .header("Content-Type", "application/json")
                        .body(r#"{"events": [{"src": "a", "query": "b.c"}]}"#)
                        .send();
                    match sent {
                        // Answered: the answer is complete and right.
                        Ok(resp) => {
                            assert_eq!(resp.status(), 200);
                            let answer: Value = resp.json().expect("a complete answer");
                            assert_eq!(answer["scored"], 1);
                            answered += 1;
                            answered_so_far.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        }
                        // Not accepted: the listener is closed.
                        Err(_) => {
                            refused += 1;
                            std::thread::sleep(Duration::from_millis(10));
                        }
                    }
                }
                (answered, refused)
            })
        })
        .collect();
    // The stream is being served before the signal, however slowly this machine runs.
    wait_until(PATIENCE, "three answers to the stream", || {
        answered_so_far.load(std::sync::atomic::Ordering::SeqCst) >= 3
    });

    let mut served = served;
    served.signal_term();
    // The bodies resume only once the server has begun to stop.
    served.wait_for_log("shutting down");
    let finishers: Vec<_> = pending
        .into_iter()
        .map(|mut stream| {
            let rest = body[100..].to_vec();
            std::thread::spawn(move || {
                stream.write_all(&rest).unwrap();
                read_response(stream)
            })
        })
        .collect();
    for f in finishers {
        let (status, text) = f.join().unwrap();
        assert_eq!(status, 200, "{text}");
        let answer: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(answer["results"].as_array().unwrap().len(), 2000);
    }
    let exit = served.wait();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut answered = 0;
    for s in streams {
        answered += s.join().unwrap().0;
    }
    assert!(answered > 0, "the stream was served before the signal");
    assert!(exit.success(), "{exit:?}");
    assert!(logs.lock().unwrap().iter().any(|l| l.contains("stopped")));
}

/// Reads until the server closes `stream`; how long that took (`None`: still open after `wait`).
fn closed_within(stream: &mut TcpStream, wait: Duration) -> Option<Duration> {
    let start = Instant::now();
    stream.set_read_timeout(Some(wait)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Some(start.elapsed()),
            Ok(_) => continue, // an answer (e.g. 408) before the close
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Some(start.elapsed())
            }
            Err(_) => return None,
        }
    }
}

#[test]
fn connections_beyond_the_limit_are_closed_and_the_slots_come_back() {
    let served = ServedBinary::start(&[
        "--enable-https".as_ref(),
        "false".as_ref(),
        "--max-connections".as_ref(),
        "2".as_ref(),
        // No idle connection of this test is closed for its silence while it runs.
        "--header-read-timeout-secs".as_ref(),
        "3600".as_ref(),
    ]);
    let healthy = || {
        reqwest::blocking::Client::builder()
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap()
            .get(format!("http://{}/healthz", served.address))
            .send()
            .is_ok_and(|r| r.status() == 200)
    };
    assert!(healthy());
    // Two clients that connect and send nothing take both slots: they are not idle keep-alive
    // connections (those give their slot to a newcomer, `tests/hardening.rs`), and the header
    // timeout is an hour. The health check's connection holds a slot until the server has seen
    // it close, so a client may be turned away at first: it is replaced until both are held,
    // which a failing health check then shows.
    let mut idle: Vec<TcpStream> = Vec::new();
    wait_until(
        PATIENCE,
        "two silent connections holding both slots",
        || {
            idle.retain_mut(|s| closed_within(s, Duration::from_millis(100)).is_none());
            while idle.len() < 2 {
                idle.push(TcpStream::connect(&served.address).unwrap());
            }
            idle.retain_mut(|s| closed_within(s, Duration::from_millis(100)).is_none());
            idle.len() == 2 && !healthy()
        },
    );
    let mut third = TcpStream::connect(&served.address).unwrap();
    assert!(
        closed_within(&mut third, PATIENCE).is_some(),
        "a connection over the limit is closed"
    );
    assert!(!healthy(), "no request gets in while the slots are taken");
    // A slot comes back when its connection closes.
    idle.pop();
    wait_until(PATIENCE, "the slot to come back", healthy);
    assert!(
        closed_within(&mut idle[0], Duration::from_millis(200)).is_none(),
        "connections within the limit stay open"
    );
}

#[test]
fn a_client_slow_to_send_its_headers_is_disconnected() {
    let served = ServedBinary::start(&[
        "--enable-https".as_ref(),
        "false".as_ref(),
        "--header-read-timeout-secs".as_ref(),
        "1".as_ref(),
    ]);
    // Nothing at all, or the start of HTTP/2's preface (before the HTTP/1 header timeout can
    // apply, the connection could still become HTTP/2).
    // Times run from before the connection exists, so the server's 1 s cannot have started
    // earlier, however long this thread waits for a core.
    for first_bytes in [&b""[..], b"P", b"PRI * HTTP/2"] {
        let started = Instant::now();
        let mut silent = TcpStream::connect(&served.address).unwrap();
        silent.write_all(first_bytes).unwrap();
        closed_within(&mut silent, PATIENCE)
            .unwrap_or_else(|| panic!("{first_bytes:?}: never disconnected"));
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(950),
            "{first_bytes:?}: {took:?}"
        );
    }
    // Headers started and never finished.
    let started = Instant::now();
    let mut slow = TcpStream::connect(&served.address).unwrap();
    slow.write_all(b"POST /v1/score HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    closed_within(&mut slow, PATIENCE).expect("disconnected");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(950), "{took:?}");
    // A keep-alive connection left idle after its request: closed after as long.
    let mut kept = TcpStream::connect(&served.address).unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut answer = [0u8; 12];
    kept.read_exact(&mut answer).unwrap();
    assert_eq!(&answer, b"HTTP/1.1 200");
    assert!(closed_within(&mut kept, PATIENCE).is_some());
}

#[test]
fn http2_is_refused_at_once() {
    // The service speaks HTTP/1.1. With an hour's header timeout, a close within a minute can
    // only be the refusal, however loaded the machine is.
    let served = ServedBinary::start(&[
        "--enable-https".as_ref(),
        "false".as_ref(),
        "--header-read-timeout-secs".as_ref(),
        "3600".as_ref(),
    ]);
    let mut h2 = TcpStream::connect(&served.address).unwrap();
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
    assert!(
        closed_within(&mut h2, PATIENCE).is_some(),
        "the HTTP/2 preface is refused"
    );
    // The same connection start short of the whole preface is not refused: it could still be
    // HTTP/1 or HTTP/2 until more bytes come.
    let mut undecided = TcpStream::connect(&served.address).unwrap();
    undecided.write_all(b"PRI * HTTP/2").unwrap();
    assert!(closed_within(&mut undecided, Duration::from_millis(500)).is_none());
}

#[test]
fn a_request_above_the_forward_chunk_size_scores_as_one_unchunked_pass() {
    let server = TestServer::start_with(ServerOptions {
        registry: Some(both_models()),
        ..Default::default()
    });
    // Every event scored (no rank): more than two forward chunks' worth, in uneven parts.
    let chunk = dnsexfil::engine::scoring::FORWARD_CHUNK_ROWS;
    let rows: Vec<Vec<String>> = synthetic_rows(2 * chunk + 5000);
    let events: Vec<Value> = rows
        .iter()
        .map(|r| json!({"src": r[0], "query": r[1]}))
        .collect();
    assert!(events.len() > 2 * chunk);
    for model in [dnsexfil::model::default_model().unwrap(), {
        dnsexfil::model::Model::from_bytes(escu_model_bytes(), "escu").unwrap()
    }] {
        let name = model.info.name.clone();
        let answer = score_json(&server, &json!({"model": name, "events": events}));
        assert_eq!(answer["scored"], events.len(), "{name}");
        // The model's own forward pass over every row at once, no chunks: what the service must
        // give, chunked or not.
        let feature_rows: Vec<dnsexfil::features::Row> = rows
            .iter()
            .map(|r| dnsexfil::features::Row {
                src: &r[0],
                query: &r[1],
            })
            .collect();
        let all: Vec<usize> = (0..feature_rows.len()).collect();
        let features = model
            .info
            .schema
            .prepare(&feature_rows)
            .features(&feature_rows, &all);
        let expected = model
            .mlp
            .predict_owned(features.values, features.rows)
            .unwrap();
        let results = answer["results"].as_array().unwrap();
        assert_eq!(results.len(), expected.len());
        for (i, (r, p)) in results.iter().zip(&expected).enumerate() {
            let got = r["probability"].as_f64().unwrap() as f32;
            assert!(
                (got - p).abs() <= 1e-6,
                "{name} event {i}: {got} served, {p} in one pass"
            );
        }
        // Scores that vary row by row, so no constant or shifted answer could pass.
        let mut distinct: Vec<u32> = expected.iter().map(|p| p.to_bits()).collect();
        distinct.sort_unstable();
        distinct.dedup();
        assert!(
            distinct.len() > 1000,
            "{name}: {} distinct scores",
            distinct.len()
        );
    }
}

/// The text of `doc` between the first `start` after `after` and the next `end`.
fn between<'d>(doc: &'d str, after: &str, start: &str, end: &str) -> &'d str {
    let rest = &doc[doc
        .find(after)
        .unwrap_or_else(|| panic!("{after:?} in the page"))..];
    let rest = &rest[rest.find(start).unwrap() + start.len()..];
    &rest[..rest.find(end).unwrap()]
}

#[test]
fn the_rest_and_operations_pages_examples_give_the_answers_they_show() {
    let read = |page: &str| {
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(page))
            .unwrap()
    };
    let (doc, operations) = (read("docs/rest-api.md"), read("docs/operations.md"));
    // `serve` as the pages start it (the built-in default model), in a process of its own:
    // operations.md's metrics example counts from a fresh start.
    let served = ServedBinary::start(&["--enable-https".as_ref(), "false".as_ref()]);
    let base = format!("http://{}", served.address);
    let client = TestServer::client();
    let post = |query: &str, content_type: &str, body: Vec<u8>| -> (u16, Value) {
        let resp = client
            .post(format!("{base}/v1/score{query}"))
            .header("Authorization", format!("Bearer {TOKEN}"))
            .header("Content-Type", content_type)
            .body(body)
            .send()
            .unwrap();
        (resp.status().as_u16(), resp.json().unwrap())
    };
    // The page's answers are JSON, compared whole.
    let shown = |after: &str| -> Value {
        serde_json::from_str(between(&doc, after, "```json\n", "```")).unwrap()
    };

    // The first example: the request from its curl command, the answer as the page prints it.
    let request = between(&doc, "Score events", "-d '", "'");
    let (status, answer) = post("", "application/json", request.as_bytes().to_vec());
    assert_eq!((status, answer), (200, shown("Score events")));

    // The NDJSON example: 20 tunnel names made by its shell loop (the first 40 hex digits of
    // the SHA-256 of `echo $i`), then www.google.com.
    use sha2::Digest;
    let mut ndjson = String::new();
    for i in 1..=20 {
        let hash = hex::encode(sha2::Sha256::digest(format!("{i}\n")));
        ndjson.push_str(&format!(
            "{{\"src\": \"10.0.0.66\", \"query\": \"{}.t.exfil-example.net\"}}\n",
            &hash[..40]
        ));
    }
    ndjson.push_str("{\"src\": \"10.0.0.5\", \"query\": \"www.google.com\"}\n");
    let (status, answer) = post(
        "?model=dnsexfil_v7",
        "application/x-ndjson",
        ndjson.into_bytes(),
    );
    assert_eq!(status, 200, "{answer}");
    let counts = between(&doc, "--data-binary @events.ndjson", "gives `", "`");
    assert_eq!(
        counts,
        format!(
            r#""events":{},"scored":{},"errors":{}"#,
            answer["events"], answer["scored"], answer["errors"]
        )
    );
    let results = answer["results"].as_array().unwrap();
    let tunnel: Vec<f64> = results[..20]
        .iter()
        .map(|r| {
            assert_eq!(r["label"], 1, "{r}");
            r["probability"].as_f64().unwrap()
        })
        .collect();
    let (low, high) = tunnel
        .iter()
        .fold((f64::MAX, f64::MIN), |(l, h), &p| (l.min(p), h.max(p)));
    let range = between(&doc, "--data-binary @events.ndjson", "probabilities ", "\n");
    assert_eq!(range, format!("{low:.4} to {high:.4}"));
    // The first result as printed, up to its `...`.
    let first = between(
        &doc,
        "--data-binary @events.ndjson",
        "(the first is `",
        ",...}`",
    );
    let first: serde_json::Map<String, Value> =
        serde_json::from_str(&format!("{first}}}")).unwrap();
    for (key, value) in first {
        assert_eq!(results[0][&key], value, "{key}");
    }
    let google = &results[20];
    assert_eq!(google["label"], 0);
    let printed = between(
        &doc,
        "--data-binary @events.ndjson",
        "`www.google.com` ",
        " with label 0",
    );
    assert_eq!(
        printed,
        format!("{:.3}", google["probability"].as_f64().unwrap())
    );

    // The model list.
    let models: Value = client
        .get(format!("{base}/v1/models"))
        .header("Authorization", format!("Bearer {TOKEN}"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(models, shown("List the models"));

    // The error example.
    let request = between(&doc, "Errors are JSON", "-d '", "'");
    let (status, answer) = post(
        "?model=escu",
        "application/json",
        request.as_bytes().to_vec(),
    );
    assert_eq!((status, answer), (404, shown("Errors are JSON")));

    // operations.md: /readyz, then the request counters, rows and model of /metrics.
    let block = between(
        &operations,
        "after the examples above on a fresh service",
        "```\n",
        "```",
    );
    let (ready, metrics) = block.split_once('\n').unwrap();
    let got = client
        .get(format!("{base}/readyz"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert_eq!(got, ready);
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| {
            ["http_requests_total", "rows_scored_total", "model_info"]
                .iter()
                .any(|m| l.starts_with(&format!("dnsexfil_{m}")))
        })
        .collect();
    assert_eq!(lines, metrics.lines().collect::<Vec<_>>());
}
