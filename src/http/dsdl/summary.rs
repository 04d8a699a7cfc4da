//! `GET /summary` and `GET /` (what the service runs), and the deprecated `/compute`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::http::state::AppState;

/// The stock container's `/summary` version, the protocol version this service speaks.
pub const STOCK_CONTAINER_VERSION: &str = "5.2.4";

/// `GET /summary` and `GET /`: a JSON object encoded twice, as the stock container answers.
pub async fn summary(State(state): State<AppState>) -> Response {
    let models: Vec<serde_json::Value> = state
        .registry
        .all()
        .iter()
        .map(|m| {
            serde_json::json!({
                "name": m.info.name,
                "schema": m.info.schema.name(),
                "target": m.info.target,
                "threshold": m.info.threshold,
                "source_file": m.info.source_file,
                "source_sha256": m.info.source_sha256,
                "file_sha256": m.file_sha256,
            })
        })
        .collect();
    let names: Vec<&str> = models.iter().filter_map(|m| m["name"].as_str()).collect();
    let inner = serde_json::json!({
        // The stock container's keys and values first: DSDL tools may read them. Ours beside.
        "app": "Splunk App for Data Science and Deep Learning",
        "version": STOCK_CONTAINER_VERSION,
        "service": "dnsexfil",
        "service_version": env!("CARGO_PKG_VERSION"),
        "protocol": "Splunk App for Data Science and Deep Learning container API 5.2",
        "model": names.join(","),
        "models": models,
        "token": "valid",
    });
    let once = inner.to_string();
    Json(serde_json::Value::String(once)).into_response()
}

pub async fn compute() -> Response {
    (
        StatusCode::GONE,
        Json(serde_json::json!({
            "status": "deprecated",
            "message": "/compute has been deprecated and disabled. Use /fit and /apply instead."
        })),
    )
        .into_response()
}
