//! Errors of fitting detectors and of building scorers from statistics.

use super::FittedKind;
use std::fmt;

/// Error for a fit set, a parameter or a set of statistics that a detector cannot use.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum FitError {
    /// The fit set is empty (or, for statistics, the detector has nothing fitted).
    EmptyFitSet {
        /// The detector.
        kind: FittedKind,
    },
    /// A fit image's feature vector does not have the head's D values.
    FeatureCount {
        /// The detector.
        kind: FittedKind,
        /// Index of the fit image.
        image: usize,
        /// The head's feature width D.
        expected: usize,
        /// Length of the image's feature vector.
        actual: usize,
    },
    /// A fit image has a NaN or infinite feature, or its logits are not finite.
    NonFinite {
        /// The detector.
        kind: FittedKind,
        /// Index of the fit image.
        image: usize,
        /// `"features"` or `"logits"`.
        tensor: &'static str,
        /// Index of the first non-finite value.
        index: usize,
        /// The value itself.
        value: f32,
    },
    /// A parameter is out of its range.
    InvalidParameter {
        /// The detector.
        kind: FittedKind,
        /// Name of the parameter.
        name: &'static str,
        /// The rejected value.
        value: f64,
        /// The accepted range, in words.
        expected: &'static str,
    },
    /// The fit set is larger than the detector stores.
    TooManyFitImages {
        /// The detector.
        kind: FittedKind,
        /// Largest accepted number of fit images.
        max: usize,
        /// Number of fit images given.
        actual: usize,
    },
    /// The within-class covariance is zero: every predicted class has one fit image, or
    /// identical ones.
    ZeroCovariance {
        /// The detector.
        kind: FittedKind,
        /// Number of fit images.
        images: usize,
    },
    /// The requested ViM principal dimension leaves no residual on the fit set.
    VimDimTooLarge {
        /// The requested dimension k.
        requested: usize,
        /// Rank of the fit features' second-moment matrix about the origin.
        rank: usize,
    },
    /// The fit features have no residual outside the ViM principal space, so `α` is undefined.
    ZeroResidual {
        /// The principal dimension k used.
        principal_dim: usize,
    },
    /// Statistics whose value counts do not match the head they are used with.
    StatsMismatch {
        /// The detector.
        kind: FittedKind,
        /// The statistics field.
        field: &'static str,
        /// Number of values the head needs.
        expected: usize,
        /// Number of values found.
        actual: usize,
    },
    /// Statistics with a value no fit produces.
    InvalidStats {
        /// The detector.
        kind: FittedKind,
        /// The statistics field.
        field: &'static str,
        /// The problem, in words.
        reason: &'static str,
    },
}

impl fmt::Display for FitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FitError::EmptyFitSet { kind } => {
                write!(f, "{kind} needs at least 1 fit image, got 0")
            }
            FitError::FeatureCount {
                kind,
                image,
                expected,
                actual,
            } => write!(
                f,
                "{kind}: fit image {image} has {actual} features, but the head expects \
                 {expected}; fit with activations of the same model"
            ),
            FitError::NonFinite {
                kind,
                image,
                tensor,
                index,
                value,
            } => write!(
                f,
                "{kind}: fit image {image} has a non-finite value in its {tensor} at index \
                 {index}: {value}; remove the image from the fit set"
            ),
            FitError::InvalidParameter {
                kind,
                name,
                value,
                expected,
            } => write!(f, "{kind}: {name} {value} is invalid; expected {expected}"),
            FitError::TooManyFitImages { kind, max, actual } => write!(
                f,
                "{kind} stores at most {max} fit images, got {actual}; fit on a random subset"
            ),
            FitError::ZeroCovariance { kind, images } => write!(
                f,
                "{kind}: the within-class covariance of the {images} fit images is zero, \
                 because each predicted class has one image or identical ones; add fit images \
                 so that predicted classes repeat"
            ),
            FitError::VimDimTooLarge { requested, rank } => write!(
                f,
                "vim: principal dimension {requested} must be below {rank}, the rank of the \
                 fit features about the origin; pass a smaller dimension or add fit images"
            ),
            FitError::ZeroResidual { principal_dim } => write!(
                f,
                "vim: the fit features have no residual outside the {principal_dim}-dimensional \
                 principal space, so the virtual-logit scale is undefined; pass a smaller \
                 dimension or add fit images"
            ),
            FitError::StatsMismatch {
                kind,
                field,
                expected,
                actual,
            } => write!(
                f,
                "{kind} statistics field {field} has {actual} values, but the head needs \
                 {expected}; refit the statistics for this model"
            ),
            FitError::InvalidStats {
                kind,
                field,
                reason,
            } => write!(
                f,
                "{kind} statistics field {field} is invalid: {reason}; refit the statistics"
            ),
        }
    }
}

impl std::error::Error for FitError {}

/// Error for a detector name that is not one of [`FittedKind::ALL`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownDetector(pub String);

impl fmt::Display for UnknownDetector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown detector '{}': expected one of ", self.0)?;
        for (i, kind) in FittedKind::ALL.iter().enumerate() {
            let separator = if i == 0 { "" } else { ", " };
            write!(f, "{separator}{kind}")?;
        }
        Ok(())
    }
}

impl std::error::Error for UnknownDetector {}
