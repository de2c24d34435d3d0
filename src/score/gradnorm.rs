//! GradNorm (Huang, Geng and Li, "On the Importance of Gradients for Detecting Distributional
//! Shifts in the Wild", NeurIPS 2021) in closed form.
//!
//! The score is the L1 norm of ∂L/∂W for L = KL(u ‖ softmax(z/T)), u uniform over the C classes
//! and z = W·h + b. With p = softmax(z/T) that gradient is the outer product
//! ((p − u)/T)·hᵀ, and the L1 norm of an outer product is the product of the L1 norms:
//!
//! ```text
//! S(h) = (1/T) · ‖h‖₁ · Σ_c |p_c − 1/C|
//! ```
//!
//! so no backward pass is needed. Only the weight gradient counts; the bias gradient
//! (p − u)/T is not part of the score.

use std::fmt;
use std::str::FromStr;

/// Scale of the GradNorm score. Rankings are identical; thresholds are not.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum GradNormScale {
    /// The paper's definition, with target 1/C per class.
    #[default]
    Paper,
    /// The official implementation (deeplearning-wisc/gradnorm_ood, `test_ood.py`), which uses
    /// target 1 for every class and therefore returns exactly C × the paper's score.
    Official,
}

impl GradNormScale {
    /// Returns the name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            GradNormScale::Paper => "paper",
            GradNormScale::Official => "official",
        }
    }
}

impl fmt::Display for GradNormScale {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for GradNormScale {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "paper" => Ok(GradNormScale::Paper),
            "official" => Ok(GradNormScale::Official),
            other => Err(format!(
                "unknown GradNorm scale '{other}': expected paper or official"
            )),
        }
    }
}

/// Computes the GradNorm score of one frame from `‖h‖₁` and its logits.
///
/// `features_l1` is the L1 norm of the penultimate features, `logits` the C class logits and
/// `temperature` is T > 0. The softmax subtracts the maximum before exponentiating, so logits
/// of ±1000 give finite scores; all-zero features give 0. Sums run in `f64` (see the module
/// error bound). Allocates nothing.
///
/// Returns 0 for an empty logit slice.
pub fn gradnorm(features_l1: f64, logits: &[f32], temperature: f32, scale: GradNormScale) -> f32 {
    let paper = features_l1 * logit_gradient_l1(logits, temperature);
    apply_scale(paper, logits.len(), scale)
}

/// Computes the L1 norm of the same KL gradient taken with respect to the logits instead of
/// the weights: `(1/T) · Σ_c |softmax(z/T)_c − 1/C|`, which is GradNorm without its `‖h‖₁`
/// factor.
///
/// On the bundled EfficientNet-Lite0 the `‖h‖₁` factor is what makes GradNorm rank cartoons
/// and paintings above photos: their busy, high-contrast content produces larger pooled
/// activations (see docs/benchmarks.md). The logit gradient keeps GradNorm's loss and
/// temperature and drops that factor. Same scales, same error bound; allocates nothing.
pub fn gradnorm_logits(logits: &[f32], temperature: f32, scale: GradNormScale) -> f32 {
    apply_scale(logit_gradient_l1(logits, temperature), logits.len(), scale)
}

/// `(1/T) · Σ_c |softmax(z/T)_c − 1/C|` in `f64`, or 0 for no logits.
fn logit_gradient_l1(logits: &[f32], temperature: f32) -> f64 {
    debug_assert!(
        temperature > 0.0,
        "temperature must be positive, got {temperature}"
    );
    if logits.is_empty() {
        return 0.0;
    }
    let inv_t = 1.0 / f64::from(temperature);
    let uniform = 1.0 / logits.len() as f64;

    // Shift by the largest scaled logit so every exponent is ≤ 0.
    let max_scaled = logits
        .iter()
        .fold(f64::NEG_INFINITY, |m, &z| m.max(f64::from(z) * inv_t));
    let partition: f64 = logits
        .iter()
        .map(|&z| (f64::from(z) * inv_t - max_scaled).exp())
        .sum();

    // Σ_c |p_c − 1/C|, recomputing each exponential instead of storing the softmax.
    let deviation: f64 = logits
        .iter()
        .map(|&z| ((f64::from(z) * inv_t - max_scaled).exp() / partition - uniform).abs())
        .sum();
    inv_t * deviation
}

fn apply_scale(paper: f64, num_classes: usize, scale: GradNormScale) -> f32 {
    let scaled = match scale {
        GradNormScale::Paper => paper,
        GradNormScale::Official => paper * num_classes as f64,
    };
    scaled as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_equal_logits_score_zero() {
        let score = gradnorm(10.0, &[3.0; 7], 1.0, GradNormScale::Paper);
        assert_eq!(score, 0.0);
    }

    #[test]
    fn zero_features_score_zero() {
        let score = gradnorm(0.0, &[1.0, -4.0, 9.0], 1.0, GradNormScale::Paper);
        assert_eq!(score, 0.0);
    }

    #[test]
    fn one_huge_logit_stays_finite() {
        let logits = [1000.0, -1000.0, 0.0, 0.0];
        let score = gradnorm(2.0, &logits, 1.0, GradNormScale::Paper);
        // p ≈ (1, 0, 0, 0): Σ|p − 1/4| = 3/4 + 3 × 1/4 = 1.5, times ‖h‖₁ = 2.
        assert!((score - 3.0).abs() < 1e-6, "score {score}");
    }

    #[test]
    fn official_scale_is_class_count_times_paper() {
        let logits = [0.5, 2.0, -1.0, 0.25, 3.0];
        let paper = gradnorm(4.0, &logits, 1.0, GradNormScale::Paper);
        let official = gradnorm(4.0, &logits, 1.0, GradNormScale::Official);
        assert!(
            (official - 5.0 * paper).abs() <= 1e-6 * official,
            "{official} vs {paper}"
        );
    }

    #[test]
    fn logit_gradient_is_gradnorm_without_feature_norm() {
        let logits = [0.5, 2.0, -1.0, 0.25, 3.0];
        let full = gradnorm(4.0, &logits, 2.0, GradNormScale::Paper);
        let logit_only = gradnorm_logits(&logits, 2.0, GradNormScale::Paper);
        assert!(
            (full - 4.0 * logit_only).abs() <= 1e-6 * full,
            "{full} vs {logit_only}"
        );
    }

    #[test]
    fn empty_logits_score_zero() {
        assert_eq!(gradnorm(1.0, &[], 1.0, GradNormScale::Paper), 0.0);
    }
}
