//! Runs the model over image sets once, through the feature cache, and scores the results.

use super::cache::{sha256_hex, CachedActivations, FeatureCache};
use crate::activations::{Activations, Head};
use crate::pipeline::{FrameError, Pipeline};
use crate::score::Detector;
use std::path::{Path, PathBuf};

/// Activations of one image set, in file order, with what could not be used.
#[derive(Debug, Default)]
pub struct Collected {
    /// Images that were scored, with their SHA-256.
    pub files: Vec<(PathBuf, String)>,
    /// Their activations, one entry per file.
    pub activations: Vec<CachedActivations>,
    /// Images that were skipped, with the reason.
    pub skipped: Vec<(PathBuf, String)>,
    /// How many entries came from the cache instead of the model.
    pub cache_hits: usize,
}

/// Reads each file, takes its activations from `cache` when present, otherwise runs the
/// pipeline and stores them. `on_image` is called once per file, for progress reporting.
/// Unreadable or undecodable files are logged and listed in [`Collected::skipped`].
pub fn collect_activations(
    pipeline: &mut Pipeline,
    cache: Option<&FeatureCache>,
    files: &[PathBuf],
    mut on_image: impl FnMut(&Path),
) -> Collected {
    let head = pipeline.model().head();
    let (features, classes) = (head.feature_dim(), head.num_classes());
    let mut collected = Collected::default();
    for path in files {
        on_image(path);
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(err) => {
                log::warn!("skipped {}: cannot read file: {err}", path.display());
                collected
                    .skipped
                    .push((path.clone(), format!("cannot read file: {err}")));
                continue;
            }
        };
        let image_sha256 = sha256_hex(&bytes);

        if let Some(entry) = cache.and_then(|c| c.get(&image_sha256, features, classes)) {
            collected.cache_hits += 1;
            collected.files.push((path.clone(), image_sha256));
            collected.activations.push(entry);
            continue;
        }

        match run_model(pipeline, &bytes) {
            Ok(entry) => {
                if let Some(cache) = cache {
                    if let Err(err) = cache.put(&image_sha256, &entry) {
                        log::warn!(
                            "cannot write the feature cache for {}: {err}",
                            path.display()
                        );
                    }
                }
                collected.files.push((path.clone(), image_sha256));
                collected.activations.push(entry);
            }
            Err(err) => {
                log::warn!("skipped {}: {err}", path.display());
                collected.skipped.push((path.clone(), err.to_string()));
            }
        }
    }
    collected
}

fn run_model(pipeline: &mut Pipeline, bytes: &[u8]) -> Result<CachedActivations, FrameError> {
    pipeline.decode(bytes)?;
    pipeline.preprocess();
    pipeline.infer()?;
    let act = pipeline.activations();
    Ok(CachedActivations {
        features: act.features().to_vec(),
        logits: act.logits().to_vec(),
    })
}

/// Scores cached activations with `detector`, recomputing the logits from the features with
/// `head` so that scores match what `run` computes on the same frames. Entries whose
/// activations are not finite score NaN.
///
/// # Panics
/// If an entry's feature count is not the head's D.
pub fn score_cached(
    head: &Head,
    detector: &mut Detector,
    entries: &[CachedActivations],
) -> Vec<f32> {
    let mut act = Activations::new(head);
    entries
        .iter()
        .map(|entry| {
            act.features_mut().copy_from_slice(&entry.features);
            match act.finish(head) {
                Ok(()) => detector.score(&act, head),
                Err(_) => f32::NAN,
            }
        })
        .collect()
}
