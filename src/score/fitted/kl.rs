//! KL matching (Hendrycks, Basart, Mazeika, Zou, Kwon, Mostajabi, Steinhardt and Song,
//! "Scaling Out-of-Distribution Detection for Real-World Settings", ICML 2022).
//!
//! Fit: the template `d_k` of class k is the mean softmax (T = 1) of the fit images whose
//! top-1 class is k. Score: `−min_k KL(p ‖ d_k)` with `p = softmax(z)`, the minimum running
//! over the templates of every class that occurs, as in the ViM authors' benchmark
//! (haoqiwang/vim, `benchmark.py`). A class that no fit image is predicted as has no template
//! and takes no part in the minimum, so a frame of that class scores by its divergence from the
//! other classes' templates. There is no fallback template, because the minimum over the
//! fitted templates is defined whatever the frame's top-1 class.
//! Terms with `p_c = 0` contribute 0 (the limit of `p log p`).

use super::common::{bytes_of, check_fit_set, check_len, check_rows, for_each_logits};
use super::{FitError, FittedKind};
use crate::activations::{Activations, Head};
use crate::score::top1;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Statistics of [`FittedKind::KlMatching`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KlStats {
    /// The K classes that at least one fit image was predicted as, ascending.
    pub classes: Vec<usize>,
    /// Fit images per class in `classes`.
    pub counts: Vec<usize>,
    /// Templates, one row of C probabilities per entry of `classes`.
    pub templates: Vec<Vec<f32>>,
}

pub(super) fn fit(head: &Head, features: &[&[f32]]) -> Result<KlStats, FitError> {
    let kind = FittedKind::KlMatching;
    check_fit_set(kind, head, features)?;
    let num_classes = head.num_classes();

    let mut sums: BTreeMap<usize, (usize, Vec<f64>)> = BTreeMap::new();
    let mut probs = vec![0f64; num_classes];
    for_each_logits(kind, head, features, |_, logits| {
        softmax_into(logits, &mut probs);
        let (class, _) = top1(logits).expect("the head has at least one class");
        let (count, sum) = sums
            .entry(class)
            .or_insert_with(|| (0, vec![0f64; num_classes]));
        *count += 1;
        for (s, p) in sum.iter_mut().zip(&probs) {
            *s += p;
        }
    })?;

    let mut stats = KlStats {
        classes: Vec::with_capacity(sums.len()),
        counts: Vec::with_capacity(sums.len()),
        templates: Vec::with_capacity(sums.len()),
    };
    for (class, (count, sum)) in sums {
        stats.classes.push(class);
        stats.counts.push(count);
        stats
            .templates
            .push(sum.iter().map(|s| (s / count as f64) as f32).collect());
    }
    Ok(stats)
}

/// Writes `softmax(z)` at T = 1 into `out`, in `f64`, shifted by the maximum logit.
fn softmax_into(logits: &[f32], out: &mut [f64]) {
    let max = logits
        .iter()
        .fold(f64::NEG_INFINITY, |m, &z| m.max(f64::from(z)));
    let mut partition = 0f64;
    for (p, &z) in out.iter_mut().zip(logits) {
        *p = (f64::from(z) - max).exp();
        partition += *p;
    }
    for p in out.iter_mut() {
        *p /= partition;
    }
}

/// Per-frame state: the templates' logarithms (K × C, `f64` so that small divergences
/// keep their precision) and the frame's softmax.
#[derive(Clone, Debug)]
pub(super) struct KlScorer {
    log_templates: Vec<f64>,
    probs: Vec<f64>,
}

impl KlScorer {
    pub(super) fn new(stats: KlStats, head: &Head) -> Result<KlScorer, FitError> {
        let kind = FittedKind::KlMatching;
        let num_classes = head.num_classes();
        let templates = stats.classes.len();
        if templates == 0 {
            return Err(FitError::EmptyFitSet { kind });
        }
        check_len(kind, "counts", templates, stats.counts.len())?;
        check_len(kind, "templates", templates, stats.templates.len())?;
        check_rows(kind, "templates row", num_classes, &stats.templates)?;
        if stats.classes.iter().any(|&c| c >= num_classes) {
            return Err(FitError::InvalidStats {
                kind,
                field: "classes",
                reason: "a class index is not below the head's class count C",
            });
        }
        if stats.templates.iter().flatten().any(|&q| q < 0.0) {
            return Err(FitError::InvalidStats {
                kind,
                field: "templates",
                reason: "a probability is negative",
            });
        }
        Ok(KlScorer {
            log_templates: stats
                .templates
                .iter()
                .flatten()
                .map(|&q| f64::from(q).ln())
                .collect(),
            probs: vec![0.0; num_classes],
        })
    }

    pub(super) fn score(&mut self, act: &Activations) -> f32 {
        softmax_into(act.logits(), &mut self.probs);
        // KL(p ‖ q) = Σ p log p − Σ p log q; the first sum is the same for every template.
        let neg_entropy: f64 = self
            .probs
            .iter()
            .filter(|&&p| p > 0.0)
            .map(|&p| p * p.ln())
            .sum();
        let mut min_divergence = f64::INFINITY;
        for log_template in self.log_templates.chunks_exact(self.probs.len()) {
            let cross: f64 = self
                .probs
                .iter()
                .zip(log_template)
                .filter(|(&p, _)| p > 0.0)
                .map(|(&p, &log_q)| p * log_q)
                .sum();
            min_divergence = min_divergence.min(neg_entropy - cross);
        }
        (-min_divergence) as f32
    }

    pub(super) fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Self>() + bytes_of::<f64>(self.log_templates.len() + self.probs.len())
    }
}
