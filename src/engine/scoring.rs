//! The scoring pipeline shared by every API: rows -> features (the model's schema) -> one batched
//! forward pass -> one probability per scored row.

use std::time::{Duration, Instant};

use crate::features::prior::{Prior, PriorKeys};
use crate::features::{Prepared, Row};
use crate::model::Model;

/// Asks what was remembered before a request of the pairs and sources its features name (a
/// schema with long-window features asks once, after its per-request pass).
pub type PriorLookup<'a> = &'a dyn Fn(PriorKeys) -> Prior;

/// Probabilities for the rows at `scored` (indices into `rows`), plus where the time went.
pub struct Scores {
    pub probabilities: Vec<f32>,
    pub feature_time: Duration,
    pub inference_time: Duration,
}

#[derive(Debug, thiserror::Error)]
#[error("the model `{model}` failed to run: {detail}")]
pub struct ScoreError {
    pub model: String,
    pub detail: String,
}

/// Most scored rows per forward pass (a batch is cut into equal chunks of at most this many):
/// bounds the memory of features and activations (about 2 KiB a
/// row) whatever the request size, at no measurable cost in speed.
pub const FORWARD_CHUNK_ROWS: usize = 16_384;

/// [`score_with_prior`] with nothing remembered before the rows.
pub fn score(model: &Model, rows: &[Row<'_>], scored: &[usize]) -> Result<Scores, ScoreError> {
    score_with_prior(model, rows, scored, None)
}

/// Probabilities for the rows at `scored`; a model whose schema has long-window features gets
/// them from `prior` (all zeros without it: the rows alone, as with the history off).
pub fn score_with_prior(
    model: &Model,
    rows: &[Row<'_>],
    scored: &[usize],
    prior: Option<PriorLookup<'_>>,
) -> Result<Scores, ScoreError> {
    let t0 = Instant::now();
    let mut prepared = model.info.schema.prepare(rows);
    if let (Some(lookup), Some(keys)) = (prior, prepared.prior_keys()) {
        prepared.apply_prior(&lookup(keys));
    }
    let mut scores = score_prepared(model, &prepared, rows, scored)?;
    // Everything but the network: the per-request pass, the prior and the feature rows.
    scores.feature_time = t0.elapsed().saturating_sub(scores.inference_time);
    Ok(scores)
}

/// Probabilities for the rows at `scored` from features already prepared for `rows`.
pub fn score_prepared(
    model: &Model,
    prepared: &Prepared,
    rows: &[Row<'_>],
    scored: &[usize],
) -> Result<Scores, ScoreError> {
    let mut feature_time = Duration::ZERO;
    let mut inference_time = Duration::ZERO;
    let mut probabilities = Vec::with_capacity(scored.len());
    // Chunks of equal size: a short last chunk would run the network at a worse shape.
    let chunks = scored.len().div_ceil(FORWARD_CHUNK_ROWS).max(1);
    let chunk_rows = scored.len().div_ceil(chunks).max(1);
    for chunk in scored.chunks(chunk_rows) {
        let t1 = Instant::now();
        let features = prepared.features(rows, chunk);
        let t2 = Instant::now();
        let p = model
            .mlp
            .predict_owned(features.values, features.rows)
            .map_err(|e| ScoreError {
                model: model.info.name.clone(),
                detail: e.to_string(),
            })?;
        probabilities.extend(p);
        feature_time += t2 - t1;
        inference_time += t2.elapsed();
    }
    Ok(Scores {
        probabilities,
        feature_time,
        inference_time,
    })
}
