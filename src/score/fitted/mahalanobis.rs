//! Mahalanobis distance to class-conditional means (Lee, Lee, Lee and Shin, "A Simple Unified
//! Framework for Detecting Out-of-Distribution Samples and Adversarial Attacks",
//! NeurIPS 2018), on the penultimate features only, without input preprocessing.
//!
//! Fit: the fit images carry no labels, so they are grouped by their top-1 class. Each class
//! that occurs gets its mean `μ_k`. The shared covariance is
//! `Σ = (1/N) Σ_i (h_i − μ_{k(i)})(h_i − μ_{k(i)})ᵀ`. Its pseudo-inverse `Σ⁺` drops the
//! eigenvalues at or below `D · ε_f64 · λ_max`, the default cutoff of `scipy.linalg.pinvh`.
//! Score: `−min_k (h − μ_k)ᵀ Σ⁺ (h − μ_k)`.
//!
//! `Σ⁺ = L·Lᵀ` with `L = V_r · diag(1/√λ)`, the r kept eigenvectors scaled, so the distance
//! is `‖Lᵀh − Lᵀμ_k‖²`: one D × r projection per frame plus K·r work, where the precision
//! matrix would cost K·D² per frame.
//! NOTE: the rank r is at most N − K. With few fit images the distance measures only a handful
//! of directions: the 33 bundled calibration photos fall in 31 predicted classes, so r = 2.

use super::common::{
    bytes_of, check_fit_set, check_len, check_rows, dot_f64, for_each_logits, second_moment,
    sorted_symmetric_eigen,
};
use super::{FitError, FittedKind};
use crate::activations::{Activations, Head};
use crate::score::top1;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Statistics of [`FittedKind::Mahalanobis`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MahalanobisStats {
    /// The K classes that at least one fit image was predicted as, ascending.
    pub classes: Vec<usize>,
    /// Fit images per class in `classes`.
    pub counts: Vec<usize>,
    /// Class means, one row of D features per entry of `classes`, in feature units.
    pub means: Vec<Vec<f32>>,
    /// `L`: one column of D values per kept eigenvalue of `Σ`, in descending order of
    /// eigenvalue, each eigenvector divided by the square root of its eigenvalue, so that
    /// `Σ⁺ = L·Lᵀ`. The number of columns is the rank r of `Σ`.
    pub whitening: Vec<Vec<f32>>,
}

pub(super) fn fit(head: &Head, features: &[&[f32]]) -> Result<MahalanobisStats, FitError> {
    let kind = FittedKind::Mahalanobis;
    check_fit_set(kind, head, features)?;
    let dim = head.feature_dim();

    let mut members: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for_each_logits(kind, head, features, |image, logits| {
        let (class, _) = top1(logits).expect("the head has at least one class");
        members.entry(class).or_default().push(image);
    })?;

    // Means in f64, and for each image the row of its class.
    let mut means = Vec::with_capacity(members.len() * dim);
    let mut class_row = vec![0usize; features.len()];
    for (row, images) in members.values().enumerate() {
        let mut sum = vec![0f64; dim];
        for &image in images {
            class_row[image] = row;
            for (s, &h) in sum.iter_mut().zip(features[image]) {
                *s += f64::from(h);
            }
        }
        means.extend(sum.iter().map(|s| s / images.len() as f64));
    }

    let covariance = second_moment(dim, features.len(), |image, out| {
        let mean = &means[class_row[image] * dim..][..dim];
        for ((o, &h), &m) in out.iter_mut().zip(features[image]).zip(mean) {
            *o = f64::from(h) - m;
        }
    });
    let eigen = sorted_symmetric_eigen(covariance);
    if eigen.rank == 0 {
        return Err(FitError::ZeroCovariance {
            kind,
            images: features.len(),
        });
    }

    let whitening = (0..eigen.rank)
        .map(|j| {
            let scale = 1.0 / eigen.values[j].sqrt();
            eigen
                .vectors
                .column(j)
                .iter()
                .map(|v| (v * scale) as f32)
                .collect()
        })
        .collect();
    Ok(MahalanobisStats {
        classes: members.keys().copied().collect(),
        counts: members.values().map(Vec::len).collect(),
        means: means
            .chunks_exact(dim)
            .map(|mean| mean.iter().map(|&m| m as f32).collect())
            .collect(),
        whitening,
    })
}

/// Per-frame state: `L` (r columns of D), the projected means `Lᵀμ_k` (K rows of r) and the
/// frame's projection `Lᵀh`.
#[derive(Clone, Debug)]
pub(super) struct MahalanobisScorer {
    whitening: Vec<f32>,
    projected_means: Vec<f32>,
    projected: Vec<f64>,
}

impl MahalanobisScorer {
    pub(super) fn new(stats: MahalanobisStats, head: &Head) -> Result<MahalanobisScorer, FitError> {
        let kind = FittedKind::Mahalanobis;
        let (dim, num_classes) = (head.feature_dim(), head.num_classes());
        let (classes, rank) = (stats.classes.len(), stats.whitening.len());
        if classes == 0 || rank == 0 {
            return Err(FitError::InvalidStats {
                kind,
                field: if classes == 0 { "classes" } else { "whitening" },
                reason: "it is empty",
            });
        }
        check_len(kind, "counts", classes, stats.counts.len())?;
        check_len(kind, "means", classes, stats.means.len())?;
        check_rows(kind, "means row", dim, &stats.means)?;
        check_rows(kind, "whitening column", dim, &stats.whitening)?;
        if stats.classes.iter().any(|&c| c >= num_classes) {
            return Err(FitError::InvalidStats {
                kind,
                field: "classes",
                reason: "a class index is not below the head's class count C",
            });
        }

        let mut projected_means = Vec::with_capacity(classes * rank);
        for mean in &stats.means {
            for column in &stats.whitening {
                projected_means.push(dot_f64(column, mean) as f32);
            }
        }
        Ok(MahalanobisScorer {
            whitening: stats.whitening.concat(),
            projected_means,
            projected: vec![0.0; rank],
        })
    }

    pub(super) fn score(&mut self, act: &Activations) -> f32 {
        let features = act.features();
        for (p, column) in self
            .projected
            .iter_mut()
            .zip(self.whitening.chunks_exact(features.len()))
        {
            *p = dot_f64(column, features);
        }
        let mut min_distance = f64::INFINITY;
        for mean in self.projected_means.chunks_exact(self.projected.len()) {
            let distance: f64 = self
                .projected
                .iter()
                .zip(mean)
                .map(|(&p, &m)| (p - f64::from(m)).powi(2))
                .sum();
            min_distance = min_distance.min(distance);
        }
        (-min_distance) as f32
    }

    pub(super) fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + bytes_of::<f32>(self.whitening.len() + self.projected_means.len())
            + bytes_of::<f64>(self.projected.len())
    }
}
