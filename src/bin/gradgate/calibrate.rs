//! `gradgate calibrate`: thresholds from in-distribution images.

use crate::{ModelArgs, Outcome};
use anyhow::{bail, Context, Result};
use clap::Args;
use gradgate::calibration::{self, Calibration, FORMAT_VERSION, TARGET_TPR};
use gradgate::score::fitted::{self, FittedScorer, StatsFile};
use gradgate::score::DetectorName;
use gradgate::source::expand_sources;
use gradgate::{Pipeline, ScorerKind};
use std::path::PathBuf;

#[derive(Args)]
pub(crate) struct CalibrateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Output file [default: the model path with .calibration.json]
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Statistics file of the fitted detectors to calibrate too [default: the model path with
    /// .stats.json, when it exists]
    #[arg(long, value_name = "FILE")]
    stats: Option<PathBuf>,
    /// Detector that `run` uses by default with this calibration, picked from an evaluation
    /// (`gradgate eval`) on your own images [default: none, so run uses gradnorm]
    #[arg(long, value_name = "SCORER")]
    recommend: Option<DetectorName>,
    /// In-distribution images: files, folders or glob patterns
    #[arg(required = true, value_name = "SOURCE")]
    sources: Vec<std::ffi::OsString>,
}

pub(crate) fn calibrate(args: CalibrateArgs) -> Result<Outcome> {
    let model = args.model.load()?;
    let files = expand_sources(&args.sources)?;
    let out_path = args
        .out
        .clone()
        .unwrap_or_else(|| calibration::path_for_model(&model.info().path));
    let model_file = model
        .info()
        .path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let model_sha256 = model.info().sha256.clone();
    log::info!("calibration started: {} files", files.len());

    let mut pipeline = args.model.scoring_pipeline(model);
    let mut fitted_scorers = load_fitted(&args, &pipeline)?;
    let mut scores: Vec<Vec<f32>> =
        vec![Vec::with_capacity(files.len()); ScorerKind::ALL.len() + fitted_scorers.len()];
    let mut skipped = 0usize;
    for (frame, path) in files.iter().enumerate() {
        if let Err(err) = pipeline.step(path) {
            skipped += 1;
            log::warn!("skipped frame {frame} ({}): {err}", path.display());
            continue;
        }
        let head = pipeline.model().head();
        let fitted = fitted_scorers
            .iter_mut()
            .map(|s| s.score(pipeline.activations(), head));
        let all: Vec<f32> = pipeline.score_all().into_iter().chain(fitted).collect();
        for (column, score) in scores.iter_mut().zip(all) {
            column.push(score);
        }
    }
    let images = scores[0].len();
    if images == 0 {
        bail!("no image could be scored, so nothing was calibrated");
    }
    if images < 20 {
        log::warn!("calibrating on {images} images: the 95% threshold is then the minimum score or close to it");
    }

    let mut summaries = std::collections::BTreeMap::new();
    if let Some(name) = args.recommend {
        if !ScorerKind::ALL
            .iter()
            .map(|k| k.name())
            .chain(fitted_scorers.iter().map(|s| s.kind().name()))
            .any(|n| n == name.name())
        {
            bail!("--recommend {name}: that detector is not calibrated here; fit it first with 'gradgate fit'");
        }
    }
    let names = ScorerKind::ALL
        .iter()
        .map(|k| k.name())
        .chain(fitted_scorers.iter().map(|s| s.kind().name()));
    for (name, column) in names.zip(&scores) {
        let summary = calibration::summarize(column)
            .with_context(|| format!("scorer {name} produced non-finite scores"))?;
        summaries.insert(name.to_string(), summary);
    }
    let calibration = Calibration {
        format: FORMAT_VERSION,
        model_file,
        model_sha256,
        temperature: args.model.temperature,
        target_tpr: TARGET_TPR,
        images,
        sources: args
            .sources
            .iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect(),
        scorers: summaries,
        recommended: args.recommend.map(|name| name.name().to_string()),
    };
    let json =
        serde_json::to_string_pretty(&calibration).context("cannot serialize the calibration")?;
    std::fs::write(&out_path, json + "\n")
        .with_context(|| format!("cannot write calibration {}", out_path.display()))?;
    log::info!("calibration finished");

    eprintln!(
        "gradgate: calibrated {images} images ({skipped} skipped) into {}",
        out_path.display()
    );
    for (name, summary) in &calibration.scorers {
        eprintln!(
            "  {name:<15} threshold {:>12.6}  min {:>12.6}  median {:>12.6}  max {:>12.6}",
            summary.threshold, summary.min, summary.median, summary.max
        );
    }
    Ok(if skipped == 0 {
        Outcome::AllFrames
    } else {
        Outcome::SomeSkipped
    })
}

/// Loads the fitted detectors of the statistics file, if one was given or sits beside the model.
fn load_fitted(args: &CalibrateArgs, pipeline: &Pipeline) -> Result<Vec<FittedScorer>> {
    let model = pipeline.model();
    let path = args
        .stats
        .clone()
        .unwrap_or_else(|| fitted::path_for_model(&model.info().path));
    if args.stats.is_none() && !path.exists() {
        log::info!(
            "no statistics file {}: calibrating the closed-form detectors only",
            path.display()
        );
        return Ok(Vec::new());
    }
    let file = StatsFile::load_for_model(&path, &model.info().sha256)?;
    let mut scorers = Vec::new();
    for stats in file.detectors {
        let kind = stats.kind();
        match FittedScorer::new(stats, model.head()) {
            Ok(scorer) => scorers.push(scorer),
            Err(err) => log::warn!("skipped detector {kind} from {}: {err}", path.display()),
        }
    }
    Ok(scorers)
}
