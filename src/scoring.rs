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

pub fn score(model: &Model, rows: &[Row<'_>], scored: &[usize]) -> Result<Scores, ScoreError> {
    let t0 = Instant::now();
    let features = model.info.schema.compute(rows, scored);
    let t1 = Instant::now();
    let probabilities = model
        .mlp
        .predict(&features.values, features.rows)
        .map_err(|e| ScoreError {
            model: model.info.name.clone(),
            detail: e.to_string(),
        })?;
    Ok(Scores {
        probabilities,
        feature_time: t1 - t0,
        inference_time: t1.elapsed(),
    })
}
