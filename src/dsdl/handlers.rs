//! What `/apply`, `/fit`, `/summary`, `/` and `/compute` do. The HTTP plumbing (body limit,
//! running off the reactor) is here; parsing and scoring are plain functions below it.

use std::fmt::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::envelope::{self, Envelope, Options};
use super::results::{json_results, EscapedResults, Predictions, SuppressionCheck};
use super::table::{Table, TableError};
use super::{DsdlResponse, Endpoint};
use crate::body::{read_body_budgeted, BodyBudget, BodyError};
use crate::model::train::TrainError;
use crate::model::{Model, ModelInfo, Registry};
use crate::state::{AppState, WorkerPanicked};
use crate::suppress::Suppressions;
use crate::training::{fit_labelled, labelled_from_table, FitPlan};
use crate::{scoring, validate_name};

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
                    tracing::warn!(
                        endpoint = endpoint.path(),
                        limit_secs = limit.as_secs_f64(),
                        "request body upload timed out"
                    );
                    let what = format!(
                        "the request body did not arrive within {} s (--request-timeout-secs, DNSEXFIL_REQUEST_TIMEOUT_SECS); send it at once, or fewer rows",
                        limit.as_secs_f64()
                    );
                    return (
                        StatusCode::SERVICE_UNAVAILABLE,
                        DsdlResponse::error(endpoint, what),
                    )
                        .into_response();
                }
            }
        }
        Endpoint::Apply => read.await,
    };
    let (bytes, budget) = match read {
        Ok(b) => b,
        Err(BodyError::Busy { budget, received }) => {
            tracing::warn!(
                endpoint = endpoint.path(),
                received_bytes = received,
                budget_bytes = budget,
                "request refused: the bodies in flight take the budget"
            );
            let refusal = DsdlResponse::error(endpoint, crate::body::busy_message(budget));
            return crate::body::busy_response(refusal.into_response());
        }
        Err(BodyError::TooLarge { limit, received }) => {
            // Splunk shows the message only to the user who ran the search: an operator sees a
            // detection switched off by the limit here.
            tracing::warn!(
                endpoint = endpoint.path(),
                received_bytes = received,
                limit_bytes = limit,
                "request refused: the body exceeds --max-body-mb"
            );
            return DsdlResponse::error(
                endpoint,
                format!(
                    "the request body ({} MiB or more) exceeds the {} MiB limit; raise --max-body-mb (DNSEXFIL_MAX_BODY_MB) or send fewer rows per request",
                    received >> 20,
                    limit >> 20
                ),
            )
            .into_response();
        }
        Err(BodyError::Read(e)) => {
            let what = format!("cannot read the request body: {e}");
            return (StatusCode::BAD_REQUEST, DsdlResponse::error(endpoint, what)).into_response();
        }
    };
    let read_time = started.elapsed();
    // Small requests run on the async worker, which must not wait for a scan of the model
    // store (a slow one would hold up every connection it serves): their model is looked for
    // here, awaited. Larger ones look from their blocking thread.
    if endpoint == Endpoint::Apply && crate::state::runs_on_async_worker(bytes.len()) {
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
                return crate::body::busy_response(resp.into_response());
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
            // Where a request's time went, for benches/http_roundtrip.sh.
            tracing::debug!(
                endpoint = endpoint.path(),
                body_bytes = body_len,
                read_ms = ms(read_time),
                decode_ms = ms(stages.decode),
                features_ms = ms(stages.features),
                forward_ms = ms(stages.forward),
                encode_ms = ms(encode),
                "apply stages"
            );
            let body = if tracing::enabled!(tracing::Level::DEBUG) {
                body.timed()
            } else {
                body
            };
            // The answer stays counted in the budget (it was, before it was made) until sent.
            let mut resp = crate::limits::holding_until_sent(super::json_response(body), budget);
            resp.extensions_mut().insert(crate::limits::Budgeted);
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

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Where a request's CPU time went (see [`process_within`]).
#[derive(Debug, Default, Clone, Copy)]
pub struct Stages {
    /// The envelope and the CSV table, whichever way they were read.
    pub decode: Duration,
    pub features: Duration,
    pub forward: Duration,
    /// The results, written into the response body.
    pub encode: Duration,
}

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
                    apply_with(state, &options, escaped.len(), budget, stages, || {
                        Table::parse_json_escaped(escaped, state.config.max_rows)
                    })
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
    let outcome = apply_with(state, &options, csv_text.len(), budget, stages, || {
        Table::parse_limited(csv_text, state.config.max_rows).map(Some)
    });
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

/// Scores the table `read_table` reads (of a CSV of `csv_len` bytes) with the model the options
/// name. Returns the results CSV (JSON-escaped, ready for the response body) and a note on rows
/// that were not scored (empty when all were usable); `None` when `read_table` gave up (a
/// JSON-escaped CSV that needs unescaping).
fn apply_with<'a>(
    state: &AppState,
    options: &Options,
    csv_len: usize,
    budget: &mut BodyBudget,
    stages: &mut Stages,
    read_table: impl FnOnce() -> Result<Option<Table<'a>>, TableError>,
) -> Option<Result<(EscapedResults, String), String>> {
    let registry = &state.registry;
    let Some(model) = registry.resolve(&options.model_name, options.algo.as_deref()) else {
        return Some(Err(unknown_model(registry, options)));
    };
    let started = Instant::now();
    let table = read_table();
    stages.decode += started.elapsed();
    let table = match table {
        Ok(Some(table)) => table,
        Ok(None) => return None,
        Err(e) => return Some(Err(table_refusal(e))),
    };
    // Every row counted as scored: an upper bound, known before the scoring.
    let needed =
        answer_capacity(&state.suppressions, &table, table.len(), csv_len) + ANSWER_SLACK_BYTES;
    let room = budget.grow_to(needed, state);
    if let Some(refusal) = room.refusal(needed, state.config.limits.max_body_bytes_in_flight) {
        return Some(Err(refusal));
    }
    let results = score_table(&model, &state.suppressions, &table, csv_len, stages);
    Some(results.map(|results| (results, skipped_note(&table))))
}

/// Scores every usable row of `table` with `model`, then applies the allowlist and mutes;
/// returns the results CSV, JSON-escaped.
fn score_table(
    model: &Model,
    suppressions: &Suppressions,
    table: &Table,
    csv_len: usize,
    stages: &mut Stages,
) -> Result<EscapedResults, String> {
    let started = Instant::now();
    let (rows, scored, scored_table_rows) = table.feature_rows();
    let listed = started.elapsed();
    let scores = scoring::score(model, &rows, &scored).map_err(|e| e.to_string())?;
    stages.features = listed + scores.feature_time;
    stages.forward = scores.inference_time;
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
    // The allowlist and mutes are checked as each scored row's result is written; the column
    // exists whenever suppression is configured.
    let suppressed = |row: usize| suppressions.reason(table.src(row), table.query(row));
    let predictions = Predictions {
        rows: &scored_table_rows,
        probabilities: &scores.probabilities,
        suppressed: (!suppressions.is_empty()).then_some(&suppressed as &SuppressionCheck),
    };
    let capacity = answer_capacity(suppressions, table, scored.len(), csv_len);
    let started = Instant::now();
    let results = json_results(
        table,
        &model.info.target,
        predictions,
        model.info.threshold,
        capacity,
    );
    stages.encode = started.elapsed();
    Ok(results)
}

/// The most bytes the results of `table` (of a CSV of `csv_len` bytes, `scored` rows scored)
/// take, JSON-escaped: the CSV text comes back with every line end escaped and two prediction
/// cells per row.
fn answer_capacity(
    suppressions: &Suppressions,
    table: &Table,
    scored: usize,
    csv_len: usize,
) -> usize {
    let mut capacity = csv_len + table.len() * 4 + scored * 26 + 256;
    if !suppressions.is_empty() {
        // A comma per row, and room for a reason on every scored row (capacity that is never
        // written to costs no memory).
        capacity += table.len() + scored * (suppressions.longest_reason() + 2);
    }
    capacity
}

/// Room counted for an answer beyond its results: its message and framing, a copy of the piece
/// being sent (`limits`).
const ANSWER_SLACK_BYTES: usize = (1 << 20) + (16 << 10);

/// `/fit` with a label field: trains as the request says, saves the model atomically as
/// `<algo>_<model_name>`, serves it from then on, and answers with its scores of the training
/// rows (what the stock container's fit-then-apply returns).
fn fit_and_apply(
    state: &AppState,
    envelope: &Envelope,
    options: &Options,
    target: &str,
    budget: &mut BodyBudget,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
) -> DsdlResponse {
    let fail = |what: String| DsdlResponse::error(Endpoint::Fit, what);
    if let Err(msg) = validate_name(target) {
        return fail(format!("target variable: {msg}"));
    }
    if ["src", "query", "rank", "_time"].contains(&target) {
        return fail(format!(
            "`{target}` is an input field, not a label; name the 0/1 label field before `from`: `| fit MLTKContainer algo=dnsexfil is_exfiltration from src query rank _time into app:NAME`"
        ));
    }
    let Some(store) = &state.config.model_store else {
        return fail("this service has no model store to save fitted models in; start it with --model-dir DIR (DNSEXFIL_MODEL_DIR)".into());
    };
    let name = match &options.algo {
        Some(algo) => format!("{algo}_{}", options.model_name),
        None => options.model_name.clone(),
    };
    if let Err(msg) = validate_name(&name) {
        return fail(format!(
            "the fitted model's name `<algo>_<model_name>`: {msg}"
        ));
    }
    if state.registry.is_pinned(&name) {
        return fail(format!(
            "`{name}` is a model this service was started with (built in or given with --model); a fit would replace it for every search that uses it. Fit into another name (`into app:OTHER`), adding base={name} to start from its weights"
        ));
    }
    // `apply M` looks for `<algo>_M` before `M` itself, so a fit saved as `<algo>_M` would take
    // the place of a model M the service was started with, for the searches that use M (the
    // ESCU detection applies its model with algo = model_name), under other output columns.
    let model_name = &options.model_name;
    if name != *model_name && state.registry.is_pinned(model_name) {
        return fail(format!(
            "`into app:{model_name}`: `{model_name}` is a model this service was started with (built in or given with --model); the fit would be saved as `{name}`, which `apply {model_name}` finds first, so it would replace `{model_name}` for every search that uses it. Fit into another name (`into app:OTHER`); algo={model_name} or base={model_name} starts from its weights"
        ));
    }
    // The same through a longer model name: `algo=detect` into `app:<x>_detect_...` saves
    // `detect_<x>_detect_...`, which the stock lookup of `apply detect_...` (algo = model_name)
    // finds first.
    if let Some(pinned) = state.registry.shadowed_pinned(&name) {
        return fail(format!(
            "the fit would be saved as `{name}`, which ends in `_{pinned}`: `apply {pinned}` looks for `<algo>_{pinned}` first (the stock container and earlier versions of this service do), so it could replace `{pinned}`, a model this service was started with, for every search that uses it. Fit into a name that does not end in `_{pinned}`"
        ));
    }
    let plan = match FitPlan::from_request(
        options.algo.as_deref(),
        &options.model_name,
        &envelope.params(),
        &state.registry,
    ) {
        Ok(p) => p,
        Err(msg) => return fail(msg),
    };
    // One fit reads its table and trains at a time; the others are told at once, before they
    // take any more memory. The compute permit goes back: training may take minutes.
    let Ok(_slot) = state.fit_slot.try_acquire() else {
        return fail("another fit is training right now; run this fit again when it has finished (fits run one at a time)".into());
    };
    drop(permit);
    let table = match Table::parse_with_target(&envelope.data, state.config.max_rows, Some(target))
    {
        Ok(t) => t,
        Err(e) => return fail(table_refusal(e)),
    };
    if table.len() > state.config.max_fit_rows {
        tracing::warn!(
            rows = table.len(),
            limit_rows = state.config.max_fit_rows,
            "request refused: more rows than --max-fit-rows"
        );
        return fail(format!(
            "the fit has {} rows, more than the {} a fit may train on; sample the data first (e.g. `| sample 100000`) or raise --max-fit-rows (DNSEXFIL_MAX_FIT_ROWS)",
            table.len(),
            state.config.max_fit_rows
        ));
    }
    // Before training, not after: a fit that cannot be saved must not train for minutes first.
    if let Err(problem) = state.check_store() {
        return fail(format!(
            "{problem} ({}); nothing was trained: make the model store (--model-dir, DNSEXFIL_MODEL_DIR) a writable directory",
            store.dir().display()
        ));
    }
    // The answer (its scores of every training row) is counted before training, not after.
    let needed = answer_capacity(
        &state.suppressions,
        &table,
        table.len(),
        envelope.data.len(),
    ) + ANSWER_SLACK_BYTES;
    let room = budget.grow_to(needed, state);
    if let Some(refusal) = room.refusal(needed, state.config.limits.max_body_bytes_in_flight) {
        return fail(refusal);
    }
    let (labelled, windowing) =
        match labelled_from_table(&table, plan.schema, target, plan.window_secs) {
            Ok(l) => l,
            Err(msg) => return fail(msg),
        };
    let positives = labelled.data.y.iter().filter(|&&y| y == 1.0).count();
    let sources = labelled
        .srcs
        .iter()
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    let started = std::time::Instant::now();
    let info = ModelInfo {
        name: name.clone(),
        schema: plan.schema,
        target: target.to_string(),
        threshold: plan.threshold,
        source_file: format!("/fit of app:{}", options.model_name),
        source_sha256: crate::model::sha256_hex(envelope.data.as_bytes()),
        created_by: match &plan.base {
            Some(base) => format!(
                "dnsexfil {} /fit, fine-tuned from {} (sha256 {})",
                env!("CARGO_PKG_VERSION"),
                base.info.name,
                base.file_sha256
            ),
            None => format!("dnsexfil {} /fit", env!("CARGO_PKG_VERSION")),
        },
    };
    let mut plan = plan;
    plan.params.time_limit = Some(state.config.fit_time_limit);
    plan.params.stop_when = Some(&crate::state::STOPPING);
    tracing::info!(model = %name, schema = %plan.schema, rows = labelled.data.len(), positives, sources,
        base = plan.base.as_ref().map(|b| b.info.name.as_str()), "fit started");
    let fitted = match fit_labelled(&labelled, &plan, info, |e| {
        tracing::info!(model = %name, epoch = e.epoch, train_loss = e.train_loss,
            validation_loss = e.val_loss, validation_auc = e.val_auc, "fit epoch");
    }) {
        Ok(f) => f,
        Err(e @ TrainError::TimeLimit(_)) => {
            return fail(format!(
                "{e} (--fit-time-limit-secs, DNSEXFIL_FIT_TIME_LIMIT_SECS); nothing was saved and `{name}` is unchanged"
            ))
        }
        Err(e @ TrainError::Stopped) => {
            return fail(format!(
                "{e}; nothing was saved and `{name}` is unchanged: run the fit again once the service is back"
            ))
        }
        Err(e) => return fail(format!("{e}; nothing was saved")),
    };
    let path = match store.save(&name, &fitted.bytes) {
        Ok(p) => p,
        Err(e) => {
            return fail(format!(
                "the model trained but cannot be saved in {}: {e}; check that the model store is writable",
                store.dir().display()
            ))
        }
    };
    // From here on requests get the new model; those in flight finish on the one they hold.
    state.registry.remember(&path, None);
    let model = state.registry.insert(fitted.model);
    tracing::info!(model = %name, file = %path.display(), sha256 = %model.file_sha256,
        seconds = started.elapsed().as_secs_f64(), "fit saved and serving");
    let results = match score_table(
        &model,
        &state.suppressions,
        &table,
        envelope.data.len(),
        &mut Stages::default(),
    ) {
        Ok(r) => r,
        Err(msg) => return fail(msg),
    };
    let report = &fitted.report;
    DsdlResponse {
        status: "success",
        message: format!(
            "/fit done successfully; model `{name}` ({}, {}) trained on {} rank-1 rows ({positives} labelled 1) from {sources} sources {} in {:.1} s: best epoch {} of {}, validation ROC AUC {:.4} and TPR {:.1}% at 0.1% FPR on {}; saved and serving{}",
            plan.schema,
            match &plan.base {
                Some(b) => format!("fine-tuned from `{}`", b.info.name),
                None => "from scratch".to_string(),
            },
            labelled.data.len(),
            windowing.describe(),
            started.elapsed().as_secs_f64(),
            report.best.epoch,
            report.epochs_run,
            report.best.val_auc,
            fitted.validation_tpr_at_fpr_0_001 * 100.0,
            fitted.split.describe(),
            skipped_note(&table)
        ),
        results: Some(results),
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

/// `mode=stage`: keep the data and its description for a notebook, build nothing.
fn stage(dir: &Path, envelope: &Envelope, options: &Options) -> DsdlResponse {
    // Appended, not `with_extension`: `a.b` and `a.c` are different models.
    let csv_path = dir.join(format!("{}.csv", options.model_name));
    let json_path = dir.join(format!("{}.json", options.model_name));
    // The session key Splunk puts into meta must never reach the disk.
    let meta =
        serde_json::to_vec_pretty(&envelope.meta_without_secrets()).expect("JSON values serialise");
    // Both or neither: a notebook must never find new data beside the old description.
    let written = crate::fsutil::write_pair_atomic(
        (&csv_path, envelope.data.as_bytes()),
        (&json_path, &meta),
    );
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
