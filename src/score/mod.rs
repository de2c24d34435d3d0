//! Out-of-distribution scores computed from cached activations.
//!
//! Stage four of the data path (frame → tensor → activations → **score** → gate → signal).
//! Every scorer reads an [`Activations`] (the penultimate features `h` and the logits
//! `z = W·h + b` the runtime computed from them) and returns one `f32`. Higher always means
//! more in-distribution, so the gate compares every scorer the same way.
//!
//! This module imports neither tract nor any I/O crate, and nothing in it allocates.
//!
//! # Important notes
//! - Scores of different scorers, temperatures or GradNorm scales are not comparable:
//!   a threshold calibrated for one is meaningless for another.
//! - Every long sum (over the C classes or the D features) is accumulated in `f64` from `f32`
//!   terms. For n terms the accumulated rounding error is at most `(n − 1)·2⁻⁵³` relative to the
//!   sum of absolute values (about 1.4e-13 for n = 1280), far below the final `f32` rounding
//!   (6e-8), so the result is the correctly rounded `f32` of the exact sum up to one ulp of the
//!   terms' own errors.

#![deny(missing_docs)]

mod detector;
pub mod fitted;
mod gradnorm;
mod softmax_family;

pub use detector::{Detector, DetectorName, UnknownDetectorName};
pub use gradnorm::{gradnorm, gradnorm_logits, GradNormScale};
pub use softmax_family::{energy, log_sum_exp, max_logit, max_softmax, top1};

use crate::activations::Activations;
use std::fmt;
use std::str::FromStr;

/// The scoring methods gradgate offers, all computed from the same cached activations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ScorerKind {
    /// GradNorm: the L1 norm of the gradient of KL(uniform ‖ softmax(z/T)) with respect to the
    /// last layer's weights, in closed form.
    GradNorm,
    /// The same gradient taken with respect to the logits, `(1/T) · Σ|softmax(z/T) − 1/C|`:
    /// GradNorm without its `‖h‖₁` factor.
    GradNormLogits,
    /// Maximum softmax probability (Hendrycks and Gimpel, 2017).
    Msp,
    /// Maximum logit (Hendrycks et al., 2022).
    MaxLogit,
    /// Energy score `T · logsumexp(z/T)` (Liu et al., 2020): the negated free energy.
    Energy,
}

impl ScorerKind {
    /// Every scorer, in the order reports list them.
    pub const ALL: [ScorerKind; 5] = [
        ScorerKind::GradNorm,
        ScorerKind::GradNormLogits,
        ScorerKind::Msp,
        ScorerKind::MaxLogit,
        ScorerKind::Energy,
    ];

    /// Returns the name used on the command line and in calibration files.
    pub fn name(self) -> &'static str {
        match self {
            ScorerKind::GradNorm => "gradnorm",
            ScorerKind::GradNormLogits => "gradnorm-logits",
            ScorerKind::Msp => "msp",
            ScorerKind::MaxLogit => "maxlogit",
            ScorerKind::Energy => "energy",
        }
    }
}

impl fmt::Display for ScorerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Error for a scorer name that is not one of [`ScorerKind::ALL`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownScorer(pub String);

impl fmt::Display for UnknownScorer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown scorer '{}': expected one of gradnorm, gradnorm-logits, msp, maxlogit, energy",
            self.0
        )
    }
}

impl std::error::Error for UnknownScorer {}

impl FromStr for ScorerKind {
    type Err = UnknownScorer;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ScorerKind::ALL
            .into_iter()
            .find(|kind| kind.name() == s)
            .ok_or_else(|| UnknownScorer(s.to_string()))
    }
}

/// A configured scorer: the method plus its parameters. `Copy`, so the frame loop keeps one by
/// value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Scorer {
    /// The scoring method.
    pub kind: ScorerKind,
    /// Softmax temperature `T > 0`, used by GradNorm, MSP and energy (max-logit ignores it).
    pub temperature: f32,
    /// Scale of GradNorm scores; ignored by the other scorers.
    pub gradnorm_scale: GradNormScale,
}

impl Scorer {
    /// Creates a scorer with temperature 1 and the paper's GradNorm scale.
    pub fn new(kind: ScorerKind) -> Scorer {
        Scorer {
            kind,
            temperature: 1.0,
            gradnorm_scale: GradNormScale::Paper,
        }
    }

    /// Scores one frame's activations. Higher means more in-distribution.
    ///
    /// Allocates nothing. A non-finite logit gives a non-finite score; the model stage rejects
    /// such frames before they reach the scorer.
    pub fn score(&self, act: &Activations) -> f32 {
        let logits = act.logits();
        match self.kind {
            ScorerKind::GradNorm => gradnorm(
                act.features_l1(),
                logits,
                self.temperature,
                self.gradnorm_scale,
            ),
            ScorerKind::GradNormLogits => {
                gradnorm_logits(logits, self.temperature, self.gradnorm_scale)
            }
            ScorerKind::Msp => max_softmax(logits, self.temperature),
            ScorerKind::MaxLogit => max_logit(logits),
            ScorerKind::Energy => energy(logits, self.temperature),
        }
    }

    /// Scores a batch of frames, one score per frame, into `out`. Each score equals
    /// [`Scorer::score`] of that frame alone: frames never share a loss. Allocates nothing.
    ///
    /// # Panics
    /// If `out` is not as long as `batch`.
    pub fn score_batch(&self, batch: &[Activations], out: &mut [f32]) {
        assert_eq!(batch.len(), out.len(), "one output slot per frame");
        for (act, score) in batch.iter().zip(out) {
            *score = self.score(act);
        }
    }

    /// Converts a threshold calibrated for this scorer at the paper's GradNorm scale into this
    /// scorer's scale. Only GradNorm with [`GradNormScale::Official`] changes it (× C).
    pub fn threshold_from_paper_scale(&self, threshold: f32, num_classes: usize) -> f32 {
        match (self.kind, self.gradnorm_scale) {
            (ScorerKind::GradNorm | ScorerKind::GradNormLogits, GradNormScale::Official) => {
                threshold * num_classes as f32
            }
            _ => threshold,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scorer_names_round_trip() {
        for kind in ScorerKind::ALL {
            assert_eq!(kind.name().parse::<ScorerKind>(), Ok(kind));
        }
    }

    #[test]
    fn unknown_scorer_message_lists_choices() {
        let err = "odin".parse::<ScorerKind>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown scorer 'odin': expected one of gradnorm, gradnorm-logits, msp, maxlogit, energy"
        );
    }
}
