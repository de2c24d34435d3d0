//! The `--backend` option and the CUDA fallback, on a machine without a usable GPU: a model
//! requested on CUDA runs on the CPU with identical scores, one log line gives the reason,
//! and `gpu-check` skips. On a machine with a GPU the fallback tests check nothing;
//! `gradgate gpu-check` covers that case.

mod common;

use common::{int8_model, repo};
use gradgate::model::{probe_cuda, Backend, CudaUnavailable};
use gradgate::Model;
use serde_json::Value;
use std::process::{Command, Output};

/// Two bundled images: one in-distribution, one out.
const IMAGES: [&str; 2] = [
    "tests/data/id/espresso-cup.jpg",
    "tests/data/ood/icon/treble-clef.jpg",
];

/// Text of the fallback line for an explicit `cuda`, from `Model::load_with`.
const CUDA_FALLBACK: &str = "on the CPU instead of CUDA: ";

/// Text of the fallback line for `auto`.
const AUTO_FALLBACK: &str = "backend auto: no usable GPU, running model ";

fn gradgate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gradgate"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("GRADGATE_MODEL")
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn run_images(backend: &str, verbose: bool) -> Output {
    let mut args = Vec::new();
    if verbose {
        args.push("-v");
    }
    args.extend(["run", "--backend", backend]);
    args.extend(IMAGES);
    gradgate(&args)
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Returns the score fields of each JSON line, without the time and latency that change
/// per run.
fn scores(output: &Output) -> Vec<Value> {
    String::from_utf8(output.stdout.clone())
        .unwrap()
        .lines()
        .map(|line| {
            let mut value: Value = serde_json::from_str(line).unwrap();
            let object = value.as_object_mut().unwrap();
            object.remove("time");
            object.remove("latency_ms");
            value
        })
        .collect()
}

/// Returns the reason this machine has no usable GPU, or `None` when it has one.
fn no_gpu_reason() -> Option<CudaUnavailable> {
    probe_cuda().err()
}

#[test]
fn load_with_cpu_runs_on_cpu() {
    let model = Model::load_with(&int8_model(), Backend::Cpu).unwrap();
    assert_eq!(model.backend_in_use(), Backend::Cpu);
    assert_eq!(model.cuda_fallback(), None);
}

#[test]
fn load_with_cuda_falls_back_to_cpu() {
    let Some(reason) = no_gpu_reason() else {
        return;
    };
    let model = Model::load_with(&int8_model(), Backend::Cuda).unwrap();
    assert_eq!(model.backend_in_use(), Backend::Cpu);
    assert_eq!(model.cuda_fallback(), Some(&reason));
}

#[test]
fn load_with_auto_falls_back_to_cpu() {
    if no_gpu_reason().is_none() {
        return;
    }
    let model = Model::load_with(&int8_model(), Backend::Auto).unwrap();
    assert_eq!(model.backend_in_use(), Backend::Cpu);
}

#[cfg(not(any(feature = "cuda", feature = "cuda-12")))]
#[test]
fn default_build_reports_not_built() {
    assert_eq!(probe_cuda(), Err(CudaUnavailable::NotBuilt));
}

#[cfg(any(feature = "cuda", feature = "cuda-12"))]
#[test]
fn cuda_build_reports_missing_library() {
    // A CUDA build on a machine without the NVIDIA driver: the probe fails on libcuda, and
    // the message names the library it looked for.
    let Some(reason) = no_gpu_reason() else {
        return;
    };
    assert!(matches!(reason, CudaUnavailable::NotFound(_)), "{reason:?}");
    assert!(reason.to_string().contains("libcuda.so"), "{reason}");
}

#[test]
fn cuda_fallback_scores_equal_cpu() {
    if no_gpu_reason().is_none() {
        return;
    }
    let cpu = run_images("cpu", false);
    let cuda = run_images("cuda", false);
    assert_eq!(cpu.status.code(), Some(0), "{}", stderr(&cpu));
    assert_eq!(cuda.status.code(), Some(0), "{}", stderr(&cuda));
    let cpu_scores = scores(&cpu);
    assert_eq!(cpu_scores.len(), IMAGES.len());
    assert_eq!(scores(&cuda), cpu_scores);
}

#[test]
fn cuda_fallback_logged_once() {
    let Some(reason) = no_gpu_reason() else {
        return;
    };
    let output = run_images("cuda", true);
    let log = stderr(&output);
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(CUDA_FALLBACK)).collect();
    assert_eq!(lines.len(), 1, "{log}");
    assert!(lines[0].contains("WARN"), "{}", lines[0]);
    assert!(lines[0].ends_with(&reason.to_string()), "{}", lines[0]);
}

#[test]
fn cuda_fallback_warns_without_verbose() {
    if no_gpu_reason().is_none() {
        return;
    }
    let log = stderr(&run_images("cuda", false));
    assert_eq!(log.matches(CUDA_FALLBACK).count(), 1, "{log}");
}

#[test]
fn auto_fallback_logged_at_info() {
    if no_gpu_reason().is_none() {
        return;
    }
    let log = stderr(&run_images("auto", true));
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(AUTO_FALLBACK)).collect();
    assert_eq!(lines.len(), 1, "{log}");
    assert!(lines[0].contains("INFO"), "{}", lines[0]);
}

#[test]
fn auto_fallback_silent_by_default() {
    if no_gpu_reason().is_none() {
        return;
    }
    let log = stderr(&run_images("auto", false));
    assert!(!log.contains(AUTO_FALLBACK), "{log}");
}

#[test]
fn summary_names_backend_in_use() {
    if no_gpu_reason().is_none() {
        return;
    }
    let log = stderr(&run_images("cuda", false));
    assert!(log.contains(", backend cpu)"), "{log}");
}

#[test]
fn backend_rejects_unknown_value() {
    let output = gradgate(&["run", "--backend", "gpu", IMAGES[0]]);
    assert_eq!(output.status.code(), Some(2));
    let log = stderr(&output);
    assert!(
        log.contains("unknown backend 'gpu': expected cpu, cuda or auto"),
        "{log}"
    );
}

#[test]
fn gpu_check_skips_without_device() {
    let Some(reason) = no_gpu_reason() else {
        return;
    };
    let output = gradgate(&["gpu-check"]);
    assert_eq!(output.status.code(), Some(77), "{}", stderr(&output));
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert_eq!(stdout, format!("{}({reason})\n", skip_prefix()));
}

/// The start of gpu-check's skip line: a build without CUDA reports that apart from a missing GPU.
fn skip_prefix() -> &'static str {
    if cfg!(any(feature = "cuda", feature = "cuda-12")) {
        "skipped: no CUDA device "
    } else {
        "skipped: built without CUDA "
    }
}

#[test]
fn gpu_check_script_skips_without_device() {
    if no_gpu_reason().is_none() {
        return;
    }
    let output = Command::new(repo("benches/gpu-check.sh"))
        .arg(env!("CARGO_BIN_EXE_gradgate"))
        .env_remove("GRADGATE_MODEL")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(77), "{}", stderr(&output));
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(stdout.starts_with(skip_prefix()), "{stdout}");
}

/// A CUDA build run against stand-in CUDA libraries: small shared objects compiled with the
/// system C compiler, found through `LD_LIBRARY_PATH`. They reach the fallback paths a
/// machine without a GPU never reaches: a driver that finds no device, a driver older than
/// the build's CUDA API, a missing CUDA runtime, and a context that fails after every library
/// loaded.
#[cfg(any(feature = "cuda", feature = "cuda-12"))]
mod fake_cuda {
    use super::*;
    use std::path::Path;

    /// CUDA_ERROR_NO_DEVICE, what cuInit returns on a machine without a GPU.
    const NO_DEVICE: i32 = 100;

    /// A stand-in libcuda: cuInit returns `init_result`, cuDriverGetVersion `version`, and
    /// every other driver symbol is missing.
    fn fake_driver(dir: &Path, init_result: i32, version: i32) {
        let source = dir.join("cuda.c");
        std::fs::write(
            &source,
            format!(
                "int cuInit(unsigned int flags) {{ (void)flags; return {init_result}; }}\n\
                 int cuDriverGetVersion(int *version) {{ *version = {version}; return 0; }}\n"
            ),
        )
        .unwrap();
        compile(&source, &dir.join("libcuda.so.1"));
    }

    /// Stand-ins for cudart, NVRTC, cuBLAS and cuDNN that load and export nothing.
    fn fake_libraries(dir: &Path) {
        let source = dir.join("empty.c");
        std::fs::write(&source, "int gradgate_fake_cuda_library;\n").unwrap();
        for name in ["cudart", "nvrtc", "cublas", "cudnn"] {
            compile(&source, &dir.join(format!("lib{name}.so")));
        }
    }

    fn compile(source: &Path, library: &Path) {
        let status = Command::new("cc")
            .args(["-shared", "-fPIC", "-o"])
            .arg(library)
            .arg(source)
            .status()
            .expect("these tests need a C compiler named cc");
        assert!(status.success(), "cc failed on {}", source.display());
    }

    fn run_with(dir: &Path, backend: &str) -> Output {
        Command::new(env!("CARGO_BIN_EXE_gradgate"))
            .args(["run", "--backend", backend])
            .args(IMAGES)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("LD_LIBRARY_PATH", dir)
            .env_remove("GRADGATE_MODEL")
            .env_remove("RUST_LOG")
            .output()
            .unwrap()
    }

    fn fallback_line(output: &Output) -> String {
        let log = stderr(output);
        let lines: Vec<&str> = log.lines().filter(|l| l.contains(CUDA_FALLBACK)).collect();
        assert_eq!(lines.len(), 1, "{log}");
        lines[0].to_owned()
    }

    #[test]
    fn driver_without_device_falls_back() {
        let dir = tempfile::tempdir().unwrap();
        fake_driver(dir.path(), NO_DEVICE, 13000);
        let line = fallback_line(&run_with(dir.path(), "cuda"));
        assert!(line.contains("cuInit returned 100"), "{line}");
    }

    #[test]
    fn old_driver_falls_back() {
        let dir = tempfile::tempdir().unwrap();
        fake_driver(dir.path(), 0, 11080);
        let line = fallback_line(&run_with(dir.path(), "cuda"));
        assert!(line.contains("CUDA driver too old"), "{line}");
        assert!(line.contains("Found driver API 11.8"), "{line}");
    }

    #[test]
    fn missing_runtime_library_named() {
        let dir = tempfile::tempdir().unwrap();
        fake_driver(dir.path(), 0, 13000);
        let line = fallback_line(&run_with(dir.path(), "cuda"));
        assert!(
            line.contains("\"cudart (runtime)\" could not be dlopen'd"),
            "{line}"
        );
    }

    #[test]
    fn failed_context_falls_back_to_equal_scores() {
        // Every library loads, so the probe passes and tract-cuda starts creating its
        // context, which panics on the first missing driver symbol. The model must then run
        // on the CPU from the decluttered graph, with the scores of a plain CPU run.
        let dir = tempfile::tempdir().unwrap();
        fake_driver(dir.path(), 0, 13000);
        fake_libraries(dir.path());
        let cuda = run_with(dir.path(), "cuda");
        assert_eq!(cuda.status.code(), Some(0), "{}", stderr(&cuda));
        let line = fallback_line(&cuda);
        assert!(line.contains("tract-cuda panicked: "), "{line}");
        assert!(!stderr(&cuda).contains("panicked at"), "{}", stderr(&cuda));
        let cpu = run_images("cpu", false);
        assert_eq!(scores(&cuda), scores(&cpu));
    }

    #[test]
    fn failed_context_under_auto_warns() {
        let dir = tempfile::tempdir().unwrap();
        fake_driver(dir.path(), 0, 13000);
        fake_libraries(dir.path());
        let log = stderr(&run_with(dir.path(), "auto"));
        assert!(log.contains("WARN"), "{log}");
        assert!(log.contains("backend auto: running model "), "{log}");
    }
}
