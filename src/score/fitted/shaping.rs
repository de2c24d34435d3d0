//! Activation shaping: ASH-P, ASH-B, ASH-S and SCALE. Nothing is fitted; the statistics are
//! the parameters only.
//!
//! ASH (Djurisic, Bozanic, Ashok and Liu, "Extremely Simple Activation Shaping for
//! Out-of-Distribution Detection", ICLR 2023) and SCALE (Xu, Lian, Tang and Lim, "Scaling for
//! Training Time and Post-hoc Out-of-distribution Detection Enhancement", ICLR 2024), as the
//! authors' code defines them (andrijazz/ash `ash.py`, kai422/SCALE
//! `openood/networks/scale_net.py`). For one frame's features `h` (D values) and percentile `p`:
//!
//! - keep the `k = D − round(D·p/100)` largest values, rounding half to even as `np.round`
//!   does; values tied at the cut are kept lowest index first;
//! - `s1 = Σ h` before pruning, `s2` = the sum of the kept values;
//! - ASH-P: the pruned features (dropped values set to 0);
//! - ASH-B: every kept value replaced by `s1/k`, the rest 0;
//! - ASH-S: the pruned features multiplied by `exp(s1/s2)`;
//! - SCALE: the unpruned features multiplied by `exp(s1/s2)`; pruning only sets the factor;
//!
//! then the energy `T·logsumexp(z'/T)` of `z' = W·h' + b`.
//!
//! The methods assume ReLU features (`h ≥ 0`). When `s2 = 0` the ratio `s1/s2` is undefined.
//! That happens for all-zero features, where every shaped value is 0 anyway, so the ratio is
//! taken as 1 (its value when nothing is pruned).
//! NOTE: with `h ≥ 0`, `s1/s2 ≤ D/k`. Above `D/k ≈ 88` (a percentile above about 98.9)
//! `exp(s1/s2)` can overflow `f32`, and ASH-S and SCALE scores become infinite or NaN.

use super::common::{bytes_of, check_percentile, check_temperature};
use super::{FitError, FitParams, FittedKind};
use crate::activations::{Activations, Head};
use crate::score::energy;
use nalgebra::DVector;
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;

/// Parameters of [`FittedKind::AshP`], [`FittedKind::AshB`], [`FittedKind::AshS`] and
/// [`FittedKind::Scale`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShapingParams {
    /// Softmax temperature `T > 0` of the energy score.
    pub temperature: f32,
    /// Per-frame percentile `p` below which values are pruned, from 0 up to the value that
    /// still keeps one of the D features.
    pub percentile: f64,
}

pub(super) fn fit(
    kind: FittedKind,
    head: &Head,
    params: &FitParams,
) -> Result<ShapingParams, FitError> {
    let stats = ShapingParams {
        temperature: params.temperature,
        percentile: params.ash_percentile,
    };
    check(kind, &stats, head.feature_dim())?;
    Ok(stats)
}

fn check(kind: FittedKind, stats: &ShapingParams, dim: usize) -> Result<usize, FitError> {
    check_temperature(kind, stats.temperature)?;
    check_percentile(kind, stats.percentile)?;
    let keep = keep_count(dim, stats.percentile);
    if keep == 0 {
        return Err(FitError::InvalidParameter {
            kind,
            name: "percentile",
            value: stats.percentile,
            expected: "a value that keeps at least one feature (below 100 minus half a feature)",
        });
    }
    Ok(keep)
}

/// Number of features kept: `D − round(D·p/100)`, ties to even.
fn keep_count(dim: usize, percentile: f64) -> usize {
    let pruned = (dim as f64 * percentile / 100.0).round_ties_even() as usize;
    dim.saturating_sub(pruned)
}

/// Per-frame state: a scratch copy for the selection, the shaped features and their logits.
#[derive(Clone, Debug)]
pub(super) struct ShapingScorer {
    kind: FittedKind,
    stats: ShapingParams,
    keep: usize,
    selection: Vec<f32>,
    shaped: DVector<f32>,
    logits: DVector<f32>,
}

impl ShapingScorer {
    pub(super) fn new(
        kind: FittedKind,
        stats: ShapingParams,
        head: &Head,
    ) -> Result<ShapingScorer, FitError> {
        let dim = head.feature_dim();
        let keep = check(kind, &stats, dim)?;
        Ok(ShapingScorer {
            kind,
            stats,
            keep,
            selection: vec![0.0; dim],
            shaped: DVector::zeros(dim),
            logits: DVector::zeros(head.num_classes()),
        })
    }

    pub(super) fn score(&mut self, act: &Activations, head: &Head) -> f32 {
        let features = act.features();
        let dim = features.len();

        // `+ 0.0` turns −0.0 into +0.0, so that total_cmp treats the two zeros as one value.
        for (out, &h) in self.selection.iter_mut().zip(features) {
            *out = h + 0.0;
        }
        let (_, cutoff, _) = self
            .selection
            .select_nth_unstable_by(dim - self.keep, f32::total_cmp);
        let cutoff = *cutoff;
        let above = features
            .iter()
            .filter(|&&h| (h + 0.0).total_cmp(&cutoff) == Ordering::Greater)
            .count();
        let mut ties_to_keep = self.keep - above;

        // ASH-B spreads the total over the kept positions, whatever their values, as the
        // authors' code scatters s1/k over the top-k indices.
        let sum_before: f64 = features.iter().map(|&h| f64::from(h)).sum();
        let fill = (sum_before / self.keep as f64) as f32;
        let mut sum_kept = 0f64;
        for (out, &h) in self.shaped.iter_mut().zip(features) {
            let kept = match (h + 0.0).total_cmp(&cutoff) {
                Ordering::Greater => true,
                Ordering::Equal if ties_to_keep > 0 => {
                    ties_to_keep -= 1;
                    true
                }
                _ => false,
            };
            if kept {
                sum_kept += f64::from(h);
            }
            *out = match (kept, self.kind) {
                (false, _) => 0.0,
                (true, FittedKind::AshB) => fill,
                (true, _) => h,
            };
        }

        let ratio = if sum_kept == 0.0 {
            1.0
        } else {
            sum_before / sum_kept
        };
        match self.kind {
            FittedKind::AshS => {
                let factor = ratio.exp();
                for out in self.shaped.iter_mut() {
                    *out = (f64::from(*out) * factor) as f32;
                }
            }
            FittedKind::Scale => {
                let factor = ratio.exp();
                for (out, &h) in self.shaped.iter_mut().zip(features) {
                    *out = (f64::from(h) * factor) as f32;
                }
            }
            _ => {}
        }

        head.logits_into(&self.shaped, &mut self.logits);
        energy(self.logits.as_slice(), self.stats.temperature)
    }

    pub(super) fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + bytes_of::<f32>(self.selection.len() + self.shaped.len() + self.logits.len())
    }
}
