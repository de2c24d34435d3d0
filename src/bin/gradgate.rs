//! The `gradgate` command: score image files, calibrate thresholds.
//!
//! Exit codes: 0 when every frame was scored; 1 when the run finished but some frames were
//! skipped (unreadable, corrupt or unsupported input); 2 on a fatal error (bad option, model,
//! calibration or source) before any frame was scored.

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use gradgate::calibration::{self, Calibration, FORMAT_VERSION, TARGET_TPR};
use gradgate::frame::FrameLimits;
use gradgate::source::expand_sources;
use gradgate::{Gate, GradNormScale, Model, Pipeline, Scorer, ScorerKind};
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

/// Model used when neither --model nor GRADGATE_MODEL is given, relative to the working
/// folder or, failing that, to the source tree the binary was built from.
const BUNDLED_MODEL: &str = "models/efficientnet-lite0-int8.onnx";

#[derive(Parser)]
#[command(
    name = "gradgate",
    version,
    about = "Flag camera frames that are out of a classifier's distribution"
)]
struct Cli {
    /// More log output on stderr (-v: info, -vv: debug). RUST_LOG overrides it.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Score images and print one JSON line per frame on stdout.
    Run(RunArgs),
    /// Score in-distribution images and store thresholds beside the model.
    Calibrate(CalibrateArgs),
}

#[derive(Args)]
struct ModelArgs {
    /// ONNX model file [default: GRADGATE_MODEL, else the bundled EfficientNet-Lite0 int8]
    #[arg(long, value_name = "FILE")]
    model: Option<PathBuf>,
    /// Softmax temperature T > 0 for GradNorm, MSP and energy
    #[arg(long, default_value_t = 1.0, value_parser = positive_f32)]
    temperature: f32,
    /// Largest accepted image width or height, in pixels
    #[arg(long, default_value_t = FrameLimits::default().max_side_px)]
    max_side_px: u32,
    /// Largest accepted width × height, in pixels
    #[arg(long, default_value_t = FrameLimits::default().max_pixels)]
    max_pixels: u64,
    /// Largest accepted image file, in bytes
    #[arg(long, default_value_t = FrameLimits::default().max_file_bytes)]
    max_file_bytes: u64,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Out-of-distribution score: gradnorm, msp, maxlogit or energy
    #[arg(long, default_value = "gradnorm")]
    scorer: ScorerKind,
    /// GradNorm scale: paper (target 1/C) or official (target 1, C × paper)
    #[arg(long, default_value = "paper")]
    gradnorm_scale: GradNormScale,
    /// Threshold in the scorer's own scale; frames scoring below it are out-of-distribution
    /// [default: from the calibration file]
    #[arg(long, allow_negative_numbers = true)]
    threshold: Option<f32>,
    /// Calibration file [default: the model path with .calibration.json]
    #[arg(long, value_name = "FILE")]
    calibration: Option<PathBuf>,
    /// Image files, folders (searched recursively for .jpg, .jpeg, .png, .webp) or glob patterns
    #[arg(required = true, value_name = "SOURCE")]
    sources: Vec<String>,
}

#[derive(Args)]
struct CalibrateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Output file [default: the model path with .calibration.json]
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// In-distribution images: files, folders or glob patterns
    #[arg(required = true, value_name = "SOURCE")]
    sources: Vec<String>,
}

fn positive_f32(s: &str) -> Result<f32, String> {
    match s.parse::<f32>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(v),
        _ => Err(format!("'{s}' is not a positive number")),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .format_target(false)
        .init();

    let outcome = match cli.command {
        Command::Run(args) => run(args),
        Command::Calibrate(args) => calibrate(args),
    };
    match outcome {
        Ok(Outcome::AllFrames) => ExitCode::SUCCESS,
        Ok(Outcome::SomeSkipped) => ExitCode::from(1),
        Err(err) => {
            eprintln!("gradgate: error: {err:#}");
            ExitCode::from(2)
        }
    }
}

enum Outcome {
    AllFrames,
    SomeSkipped,
}

impl ModelArgs {
    fn limits(&self) -> FrameLimits {
        FrameLimits {
            max_side_px: self.max_side_px,
            max_pixels: self.max_pixels,
            max_file_bytes: self.max_file_bytes,
        }
    }

    fn load(&self) -> Result<Model> {
        let path = match &self.model {
            Some(path) => path.clone(),
            None => bundled_model(),
        };
        let started = Instant::now();
        let model = Model::load(&path)?;
        let info = model.info();
        log::info!(
            "loaded model {} (sha256 {}) in {} ms: {} classes, {} features from '{}', head {}{}, {} backbone nodes, input {}×{}",
            path.display(),
            info.sha256,
            started.elapsed().as_millis(),
            model.head().num_classes(),
            model.head().feature_dim(),
            info.features,
            info.head,
            if info.quantized_head { " (dequantized)" } else { "" },
            info.backbone_nodes,
            info.preprocess.size_px,
            info.preprocess.size_px,
        );
        Ok(model)
    }
}

fn bundled_model() -> PathBuf {
    if let Some(path) = std::env::var_os("GRADGATE_MODEL") {
        return PathBuf::from(path);
    }
    let local = PathBuf::from(BUNDLED_MODEL);
    if local.exists() {
        return local;
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join(BUNDLED_MODEL)
}

/// One line of `run` output.
#[derive(Serialize)]
struct FrameLine<'a> {
    source: &'a str,
    frame: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    score: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    threshold: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ood: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    label: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    prob: Option<f32>,
    scorer: &'a str,
    latency_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

fn run(args: RunArgs) -> Result<Outcome> {
    let model = args.model.load()?;
    let scorer = Scorer {
        kind: args.scorer,
        temperature: args.model.temperature,
        gradnorm_scale: args.gradnorm_scale,
    };
    let threshold = match args.threshold {
        Some(threshold) => threshold,
        None => {
            let path = args
                .calibration
                .clone()
                .unwrap_or_else(|| calibration::path_for_model(&model.info().path));
            let calibration = Calibration::load(&path)?;
            let paper = calibration.threshold(
                &path,
                &model.info().sha256,
                scorer.kind,
                scorer.temperature,
            )?;
            log::info!(
                "threshold for {} from calibration {}",
                scorer.kind,
                path.display()
            );
            scorer.threshold_from_paper_scale(paper, model.head().num_classes())
        }
    };
    let files = expand_sources(&args.sources)?;
    log::info!(
        "run started: {} files, scorer {}, threshold {threshold}",
        files.len(),
        scorer.kind
    );

    let mut pipeline = Pipeline::new(model, scorer, Gate::new(threshold), args.model.limits());
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let (mut inside, mut outside, mut skipped) = (0usize, 0usize, 0usize);
    for (frame, path) in files.iter().enumerate() {
        let started = Instant::now();
        let result = pipeline.step(path);
        let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
        let source = path.to_string_lossy();
        let line = match result {
            Ok(result) => {
                if result.verdict.ood {
                    outside += 1;
                } else {
                    inside += 1;
                }
                FrameLine {
                    source: &source,
                    frame,
                    score: Some(result.verdict.score),
                    threshold: Some(result.verdict.threshold),
                    ood: Some(result.verdict.ood),
                    label: pipeline
                        .model()
                        .info()
                        .labels
                        .get(result.top1)
                        .map(String::as_str),
                    prob: Some(result.prob),
                    scorer: scorer.kind.name(),
                    latency_ms,
                    error: None,
                }
            }
            Err(err) => {
                skipped += 1;
                log::warn!("skipped frame {frame} ({source}): {err}");
                FrameLine {
                    source: &source,
                    frame,
                    score: None,
                    threshold: None,
                    ood: None,
                    label: None,
                    prob: None,
                    scorer: scorer.kind.name(),
                    latency_ms,
                    error: Some(err.to_string()),
                }
            }
        };
        serde_json::to_writer(&mut out, &line).context("cannot write to stdout")?;
        writeln!(out).context("cannot write to stdout")?;
    }
    out.flush().context("cannot write to stdout")?;

    log::info!("run finished");
    eprintln!(
        "gradgate: {} frames: {inside} in, {outside} out, {skipped} skipped (scorer {}, threshold {threshold})",
        files.len(),
        scorer.kind
    );
    Ok(if skipped == 0 {
        Outcome::AllFrames
    } else {
        Outcome::SomeSkipped
    })
}

fn calibrate(args: CalibrateArgs) -> Result<Outcome> {
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
        sources: args.sources.clone(),
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
            "  {name:<9} threshold {:>12.6}  min {:>12.6}  median {:>12.6}  max {:>12.6}",
            summary.threshold, summary.min, summary.median, summary.max
        );
    }
    Ok(if skipped == 0 {
        Outcome::AllFrames
    } else {
        Outcome::SomeSkipped
    })
}
