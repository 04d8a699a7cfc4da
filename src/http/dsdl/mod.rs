//! The DSDL endpoints. This module reads a request's body within its limits, runs the work off
//! the reactor and dispatches it: `apply.rs` scores, `fit.rs` trains, `stage.rs` keeps data for a
//! notebook, `summary.rs` answers `/summary`, `/` and `/compute`; `response.rs` is the answer.

mod apply;
mod fit;
pub mod response;
pub mod response_body;
mod stage;
pub mod summary;

pub use response::{DsdlResponse, Endpoint};

use std::fmt::Write;
use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};

use apply::apply_with;
use fit::fit_and_apply;
use stage::stage;

use crate::dsdl::envelope::{self, Envelope, Options};
use crate::dsdl::results::EscapedResults;
use crate::dsdl::table::{Table, TableError};
use crate::http::body::{read_body_budgeted, BodyBudget};
use crate::http::refusal::{retry_soon, Flavor, Refusal};
use crate::http::state::{AppState, WorkerPanicked};
use crate::store::Registry;
use crate::util::validate_name;

pub async fn apply(State(state): State<AppState>, body: Body) -> Response {
    handle(state, body, Endpoint::Apply).await
}

pub async fn fit(State(state): State<AppState>, body: Body) -> Response {
    handle(state, body, Endpoint::Fit).await
}

async fn handle(state: AppState, body: Body, endpoint: Endpoint) -> Response {
    let started = Instant::now();
    let read = read_body_budgeted(body, state.config.max_body_bytes, &state);
    let read = match endpoint {
        // `/fit` is exempt from the request time limit for its training, not for its upload: a
        // client trickling a body would otherwise hold its in-flight slot for ever.
        Endpoint::Fit => {
            let limit = state.config.limits.request_timeout;
            match tokio::time::timeout(limit, read).await {
                Ok(read) => read,
                Err(_) => {
                    return Refusal::UploadTimedOut { limit }.answer(Flavor::Dsdl, endpoint.path())
                }
            }
        }
        Endpoint::Apply => read.await,
    };
    let (bytes, budget) = match read {
        Ok(b) => b,
        Err(e) => return Refusal::from(e).answer(Flavor::Dsdl, endpoint.path()),
    };
    let read_time = started.elapsed();
    // Small requests run on the async worker, which must not wait for a scan of the model
    // store (a slow one would hold up every connection it serves): their model is looked for
    // here, awaited. Larger ones look from their blocking thread.
    if endpoint == Endpoint::Apply && crate::http::state::runs_on_async_worker(bytes.len()) {
        if let Some(options) = named_options(&bytes) {
            state
                .look_in_store(&options.model_name, options.algo.as_deref())
                .await;
        }
    }
    // Parsing, features and the forward pass are CPU work: only small requests run on the
    // async worker.
    let worker_state = state.clone();
    let body_len = bytes.len();
    let work = move || {
        let mut budget = budget;
        let mut stages = Stages::default();
        let resp = process_within(&worker_state, bytes, endpoint, &mut budget, &mut stages);
        (resp, budget, stages)
    };
    let outcome = match endpoint {
        Endpoint::Apply => state.run_compute(body_len, work).await,
        // A fit may train for minutes: it takes a compute permit itself only while it reads
        // and scores (`process_within`), and gives it back once it holds the fit slot, which
        // serialises training.
        Endpoint::Fit => AppState::run_uncounted(body_len, work)
            .await
            .map_err(|e| WorkerPanicked(e.to_string())),
    };
    match outcome {
        Ok((resp, budget, stages)) => {
            let budget_bytes = state.config.limits.max_body_bytes_in_flight;
            if let Some(answer_bytes) = budget.refused_answer_bytes() {
                tracing::warn!(
                    endpoint = endpoint.path(),
                    answer_bytes,
                    budget_bytes,
                    "request refused: its answer would take the budget over"
                );
                return retry_soon(resp.into_response());
            }
            if let Some(answer_bytes) = budget.too_large_answer_bytes() {
                tracing::warn!(
                    endpoint = endpoint.path(),
                    answer_bytes,
                    budget_bytes,
                    "request refused: its answer would be larger than the whole budget"
                );
            } else if resp.status == "error" {
                tracing::warn!(endpoint = endpoint.path(), message = %resp.message, "request failed");
            }
            let answered = Instant::now();
            let body = resp.into_body();
            let body_len = body.len();
            let encode = stages.encode + answered.elapsed();
            Stages { encode, ..stages }.log(endpoint.path(), read_time, body_len);
            let body = if tracing::enabled!(tracing::Level::DEBUG) {
                body.timed()
            } else {
                body
            };
            // The answer stays counted in the budget (it was, before it was made) until sent.
            let mut resp =
                crate::http::limits::holding_until_sent(response::json_response(body), budget);
            resp.extensions_mut().insert(crate::http::limits::Budgeted);
            resp
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

pub use crate::http::stages::Stages;

/// One DSDL request, start to finish, on a blocking thread.
pub fn process(state: &AppState, body: &[u8], endpoint: Endpoint) -> DsdlResponse {
    process_within(
        state,
        body,
        endpoint,
        &mut BodyBudget::none(),
        &mut Stages::default(),
    )
}

/// [`process`], counting the answer against `budget` before it is made (when it does not fit,
/// the request is refused, `budget.refused()`, before its scoring or training) and noting where
/// the time went in `stages`. A body it owns is freed as soon as it has been read into its
/// envelope.
fn process_within<B: AsRef<[u8]>>(
    state: &AppState,
    body: B,
    endpoint: Endpoint,
    budget: &mut BodyBudget,
    stages: &mut Stages,
) -> DsdlResponse {
    let started = Instant::now();
    // Every fit takes a compute permit before it reads the envelope (a copy of its data): with
    // the permits, at most as many requests as cores hold more than their body at once. A fit
    // that trains gives it back once it holds the fit slot.
    let mut permit = (endpoint == Endpoint::Fit)
        .then(|| state.compute_permit_blocking())
        .flatten();
    // `/apply` first reads the CSV where it stands in the body, still JSON-escaped: no copy and
    // one pass instead of two. A CSV that needs unescaping (quoted cells, `\u` escapes) is then
    // read the general way, from the start.
    if endpoint == Endpoint::Apply {
        if let Some(envelope) = envelope::parse_keeping_data_escaped(body.as_ref()) {
            let options = match checked_options(&envelope, endpoint) {
                Ok(options) => options,
                Err(response) => return response,
            };
            state.rescan_store_if_missing(&options.model_name, options.algo.as_deref());
            // Errors before the table (an unknown model) are left to the general way too: the
            // data is not yet known to be valid JSON, and invalid JSON is the first thing to say.
            let known = state
                .registry
                .resolve(&options.model_name, options.algo.as_deref())
                .is_some();
            let escaped = envelope.data.0;
            stages.decode = started.elapsed();
            let outcome = known
                .then(|| {
                    apply_with(
                        state,
                        &options,
                        escaped.len(),
                        budget,
                        stages,
                        |keep_time| {
                            // Remembered events are remembered at their `_time`.
                            if keep_time {
                                Table::parse_json_escaped_keeping_time(
                                    escaped,
                                    state.config.max_rows,
                                )
                            } else {
                                Table::parse_json_escaped(escaped, state.config.max_rows)
                            }
                        },
                    )
                })
                .flatten();
            if let Some(outcome) = outcome {
                return answer(endpoint, outcome);
            }
        }
    }
    let envelope = envelope::parse(body.as_ref());
    // The envelope holds its own copy of the data: the body is not needed any more (the largest
    // bodies, names full of escapes, are read this way).
    drop(body);
    let envelope = match envelope {
        Ok(e) => e,
        Err(msg) => return DsdlResponse::error(endpoint, msg),
    };
    // The general way starts over: what the first try spent is counted too.
    stages.decode = started.elapsed();
    let options = match checked_options(&envelope, endpoint) {
        Ok(options) => options,
        Err(response) => return response,
    };
    if endpoint == Endpoint::Fit && options.stage {
        return stage(&state.config.staging_dir, &envelope, &options);
    }
    state.rescan_store_if_missing(&options.model_name, options.algo.as_deref());
    if endpoint == Endpoint::Fit {
        if let Some(target) = envelope.target_variable() {
            return fit_and_apply(state, &envelope, &options, &target, budget, permit.take());
        }
        if state
            .registry
            .resolve(&options.model_name, options.algo.as_deref())
            .is_none()
        {
            return DsdlResponse::error(
                endpoint,
                format!(
                    "training needs a 0/1 label field, named before `from`: `| fit MLTKContainer algo=dnsexfil is_exfiltration from src query rank into app:{}`; without one, `fit` can only apply an already loaded model, and {}",
                    options.model_name,
                    unknown_model(&state.registry, &options)
                ),
            );
        }
    }
    // A `/fit` without a label only scores, under the compute permit it took above like an
    // `/apply` (it runs on a blocking thread without one: a fit may train for minutes).
    let _permit = permit;
    let csv_text = envelope.data.as_str();
    let outcome = apply_with(
        state,
        &options,
        csv_text.len(),
        budget,
        stages,
        |keep_time| {
            if keep_time {
                Table::parse_limited_keeping_time(csv_text, state.config.max_rows).map(Some)
            } else {
                Table::parse_limited(csv_text, state.config.max_rows).map(Some)
            }
        },
    );
    answer(
        endpoint,
        outcome.expect("plain CSV text is always read to the end"),
    )
}

/// The request's options, once the names in them are known to be safe to use.
fn checked_options<D>(envelope: &Envelope<D>, endpoint: Endpoint) -> Result<Options, DsdlResponse> {
    let options = envelope
        .options_summary()
        .map_err(|msg| DsdlResponse::error(endpoint, msg))?;
    if let Err(msg) = validate_name(&options.model_name) {
        return Err(DsdlResponse::error(endpoint, format!("model_name: {msg}")));
    }
    if let Some(algo) = &options.algo {
        if let Err(msg) = validate_name(algo) {
            return Err(DsdlResponse::error(endpoint, format!("algo: {msg}")));
        }
    }
    Ok(options)
}

/// The options of an `/apply` envelope when they are usable, read only to look for its model
/// before the request is processed (which reads them again and names any problem).
fn named_options(body: &[u8]) -> Option<Options> {
    match envelope::parse_keeping_data_escaped(body) {
        Some(envelope) => checked_options(&envelope, Endpoint::Apply).ok(),
        None => checked_options(&envelope::parse(body).ok()?, Endpoint::Apply).ok(),
    }
}

/// What the request is told when its table could not be read. A refusal for its size is also
/// logged with the size and the limit: Splunk shows the message only to the user who ran the
/// search, an operator sees a detection switched off by the limit here.
fn table_refusal(e: TableError) -> String {
    if let TableError::TooManyRows { limit, rows } = &e {
        tracing::warn!(
            rows,
            limit_rows = limit,
            "request refused: more rows than --max-rows"
        );
    }
    e.to_string()
}

/// The response to an apply: its results, or the error.
fn answer(endpoint: Endpoint, outcome: Result<(EscapedResults, String), String>) -> DsdlResponse {
    match outcome {
        Ok((results, notes)) => DsdlResponse {
            status: "success",
            message: format!("{} done successfully{notes}", endpoint.path()),
            results: Some(results),
        },
        Err(msg) => DsdlResponse::error(endpoint, msg),
    }
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
    // The ESCU search sends algo = model_name: each name once.
    let mut seen = std::collections::HashSet::new();
    looked_for.retain(|n| seen.insert(n.clone()));
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
