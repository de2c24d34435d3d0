//! In/out decisions: per frame, then debounced into events.
//!
//! Stage five of the data path (frame → tensor → activations → score → **gate** → signal).
//! A [`Gate`] compares each frame's score with a calibrated threshold and returns a `Copy`
//! [`Verdict`]. Scores are oriented so that higher means in-distribution, for every scorer.
//! A [`DebouncedGate`] turns the stream of verdicts into an in/out state with hysteresis and
//! records each out-of-distribution spell as an [`EventRecord`], which the signals publish.
//!
//! # Important notes
//! - A score exactly at the threshold counts as in-distribution: calibration picks the
//!   threshold as a score that 95% of in-distribution frames reach or exceed.
//! - [`Gate`] decides one frame at a time; only [`DebouncedGate`] debounces.

#![deny(missing_docs)]

mod debounce;

pub use debounce::{
    CloseReason, DebounceConfig, DebounceError, DebouncedGate, EnterRule, EventRecord, FrameRef,
    GateState, Transition, SOURCE_CAPACITY,
};

/// The decision for one frame.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Verdict {
    /// The frame's score; higher means more in-distribution.
    pub score: f32,
    /// The threshold it was compared with, in the same scorer and scale.
    pub threshold: f32,
    /// True when the frame looks out-of-distribution (`score < threshold`).
    pub ood: bool,
}

/// Compares scores with a fixed threshold.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Gate {
    threshold: f32,
}

impl Gate {
    /// Creates a gate that flags scores below `threshold`.
    pub fn new(threshold: f32) -> Gate {
        Gate { threshold }
    }

    /// Returns the threshold in use.
    pub fn threshold(&self) -> f32 {
        self.threshold
    }

    /// Decides one frame. A NaN score counts as out-of-distribution.
    pub fn decide(&self, score: f32) -> Verdict {
        // NaN compares as neither greater nor equal, so it is flagged, never passed.
        let ood = !matches!(
            score.partial_cmp(&self.threshold),
            Some(std::cmp::Ordering::Greater | std::cmp::Ordering::Equal)
        );
        Verdict {
            score,
            threshold: self.threshold,
            ood,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn score_at_threshold_is_in_distribution() {
        assert!(!Gate::new(2.5).decide(2.5).ood);
    }

    #[test]
    fn score_below_threshold_is_out_of_distribution() {
        assert!(Gate::new(2.5).decide(2.4).ood);
    }

    #[test]
    fn nan_score_is_out_of_distribution() {
        assert!(Gate::new(2.5).decide(f32::NAN).ood);
    }
}
