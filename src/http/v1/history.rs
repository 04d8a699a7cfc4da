//! `GET` and `DELETE /v1/history/{src}`: what the service remembers of one source, for an analyst
//! following up an alert, and forgetting it (a host re-imaged, a person's right to erasure).

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use crate::history::{DomainReport, HistoryError, SourceReport};
use crate::http::state::AppState;
use crate::util::clip;

/// What the service remembers of one source within its window.
#[derive(Debug, Serialize, ToSchema)]
pub struct SourceHistory {
    #[schema(example = "10.0.0.5")]
    pub src: String,
    /// The history's window and bucket, in seconds (`--history-window-secs`, `--history-bucket-secs`).
    pub window_seconds: i64,
    pub bucket_seconds: i64,
    /// Earliest and latest remembered query (Unix seconds).
    pub first_seen: i64,
    pub last_seen: i64,
    /// Distinct names queried.
    pub distinct_names: usize,
    /// Distinct (name, bucket): a name queried again in another bucket counts again.
    pub name_buckets: usize,
    /// Registered domains (at the ICANN boundary of the Public Suffix List: every CloudFront
    /// name is under `cloudfront.net`), most distinct names first; at most 500 listed.
    pub domains: Vec<DomainHistory>,
}

/// One registered domain of a source's history.
#[derive(Debug, Serialize, ToSchema)]
pub struct DomainHistory {
    #[schema(example = "example.com")]
    pub domain: String,
    pub distinct_names: usize,
    pub name_buckets: usize,
    /// Buckets with at least one query under the domain: how long the source kept at it.
    pub active_buckets: usize,
    pub first_seen: i64,
    pub last_seen: i64,
    /// The most recently queried names, newest first (at most 20).
    pub recent_names: Vec<String>,
}

impl From<SourceReport> for SourceHistory {
    fn from(r: SourceReport) -> Self {
        SourceHistory {
            src: r.src,
            window_seconds: r.window_seconds,
            bucket_seconds: r.bucket_seconds,
            first_seen: r.first_seen,
            last_seen: r.last_seen,
            distinct_names: r.distinct_names,
            name_buckets: r.name_buckets,
            domains: r.domains.into_iter().map(DomainHistory::from).collect(),
        }
    }
}

impl From<DomainReport> for DomainHistory {
    fn from(d: DomainReport) -> Self {
        DomainHistory {
            domain: d.domain,
            distinct_names: d.distinct_names,
            name_buckets: d.name_buckets,
            active_buckets: d.active_buckets,
            first_seen: d.first_seen,
            last_seen: d.last_seen,
            recent_names: d.recent_names,
        }
    }
}

/// What the service remembers of one source: its domains, names and when.
#[utoipa::path(
    get,
    path = "/v1/history/{src}",
    tag = "v1",
    params(("src" = String, Path, description = "The source as events name it (percent-encode `/`)")),
    responses(
        (status = 200, description = "The source's history within the window", body = SourceHistory),
        (status = 400, description = "The source in the path is not UTF-8 once percent-decoded (`invalid_source`)", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 404, description = "Nothing remembered of this source (`not_remembered`), or the service keeps no history (`history_off`)", body = ErrorBody),
        (status = 429, description = "Too many requests in flight", body = ErrorBody),
        (status = 503, description = "The history store (Redis) did not answer (`history_unavailable`), or the request took too long (`timeout`)", body = ErrorBody),
    ),
    security(("api_token" = []))
)]
pub async fn show(
    State(state): State<AppState>,
    src: Result<Path<String>, PathRejection>,
) -> Result<Json<SourceHistory>, ApiError> {
    let src = asked_source(&state, src)?;
    let now = crate::history::unix_now();
    match state.history.source(&src, now).await? {
        Some(report) => Ok(Json(SourceHistory::from(report))),
        None => Err(not_remembered(&state, &src)),
    }
}

/// Forgets everything the service remembers of one source.
#[utoipa::path(
    delete,
    path = "/v1/history/{src}",
    tag = "v1",
    params(("src" = String, Path, description = "The source as events name it (percent-encode `/`)")),
    responses(
        (status = 204, description = "Forgotten"),
        (status = 400, description = "The source in the path is not UTF-8 once percent-decoded (`invalid_source`)", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 404, description = "Nothing remembered of this source (`not_remembered`), or the service keeps no history (`history_off`)", body = ErrorBody),
        (status = 429, description = "Too many requests in flight", body = ErrorBody),
        (status = 503, description = "The history store (Redis) did not answer (`history_unavailable`), or the request took too long (`timeout`)", body = ErrorBody),
    ),
    security(("api_token" = []))
)]
pub async fn forget(
    State(state): State<AppState>,
    src: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let src = asked_source(&state, src)?;
    if !state.history.forget(&src).await? {
        return Err(not_remembered(&state, &src));
    }
    tracing::info!(src = %clip(&src, 100), "history of a source forgotten on request");
    Ok(StatusCode::NO_CONTENT)
}

/// The source named in the path, once the service is known to keep a history; or why it cannot
/// be asked about (no history, percent-encoding that is not UTF-8).
fn asked_source(
    state: &AppState,
    src: Result<Path<String>, PathRejection>,
) -> Result<String, ApiError> {
    let Path(src) = src.map_err(|e| {
        ApiError::bad_request(
            "invalid_source",
            format!(
                "the source in the path cannot be read ({}); percent-encode it as UTF-8",
                clip(&e.body_text(), 100)
            ),
        )
    })?;
    if !state.history.is_on() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "history_off",
            "this service keeps no history (started with --history off); start it with --history memory or --history redis://host:port/db",
        ));
    }
    Ok(src)
}

fn not_remembered(state: &AppState, src: &str) -> ApiError {
    let window = state.history.config().map_or(0, |c| c.window_seconds);
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_remembered",
        format!(
            "nothing is remembered of source `{}` in the last {window} s: its events were never scored by a model of our own schemas (the ESCU model keeps none), or they left the window, or the source was evicted to keep the history within its memory cap",
            clip(src, 100)
        ),
    )
}

/// A store that cannot answer: /v1's one mapping of the history's errors.
impl From<HistoryError> for ApiError {
    fn from(error: HistoryError) -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "history_unavailable",
            format!(
                "{error}; scoring goes on from each request's own events; try again once Redis answers"
            ),
        )
    }
}
