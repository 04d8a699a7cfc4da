//! The whole router exercised in process, without a socket (`tower::ServiceExt::oneshot`):
//! routing, authentication, both APIs' answer and error shapes. Fast and free of ports; what
//! needs a real connection (TLS, signals, connection and body limits on the wire, slow clients)
//! stays in the socket tests.

mod common;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;

use common::{app_state, escu_envelope, results_of, ServerOptions, TOKEN};

const ROWS: &str = "src,query,rank\n10.0.0.1,www.example.com,1\n10.0.0.1,mail.example.com,1\n10.0.0.9,3a7f9c2e1b0d4c8a9e6f.tunnel.example.net,1\n";

/// Sends one request to a fresh app and returns its status, headers and body.
async fn send(request: Request<Body>) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let app = dnsexfil::http::app(app_state(dir.path(), ServerOptions::default()));
    let response = app.oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes().to_vec();
    (parts.status, parts.headers, bytes)
}

fn authorised(method: Method, path: &str, body: impl Into<Body>) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(path)
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(body.into())
        .unwrap()
}

fn json(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(bytes)))
}

#[tokio::test]
async fn apply_scores_every_rank_1_row_in_the_stock_shape() {
    let body = serde_json::to_vec(&escu_envelope(ROWS)).unwrap();
    let (status, headers, bytes) = send(authorised(Method::POST, "/apply", body)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CONTENT_TYPE], "application/json");
    let answer = json(&bytes);
    assert_eq!(answer["status"], "success", "{answer}");
    let (header, rows) = results_of(&answer);
    assert_eq!(&header[..3], ["src", "query", "rank"]);
    assert_eq!(rows.len(), 3);
    // Every row answered with a probability in [0, 1], in the order sent.
    let proba = header.iter().position(|h| h.starts_with("pred_")).unwrap();
    for (row, sent) in rows.iter().zip(ROWS.lines().skip(1)) {
        assert!(
            sent.ends_with(&format!("{},1", row[1])),
            "{row:?} vs {sent}"
        );
        let p: f64 = row[proba].parse().unwrap();
        assert!((0.0..=1.0).contains(&p), "{row:?}");
    }
}

#[tokio::test]
async fn dsdl_routes_want_the_token_and_say_so_in_the_stock_words() {
    let request = Request::post("/apply").body(Body::from("{}")).unwrap();
    let (status, headers, bytes) = send(request).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(headers[header::WWW_AUTHENTICATE], "Bearer");
    assert_eq!(json(&bytes)["detail"], "No header with token");
}

#[tokio::test]
async fn summary_is_a_json_string_holding_the_loaded_models() {
    let (status, _, bytes) = send(authorised(Method::GET, "/summary", Body::empty())).await;
    assert_eq!(status, StatusCode::OK);
    let outer = json(&bytes);
    let inner = json(
        outer
            .as_str()
            .expect("the summary is a JSON string")
            .as_bytes(),
    );
    assert_eq!(
        inner["version"],
        dnsexfil::http::dsdl::summary::STOCK_CONTAINER_VERSION
    );
    assert_eq!(
        inner["model"],
        dnsexfil::model::convert::ESCU_MODEL_NAME,
        "{inner}"
    );
}

#[tokio::test]
async fn v1_scores_ndjson_and_answers_unknown_routes_with_its_json_error() {
    let events = "{\"src\":\"10.0.0.1\",\"query\":\"www.example.com\"}\n{\"src\":\"10.0.0.9\",\"query\":\"3a7f9c2e1b0d4c8a9e6f.tunnel.example.net\"}\n";
    let mut request = authorised(Method::POST, "/v1/score", events);
    request.headers_mut().insert(
        header::CONTENT_TYPE,
        "application/x-ndjson".parse().unwrap(),
    );
    let (status, _, bytes) = send(request).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&bytes)
    );
    let answer = json(&bytes);
    assert_eq!(
        (&answer["events"], &answer["scored"]),
        (&2.into(), &2.into())
    );
    let results = answer["results"].as_array().unwrap();
    for (index, result) in results.iter().enumerate() {
        assert_eq!(result["index"], index, "{result}");
        let p = result["probability"].as_f64().expect("a probability");
        assert!((0.0..=1.0).contains(&p), "{result}");
    }

    let (status, _, bytes) = send(authorised(Method::GET, "/v1/nope", Body::empty())).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(json(&bytes)["error"]["code"], "not_found");

    let (status, _, bytes) = send(authorised(Method::GET, "/v1/score", Body::empty())).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(json(&bytes)["error"]["code"], "method_not_allowed");
}

#[tokio::test]
async fn a_request_over_the_in_flight_limit_is_refused_in_its_apis_shape() {
    let dir = tempfile::tempdir().unwrap();
    let options = ServerOptions {
        limits: dnsexfil::http::limits::Limits {
            max_concurrent_requests: 1,
            ..Default::default()
        },
        ..Default::default()
    };
    let app = dnsexfil::http::app(app_state(dir.path(), options));
    let body = serde_json::to_vec(&escu_envelope(ROWS)).unwrap();
    let apply = || authorised(Method::POST, "/apply", body.clone());
    // An answer made but not yet read is still in flight: it holds the one slot.
    let unread = app.clone().oneshot(apply()).await.unwrap();
    assert_eq!(unread.status(), StatusCode::OK);
    let response = app.clone().oneshot(apply()).await.unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.headers()[header::RETRY_AFTER], "1");
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let answer = json(&bytes);
    assert_eq!(answer["status"], "error");
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .starts_with("/apply: ERROR: 1 requests are already in flight"),
        "{answer}"
    );

    let response = app
        .clone()
        .oneshot(authorised(Method::POST, "/v1/score", "{}"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(json(&bytes)["error"]["code"], "too_many_requests");

    // Once the first answer is gone, the slot is free again.
    drop(unread);
    let response = app.oneshot(apply()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}
