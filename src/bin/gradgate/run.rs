//! `gradgate run`: score images and print one JSON line per frame.

use crate::config::ConfigFile;
use crate::input::{Input, InputArgs};
use crate::output::{Counts, Flow, Sink};
use crate::settings::{self, RunSettings};
use crate::signals::{SignalArgs, Signals};
use crate::{ModelArgs, Outcome};
use anyhow::{Context, Result};
use clap::Args;
use gradgate::calibration::{self, Calibration};
use gradgate::gate::FrameRef;
use gradgate::score::fitted::{self, FittedScorer, StatsFile};
use gradgate::score::{Detector, DetectorName};
use gradgate::source::capture::{Capture, Taken};
use gradgate::{Gate, GradNormScale, Pipeline, Scorer, ScorerKind};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

#[derive(Args)]
pub(crate) struct RunArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Board profile: a name from 'gradgate boards' or a .toml file. It supplies the threads,
    /// backend, GPIO line and camera source that neither the command line nor --config sets
    #[arg(long, value_name = "NAME|FILE")]
    board: Option<String>,
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
    /// Image files, folders (searched recursively for .jpg, .jpeg, .png, .webp) or glob
    /// patterns; or one stream: - (stdin), a FIFO, a .mjpeg file, v4l2:///dev/video0
    /// [default: the camera source of --config or --board]
    #[arg(value_name = "SOURCE")]
    sources: Vec<std::ffi::OsString>,
    #[command(flatten)]
    input: InputArgs,
    #[command(flatten)]
    signals: SignalArgs,
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

pub(crate) fn run(mut args: RunArgs) -> Result<Outcome> {
    // The config file and the board profile choose threads and backend, so they are read
    // before the model loads.
    let config = match &args.signals.config {
        Some(path) => ConfigFile::load(path)?,
        None => ConfigFile::default(),
    };
    let cli = settings::CommandLine {
        board: args.board.clone(),
        threads: args.model.threads,
        backend: args.model.backend,
        gpio: args.signals.gpio.clone(),
        sources: std::mem::take(&mut args.sources),
    };
    let settings = RunSettings::load(cli, &config, args.signals.config.as_deref())?;
    log::info!(
        "threads {} (from {}), backend {} (from {})",
        settings.threads.value,
        settings.threads.origin,
        settings.backend.value,
        settings.backend.origin
    );
    args.model.threads = Some(settings.threads.value);
    args.model.backend = Some(settings.backend.value);
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
    let stop = stop_flag()?;
    let max_frame_bytes = usize::try_from(args.model.max_file_bytes).unwrap_or(usize::MAX);
    let input = Input::open(&settings.sources.value, &args.input, max_frame_bytes, &stop)?;
    let signals = Signals::start(&args.signals, &config, &settings, threshold, name.name())?;
    let mut pipeline = Pipeline::with_detector(
        model,
        scorer,
        detector,
        Gate::new(threshold),
        args.model.limits(),
    );
    let labels = pipeline.model().info().labels.clone();
    let backend = pipeline.model().backend_in_use();
    let mut sink = Sink::new(signals, name.name(), &labels);

    let (stopped_by_signal, dropped) = match input {
        Input::Files(files) => {
            log::info!(
                "run started: {} files, scorer {name}, threshold {threshold}, backend {backend}",
                files.len()
            );
            (run_files(&files, &mut pipeline, &mut sink, &stop), 0)
        }
        Input::Stream(source) => {
            log::info!(
                "run started: stream {}, scorer {name}, threshold {threshold}, backend {backend}",
                source.name()
            );
            let capture = Capture::start(source, max_frame_bytes, Arc::clone(&stop));
            let stopped = run_stream(&capture, args.input.fps, &mut pipeline, &mut sink, &stop);
            (stopped, capture.counts().dropped.load(Ordering::Relaxed))
        }
    };

    // Close any open event and deliver or persist the queue, also when stdout failed.
    let Sink {
        signals,
        counts,
        write_error,
        ..
    } = sink;
    signals.finish();
    if let Some(err) = write_error {
        return Err(err).context("cannot write to stdout");
    }
    log::info!("run finished");
    let Counts {
        inside,
        outside,
        skipped,
    } = counts;
    eprintln!(
        "gradgate: {} frames: {inside} in, {outside} out, {skipped} skipped{} (scorer {}, threshold {threshold}, backend {backend}){}",
        inside + outside + skipped,
        if dropped > 0 { format!(", {dropped} dropped as stale") } else { String::new() },
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

/// Runs image files in order. Returns true when a stop signal ended the run.
fn run_files(
    files: &[PathBuf],
    pipeline: &mut Pipeline,
    sink: &mut Sink<'_>,
    stop: &AtomicBool,
) -> bool {
    for (index, path) in files.iter().enumerate() {
        // A stop signal ends the run between frames, never inside one.
        if stop.load(Ordering::Relaxed) {
            log::info!("stop signal received; stopping before frame {index}");
            return true;
        }
        let time = SystemTime::now();
        let started = Instant::now();
        let result = pipeline.step(path);
        let source = path.to_string_lossy();
        let at = FrameRef {
            index: index as u64,
            time,
            source: &source,
        };
        if sink.frame(at, result, started.elapsed()) == Flow::Stop {
            break;
        }
    }
    false
}

/// Runs the newest frames of a capture until the source ends or a stop signal arrives.
/// Returns true when a stop signal ended the run.
fn run_stream(
    capture: &Capture,
    fps: Option<f64>,
    pipeline: &mut Pipeline,
    sink: &mut Sink<'_>,
    stop: &AtomicBool,
) -> bool {
    let period = fps.map(|fps| Duration::from_secs_f64(1.0 / fps));
    let mut next_start = Instant::now();
    loop {
        match capture.take() {
            Taken::Frame(frame) => {
                let started = Instant::now();
                let result = pipeline.step_captured(&frame.bytes, frame.captured.encoding);
                let at = FrameRef {
                    index: frame.seq,
                    time: frame.captured.time,
                    source: capture.name(),
                };
                let flow = sink.frame(at, result, started.elapsed());
                capture.give_back(frame);
                let stale = capture.counts().dropped.load(Ordering::Relaxed);
                sink.signals.set_stale_frames(stale);
                if flow == Flow::Stop {
                    return false;
                }
                // Cap the rate: wait until the next slot; capture goes on and keeps only
                // the newest frame meanwhile.
                if let Some(period) = period {
                    next_start = (next_start + period).max(started);
                    sleep_until(next_start, stop);
                }
            }
            Taken::Skipped(reason) => {
                if sink.skip(capture.name(), &*reason) == Flow::Stop {
                    return false;
                }
            }
            Taken::End(reason) => {
                if let Some(reason) = reason {
                    sink.skip(capture.name(), &*reason);
                }
                log::info!("stream {} ended", capture.name());
                return false;
            }
            Taken::Stopped => {
                log::info!("stop signal received; stopping the stream");
                return true;
            }
        }
    }
}

/// Sleeps until `deadline`, waking every 100 ms to check the stop flag.
fn sleep_until(deadline: Instant, stop: &AtomicBool) {
    loop {
        let now = Instant::now();
        if now >= deadline || stop.load(Ordering::Relaxed) {
            return;
        }
        std::thread::sleep((deadline - now).min(Duration::from_millis(100)));
    }
}
