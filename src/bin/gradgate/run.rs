//! `gradgate run`: score images and print one JSON line per frame.

use crate::signals::{SignalArgs, Signals};
use crate::{ModelArgs, Outcome};
use anyhow::{Context, Result};
use clap::Args;
use gradgate::calibration::{self, Calibration};
use gradgate::gate::FrameRef;
use gradgate::score::fitted::{self, FittedScorer, StatsFile};
use gradgate::score::{Detector, DetectorName};
use gradgate::source::expand_sources;
use gradgate::{Gate, GradNormScale, Pipeline, Scorer, ScorerKind};
use serde::Serialize;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

#[derive(Args)]
pub(crate) struct RunArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Out-of-distribution score: gradnorm, gradnorm-logits, msp, maxlogit, energy, or a fitted
    /// detector (react, gradnorm-react, ash-p, ash-b, ash-s, scale, kl-matching, mahalanobis,
    /// vim, knn) whose statistics `gradgate fit` wrote
    /// [default: the calibration's recommended detector, else gradnorm]
    #[arg(long)]
    scorer: Option<DetectorName>,
    /// Statistics file of the fitted detectors [default: the model path with .stats.json]
    #[arg(long, value_name = "FILE")]
    stats: Option<PathBuf>,
    /// GradNorm scale: paper (target 1/C) or official (target 1, C × paper)
    #[arg(long, default_value = "paper")]
    gradnorm_scale: GradNormScale,
    /// Threshold in the scorer's own scale; frames scoring below it are out-of-distribution
    /// [default: from the calibration file]
    #[arg(long, allow_hyphen_values = true, value_parser = crate::finite_f32)]
    threshold: Option<f32>,
    /// Calibration file [default: the model path with .calibration.json]
    #[arg(long, value_name = "FILE")]
    calibration: Option<PathBuf>,
    /// Image files, folders (searched recursively for .jpg, .jpeg, .png, .webp) or glob patterns
    #[arg(required = true, value_name = "SOURCE")]
    sources: Vec<std::ffi::OsString>,
    #[command(flatten)]
    signals: SignalArgs,
}

fn write_line(out: &mut impl Write, line: &FrameLine<'_>) -> std::io::Result<()> {
    serde_json::to_writer(&mut *out, line)?;
    writeln!(out)
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
    /// The debounced state after this frame: `in` or `out`.
    state: &'static str,
    latency_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// Registers SIGINT and SIGTERM. The first signal sets the returned flag, which the frame
/// loop checks between frames. A second one ends the process at once, for a stuck shutdown.
fn stop_flag() -> Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // The conditional exit goes first: it only fires when the flag is already set.
        // Exit status 128 + signal number, as a shell reports a process killed by it.
        signal_hook::flag::register_conditional_shutdown(signal, 128 + signal, Arc::clone(&flag))
            .context("cannot install the signal handlers")?;
        signal_hook::flag::register(signal, Arc::clone(&flag))
            .context("cannot install the signal handlers")?;
    }
    Ok(flag)
}

pub(crate) fn run(args: RunArgs) -> Result<Outcome> {
    let model = args.model.load()?;

    // The calibration gives the threshold and, without --scorer, the detector.
    let calibration_path = args
        .calibration
        .clone()
        .unwrap_or_else(|| calibration::path_for_model(&model.info().path));
    let calibration = match (args.threshold, args.scorer) {
        (Some(threshold), Some(_)) => {
            if args.calibration.is_some() {
                log::warn!(
                    "--threshold {threshold} is used; calibration {} is not read",
                    calibration_path.display()
                );
            }
            None
        }
        (Some(_), None) => Calibration::load(&calibration_path).ok(),
        (None, _) => Some(Calibration::load(&calibration_path)?),
    };
    let name = args
        .scorer
        .or_else(|| calibration.as_ref()?.recommended.as_ref()?.parse().ok())
        .unwrap_or(DetectorName::Closed(ScorerKind::GradNorm));

    let closed_kind = match name {
        DetectorName::Closed(kind) => kind,
        DetectorName::Fitted(_) => ScorerKind::GradNorm,
    };
    let scorer = Scorer {
        kind: closed_kind,
        temperature: args.model.temperature,
        gradnorm_scale: args.gradnorm_scale,
    };
    let detector = match name {
        DetectorName::Closed(_) => Detector::Closed(scorer),
        DetectorName::Fitted(kind) => {
            let path = args
                .stats
                .clone()
                .unwrap_or_else(|| fitted::path_for_model(&model.info().path));
            let file = StatsFile::load_for_model(&path, &model.info().sha256)
                .with_context(|| format!("--scorer {kind} needs fitted statistics; run 'gradgate fit DIR' on in-distribution images"))?;
            let stats = file.detector(kind).cloned().with_context(|| {
                format!(
                    "statistics file {} has no entry for {kind}; refit with 'gradgate fit'",
                    path.display()
                )
            })?;
            let fitted = FittedScorer::new(stats, model.head())?;
            log::info!(
                "detector {kind} from {}: {} bytes of statistics and scratch",
                path.display(),
                fitted.memory_bytes()
            );
            Detector::Fitted(fitted)
        }
    };
    let threshold = match (args.threshold, &calibration) {
        (Some(threshold), _) => threshold,
        (None, None) => unreachable!("the calibration is loaded whenever no threshold is given"),
        (None, Some(calibration)) => {
            let path = &calibration_path;
            let paper =
                calibration.threshold(path, &model.info().sha256, name, scorer.temperature)?;
            log::info!("threshold for {name} from calibration {}", path.display());
            match name {
                DetectorName::Closed(_) => {
                    scorer.threshold_from_paper_scale(paper, model.head().num_classes())
                }
                DetectorName::Fitted(_) => paper,
            }
        }
    };
    let files = expand_sources(&args.sources)?;
    log::info!(
        "run started: {} files, scorer {}, threshold {threshold}",
        files.len(),
        name
    );

    let mut signals = Signals::start(&args.signals, threshold, name.name())?;
    let stop = stop_flag()?;
    let mut frame_message = Vec::with_capacity(1024);

    let mut pipeline = Pipeline::with_detector(
        model,
        scorer,
        detector,
        Gate::new(threshold),
        args.model.limits(),
    );
    // One line per frame, flushed as it is written, so that a reader sees each decision when
    // it is made.
    let stdout = std::io::stdout();
    let mut out = std::io::LineWriter::new(stdout.lock());
    let (mut inside, mut outside, mut skipped) = (0usize, 0usize, 0usize);
    let mut stopped_by_signal = false;
    let mut write_error = None;
    let mut stdout_open = true;
    for (frame, path) in files.iter().enumerate() {
        // A stop signal ends the run between frames, never inside one.
        if stop.load(Ordering::Relaxed) {
            log::info!("stop signal received; stopping before frame {frame}");
            stopped_by_signal = true;
            break;
        }
        let captured = SystemTime::now();
        let started = Instant::now();
        let result = pipeline.step(path);
        let latency = started.elapsed();
        let latency_ms = latency.as_secs_f64() * 1000.0;
        let source = path.to_string_lossy();
        let line = match result {
            Ok(result) => {
                if result.verdict.ood {
                    outside += 1;
                } else {
                    inside += 1;
                }
                let at = FrameRef {
                    index: frame as u64,
                    time: captured,
                    source: &source,
                };
                signals.frame(at, result.verdict, latency);
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
                    scorer: name.name(),
                    state: signals.state().as_str(),
                    latency_ms,
                    error: None,
                }
            }
            Err(err) => {
                skipped += 1;
                signals.skipped();
                log::warn!("skipped frame {frame} ({source}): {err}");
                FrameLine {
                    source: &source,
                    frame,
                    score: None,
                    threshold: None,
                    ood: None,
                    label: None,
                    prob: None,
                    scorer: name.name(),
                    state: signals.state().as_str(),
                    latency_ms,
                    error: Some(err.to_string()),
                }
            }
        };
        if signals.wants_frames() {
            // The buffer is reused; it grows only while a message is longer than any before.
            frame_message.clear();
            if serde_json::to_writer(&mut frame_message, &line).is_ok() {
                signals.frame_message(&frame_message);
            }
        }
        if !stdout_open {
            continue;
        }
        if let Err(err) = write_line(&mut out, &line) {
            // A closed pipe (`gradgate run … | head`) means the reader has what it wanted,
            // unless MQTT or GPIO carry the decisions: then the run goes on without stdout.
            if err.kind() == std::io::ErrorKind::BrokenPipe {
                if signals.is_active() {
                    log::warn!("stdout closed after frame {frame}; going on for MQTT and GPIO");
                    stdout_open = false;
                    continue;
                }
                log::info!("stdout closed after frame {frame}; stopping");
                break;
            }
            write_error = Some(err);
            break;
        }
    }

    // Close any open event and deliver or persist the queue, also when stdout failed.
    signals.finish();
    if let Some(err) = write_error {
        return Err(err).context("cannot write to stdout");
    }
    log::info!("run finished");
    eprintln!(
        "gradgate: {} frames: {inside} in, {outside} out, {skipped} skipped (scorer {}, threshold {threshold}){}",
        inside + outside + skipped,
        name,
        if stopped_by_signal { ", stopped by signal" } else { "" }
    );
    // A stop signal is the normal way to end a camera run, so it exits 0.
    Ok(if skipped == 0 || stopped_by_signal {
        Outcome::AllFrames
    } else {
        Outcome::SomeSkipped
    })
}
