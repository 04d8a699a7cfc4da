//! `POST /v1/score`: DNS events as JSON or NDJSON in, one result per event out, in order. Same
//! features, model and scoring as DSDL's `/apply` (`crate::engine::scoring::score`).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiError, ErrorBody, ErrorDetail};
use super::events::{self, Batch, ScoreRequest, Status};
use super::models;
use http_body::{Frame, SizeHint};

use crate::engine::memory::LargeRequest;
use crate::engine::scoring;
use crate::features::Row;
use crate::history::{HourBefore, Observation};
use crate::http::body::{read_body_budgeted, BodyBudget, Room};
use crate::http::refusal::{retry_soon, Flavor, Refusal};
use crate::http::stages::{ms, Stages};
use crate::http::state::AppState;
use crate::model::Model;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ScoreParams {
    /// Model to use (see GET /v1/models). Default: `dnsexfil_v7` when loaded, else the only
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
    #[schema(example = "dnsexfil_v7")]
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
/// is never held whole, as results or as text.
pub struct Results<'a> {
    state: &'a AppState,
    model: &'a Model,
    batch: &'a Batch,
    probabilities: &'a [Option<f32>],
}

impl<'a> Results<'a> {
    /// The result for the `index`-th event.
    fn result(&self, index: usize) -> EventResult<'a> {
        let info = &self.model.info;
        let event = self.batch.get(index);
        let p = self.probabilities[index];
        let (src, query) = match event.dns {
            Some((s, q)) => (Some(s), Some(q)),
            None => (None, None),
        };
        let error = match event.status {
            Status::Invalid(e) => Some(e),
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
            schema: info.schema.name(),
            reason,
            error,
        }
    }
}

impl Serialize for Results<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq((0..self.batch.len()).map(|index| self.result(index)))
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
        (status = 413, description = "Body over --max-body-mb (`body_too_large`), more events than --max-rows (`too_many_events`), or an answer larger than --max-bodies-in-flight-mb could ever hold (`answer_too_large`)", body = ErrorBody),
        (status = 415, description = "Content type is not application/json or application/x-ndjson (`unsupported_media_type`)", body = ErrorBody),
        (status = 422, description = "JSON of the wrong shape (`invalid_request`), `model` field and ?model= disagree (`conflicting_model`), or no default model (`model_required`)", body = ErrorBody),
        (status = 429, description = "Too many requests in flight (`too_many_requests`)", body = ErrorBody),
        (status = 500, description = "The model failed to run (`internal`)", body = ErrorBody),
        (status = 503, description = "No model is loaded (`no_model_loaded`), the request took too long (`timeout`), or the bodies and answers in flight fill --max-bodies-in-flight-mb (`busy`, with Retry-After)", body = ErrorBody),
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
    let started = Instant::now();
    let read = read_body_budgeted(body, limit, &state).await;
    let read_time = started.elapsed();
    let (bytes, budget) = match read {
        Ok(read) => read,
        Err(e) => return Ok(Refusal::from(e).answer(Flavor::V1, "/v1/score")),
    };
    // Small requests run on the async worker, which must not wait for a scan of the model
    // store: the model they name is looked for here, awaited.
    if crate::http::state::runs_on_async_worker(bytes.len()) {
        let named = params.model.clone().filter(|m| !m.is_empty()).or_else(|| {
            matches!(format, Format::Json)
                .then(|| events::model_named(&bytes))
                .flatten()
        });
        if let Some(name) = named {
            state.look_in_store(&name, None).await;
        }
    }
    // Decoding, features and the forward pass are CPU work: only small requests run on the
    // async worker.
    let worker_state = state.clone();
    let outcome = state
        .run_compute(bytes.len(), move || {
            let mut budget = budget;
            let mut stages = Stages::default();
            let scored = score_body(
                &worker_state,
                &bytes,
                format,
                params.model,
                &mut budget,
                &mut stages,
            );
            (scored, budget, stages)
        })
        .await;
    let (scored, budget, stages) = outcome.map_err(|e| {
        tracing::error!(error = %e, "request worker panicked");
        ApiError::internal("internal error while scoring (see the service log)")
    })?;
    let scored = match scored {
        Err(refusal) if budget.refused() => {
            tracing::warn!(
                answer_bytes = budget.refused_answer_bytes(),
                budget_bytes = state.config.limits.max_body_bytes_in_flight,
                "request refused: its answer would take the budget over"
            );
            return Ok(retry_soon(refusal.into_response()));
        }
        scored => scored?,
    };
    stages.log("/v1/score", read_time, scored.len);
    // The answer is written piece by piece as the client reads it; the results it is written
    // from stay counted in the budget until then.
    let release = LargeRequest::answer(scored.batch.held_bytes());
    let body = AnswerBody {
        scored,
        state,
        written: 0,
        next: None,
        finished: false,
        handed_over: Instant::now(),
        _budget: budget,
        _release: release,
    };
    let mut response = Response::new(Body::new(body));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    // Counted already (see `limits`).
    response
        .extensions_mut()
        .insert(crate::http::limits::Budgeted);
    Ok(response)
}

/// A scored request, ready to be written: the compact results and the answer's exact length.
struct Scored {
    model: Arc<Model>,
    batch: Batch,
    probabilities: Vec<Option<f32>>,
    /// Bytes of the whole answer.
    len: usize,
}

impl Scored {
    fn results<'a>(&'a self, state: &'a AppState) -> Results<'a> {
        Results {
            state,
            model: &self.model,
            batch: &self.batch,
            probabilities: &self.probabilities,
        }
    }

    /// The answer up to the `results` array's first element.
    fn write_head(&self, out: &mut Vec<u8>) {
        let info = &self.model.info;
        let head = Head {
            model: &info.name,
            schema: info.schema.name(),
            threshold: info.threshold,
            events: self.batch.len(),
            scored: self.probabilities.iter().filter(|p| p.is_some()).count(),
            errors: self.batch.errors(),
        };
        serde_json::to_writer(&mut *out, &head).expect("results serialise");
        // `{..., "errors": N}` continues with the results.
        out.pop();
        out.extend_from_slice(b",\"results\":[");
    }

    /// The `index`-th result, with the comma before it.
    fn write_result(&self, state: &AppState, index: usize, out: &mut impl std::io::Write) {
        if index > 0 {
            out.write_all(b",").expect("results serialise");
        }
        let result = self.results(state).result(index);
        write_event_result(out, &result).expect("results serialise");
    }

    /// The exact length of the answer, written nowhere.
    fn measure(&self, state: &AppState) -> usize {
        let mut head = Vec::new();
        self.write_head(&mut head);
        let mut counted = Counter(head.len() + ANSWER_TAIL.len());
        for index in 0..self.batch.len() {
            self.write_result(state, index, &mut counted);
        }
        counted.0
    }
}

/// `serde_json::to_writer(out, result)`, byte for byte, written field by field (each value by
/// serde_json): the answer of a large request is mostly these, and serde's derived form of the
/// whole struct took about 1.6 times as long (`benches/http_roundtrip.sh`, write stage).
fn write_event_result(out: &mut impl std::io::Write, result: &EventResult) -> std::io::Result<()> {
    fn value(out: &mut impl std::io::Write, value: &impl Serialize) -> std::io::Result<()> {
        serde_json::to_writer(out, value).map_err(std::io::Error::from)
    }
    out.write_all(b"{\"index\":")?;
    value(out, &result.index)?;
    out.write_all(b",\"scored\":")?;
    value(out, &result.scored)?;
    out.write_all(b",\"src\":")?;
    value(out, &result.src)?;
    out.write_all(b",\"query\":")?;
    value(out, &result.query)?;
    out.write_all(b",\"probability\":")?;
    value(out, &result.probability)?;
    out.write_all(b",\"label\":")?;
    value(out, &result.label)?;
    out.write_all(b",\"model\":")?;
    value(out, &result.model)?;
    out.write_all(b",\"schema\":")?;
    value(out, &result.schema)?;
    out.write_all(b",\"reason\":")?;
    value(out, &result.reason)?;
    out.write_all(b",\"error\":")?;
    value(out, &result.error)?;
    out.write_all(b"}")
}

/// [`ScoreResponse`] without its results (the same fields in the same order).
#[derive(Serialize)]
struct Head<'a> {
    model: &'a str,
    schema: &'a str,
    threshold: f32,
    events: usize,
    scored: usize,
    errors: usize,
}

const ANSWER_TAIL: &[u8] = b"]}";

/// Counts the bytes written to it.
struct Counter(usize);

impl std::io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// About this much of the answer is written at a time, when the client has read the piece
/// before: a client that reads slowly, or not at all, holds one piece, not the answer.
const PIECE_BYTES: usize = 64 << 10;

/// The answer's body: written from the compact results a piece at a time, with its exact length
/// (`Content-Length`) known from the start.
struct AnswerBody {
    scored: Scored,
    state: AppState,
    /// Bytes handed to hyper so far.
    written: usize,
    /// The next event to write (`None`: the head first).
    next: Option<usize>,
    finished: bool,
    /// When the body went to hyper (the write time logged at its last piece).
    handed_over: Instant,
    // Dropped last, in this order: the body's place in the budget once the results are freed,
    // then the release of their memory to the OS.
    _budget: BodyBudget,
    _release: Option<LargeRequest>,
}

impl http_body::Body for AnswerBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if this.finished {
            return Poll::Ready(None);
        }
        let mut out = Vec::with_capacity(PIECE_BYTES + 1024);
        let events = this.scored.batch.len();
        let mut next = match this.next {
            Some(next) => next,
            None => {
                this.scored.write_head(&mut out);
                0
            }
        };
        while out.len() < PIECE_BYTES && next < events {
            this.scored.write_result(&this.state, next, &mut out);
            next += 1;
        }
        this.next = Some(next);
        if next == events {
            out.extend_from_slice(ANSWER_TAIL);
            this.finished = true;
            tracing::debug!(
                body_bytes = this.written + out.len(),
                write_ms = ms(this.handed_over.elapsed()),
                "answer sent"
            );
        }
        this.written += out.len();
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))))
    }

    fn is_end_stream(&self) -> bool {
        self.finished
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.scored.len.saturating_sub(self.written) as u64)
    }
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
                    crate::util::clip(&g, 80)
                ))
            ),
        )),
    }
}

/// Decodes and scores one request, and measures its answer, on a blocking thread.
fn score_body(
    state: &AppState,
    body: &[u8],
    format: Format,
    query_model: Option<String>,
    budget: &mut BodyBudget,
    stages: &mut Stages,
) -> Result<Scored, ApiError> {
    let max_events = state.config.max_rows;
    let started = Instant::now();
    let batch = match format {
        Format::Json => events::from_json(body, max_events)?,
        Format::Ndjson => events::from_ndjson(body, max_events)?,
    };
    stages.decode = started.elapsed();
    // An empty name means "not given" (e.g. `?model=$MODEL` with the variable unset).
    let query_model = query_model.filter(|m| !m.is_empty());
    let body_model = batch.model.clone().filter(|m| !m.is_empty());
    let requested = match (query_model, body_model) {
        (Some(q), Some(b)) if q != b => {
            return Err(ApiError::unprocessable(
                "conflicting_model",
                format!(
                    "?model={} and the body's `model` field `{}` disagree; give one of them",
                    crate::util::clip(&q, 130),
                    crate::util::clip(&b, 130)
                ),
            ))
        }
        (q, b) => q.or(b),
    };
    if let Some(name) = requested.as_deref() {
        state.rescan_store_if_missing(name, None);
    }
    let model = models::choose(&state.registry, requested.as_deref())?;
    let hour_before = if state.history.remembers(model.info.schema) {
        hour_before(state, &batch)
    } else {
        None
    };
    // What the answer is written from, the pieces in flight and the rows read from the hour
    // before, counted before the scoring.
    let held = batch.held_bytes()
        + batch.len() * std::mem::size_of::<Option<f32>>()
        + 2 * PIECE_BYTES
        + hour_before.as_ref().map_or(0, HourBefore::held_bytes);
    let room = budget.grow_to(held, state);
    if let Some(refusal) = room.refusal(held, state.config.limits.max_body_bytes_in_flight) {
        return Err(match room {
            Room::Never => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "answer_too_large", refusal)
            }
            _ => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "busy", refusal),
        });
    }
    // A small request scored on an async worker may have brought many rows from the hour
    // before: the worker then hands its other connections over while it computes.
    let many_rows = hour_before
        .as_ref()
        .is_some_and(|h| h.events.len() > INLINE_EARLIER_ROWS);
    let probabilities = crate::util::pool::off_the_reactor_if(many_rows, || {
        probabilities(state, &model, &batch, hour_before.as_ref(), stages)
    })?;
    let mut scored = Scored {
        model,
        batch,
        probabilities,
        len: 0,
    };
    // Remembered after the scoring, whose memory is then freed (see `dsdl::apply`), while the
    // answer is measured; before it leaves, so the client's next request sees these events.
    let started = Instant::now();
    let measure = || scored.measure(state);
    let remember = || remember(state, &scored.model, &scored.batch);
    let split = crate::util::pool::worth_splitting(scored.batch.len());
    (scored.len, ()) = crate::util::pool::join(split, measure, remember);
    stages.encode = started.elapsed();
    Ok(scored)
}

/// Rows from the hour before a request above which a small request's scoring leaves the async
/// worker's other connections to other workers.
const INLINE_EARLIER_ROWS: usize = 2_000;

/// What the batch's sources sent in the hour before it (see `History::earlier`), when every
/// usable event carries its time: without times a request cannot be placed in its sources'
/// streams (and a re-sent one would read its own first copy), so it is scored alone.
fn hour_before(state: &AppState, batch: &Batch) -> Option<HourBefore> {
    let mut sources = Vec::new();
    let mut seen = rustc_hash::FxHashSet::default();
    let (mut earliest, mut latest) = (i64::MAX, i64::MIN);
    for event in batch.iter() {
        let Some((src, _)) = event.dns else {
            continue;
        };
        let time = event.time?;
        earliest = earliest.min(time);
        latest = latest.max(time);
        if seen.insert(src) {
            sources.push(src.to_string());
        }
    }
    // Times ahead of the clock count as now, as the history records them.
    let now = crate::history::unix_now() + crate::history::FUTURE_SLACK_SECONDS;
    let (earliest, latest) = (earliest.min(now), latest.min(now));
    let first_second: Vec<(&str, &str)> = batch
        .iter()
        .filter(|event| event.time.map(|t| t.min(now)) == Some(earliest))
        .filter_map(|event| event.dns)
        .collect();
    state
        .history
        .earlier(sources, (earliest, latest), &first_second)
}

/// Scores the batch's rank-1 events with all usable events as history (the rows `/apply` would
/// build from the same events) and, for a schema with long-window features, what the service
/// remembered before the batch's earliest event. Returns one probability per event, `None`
/// where not scored.
fn probabilities(
    state: &AppState,
    model: &Model,
    batch: &Batch,
    hour_before: Option<&HourBefore>,
    stages: &mut Stages,
) -> Result<Vec<Option<f32>>, ApiError> {
    let remembers = state.history.remembers(model.info.schema);
    let earlier = hour_before.map_or(&[][..], |h| &h.events[..]);
    let mut rows = Vec::with_capacity(earlier.len() + batch.len());
    // What the sources sent before, as unscored rows: the request is scored as the end of an
    // hour of their queries, however the client cut its stream.
    rows.extend(earlier.iter().map(|e| Row {
        src: &e.src,
        query: &e.name,
    }));
    let mut scored = Vec::new();
    let mut scored_events = Vec::new();
    for (i, event) in batch.iter().enumerate() {
        let Some((src, query)) = event.dns else {
            continue;
        };
        if event.status == Status::Scored {
            scored.push(rows.len());
            scored_events.push(i);
        }
        rows.push(Row { src, query });
    }
    let prior = |keys| {
        let now = crate::history::unix_now();
        // Before the hour read as rows, when one was: the long window does not count it twice.
        let before = hour_before.map_or_else(
            || {
                batch
                    .iter()
                    .filter(|event| event.dns.is_some())
                    .map(|event| event.time.unwrap_or(now))
                    .min()
                    .unwrap_or(now)
            },
            |h| h.from,
        );
        state.history.prior(keys, before.min(now), now)
    };
    let prior = remembers.then_some(&prior as scoring::PriorLookup);
    let scores = scoring::score_with_prior(model, &rows, &scored, prior).map_err(|e| {
        tracing::error!(error = %e, "scoring failed");
        ApiError::internal(e.to_string())
    })?;
    crate::http::metrics::record_scoring(
        "v1",
        &model.info.name,
        scored.len(),
        scores.feature_time,
        scores.inference_time,
    );
    stages.features = scores.feature_time;
    stages.forward = scores.inference_time;
    let mut out = vec![None; batch.len()];
    for (k, &i) in scored_events.iter().enumerate() {
        out[i] = Some(scores.probabilities[k]);
    }
    Ok(out)
}

/// Hands the usable events to the history, for models of our own schemas (the ESCU model's
/// features stay per request, as published), at their `time` when given, else now.
fn remember(state: &AppState, model: &Model, batch: &Batch) {
    if !state.history.remembers(model.info.schema) {
        return;
    }
    let now = crate::history::unix_now();
    let observations: Vec<Observation> = batch
        .iter()
        .filter_map(|event| {
            let (src, query) = event.dns?;
            Some(Observation {
                src,
                query,
                time: event.time.unwrap_or(now),
            })
        })
        .collect();
    state.history.record(&observations, now);
}

/// Why a scored event's alert is suppressed (its label forced to 0, its probability kept), if
/// it is.
fn suppression_reason(state: &AppState, src: &str, query: &str) -> Option<String> {
    state.suppressions.reason(src, query).map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn state() -> AppState {
        let registry = crate::store::Registry::new();
        registry.insert(crate::model::default_model().unwrap());
        let config = crate::http::state::ServerConfig {
            token: crate::http::auth::Token::Unset,
            max_body_bytes: 1 << 20,
            max_rows: 100_000,
            staging_dir: std::env::temp_dir(),
            model_store: None,
            fit_time_limit: std::time::Duration::from_secs(1),
            max_fit_rows: 1000,
            limits: Default::default(),
        };
        AppState::new(Arc::new(registry), config, 1)
    }

    #[test]
    fn a_result_is_written_as_serde_would_write_it() {
        let error = ErrorDetail {
            code: "invalid_event".into(),
            message: "event 3: `src` must be a \"string\"\n".into(),
        };
        let results = [
            EventResult {
                index: 0,
                scored: true,
                src: Some("10.0.0.1"),
                query: Some("caf\u{e9}.\\202.example.com\u{1}"),
                probability: Some(f64::from(0.123_456_78_f32)),
                label: Some(0),
                model: "dnsexfil_v7",
                schema: "dnsexfil-v4",
                reason: None,
                error: None,
            },
            EventResult {
                index: 18_446_744,
                scored: true,
                src: Some(""),
                query: Some(""),
                probability: Some(1.0),
                label: Some(1),
                model: "m\"x",
                schema: "escu-v1",
                reason: Some("allowlisted domain `a\"b.com`".into()),
                error: None,
            },
            EventResult {
                index: usize::MAX,
                scored: false,
                src: None,
                query: None,
                probability: Some(f64::NAN),
                label: None,
                model: "m",
                schema: "s",
                reason: None,
                error: Some(&error),
            },
            EventResult {
                index: 10,
                scored: true,
                src: Some("s"),
                query: Some("q"),
                probability: Some(1e-7),
                label: Some(0),
                model: "m",
                schema: "s",
                reason: None,
                error: None,
            },
        ];
        for result in &results {
            let mut ours = Vec::new();
            write_event_result(&mut ours, result).unwrap();
            let serde = serde_json::to_vec(result).unwrap();
            assert_eq!(
                String::from_utf8(ours).unwrap(),
                String::from_utf8(serde).unwrap()
            );
        }
    }

    #[tokio::test]
    async fn the_answer_written_in_pieces_is_the_whole_answer_with_its_exact_length() {
        let state = state();
        let mut events = vec![
            r#"{"src": "10.0.0.1", "query": "caf\u00e9.example.com", "rank": 1}"#.to_string(),
            r#"{"src": "10.0.0.1", "query": "x.example.com", "rank": 2}"#.to_string(),
            r#"{"src": 7, "query": "x.example.com"}"#.to_string(),
            r#"{"src": "", "query": ""}"#.to_string(),
            r#""text""#.to_string(),
        ];
        for i in 0..3000 {
            events.push(format!(
                r#"{{"src": "10.0.{}.2", "query": "a{i}.example.com"}}"#,
                i % 7
            ));
        }
        let body = format!(r#"{{"events": [{}]}}"#, events.join(","));
        let scored = score_body(
            &state,
            body.as_bytes(),
            Format::Json,
            None,
            &mut BodyBudget::none(),
            &mut Stages::default(),
        )
        .unwrap();
        let info = &scored.model.info;
        let whole = serde_json::to_vec(&ScoreResponse {
            model: &info.name,
            schema: info.schema.name(),
            threshold: info.threshold,
            events: scored.batch.len(),
            scored: scored.probabilities.iter().flatten().count(),
            errors: scored.batch.errors(),
            results: scored.results(&state),
        })
        .unwrap();
        assert_eq!(scored.len, whole.len());
        let mut answer = AnswerBody {
            scored,
            state: state.clone(),
            written: 0,
            next: None,
            finished: false,
            handed_over: Instant::now(),
            _budget: BodyBudget::none(),
            _release: None,
        };
        assert_eq!(
            http_body::Body::size_hint(&answer).exact(),
            Some(whole.len() as u64)
        );
        let mut pieces = Vec::new();
        while let Some(frame) = answer.frame().await {
            pieces.push(frame.unwrap().into_data().unwrap());
        }
        assert!(pieces.len() > 3, "{} pieces", pieces.len());
        assert!(pieces.iter().all(|p| p.len() < PIECE_BYTES + 1024));
        assert_eq!(pieces.concat(), whole);
        let answer: serde_json::Value = serde_json::from_slice(&whole).unwrap();
        assert_eq!(answer["results"][0]["query"], "café.example.com");
        assert_eq!(answer["results"][1]["scored"], false);
        assert_eq!(answer["results"][2]["error"]["code"], "invalid_event");
        assert_eq!(answer["results"][3]["src"], "");
        assert_eq!(answer["errors"], 2);
    }

    #[test]
    fn the_results_held_for_an_answer_are_a_fraction_of_it() {
        let state = state();
        let events: Vec<String> = (0..20_000)
            .map(|i| format!(r#"{{"src":"{}","query":"{}"}}"#, i % 10, i % 10))
            .collect();
        let body = events.join("\n");
        let scored = score_body(
            &state,
            body.as_bytes(),
            Format::Ndjson,
            None,
            &mut BodyBudget::none(),
            &mut Stages::default(),
        )
        .unwrap();
        let held = scored.batch.held_bytes() + scored.probabilities.capacity() * 8;
        // Tiny events: each result is over 150 bytes of answer, held in about 26.
        assert!(
            held * 4 < scored.len,
            "{held} held for {} bytes",
            scored.len
        );
    }
}
