//! `gradgate bench`: the per-frame cost of each model variant and thread count on this
//! machine, with the same binary that runs on the board.
//!
//! Each variant runs in a child process (this binary with a hidden `--child` flag), so that
//! start-up time and peak resident memory are those of a fresh `gradgate run`. The parent
//! measures from spawning the child to the child's "first frame" line, so the time includes
//! process start, model load and the first frame. The child measures the stages of the
//! following frames and reports them as one JSON line.

use crate::settings;
use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use gradgate::frame::{FrameBuf, FrameLimits};
use gradgate::model::{time_by_op, LoadOptions, NodeTime};
use gradgate::source::decode_into;
use gradgate::{Gate, Model, Pipeline, Scorer, ScorerKind};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The frame timed when no image is given: a 320 × 240 JPEG photo of an espresso cup from
/// tests/data (credited in tests/data/ATTRIBUTION.md), built into the binary so that the
/// command needs nothing but the model on a board.
const BUILT_IN_IMAGE: &[u8] = include_bytes!("../../../tests/data/id/espresso-cup.jpg");

/// Line the child prints once its first frame is scored.
const FIRST_FRAME_LINE: &str = "first-frame";

/// Frames run before timing starts in each child: the first frames fault in tract's buffers.
const WARM_UP_FRAMES: usize = 3;

/// Runs of the GradNorm closed form timed together, so that the clock's resolution (tens of
/// nanoseconds) is small against the total.
const GRADNORM_REPEATS: u32 = 2000;

#[derive(Args)]
pub(crate) struct BenchArgs {
    /// ONNX model file to time; repeat for several [default: GRADGATE_MODEL, else the bundled
    /// fp32 and int8 models]
    #[arg(long, value_name = "FILE")]
    model: Vec<PathBuf>,
    /// Thread counts to time, comma-separated, each from 1 to 4 × the CPU cores [default: 1
    /// and the number of CPU cores]
    #[arg(long, value_name = "N,N,…", value_delimiter = ',', value_parser = settings::parse_threads)]
    threads: Vec<usize>,
    /// Timed frames per model and thread count, after 3 warm-up frames
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    frames: u32,
    /// Also time each backbone node and print the N most expensive operators and nodes
    #[arg(long, value_name = "N", default_value_t = 0)]
    nodes: usize,
    /// Output: a text table, or one JSON object per model and thread count
    #[arg(long, value_enum, default_value_t = BenchFormat::Text)]
    format: BenchFormat,
    /// Image to time (JPEG, PNG or WebP), decoded from memory every frame [default: a
    /// 320 × 240 JPEG photo built into the binary]
    #[arg(value_name = "IMAGE")]
    image: Option<PathBuf>,
    /// Run QDQ (int8) models as tract builds them, without gradgate's fusion of their
    /// QuantizeLinear/DequantizeLinear pairs, to measure what the fusion saves
    #[arg(long)]
    no_qdq_fusion: bool,
    /// Largest accepted image width or height, in pixels (at most 65535)
    #[arg(long, default_value_t = FrameLimits::default().max_side_px,
          value_parser = clap::value_parser!(u32).range(1..=65535))]
    max_side_px: u32,
    /// Largest accepted width × height, in pixels (at most 268435456)
    #[arg(long, default_value_t = FrameLimits::default().max_pixels,
          value_parser = clap::value_parser!(u64).range(1..=1 << 28))]
    max_pixels: u64,
    /// Internal: run one model and thread count and print the result as JSON.
    #[arg(long, hide = true)]
    child: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BenchFormat {
    Text,
    Json,
}

/// One model and thread count, as the child reports it. Times in milliseconds unless the
/// name says otherwise; stage times are medians over the timed frames.
#[derive(Serialize, Deserialize)]
struct Measurement {
    model: String,
    threads: usize,
    /// True when the model is a QDQ graph (QuantizeLinear/DequantizeLinear nodes).
    #[serde(default)]
    qdq: bool,
    /// True when QuantizeLinear/DequantizeLinear pairs were fused (QDQ models only).
    qdq_fused: bool,
    frames: usize,
    /// Filled in by the parent: from spawning the child to its first scored frame.
    start_to_first_frame_ms: Option<f64>,
    load_ms: f64,
    decode_ms: f64,
    preprocess_ms: f64,
    backbone_ms: f64,
    /// Copying the features out of tract, `W·h + b`, `‖h‖₁` and the finiteness checks.
    head_ms: f64,
    /// Scoring with GradNorm and the gate's decision.
    score_gate_ms: f64,
    frame_median_ms: f64,
    frame_p90_ms: f64,
    /// The GradNorm closed form alone on cached activations, in microseconds.
    gradnorm_us: f64,
    /// Peak resident memory of the whole child process (the larger of the two below).
    peak_rss_mib: Option<f64>,
    /// Peak resident memory up to the end of the first frame: loading and optimizing the
    /// model, the first inference.
    peak_rss_load_mib: Option<f64>,
    /// Peak resident memory while the timed frames ran, measured from the end of the first
    /// frame. `None` where the kernel cannot reset the peak (before Linux 4.0).
    peak_rss_frames_mib: Option<f64>,
    /// The costliest operators: (operator, nodes, milliseconds per frame).
    #[serde(default)]
    ops: Vec<(String, usize, f64)>,
    /// The costliest nodes: (node, operator, milliseconds per frame).
    #[serde(default)]
    top_nodes: Vec<(String, String, f64)>,
}

pub(crate) fn bench(args: BenchArgs) -> Result<crate::Outcome> {
    if args.child {
        return child(&args).map(|()| crate::Outcome::AllFrames);
    }
    let models = match (args.model.is_empty(), std::env::var_os("GRADGATE_MODEL")) {
        (false, _) => args.model.clone(),
        (true, Some(path)) => vec![PathBuf::from(path)],
        (true, None) => crate::bundled_variants(),
    };
    if models.is_empty() {
        bail!("no bundled model found; give one with --model FILE");
    }
    for model in &models {
        if !model.exists() {
            bail!(
                "model {} not found; give an ONNX file with --model",
                model.display()
            );
        }
        if !model.is_file() {
            bail!(
                "model {} is not a file; give an ONNX file with --model",
                model.display()
            );
        }
    }
    // A bad image fails every run the same way, so it is checked once, before any model loads.
    if let Some(path) = &args.image {
        let bytes = read_image(path, &args.limits())?;
        let mut frame = FrameBuf::new(args.limits().pixel_buffer_bytes());
        decode_into(&bytes, &args.limits(), &mut frame)
            .map_err(|e| anyhow::anyhow!("cannot decode image {}: {e}", path.display()))?;
    }
    let threads = if args.threads.is_empty() {
        let cores = settings::cores();
        if cores > 1 {
            vec![1, cores]
        } else {
            vec![1]
        }
    } else {
        args.threads.clone()
    };

    let exe = std::env::current_exe()
        .context("cannot find this program's path to start the benchmark runs")?;
    // A run that fails is reported and the others go on, so one bad model loses nothing.
    let mut results = Vec::new();
    let mut failures = Vec::new();
    for model in &models {
        for &n in &threads {
            log::info!("bench: {} on {n} thread(s)", model.display());
            match run_child(&exe, &args, model, n) {
                Ok(result) => {
                    if args.format == BenchFormat::Json {
                        println!("{}", serde_json::to_string(&result)?);
                    }
                    results.push(result);
                }
                Err(err) => {
                    log::error!(
                        "bench: {} on {n} thread(s) failed: {err:#}",
                        model.display()
                    );
                    eprintln!("gradgate: error: {err:#}");
                    failures.push(err);
                }
            }
        }
    }
    if args.format == BenchFormat::Text && !results.is_empty() {
        print_table(&results, &args);
    }
    match (results.is_empty(), failures.pop()) {
        (_, None) => Ok(crate::Outcome::AllFrames),
        (true, Some(err)) => Err(err.context("every benchmark run failed")),
        (false, Some(_)) => Ok(crate::Outcome::SomeSkipped),
    }
}

/// Starts one child, times it to its first frame and reads its measurement.
fn run_child(exe: &Path, args: &BenchArgs, model: &Path, threads: usize) -> Result<Measurement> {
    let mut command = Command::new(exe);
    command
        .arg("bench")
        .arg("--child")
        .arg("--model")
        .arg(model)
        .arg("--threads")
        .arg(threads.to_string())
        .arg("--frames")
        .arg(args.frames.to_string())
        .arg("--nodes")
        .arg(args.nodes.to_string());
    if args.no_qdq_fusion {
        command.arg("--no-qdq-fusion");
    }
    if let Some(image) = &args.image {
        command.arg(image);
    }

    let started = Instant::now();
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {}", exe.display()))?;
    let stdout = child.stdout.take().expect("stdout is piped");
    // stderr is drained on its own thread: a child logging more than a pipe holds (RUST_LOG
    // at debug) would otherwise block while this thread waits for its stdout.
    let mut stderr_pipe = child.stderr.take().expect("stderr is piped");
    let stderr_reader = std::thread::spawn(move || {
        let mut text = String::new();
        // A read failure loses only the child's log lines, not its measurement.
        let _ = stderr_pipe.read_to_string(&mut text);
        text
    });

    let mut first_frame = None;
    let mut measurement = None;
    for line in BufReader::new(stdout).lines() {
        let line = line.context("cannot read the benchmark run's output")?;
        if line == FIRST_FRAME_LINE {
            first_frame = Some(started.elapsed());
        } else if !line.is_empty() {
            measurement = Some(line);
        }
    }

    let stderr = stderr_reader.join().unwrap_or_default();
    let status = child.wait().context("cannot wait for the benchmark run")?;
    if status.success() {
        // Warnings of a run that succeeded, such as a model without gradgate's metadata.
        eprint!("{stderr}");
    } else {
        // The child prints its error as gradgate does; keep only the message.
        let message = stderr
            .lines()
            .rev()
            .find_map(|line| line.strip_prefix("gradgate: error: "))
            .unwrap_or(stderr.trim());
        bail!(
            "benchmark run of {} on {threads} thread(s) failed ({status}): {message}",
            model.display()
        );
    }

    let line = measurement.context("the benchmark run printed no result")?;
    let mut result: Measurement =
        serde_json::from_str(&line).context("cannot parse the benchmark run's result")?;
    result.start_to_first_frame_ms = first_frame.map(ms);
    Ok(result)
}

/// Runs the child: loads the model, scores one frame, reports, then times the stages.
fn child(args: &BenchArgs) -> Result<()> {
    let [model_path] = args.model.as_slice() else {
        bail!("--child takes exactly one --model");
    };
    stop_with_parent();
    let threads = args.threads.first().copied().unwrap_or(1);
    settings::install_threads(threads)?;
    let (image, image_name) = match &args.image {
        Some(path) => (
            read_image(path, &args.limits())?,
            path.display().to_string(),
        ),
        None => (BUILT_IN_IMAGE.to_vec(), "the built-in image".to_string()),
    };

    let started = Instant::now();
    let options = LoadOptions {
        fuse_qdq: !args.no_qdq_fusion,
        ..LoadOptions::default()
    };
    let model = Model::load_opts(model_path, &options)?;
    let qdq_fused = model.info().qdq_fused.is_some();
    let load = started.elapsed();
    let scorer = Scorer::new(ScorerKind::GradNorm);
    let qdq = model.info().qdq;
    let mut pipeline = Pipeline::new(model, scorer, Gate::new(f32::MAX), args.limits());
    let frame = |pipeline: &mut Pipeline| -> Result<()> {
        pipeline
            .decode(&image)
            .map_err(|e| anyhow::anyhow!("cannot decode {image_name}: {e}"))?;
        pipeline.preprocess();
        pipeline.infer()?;
        pipeline.decide();
        Ok(())
    };
    frame(&mut pipeline)?;
    let peak_rss_load_mib = peak_rss_mib();
    let frames_peak_measurable = reset_peak_rss();
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{FIRST_FRAME_LINE}")?;
    stdout.flush()?;
    for _ in 1..WARM_UP_FRAMES {
        frame(&mut pipeline)?;
    }

    // Time each stage of every frame.
    let frames = args.frames as usize;
    let mut stages: [Vec<Duration>; 6] = Default::default();
    for _ in 0..frames {
        let mut lap = Instant::now();
        let mut mark = |stage: &mut Vec<Duration>| {
            let now = Instant::now();
            stage.push(now - lap);
            lap = now;
        };
        pipeline.decode(&image)?;
        mark(&mut stages[0]);
        pipeline.preprocess();
        mark(&mut stages[1]);
        pipeline.infer_backbone()?;
        mark(&mut stages[2]);
        pipeline.cache_activations()?;
        mark(&mut stages[3]);
        std::hint::black_box(pipeline.decide());
        mark(&mut stages[4]);
    }
    let whole: Vec<Duration> = (0..frames)
        .map(|i| stages[..5].iter().map(|s| s[i]).sum())
        .collect();
    stages[5] = whole;

    // The GradNorm closed form alone, many times over the same activations.
    let timer = Instant::now();
    for _ in 0..GRADNORM_REPEATS {
        std::hint::black_box(scorer.score(std::hint::black_box(pipeline.activations())));
    }
    let gradnorm_us = timer.elapsed().as_secs_f64() * 1e6 / f64::from(GRADNORM_REPEATS);

    let (ops, top_nodes) = if args.nodes > 0 {
        profile_nodes(&mut pipeline, &image, args.nodes)?
    } else {
        (Vec::new(), Vec::new())
    };

    let result = Measurement {
        model: model_path.display().to_string(),
        threads,
        qdq,
        qdq_fused,
        frames,
        start_to_first_frame_ms: None,
        load_ms: ms(load),
        decode_ms: median_ms(&stages[0]),
        preprocess_ms: median_ms(&stages[1]),
        backbone_ms: median_ms(&stages[2]),
        head_ms: median_ms(&stages[3]),
        score_gate_ms: median_ms(&stages[4]),
        frame_median_ms: median_ms(&stages[5]),
        frame_p90_ms: quantile_ms(&stages[5], 0.9),
        gradnorm_us,
        peak_rss_mib: match (peak_rss_load_mib, peak_rss_mib()) {
            (Some(load), Some(now)) => Some(load.max(now)),
            (load, now) => load.or(now),
        },
        peak_rss_load_mib,
        peak_rss_frames_mib: if frames_peak_measurable {
            peak_rss_mib()
        } else {
            None
        },
        ops,
        top_nodes,
    };
    writeln!(stdout, "{}", serde_json::to_string(&result)?)?;
    Ok(())
}

type OpTimes = Vec<(String, usize, f64)>;
type NodeTimes = Vec<(String, String, f64)>;

/// Frames profiled per node; their times are averaged.
const PROFILED_FRAMES: usize = 5;

/// Times every backbone node over a few frames; returns the `top` costliest operators and
/// nodes, in milliseconds per frame.
fn profile_nodes(
    pipeline: &mut Pipeline,
    image: &[u8],
    top: usize,
) -> Result<(OpTimes, NodeTimes)> {
    pipeline.decode(image)?;
    pipeline.preprocess();
    let mut total: Vec<NodeTime> = Vec::new();
    for _ in 0..PROFILED_FRAMES {
        let times = pipeline.profile_backbone()?;
        pipeline.cache_activations()?;
        if total.is_empty() {
            total = times;
        } else {
            for (sum, t) in total.iter_mut().zip(times) {
                sum.elapsed += t.elapsed;
            }
        }
    }
    let per_frame = |d: Duration| ms(d) / PROFILED_FRAMES as f64;
    let ops = time_by_op(&total)
        .into_iter()
        .take(top)
        .map(|(op, count, d)| (op, count, per_frame(d)))
        .collect();
    total.sort_by_key(|t| std::cmp::Reverse(t.elapsed));
    let nodes = total
        .into_iter()
        .take(top)
        .map(|t| (t.name, t.op, per_frame(t.elapsed)))
        .collect();
    Ok((ops, nodes))
}

/// Peak resident memory of this process (VmHWM), from /proc; `None` where that is missing.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

impl BenchArgs {
    fn limits(&self) -> FrameLimits {
        FrameLimits {
            max_side_px: self.max_side_px,
            max_pixels: self.max_pixels,
            ..FrameLimits::default()
        }
    }
}

/// Reads an image file of at most `limits.max_file_bytes` bytes.
fn read_image(path: &Path, limits: &FrameLimits) -> Result<Vec<u8>> {
    let file = std::fs::File::open(path)
        .with_context(|| format!("cannot read image {}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(limits.max_file_bytes + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read image {}", path.display()))?;
    if bytes.len() as u64 > limits.max_file_bytes {
        bail!(
            "image {} is larger than {} bytes; give a smaller image",
            path.display(),
            limits.max_file_bytes
        );
    }
    Ok(bytes)
}

/// Asks Linux to end this child when the `gradgate bench` that started it ends, so a killed
/// benchmark leaves no run behind.
fn stop_with_parent() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: PR_SET_PDEATHSIG takes a signal number and touches no memory of ours.
        unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
        }
    }
}

/// Resets the kernel's peak resident memory counter (VmHWM) to the current value; false
/// where that is not supported.
fn reset_peak_rss() -> bool {
    // "5" resets the peak RSS counter (Documentation/filesystems/proc.rst, clear_refs).
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median_ms(times: &[Duration]) -> f64 {
    quantile_ms(times, 0.5)
}

/// The `q` quantile by the nearest-rank method.
fn quantile_ms(times: &[Duration], q: f64) -> f64 {
    let mut sorted = times.to_vec();
    sorted.sort();
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    ms(sorted[rank - 1])
}

fn print_table(results: &[Measurement], args: &BenchArgs) {
    let image = args.image.as_ref().map_or_else(
        || "built-in 320×240 JPEG".to_string(),
        |p| p.display().to_string(),
    );
    println!(
        "gradgate {} on {} ({} CPU cores), image {image}, {} frame{} after {WARM_UP_FRAMES} warm-up; medians in ms",
        env!("CARGO_PKG_VERSION"),
        cpu_name(),
        settings::cores(),
        args.frames,
        if args.frames == 1 { "" } else { "s" },
    );
    println!();
    println!(
        "| model | threads | start to first frame | decode | preprocess | backbone | head | score + gate | frame | frame p90 | frames/s | GradNorm | GradNorm share | peak RSS: load / frames |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in results {
        let name = Path::new(&r.model)
            .file_name()
            .map_or(r.model.clone(), |n| n.to_string_lossy().into_owned());
        let name = if r.qdq && !r.qdq_fused {
            format!("{name} (QDQ not fused)")
        } else {
            name
        };
        let start = r
            .start_to_first_frame_ms
            .map_or("?".into(), |v| format!("{v:.0}"));
        let rss_load = r
            .peak_rss_load_mib
            .map_or("?".into(), |v| format!("{v:.1}"));
        let rss_frames = r
            .peak_rss_frames_mib
            .map_or("?".into(), |v| format!("{v:.1}"));
        println!(
            "| {name} | {} | {start} | {:.2} | {:.2} | {:.2} | {:.3} | {:.3} | {:.2} | {:.2} | {:.1} | {:.1} µs | {:.3}% | {rss_load} / {rss_frames} MiB |",
            r.threads,
            r.decode_ms,
            r.preprocess_ms,
            r.backbone_ms,
            r.head_ms,
            r.score_gate_ms,
            r.frame_median_ms,
            r.frame_p90_ms,
            1e3 / r.frame_median_ms,
            r.gradnorm_us,
            r.gradnorm_us / 1e3 / r.frame_median_ms * 100.0,
        );
    }
    for r in results.iter().filter(|r| !r.ops.is_empty()) {
        println!();
        println!(
            "{} on {} thread(s): costliest operators, ms per frame (backbone {:.2} ms)",
            r.model, r.threads, r.backbone_ms
        );
        println!();
        println!("| operator | nodes | ms | share of backbone |");
        println!("|---|---|---|---|");
        for (op, count, t) in &r.ops {
            println!(
                "| {op} | {count} | {t:.3} | {:.1}% |",
                t / r.backbone_ms * 100.0
            );
        }
        println!();
        println!("| node | operator | ms |");
        println!("|---|---|---|");
        for (node, op, t) in &r.top_nodes {
            println!("| {node} | {op} | {t:.3} |");
        }
    }
}

/// Returns the CPU's model name from /proc/cpuinfo, else the architecture.
fn cpu_name() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    info.lines()
        .find(|l| l.starts_with("model name") || l.starts_with("Model"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}
