//! Deep nearest neighbours (Sun, Ming, Zhu and Li, "Out-of-Distribution Detection with Deep
//! Nearest Neighbors", ICML 2022).
//!
//! Fit: the L2-normalized features of the N fit images form the bank. Score:
//! `−‖ĥ − b_(k)‖`, the negated Euclidean distance from the normalized frame `ĥ` to its k-th
//! nearest bank entry. The authors' code (deeplearning-wisc/knn-ood,
//! `run_imagenet.py`) returns the negated squared distance (faiss
//! `IndexFlatL2`), which ranks frames the same way. A zero feature vector, which the authors'
//! normalizer `x / ‖x‖ + 1e-10` turns into NaN, normalizes to zero here and is at distance 1
//! from every bank entry.
//!
//! Distances are summed from the differences, not as `2 − 2·ĥ·b`, so a frame equal to a bank
//! entry is at distance exactly 0.

use super::common::{bytes_of, check_fit_set, check_rows};
use super::{FitError, FitParams, FittedKind};
use crate::activations::{Activations, Head};
use serde::{Deserialize, Serialize};

/// Largest bank [`fit`](super::fit) builds: 50 000 entries of D `f32`, 256 MB for D = 1280.
pub const MAX_KNN_BANK: usize = 50_000;

/// Statistics of [`FittedKind::Knn`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KnnStats {
    /// Rank k of the neighbour whose distance is the score, 1 ≤ k ≤ N.
    pub k: usize,
    /// The bank: one row of D unit-norm (or all-zero) features per fit image.
    pub bank: Vec<Vec<f32>>,
}

pub(super) fn fit(
    head: &Head,
    features: &[&[f32]],
    params: &FitParams,
) -> Result<KnnStats, FitError> {
    let kind = FittedKind::Knn;
    if params.knn_k == 0 {
        return Err(FitError::InvalidParameter {
            kind,
            name: "k",
            value: 0.0,
            expected: "at least 1",
        });
    }
    check_fit_set(kind, head, features)?;
    if features.len() > MAX_KNN_BANK {
        return Err(FitError::TooManyFitImages {
            kind,
            max: MAX_KNN_BANK,
            actual: features.len(),
        });
    }

    let dim = head.feature_dim();
    let bank = features
        .iter()
        .map(|h| {
            let mut row = vec![0f32; dim];
            normalize_into(h, &mut row);
            row
        })
        .collect();
    Ok(KnnStats {
        k: params.knn_k.min(features.len()),
        bank,
    })
}

/// Writes `h / ‖h‖₂` into `out`, or zeros when `h` is all zero. The norm is accumulated in
/// `f64`.
fn normalize_into(h: &[f32], out: &mut [f32]) {
    let norm = h.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>().sqrt();
    for (o, &v) in out.iter_mut().zip(h) {
        *o = if norm > 0.0 {
            (f64::from(v) / norm) as f32
        } else {
            0.0
        };
    }
}

/// Squared Euclidean distance in eight `f32` lanes; every term is nonnegative, so the
/// relative rounding error stays near `D · 2⁻²⁴` at worst.
fn squared_distance(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (a_chunks, b_chunks) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a_chunks
        .remainder()
        .iter()
        .zip(b_chunks.remainder())
        .map(|(x, y)| (x - y) * (x - y))
        .sum();
    for (x, y) in a_chunks.zip(b_chunks) {
        for lane in 0..8 {
            let diff = x[lane] - y[lane];
            lanes[lane] += diff * diff;
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// Per-frame state: the bank, the normalized frame and one distance slot per bank entry.
#[derive(Clone, Debug)]
pub(super) struct KnnScorer {
    k: usize,
    bank: Vec<f32>,
    normalized: Vec<f32>,
    distances: Vec<f32>,
}

impl KnnScorer {
    pub(super) fn new(stats: KnnStats, head: &Head) -> Result<KnnScorer, FitError> {
        let kind = FittedKind::Knn;
        let dim = head.feature_dim();
        let entries = stats.bank.len();
        if entries == 0 {
            return Err(FitError::EmptyFitSet { kind });
        }
        if entries > MAX_KNN_BANK {
            return Err(FitError::TooManyFitImages {
                kind,
                max: MAX_KNN_BANK,
                actual: entries,
            });
        }
        if stats.k == 0 || stats.k > entries {
            return Err(FitError::InvalidParameter {
                kind,
                name: "k",
                value: stats.k as f64,
                expected: "a rank from 1 to the number of bank entries",
            });
        }
        check_rows(kind, "bank row", dim, &stats.bank)?;
        Ok(KnnScorer {
            k: stats.k,
            bank: stats.bank.concat(),
            normalized: vec![0.0; dim],
            distances: vec![0.0; entries],
        })
    }

    pub(super) fn score(&mut self, act: &Activations) -> f32 {
        normalize_into(act.features(), &mut self.normalized);
        let dim = self.normalized.len();
        for (distance, entry) in self.distances.iter_mut().zip(self.bank.chunks_exact(dim)) {
            *distance = squared_distance(&self.normalized, entry);
        }
        let (_, kth, _) = self
            .distances
            .select_nth_unstable_by(self.k - 1, f32::total_cmp);
        -kth.sqrt()
    }

    pub(super) fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + bytes_of::<f32>(self.bank.len() + self.normalized.len() + self.distances.len())
    }
}
