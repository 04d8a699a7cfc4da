//! Detection-quality measures used in training reports, computed like `eval/evaluate.py`.

/// ROC AUC: the probability that a random positive outscores a random negative (ties count half).
pub fn roc_auc(scores: &[f32], labels: &[f32]) -> f64 {
    let mut pairs: Vec<(f32, bool)> = scores
        .iter()
        .copied()
        .zip(labels.iter().map(|&y| y == 1.0))
        .collect();
    pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let positives = pairs.iter().filter(|p| p.1).count() as f64;
    let negatives = pairs.len() as f64 - positives;
    if positives == 0.0 || negatives == 0.0 {
        return f64::NAN;
    }
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < pairs.len() {
        let mut j = i;
        while j < pairs.len() && pairs[j].0 == pairs[i].0 {
            j += 1;
        }
        let average_rank = (i + j + 1) as f64 / 2.0;
        rank_sum += average_rank * pairs[i..j].iter().filter(|p| p.1).count() as f64;
        i = j;
    }
    (rank_sum - positives * (positives + 1.0) / 2.0) / (positives * negatives)
}

/// True-positive rate with the threshold set so the false-positive rate stays at or under
/// `max_fpr` (scores strictly above the threshold alert), and that threshold.
pub fn tpr_at_fpr(scores: &[f32], labels: &[f32], max_fpr: f64) -> (f64, f32) {
    let mut negatives: Vec<f32> = scores
        .iter()
        .zip(labels)
        .filter(|(_, &y)| y != 1.0)
        .map(|(&s, _)| s)
        .collect();
    negatives.sort_by(|a, b| b.total_cmp(a));
    let k = (max_fpr * negatives.len() as f64).floor() as usize;
    let threshold = negatives.get(k).copied().unwrap_or(f32::NEG_INFINITY);
    let positives: Vec<f32> = scores
        .iter()
        .zip(labels)
        .filter(|(_, &y)| y == 1.0)
        .map(|(&s, _)| s)
        .collect();
    let hits = positives.iter().filter(|&&s| s > threshold).count();
    (hits as f64 / positives.len().max(1) as f64, threshold)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_and_tpr_match_hand_counts() {
        let scores = [0.1, 0.4, 0.35, 0.8];
        let labels = [0.0, 0.0, 1.0, 1.0];
        assert!((roc_auc(&scores, &labels) - 0.75).abs() < 1e-12);
        assert_eq!(roc_auc(&[0.5, 0.5], &[0.0, 1.0]), 0.5);
        let (tpr, thr) = tpr_at_fpr(&scores, &labels, 0.0);
        assert_eq!((tpr, thr), (0.5, 0.4));
    }
}
