//! Threshold-free OOD metrics: AUROC, AUPR and FPR at 95% TPR.
//!
//! Every function takes two score sets, `id` (in-distribution images) and `ood`
//! (out-of-distribution images), scored so that a HIGHER score means MORE
//! in-distribution, as every gradgate scorer returns. Scores are used as given: the
//! metrics depend only on their order, so no squashing (sigmoid, softmax) is applied or
//! needed, and scores in the thousands work as well as scores in `[0, 1]`. Every metric
//! is a fraction in `[0, 1]`, not a percentage.
//!
//! The values match scikit-learn and the two reference FPR95 helpers to within float64
//! rounding (`tests/metrics.rs` checks them to 1e-12 against fixtures made with
//! scikit-learn 1.9.1). Thresholds sit at the distinct score values, and tied scores are
//! never split: a threshold accepts all of a tie group or none of it.
//!
//! Two FPR95 conventions are in use in the literature, and they measure different errors:
//! - [`fpr95_id_positive`] (GradNorm, Outlier Exposure): the fraction of OOD images
//!   accepted when about 95% of ID images are accepted.
//! - [`fpr95_ood_positive`] (OpenOOD v1.5): the fraction of ID images rejected when at
//!   least 95% of OOD images are rejected.
//!
//! The per-metric functions do not validate their input: an empty set gives NaN, and NaN
//! scores are ranked by [`f64::total_cmp`] (a positive NaN above `+∞`), which yields a
//! meaningless value. [`evaluate`] rejects both. Infinite scores are valid and rank as
//! expected.

use serde::Serialize;
use std::fmt;

/// Recall level of the FPR95 metrics: 95% of the positive class accepted.
const RECALL_LEVEL: f64 = 0.95;

/// All metrics of one ID set against one OOD set, each defined by the function of the same
/// name.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Metrics {
    /// Area under the ROC curve, from [`auroc`].
    pub auroc: f64,
    /// Average precision with ID as the positive class, from [`aupr_in`].
    pub aupr_in: f64,
    /// Average precision with OOD as the positive class, from [`aupr_out`].
    pub aupr_out: f64,
    /// Fraction of OOD accepted at 95% ID recall (GradNorm and Outlier Exposure
    /// convention), from [`fpr95_id_positive`].
    pub fpr95_id_positive: f64,
    /// Fraction of ID rejected at 95% OOD recall (OpenOOD v1.5 convention), from
    /// [`fpr95_ood_positive`].
    pub fpr95_ood_positive: f64,
    /// Number of in-distribution scores.
    pub n_id: usize,
    /// Number of out-of-distribution scores.
    pub n_ood: usize,
}

/// One of the two score sets given to [`evaluate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScoreSet {
    /// The in-distribution scores (`id`).
    Id,
    /// The out-of-distribution scores (`ood`).
    Ood,
}

impl fmt::Display for ScoreSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScoreSet::Id => f.write_str("in-distribution"),
            ScoreSet::Ood => f.write_str("out-of-distribution"),
        }
    }
}

/// Error for score sets on which the metrics are undefined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MetricsError {
    /// The in-distribution set has no scores.
    EmptyId,
    /// The out-of-distribution set has no scores.
    EmptyOod,
    /// A score is NaN.
    NanScore {
        /// The set that contains the NaN.
        set: ScoreSet,
        /// Index of the first NaN in that set.
        index: usize,
    },
}

impl fmt::Display for MetricsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetricsError::EmptyId => f.write_str(
                "the in-distribution score set is empty; score at least one in-distribution \
                 image before evaluating",
            ),
            MetricsError::EmptyOod => f.write_str(
                "the out-of-distribution score set is empty; score at least one \
                 out-of-distribution image before evaluating",
            ),
            MetricsError::NanScore { set, index } => write!(
                f,
                "{set} score at index {index} is NaN; fix the scorer or drop that image \
                 before evaluating"
            ),
        }
    }
}

impl std::error::Error for MetricsError {}

/// Computes every metric after checking that both sets are non-empty and free of NaN.
///
/// # Errors
/// [`MetricsError::EmptyId`] or [`MetricsError::EmptyOod`] for an empty set (ID is
/// checked first), and [`MetricsError::NanScore`] for the first NaN, in `id` before
/// `ood`.
pub fn evaluate(id: &[f32], ood: &[f32]) -> Result<Metrics, MetricsError> {
    if id.is_empty() {
        return Err(MetricsError::EmptyId);
    }
    if ood.is_empty() {
        return Err(MetricsError::EmptyOod);
    }
    for (set, scores) in [(ScoreSet::Id, id), (ScoreSet::Ood, ood)] {
        if let Some(index) = scores.iter().position(|score| score.is_nan()) {
            return Err(MetricsError::NanScore { set, index });
        }
    }

    let groups = tie_groups(id, ood);
    Ok(Metrics {
        auroc: auroc_from_groups(&groups),
        aupr_in: aupr_in_from_groups(&groups),
        aupr_out: aupr_out_from_groups(&groups),
        fpr95_id_positive: fpr95_id_positive_from_groups(&groups),
        fpr95_ood_positive: fpr95_ood_positive_from_groups(&groups),
        n_id: id.len(),
        n_ood: ood.len(),
    })
}

/// Computes the area under the ROC curve: the probability that a random ID score exceeds
/// a random OOD score, with ties counted as one half.
///
/// This is the Mann–Whitney U statistic divided by `n_id · n_ood`, and equals sklearn's
/// `roc_auc_score(y, score)` with ID labelled 1. 1 means every ID score is above every
/// OOD score, 0.5 means no separation, 0 means the order is inverted. The result is the
/// same with OOD as the positive class and the score negated. NaN if either set is empty.
pub fn auroc(id: &[f32], ood: &[f32]) -> f64 {
    auroc_from_groups(&tie_groups(id, ood))
}

/// Computes the average precision with ID as the positive class and the score as given
/// (AUPR-in).
///
/// Equals sklearn's `average_precision_score(y, score)` with ID labelled 1: the sum over
/// distinct-score thresholds of (gain in recall) × precision, a step function without
/// interpolation. It is not the trapezoidal area under the precision–recall curve, which
/// OpenOOD reports under the same name. A random ranking scores about the ID share of
/// all scores, not 0.5. NaN if either set is empty.
pub fn aupr_in(id: &[f32], ood: &[f32]) -> f64 {
    aupr_in_from_groups(&tie_groups(id, ood))
}

/// Computes the average precision with OOD as the positive class and the score negated
/// (AUPR-out).
///
/// Equals sklearn's `average_precision_score(y, -score)` with OOD labelled 1; see
/// [`aupr_in`] for the definition. NaN if either set is empty.
pub fn aupr_out(id: &[f32], ood: &[f32]) -> f64 {
    aupr_out_from_groups(&tie_groups(id, ood))
}

/// Computes the fraction of OOD scores accepted as ID at the threshold whose ID recall
/// (TPR) is nearest to 95%: the GradNorm and Outlier Exposure convention, ID positive.
///
/// This reproduces `fpr_and_fdr_at_recall` from Outlier Exposure
/// (hendrycks/outlier-exposure, `utils/display_results.py`). GradNorm's `get_measures`
/// (deeplearning-wisc/gradnorm_ood, `utils/test_utils.py`) calls a copy of it, and
/// computes AUROC and both AUPRs as [`auroc`], [`aupr_in`] and [`aupr_out`] do.
///
/// Thresholds are the distinct score values, and a threshold `t` accepts scores `>= t`.
/// Among the thresholds from the highest down to the first with full ID recall, the
/// function picks the one minimising `|recall − 0.95|` without interpolation, and returns
/// the number of OOD scores at or above it divided by `n_ood`. Recall and distance are
/// computed in float64 as in numpy, so a near tie such as recall 0.9 against 1.0 is
/// decided by the same rounding.
///
/// Several thresholds can be equally near, typically ones with the same ID recall that differ
/// only in OOD scores. The reference scans from low to high threshold and keeps the first, so
/// the lowest such threshold wins, which gives the largest FPR among them.
/// The recall reached can be below 95%. NaN if either set is empty.
pub fn fpr95_id_positive(id: &[f32], ood: &[f32]) -> f64 {
    fpr95_id_positive_from_groups(&tie_groups(id, ood))
}

/// Computes the fraction of ID scores rejected as OOD at the highest threshold that
/// rejects at least 95% of OOD scores: the OpenOOD v1.5 convention, OOD positive.
///
/// A threshold `t` rejects scores `<= t`, and thresholds are the distinct score values.
/// This is `fpr_list[argmax(tpr_list >= 0.95)]` on
/// `sklearn.metrics.roc_curve(ood_indicator, -score, drop_intermediate=False)`, as in
/// `auc_and_fpr_recall` of OpenOOD v1.5 (`openood/evaluators/metrics.py`, the function
/// `compute_all_metrics` calls). No interpolation. It is also the smallest FPR among
/// operating points with OOD recall of at least 95%. NaN if either set is empty.
///
/// NOTE: OpenOOD calls `roc_curve` with sklearn's default `drop_intermediate=True`,
/// which removes ROC points inside straight runs. Its value is larger than this one when
/// the first point with 95% OOD recall lies inside a run of equal (ID, OOD) count steps
/// that each include ID scores. That needs an ID score equal to an OOD score at that
/// threshold and at the next one, so the two agree whenever no ID score equals an OOD
/// score. The fixture case `collinear_ties` shows the difference (0.10 here, 0.15 in
/// OpenOOD).
pub fn fpr95_ood_positive(id: &[f32], ood: &[f32]) -> f64 {
    fpr95_ood_positive_from_groups(&tie_groups(id, ood))
}

/// Counts of ID and OOD scores that share one distinct score value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TieGroup {
    id: u64,
    ood: u64,
}

/// Groups the pooled scores by distinct value, from the highest score to the lowest.
///
/// Each group is one ROC operating point. Returns an empty vector when either set is
/// empty, because no metric is defined then.
fn tie_groups(id: &[f32], ood: &[f32]) -> Vec<TieGroup> {
    if id.is_empty() || ood.is_empty() {
        return Vec::new();
    }

    let mut pooled: Vec<(f64, bool)> = Vec::with_capacity(id.len() + ood.len());
    pooled.extend(id.iter().map(|&score| (f64::from(score), true)));
    pooled.extend(ood.iter().map(|&score| (f64::from(score), false)));
    pooled.sort_unstable_by(|a, b| b.0.total_cmp(&a.0));

    let mut groups: Vec<TieGroup> = Vec::new();
    let mut previous: Option<f64> = None;
    for (score, is_id) in pooled {
        // `==` rather than total_cmp: -0.0 and +0.0 are one value, as in numpy. total_cmp
        // sorts them next to each other, so they still form one group.
        let same_value = previous == Some(score);
        if !same_value {
            groups.push(TieGroup { id: 0, ood: 0 });
            previous = Some(score);
        }
        let group = groups
            .last_mut()
            .expect("a group was pushed for the first score");
        if is_id {
            group.id += 1;
        } else {
            group.ood += 1;
        }
    }
    groups
}

/// Totals `(n_id, n_ood)` over all groups.
fn totals(groups: &[TieGroup]) -> (u64, u64) {
    groups
        .iter()
        .fold((0, 0), |(id, ood), group| (id + group.id, ood + group.ood))
}

fn auroc_from_groups(groups: &[TieGroup]) -> f64 {
    let (n_id, n_ood) = totals(groups);
    if n_id == 0 || n_ood == 0 {
        return f64::NAN;
    }

    // Twice the Mann–Whitney U in integers: each OOD score counts 2 for every ID score
    // strictly above it and 1 for every ID score tied with it. u128 because 2·n_id·n_ood
    // exceeds u64 once both sets hold a few billion scores.
    let mut id_above: u128 = 0;
    let mut twice_u: u128 = 0;
    for group in groups {
        let ood = u128::from(group.ood);
        twice_u += ood * (2 * id_above + u128::from(group.id));
        id_above += u128::from(group.id);
    }
    twice_u as f64 / (2.0 * n_id as f64 * n_ood as f64)
}

/// Average precision over groups ordered from the most to the least positive-looking
/// score, where `positives` and `negatives` pick the counts out of a group.
fn average_precision<'a>(
    groups: impl Iterator<Item = &'a TieGroup>,
    positives: fn(&TieGroup) -> u64,
    negatives: fn(&TieGroup) -> u64,
    n_positive: u64,
) -> f64 {
    let mut true_positives: u64 = 0;
    let mut false_positives: u64 = 0;
    let mut sum = 0.0;
    for group in groups {
        true_positives += positives(group);
        false_positives += negatives(group);
        // A group without positives adds no recall, so it adds nothing to the sum.
        if positives(group) > 0 {
            let recall_gain = positives(group) as f64 / n_positive as f64;
            let precision = true_positives as f64 / (true_positives + false_positives) as f64;
            sum += recall_gain * precision;
        }
    }
    sum
}

fn aupr_in_from_groups(groups: &[TieGroup]) -> f64 {
    let (n_id, n_ood) = totals(groups);
    if n_id == 0 || n_ood == 0 {
        return f64::NAN;
    }
    average_precision(groups.iter(), |g| g.id, |g| g.ood, n_id)
}

fn aupr_out_from_groups(groups: &[TieGroup]) -> f64 {
    let (n_id, n_ood) = totals(groups);
    if n_id == 0 || n_ood == 0 {
        return f64::NAN;
    }
    // Negating the score reverses the order, so the lowest score is the most OOD-looking.
    average_precision(groups.iter().rev(), |g| g.ood, |g| g.id, n_ood)
}

fn fpr95_id_positive_from_groups(groups: &[TieGroup]) -> f64 {
    let (n_id, n_ood) = totals(groups);
    if n_id == 0 || n_ood == 0 {
        return f64::NAN;
    }

    // Cumulative (ID, OOD) counts at or above each threshold, highest threshold first, up
    // to and including the first threshold with full ID recall (the helper's last_ind).
    // The helper also appends a point with recall 1 and FPR 0, but the last_ind point has
    // recall exactly 1 and is scanned before it, so the appended point never wins.
    let mut points: Vec<(u64, u64)> = Vec::with_capacity(groups.len());
    let mut id_accepted = 0;
    let mut ood_accepted = 0;
    for group in groups {
        id_accepted += group.id;
        ood_accepted += group.ood;
        points.push((id_accepted, ood_accepted));
        if id_accepted == n_id {
            break;
        }
    }

    // Scan from the lowest threshold up and replace only on a strictly smaller distance,
    // which is np.argmin's first-minimum rule on the helper's reversed arrays.
    let mut best_distance = f64::INFINITY;
    let mut best_ood_accepted = 0;
    for &(id_accepted, ood_accepted) in points.iter().rev() {
        let recall = id_accepted as f64 / n_id as f64;
        let distance = (recall - RECALL_LEVEL).abs();
        if distance < best_distance {
            best_distance = distance;
            best_ood_accepted = ood_accepted;
        }
    }
    best_ood_accepted as f64 / n_ood as f64
}

fn fpr95_ood_positive_from_groups(groups: &[TieGroup]) -> f64 {
    let (n_id, n_ood) = totals(groups);
    if n_id == 0 || n_ood == 0 {
        return f64::NAN;
    }

    // Lowest score first: the order of sklearn's roc_curve on the negated score.
    let mut id_rejected = 0;
    let mut ood_rejected = 0;
    for group in groups.iter().rev() {
        id_rejected += group.id;
        ood_rejected += group.ood;
        // Same float64 division and comparison as `tpr_list >= 0.95` in numpy.
        if ood_rejected as f64 / n_ood as f64 >= RECALL_LEVEL {
            return id_rejected as f64 / n_id as f64;
        }
    }
    unreachable!("the last group rejects every OOD score, and 1.0 >= {RECALL_LEVEL}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cmp::Ordering;

    /// AUROC by comparing every pair, the definition the sorted version must match.
    fn pairwise_auroc(id: &[f32], ood: &[f32]) -> f64 {
        let mut twice_u = 0u64;
        for &i in id {
            for &o in ood {
                twice_u += match i.partial_cmp(&o) {
                    Some(Ordering::Greater) => 2,
                    Some(Ordering::Equal) => 1,
                    _ => 0,
                };
            }
        }
        twice_u as f64 / (2 * id.len() * ood.len()) as f64
    }

    /// Deterministic scores in [0, 8) with many ties, from a fixed linear congruential
    /// generator so the test needs no random-number crate.
    fn quantized_scores(seed: u64, count: usize) -> Vec<f32> {
        let mut state = seed;
        (0..count)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 33) % 32) as f32 / 4.0
            })
            .collect()
    }

    #[test]
    fn auroc_matches_pairwise_count() {
        for seed in 0..20 {
            let id: Vec<f32> = quantized_scores(seed, 37).iter().map(|s| s + 1.0).collect();
            let ood = quantized_scores(seed + 100, 23);
            let expected = pairwise_auroc(&id, &ood);
            let actual = auroc(&id, &ood);
            assert!(
                (actual - expected).abs() < 1e-12,
                "seed {seed}: {actual} vs {expected}"
            );
        }
    }

    #[test]
    fn signed_zeros_are_one_tie() {
        let metrics = evaluate(&[0.0], &[-0.0]).unwrap();
        assert_eq!(metrics.auroc, 0.5, "+0.0 against -0.0 must count as a tie");
        assert_eq!(metrics.aupr_in, 0.5, "one tie group holding both scores");
    }

    #[test]
    fn infinite_scores_rank_at_the_ends() {
        let finite = evaluate(&[3.0, 5.0, 1.0], &[0.0, 2.0, -4.0]).unwrap();
        let infinite =
            evaluate(&[3.0, f32::INFINITY, 1.0], &[0.0, 2.0, f32::NEG_INFINITY]).unwrap();
        assert_eq!(infinite.auroc, finite.auroc, "same order, same AUROC");
        assert_eq!(infinite.aupr_in, finite.aupr_in, "same order, same AUPR-in");
        assert_eq!(
            infinite.aupr_out, finite.aupr_out,
            "same order, same AUPR-out"
        );
        assert_eq!(
            infinite.fpr95_id_positive, finite.fpr95_id_positive,
            "same order, same FPR95 (ID positive)"
        );
        assert_eq!(
            infinite.fpr95_ood_positive, finite.fpr95_ood_positive,
            "same order, same FPR95 (OOD positive)"
        );
    }

    #[test]
    fn equal_infinities_are_one_tie() {
        let metrics = evaluate(&[f32::INFINITY], &[f32::INFINITY]).unwrap();
        assert_eq!(metrics.auroc, 0.5, "+inf against +inf must count as a tie");
    }

    #[test]
    fn metrics_ignore_score_scale() {
        let id = [0.9f32, 0.7, 0.7, 0.4, 0.35];
        let ood = [0.7f32, 0.3, 0.2, 0.4];
        let scaled_id: Vec<f32> = id.iter().map(|s| s * 4096.0 + 1000.0).collect();
        let scaled_ood: Vec<f32> = ood.iter().map(|s| s * 4096.0 + 1000.0).collect();
        let plain = evaluate(&id, &ood).unwrap();
        let scaled = evaluate(&scaled_id, &scaled_ood).unwrap();
        assert_eq!(
            plain, scaled,
            "an increasing affine map keeps the order, so every metric"
        );
    }

    #[test]
    fn per_metric_functions_nan_on_empty() {
        assert!(auroc(&[], &[1.0]).is_nan(), "auroc with no ID scores");
        assert!(aupr_in(&[1.0], &[]).is_nan(), "aupr_in with no OOD scores");
        assert!(aupr_out(&[], &[1.0]).is_nan(), "aupr_out with no ID scores");
        assert!(
            fpr95_id_positive(&[1.0], &[]).is_nan(),
            "fpr95_id_positive with no OOD"
        );
        assert!(
            fpr95_ood_positive(&[], &[1.0]).is_nan(),
            "fpr95_ood_positive with no ID"
        );
    }

    #[test]
    fn evaluate_checks_id_first() {
        assert_eq!(
            evaluate(&[], &[]),
            Err(MetricsError::EmptyId),
            "both sets empty"
        );
        assert_eq!(
            evaluate(&[f32::NAN], &[f32::NAN]),
            Err(MetricsError::NanScore {
                set: ScoreSet::Id,
                index: 0
            }),
            "NaN in both sets"
        );
    }

    #[test]
    fn evaluate_matches_per_metric_functions() {
        let id = quantized_scores(7, 50);
        let ood = quantized_scores(8, 40);
        let metrics = evaluate(&id, &ood).unwrap();
        assert_eq!(metrics.auroc, auroc(&id, &ood), "auroc");
        assert_eq!(metrics.aupr_in, aupr_in(&id, &ood), "aupr_in");
        assert_eq!(metrics.aupr_out, aupr_out(&id, &ood), "aupr_out");
        assert_eq!(
            metrics.fpr95_id_positive,
            fpr95_id_positive(&id, &ood),
            "fpr95 ID"
        );
        assert_eq!(
            metrics.fpr95_ood_positive,
            fpr95_ood_positive(&id, &ood),
            "fpr95 OOD"
        );
        assert_eq!(metrics.n_id, 50, "n_id");
        assert_eq!(metrics.n_ood, 40, "n_ood");
    }
}
