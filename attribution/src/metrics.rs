//! Benchmark metrics: AUC, recall at n, top-1 accuracy, Spearman rank correlation.

/// Area under the ROC curve of `scores` against `positive` labels (the Mann–Whitney U
/// statistic, ties counting one half). `None` without both positives and negatives.
pub fn auc(scores: &[f64], positive: &[bool]) -> Option<f64> {
    let ranks = average_ranks(scores);
    let pos = positive.iter().filter(|p| **p).count();
    let neg = positive.len() - pos;
    if pos == 0 || neg == 0 {
        return None;
    }
    let rank_sum: f64 = ranks
        .iter()
        .zip(positive)
        .filter(|(_, p)| **p)
        .map(|(r, _)| r)
        .sum();
    let u = rank_sum - (pos * (pos + 1)) as f64 / 2.0;
    Some(u / (pos as f64 * neg as f64))
}

/// Fraction of positives among the `n` best scores (ties broken by position).
pub fn recall_at(scores: &[f64], positive: &[bool], n: usize) -> f64 {
    let pos = positive.iter().filter(|p| **p).count();
    if pos == 0 {
        return 0.0;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    let hit = order.iter().take(n).filter(|&&i| positive[i]).count();
    hit as f64 / pos.min(n).max(1) as f64
}

/// 1-based ranks, ties given their average rank.
pub fn average_ranks(x: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..x.len()).collect();
    order.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let mut ranks = vec![0.0; x.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && x[order[j + 1]] == x[order[i]] {
            j += 1;
        }
        let r = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            ranks[k] = r;
        }
        i = j + 1;
    }
    ranks
}

/// Spearman's rank correlation (Pearson on average ranks); `None` when either side is
/// constant or the lengths differ.
pub fn spearman(a: &[f64], b: &[f64]) -> Option<f64> {
    if a.len() != b.len() || a.len() < 2 {
        return None;
    }
    let (ra, rb) = (average_ranks(a), average_ranks(b));
    let n = a.len() as f64;
    let (ma, mb) = (ra.iter().sum::<f64>() / n, rb.iter().sum::<f64>() / n);
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (x, y) in ra.iter().zip(&rb) {
        sab += (x - ma) * (y - mb);
        saa += (x - ma) * (x - ma);
        sbb += (y - mb) * (y - mb);
    }
    if saa == 0.0 || sbb == 0.0 {
        return None;
    }
    Some(sab / (saa * sbb).sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_perfect_reversed_and_ties() {
        let pos = [true, true, false, false];
        assert_eq!(auc(&[4.0, 3.0, 2.0, 1.0], &pos), Some(1.0));
        assert_eq!(auc(&[1.0, 2.0, 3.0, 4.0], &pos), Some(0.0));
        assert_eq!(auc(&[1.0, 1.0, 1.0, 1.0], &pos), Some(0.5));
        // one positive above one negative and below the other: 0.5 + mix
        assert_eq!(auc(&[3.0, 1.0, 2.0, 0.0], &pos), Some(0.75));
        assert_eq!(auc(&[1.0], &[true]), None);
    }

    #[test]
    fn recall_and_spearman() {
        let pos = [true, false, true, false];
        assert_eq!(recall_at(&[4.0, 3.0, 2.0, 1.0], &pos, 2), 0.5);
        assert_eq!(recall_at(&[4.0, 1.0, 3.0, 1.0], &pos, 2), 1.0);
        assert!((spearman(&[1.0, 2.0, 3.0], &[10.0, 20.0, 30.0]).unwrap() - 1.0).abs() < 1e-12);
        assert!((spearman(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]).unwrap() + 1.0).abs() < 1e-12);
        assert_eq!(spearman(&[1.0, 1.0], &[1.0, 2.0]), None);
    }
}
