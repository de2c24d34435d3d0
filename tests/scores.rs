//! Scorers on synthetic heads against float64 PyTorch autograd values
//! (tests/fixtures/synthetic.json, made by tests/fixtures/make_reference.py).

mod common;

use common::*;
use gradgate::score::{energy, gradnorm, max_logit, max_softmax};
use gradgate::{Activations, GradNormScale, Head, Scorer, ScorerKind};
use serde_json::Value;
use sha2::{Digest, Sha256};

fn cases() -> Vec<Value> {
    load_json("tests/fixtures/synthetic.json")["cases"]
        .as_array()
        .unwrap()
        .clone()
}

/// Rebuilds W for the case that stores a formula instead of values, and checks its hash.
fn imagenet_size_weights(case: &Value) -> Vec<f32> {
    let (classes, features) = (1000usize, 1280usize);
    let mut weights = Vec::with_capacity(classes * features);
    for c in 0..classes {
        for d in 0..features {
            weights.push((((c * features + d) as f64).sin() * 0.05) as f32);
        }
    }
    let bytes: Vec<u8> = weights.iter().flat_map(|w| w.to_le_bytes()).collect();
    let digest: String = Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        digest,
        case["W_f32_le_sha256"].as_str().unwrap(),
        "rebuilt W differs from the fixture's"
    );
    weights
}

/// Builds the case's head and activations, with the logits computed by gradgate.
fn activations(case: &Value) -> (Head, Activations) {
    let weights: Vec<f32> = match case.get("W") {
        Some(rows) => rows
            .as_array()
            .unwrap()
            .iter()
            .flat_map(floats)
            .map(|w| w as f32)
            .collect(),
        None => imagenet_size_weights(case),
    };
    let bias: Vec<f32> = floats(&case["b"]).into_iter().map(|b| b as f32).collect();
    let h: Vec<f32> = floats(&case["h"]).into_iter().map(|h| h as f32).collect();
    let head = Head::from_row_major(&weights, &bias, h.len()).unwrap();
    let mut act = Activations::new(&head);
    act.features_mut().copy_from_slice(&h);
    act.finish(&head).unwrap();
    (head, act)
}

/// Inputs are rounded to f32 before gradgate computes in f32 (logits) and f64 (sums), while
/// the reference ran in f64 throughout; 1e-5 relative covers that rounding.
const RELATIVE: f64 = 1e-5;

fn check(case: &Value, what: &str, actual: f32, key: &str) {
    let expected = case[key].as_f64().unwrap();
    // A score that is zero in exact arithmetic is rounding noise in the reference (3e-16 for
    // equal logits), so compare it absolutely.
    let error = if expected.abs() < 1e-9 {
        (f64::from(actual) - expected).abs()
    } else {
        relative_error(f64::from(actual), expected)
    };
    assert!(
        error < RELATIVE,
        "{} {what}: {actual} vs {expected} (error {error:e})",
        case["name"]
    );
}

#[test]
fn logits_match_reference() {
    for case in cases() {
        let (_, act) = activations(&case);
        let expected = floats(&case["logits"]);
        let error = max_relative_to_peak(act.logits(), &expected);
        assert!(
            error < RELATIVE,
            "{}: logits differ by {error:e} of their peak",
            case["name"]
        );
    }
}

#[test]
fn gradnorm_matches_autograd_at_both_scales() {
    for case in cases() {
        let (_, act) = activations(&case);
        let t = case["temperature"].as_f64().unwrap() as f32;
        let paper = gradnorm(act.features_l1(), act.logits(), t, GradNormScale::Paper);
        let official = gradnorm(act.features_l1(), act.logits(), t, GradNormScale::Official);
        check(&case, "paper gradnorm", paper, "gradnorm_paper");
        check(&case, "official gradnorm", official, "gradnorm_official");
    }
}

#[test]
fn softmax_family_matches_reference() {
    for case in cases() {
        let (_, act) = activations(&case);
        let t = case["temperature"].as_f64().unwrap() as f32;
        check(&case, "msp", max_softmax(act.logits(), t), "msp");
        check(&case, "max-logit", max_logit(act.logits()), "maxlogit");
        check(&case, "energy", energy(act.logits(), t), "energy");
    }
}

#[test]
fn huge_logits_give_finite_scores() {
    let case = cases()
        .into_iter()
        .find(|c| c["name"] == "huge_logits")
        .unwrap();
    let (_, act) = activations(&case);
    for kind in ScorerKind::ALL {
        let score = Scorer::new(kind).score(&act);
        assert!(score.is_finite(), "{kind} gave {score}");
    }
}

#[test]
fn zero_features_give_zero_gradnorm() {
    let case = cases()
        .into_iter()
        .find(|c| c["name"] == "zero_features")
        .unwrap();
    let (_, act) = activations(&case);
    assert_eq!(Scorer::new(ScorerKind::GradNorm).score(&act), 0.0);
}

/// The official code scores one image per backward pass because a batch-mean loss yields
/// one score per batch. Scoring N frames must give N scores, each equal to its single-frame
/// score, whatever else is in the batch.
#[test]
fn batch_of_frames_scores_like_single_frames() {
    let cases: Vec<Value> = cases()
        .into_iter()
        .filter(|c| c["num_classes"] == 5 && c["temperature"] == 1.0)
        .collect();
    let batch: Vec<Activations> = cases.iter().map(|c| activations(c).1).collect();
    let scorer = Scorer::new(ScorerKind::GradNorm);
    let mut scores = vec![f32::NAN; batch.len()];
    scorer.score_batch(&batch, &mut scores);
    for (case, (act, score)) in cases.iter().zip(batch.iter().zip(&scores)) {
        assert_eq!(*score, scorer.score(act), "{}", case["name"]);
        check(case, "batched gradnorm", *score, "gradnorm_paper");
    }
}
