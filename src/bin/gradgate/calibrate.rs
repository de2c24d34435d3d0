//! `gradgate calibrate`: thresholds from in-distribution images.

use crate::{ModelArgs, Outcome};
use anyhow::{bail, Context, Result};
use clap::Args;
use gradgate::calibration::{self, Calibration, FORMAT_VERSION, TARGET_TPR};
use gradgate::source::expand_sources;
use gradgate::{Gate, GradNormScale, Pipeline, Scorer, ScorerKind};
use std::path::PathBuf;

#[derive(Args)]
pub(crate) struct CalibrateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Output file [default: the model path with .calibration.json]
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
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

    // Score at the paper's GradNorm scale; the other scorers ignore the scale.
    let scorer = Scorer {
        kind: ScorerKind::GradNorm,
        temperature: args.model.temperature,
        gradnorm_scale: GradNormScale::Paper,
    };
    let mut pipeline = Pipeline::new(
        model,
        scorer,
        Gate::new(f32::NEG_INFINITY),
        args.model.limits(),
    );
    let mut scores: Vec<Vec<f32>> = vec![Vec::with_capacity(files.len()); ScorerKind::ALL.len()];
    let mut skipped = 0usize;
    for (frame, path) in files.iter().enumerate() {
        if let Err(err) = pipeline.step(path) {
            skipped += 1;
            log::warn!("skipped frame {frame} ({}): {err}", path.display());
            continue;
        }
        for (column, score) in scores.iter_mut().zip(pipeline.score_all()) {
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
    for (kind, column) in ScorerKind::ALL.into_iter().zip(&scores) {
        let summary = calibration::summarize(column)
            .with_context(|| format!("scorer {kind} produced NaN scores"))?;
        summaries.insert(kind.name().to_string(), summary);
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
