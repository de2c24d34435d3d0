//! `gradgate gpu-check`: runs the same images through the model on the CPU and on CUDA,
//! compares features, logits, top-1 classes and in/out decisions, and times both.
//!
//! Exit codes: 0 when both backends agree within the tolerance and 1 when they disagree. A
//! fatal error exits 2, and so does a GPU that was found but failed to prepare the model.
//! When no CUDA device is usable, it prints `skipped: no CUDA device (…)` and exits
//! [`EXIT_NO_GPU`].

use crate::Outcome;
use anyhow::{bail, Context, Result};
use clap::Args;
use gradgate::calibration::{self, Calibration};
use gradgate::frame::FrameLimits;
use gradgate::model::{probe_cuda, Backend, CudaUnavailable};
use gradgate::score::{top1, DetectorName};
use gradgate::source::expand_sources;
use gradgate::{Activations, Gate, Model, Pipeline, Scorer, ScorerKind};
use std::ffi::OsString;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Exit status when no CUDA device is usable: the automake and meson convention for a
/// skipped test, so a test harness reports the check as skipped, not passed.
pub(crate) const EXIT_NO_GPU: u8 = 77;

/// Largest accepted difference between GPU and CPU for fp32 models, as max |GPU − CPU| over
/// the features (and separately the logits) divided by the peak |CPU| value of that frame.
///
/// tract-cuda 0.23.9 leaves cuDNN's convolution math type at its default, which lets Ampere
/// and newer GPUs (Jetson Orin, Thor) compute fp32 convolutions in TF32. TF32 rounds inputs
/// to 10 mantissa bits, a relative error of up to 2⁻¹¹ ≈ 4.9e-4 per product. Across the
/// backbone's layers this is estimated at about 1e-3 of the peak; summation order alone gives
/// about 1e-5. `NVIDIA_TF32_OVERRIDE=0` turns TF32 off.
const FP32_TOLERANCE: f32 = 1e-2;

/// The same bound for QDQ (int8) models. tract runs them as quantization simulated in `f32`,
/// so a difference that moves a value across a rounding boundary changes it by one 8-bit
/// step, 1/255 of that tensor's range, and the change propagates. 5% is the bound the test
/// suite puts between tract and onnxruntime on the bundled int8 model, whose logits differ
/// by up to 2.7% of their peak there.
const QDQ_TOLERANCE: f32 = 5e-2;

// NOTE: both tolerances are derived, not measured: this check has not run on a GPU yet.

/// Image folders used when no image is given, relative to the working folder or, failing
/// that, to the source tree the binary was built from.
const DEFAULT_IMAGES: [&str; 2] = ["tests/data/id", "tests/data/ood"];

#[derive(Args)]
pub(crate) struct GpuCheckArgs {
    /// ONNX model file [default: GRADGATE_MODEL, else the bundled EfficientNet-Lite0 fp32]
    #[arg(long, value_name = "FILE")]
    model: Option<PathBuf>,
    /// Calibration file whose threshold decides in or out [default: the model path with
    /// .calibration.json; without one, decisions are not compared]
    #[arg(long, value_name = "FILE")]
    calibration: Option<PathBuf>,
    /// Frames run on each backend before timing starts
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=1000))]
    warmup: u32,
    /// Images: files, folders or glob patterns [default: tests/data/id and tests/data/ood, in
    /// the working folder or the source tree]
    #[arg(value_name = "IMAGE")]
    images: Vec<OsString>,
}

/// The decision rule of the check: the calibrated detector and its threshold.
struct Decision {
    scorer: Scorer,
    threshold: f32,
}

/// One image compared across the two backends.
struct Row {
    image: String,
    /// max |GPU − CPU| over the features, and the peak |CPU| feature.
    features: (f32, f32),
    /// max |GPU − CPU| over the logits, and the peak |CPU| logit.
    logits: (f32, f32),
    /// Top-1 class on the CPU and on the GPU.
    top1: (usize, usize),
    /// True when the CPU's logits of the two top-1 classes differ by less than the tolerance.
    top1_borderline: bool,
    /// Detector score on the CPU and on the GPU, when a calibration is loaded.
    scores: Option<(f32, f32)>,
    /// True when the CPU score is within the tolerance of the threshold.
    decision_borderline: bool,
}

impl Row {
    fn features_relative(&self) -> f32 {
        relative(self.features)
    }

    fn logits_relative(&self) -> f32 {
        relative(self.logits)
    }

    fn top1_agrees(&self) -> bool {
        self.top1.0 == self.top1.1 || self.top1_borderline
    }
}

pub(crate) fn gpu_check(args: GpuCheckArgs) -> Result<Outcome> {
    // Inputs are checked first, so that a wrong path fails here (exit 2) rather than being
    // reported as a skip on a machine without a GPU.
    let model_path = args.model.clone().unwrap_or_else(crate::bundled_model);
    if !model_path.is_file() {
        bail!(
            "model file {} not found; give an ONNX file with --model",
            model_path.display()
        );
    }
    let sources = if args.images.is_empty() {
        default_images()
    } else {
        args.images.clone()
    };
    let images = expand_sources(&sources)?;
    if images.is_empty() {
        bail!("no image found in {sources:?}; give image files or folders");
    }

    // Without a usable GPU there is nothing to compare, so print the reason and skip.
    if let Err(reason) = probe_cuda() {
        if matches!(reason, CudaUnavailable::NotBuilt) {
            println!("skipped: built without CUDA ({reason})");
        } else {
            println!("skipped: no CUDA device ({reason})");
        }
        return Ok(Outcome::NoGpu);
    }

    // Load on both backends and time each load. The GPU's load includes creating the CUDA
    // context, which compiles tract's kernels with NVRTC or reads them from the cubin cache.
    let started = Instant::now();
    let cpu_model = Model::load_with(&model_path, Backend::Cpu)?;
    let cpu_load = started.elapsed();
    let started = Instant::now();
    let mut gpu_model = Model::load_with(&model_path, Backend::Cuda)?;
    let gpu_load = started.elapsed();
    if gpu_model.backend_in_use() != Backend::Cuda {
        let reason = gpu_model
            .cuda_fallback()
            .map(ToString::to_string)
            .unwrap_or_default();
        bail!(
            "a CUDA device was found, but model {} could not be prepared on it: {reason}",
            model_path.display()
        );
    }

    let qdq = cpu_model.info().qdq;
    let tolerance = if qdq { QDQ_TOLERANCE } else { FP32_TOLERANCE };
    let decision = load_decision(&args, &cpu_model)?;
    let scorer = decision
        .as_ref()
        .map_or(Scorer::new(ScorerKind::GradNorm), |d| d.scorer);
    let mut pipeline = Pipeline::new(
        cpu_model,
        scorer,
        Gate::new(f32::NEG_INFINITY),
        FrameLimits::default(),
    );
    let mut gpu_activations = Activations::new(gpu_model.head());

    // Warm up both backends on the first image: the first GPU frames create the stream,
    // cuBLAS and cuDNN handles.
    pipeline
        .load_file(&images[0])
        .with_context(|| format!("cannot read warm-up image {}", images[0].display()))?;
    pipeline.preprocess();
    for _ in 0..args.warmup {
        pipeline.infer()?;
        gpu_model.run(pipeline.input(), &mut gpu_activations)?;
    }

    let mut rows = Vec::with_capacity(images.len());
    let mut cpu_times = Vec::with_capacity(images.len());
    let mut gpu_times = Vec::with_capacity(images.len());
    let mut skipped = 0usize;
    for path in &images {
        if let Err(err) = pipeline.load_file(path) {
            skipped += 1;
            log::warn!("skipped {}: {err}", path.display());
            continue;
        }
        pipeline.preprocess();

        // Time the model step only: both backends get the same preprocessed tensor.
        let started = Instant::now();
        pipeline.infer()?;
        cpu_times.push(started.elapsed());
        let started = Instant::now();
        gpu_model.run(pipeline.input(), &mut gpu_activations)?;
        gpu_times.push(started.elapsed());

        rows.push(compare(
            path,
            pipeline.activations(),
            &gpu_activations,
            decision.as_ref(),
            tolerance,
        ));
    }
    if rows.is_empty() {
        bail!("none of the {} images could be decoded", images.len());
    }

    let mut out = std::io::stdout().lock();
    print_table(&mut out, &rows, decision.as_ref()).context("cannot write the report to stdout")?;
    let agree = print_summary(
        &mut out,
        &Summary {
            model: &model_path,
            qdq,
            tolerance,
            rows: &rows,
            skipped,
            decision: decision.as_ref(),
            loads: (cpu_load, gpu_load),
            medians: (median(&mut cpu_times), median(&mut gpu_times)),
        },
    )
    .context("cannot write the report to stdout")?;
    Ok(if agree {
        Outcome::AllFrames
    } else {
        Outcome::GpuMismatch
    })
}

/// Returns the image folders the check runs without arguments.
fn default_images() -> Vec<OsString> {
    DEFAULT_IMAGES
        .iter()
        .map(|dir| {
            let local = PathBuf::from(dir);
            if local.is_dir() {
                local.into_os_string()
            } else {
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join(dir)
                    .into_os_string()
            }
        })
        .collect()
}

/// Loads the calibration's recommended closed-form detector and its threshold, or GradNorm's
/// when it recommends none or a fitted one. Returns `None` when the default calibration file
/// does not exist; an explicit `--calibration` must load.
fn load_decision(args: &GpuCheckArgs, model: &Model) -> Result<Option<Decision>> {
    let path = args
        .calibration
        .clone()
        .unwrap_or_else(|| calibration::path_for_model(&model.info().path));
    if args.calibration.is_none() && !path.exists() {
        log::warn!(
            "no calibration {}: in/out decisions are not compared",
            path.display()
        );
        return Ok(None);
    }
    let calibration = Calibration::load(&path)?;
    let kind = match calibration
        .recommended
        .as_deref()
        .and_then(|name| name.parse().ok())
    {
        Some(DetectorName::Closed(kind)) => kind,
        _ => ScorerKind::GradNorm,
    };
    let scorer = Scorer::new(kind);
    let threshold = calibration.threshold(
        &path,
        &model.info().sha256,
        DetectorName::Closed(kind),
        scorer.temperature,
    )?;
    Ok(Some(Decision { scorer, threshold }))
}

/// Compares one frame's activations from both backends.
fn compare(
    path: &Path,
    cpu: &Activations,
    gpu: &Activations,
    decision: Option<&Decision>,
    tolerance: f32,
) -> Row {
    let features = difference(cpu.features(), gpu.features());
    let logits = difference(cpu.logits(), gpu.logits());
    let cpu_top1 = top1(cpu.logits()).map_or(0, |(class, _)| class);
    let gpu_top1 = top1(gpu.logits()).map_or(0, |(class, _)| class);
    // A top-1 flip between two classes whose CPU logits are closer than the tolerance is
    // numerical noise, not a fault.
    let gap = cpu.logits()[cpu_top1] - cpu.logits()[gpu_top1];
    let top1_borderline = gap <= tolerance * logits.1;

    let scores = decision.map(|d| (d.scorer.score(cpu), d.scorer.score(gpu)));
    let decision_borderline = match (decision, scores) {
        (Some(d), Some((cpu_score, _))) => {
            (cpu_score - d.threshold).abs() <= tolerance * d.threshold.abs()
        }
        _ => false,
    };
    Row {
        image: path.display().to_string(),
        features,
        logits,
        top1: (cpu_top1, gpu_top1),
        top1_borderline,
        scores,
        decision_borderline,
    }
}

/// Returns max |b − a| and max |a| over two slices of equal length.
fn difference(a: &[f32], b: &[f32]) -> (f32, f32) {
    a.iter()
        .zip(b)
        .fold((0.0f32, 0.0f32), |(diff, peak), (x, y)| {
            (diff.max((y - x).abs()), peak.max(x.abs()))
        })
}

/// Returns a difference divided by its peak. A zero difference gives 0, and a difference on
/// an all-zero reference gives infinity.
fn relative((diff, peak): (f32, f32)) -> f32 {
    if diff == 0.0 {
        0.0
    } else {
        diff / peak
    }
}

/// Returns the median of `times` (the mean of the two middle values for an even count).
fn median(times: &mut [Duration]) -> Duration {
    times.sort_unstable();
    let mid = times.len() / 2;
    match times.len() {
        0 => Duration::ZERO,
        n if n % 2 == 1 => times[mid],
        _ => (times[mid - 1] + times[mid]) / 2,
    }
}

fn decision_label(score: f32, threshold: f32) -> &'static str {
    if score < threshold {
        "out"
    } else {
        "in"
    }
}

fn print_table(out: &mut impl Write, rows: &[Row], decision: Option<&Decision>) -> io::Result<()> {
    let width = rows.iter().map(|r| r.image.len()).max().unwrap_or(5).max(5);
    writeln!(
        out,
        "{:width$}  {:>11}  {:>11}  {:>9}  {:>21}  {:>8}",
        "image", "features Δ", "logits Δ", "top-1", "score cpu / gpu", "in/out"
    )?;
    for row in rows {
        let top1 = if row.top1.0 == row.top1.1 {
            format!("{}", row.top1.0)
        } else {
            format!("{}≠{}", row.top1.0, row.top1.1)
        };
        let mut decision_flip = false;
        let (scores, verdict) = match (row.scores, decision) {
            (Some((cpu, gpu)), Some(d)) => {
                let (a, b) = (
                    decision_label(cpu, d.threshold),
                    decision_label(gpu, d.threshold),
                );
                decision_flip = a != b;
                let verdict = if a == b {
                    a.to_owned()
                } else {
                    format!("{a}≠{b}")
                };
                (format!("{cpu:.5} / {gpu:.5}"), verdict)
            }
            _ => ("-".to_owned(), "-".to_owned()),
        };
        // Marks the flips the tolerance excuses.
        let top1_flip = row.top1.0 != row.top1.1;
        let borderline =
            if (top1_flip && row.top1_borderline) || (decision_flip && row.decision_borderline) {
                "  borderline"
            } else {
                ""
            };
        writeln!(
            out,
            "{:width$}  {:>11.2e}  {:>11.2e}  {top1:>9}  {scores:>21}  {verdict:>8}{borderline}",
            row.image,
            row.features_relative(),
            row.logits_relative(),
        )?;
    }
    Ok(())
}

/// Everything the summary reports.
struct Summary<'a> {
    model: &'a Path,
    qdq: bool,
    tolerance: f32,
    rows: &'a [Row],
    skipped: usize,
    decision: Option<&'a Decision>,
    /// Model load time on the CPU and on the GPU.
    loads: (Duration, Duration),
    /// Median model step per frame on the CPU and on the GPU.
    medians: (Duration, Duration),
}

/// Counts over all compared frames.
#[derive(Debug, PartialEq)]
struct Tally {
    frames: usize,
    /// Largest max |GPU − CPU| of any frame, features then logits.
    abs: (f32, f32),
    /// Largest difference relative to the frame's peak, features then logits.
    relative: (f32, f32),
    top1_same: usize,
    /// Frames whose top-1 classes differ within the tolerance.
    top1_borderline: usize,
    /// Frames with the same in/out decision, when a calibration is loaded.
    decisions_same: Option<usize>,
    /// Frames whose decisions differ with the CPU score within the tolerance of the threshold.
    decisions_borderline: usize,
}

impl Tally {
    fn new(rows: &[Row], decision: Option<&Decision>) -> Tally {
        let max = |f: fn(&Row) -> f32| rows.iter().map(f).fold(0.0f32, f32::max);
        let same_decision = |row: &Row, threshold: f32| {
            row.scores.is_some_and(|(cpu, gpu)| {
                decision_label(cpu, threshold) == decision_label(gpu, threshold)
            })
        };
        let decisions_same = decision.map(|d| {
            rows.iter()
                .filter(|r| same_decision(r, d.threshold))
                .count()
        });
        let decisions_borderline = decision.map_or(0, |d| {
            rows.iter()
                .filter(|r| r.decision_borderline && !same_decision(r, d.threshold))
                .count()
        });
        let top1_same = rows.iter().filter(|r| r.top1.0 == r.top1.1).count();
        Tally {
            frames: rows.len(),
            abs: (max(|r| r.features.0), max(|r| r.logits.0)),
            relative: (max(Row::features_relative), max(Row::logits_relative)),
            top1_same,
            top1_borderline: rows.iter().filter(|r| r.top1_agrees()).count() - top1_same,
            decisions_same,
            decisions_borderline,
        }
    }

    /// Returns true when every frame is within `tolerance` and every top-1 class and
    /// decision is the same or borderline.
    fn agree(&self, tolerance: f32) -> bool {
        let decisions_agree = self
            .decisions_same
            .is_none_or(|same| same + self.decisions_borderline == self.frames);
        self.relative.0 <= tolerance
            && self.relative.1 <= tolerance
            && self.top1_same + self.top1_borderline == self.frames
            && decisions_agree
    }
}

/// Prints the summary and returns true when the backends agree.
fn print_summary(out: &mut impl Write, summary: &Summary<'_>) -> io::Result<bool> {
    let tally = Tally::new(summary.rows, summary.decision);
    let frames = tally.frames;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;

    writeln!(out)?;
    writeln!(
        out,
        "model {} ({}), {frames} images compared, {} skipped",
        summary.model.display(),
        if summary.qdq { "QDQ int8" } else { "fp32" },
        summary.skipped
    )?;
    writeln!(
        out,
        "Δ is max |gpu - cpu| / max |cpu| per frame; tolerance {:.0e} ({})",
        summary.tolerance,
        if summary.qdq {
            "QDQ: one 8-bit rounding step propagates"
        } else {
            "fp32: cuDNN may use TF32"
        }
    )?;
    writeln!(
        out,
        "features: max abs diff {:.3e}, max Δ {:.3e}",
        tally.abs.0, tally.relative.0
    )?;
    writeln!(
        out,
        "logits:   max abs diff {:.3e}, max Δ {:.3e}",
        tally.abs.1, tally.relative.1
    )?;
    writeln!(
        out,
        "top-1: {}/{frames} same, {} borderline",
        tally.top1_same, tally.top1_borderline
    )?;
    if let (Some(decision), Some(same)) = (summary.decision, tally.decisions_same) {
        writeln!(
            out,
            "in/out ({} < {}): {same}/{frames} same, {} borderline",
            decision.scorer.kind.name(),
            decision.threshold,
            tally.decisions_borderline
        )?;
    }
    writeln!(out, "{:<6} {:>10} {:>16}", "", "load ms", "median ms/frame")?;
    writeln!(
        out,
        "{:<6} {:>10.0} {:>16.2}",
        "cpu",
        ms(summary.loads.0),
        ms(summary.medians.0)
    )?;
    writeln!(
        out,
        "{:<6} {:>10.0} {:>16.2}",
        "cuda",
        ms(summary.loads.1),
        ms(summary.medians.1)
    )?;

    let agree = tally.agree(summary.tolerance);
    writeln!(out, "result: {}", if agree { "agree" } else { "DISAGREE" })?;
    Ok(agree)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Returns a head of two classes over two features, where logit c equals feature c.
    fn head() -> gradgate::Head {
        gradgate::Head::from_row_major(&[1.0, 0.0, 0.0, 1.0], &[0.0, 0.0], 2).unwrap()
    }

    fn activations(features: [f32; 2]) -> Activations {
        let head = head();
        let mut act = Activations::new(&head);
        act.features_mut().copy_from_slice(&features);
        act.finish(&head).unwrap();
        act
    }

    /// Returns a decision on the maximum logit with threshold 1.
    fn max_logit_decision() -> Decision {
        Decision {
            scorer: Scorer::new(ScorerKind::MaxLogit),
            threshold: 1.0,
        }
    }

    fn tally(cpu: [f32; 2], gpu: [f32; 2]) -> Tally {
        tally_with(max_logit_decision(), cpu, gpu)
    }

    fn tally_with(decision: Decision, cpu: [f32; 2], gpu: [f32; 2]) -> Tally {
        let row = compare(
            Path::new("x.jpg"),
            &activations(cpu),
            &activations(gpu),
            Some(&decision),
            QDQ_TOLERANCE,
        );
        Tally::new(&[row], Some(&decision))
    }

    #[test]
    fn equal_activations_agree() {
        let tally = tally([4.0, 2.0], [4.0, 2.0]);
        assert_eq!(tally.relative, (0.0, 0.0));
        assert!(tally.agree(QDQ_TOLERANCE));
    }

    #[test]
    fn difference_within_tolerance_agrees() {
        // 0.125 of a peak of 4 is 3.125%, inside the 5% QDQ tolerance.
        let tally = tally([4.0, 2.0], [4.0, 2.125]);
        assert_eq!(tally.relative.1, 0.03125);
        assert!(tally.agree(QDQ_TOLERANCE));
    }

    #[test]
    fn difference_beyond_tolerance_disagrees() {
        let tally = tally([4.0, 2.0], [4.0, 2.5]);
        assert_eq!(tally.relative.1, 0.125);
        assert!(!tally.agree(QDQ_TOLERANCE));
    }

    #[test]
    fn close_top1_flip_is_borderline() {
        // CPU logits 4.0 and 3.9 differ by 0.1, under 5% of the peak 4.0.
        let tally = tally([4.0, 3.9], [3.95, 3.97]);
        assert_eq!(tally.top1_same, 0);
        assert_eq!(tally.top1_borderline, 1);
        assert!(tally.agree(QDQ_TOLERANCE));
    }

    #[test]
    fn distant_top1_flip_disagrees() {
        let tally = tally([4.0, 1.0], [1.0, 4.0]);
        assert_eq!(tally.top1_borderline, 0);
        assert!(!tally.agree(QDQ_TOLERANCE));
    }

    #[test]
    fn decision_flip_at_threshold_is_borderline() {
        // Max logit 1.01 (in) on the CPU and 0.99 (out) on the GPU, threshold 1.
        let tally = tally([1.01, 0.5], [0.99, 0.5]);
        assert_eq!(tally.decisions_same, Some(0));
        assert_eq!(tally.decisions_borderline, 1);
        assert!(tally.agree(QDQ_TOLERANCE));
    }

    #[test]
    fn decision_flip_far_from_threshold_disagrees() {
        // MSP of logits (10, 9) is 0.731 and of (10, 9.4) 0.646. The logits differ by 4% of
        // their peak, inside the tolerance. The CPU score is 6% above the threshold 0.69, so
        // the flip to "out" is not borderline.
        let msp = Decision {
            scorer: Scorer::new(ScorerKind::Msp),
            threshold: 0.69,
        };
        let tally = tally_with(msp, [10.0, 9.0], [10.0, 9.4]);
        assert!(tally.relative.1 <= QDQ_TOLERANCE, "{:?}", tally.relative);
        assert_eq!(tally.decisions_same, Some(0));
        assert_eq!(tally.decisions_borderline, 0);
        assert!(!tally.agree(QDQ_TOLERANCE));
    }

    #[test]
    fn table_marks_only_excused_flips() {
        let decision = max_logit_decision();
        let rows = [
            compare(
                Path::new("same.jpg"),
                &activations([4.0, 2.0]),
                &activations([4.0, 2.0]),
                Some(&decision),
                QDQ_TOLERANCE,
            ),
            compare(
                Path::new("flip.jpg"),
                &activations([4.0, 3.9]),
                &activations([3.95, 3.97]),
                Some(&decision),
                QDQ_TOLERANCE,
            ),
        ];
        let mut out = Vec::new();
        print_table(&mut out, &rows, Some(&decision)).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[1].starts_with("same.jpg"), "{text}");
        assert!(!lines[1].ends_with("borderline"), "{text}");
        assert!(lines[2].contains("0≠1"), "{text}");
        assert!(lines[2].ends_with("borderline"), "{text}");
    }

    #[test]
    fn summary_reports_disagreement() {
        let decision = max_logit_decision();
        let rows = [compare(
            Path::new("x.jpg"),
            &activations([4.0, 2.0]),
            &activations([4.0, 2.5]),
            Some(&decision),
            QDQ_TOLERANCE,
        )];
        let summary = Summary {
            model: Path::new("m.onnx"),
            qdq: true,
            tolerance: QDQ_TOLERANCE,
            rows: &rows,
            skipped: 0,
            decision: Some(&decision),
            loads: (Duration::from_millis(800), Duration::from_millis(4000)),
            medians: (Duration::from_millis(75), Duration::from_millis(3)),
        };
        let mut out = Vec::new();
        let agree = print_summary(&mut out, &summary).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(!agree);
        assert!(text.contains("1 images compared, 0 skipped"), "{text}");
        assert!(text.contains("max Δ 1.250e-1"), "{text}");
        assert!(text.ends_with("result: DISAGREE\n"), "{text}");
    }

    #[test]
    fn difference_takes_max_of_each() {
        assert_eq!(difference(&[1.0, -4.0, 2.0], &[1.5, -4.0, 1.0]), (1.0, 4.0));
    }

    #[test]
    fn relative_of_zero_difference_is_zero() {
        assert_eq!(relative((0.0, 0.0)), 0.0);
    }

    #[test]
    fn relative_divides_by_peak() {
        assert_eq!(relative((0.5, 4.0)), 0.125);
    }

    #[test]
    fn median_of_even_count_is_mean() {
        let mut times = [4, 1, 3, 2].map(Duration::from_millis);
        assert_eq!(median(&mut times), Duration::from_micros(2500));
    }

    #[test]
    fn median_of_odd_count_is_middle() {
        let mut times = [5, 1, 3].map(Duration::from_millis);
        assert_eq!(median(&mut times), Duration::from_millis(3));
    }
}
