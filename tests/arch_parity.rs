//! The bundled models' scores on this build against the scores an x86_64 build recorded.
//!
//! tract picks different matrix kernels per CPU (AVX2 or AVX-512 on x86_64, NEON on ARM), so
//! sums are taken in a different order and results may differ in the last bits. This test
//! bounds that difference on real images through the whole frame path (decode, preprocess,
//! backbone, head, every closed-form score). CI runs it natively and under qemu-user for
//! aarch64 and armv7, so an ARM build must score the bundled images as the x86_64 build does.
//!
//! The fixture tests/fixtures/x86_64-scores.json is written by an x86_64 release build:
//!
//! ```text
//! GRADGATE_WRITE_ARCH_FIXTURE=1 cargo test --release --test arch_parity -- --test-threads=1
//! ```

mod common;

use common::*;
use gradgate::frame::FrameLimits;
use gradgate::{Gate, Model, Pipeline, Scorer, ScorerKind};
use serde_json::{json, Value};
use std::path::Path;

const FIXTURE: &str = "tests/fixtures/x86_64-scores.json";

/// Largest relative difference of a score from the x86_64 value for the fp32 model.
/// NOTE: armv7 measured 9.2e-6 on the three images CI runs, close to this limit; more images
/// may exceed it there.
const FP32_RELATIVE: f64 = 1e-5;

/// Largest relative difference for the int8 QDQ model. tract runs it as float with a
/// quantize-dequantize pair around each layer, so a last-bit difference before a rounding
/// step moves an activation by a whole quantization step, which then propagates. Measured
/// under qemu-user on a cartoon (aarch64/armv7): logits up to 1.3%/1.7% apart, GradNorm
/// 1.0%/2.1%, and MSP 6.3%/7.8%, because a probability of 0.2 changes by the relative amount
/// its logit gap changes. The top-1 class must still agree.
const INT8_RELATIVE: f64 = 0.1;

/// Bundled images, in-distribution and every OOD kind, decoded from their files. The first
/// entries are the ones an emulated run keeps (see [`image_count`]): a photo, a near-blank
/// frame (where int8 and fp32 differ most) and a cartoon.
const IMAGES: [&str; 12] = [
    "tests/data/id/espresso-cup.jpg",
    "tests/data/ood/near-blank",
    "tests/data/ood/cartoon",
    "tests/data/id/goldfish-side.jpg",
    "tests/data/id/tabby-kitten.jpg",
    "tests/data/id/airliner-cutout.png",
    "tests/data/id/castle-neuschwanstein.jpg",
    "tests/data/id/sorrel-horse.jpg",
    "tests/data/ood/icon",
    "tests/data/ood/landscape",
    "tests/data/ood/painting",
    "tests/data/ood/texture",
];

/// Returns how many of [`IMAGES`] to score: all, or the first `GRADGATE_PARITY_IMAGES`.
/// Under qemu-user one frame takes about a minute, so CI keeps only a few there.
fn image_count() -> usize {
    match std::env::var("GRADGATE_PARITY_IMAGES") {
        Ok(value) => value
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=IMAGES.len()).contains(n))
            .unwrap_or_else(|| {
                panic!(
                    "GRADGATE_PARITY_IMAGES={value} is not a count from 1 to {}",
                    IMAGES.len()
                )
            }),
        Err(_) => IMAGES.len(),
    }
}

/// Resolves an entry of [`IMAGES`]: a file, or the first file of a folder in name order.
fn image_path(entry: &str) -> String {
    let path = repo(entry);
    if path.is_file() {
        return entry.to_string();
    }
    let mut names: Vec<String> = std::fs::read_dir(&path)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    format!("{entry}/{}", names[0])
}

/// Scores every image with every closed-form scorer, in [`ScorerKind::ALL`] order, and
/// returns `{ image: { "top1": class, "scores": { name: value } } }`.
fn score_images(model: &Path, count: usize) -> Value {
    let mut pipeline = Pipeline::new(
        Model::load(model).unwrap(),
        Scorer::new(ScorerKind::GradNorm),
        Gate::new(0.0),
        FrameLimits::default(),
    );
    let mut out = serde_json::Map::new();
    for entry in &IMAGES[..count] {
        let relative = image_path(entry);
        pipeline.step(&repo(&relative)).unwrap();
        let logits = pipeline.activations().logits();
        let top1 = (0..logits.len())
            .max_by(|&a, &b| logits[a].total_cmp(&logits[b]))
            .unwrap();
        let scores: serde_json::Map<String, Value> = ScorerKind::ALL
            .iter()
            .zip(pipeline.score_all())
            .map(|(kind, score)| (kind.name().to_string(), json!(score)))
            .collect();
        out.insert(relative, json!({ "top1": top1, "scores": scores }));
    }
    Value::Object(out)
}

/// Compares this build's scores for one model with the recorded ones.
fn check_model(model_key: &str, model: &Path, tolerance: f64) {
    let writing = std::env::var_os("GRADGATE_WRITE_ARCH_FIXTURE").is_some();
    let count = if writing { IMAGES.len() } else { image_count() };
    let actual = score_images(model, count);
    if writing {
        write_fixture(model_key, actual);
        return;
    }
    let expected = &load_json(FIXTURE)[model_key];
    let images = actual.as_object().unwrap();
    assert_eq!(images.len(), count, "{model_key}: image count");
    // Every difference is computed before any assert, so that the log shows the largest one
    // even when a limit is exceeded.
    let mut differences: Vec<(f64, String, f64, f64)> = Vec::new();
    for (image, now) in images {
        let recorded = &expected[image];
        assert!(
            recorded.is_object(),
            "{model_key} {image}: not in {FIXTURE}"
        );
        assert_eq!(
            now["top1"], recorded["top1"],
            "{model_key} {image}: top-1 class"
        );
        for (scorer, value) in recorded["scores"].as_object().unwrap() {
            let expected_score = value.as_f64().unwrap();
            let score = now["scores"][scorer].as_f64().unwrap();
            let error = relative_error(score, expected_score);
            differences.push((error, format!("{image} {scorer}"), score, expected_score));
        }
    }
    differences.sort_by(|a, b| b.0.total_cmp(&a.0));
    // Printed for the CI log, so the margin to the limit is visible per architecture.
    for (error, what, score, expected_score) in differences.iter().take(3) {
        println!(
            "{model_key} on {}, {count} images: relative difference {error:e} ({what}: {score} vs {expected_score})",
            std::env::consts::ARCH
        );
    }
    for (error, what, score, expected_score) in &differences {
        assert!(
            *error <= tolerance,
            "{model_key} {what}: {score} vs x86_64 {expected_score} \
             (relative {error:e}, limit {tolerance:e})"
        );
    }
}

/// Merges one model's scores into the fixture file.
fn write_fixture(model_key: &str, scores: Value) {
    assert_eq!(
        std::env::consts::ARCH,
        "x86_64",
        "the fixture records x86_64 scores"
    );
    let path = repo(FIXTURE);
    let mut fixture = std::fs::read(&path)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
        .unwrap_or_else(|| json!({}));
    fixture[model_key] = scores;
    let text = serde_json::to_string_pretty(&fixture).unwrap() + "\n";
    std::fs::write(&path, text).unwrap();
}

#[test]
fn fp32_scores_match_x86_64() {
    check_model("fp32", &fp32_model(), FP32_RELATIVE);
}

#[test]
fn int8_scores_match_x86_64() {
    check_model("int8", &int8_model(), INT8_RELATIVE);
}
