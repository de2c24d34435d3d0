//! The QDQ rewrite (src/model/qdq.rs) changes the time of the bundled int8 model, not its
//! output: features and logits with and without it are equal bit for bit on every bundled
//! image, and the rewrite really happened.

mod common;

use common::*;
use gradgate::frame::FrameLimits;
use gradgate::model::{FuseReport, LoadOptions};
use gradgate::{Gate, Model, Pipeline, Scorer, ScorerKind};
use std::path::PathBuf;

fn pipeline(fuse_qdq: bool) -> Pipeline {
    let options = LoadOptions {
        fuse_qdq,
        ..LoadOptions::default()
    };
    Pipeline::new(
        Model::load_opts(&int8_model(), &options).unwrap(),
        Scorer::new(ScorerKind::GradNorm),
        Gate::new(0.0),
        FrameLimits::default(),
    )
}

/// Lists every file under tests/data/id and tests/data/ood, in sorted order.
fn bundled_images() -> Vec<PathBuf> {
    let mut images = Vec::new();
    let mut folders = vec![repo("tests/data/id"), repo("tests/data/ood")];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                folders.push(path);
            } else {
                images.push(path);
            }
        }
    }
    images.sort();
    images
}

fn bits(values: &[f32]) -> Vec<u32> {
    values.iter().map(|v| v.to_bits()).collect()
}

#[test]
fn fused_int8_model_equals_unfused_bit_for_bit() {
    let mut fused = pipeline(true);
    let mut plain = pipeline(false);
    let images = bundled_images();
    assert!(images.len() >= 50, "only {} bundled images", images.len());
    for image in &images {
        fused.step(image).unwrap();
        plain.step(image).unwrap();
        let name = image.display();
        assert_eq!(
            bits(fused.activations().features()),
            bits(plain.activations().features()),
            "features of {name}"
        );
        assert_eq!(
            bits(fused.activations().logits()),
            bits(plain.activations().logits()),
            "logits of {name}"
        );
    }
}

#[test]
fn bundled_int8_model_is_rewritten() {
    let report = pipeline(true).model().info().qdq_fused;
    // 76 QuantizeLinear/DequantizeLinear pairs on activations; 17 zero pads, each between two
    // pairs with equal parameters (counted with `gradgate bench --nodes`).
    assert_eq!(
        report,
        Some(FuseReport {
            pairs: 76,
            after_pad: 17
        })
    );
}

#[test]
fn unfused_load_reports_no_rewrite() {
    assert_eq!(pipeline(false).model().info().qdq_fused, None);
}

#[test]
fn fp32_model_is_not_rewritten() {
    let model = Model::load_opts(&fp32_model(), &LoadOptions::default()).unwrap();
    assert_eq!(model.info().qdq_fused, None);
}
