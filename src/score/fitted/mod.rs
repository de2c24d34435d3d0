//! Out-of-distribution detectors whose statistics are fitted on in-distribution activations.
//!
//! [`fit`] computes one detector's [`DetectorStats`] from the penultimate features of
//! in-distribution fit images; [`FittedScorer`] scores frames with them, allocating only in
//! [`FittedScorer::new`]; [`StatsFile`] stores the statistics of one model as JSON.
//!
//! # Contract
//! - Features `h` are the D pooled penultimate activations of one image: finite, in the
//!   model's own units. Logits are `z = W·h + b` from the model's [`Head`] (`W` is C × D).
//! - ReAct, ASH and SCALE assume ReLU features, `h ≥ 0`. On the bundled EfficientNet-Lite0
//!   they are average-pooled ReLU6 outputs, `0 ≤ h ≤ 6`, with D = 1280 and C = 1000.
//! - Every score is an `f32` and higher means more in-distribution, as for
//!   [`crate::score::Scorer`].
//! - The fit images carry no labels: where a paper groups by class, the class is the top-1
//!   prediction (lowest index on ties).
//!
//! # Detectors and memory
//! Memory is what [`FittedScorer::memory_bytes`] counts: statistics plus scratch, for D
//! features, C classes, N fit images, K distinct predicted classes (K ≤ min(C, N)) and r the
//! rank of the within-class covariance (r ≤ min(D, N − K)). Figures are for D = 1280,
//! C = 1000.
//!
//! | kind | definition | memory |
//! | --- | --- | --- |
//! | `react` | energy of `W·min(h, c) + b` (ReAct, Sun et al. 2021) | 4(D + C) B, 9 KB |
//! | `gradnorm-react` | GradNorm of the same clipped features | 4(D + C) B, 9 KB |
//! | `ash-p`, `ash-b`, `ash-s` | energy after per-frame pruning (ASH, Djurisic et al. 2023) | 4(2D + C) B, 14 KB |
//! | `scale` | energy of `h·exp(s1/s2)` (SCALE, Xu et al. 2024) | 4(2D + C) B, 14 KB |
//! | `kl-matching` | `−min_k KL(p ‖ d_k)` (Hendrycks et al. 2022) | 8C(K + 1) B, at most 8 MB |
//! | `mahalanobis` | `−min_k (h − μ_k)ᵀ Σ⁺ (h − μ_k)` (Lee et al. 2018) | 4r(D + K) + 8r B, at most 11.7 MB |
//! | `vim` | `logsumexp(z) − α·r` (Wang et al. 2022) | 4D(D − k + 2) B, 3.9 MB at k = 512 |
//! | `knn` | `−` k-th nearest normalized distance (Sun et al. 2022) | 4(N(D + 1) + D) B, 5.1 KB per fit image |
//!
//! Each family's source file (`clip.rs`, `shaping.rs`, `kl.rs`, `mahalanobis.rs`, `vim.rs`,
//! `knn.rs` in `src/score/fitted/`) documents the full definition, its source and the choices
//! made where the papers leave room. The bundled calibration set (33 images) is far smaller
//! than the papers' fit sets (ImageNet training images): there the Mahalanobis distance
//! uses at most N − K directions and ViM's principal space at most N − 1 dimensions.

#![deny(missing_docs)]

mod clip;
mod common;
mod error;
mod file;
mod kl;
mod knn;
mod mahalanobis;
mod shaping;
mod vim;

pub use clip::ClipStats;
pub use error::{FitError, UnknownDetector};
pub use file::{path_for_model, StatsFile, StatsFileError, STATS_FORMAT};
pub use kl::KlStats;
pub use knn::{KnnStats, MAX_KNN_BANK};
pub use mahalanobis::MahalanobisStats;
pub use shaping::ShapingParams;
pub use vim::VimStats;

use crate::activations::{Activations, Head};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The detectors of this module.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FittedKind {
    /// ReAct: energy of the logits of features clipped at a fitted percentile.
    React,
    /// GradNorm (paper scale) of the ReAct-clipped features and their logits.
    GradNormReact,
    /// ASH-P: energy after zeroing each frame's values below its percentile.
    AshP,
    /// ASH-B: energy after pruning and binarizing to the frame's mean kept value.
    AshB,
    /// ASH-S: energy after pruning and scaling by `exp(s1/s2)`.
    AshS,
    /// SCALE: energy of the unpruned features scaled by `exp(s1/s2)`.
    Scale,
    /// KL matching: negated KL divergence to the nearest class template.
    KlMatching,
    /// Mahalanobis: negated minimum Mahalanobis distance to the class means.
    Mahalanobis,
    /// ViM: energy minus the virtual logit of the residual outside the principal space.
    Vim,
    /// KNN: negated distance to the k-th nearest normalized fit feature.
    Knn,
}

impl FittedKind {
    /// Every detector, in the order reports list them.
    pub const ALL: [FittedKind; 10] = [
        FittedKind::React,
        FittedKind::GradNormReact,
        FittedKind::AshP,
        FittedKind::AshB,
        FittedKind::AshS,
        FittedKind::Scale,
        FittedKind::KlMatching,
        FittedKind::Mahalanobis,
        FittedKind::Vim,
        FittedKind::Knn,
    ];

    /// Returns the name used on the command line and in statistics files.
    pub fn name(self) -> &'static str {
        match self {
            FittedKind::React => "react",
            FittedKind::GradNormReact => "gradnorm-react",
            FittedKind::AshP => "ash-p",
            FittedKind::AshB => "ash-b",
            FittedKind::AshS => "ash-s",
            FittedKind::Scale => "scale",
            FittedKind::KlMatching => "kl-matching",
            FittedKind::Mahalanobis => "mahalanobis",
            FittedKind::Vim => "vim",
            FittedKind::Knn => "knn",
        }
    }

    /// Returns whether [`fit`] reads the fit features. ASH and SCALE only need their
    /// parameters.
    pub fn needs_fit(self) -> bool {
        !matches!(
            self,
            FittedKind::AshP | FittedKind::AshB | FittedKind::AshS | FittedKind::Scale
        )
    }
}

impl fmt::Display for FittedKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for FittedKind {
    type Err = UnknownDetector;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        FittedKind::ALL
            .into_iter()
            .find(|kind| kind.name() == s)
            .ok_or_else(|| UnknownDetector(s.to_string()))
    }
}

/// Parameters of [`fit`]. Each detector reads only its own.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FitParams {
    /// Softmax temperature `T > 0` of ReAct, GradNorm-ReAct, ASH and SCALE. KL matching,
    /// Mahalanobis, ViM and KNN follow their papers at T = 1 or use no softmax.
    pub temperature: f32,
    /// ReAct percentile, 0 to 100, of all fit activation values (default 90, the ReAct
    /// paper's choice).
    pub react_percentile: f64,
    /// ASH and SCALE per-frame pruning percentile, 0 to under 100 (default 90).
    pub ash_percentile: f64,
    /// KNN neighbour rank k ≥ 1 (default 50), capped at the number of fit images.
    pub knn_k: usize,
    /// ViM principal dimension k; `None` picks 1000 for D ≥ 2048, 512 for 768 ≤ D < 2048 and
    /// D/2 below, capped at the rank of the fit features about the origin minus 1.
    pub vim_dim: Option<usize>,
}

impl Default for FitParams {
    fn default() -> FitParams {
        FitParams {
            temperature: 1.0,
            react_percentile: 90.0,
            ash_percentile: 90.0,
            knn_k: 50,
            vim_dim: None,
        }
    }
}

/// Fitted statistics and parameters of one detector, serialized with the detector's name
/// as the key: `{"knn": {"k": 50, "bank": [...]}}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum DetectorStats {
    /// [`FittedKind::React`].
    #[serde(rename = "react")]
    React(ClipStats),
    /// [`FittedKind::GradNormReact`].
    #[serde(rename = "gradnorm-react")]
    GradNormReact(ClipStats),
    /// [`FittedKind::AshP`].
    #[serde(rename = "ash-p")]
    AshP(ShapingParams),
    /// [`FittedKind::AshB`].
    #[serde(rename = "ash-b")]
    AshB(ShapingParams),
    /// [`FittedKind::AshS`].
    #[serde(rename = "ash-s")]
    AshS(ShapingParams),
    /// [`FittedKind::Scale`].
    #[serde(rename = "scale")]
    Scale(ShapingParams),
    /// [`FittedKind::KlMatching`].
    #[serde(rename = "kl-matching")]
    KlMatching(KlStats),
    /// [`FittedKind::Mahalanobis`].
    #[serde(rename = "mahalanobis")]
    Mahalanobis(MahalanobisStats),
    /// [`FittedKind::Vim`].
    #[serde(rename = "vim")]
    Vim(VimStats),
    /// [`FittedKind::Knn`].
    #[serde(rename = "knn")]
    Knn(KnnStats),
}

impl DetectorStats {
    /// Returns the detector these statistics belong to.
    pub fn kind(&self) -> FittedKind {
        match self {
            DetectorStats::React(_) => FittedKind::React,
            DetectorStats::GradNormReact(_) => FittedKind::GradNormReact,
            DetectorStats::AshP(_) => FittedKind::AshP,
            DetectorStats::AshB(_) => FittedKind::AshB,
            DetectorStats::AshS(_) => FittedKind::AshS,
            DetectorStats::Scale(_) => FittedKind::Scale,
            DetectorStats::KlMatching(_) => FittedKind::KlMatching,
            DetectorStats::Mahalanobis(_) => FittedKind::Mahalanobis,
            DetectorStats::Vim(_) => FittedKind::Vim,
            DetectorStats::Knn(_) => FittedKind::Knn,
        }
    }
}

/// Fits detector `kind` on in-distribution features.
///
/// `features` contains one slice of D finite values per fit image, from the model whose head is
/// `head`; ASH and SCALE ignore it. Allocates freely and may take seconds: Mahalanobis and
/// ViM run a D × D eigendecomposition, and ViM also an SVD of `W` (1.3 s and 3.3 s for
/// D = 1280, C = 1000, nalgebra 0.35 on one x86_64 core).
///
/// Returns an error for an empty fit set, a feature vector of the wrong length, a
/// non-finite value, a parameter out of range, more than [`MAX_KNN_BANK`] images for KNN, or
/// a fit set that leaves the statistics undefined (see [`FitError`]).
pub fn fit(
    kind: FittedKind,
    head: &Head,
    features: &[&[f32]],
    params: &FitParams,
) -> Result<DetectorStats, FitError> {
    Ok(match kind {
        FittedKind::React => DetectorStats::React(clip::fit(kind, head, features, params)?),
        FittedKind::GradNormReact => {
            DetectorStats::GradNormReact(clip::fit(kind, head, features, params)?)
        }
        FittedKind::AshP => DetectorStats::AshP(shaping::fit(kind, head, params)?),
        FittedKind::AshB => DetectorStats::AshB(shaping::fit(kind, head, params)?),
        FittedKind::AshS => DetectorStats::AshS(shaping::fit(kind, head, params)?),
        FittedKind::Scale => DetectorStats::Scale(shaping::fit(kind, head, params)?),
        FittedKind::KlMatching => DetectorStats::KlMatching(kl::fit(head, features)?),
        FittedKind::Mahalanobis => DetectorStats::Mahalanobis(mahalanobis::fit(head, features)?),
        FittedKind::Vim => DetectorStats::Vim(vim::fit(head, features, params)?),
        FittedKind::Knn => DetectorStats::Knn(knn::fit(head, features, params)?),
    })
}

#[derive(Clone, Debug)]
enum Detector {
    Clip(clip::ClipScorer),
    Shaping(shaping::ShapingScorer),
    Kl(kl::KlScorer),
    Mahalanobis(mahalanobis::MahalanobisScorer),
    Vim(vim::VimScorer),
    Knn(knn::KnnScorer),
}

/// A fitted detector ready to score frames: its statistics plus every scratch buffer,
/// allocated in [`FittedScorer::new`]. [`FittedScorer::score`] allocates nothing.
#[derive(Clone, Debug)]
pub struct FittedScorer {
    kind: FittedKind,
    detector: Detector,
}

impl FittedScorer {
    /// Builds a scorer from statistics fitted for a model with this `head`.
    ///
    /// Returns an error when the statistics' sizes do not match the head (statistics of
    /// another model) or contain values no fit produces, such as a non-finite number.
    pub fn new(stats: DetectorStats, head: &Head) -> Result<FittedScorer, FitError> {
        let kind = stats.kind();
        let detector = match stats {
            DetectorStats::React(s) | DetectorStats::GradNormReact(s) => {
                Detector::Clip(clip::ClipScorer::new(kind, s, head)?)
            }
            DetectorStats::AshP(s)
            | DetectorStats::AshB(s)
            | DetectorStats::AshS(s)
            | DetectorStats::Scale(s) => {
                Detector::Shaping(shaping::ShapingScorer::new(kind, s, head)?)
            }
            DetectorStats::KlMatching(s) => Detector::Kl(kl::KlScorer::new(s, head)?),
            DetectorStats::Mahalanobis(s) => {
                Detector::Mahalanobis(mahalanobis::MahalanobisScorer::new(s, head)?)
            }
            DetectorStats::Vim(s) => Detector::Vim(vim::VimScorer::new(s, head)?),
            DetectorStats::Knn(s) => Detector::Knn(knn::KnnScorer::new(s, head)?),
        };
        Ok(FittedScorer { kind, detector })
    }

    /// Returns the detector.
    pub fn kind(&self) -> FittedKind {
        self.kind
    }

    /// Scores one frame. Higher means more in-distribution. Allocates nothing.
    ///
    /// `act` must be finished ([`Activations::finish`]) and `head` must be the head the
    /// scorer was built with: ReAct, GradNorm-ReAct, ASH and SCALE recompute logits with it.
    ///
    /// # Panics
    /// If `act` or `head` has another D or C than the head given to [`FittedScorer::new`].
    pub fn score(&mut self, act: &Activations, head: &Head) -> f32 {
        match &mut self.detector {
            Detector::Clip(d) => d.score(act, head),
            Detector::Shaping(d) => d.score(act, head),
            Detector::Kl(d) => d.score(act),
            Detector::Mahalanobis(d) => d.score(act),
            Detector::Vim(d) => d.score(act),
            Detector::Knn(d) => d.score(act),
        }
    }

    /// Returns the bytes this scorer holds: its statistics and scratch buffers, for the
    /// start-up log. The module documentation gives the figure per detector.
    pub fn memory_bytes(&self) -> usize {
        match &self.detector {
            Detector::Clip(d) => d.memory_bytes(),
            Detector::Shaping(d) => d.memory_bytes(),
            Detector::Kl(d) => d.memory_bytes(),
            Detector::Mahalanobis(d) => d.memory_bytes(),
            Detector::Vim(d) => d.memory_bytes(),
            Detector::Knn(d) => d.memory_bytes(),
        }
    }
}
