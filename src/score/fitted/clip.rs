//! ReAct and GradNorm on ReAct-clipped features.
//!
//! ReAct (Sun, Guo and Li, "ReAct: Out-of-distribution Detection With Rectified Activations",
//! NeurIPS 2021) clips every feature at `c`, the p-th percentile of all in-distribution
//! activation values, and scores the recomputed logits `z' = W·min(h, c) + b` with the energy
//! `T·logsumexp(z'/T)`. The percentile uses linear interpolation between order statistics,
//! like `numpy.percentile`, which the authors' code (deeplearning-wisc/react,
//! `compute_threshold.py`) calls on the flattened activations.

use super::common::{bytes_of, check_fit_set, check_percentile, check_temperature};
use super::{FitError, FitParams, FittedKind};
use crate::activations::{Activations, Head};
use crate::score::{energy, gradnorm, GradNormScale};
use nalgebra::DVector;
use serde::{Deserialize, Serialize};

/// Statistics of [`FittedKind::React`] and [`FittedKind::GradNormReact`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClipStats {
    /// Softmax temperature `T > 0` of the energy or GradNorm score.
    pub temperature: f32,
    /// Percentile of the fit set's activation values that sets the threshold, 0 to 100.
    pub percentile: f64,
    /// Clipping threshold `c`, in feature units.
    pub threshold: f32,
}

pub(super) fn fit(
    kind: FittedKind,
    head: &Head,
    features: &[&[f32]],
    params: &FitParams,
) -> Result<ClipStats, FitError> {
    check_temperature(kind, params.temperature)?;
    check_percentile(kind, params.react_percentile)?;
    check_fit_set(kind, head, features)?;

    let mut values: Vec<f32> = features.iter().flat_map(|h| h.iter().copied()).collect();
    Ok(ClipStats {
        temperature: params.temperature,
        percentile: params.react_percentile,
        threshold: percentile_linear(&mut values, params.react_percentile) as f32,
    })
}

/// Returns the p-th percentile of `values` with linear interpolation: rank
/// `p/100 · (n − 1)` between the two neighbouring order statistics. Reorders `values`.
fn percentile_linear(values: &mut [f32], percentile: f64) -> f64 {
    let rank = percentile / 100.0 * (values.len() - 1) as f64;
    let lower_rank = rank.floor() as usize;
    let (_, lower, above) = values.select_nth_unstable_by(lower_rank, f32::total_cmp);
    let lower = f64::from(*lower);
    // The next order statistic is the smallest value above the lower one.
    let upper = above
        .iter()
        .copied()
        .min_by(f32::total_cmp)
        .map_or(lower, f64::from);
    lower + (upper - lower) * (rank - lower_rank as f64)
}

/// Per-frame state: the clipped features and their logits.
#[derive(Clone, Debug)]
pub(super) struct ClipScorer {
    stats: ClipStats,
    gradnorm: bool,
    clipped: DVector<f32>,
    logits: DVector<f32>,
}

impl ClipScorer {
    pub(super) fn new(
        kind: FittedKind,
        stats: ClipStats,
        head: &Head,
    ) -> Result<ClipScorer, FitError> {
        check_temperature(kind, stats.temperature)?;
        check_percentile(kind, stats.percentile)?;
        if !stats.threshold.is_finite() {
            return Err(FitError::InvalidParameter {
                kind,
                name: "threshold",
                value: f64::from(stats.threshold),
                expected: "a finite value",
            });
        }
        Ok(ClipScorer {
            stats,
            gradnorm: kind == FittedKind::GradNormReact,
            clipped: DVector::zeros(head.feature_dim()),
            logits: DVector::zeros(head.num_classes()),
        })
    }

    pub(super) fn score(&mut self, act: &Activations, head: &Head) -> f32 {
        let threshold = self.stats.threshold;
        for (out, &h) in self.clipped.iter_mut().zip(act.features()) {
            *out = h.min(threshold);
        }
        head.logits_into(&self.clipped, &mut self.logits);
        let logits = self.logits.as_slice();
        if self.gradnorm {
            let clipped_l1: f64 = self.clipped.iter().map(|&h| f64::from(h).abs()).sum();
            gradnorm(
                clipped_l1,
                logits,
                self.stats.temperature,
                GradNormScale::Paper,
            )
        } else {
            energy(logits, self.stats.temperature)
        }
    }

    pub(super) fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Self>() + bytes_of::<f32>(self.clipped.len() + self.logits.len())
    }
}
