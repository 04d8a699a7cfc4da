//! The scoring pipeline shared by every API: rows -> features (the model's schema) -> one batched
//! forward pass -> one probability per scored row.

use std::time::{Duration, Instant};

use crate::features::Row;
use crate::model::Model;

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

pub fn score(model: &Model, rows: &[Row<'_>], scored: &[usize]) -> Result<Scores, ScoreError> {
    let t0 = Instant::now();
    let prepared = model.info.schema.prepare(rows);
    let mut feature_time = t0.elapsed();
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
