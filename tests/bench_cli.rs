//! `gradgate bench` end to end: one JSON object per model and thread count with every stage,
//! per-node profiles, and clear errors on bad input. Checks structure and consistency, never
//! speed: the speed targets live in docs/benchmarks.md.

mod common;

use common::{json_lines, repo, stderr};
use serde_json::Value;
use std::process::{Command, Output};

fn gradgate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gradgate"))
        .arg("bench")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("GRADGATE_MODEL")
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

const FP32: &str = "models/efficientnet-lite0-fp32.onnx";
const INT8: &str = "models/efficientnet-lite0-int8.onnx";

/// Runs `gradgate bench --frames 1 --threads 1` with `args`.
fn one_frame(args: &[&str]) -> Output {
    gradgate(&[&["--frames", "1", "--threads", "1"], args].concat())
}

fn number(value: &Value, key: &str) -> f64 {
    value[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} missing in {value}"))
}

#[test]
fn json_lists_each_model_and_thread_count() {
    let output = gradgate(&[
        "--format",
        "json",
        "--frames",
        "2",
        "--threads",
        "1,2",
        "--model",
        FP32,
        "--model",
        INT8,
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let keys: Vec<(String, u64)> = json_lines(&output)
        .iter()
        .map(|r| {
            let model = r["model"]
                .as_str()
                .unwrap()
                .rsplit('/')
                .next()
                .unwrap()
                .to_string();
            (model, r["threads"].as_u64().unwrap())
        })
        .collect();
    let fp32 = "efficientnet-lite0-fp32.onnx".to_string();
    let int8 = "efficientnet-lite0-int8.onnx".to_string();
    assert_eq!(
        keys,
        [(fp32.clone(), 1), (fp32, 2), (int8.clone(), 1), (int8, 2)]
    );
}

#[test]
fn stages_add_up_to_the_frame() {
    let output = gradgate(&[
        "--format",
        "json",
        "--frames",
        "3",
        "--threads",
        "1",
        "--model",
        FP32,
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let r = &json_lines(&output)[0];

    // Medians of the stages need not add up to the median frame exactly, but the backbone
    // is most of it and no stage exceeds it.
    let frame = number(r, "frame_median_ms");
    for stage in [
        "decode_ms",
        "preprocess_ms",
        "backbone_ms",
        "head_ms",
        "score_gate_ms",
    ] {
        let t = number(r, stage);
        assert!(t > 0.0, "{stage} = {t} ms");
        assert!(t <= frame, "{stage} = {t} ms, frame {frame} ms");
    }
    assert!(number(r, "backbone_ms") > 0.5 * frame, "{r}");

    assert!(number(r, "frame_p90_ms") >= frame, "{r}");
    // Start-up includes the first frame, so it exceeds one frame.
    assert!(number(r, "start_to_first_frame_ms") > frame, "{r}");
    assert!(number(r, "peak_rss_mib") > 1.0, "{r}");
    assert!(number(r, "gradnorm_us") > 0.0, "{r}");
}

#[test]
fn int8_is_fused_unless_asked_not_to() {
    let fused = one_frame(&["--format", "json", "--model", INT8]);
    assert!(fused.status.success(), "{}", stderr(&fused));
    assert_eq!(json_lines(&fused)[0]["qdq_fused"], true);

    let plain = one_frame(&["--format", "json", "--no-qdq-fusion", "--model", INT8]);
    assert!(plain.status.success(), "{}", stderr(&plain));
    assert_eq!(json_lines(&plain)[0]["qdq_fused"], false);
}

#[test]
fn nodes_lists_the_costliest_operators() {
    let output = one_frame(&["--format", "json", "--nodes", "3", "--model", INT8]);
    assert!(output.status.success(), "{}", stderr(&output));
    let r = &json_lines(&output)[0];
    let ops = r["ops"].as_array().unwrap();
    assert_eq!(ops.len(), 3, "{r}");

    // The fused graph has no QuantizeLinear left among its operators.
    let op_names: Vec<&str> = ops.iter().map(|op| op[0].as_str().unwrap()).collect();
    assert!(
        !op_names.iter().any(|op| op.contains("QuantizeLinear")),
        "{op_names:?}"
    );
    let times: Vec<f64> = ops.iter().map(|op| op[2].as_f64().unwrap()).collect();
    assert!(
        times.windows(2).all(|w| w[0] >= w[1]),
        "not sorted: {times:?}"
    );
    assert_eq!(r["top_nodes"].as_array().unwrap().len(), 3, "{r}");
}

#[test]
fn text_table_names_each_model() {
    let output = one_frame(&[]);
    assert!(output.status.success(), "{}", stderr(&output));
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(
        text.contains("| efficientnet-lite0-fp32.onnx | 1 |"),
        "{text}"
    );
    assert!(
        text.contains("| efficientnet-lite0-int8.onnx | 1 |"),
        "{text}"
    );
}

#[test]
fn image_argument_is_timed() {
    let image = repo("tests/data/ood/icon")
        .read_dir()
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let output = one_frame(&["--format", "json", "--model", FP32, image.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(json_lines(&output).len(), 1);
}

#[test]
fn missing_model_is_named() {
    let output = gradgate(&["--model", "no/such/model.onnx"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("no/such/model.onnx"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn unreadable_image_is_named() {
    let output = gradgate(&["--model", FP32, "no/such/image.jpg"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("no/such/image.jpg"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn corrupt_image_fails_with_the_decoder_error() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("broken.jpg");
    std::fs::write(&image, b"\xff\xd8\xff\xe0 not a jpeg").unwrap();
    let output = one_frame(&["--model", FP32, image.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("broken.jpg"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn zero_threads_is_rejected() {
    let output = gradgate(&["--threads", "0"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("'0'"), "{}", stderr(&output));
}

#[test]
fn verbose_child_logs_do_not_block() {
    // At debug level tract logs every optimization pass, far more than a pipe buffer holds.
    let output = Command::new(env!("CARGO_BIN_EXE_gradgate"))
        .args([
            "bench",
            "--format",
            "json",
            "--frames",
            "1",
            "--threads",
            "1",
            "--model",
            FP32,
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("RUST_LOG", "debug")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        output.stderr.len() > 65536,
        "only {} bytes of log",
        output.stderr.len()
    );
    assert_eq!(json_lines(&output).len(), 1);
}

#[test]
fn failed_model_keeps_the_other_results() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.onnx");
    std::fs::write(&garbage, b"not a model").unwrap();
    let output = one_frame(&["--model", FP32, "--model", garbage.to_str().unwrap()]);

    // Exit 1: some runs failed, the others are reported.
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let text = String::from_utf8(output.stdout.clone()).unwrap();
    assert!(
        text.contains("| efficientnet-lite0-fp32.onnx | 1 |"),
        "{text}"
    );
    assert!(
        stderr(&output).contains("garbage.onnx"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn oversized_image_suggests_the_bench_limits() {
    let image = "tests/data/id/espresso-cup.jpg";
    let output = one_frame(&["--max-side-px", "100", "--model", FP32, image]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("--max-side-px"),
        "{}",
        stderr(&output)
    );
}
