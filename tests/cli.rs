//! The `gradgate` binary end to end: output format, exit codes, and bad input that is
//! reported and skipped while the run goes on.

mod common;

use common::{json_lines, repo, stderr};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn gradgate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gradgate"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("GRADGATE_MODEL")
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn copy_into(dir: &Path, source: &str, name: &str) -> PathBuf {
    let target = dir.join(name);
    std::fs::copy(repo(source), &target).unwrap();
    target
}

#[test]
fn run_prints_one_line_per_frame() {
    let output = gradgate(&["run", "tests/data/id"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let lines = json_lines(&output);
    let files = std::fs::read_dir(repo("tests/data/id")).unwrap().count();
    assert_eq!(lines.len(), files);
    for line in &lines {
        for key in [
            "source",
            "frame",
            "score",
            "threshold",
            "ood",
            "label",
            "prob",
            "latency_ms",
            "scorer",
        ] {
            assert!(line.get(key).is_some(), "missing {key} in {line}");
        }
        assert!(line["source"]
            .as_str()
            .unwrap()
            .starts_with("tests/data/id/"));
    }
}

#[test]
fn run_frames_are_numbered_in_order() {
    let output = gradgate(&["run", "--scorer", "energy", "tests/data/ood/icon"]);
    let frames: Vec<u64> = json_lines(&output)
        .iter()
        .map(|l| l["frame"].as_u64().unwrap())
        .collect();
    let expected: Vec<u64> = (0..frames.len() as u64).collect();
    assert_eq!(frames, expected);
}

#[test]
fn run_summary_counts_in_and_out() {
    let output = gradgate(&["run", "--scorer", "msp", "tests/data/ood/near-blank"]);
    let lines = json_lines(&output);
    let out = lines.iter().filter(|l| l["ood"] == true).count();
    let summary = format!(
        "gradgate: {} frames: {} in, {out} out, 0 skipped",
        lines.len(),
        lines.len() - out
    );
    assert!(stderr(&output).contains(&summary), "{}", stderr(&output));
}

#[test]
fn official_scale_multiplies_by_class_count() {
    let image = "tests/data/id/espresso-cup.jpg";
    let paper = &json_lines(&gradgate(&["run", "--scorer", "gradnorm", image]))[0];
    let official = &json_lines(&gradgate(&[
        "run",
        "--scorer",
        "gradnorm",
        "--gradnorm-scale",
        "official",
        image,
    ]))[0];
    let ratio = official["score"].as_f64().unwrap() / paper["score"].as_f64().unwrap();
    assert!((ratio - 1000.0).abs() < 1e-3, "score ratio {ratio}");
    let threshold_ratio =
        official["threshold"].as_f64().unwrap() / paper["threshold"].as_f64().unwrap();
    assert!(
        (threshold_ratio - 1000.0).abs() < 1e-3,
        "threshold ratio {threshold_ratio}"
    );
}

#[test]
fn default_scorer_is_the_recommended_one() {
    let output = gradgate(&["run", "tests/data/id/espresso-cup.jpg"]);
    assert_eq!(json_lines(&output)[0]["scorer"], "gradnorm-logits");
}

#[test]
fn explicit_threshold_overrides_calibration() {
    let output = gradgate(&[
        "run",
        "--threshold",
        "1e9",
        "tests/data/id/espresso-cup.jpg",
    ]);
    let line = &json_lines(&output)[0];
    assert_eq!(line["threshold"], 1e9);
    assert_eq!(line["ood"], true);
}

/// Returns a JPEG whose start-of-frame header claims 60000 × 60000 pixels.
fn jpeg_with_huge_header() -> Vec<u8> {
    let mut bytes = std::fs::read(repo("tests/data/id/espresso-cup.jpg")).unwrap();
    let sof = bytes
        .windows(2)
        .position(|w| w[0] == 0xFF && (w[1] == 0xC0 || w[1] == 0xC2))
        .unwrap();
    // Marker (2), length (2), precision (1), then height and width, big-endian.
    bytes[sof + 5..sof + 9].copy_from_slice(&[0xEA, 0x60, 0xEA, 0x60]);
    bytes
}

/// Returns a PNG whose header claims 100000 × 100000 pixels, with a valid header checksum.
fn png_with_huge_header() -> Vec<u8> {
    let mut bytes = std::fs::read(repo("tests/data/id/airliner-cutout.png")).unwrap();
    // Signature (8), chunk length (4), "IHDR" (4), then width and height.
    bytes[16..20].copy_from_slice(&100_000u32.to_be_bytes());
    bytes[20..24].copy_from_slice(&100_000u32.to_be_bytes());
    let crc = crc32fast::hash(&bytes[12..29]);
    bytes[29..33].copy_from_slice(&crc.to_be_bytes());
    bytes
}

#[test]
fn bad_frames_are_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let jpeg = std::fs::read(repo("tests/data/id/espresso-cup.jpg")).unwrap();
    let png = std::fs::read(repo("tests/data/id/airliner-cutout.png")).unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("a-empty.jpg", vec![], "file is empty (0 bytes)"),
        (
            "b-text.jpg",
            b"not an image\n".to_vec(),
            "unsupported image format",
        ),
        (
            "c-truncated.jpg",
            jpeg[..jpeg.len() / 2].to_vec(),
            "truncated JPEG",
        ),
        (
            "d-truncated.png",
            png[..png.len() / 2].to_vec(),
            "invalid or truncated image data",
        ),
        (
            "e-huge.jpg",
            jpeg_with_huge_header(),
            "image header declares 60000×60000 px",
        ),
        (
            "f-huge.png",
            png_with_huge_header(),
            "image header declares 100000×100000 px",
        ),
        (
            "g-gif.gif",
            b"GIF89a\x01\x00\x01\x00\x00\x00\x00;".to_vec(),
            "unsupported image format",
        ),
    ];
    let mut args = vec!["run".to_string()];
    for (name, bytes, _) in &cases {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        args.push(path.to_string_lossy().into_owned());
    }
    args.push(
        copy_into(dir.path(), "tests/data/id/espresso-cup.jpg", "z-good.jpg")
            .to_string_lossy()
            .into_owned(),
    );
    let output = gradgate(&args.iter().map(String::as_str).collect::<Vec<_>>());

    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let lines = json_lines(&output);
    assert_eq!(lines.len(), cases.len() + 1);
    for ((name, _, message), line) in cases.iter().zip(&lines) {
        assert!(line["source"].as_str().unwrap().ends_with(name), "{line}");
        let error = line["error"].as_str().unwrap_or_default();
        assert!(error.contains(message), "{name}: {error}");
        assert!(
            stderr(&output).contains(&format!("({}): {error}", line["source"].as_str().unwrap())),
            "{name} not logged"
        );
    }
    assert!(
        lines[cases.len()]["score"].is_number(),
        "the good frame after the bad ones was not scored"
    );
    assert!(
        stderr(&output).contains("8 frames: "),
        "{}",
        stderr(&output)
    );
    assert!(
        stderr(&output).contains(", 7 skipped"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn file_over_size_limit_is_skipped() {
    let output = gradgate(&[
        "run",
        "--max-file-bytes",
        "1000",
        "tests/data/id/espresso-cup.jpg",
    ]);
    assert_eq!(output.status.code(), Some(1));
    let error = json_lines(&output)[0]["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        error.ends_with("above the limit of 1000; raise --max-file-bytes"),
        "{error}"
    );
}

#[test]
fn missing_source_is_a_fatal_error() {
    let output = gradgate(&["run", "no/such/folder"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("source 'no/such/folder' not found"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn glob_matching_nothing_is_a_fatal_error() {
    let output = gradgate(&["run", "tests/data/id/*.tiff"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("contains no image files"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn glob_selects_matching_files() {
    let output = gradgate(&["run", "tests/data/ood/texture/*.jpg"]);
    let count = std::fs::read_dir(repo("tests/data/ood/texture"))
        .unwrap()
        .count();
    assert_eq!(json_lines(&output).len(), count);
}

#[test]
fn non_onnx_model_is_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("broken.onnx");
    std::fs::write(&model, "not a model").unwrap();
    let output = gradgate(&["run", "--model", model.to_str().unwrap(), "tests/data/id"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("broken.onnx is not an ONNX model"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn model_without_calibration_asks_for_one() {
    let dir = tempfile::tempdir().unwrap();
    let model = copy_into(
        dir.path(),
        "models/efficientnet-lite0-fp32.onnx",
        "copy.onnx",
    );
    let output = gradgate(&["run", "--model", model.to_str().unwrap(), "tests/data/id"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("run 'gradgate calibrate DIR'"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn calibration_of_another_model_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    // The int8 model's calibration, with the default (fp32) model.
    let other = repo("models/efficientnet-lite0-int8.calibration.json");
    let output = gradgate(&[
        "run",
        "--calibration",
        other.to_str().unwrap(),
        "tests/data/id",
    ]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("was made for a model with SHA-256"),
        "{}",
        stderr(&output)
    );
    drop(dir);
}

#[test]
fn unknown_scorer_is_a_usage_error() {
    let output = gradgate(&["run", "--scorer", "odin", "tests/data/id"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("unknown scorer 'odin'"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn calibrate_writes_thresholds_that_pass_95_percent() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("calibration.json");
    let output = gradgate(&[
        "calibrate",
        "--model",
        "models/efficientnet-lite0-fp32.onnx",
        "--out",
        out.to_str().unwrap(),
        "models/calibration",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let calibration: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let threshold = calibration["scorers"]["gradnorm"]["threshold"]
        .as_f64()
        .unwrap();

    // Scoring the same images with that threshold passes at least 95% of them.
    let run = gradgate(&[
        "run",
        "--model",
        "models/efficientnet-lite0-fp32.onnx",
        "--scorer",
        "gradnorm",
        "--threshold",
        &threshold.to_string(),
        "models/calibration",
    ]);
    let lines = json_lines(&run);
    let passed = lines.iter().filter(|l| l["ood"] == false).count();
    assert!(
        passed as f64 >= 0.95 * lines.len() as f64,
        "{passed} of {} passed",
        lines.len()
    );
}
