//! One test per fixed bug, named after the behaviour that is now right.

mod common;

use std::io::Read;
use std::process::{Command, Output, Stdio};

fn gradgate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gradgate"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// `--threshold NaN` used to be accepted and flagged every frame, printing `"threshold":null`.
#[test]
fn nan_threshold_is_rejected() {
    let output = gradgate(&["run", "--threshold", "NaN", "tests/data/id"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("'NaN' is not a finite number"),
        "{}",
        stderr(&output)
    );
}

/// `--threshold -inf` used to be parsed as the flag `-i`.
#[test]
fn negative_infinite_threshold_is_rejected_by_value() {
    let output = gradgate(&["run", "--threshold", "-inf", "tests/data/id"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("'-inf' is not a finite number"),
        "{}",
        stderr(&output)
    );
}

/// `--temperature -1` used to suggest `-- -1`, which would have made it a source.
#[test]
fn negative_temperature_names_the_valid_range() {
    let output = gradgate(&["run", "--temperature", "-1", "tests/data/id"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("'-1' is not a temperature from 0.001 to 10000"),
        "{}",
        stderr(&output)
    );
}

/// `--max-file-bytes 1000000000000` used to abort the process on the buffer allocation.
#[test]
fn oversized_buffer_limit_is_a_usage_error() {
    let output = gradgate(&["run", "--max-file-bytes", "1000000000000", "tests/data/id"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("1000000000000"),
        "{}",
        stderr(&output)
    );
}

/// A missing model used to print the operating-system error twice.
#[test]
fn missing_model_error_is_printed_once() {
    let output = gradgate(&["run", "--model", "no/such/model.onnx", "tests/data/id"]);
    let message = stderr(&output);
    assert_eq!(
        message.matches("No such file or directory").count(),
        1,
        "{message}"
    );
}

/// `gradgate run … | head -1` used to exit 2 with "Broken pipe" after frames were scored.
#[test]
fn closed_stdout_ends_the_run_quietly() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gradgate"))
        .args(["run", "tests/data/id", "tests/data/ood"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read the first line, then close the pipe.
    let mut stdout = child.stdout.take().unwrap();
    let mut first = Vec::new();
    let mut byte = [0u8; 1];
    while stdout.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {
        first.push(byte[0]);
    }
    drop(stdout);
    let status = child.wait().unwrap();
    assert!(
        first.starts_with(b"{\"source\""),
        "{}",
        String::from_utf8_lossy(&first)
    );
    assert_eq!(status.code(), Some(0));
}

/// Shipped thresholds used to equal a calibration score exactly, so a CPU rounding that
/// score one ulp lower flagged it. Every calibration image must pass with a margin.
#[test]
fn shipped_threshold_is_not_a_calibration_score() {
    let calibration = common::load_json("models/efficientnet-lite0-int8.calibration.json");
    let threshold = calibration["scorers"]["gradnorm"]["threshold"]
        .as_f64()
        .unwrap();
    let output = gradgate(&[
        "run",
        "--scorer",
        "gradnorm",
        "--threshold",
        "-1e30",
        "models/calibration",
    ]);
    for line in String::from_utf8(output.stdout).unwrap().lines() {
        let score = serde_json::from_str::<serde_json::Value>(line).unwrap()["score"]
            .as_f64()
            .unwrap();
        assert!(
            (score - threshold).abs() > 1e-3,
            "score {score} equals the threshold"
        );
    }
}

/// A calibration's recommended detector becomes `run`'s default scorer.
#[test]
fn recommended_detector_is_the_default_scorer() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model.onnx");
    std::fs::copy(common::fp32_model(), &model).unwrap();
    let model = model.to_str().unwrap();
    let calibrate = gradgate(&[
        "calibrate",
        "--model",
        model,
        "--recommend",
        "msp",
        "models/calibration",
    ]);
    assert_eq!(calibrate.status.code(), Some(0), "{}", stderr(&calibrate));
    let run = gradgate(&["run", "--model", model, "tests/data/id/espresso-cup.jpg"]);
    let line: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(line["scorer"], "msp");
}

/// `--recommend` of a fitted detector that has no statistics is rejected.
#[test]
fn recommending_an_uncalibrated_detector_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model.onnx");
    std::fs::copy(common::fp32_model(), &model).unwrap();
    let output = gradgate(&[
        "calibrate",
        "--model",
        model.to_str().unwrap(),
        "--recommend",
        "vim",
        "models/calibration",
    ]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("fit it first"),
        "{}",
        stderr(&output)
    );
}
