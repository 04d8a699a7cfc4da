//! What `/apply`, `/fit`, `/summary`, `/` and `/compute` do. The HTTP plumbing (body limit,
//! running off the reactor) is here; parsing and scoring are plain functions below it.

use std::fmt::Write;
use std::path::Path;

use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::envelope::{self, Envelope, Options};
use super::results::{write_results, JsonEscaped};
use super::table::Table;
use super::{DsdlResponse, Endpoint};
use crate::model::Registry;
use crate::server::{read_body_limited, AppState, BodyError};
use crate::{scoring, validate_name};

pub async fn apply(State(state): State<AppState>, body: Body) -> Response {
    handle(state, body, Endpoint::Apply).await
}

pub async fn fit(State(state): State<AppState>, body: Body) -> Response {
    handle(state, body, Endpoint::Fit).await
}

async fn handle(state: AppState, body: Body, endpoint: Endpoint) -> Response {
    let bytes = match read_body_limited(body, state.config.max_body_bytes).await {
        Ok(b) => b,
        Err(BodyError::TooLarge { limit, received }) => {
            return DsdlResponse::error(
                endpoint,
                format!(
                    "the request body ({} MiB or more) exceeds the {} MiB limit; raise --max-body-mb (DNSEXFIL_MAX_BODY_MB) or send fewer rows per request",
                    received >> 20,
                    limit >> 20
                ),
            )
            .into_response()
        }
        Err(BodyError::Read(e)) => {
            let what = format!("cannot read the request body: {e}");
            return (StatusCode::BAD_REQUEST, DsdlResponse::error(endpoint, what)).into_response();
        }
    };
    // Parsing, features and the forward pass are CPU work: keep them off the async reactor.
    let worker_state = state.clone();
    let outcome = state
        .run_compute(move || {
            let response = process(&worker_state, &bytes, endpoint);
            if bytes.len() >= crate::server::LARGE_REQUEST_BYTES {
                drop(bytes);
                crate::server::release_freed_memory();
            }
            response
        })
        .await;
    match outcome {
        Ok(resp) => {
            if resp.status == "error" {
                tracing::warn!(endpoint = endpoint.path(), message = %resp.message, "request failed");
            }
            resp.into_response()
        }
        Err(e) => {
            tracing::error!(endpoint = endpoint.path(), error = %e, "request worker panicked");
            DsdlResponse::error(
                endpoint,
                "internal error while processing the request (see the service log)",
            )
            .into_response()
        }
    }
}

/// One DSDL request, start to finish, on a blocking thread.
pub fn process(state: &AppState, body: &[u8], endpoint: Endpoint) -> DsdlResponse {
    let envelope = match envelope::parse(body) {
        Ok(e) => e,
        Err(msg) => return DsdlResponse::error(endpoint, msg),
    };
    let options = envelope.options_summary();
    if let Err(msg) = validate_name(&options.model_name) {
        return DsdlResponse::error(endpoint, format!("model_name: {msg}"));
    }
    if let Some(algo) = &options.algo {
        if let Err(msg) = validate_name(algo) {
            return DsdlResponse::error(endpoint, format!("algo: {msg}"));
        }
    }
    if endpoint == Endpoint::Fit && options.stage {
        return stage(&state.config.staging_dir, &envelope, &options);
    }
    if endpoint == Endpoint::Fit
        && state
            .registry
            .resolve(&options.model_name, options.algo.as_deref())
            .is_none()
    {
        // Training is not built yet: a fit can only apply a pretrained model, as the stock ESCU notebook intends.
        return DsdlResponse::error(
            endpoint,
            format!(
                "this service cannot train models yet; `fit` only applies an already loaded pretrained model, and {}",
                unknown_model(&state.registry, &options)
            ),
        );
    }
    match apply_model(
        &state.registry,
        &envelope.data,
        &options,
        state.config.max_rows,
    ) {
        Ok((results, notes)) => DsdlResponse {
            status: "success",
            message: format!("{} done successfully{notes}", endpoint.path()),
            results: Some(results),
        },
        Err(msg) => DsdlResponse::error(endpoint, msg),
    }
}

/// Scores the CSV with the model the options name. Returns the results CSV (JSON-escaped, ready
/// for the response body) and a note on rows
/// that were not scored (empty when all were usable).
pub fn apply_model(
    registry: &Registry,
    csv_text: &str,
    options: &Options,
    max_rows: usize,
) -> Result<(Vec<u8>, String), String> {
    let Some(model) = registry.resolve(&options.model_name, options.algo.as_deref()) else {
        return Err(unknown_model(registry, options));
    };
    let table = Table::parse_limited(csv_text, max_rows).map_err(|e| e.to_string())?;
    let (rows, scored, scored_table_rows) = table.feature_rows();
    let scores = scoring::score(&model, &rows, &scored).map_err(|e| e.to_string())?;
    let mut probabilities = vec![None; table.len()];
    for (k, &row) in scored_table_rows.iter().enumerate() {
        probabilities[row] = Some(scores.probabilities[k]);
    }
    tracing::debug!(
        model = %model.info.name,
        rows = table.len(),
        scored = scored.len(),
        features_ms = scores.feature_time.as_secs_f64() * 1e3,
        inference_ms = scores.inference_time.as_secs_f64() * 1e3,
        "scored"
    );
    crate::metrics::record_scoring(
        "dsdl",
        &model.info.name,
        scored.len(),
        scores.feature_time,
        scores.inference_time,
    );
    let mut results = JsonEscaped(Vec::with_capacity(csv_text.len() + scored.len() * 32 + 256));
    write_results(
        &mut results,
        &table,
        &model.info.target,
        &probabilities,
        model.info.threshold,
    );
    Ok((results.0, skipped_note(&table)))
}

fn unknown_model(registry: &Registry, options: &Options) -> String {
    let mut looked_for = Vec::new();
    if let Some(a) = &options.algo {
        looked_for.push(format!("{a}_{}", options.model_name));
    }
    looked_for.push(options.model_name.clone());
    if let Some(a) = &options.algo {
        looked_for.push(a.clone());
    }
    let loaded = registry.names();
    format!(
        "no model named {} is loaded (loaded: {}); start the service with --model FILE (convert Splunk's artifact with `dnsexfil convert`) or put the model file in the model directory",
        looked_for.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(" or "),
        if loaded.is_empty() { "none".to_string() } else { loaded.join(", ") }
    )
}

/// "; 2 of 10 rows were not scored: row 3: rank `abc` is not a number; ..." (at most 5 examples).
fn skipped_note(table: &Table) -> String {
    let skipped: Vec<_> = table.skipped().collect();
    if skipped.is_empty() {
        return String::new();
    }
    let mut note = format!(
        "; {} of {} rows were not scored:",
        skipped.len(),
        table.len()
    );
    for (row, reason) in skipped.iter().take(5) {
        let _ = write!(note, " row {row}: {reason};");
    }
    if skipped.len() > 5 {
        let _ = write!(note, " and {} more", skipped.len() - 5);
    } else {
        note.pop();
    }
    note
}

/// `mode=stage`: keep the data and its description for a notebook, build nothing.
fn stage(dir: &Path, envelope: &Envelope, options: &Options) -> DsdlResponse {
    // Appended, not `with_extension`: `a.b` and `a.c` are different models.
    let csv_path = dir.join(format!("{}.csv", options.model_name));
    let json_path = dir.join(format!("{}.json", options.model_name));
    // The session key Splunk puts into meta must never reach the disk.
    let meta =
        serde_json::to_vec_pretty(&envelope.meta_without_secrets()).expect("JSON values serialise");
    let written = crate::fsutil::write_atomic(&csv_path, envelope.data.as_bytes())
        .and_then(|_| crate::fsutil::write_atomic(&json_path, &meta));
    match written {
        Ok(()) => DsdlResponse {
            status: "staged",
            message: format!(
                "Model data staged successfully in {} - no model was built yet.",
                csv_path.display()
            ),
            results: None,
        },
        Err(e) => DsdlResponse::error(
            Endpoint::Fit,
            format!(
                "cannot stage the data in {}: {e}; check that the staging directory is writable",
                dir.display()
            ),
        ),
    }
}

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
        "app": "dnsexfil",
        "version": env!("CARGO_PKG_VERSION"),
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
