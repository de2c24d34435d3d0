//! Penultimate activations and the classifier head that turns them into logits.
//!
//! Stage three of the data path (frame → tensor → **activations** → score → gate → signal).
//! The model stage copies the backbone's pooled features `h` into an [`Activations`]; the
//! runtime then computes the logits `z = W·h + b` itself with the [`Head`] read from the model
//! file, so every scorer works from one cache of `h` and `z`.
//!
//! # Important notes
//! - [`Activations::new`] allocates every buffer once, sized from the [`Head`]; the per-frame
//!   methods only borrow them.
//! - Call [`Activations::finish`] after writing the features: it computes `‖h‖₁` and the
//!   logits and rejects non-finite values. Scores read before it are stale.

#![deny(missing_docs)]

use nalgebra::{DMatrix, DVector};
use std::fmt;

/// The final linear layer `z = W·h + b` of a classifier, with `W` of shape C × D.
///
/// Design: `W` is stored transposed (D × C, column-major), so each class's weights are one
/// contiguous column and a logit is one contiguous dot product.
#[derive(Clone, Debug)]
pub struct Head {
    /// Wᵀ: column `c` contains the D weights of class `c`.
    weights_t: DMatrix<f32>,
    /// b, length C.
    bias: DVector<f32>,
}

/// Error for head weights whose sizes disagree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeadShapeError {
    /// Number of weights given.
    pub weights: usize,
    /// Number of bias values given, which sets C.
    pub bias: usize,
    /// Feature width D that was requested.
    pub feature_dim: usize,
}

impl fmt::Display for HeadShapeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "head weights have {} values, expected {} classes × {} features = {}",
            self.weights,
            self.bias,
            self.feature_dim,
            self.bias * self.feature_dim
        )
    }
}

impl std::error::Error for HeadShapeError {}

impl Head {
    /// Builds a head from `W` in row-major order (C rows of D values) and `b` (C values).
    ///
    /// Returns an error unless `weights.len() == bias.len() * feature_dim` and both C and D
    /// are positive.
    pub fn from_row_major(
        weights: &[f32],
        bias: &[f32],
        feature_dim: usize,
    ) -> Result<Head, HeadShapeError> {
        let num_classes = bias.len();
        if num_classes == 0 || feature_dim == 0 || weights.len() != num_classes * feature_dim {
            return Err(HeadShapeError {
                weights: weights.len(),
                bias: bias.len(),
                feature_dim,
            });
        }
        // Row c of W, read as column-major data with D rows, is column c of Wᵀ.
        let weights_t = DMatrix::from_column_slice(feature_dim, num_classes, weights);
        Ok(Head {
            weights_t,
            bias: DVector::from_column_slice(bias),
        })
    }

    /// Number of classes C.
    pub fn num_classes(&self) -> usize {
        self.bias.len()
    }

    /// Width D of the penultimate features.
    pub fn feature_dim(&self) -> usize {
        self.weights_t.nrows()
    }

    /// Weight `W[class][feature]`.
    pub fn weight(&self, class: usize, feature: usize) -> f32 {
        self.weights_t[(feature, class)]
    }

    /// Bias `b[class]`.
    pub fn bias(&self, class: usize) -> f32 {
        self.bias[class]
    }

    /// Writes `W·h + b` into `logits`. Allocates nothing.
    ///
    /// # Panics
    /// If `features` does not have D values or `logits` does not have C values; buffers built
    /// by [`Activations::new`] for this head always fit.
    pub fn logits_into(&self, features: &DVector<f32>, logits: &mut DVector<f32>) {
        assert_eq!(
            features.len(),
            self.feature_dim(),
            "feature buffer does not match the head"
        );
        assert_eq!(
            logits.len(),
            self.num_classes(),
            "logit buffer does not match the head"
        );
        let features = features.as_slice();
        let weights = self.weights_t.as_slice();
        for (class, logit) in logits.iter_mut().enumerate() {
            let row = &weights[class * features.len()..][..features.len()];
            *logit = self.bias[class] + dot_f32_lanes8(row, features);
        }
    }
}

/// Dot product with eight independent `f32` accumulators, which the compiler turns into SIMD
/// lanes on x86_64 and aarch64; a single running sum would serialize on the add latency.
/// The summation order differs from a sequential sum, by rounding only.
fn dot_f32_lanes8(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (a_chunks, b_chunks) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a_chunks
        .remainder()
        .iter()
        .zip(b_chunks.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a_chunks.zip(b_chunks) {
        for lane in 0..8 {
            lanes[lane] += x[lane] * y[lane];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// A non-finite value in a frame's activations, which would make every score meaningless.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NonFiniteActivation {
    /// `"features"` or `"logits"`.
    pub tensor: &'static str,
    /// Index of the first non-finite value.
    pub index: usize,
    /// The value itself (NaN or ±inf).
    pub value: f32,
}

impl fmt::Display for NonFiniteActivation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "model produced a non-finite value in {} at index {}: {}",
            self.tensor, self.index, self.value
        )
    }
}

impl std::error::Error for NonFiniteActivation {}

/// One frame's cached activations: features `h` (D values), logits `z` (C values) and `‖h‖₁`.
///
/// Meant for reuse: one instance per pipeline, refilled every frame.
#[derive(Clone, Debug)]
pub struct Activations {
    features: DVector<f32>,
    logits: DVector<f32>,
    /// Σ|h_d| of the current features, valid after [`Activations::finish`].
    features_l1: f64,
}

impl Activations {
    /// Allocates zeroed buffers sized for `head`.
    pub fn new(head: &Head) -> Activations {
        Activations {
            features: DVector::zeros(head.feature_dim()),
            logits: DVector::zeros(head.num_classes()),
            features_l1: 0.0,
        }
    }

    /// Mutable access to the feature buffer, for the model stage to fill.
    pub fn features_mut(&mut self) -> &mut [f32] {
        self.features.as_mut_slice()
    }

    /// Returns the penultimate features `h`.
    pub fn features(&self) -> &[f32] {
        self.features.as_slice()
    }

    /// Returns the logits `z`, valid after [`Activations::finish`].
    pub fn logits(&self) -> &[f32] {
        self.logits.as_slice()
    }

    /// Returns `‖h‖₁`, accumulated in `f64`, valid after [`Activations::finish`].
    pub fn features_l1(&self) -> f64 {
        self.features_l1
    }

    /// Computes `‖h‖₁` and the logits from the current features. Allocates nothing.
    ///
    /// Returns an error naming the first NaN or infinity in the features or the logits; the
    /// caller skips that frame.
    pub fn finish(&mut self, head: &Head) -> Result<(), NonFiniteActivation> {
        check_finite("features", self.features.as_slice())?;
        self.features_l1 = self.features.iter().map(|&h| f64::from(h).abs()).sum();
        head.logits_into(&self.features, &mut self.logits);
        check_finite("logits", self.logits.as_slice())
    }
}

fn check_finite(tensor: &'static str, values: &[f32]) -> Result<(), NonFiniteActivation> {
    match values.iter().position(|v| !v.is_finite()) {
        Some(index) => Err(NonFiniteActivation {
            tensor,
            index,
            value: values[index],
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small_head() -> Head {
        // W = [[1, 2], [3, 4], [-1, 0]], b = [0.5, -0.5, 0].
        Head::from_row_major(&[1.0, 2.0, 3.0, 4.0, -1.0, 0.0], &[0.5, -0.5, 0.0], 2).unwrap()
    }

    #[test]
    fn head_computes_affine_logits() {
        let head = small_head();
        let mut act = Activations::new(&head);
        act.features_mut().copy_from_slice(&[2.0, -1.0]);
        act.finish(&head).unwrap();
        assert_eq!(act.logits(), &[0.5, 1.5, -2.0]);
    }

    #[test]
    fn features_l1_sums_absolute_values() {
        let head = small_head();
        let mut act = Activations::new(&head);
        act.features_mut().copy_from_slice(&[2.0, -1.0]);
        act.finish(&head).unwrap();
        assert_eq!(act.features_l1(), 3.0);
    }

    #[test]
    fn head_rejects_mismatched_sizes() {
        let err = Head::from_row_major(&[1.0; 5], &[0.0; 3], 2).unwrap_err();
        assert_eq!(
            err.to_string(),
            "head weights have 5 values, expected 3 classes × 2 features = 6"
        );
    }

    #[test]
    fn nan_in_features_is_rejected() {
        let head = small_head();
        let mut act = Activations::new(&head);
        act.features_mut().copy_from_slice(&[1.0, f32::NAN]);
        let err = act.finish(&head).unwrap_err();
        assert_eq!((err.tensor, err.index), ("features", 1));
    }

    #[test]
    fn infinite_logit_is_rejected() {
        let head = small_head();
        let mut act = Activations::new(&head);
        act.features_mut().copy_from_slice(&[f32::MAX, f32::MAX]);
        let err = act.finish(&head).unwrap_err();
        assert_eq!(err.tensor, "logits");
    }
}
