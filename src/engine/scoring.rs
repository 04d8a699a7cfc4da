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

/// Most scored rows per forward chunk: a batch is cut into equal chunks of at most this many,
/// and each chunk into the forward pass's blocks ([`crate::model::mlp::block_lengths`]) as
/// [`crate::model::Mlp::predict`] would cut it, so a row's probability has the same bits
/// however the blocks are scheduled.
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
///
/// Each block of the forward pass (about 256 rows) gets its features and goes through the
/// network at once, on the rayon pool for a large batch: the block's features (about 100 KiB)
/// are read back from the core's cache, where each chunk of up to 16,384 rows used to have all
/// its features written first (5.6 MB of fresh memory for the ESCU model) and read again.
pub fn score_prepared(
    model: &Model,
    prepared: &Prepared,
    rows: &[Row<'_>],
    scored: &[usize],
) -> Result<Scores, ScoreError> {
    use rayon::prelude::*;
    let started = Instant::now();
    let blocks = forward_blocks(scored);
    let score_block = |block: &[usize]| {
        let t1 = Instant::now();
        let features = prepared.features(rows, block);
        let t2 = Instant::now();
        let p = model
            .mlp
            .predict_owned(features.values, features.rows)
            .map_err(|e| ScoreError {
                model: model.info.name.clone(),
                detail: e.to_string(),
            })?;
        Ok::<_, ScoreError>((p, t2 - t1, t2.elapsed()))
    };
    let scored_blocks: Vec<_> = if crate::util::pool::worth_splitting(scored.len()) {
        blocks.par_iter().map(|block| score_block(block)).collect()
    } else {
        blocks.iter().map(|block| score_block(block)).collect()
    };
    let mut probabilities = Vec::with_capacity(scored.len());
    let (mut features_busy, mut forward_busy) = (Duration::ZERO, Duration::ZERO);
    for block in scored_blocks {
        let (p, features, forward) = block?;
        probabilities.extend(p);
        features_busy += features;
        forward_busy += forward;
    }
    // The blocks may have run on several threads at once: the time taken is shared between
    // the two stages in proportion to the time spent on each.
    let elapsed = started.elapsed();
    let busy = (features_busy + forward_busy).as_secs_f64();
    let share = if busy > 0.0 {
        forward_busy.as_secs_f64() / busy
    } else {
        0.0
    };
    let inference_time = elapsed.mul_f64(share);
    Ok(Scores {
        probabilities,
        feature_time: elapsed.saturating_sub(inference_time),
        inference_time,
    })
}

/// The scored rows' forward blocks, in order: equal chunks of at most [`FORWARD_CHUNK_ROWS`],
/// each cut as the network's forward pass cuts a batch.
fn forward_blocks(scored: &[usize]) -> Vec<&[usize]> {
    let chunks = scored.len().div_ceil(FORWARD_CHUNK_ROWS).max(1);
    let chunk_rows = scored.len().div_ceil(chunks).max(1);
    let mut blocks = Vec::new();
    for chunk in scored.chunks(chunk_rows) {
        let mut rest = chunk;
        for len in
            crate::model::mlp::block_lengths(chunk.len(), crate::model::mlp::DIRECT_BLOCK_ROWS)
        {
            let (block, after) = rest.split_at(len);
            blocks.push(block);
            rest = after;
        }
    }
    blocks
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dsdl::table::Table;

    /// Features and forward pass block by block give every row the bits it had when each
    /// chunk's feature matrix went through the network whole, for both kinds of schema.
    #[test]
    fn block_by_block_scores_are_the_whole_chunks_bits() {
        let csv = crate::data::synth::dsdl_csv(2 * FORWARD_CHUNK_ROWS + 5_000, 42);
        let table = Table::parse(&csv).unwrap();
        let (rows, _, _) = table.feature_rows();
        // Every row scored: three chunks, the last one shorter.
        let scored: Vec<usize> = (0..rows.len()).collect();
        let escu = crate::model::convert::convert(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!(
                "tests/fixtures/escu/{}.tar.gz",
                crate::model::convert::ESCU_MODEL_NAME
            )),
            None,
        )
        .unwrap();
        let escu = Model::from_bytes(&escu.bytes, "escu").unwrap();
        // Also every third row (scattered, one chunk), a batch under the size that splits across
        // the cores, one of a few rows (candle's path) and none.
        let every_third: Vec<usize> = (0..rows.len()).step_by(3).collect();
        let batches: [&[usize]; 5] = [
            &scored,
            &every_third,
            &every_third[..3_000],
            &every_third[..10],
            &[],
        ];
        for model in [crate::model::default_model().unwrap(), escu] {
            let prepared = model.info.schema.prepare(&rows);
            for batch in batches {
                let got = score_prepared(&model, &prepared, &rows, batch)
                    .unwrap()
                    .probabilities;
                let chunks = batch.len().div_ceil(FORWARD_CHUNK_ROWS).max(1);
                let mut expected = Vec::new();
                for chunk in batch.chunks(batch.len().div_ceil(chunks).max(1)) {
                    let features = prepared.features(&rows, chunk);
                    expected.extend(model.mlp.predict(&features.values, features.rows).unwrap());
                }
                assert_eq!(got.len(), batch.len());
                let differing = got
                    .iter()
                    .zip(&expected)
                    .filter(|(a, b)| a.to_bits() != b.to_bits())
                    .count();
                assert_eq!(differing, 0, "{}, {} rows", model.info.name, batch.len());
                // Scores that vary, so that a constant answer could not pass.
                if batch.len() > 100 {
                    assert!(expected.iter().any(|&p| p != expected[0]));
                }
            }
        }
    }
}
