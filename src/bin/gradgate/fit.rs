//! `gradgate fit`: statistics of the fitted detectors from in-distribution images.

use crate::{ModelArgs, Outcome};
use anyhow::{bail, Result};
use clap::Args;
use gradgate::eval::{collect_activations, FeatureCache};
use gradgate::score::fitted::{
    self, fit, DetectorStats, FitParams, FittedKind, FittedScorer, StatsFile,
};
use gradgate::source::expand_sources;
use gradgate::Head;
use std::path::PathBuf;

#[derive(Args)]
pub(crate) struct FitArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Output file [default: the model path with .stats.json]
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Feature cache folder [default: $XDG_CACHE_HOME/gradgate, else ~/.cache/gradgate]
    #[arg(long, value_name = "DIR")]
    cache: Option<PathBuf>,
    /// ReAct clipping percentile of in-distribution activations, 0 to 100
    #[arg(long, default_value_t = FitParams::default().react_percentile)]
    react_percentile: f64,
    /// ASH and SCALE per-frame pruning percentile, 0 to 100
    #[arg(long, default_value_t = FitParams::default().ash_percentile)]
    ash_percentile: f64,
    /// KNN neighbour rank k, capped at the number of fit images
    #[arg(long, default_value_t = FitParams::default().knn_k)]
    knn_k: usize,
    /// Detectors to fit, comma-separated [default: all ten]
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    detectors: Vec<FittedKind>,
    /// In-distribution images: files, folders or glob patterns
    #[arg(required = true, value_name = "SOURCE")]
    sources: Vec<std::ffi::OsString>,
}

/// Fits every detector in `kinds`; one that cannot be fitted on these features (too few
/// images for its subspace, say) is logged and left out.
pub(crate) fn fit_all(
    head: &Head,
    features: &[&[f32]],
    params: &FitParams,
    kinds: &[FittedKind],
) -> Vec<DetectorStats> {
    let mut fitted_stats = Vec::new();
    for &kind in kinds {
        match fit(kind, head, features, params) {
            Ok(stats) => fitted_stats.push(stats),
            Err(err) => log::warn!("cannot fit {kind} on {} images: {err}", features.len()),
        }
    }
    fitted_stats
}

pub(crate) fn fit_command(args: FitArgs) -> Result<Outcome> {
    let model = args.model.load()?;
    let files = expand_sources(&args.sources)?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| fitted::path_for_model(&model.info().path));
    let root = args
        .cache
        .clone()
        .unwrap_or_else(FeatureCache::default_root);
    let cache = FeatureCache::new(&root, &model.info().sha256);
    let model_sha256 = model.info().sha256.clone();
    log::info!("fit started: {} files", files.len());

    let mut pipeline = args.model.scoring_pipeline(model);
    let collected = collect_activations(&mut pipeline, Some(&cache), &files, |_| {});
    if collected.activations.is_empty() {
        bail!("no image could be scored, so nothing was fitted");
    }

    let params = FitParams {
        temperature: args.model.temperature,
        react_percentile: args.react_percentile,
        ash_percentile: args.ash_percentile,
        knn_k: args.knn_k,
        ..FitParams::default()
    };
    let head = pipeline.model().head();
    let features: Vec<&[f32]> = collected
        .activations
        .iter()
        .map(|a| a.features.as_slice())
        .collect();
    let kinds = if args.detectors.is_empty() {
        FittedKind::ALL.to_vec()
    } else {
        args.detectors.clone()
    };
    let detectors = fit_all(head, &features, &params, &kinds);

    eprintln!(
        "gradgate: fitted {} detectors on {} images ({} skipped) into {}",
        detectors.len(),
        features.len(),
        collected.skipped.len(),
        out.display()
    );
    for stats in &detectors {
        let kind = stats.kind();
        let bytes = FittedScorer::new(stats.clone(), head)
            .map(|s| s.memory_bytes())
            .unwrap_or(0);
        eprintln!(
            "  {:<15} {:>10} bytes per running detector",
            kind.name(),
            bytes
        );
    }
    let sources = args
        .sources
        .iter()
        .map(|s| s.to_string_lossy().into_owned())
        .collect();
    StatsFile::new(model_sha256, features.len(), sources, detectors).save(&out)?;
    log::info!("fit finished");
    Ok(if collected.skipped.is_empty() {
        Outcome::AllFrames
    } else {
        Outcome::SomeSkipped
    })
}
