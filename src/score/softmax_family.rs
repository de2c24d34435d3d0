//! Scores derived from the softmax and the logits: MSP, max-logit and energy.
//!
//! All of them subtract the largest logit before exponentiating, so logits of ±1000 stay
//! finite, and accumulate in `f64`. None allocates.

/// Returns the natural log of `Σ_c exp(z_c / T)`, computed as `m + ln Σ exp(z_c/T − m)` with
/// `m = max z/T`. Returns negative infinity for an empty slice.
pub fn log_sum_exp(logits: &[f32], temperature: f32) -> f64 {
    let inv_t = 1.0 / f64::from(temperature);
    let max_scaled = logits
        .iter()
        .fold(f64::NEG_INFINITY, |m, &z| m.max(f64::from(z) * inv_t));
    if !max_scaled.is_finite() {
        return max_scaled;
    }
    let partition: f64 = logits
        .iter()
        .map(|&z| (f64::from(z) * inv_t - max_scaled).exp())
        .sum();
    max_scaled + partition.ln()
}

/// Maximum softmax probability of `softmax(z/T)`, in (0, 1]. Returns 0 for an empty slice.
pub fn max_softmax(logits: &[f32], temperature: f32) -> f32 {
    if logits.is_empty() {
        return 0.0;
    }
    let inv_t = 1.0 / f64::from(temperature);
    let max_scaled = logits
        .iter()
        .fold(f64::NEG_INFINITY, |m, &z| m.max(f64::from(z) * inv_t));
    // The largest term contributes exp(0) = 1, so the maximum probability is 1 / partition.
    let partition: f64 = logits
        .iter()
        .map(|&z| (f64::from(z) * inv_t - max_scaled).exp())
        .sum();
    (1.0 / partition) as f32
}

/// Largest logit. Returns negative infinity for an empty slice.
pub fn max_logit(logits: &[f32]) -> f32 {
    logits.iter().copied().fold(f32::NEG_INFINITY, f32::max)
}

/// Energy score `T · logsumexp(z/T)`: the negated free energy, so higher is more
/// in-distribution.
pub fn energy(logits: &[f32], temperature: f32) -> f32 {
    (f64::from(temperature) * log_sum_exp(logits, temperature)) as f32
}

/// Index and softmax probability (T = 1) of the top-1 class, or `None` for an empty slice.
/// Ties go to the lowest index.
pub fn top1(logits: &[f32]) -> Option<(usize, f32)> {
    let mut best: Option<(usize, f32)> = None;
    for (index, &z) in logits.iter().enumerate() {
        if best.is_none_or(|(_, top)| z > top) {
            best = Some((index, z));
        }
    }
    best.map(|(index, _)| (index, max_softmax(logits, 1.0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_sum_exp_of_huge_logits_is_finite() {
        let lse = log_sum_exp(&[1000.0, 1000.0], 1.0);
        assert!((lse - (1000.0 + 2f64.ln())).abs() < 1e-12, "lse {lse}");
    }

    #[test]
    fn max_softmax_of_equal_logits_is_uniform() {
        let msp = max_softmax(&[-1000.0; 4], 1.0);
        assert_eq!(msp, 0.25);
    }

    #[test]
    fn energy_scales_with_temperature() {
        // T · ln(2·exp(x/T)) = x + T·ln 2 for two equal logits x.
        let e = energy(&[3.0, 3.0], 2.0);
        assert!(
            (f64::from(e) - (3.0 + 2.0 * 2f64.ln())).abs() < 1e-6,
            "energy {e}"
        );
    }

    #[test]
    fn top1_prefers_lowest_index_on_ties() {
        assert_eq!(top1(&[1.0, 5.0, 5.0]).map(|(i, _)| i), Some(1));
    }

    #[test]
    fn top1_of_empty_is_none() {
        assert_eq!(top1(&[]), None);
    }
}
