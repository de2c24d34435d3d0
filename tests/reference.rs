//! The bundled model against reference values computed once with PyTorch autograd and
//! onnxruntime (tests/fixtures/make_reference.py), on real images from tests/data.

mod common;

use common::*;
use gradgate::frame::FrameLimits;
use gradgate::score::{energy, max_logit, max_softmax};
use gradgate::tensor::InputTensor;
use gradgate::{Gate, GradNormScale, Model, Pipeline, Scorer, ScorerKind};
use sha2::{Digest, Sha256};

/// Tolerance on GradNorm against autograd, relative, for the fp32 model.
const GRADNORM_RELATIVE: f64 = 1e-4;

fn pipeline(model: &std::path::Path, scale: GradNormScale) -> Pipeline {
    let scorer = Scorer {
        gradnorm_scale: scale,
        ..Scorer::new(ScorerKind::GradNorm)
    };
    Pipeline::new(
        Model::load(model).unwrap(),
        scorer,
        Gate::new(0.0),
        FrameLimits::default(),
    )
}

fn images() -> Vec<serde_json::Value> {
    load_json("tests/fixtures/reference.json")["images"]
        .as_array()
        .unwrap()
        .clone()
}

fn crop_path(image: &serde_json::Value) -> std::path::PathBuf {
    repo(&format!(
        "tests/fixtures/crops/{}.png",
        image["name"].as_str().unwrap()
    ))
}

#[test]
fn crops_match_their_recorded_hashes() {
    for image in images() {
        let (_, _, pixels) = rgb8(&crop_path(&image));
        let digest: String = Sha256::digest(&pixels)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            digest,
            image["crop_rgb_sha256"].as_str().unwrap(),
            "{}",
            image["name"]
        );
    }
}

#[test]
fn fixtures_cover_at_least_ten_images() {
    assert!(images().len() >= 10);
}

#[test]
fn gradnorm_paper_scale_matches_autograd_on_fp32_model() {
    let mut pipeline = pipeline(&fp32_model(), GradNormScale::Paper);
    for image in images() {
        infer_crop(&mut pipeline, &crop_path(&image));
        let score = f64::from(pipeline.decide().verdict.score);
        let expected = image["gradnorm_paper"].as_f64().unwrap();
        let error = relative_error(score, expected);
        assert!(
            error < GRADNORM_RELATIVE,
            "{}: {score} vs {expected} (relative {error:e})",
            image["name"]
        );
    }
}

#[test]
fn gradnorm_official_scale_matches_autograd_on_fp32_model() {
    let mut pipeline = pipeline(&fp32_model(), GradNormScale::Official);
    for image in images() {
        infer_crop(&mut pipeline, &crop_path(&image));
        let score = f64::from(pipeline.decide().verdict.score);
        let expected = image["gradnorm_official"].as_f64().unwrap();
        let error = relative_error(score, expected);
        assert!(
            error < GRADNORM_RELATIVE,
            "{}: {score} vs {expected} (relative {error:e})",
            image["name"]
        );
    }
}

#[test]
fn softmax_scores_match_reference_on_fp32_model() {
    let mut pipeline = pipeline(&fp32_model(), GradNormScale::Paper);
    for image in images() {
        infer_crop(&mut pipeline, &crop_path(&image));
        let logits = pipeline.activations().logits();
        let name = &image["name"];
        let msp = relative_error(
            f64::from(max_softmax(logits, 1.0)),
            image["msp"].as_f64().unwrap(),
        );
        assert!(msp < 1e-4, "{name}: msp relative error {msp:e}");
        let maxlogit = relative_error(
            f64::from(max_logit(logits)),
            image["maxlogit"].as_f64().unwrap(),
        );
        assert!(
            maxlogit < 1e-4,
            "{name}: max-logit relative error {maxlogit:e}"
        );
        let energy = relative_error(
            f64::from(energy(logits, 1.0)),
            image["energy"].as_f64().unwrap(),
        );
        assert!(energy < 1e-4, "{name}: energy relative error {energy:e}");
    }
}

#[test]
fn fp32_features_and_logits_match_onnxruntime() {
    let mut pipeline = pipeline(&fp32_model(), GradNormScale::Paper);
    for image in images() {
        infer_crop(&mut pipeline, &crop_path(&image));
        let act = pipeline.activations();
        let name = &image["name"];
        let features =
            max_relative_to_peak(act.features(), &floats(&image["fp32_ort"]["features"]));
        assert!(
            features < 1e-5,
            "{name}: features differ by {features:e} of their peak"
        );
        let logits = max_relative_to_peak(act.logits(), &floats(&image["fp32_ort"]["logits"]));
        assert!(
            logits < 1e-5,
            "{name}: logits differ by {logits:e} of their peak"
        );
    }
}

/// tract and onnxruntime round quantized activations independently, so a value close to a
/// rounding boundary can land one quantization step apart and the difference propagates.
const INT8_LOGITS_RELATIVE_TO_PEAK: f64 = 0.05;

#[test]
fn int8_logits_match_onnxruntime_within_quantization_tolerance() {
    let mut pipeline = pipeline(&int8_model(), GradNormScale::Paper);
    let mut worst = 0f64;
    for image in images() {
        infer_crop(&mut pipeline, &crop_path(&image));
        let logits = max_relative_to_peak(
            pipeline.activations().logits(),
            &floats(&image["int8_ort"]["logits"]),
        );
        worst = worst.max(logits);
        assert!(
            logits < INT8_LOGITS_RELATIVE_TO_PEAK,
            "{}: logits differ by {logits:e} of their peak",
            image["name"]
        );
    }
    eprintln!("int8 logits, worst difference relative to peak: {worst:e}");
}

#[test]
fn int8_top1_matches_onnxruntime() {
    let mut pipeline = pipeline(&int8_model(), GradNormScale::Paper);
    for image in images() {
        infer_crop(&mut pipeline, &crop_path(&image));
        let expected = floats(&image["int8_ort"]["logits"]);
        let expected_top1 = (0..expected.len())
            .max_by(|&a, &b| expected[a].total_cmp(&expected[b]))
            .unwrap();
        assert_eq!(pipeline.decide().top1, expected_top1, "{}", image["name"]);
    }
}

/// Largest difference, in 8-bit levels, between gradgate's input tensor and Pillow's crop for
/// JPEG sources. gradgate decodes JPEG with zune-jpeg and Pillow with libjpeg-turbo, and their
/// IDCT and chroma upsampling round differently (3 levels at most on the bundled images).
/// PNG and WebP decode identically, so there the tensors must be equal.
const JPEG_DECODER_LEVELS: u32 = 3;

#[test]
fn preprocessing_reproduces_reference_crops() {
    let model = Model::load(&fp32_model()).unwrap();
    let spec = model.info().preprocess;
    let mut pipeline = Pipeline::new(
        model,
        Scorer::new(ScorerKind::GradNorm),
        Gate::new(0.0),
        FrameLimits::default(),
    );
    let mut expected = InputTensor::new(spec.size_px);
    for image in images() {
        let source = image["source"].as_str().unwrap();
        pipeline.load_file(&repo(source)).unwrap();
        pipeline.preprocess();
        let (_, _, pixels) = rgb8(&crop_path(&image));
        expected.fill_from_rgb8(&pixels, &spec);

        // Difference in 8-bit levels: tensor values are (level − mean) / std.
        let levels = pipeline
            .input()
            .as_slice()
            .iter()
            .zip(expected.as_slice())
            .fold(0f32, |m, (a, e)| m.max((a - e).abs() * spec.std[0]))
            .round() as u32;
        let allowed = if source.ends_with(".jpg") {
            JPEG_DECODER_LEVELS
        } else {
            0
        };
        assert!(
            levels <= allowed,
            "{source}: preprocessing differs from Pillow by {levels} levels"
        );
    }
}

/// The logit-gradient variant is GradNorm divided by ‖h‖₁, both taken from the autograd
/// reference.
#[test]
fn gradnorm_logits_matches_autograd_without_feature_norm() {
    let model = Model::load(&fp32_model()).unwrap();
    let scorer = Scorer::new(ScorerKind::GradNormLogits);
    let mut pipeline = Pipeline::new(model, scorer, Gate::new(0.0), FrameLimits::default());
    for image in images() {
        infer_crop(&mut pipeline, &crop_path(&image));
        let score = f64::from(pipeline.decide().verdict.score);
        let expected =
            image["gradnorm_paper"].as_f64().unwrap() / image["features_l1"].as_f64().unwrap();
        let error = relative_error(score, expected);
        assert!(
            error < GRADNORM_RELATIVE,
            "{}: {score} vs {expected} (relative {error:e})",
            image["name"]
        );
    }
}
