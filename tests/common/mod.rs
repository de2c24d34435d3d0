//! Helpers shared by the integration tests: paths to the bundled model and data, fixture
//! loading.
#![allow(dead_code)]

pub mod onnx;

use gradgate::tensor::InputTensor;
use gradgate::Pipeline;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Output;

/// Returns a path relative to the repository root.
pub fn repo(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

pub fn fp32_model() -> PathBuf {
    repo("models/efficientnet-lite0-fp32.onnx")
}

pub fn int8_model() -> PathBuf {
    repo("models/efficientnet-lite0-int8.onnx")
}

pub fn load_json(relative: &str) -> Value {
    let text = std::fs::read_to_string(repo(relative)).unwrap();
    serde_json::from_str(&text).unwrap()
}

pub fn floats(value: &Value) -> Vec<f64> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect()
}

/// `|actual − expected| / |expected|`, or the absolute difference when `expected` is 0.
pub fn relative_error(actual: f64, expected: f64) -> f64 {
    let diff = (actual - expected).abs();
    if expected == 0.0 {
        diff
    } else {
        diff / expected.abs()
    }
}

/// Largest absolute difference, divided by the largest absolute expected value.
pub fn max_relative_to_peak(actual: &[f32], expected: &[f64]) -> f64 {
    assert_eq!(actual.len(), expected.len());
    let peak = expected.iter().fold(0f64, |m, v| m.max(v.abs()));
    let diff = actual
        .iter()
        .zip(expected)
        .fold(0f64, |m, (a, e)| m.max((f64::from(*a) - e).abs()));
    diff / peak
}

/// Decodes an image file to 8-bit RGB pixels, row-major.
pub fn rgb8(path: &Path) -> (u32, u32, Vec<u8>) {
    let image = image::open(path).unwrap().to_rgb8();
    (image.width(), image.height(), image.into_raw())
}

/// Loads a stored 224 × 224 crop into the pipeline's input and runs the model.
pub fn infer_crop(pipeline: &mut Pipeline, crop: &Path) {
    let (_, _, pixels) = rgb8(crop);
    let spec = pipeline.model().info().preprocess;
    let input: &mut InputTensor = pipeline.input_mut();
    input.fill_from_rgb8(&pixels, &spec);
    pipeline.infer().unwrap();
}

/// Parses each stdout line of a finished command as JSON.
pub fn json_lines(output: &Output) -> Vec<Value> {
    String::from_utf8(output.stdout.clone())
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// Returns the stderr of a finished command as text.
pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}
