//! Loading models: finding the linear head by inspecting the graph, and rejecting files that
//! gradgate cannot use, with an error naming the file and what was found.

mod common;

use common::onnx::*;
use gradgate::frame::FrameLimits;
use gradgate::{FrameError, Gate, Model, ModelError, Pipeline, Scorer, ScorerKind};
use std::path::PathBuf;

fn write(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// W (3 × 3, row-major, one row per class) and b shared by the valid test models.
const W: [f32; 9] = [1.0, 0.0, 0.0, 0.0, 2.0, 0.0, 0.5, 0.5, -1.0];
const B: [f32; 3] = [0.0, 1.0, -1.0];

fn gemm_model() -> Vec<u8> {
    let mut nodes = pooled_features();
    nodes.push(with_int(
        node("Gemm", &["features", "W", "b"], &["logits"]),
        "transB",
        1,
    ));
    model(
        nodes,
        vec![floats("W", &[3, 3], &W), floats("b", &[3], &B)],
        &[("logits", &[1, 3])],
        &["a", "b", "c"],
    )
}

/// Runs a model on an input whose channels are constant 1, 2 and 3, so the pooled
/// features are [1, 2, 3].
fn run_on_constant_channels(path: &std::path::Path) -> Result<Vec<f32>, FrameError> {
    let model = Model::load(path).unwrap();
    let mut pipeline = Pipeline::new(
        model,
        Scorer::new(ScorerKind::MaxLogit),
        Gate::new(0.0),
        FrameLimits::default(),
    );
    let plane = SIDE * SIDE;
    for (i, value) in pipeline.input_mut().as_mut_slice().iter_mut().enumerate() {
        *value = (i / plane + 1) as f32;
    }
    pipeline.infer()?;
    Ok(pipeline.activations().logits().to_vec())
}

#[test]
fn gemm_head_is_found_and_applied() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "gemm.onnx", &gemm_model());
    // W·[1, 2, 3] + b = [1, 4 + 1, 0.5 + 1 − 3 − 1].
    assert_eq!(
        run_on_constant_channels(&path).unwrap(),
        vec![1.0, 5.0, -2.5]
    );
}

#[test]
fn matmul_add_head_is_transposed_correctly() {
    let dir = tempfile::tempdir().unwrap();
    // MatMul takes B as [D, C]: the transpose of W.
    let w_t: Vec<f32> = (0..9).map(|i| W[(i % 3) * 3 + i / 3]).collect();
    let mut nodes = pooled_features();
    nodes.push(node("MatMul", &["features", "Wt"], &["scores"]));
    nodes.push(node("Add", &["scores", "b"], &["logits"]));
    let bytes = model(
        nodes,
        vec![floats("Wt", &[3, 3], &w_t), floats("b", &[3], &B)],
        &[("logits", &[1, 3])],
        &["a", "b", "c"],
    );
    let path = write(&dir, "matmul.onnx", &bytes);
    assert_eq!(
        run_on_constant_channels(&path).unwrap(),
        vec![1.0, 5.0, -2.5]
    );
}

#[test]
fn per_channel_quantized_head_is_dequantized() {
    let dir = tempfile::tempdir().unwrap();
    // W = (q − zero point) × scale per class row: row 0 → (4 − 0) × 0.25 = 1 …
    let q: [i8; 9] = [4, 0, 0, 1, 5, 1, 2, 2, -1];
    let scale = [0.25f32, 0.5, 0.5];
    let zero_point: [i8; 3] = [0, 1, 1];
    let mut nodes = pooled_features();
    nodes.push(with_int(
        node("DequantizeLinear", &["Wq", "scale", "zp"], &["W"]),
        "axis",
        0,
    ));
    nodes.push(with_int(
        node("Gemm", &["features", "W", "b"], &["logits"]),
        "transB",
        1,
    ));
    let initializers = vec![
        int8s("Wq", &[3, 3], &q),
        floats("scale", &[3], &scale),
        int8s("zp", &[3], &zero_point),
        floats("b", &[3], &B),
    ];
    let path = write(
        &dir,
        "qdq.onnx",
        &model(
            nodes,
            initializers,
            &[("logits", &[1, 3])],
            &["a", "b", "c"],
        ),
    );
    assert_eq!(
        run_on_constant_channels(&path).unwrap(),
        vec![1.0, 5.0, -2.5]
    );
}

#[test]
fn model_without_linear_head_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = pooled_features();
    nodes.push(node("Softmax", &["features"], &["probabilities"]));
    let path = write(
        &dir,
        "softmax.onnx",
        &model(
            nodes,
            vec![],
            &[("probabilities", &[1, 3])],
            &["a", "b", "c"],
        ),
    );
    let err = Model::load(&path).err().unwrap();
    assert!(matches!(err, ModelError::NoLinearHead { .. }), "{err}");
    let message = err.to_string();
    assert!(message.contains("softmax.onnx"), "{message}");
    assert!(
        message.contains("'probabilities' from Softmax"),
        "{message}"
    );
}

#[test]
fn head_without_pooling_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = vec![
        with_int(node("Flatten", &["input"], &["flat"]), "axis", 1),
        with_int(node("Gemm", &["flat", "W", "b"], &["logits"]), "transB", 1),
    ];
    let initializers = vec![floats("W", &[3, 48], &[0.0; 144]), floats("b", &[3], &B)];
    let path = write(
        &dir,
        "flat.onnx",
        &model(
            nodes,
            initializers,
            &[("logits", &[1, 3])],
            &["a", "b", "c"],
        ),
    );
    let err = Model::load(&path).err().unwrap();
    assert!(matches!(err, ModelError::HeadNotPooled { .. }), "{err}");
}

#[test]
fn label_count_mismatch_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = pooled_features();
    nodes.push(with_int(
        node("Gemm", &["features", "W", "b"], &["logits"]),
        "transB",
        1,
    ));
    let bytes = model(
        nodes,
        vec![floats("W", &[3, 3], &W), floats("b", &[3], &B)],
        &[("logits", &[1, 3])],
        &["a", "b"],
    );
    let path = write(&dir, "labels.onnx", &bytes);
    let err = Model::load(&path).err().unwrap();
    assert_eq!(
        err.to_string(),
        format!(
            "model {} names 2 classes in its metadata but its head has 3 outputs",
            path.display()
        )
    );
}

#[test]
fn text_file_is_not_an_onnx_model() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "notes.onnx", b"this is not a model\n");
    let err = Model::load(&path).err().unwrap();
    assert!(matches!(err, ModelError::NotOnnx { .. }), "{err}");
}

#[test]
fn empty_file_is_not_an_onnx_model() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "empty.onnx", b"");
    let err = Model::load(&path).err().unwrap();
    assert_eq!(
        err.to_string(),
        format!(
            "{} is not an ONNX model: it contains no graph nodes",
            path.display()
        )
    );
}

#[test]
fn missing_model_file_names_the_path() {
    let err = Model::load("/nonexistent/gradgate/model.onnx".as_ref())
        .err()
        .unwrap();
    assert!(
        err.to_string()
            .starts_with("cannot read model /nonexistent/gradgate/model.onnx"),
        "{err}"
    );
}

#[test]
fn nan_features_are_reported_not_scored() {
    let dir = tempfile::tempdir().unwrap();
    // Log of the negative channel values gives NaN features.
    let mut nodes = vec![node("Log", &["input"], &["logged"])];
    nodes.extend(pooled_features());
    nodes[1].input[0] = "logged".into();
    nodes.push(with_int(
        node("Gemm", &["features", "W", "b"], &["logits"]),
        "transB",
        1,
    ));
    let bytes = model(
        nodes,
        vec![floats("W", &[3, 3], &W), floats("b", &[3], &B)],
        &[("logits", &[1, 3])],
        &["a", "b", "c"],
    );
    let path = write(&dir, "log.onnx", &bytes);

    let model = Model::load(&path).unwrap();
    let mut pipeline = Pipeline::new(
        model,
        Scorer::new(ScorerKind::GradNorm),
        Gate::new(0.0),
        FrameLimits::default(),
    );
    pipeline.input_mut().as_mut_slice().fill(-1.0);

    let err = pipeline.infer().unwrap_err();
    assert_eq!(
        err.to_string(),
        "model produced a non-finite value in features at index 0: NaN"
    );
}
