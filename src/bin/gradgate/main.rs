//! The `gradgate` command: score image files, calibrate thresholds.
//!
//! Exit codes: 0 when every frame was scored; 1 when the run finished but some frames were
//! skipped (unreadable, corrupt or unsupported input); 2 on a fatal error (bad option, model,
//! calibration or source) before any frame was scored. `gpu-check` exits 1 when the CPU and
//! the GPU disagree and 77 when no CUDA device is usable.

mod bench;
mod boards;
mod calibrate;
mod config;
mod eval;
mod fit;
mod gpu_check;
mod input;
mod output;
mod run;
mod settings;
mod signals;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use gradgate::frame::FrameLimits;
use gradgate::model::Backend;
use gradgate::{Gate, GradNormScale, Model, Pipeline, Scorer, ScorerKind};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

/// Model used when neither --model nor GRADGATE_MODEL is given, relative to the working
/// folder, else to [`INSTALL_DIR`], else to the source tree the binary was built from.
///
/// The fp32 variant, because under tract 0.23.9 it is the faster of the two bundled variants:
/// int8 runs as simulated quantization in `f32`, with extra work per layer. Its scores match
/// the PyTorch reference (docs/benchmarks.md).
const BUNDLED_MODEL: &str = "models/efficientnet-lite0-fp32.onnx";

/// File names of the bundled model variants, fastest first, for `gradgate bench`.
const BUNDLED_VARIANTS: [&str; 2] = [
    "efficientnet-lite0-fp32.onnx",
    "efficientnet-lite0-int8.onnx",
];

/// Folder the Debian package installs `models/` and `boards/` into.
pub(crate) const INSTALL_DIR: &str = "/usr/share/gradgate";

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
    Run(Box<run::RunArgs>),
    /// Score in-distribution images and store thresholds beside the model.
    Calibrate(calibrate::CalibrateArgs),
    /// Compare scorers on in-distribution and OOD image sets: AUROC, AUPR, FPR at 95% TPR.
    Eval(eval::EvalArgs),
    /// Fit the statistics of ReAct, ASH, SCALE, KL matching, Mahalanobis, ViM and KNN.
    Fit(fit::FitArgs),
    /// List the board profiles (boards/*.toml), or print one with its notes.
    Boards(boards::BoardsArgs),
    /// Run images on the CPU and on the CUDA GPU and compare features, logits, classes,
    /// decisions and speed (exit 0: agree, 1: disagree, 77: no CUDA device).
    GpuCheck(gpu_check::GpuCheckArgs),
    /// Time each stage of a frame for each model variant and thread count: start-up, decode,
    /// preprocess, backbone, head, score, peak memory, and per node with --nodes.
    Bench(bench::BenchArgs),
}

#[derive(Args)]
pub(crate) struct ModelArgs {
    /// ONNX model file [default: GRADGATE_MODEL, else the bundled EfficientNet-Lite0 fp32]
    #[arg(long, value_name = "FILE")]
    pub(crate) model: Option<PathBuf>,
    /// Threads for tract's matrix products and element-wise ops, from 1 to 4 × the CPU cores
    /// [default: 1, or the board profile's with run --board]
    #[arg(long, value_name = "N", value_parser = settings::parse_threads)]
    pub(crate) threads: Option<usize>,
    /// Backend that runs the model: cpu, cuda (an NVIDIA GPU, else the CPU with a warning) or
    /// auto (the GPU when one is found, else the CPU). CUDA needs a build with --features cuda
    /// or cuda-12 [default: cpu, or the board profile's with run --board]
    #[arg(long, value_name = "BACKEND")]
    pub(crate) backend: Option<Backend>,
    /// Softmax temperature T for GradNorm, MSP and energy, from 0.001 to 10000
    #[arg(long, default_value_t = 1.0, value_parser = temperature, allow_negative_numbers = true)]
    pub(crate) temperature: f32,
    /// Largest accepted image width or height, in pixels (at most 65535)
    #[arg(long, default_value_t = FrameLimits::default().max_side_px,
          value_parser = clap::value_parser!(u32).range(1..=65535))]
    pub(crate) max_side_px: u32,
    /// Largest accepted width × height, in pixels (at most 268435456, a 1 GiB frame buffer)
    #[arg(long, default_value_t = FrameLimits::default().max_pixels,
          value_parser = clap::value_parser!(u64).range(1..=MAX_PIXELS_LIMIT))]
    pub(crate) max_pixels: u64,
    /// Largest accepted image file, in bytes (at most 1073741824)
    #[arg(long, default_value_t = FrameLimits::default().max_file_bytes,
          value_parser = clap::value_parser!(u64).range(1..=MAX_FILE_BYTES_LIMIT))]
    pub(crate) max_file_bytes: u64,
}

/// Upper bound of --max-pixels: the frame buffer takes 4 bytes per pixel, so 2²⁸ pixels is a
/// 1 GiB buffer, more than any board gradgate targets can spare.
const MAX_PIXELS_LIMIT: u64 = 1 << 28;
/// Upper bound of --max-file-bytes, for the same reason: the file buffer is allocated whole.
const MAX_FILE_BYTES_LIMIT: u64 = 1 << 30;

/// Parses a temperature: finite, from 0.001 to 10000. Outside that range the scores
/// overflow or underflow `f32` for logits of the size classifiers produce.
fn temperature(s: &str) -> Result<f32, String> {
    match s.parse::<f32>() {
        Ok(v) if (1e-3..=1e4).contains(&v) => Ok(v),
        _ => Err(format!("'{s}' is not a temperature from 0.001 to 10000")),
    }
}

/// Parses a finite number, for thresholds.
pub(crate) fn finite_f32(s: &str) -> Result<f32, String> {
    match s.parse::<f32>() {
        Ok(v) if v.is_finite() => Ok(v),
        _ => Err(format!("'{s}' is not a finite number")),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // tract logs every graph pass at debug level, thousands of lines per model load, so its
    // crates stay at info under -vv unless RUST_LOG requests more.
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug,tract=info",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .format_target(false)
        .init();

    let outcome = match cli.command {
        Command::Run(args) => run::run(*args),
        Command::Calibrate(args) => calibrate::calibrate(args),
        Command::Eval(args) => eval::eval(args),
        Command::Fit(args) => fit::fit_command(args),
        Command::Boards(args) => boards::boards_command(args),
        Command::GpuCheck(args) => gpu_check::gpu_check(args),
        Command::Bench(args) => bench::bench(args),
    };
    match outcome {
        Ok(Outcome::AllFrames) => ExitCode::SUCCESS,
        Ok(Outcome::SomeSkipped | Outcome::GpuMismatch) => ExitCode::from(1),
        Ok(Outcome::NoGpu) => ExitCode::from(gpu_check::EXIT_NO_GPU),
        Err(err) => {
            log::debug!("fatal error: {err:?}");
            eprintln!("gradgate: error: {err:#}");
            ExitCode::from(2)
        }
    }
}

pub(crate) enum Outcome {
    AllFrames,
    SomeSkipped,
    /// `gpu-check`: the CPU and the GPU results differ beyond the tolerance.
    GpuMismatch,
    /// `gpu-check`: no CUDA device is usable, so nothing was compared.
    NoGpu,
}

impl ModelArgs {
    pub(crate) fn limits(&self) -> FrameLimits {
        FrameLimits {
            max_side_px: self.max_side_px,
            max_pixels: self.max_pixels,
            max_file_bytes: self.max_file_bytes,
        }
    }

    /// Returns the closed-form scorer settings for commands that score with every detector:
    /// GradNorm with target 1/C per class, at this temperature. The other scorers ignore
    /// the scale.
    pub(crate) fn scorer(&self) -> Scorer {
        Scorer {
            kind: ScorerKind::GradNorm,
            temperature: self.temperature,
            gradnorm_scale: GradNormScale::Paper,
        }
    }

    /// Builds a pipeline for `calibrate`, `eval` and `fit`, which read scores rather than
    /// decisions, so its gate passes every frame.
    pub(crate) fn scoring_pipeline(&self, model: Model) -> Pipeline {
        Pipeline::new(
            model,
            self.scorer(),
            Gate::new(f32::NEG_INFINITY),
            self.limits(),
        )
    }

    pub(crate) fn load(&self) -> Result<Model> {
        settings::install_threads(self.threads.unwrap_or(settings::DEFAULT_THREADS))?;
        let path = match &self.model {
            Some(path) => path.clone(),
            None => bundled_model(),
        };
        let started = Instant::now();
        let model = Model::load_with(&path, self.backend.unwrap_or_default())?;
        let info = model.info();
        log::info!(
            "loaded model {} (sha256 {}) on {} in {} ms: {} classes, {} features from '{}', head {}{}, {} backbone nodes, input {}×{}",
            path.display(),
            info.sha256,
            model.backend_in_use(),
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

/// Returns the bundled model variants that exist, in the folder [`bundled_model`] would use
/// when GRADGATE_MODEL is unset.
pub(crate) fn bundled_variants() -> Vec<PathBuf> {
    let folder = [
        PathBuf::from(BUNDLED_MODEL),
        Path::new(INSTALL_DIR).join(BUNDLED_MODEL),
        Path::new(env!("CARGO_MANIFEST_DIR")).join(BUNDLED_MODEL),
    ]
    .into_iter()
    .find(|p| p.exists())
    .and_then(|p| p.parent().map(Path::to_path_buf));
    let Some(folder) = folder else {
        return Vec::new();
    };
    BUNDLED_VARIANTS
        .iter()
        .map(|name| folder.join(name))
        .filter(|p| p.exists())
        .collect()
}

fn bundled_model() -> PathBuf {
    if let Some(path) = std::env::var_os("GRADGATE_MODEL") {
        return PathBuf::from(path);
    }
    let local = PathBuf::from(BUNDLED_MODEL);
    if local.exists() {
        return local;
    }
    let installed = Path::new(INSTALL_DIR).join(BUNDLED_MODEL);
    if installed.exists() {
        return installed;
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join(BUNDLED_MODEL)
}
