//! ViM (Wang, Li, Feng and Zhang, "ViM: Out-Of-Distribution with Virtual-logit Matching",
//! CVPR 2022), as the authors' `benchmark.py` (haoqiwang/vim) computes it.
//!
//! Fit, with `W` of shape C × D:
//! - origin `o = −W⁺·b`, the minimum-norm least-squares solution of `W·o = −b`, so every
//!   logit is 0 there when W has full row rank (C ≤ D). `W⁺` comes from an SVD whose singular
//!   values at or below `max(C, D) · ε_f64 · σ_max` count as zero;
//! - principal space: the top-k eigenvectors of `(1/N) Σ_i (h_i − o)(h_i − o)ᵀ`, not centered
//!   at the mean, as the authors' `EmpiricalCovariance(assume_centered=True)`;
//! - `α = Σ_i max_c z_ic / Σ_i r_i` over the fit images, with the residual norm
//!   `r = ‖(I − P·Pᵀ)(h − o)‖`.
//!
//! Score: `logsumexp(z) − α·r` (T = 1), the authors' code. The paper's probability of the
//! virtual logit, `e^{αr} / (Σ_c e^{z_c} + e^{αr})`, is a decreasing function of it, so both
//! rank frames the same way.
//!
//! Principal dimension k, when not given: 1000 for D ≥ 2048, otherwise 512, as the authors'
//! `benchmark.py` sets it. Below D = 768 this module uses D/2 instead, so that half of the
//! dimensions stay residual (the authors' rule would leave none at D = 512). Either way k is
//! at most `rank − 1`, where `rank` counts the eigenvalues above `D · ε_f64 · λ_max`,
//! because a principal space that covers every fit direction would leave the fit residuals at
//! rounding noise and `α` meaningless. With N fit images the rank is at most N, so 33 images
//! give k ≤ 32.

use super::common::{
    bytes_of, check_fit_set, check_len, check_rows, dot_f64, for_each_logits, second_moment,
    sorted_symmetric_eigen, ROW_BLOCK,
};
use super::{FitError, FitParams, FittedKind};
use crate::activations::{Activations, Head};
use crate::score::log_sum_exp;
use nalgebra::{DMatrix, DVector};
use serde::{Deserialize, Serialize};

/// Statistics of [`FittedKind::Vim`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VimStats {
    /// Dimension k of the principal space.
    pub principal_dim: usize,
    /// Origin `o = −W⁺·b`, D values in feature units.
    pub origin: Vec<f32>,
    /// Scale `α` of the virtual logit, logit units per feature unit.
    pub alpha: f32,
    /// Orthonormal basis of the residual space: D − k columns of D values, the eigenvectors
    /// k+1 … D in descending order of eigenvalue.
    pub residual_basis: Vec<Vec<f32>>,
}

/// Returns the default principal dimension for D-wide features, before the rank cap.
fn default_principal_dim(dim: usize) -> usize {
    if dim >= 2048 {
        1000
    } else if dim >= 768 {
        512
    } else {
        dim / 2
    }
}

pub(super) fn fit(
    head: &Head,
    features: &[&[f32]],
    params: &FitParams,
) -> Result<VimStats, FitError> {
    let kind = FittedKind::Vim;
    check_fit_set(kind, head, features)?;
    let dim = head.feature_dim();

    let origin = origin(head);
    let moment = second_moment(dim, features.len(), |image, out| {
        for ((o, &h), &u) in out.iter_mut().zip(features[image]).zip(origin.iter()) {
            *o = f64::from(h) - u;
        }
    });
    let eigen = sorted_symmetric_eigen(moment);
    if eigen.rank == 0 {
        return Err(FitError::ZeroResidual { principal_dim: 0 });
    }
    let principal_dim = match params.vim_dim {
        Some(requested) if requested >= eigen.rank => {
            return Err(FitError::VimDimTooLarge {
                requested,
                rank: eigen.rank,
            })
        }
        Some(requested) => requested,
        None => default_principal_dim(dim).min(eigen.rank - 1),
    };
    let basis = eigen.vectors.columns(principal_dim, dim - principal_dim);

    // Residual norms, one block of fit images at a time.
    let mut residual_sum = 0f64;
    for start in (0..features.len()).step_by(ROW_BLOCK) {
        let rows = ROW_BLOCK.min(features.len() - start);
        let centered = DMatrix::from_fn(rows, dim, |r, d| {
            f64::from(features[start + r][d]) - origin[d]
        });
        let coordinates = centered * basis;
        residual_sum += coordinates.row_iter().map(|row| row.norm()).sum::<f64>();
    }
    let mut max_logit_sum = 0f64;
    for_each_logits(kind, head, features, |_, logits| {
        max_logit_sum += logits
            .iter()
            .fold(f64::NEG_INFINITY, |m, &z| m.max(f64::from(z)));
    })?;
    let alpha = max_logit_sum / residual_sum;
    if residual_sum == 0.0 || !alpha.is_finite() {
        return Err(FitError::ZeroResidual { principal_dim });
    }

    Ok(VimStats {
        principal_dim,
        origin: origin.iter().map(|&u| u as f32).collect(),
        alpha: alpha as f32,
        residual_basis: basis
            .column_iter()
            .map(|column| column.iter().map(|&v| v as f32).collect())
            .collect(),
    })
}

/// Returns `o = −W⁺·b` in `f64`.
fn origin(head: &Head) -> DVector<f64> {
    let (dim, num_classes) = (head.feature_dim(), head.num_classes());
    let weights = DMatrix::from_fn(num_classes, dim, |c, d| f64::from(head.weight(c, d)));
    let bias = DVector::from_fn(num_classes, |c, _| f64::from(head.bias(c)));
    let svd = weights.svd(true, true);
    let cutoff = num_classes.max(dim) as f64 * f64::EPSILON * svd.singular_values.max();
    let solution = svd
        .solve(&bias, cutoff)
        .expect("U and Vᵀ were computed and the cutoff is not negative");
    -solution
}

/// Per-frame state: the residual basis, the origin and the frame's centered features.
#[derive(Clone, Debug)]
pub(super) struct VimScorer {
    alpha: f64,
    origin: Vec<f32>,
    residual_basis: Vec<f32>,
    centered: Vec<f32>,
}

impl VimScorer {
    pub(super) fn new(stats: VimStats, head: &Head) -> Result<VimScorer, FitError> {
        let kind = FittedKind::Vim;
        let dim = head.feature_dim();
        check_len(kind, "origin", dim, stats.origin.len())?;
        if stats.principal_dim >= dim {
            return Err(FitError::InvalidStats {
                kind,
                field: "principal_dim",
                reason: "it is not below the head's feature count D",
            });
        }
        check_len(
            kind,
            "residual_basis",
            dim - stats.principal_dim,
            stats.residual_basis.len(),
        )?;
        check_rows(kind, "residual_basis column", dim, &stats.residual_basis)?;
        if !(stats.alpha.is_finite() && stats.origin.iter().all(|v| v.is_finite())) {
            return Err(FitError::InvalidStats {
                kind,
                field: "alpha or origin",
                reason: "a value is not finite",
            });
        }
        Ok(VimScorer {
            alpha: f64::from(stats.alpha),
            origin: stats.origin,
            residual_basis: stats.residual_basis.concat(),
            centered: vec![0.0; dim],
        })
    }

    pub(super) fn score(&mut self, act: &Activations) -> f32 {
        for ((c, &h), &o) in self
            .centered
            .iter_mut()
            .zip(act.features())
            .zip(&self.origin)
        {
            *c = h - o;
        }
        let residual_squared: f64 = self
            .residual_basis
            .chunks_exact(self.centered.len())
            .map(|column| dot_f64(column, &self.centered).powi(2))
            .sum();
        let virtual_logit = self.alpha * residual_squared.sqrt();
        (log_sum_exp(act.logits(), 1.0) - virtual_logit) as f32
    }

    pub(super) fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + bytes_of::<f32>(self.origin.len() + self.residual_basis.len() + self.centered.len())
    }
}
