//! Thresholds calibrated on in-distribution images, stored beside the model.
//!
//! `gradgate calibrate DIR…` scores in-distribution images with every scorer and stores, per
//! scorer, the threshold that [`TARGET_TPR`] of them reach or exceed (the operating point
//! GradNorm and most OOD papers report), with a summary of the score distribution. The file
//! sits next to the model: `m.onnx` → `m.calibration.json`.
//!
//! # Important notes
//! - A calibration is valid for one model file (checked by SHA-256) and one temperature.
//!   GradNorm thresholds are stored at the scale of the GradNorm paper (Huang, Geng and Li,
//!   2021), with target 1/C per class. The official scale
//!   (target 1) multiplies them by the class count.

use crate::score::{DetectorName, ScorerKind};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// Fraction of in-distribution frames that pass at the calibrated threshold.
pub const TARGET_TPR: f64 = 0.95;

/// Version of the calibration file format this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;

/// Summary of one scorer's scores on the calibration images.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoreSummary {
    /// Frames with a score at or above this pass as in-distribution.
    pub threshold: f32,
    /// Smallest score.
    pub min: f32,
    /// 5th percentile (nearest rank).
    pub p05: f32,
    /// Median (nearest rank).
    pub median: f32,
    /// 95th percentile (nearest rank).
    pub p95: f32,
    /// Largest score.
    pub max: f32,
    /// Arithmetic mean.
    pub mean: f64,
    /// Population standard deviation.
    pub std: f64,
}

/// A calibration file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Calibration {
    /// File format version, [`FORMAT_VERSION`].
    pub format: u32,
    /// File name of the model it was computed for.
    pub model_file: String,
    /// SHA-256 of that model file.
    pub model_sha256: String,
    /// Softmax temperature the scores were computed at.
    pub temperature: f32,
    /// Fraction of calibration images that pass at each threshold.
    pub target_tpr: f64,
    /// Number of images scored.
    pub images: usize,
    /// The folders or files the images came from, as given.
    pub sources: Vec<String>,
    /// Per scorer name (GradNorm with target 1/C per class).
    pub scorers: BTreeMap<String, ScoreSummary>,
    /// The detector `run` uses when no `--scorer` is given, chosen at calibration time from an
    /// evaluation. `run` falls back to GradNorm when it is absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recommended: Option<String>,
}

/// Error for a calibration file that cannot be used.
#[derive(Debug)]
#[non_exhaustive]
pub enum CalibrationError {
    /// The file is missing or unreadable.
    Read {
        /// The calibration file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is not a valid calibration.
    Parse {
        /// The calibration file.
        path: PathBuf,
        /// The parser's message.
        reason: String,
    },
    /// The calibration belongs to another model file.
    WrongModel {
        /// The calibration file.
        path: PathBuf,
        /// Hash stored in the calibration.
        expected: String,
        /// Hash of the loaded model.
        actual: String,
    },
    /// The calibration was computed at another temperature.
    WrongTemperature {
        /// The calibration file.
        path: PathBuf,
        /// Temperature stored in the calibration.
        calibrated: f32,
        /// Temperature requested.
        requested: f32,
    },
    /// The calibration has no entry for the scorer.
    MissingScorer {
        /// The calibration file.
        path: PathBuf,
        /// The scorer requested.
        scorer: DetectorName,
    },
}

impl fmt::Display for CalibrationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CalibrationError::Read { path, source } => write!(
                f,
                "cannot read calibration {}: {source}; run 'gradgate calibrate DIR' on \
                 in-distribution images or pass --threshold",
                path.display()
            ),
            CalibrationError::Parse { path, reason } => {
                write!(f, "invalid calibration file {}: {reason}", path.display())
            }
            CalibrationError::WrongModel { path, expected, actual } => write!(
                f,
                "calibration {} was made for a model with SHA-256 {expected}, but the loaded \
                 model has {actual}; recalibrate with 'gradgate calibrate' or pass --threshold",
                path.display()
            ),
            CalibrationError::WrongTemperature { path, calibrated, requested } => write!(
                f,
                "calibration {} was made at temperature {calibrated}, not {requested}; \
                 recalibrate with --temperature {requested} or pass --threshold",
                path.display()
            ),
            CalibrationError::MissingScorer { path, scorer } => write!(
                f,
                "calibration {} has no threshold for scorer '{scorer}'; recalibrate or pass --threshold",
                path.display()
            ),
        }
    }
}

// No `source()`: every message already contains its cause, and `main` prints the chain.
impl std::error::Error for CalibrationError {}

/// Returns the calibration file that belongs to `model`: `m.onnx` → `m.calibration.json`.
pub fn path_for_model(model: &Path) -> PathBuf {
    model.with_extension("calibration.json")
}

/// Summarizes scores and picks the threshold that at least [`TARGET_TPR`] of them reach.
///
/// With the n scores sorted ascending and k = ⌊(1 − TPR)·n⌋, the threshold lies halfway
/// between the scores at k − 1 and k (just below the lowest score when k = 0), so at least
/// ⌈TPR·n⌉ scores are ≥ it (more when scores tie). The margin matters: a threshold equal to a
/// calibration score flips that frame on a CPU whose kernels round one ulp differently.
/// Returns `None` for an empty slice or when any score is not finite.
pub fn summarize(scores: &[f32]) -> Option<ScoreSummary> {
    if scores.is_empty() || scores.iter().any(|s| !s.is_finite()) {
        return None;
    }
    let mut sorted = scores.to_vec();
    sorted.sort_by(f32::total_cmp);
    let n = sorted.len();
    let rank = |q: f64| sorted[((q * n as f64).floor() as usize).min(n - 1)];
    let mean = sorted.iter().map(|&s| f64::from(s)).sum::<f64>() / n as f64;
    let variance = sorted
        .iter()
        .map(|&s| (f64::from(s) - mean).powi(2))
        .sum::<f64>()
        / n as f64;
    let k = (((1.0 - TARGET_TPR) * n as f64).floor() as usize).min(n - 1);
    let threshold = if k == 0 {
        let lowest = f64::from(sorted[0]);
        (lowest - 1e-6 * lowest.abs().max(1.0)) as f32
    } else {
        ((f64::from(sorted[k - 1]) + f64::from(sorted[k])) / 2.0) as f32
    };
    Some(ScoreSummary {
        threshold,
        min: sorted[0],
        p05: rank(0.05),
        median: rank(0.5),
        p95: rank(0.95),
        max: sorted[n - 1],
        mean,
        std: variance.sqrt(),
    })
}

impl Calibration {
    /// Reads a calibration file.
    pub fn load(path: &Path) -> Result<Calibration, CalibrationError> {
        let text = std::fs::read_to_string(path).map_err(|source| CalibrationError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let calibration: Calibration =
            serde_json::from_str(&text).map_err(|e| CalibrationError::Parse {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        if calibration.format != FORMAT_VERSION {
            return Err(CalibrationError::Parse {
                path: path.to_path_buf(),
                reason: format!(
                    "format version {} is not supported; expected {FORMAT_VERSION}",
                    calibration.format
                ),
            });
        }
        Ok(calibration)
    }

    /// Returns the threshold for `scorer` (GradNorm with target 1/C per class), after checking that this
    /// calibration belongs to the model with hash `model_sha256` and to `temperature`.
    pub fn threshold(
        &self,
        path: &Path,
        model_sha256: &str,
        scorer: DetectorName,
        temperature: f32,
    ) -> Result<f32, CalibrationError> {
        if !self.model_sha256.eq_ignore_ascii_case(model_sha256) {
            return Err(CalibrationError::WrongModel {
                path: path.to_path_buf(),
                expected: self.model_sha256.clone(),
                actual: model_sha256.to_string(),
            });
        }
        // Max-logit does not depend on the temperature, and fitted detectors store their own.
        let uses_temperature =
            matches!(scorer, DetectorName::Closed(kind) if kind != ScorerKind::MaxLogit);
        if uses_temperature && self.temperature != temperature {
            return Err(CalibrationError::WrongTemperature {
                path: path.to_path_buf(),
                calibrated: self.temperature,
                requested: temperature,
            });
        }
        self.scorers.get(scorer.name()).map(|s| s.threshold).ok_or(
            CalibrationError::MissingScorer {
                path: path.to_path_buf(),
                scorer,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold_passes_at_least_95_percent() {
        let scores: Vec<f32> = (0..20).map(|i| i as f32).collect();
        let summary = summarize(&scores).unwrap();
        // ⌊0.05 · 20⌋ = 1: halfway between the scores 0 and 1, so 19 of 20 (95%) pass.
        assert_eq!(summary.threshold, 0.5);
    }

    #[test]
    fn threshold_of_few_scores_is_below_minimum() {
        let summary = summarize(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!(summary.threshold, 0.999999);
    }

    #[test]
    fn summary_of_nan_is_none() {
        assert_eq!(summarize(&[1.0, f32::NAN]), None);
    }

    #[test]
    fn summary_of_infinite_score_is_none() {
        assert_eq!(summarize(&[1.0, f32::INFINITY]), None);
    }

    #[test]
    fn calibration_path_replaces_extension() {
        let path = path_for_model(Path::new("models/m-int8.onnx"));
        assert_eq!(path, Path::new("models/m-int8.calibration.json"));
    }
}
