//! One type for every detector the frame loop can run: a closed-form [`Scorer`] or a
//! [`FittedScorer`] built from statistics.

use super::fitted::{FittedKind, FittedScorer};
use super::{Scorer, ScorerKind};
use crate::activations::{Activations, Head};
use std::fmt;
use std::str::FromStr;

/// A detector's name as given on the command line: closed-form or fitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DetectorName {
    /// Computed from the activations alone.
    Closed(ScorerKind),
    /// Needs statistics fitted on in-distribution images.
    Fitted(FittedKind),
}

impl DetectorName {
    /// Returns the name used on the command line and in calibration files.
    pub fn name(self) -> &'static str {
        match self {
            DetectorName::Closed(kind) => kind.name(),
            DetectorName::Fitted(kind) => kind.name(),
        }
    }
}

impl fmt::Display for DetectorName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Error for a name that is no detector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownDetectorName(pub String);

impl fmt::Display for UnknownDetectorName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = ScorerKind::ALL
            .iter()
            .map(|k| k.name())
            .chain(FittedKind::ALL.iter().map(|k| k.name()))
            .collect();
        write!(
            f,
            "unknown scorer '{}': expected one of {}",
            self.0,
            names.join(", ")
        )
    }
}

impl std::error::Error for UnknownDetectorName {}

impl FromStr for DetectorName {
    type Err = UnknownDetectorName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(kind) = s.parse::<ScorerKind>() {
            return Ok(DetectorName::Closed(kind));
        }
        s.parse::<FittedKind>()
            .map(DetectorName::Fitted)
            .map_err(|_| UnknownDetectorName(s.to_string()))
    }
}

/// A configured detector, ready for the frame loop.
///
/// Design: an enum rather than a trait object, so the frame loop dispatches with one match
/// and the closed-form scorers stay `Copy` inside it.
#[derive(Debug)]
pub enum Detector {
    /// A closed-form scorer.
    Closed(Scorer),
    /// A scorer built from fitted statistics, with its scratch buffers.
    Fitted(FittedScorer),
}

impl Detector {
    /// Returns the detector's name.
    pub fn name(&self) -> DetectorName {
        match self {
            Detector::Closed(scorer) => DetectorName::Closed(scorer.kind),
            Detector::Fitted(scorer) => DetectorName::Fitted(scorer.kind()),
        }
    }

    /// Scores one frame's finished activations; higher means more in-distribution.
    /// Allocates nothing. `head` must be the model's head.
    pub fn score(&mut self, act: &Activations, head: &Head) -> f32 {
        match self {
            Detector::Closed(scorer) => scorer.score(act),
            Detector::Fitted(scorer) => scorer.score(act, head),
        }
    }
}
