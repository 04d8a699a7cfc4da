//! `POST /v1/score`: DNS events as JSON or NDJSON in, one result per event out, in order. Same
//! features, model and scoring as DSDL's `/apply` (`crate::scoring::score`).

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiError, ErrorBody, ErrorDetail};
use super::events::{self, Batch, Kind, ScoreRequest};
use super::models;
use crate::features::Row;
use crate::model::Model;
use crate::scoring;
use crate::server::{read_body_budgeted, AppState, BodyError};

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ScoreParams {
    /// Model to use (see GET /v1/models). Default: `dnsexfil_v4` when loaded, else the only
    /// loaded model. The only way to choose a model for NDJSON bodies.
    pub model: Option<String>,
}

/// The result for one event, at the event's position.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventResult<'a> {
    /// Position of the event in the request (0-based; NDJSON: among non-blank lines).
    pub index: usize,
    /// Whether the event got a probability: false for history events (rank other than 1) and
    /// for events with an error.
    pub scored: bool,
    /// The event's `src` (null when it was not usable).
    #[schema(required = true)]
    pub src: Option<&'a str>,
    /// The event's `query` (null when it was not usable).
    #[schema(required = true)]
    pub query: Option<&'a str>,
    /// Probability of DNS exfiltration (null when not scored); the same number `/apply` prints.
    #[schema(required = true)]
    pub probability: Option<f64>,
    /// 1 when `probability` reaches the model's threshold, else 0; 0 when `reason` is set
    /// (null when not scored).
    #[schema(required = true, minimum = 0, maximum = 1)]
    pub label: Option<u8>,
    /// Model that scored the request.
    pub model: &'a str,
    /// Feature schema of that model.
    pub schema: &'a str,
    /// Why a scored event's label was suppressed (allowlisted domain, muted source), else null.
    #[schema(required = true)]
    pub reason: Option<String>,
    /// Why the event could not be used, else null.
    #[schema(required = true, value_type = Option<ErrorDetail>)]
    pub error: Option<&'a ErrorDetail>,
}

#[derive(Serialize, ToSchema)]
pub struct ScoreResponse<'a> {
    /// Model that scored the request.
    #[schema(example = "dnsexfil_v4")]
    pub model: &'a str,
    /// Its feature schema.
    #[schema(example = "dnsexfil-v4")]
    pub schema: &'a str,
    /// Its label threshold.
    pub threshold: f32,
    /// Number of events received.
    pub events: usize,
    /// Number of events scored.
    pub scored: usize,
    /// Number of events with an error.
    pub errors: usize,
    /// One result per event, in request order.
    #[schema(value_type = Vec<EventResult>)]
    pub results: Results<'a>,
}

/// The results of a request, made one at a time as they are written: a large request's answer
/// is not held twice, as results and as text.
pub struct Results<'a> {
    state: &'a AppState,
    model: &'a Model,
    batch: &'a Batch,
    probabilities: &'a [Option<f32>],
}

impl Serialize for Results<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let info = &self.model.info;
        let schema = info.schema.name();
        let results = self.batch.events.iter().zip(self.probabilities).enumerate();
        serializer.collect_seq(results.map(|(index, (event, p))| {
            let (src, query) = match &event.dns {
                Some((s, q)) => (Some(s.as_str()), Some(q.as_str())),
                None => (None, None),
            };
            let error = match &event.kind {
                Kind::Invalid(e) => Some(e),
                _ => None,
            };
            let reason = match (p, src, query) {
                (Some(_), Some(s), Some(q)) => suppression_reason(self.state, s, q),
                _ => None,
            };
            let label = p.map(|p| u8::from(reason.is_none() && p >= info.threshold));
            EventResult {
                index,
                scored: p.is_some(),
                src,
                query,
                // f64 of the f32, as `/apply` prints it, so both APIs give the same number.
                probability: p.map(f64::from),
                label,
                model: &info.name,
                schema,
                reason,
                error,
            }
        }))
    }
}

/// Body formats `/v1/score` reads.
#[derive(Debug, Clone, Copy)]
enum Format {
    Json,
    Ndjson,
}

/// Scores DNS events.
///
/// Takes `{"model": ..., "events": [...]}` as `application/json`, or one event object per line
/// as `application/x-ndjson` (model from `?model=`). Answers one result per event, in order.
/// Events with rank 1 (or no rank) are scored; other ranks feed the per-source history only, as
/// in DSDL. A bad event gets an `error` in its result while the others are scored.
#[utoipa::path(
    post,
    path = "/v1/score",
    tag = "v1",
    params(ScoreParams),
    request_body(
        description = "Events as a JSON object, or NDJSON: one `Event` object per line",
        content(
            (ScoreRequest = "application/json"),
            (String = "application/x-ndjson"),
        ),
    ),
    responses(
        (status = 200, description = "One result per event, in order", body = ScoreResponse),
        (status = 400, description = "The body is not JSON (`invalid_json`), could not be read to its end (`body_unreadable`), or the query string is malformed (`invalid_query`)", body = ErrorBody),
        (status = 401, description = "Missing or wrong token (`unauthorized`)", body = ErrorBody),
        (status = 404, description = "No such model (`model_not_found`)", body = ErrorBody),
        (status = 413, description = "Body over --max-body-mb (`body_too_large`) or more events than --max-rows (`too_many_events`)", body = ErrorBody),
        (status = 415, description = "Content type is not application/json or application/x-ndjson (`unsupported_media_type`)", body = ErrorBody),
        (status = 422, description = "JSON of the wrong shape (`invalid_request`), `model` field and ?model= disagree (`conflicting_model`), or no default model (`model_required`)", body = ErrorBody),
        (status = 429, description = "Too many requests in flight (`too_many_requests`)", body = ErrorBody),
        (status = 500, description = "The model failed to run (`internal`)", body = ErrorBody),
        (status = 503, description = "No model is loaded (`no_model_loaded`) or the request took too long (`timeout`)", body = ErrorBody),
    ),
    security(("api_token" = []))
)]
pub async fn score(
    State(state): State<AppState>,
    params: Result<Query<ScoreParams>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match handle(state, params, &headers, body).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    }
}

async fn handle(
    state: AppState,
    params: Result<Query<ScoreParams>, QueryRejection>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let Query(params) = params.map_err(|e| {
        ApiError::bad_request(
            "invalid_query",
            format!("{}; the only parameter is ?model=NAME", e.body_text()),
        )
    })?;
    let format = body_format(headers)?;
    if state.registry.is_empty() {
        return Err(models::no_model_loaded());
    }
    let limit = state.config.max_body_bytes;
    let read = read_body_budgeted(body, limit, &state).await;
    if let Err(BodyError::Busy { budget }) = &read {
        tracing::warn!(
            budget_bytes = budget,
            "request refused: the bodies in flight take the budget"
        );
        let refusal = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            crate::server::busy_message(*budget),
        );
        return Ok(crate::server::busy_response(refusal.into_response()));
    }
    let (bytes, _budget) = read.map_err(|e| match e {
        BodyError::TooLarge { limit, .. } => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!(
                "the body exceeds the {} MiB limit; send fewer events per request or raise --max-body-mb (DNSEXFIL_MAX_BODY_MB)",
                limit >> 20
            ),
        ),
        BodyError::Read(e) => {
            ApiError::bad_request("body_unreadable", format!("cannot read the body: {e}"))
        }
        BodyError::Busy { budget } => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            crate::server::busy_message(budget),
        ),
    })?;
    // Decoding, features and the forward pass are CPU work: only small requests run on the
    // async worker.
    let worker_state = state.clone();
    let outcome = state
        .run_compute(bytes.len(), move || {
            score_body(&worker_state, &bytes, format, params.model)
        })
        .await;
    let json = outcome.map_err(|e| {
        tracing::error!(error = %e, "request worker panicked");
        ApiError::internal("internal error while scoring (see the service log)")
    })??;
    Ok(([(header::CONTENT_TYPE, "application/json")], json).into_response())
}

/// JSON or NDJSON, from the Content-Type (parameters such as charset are ignored).
fn body_format(headers: &HeaderMap) -> Result<Format, ApiError> {
    let given = headers
        .get(header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let essence = given
        .as_deref()
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase());
    match essence.as_deref() {
        Some("application/json") => Ok(Format::Json),
        Some("application/x-ndjson") => Ok(Format::Ndjson),
        _ => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!(
                "Content-Type {} is not supported; send application/json or application/x-ndjson",
                given.map_or("(none)".to_string(), |g| format!(
                    "`{}`",
                    super::error::clip(&g, 80)
                ))
            ),
        )),
    }
}

/// Decodes, scores and serialises one request, on a blocking thread.
fn score_body(
    state: &AppState,
    body: &[u8],
    format: Format,
    query_model: Option<String>,
) -> Result<Vec<u8>, ApiError> {
    let max_events = state.config.max_rows;
    let batch = match format {
        Format::Json => events::from_json(body, max_events)?,
        Format::Ndjson => events::from_ndjson(body, max_events)?,
    };
    // An empty name means "not given" (e.g. `?model=$MODEL` with the variable unset).
    let query_model = query_model.filter(|m| !m.is_empty());
    let body_model = batch.model.clone().filter(|m| !m.is_empty());
    let requested = match (query_model, body_model) {
        (Some(q), Some(b)) if q != b => {
            return Err(ApiError::unprocessable(
                "conflicting_model",
                format!(
                    "?model={} and the body's `model` field `{}` disagree; give one of them",
                    super::error::clip(&q, 130),
                    super::error::clip(&b, 130)
                ),
            ))
        }
        (q, b) => q.or(b),
    };
    if let Some(name) = requested.as_deref() {
        state.rescan_store_if_missing(name, None);
    }
    let model = models::choose(&state.registry, requested.as_deref())?;
    let probabilities = probabilities(&model, &batch)?;
    let response = build_response(state, &model, &batch, &probabilities);
    // Room for the whole answer at once (a result is a little over 200 bytes plus its event's
    // text), so a large answer is not copied at every doubling; pages not written stay unused.
    let mut out = Vec::with_capacity(body.len() + 320 * batch.events.len() + 256);
    serde_json::to_writer(&mut out, &response).expect("results serialise");
    Ok(out)
}

/// Scores the batch's rank-1 events with all usable events as history (the rows `/apply` would
/// build from the same events). Returns one probability per event, `None` where not scored.
fn probabilities(model: &Model, batch: &Batch) -> Result<Vec<Option<f32>>, ApiError> {
    let mut rows = Vec::with_capacity(batch.events.len());
    let mut scored = Vec::new();
    let mut scored_events = Vec::new();
    for (i, event) in batch.events.iter().enumerate() {
        let Some((src, query)) = &event.dns else {
            continue;
        };
        if event.kind == Kind::Scored {
            scored.push(rows.len());
            scored_events.push(i);
        }
        rows.push(Row { src, query });
    }
    let scores = scoring::score(model, &rows, &scored).map_err(|e| {
        tracing::error!(error = %e, "scoring failed");
        ApiError::internal(e.to_string())
    })?;
    crate::metrics::record_scoring(
        "v1",
        &model.info.name,
        scored.len(),
        scores.feature_time,
        scores.inference_time,
    );
    let mut out = vec![None; batch.events.len()];
    for (k, &i) in scored_events.iter().enumerate() {
        out[i] = Some(scores.probabilities[k]);
    }
    Ok(out)
}

fn build_response<'a>(
    state: &'a AppState,
    model: &'a Model,
    batch: &'a Batch,
    probabilities: &'a [Option<f32>],
) -> ScoreResponse<'a> {
    let info = &model.info;
    ScoreResponse {
        model: &info.name,
        schema: info.schema.name(),
        threshold: info.threshold,
        events: batch.events.len(),
        scored: probabilities.iter().filter(|p| p.is_some()).count(),
        errors: batch
            .events
            .iter()
            .filter(|e| matches!(e.kind, Kind::Invalid(_)))
            .count(),
        results: Results {
            state,
            model,
            batch,
            probabilities,
        },
    }
}

/// Why a scored event's alert is suppressed (its label forced to 0, its probability kept), if
/// it is.
fn suppression_reason(state: &AppState, src: &str, query: &str) -> Option<String> {
    state.suppressions.reason(src, query).map(str::to_string)
}
