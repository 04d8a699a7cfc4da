//! `/apply` (and a `/fit` without a label): score the table with the named model, within the
//! answer's room in the budget of bodies in flight.

use std::time::Instant;

use super::{skipped_note, table_refusal, unknown_model, Stages};
use crate::dsdl::envelope::Options;
use crate::dsdl::results::{json_results, EscapedResults, Predictions, SuppressionCheck};
use crate::dsdl::table::{Table, TableError};
use crate::engine::scoring;
use crate::engine::suppress::Suppressions;
use crate::history::Observation;
use crate::http::body::BodyBudget;
use crate::http::state::AppState;
use crate::model::Model;

/// Scores the table `read_table` reads (of a CSV of `csv_len` bytes; told whether to keep the
/// `_time` cells, which only a model whose events are remembered needs) with the model the
/// options name. Returns the results CSV (JSON-escaped, ready for the response body) and a note on rows
/// that were not scored (empty when all were usable); `None` when `read_table` gave up (a
/// JSON-escaped CSV that needs unescaping).
pub(super) fn apply_with<'a>(
    state: &AppState,
    options: &Options,
    csv_len: usize,
    budget: &mut BodyBudget,
    stages: &mut Stages,
    read_table: impl FnOnce(bool) -> Result<Option<Table<'a>>, TableError>,
) -> Option<Result<(EscapedResults, String), String>> {
    let registry = &state.registry;
    let Some(model) = registry.resolve(&options.model_name, options.algo.as_deref()) else {
        return Some(Err(unknown_model(registry, options)));
    };
    let started = Instant::now();
    let table = read_table(state.history.remembers(model.info.schema));
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
    let prior = |keys| prior_of(state, &table, keys);
    let prior = state
        .history
        .remembers(model.info.schema)
        .then_some(&prior as scoring::PriorLookup);
    // Remembered while the answer is written, after the scoring, whose features and network
    // memory are then freed: alongside the scoring, the two would peak together (measured: a
    // 16 MiB request's peak rose by a third). Before the answer leaves, so the client's next
    // request sees these events.
    let results = score_table(
        &model,
        &state.suppressions,
        &table,
        csv_len,
        prior,
        stages,
        || remember(state, &model, &table),
    );
    Some(results.map(|results| (results, skipped_note(&table))))
}

/// Hands the table's events to the history, for models of our own schemas (the ESCU model's
/// features stay per request, as published). Every row with a source and a name counts, at its
/// `_time` when the CSV has one (a re-run search then counts each event once), else now.
fn remember(state: &AppState, model: &Model, table: &Table) {
    if !state.history.remembers(model.info.schema) {
        return;
    }
    let now = crate::history::unix_now();
    let observations: Vec<Observation> = (0..table.len())
        .map(|row| Observation {
            src: table.src(row),
            query: table.query(row),
            time: crate::history::parse_time(table.time_text(row)).unwrap_or(now),
        })
        .collect();
    state.history.record(&observations, now);
}

/// What the history remembered of `keys` before the table's earliest event (its `_time`, else
/// now): a re-sent window does not see itself.
fn prior_of(
    state: &AppState,
    table: &Table,
    keys: crate::features::prior::PriorKeys,
) -> crate::features::prior::Prior {
    let now = crate::history::unix_now();
    let before = (0..table.len())
        .filter_map(|row| crate::history::parse_time(table.time_text(row)))
        .min()
        .unwrap_or(now)
        .min(now);
    state.history.prior(keys, before, now)
}

/// Scores every usable row of `table` with `model` (with `prior`, what was remembered before
/// it, for a schema with long-window features), then applies the allowlist and mutes;
/// returns the results CSV, JSON-escaped. `alongside` runs on the other core while the results
/// of a large table are written (after them for a small one).
pub(super) fn score_table(
    model: &Model,
    suppressions: &Suppressions,
    table: &Table,
    csv_len: usize,
    prior: Option<scoring::PriorLookup<'_>>,
    stages: &mut Stages,
    alongside: impl FnOnce() + Send,
) -> Result<EscapedResults, String> {
    let started = Instant::now();
    let (rows, scored, scored_table_rows) = table.feature_rows();
    let listed = started.elapsed();
    let scores = match scoring::score_with_prior(model, &rows, &scored, prior) {
        Ok(scores) => scores,
        Err(e) => {
            // The events happened whether or not the model could score them.
            alongside();
            return Err(e.to_string());
        }
    };
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
    crate::http::metrics::record_scoring(
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
    let write = || {
        json_results(
            table,
            &model.info.target,
            predictions,
            model.info.threshold,
            capacity,
        )
    };
    let split = crate::util::pool::worth_splitting(table.len());
    let (results, ()) = crate::util::pool::join(split, write, alongside);
    stages.encode = started.elapsed();
    Ok(results)
}

/// The most bytes the results of `table` (of a CSV of `csv_len` bytes, `scored` rows scored)
/// take, JSON-escaped: the CSV text comes back with every line end escaped and two prediction
/// cells per row.
pub(super) fn answer_capacity(
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
pub(super) const ANSWER_SLACK_BYTES: usize = (1 << 20) + (16 << 10);
