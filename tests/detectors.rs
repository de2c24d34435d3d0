//! Fitted detectors (gradgate::score::fitted) against float64 values computed from the papers'
//! definitions by tests/fixtures/make_detectors.py (tests/fixtures/detectors.json), plus
//! properties, error cases, the statistics file and a run on the bundled model.
//!
//! Tolerance: the fixture's inputs are exact `f32` values and its expected values are
//! `float64`. gradgate computes logits in `f32` (relative error about D·2⁻²⁴ of Σ|W·h|,
//! 1e-6 here), stores statistics as `f32` and returns `f32` scores. The largest relative
//! errors measured are 2.8e-6 for KL matching, whose small divergences lose digits to the
//! `f32` logits and templates, and 1.4e-6 for ViM, whose score `logsumexp(z) − α·r` is a
//! difference of larger terms. The other detectors stay below 3e-7. Scores must agree within
//! [`SCORE_RELATIVE`], more than 30 times the largest.

mod common;

use common::*;
use gradgate::score::fitted::{
    fit, DetectorStats, FitError, FitParams, FittedKind, FittedScorer, StatsFile, StatsFileError,
    MAX_KNN_BANK, STATS_FORMAT,
};
use gradgate::score::{energy, gradnorm};
use gradgate::{Activations, GradNormScale, Head};
use serde_json::Value;

/// Relative tolerance on scores against the float64 reference.
const SCORE_RELATIVE: f64 = 1e-4;
/// Relative tolerance on fitted statistics, which go through `f32` once.
const STATS_RELATIVE: f64 = 1e-5;

// Fixture access

fn fixture() -> Value {
    load_json("tests/fixtures/detectors.json")
}

fn rows(value: &Value) -> Vec<Vec<f32>> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|row| floats(row).into_iter().map(|v| v as f32).collect())
        .collect()
}

fn head(fixture: &Value) -> Head {
    let weights: Vec<f32> = rows(&fixture["weights"]).concat();
    let bias: Vec<f32> = floats(&fixture["bias"])
        .into_iter()
        .map(|v| v as f32)
        .collect();
    let dim = fixture["feature_dim"].as_u64().unwrap() as usize;
    Head::from_row_major(&weights, &bias, dim).unwrap()
}

fn fit_set(fixture: &Value, name: &str) -> Vec<Vec<f32>> {
    rows(&fixture["fit_sets"][name])
}

fn slices(features: &[Vec<f32>]) -> Vec<&[f32]> {
    features.iter().map(Vec::as_slice).collect()
}

fn activations(head: &Head, features: &[f32]) -> Activations {
    let mut act = Activations::new(head);
    act.features_mut().copy_from_slice(features);
    act.finish(head).unwrap();
    act
}

fn params(case: &Value) -> FitParams {
    let p = &case["params"];
    FitParams {
        temperature: p["temperature"].as_f64().unwrap() as f32,
        react_percentile: p["react_percentile"].as_f64().unwrap(),
        ash_percentile: p["ash_percentile"].as_f64().unwrap(),
        knn_k: p["knn_k"].as_u64().unwrap() as usize,
        vim_dim: p["vim_dim"].as_u64().map(|k| k as usize),
    }
}

fn cases(fixture: &Value) -> Vec<Value> {
    fixture["cases"].as_array().unwrap().clone()
}

/// Fits `kind` as the fixture case does.
fn fit_case(fixture: &Value, case: &Value, kind: FittedKind) -> DetectorStats {
    let features = fit_set(fixture, case["fit_set"].as_str().unwrap());
    fit(kind, &head(fixture), &slices(&features), &params(case)).unwrap()
}

/// Checks every case's scores of `kind` on the test features against the reference.
fn check_scores(kind: FittedKind) {
    let fixture = fixture();
    let head = head(&fixture);
    let tests = rows(&fixture["test_features"]);
    for case in cases(&fixture) {
        let mut scorer = FittedScorer::new(fit_case(&fixture, &case, kind), &head).unwrap();
        let expected = floats(&case["detectors"][kind.name()]["scores"]);
        assert_eq!(expected.len(), tests.len(), "fixture score count");
        for (sample, (features, &want)) in tests.iter().zip(&expected).enumerate() {
            let got = scorer.score(&activations(&head, features), &head);
            let error = relative_error(f64::from(got), want);
            assert!(
                error < SCORE_RELATIVE,
                "{kind} case {} sample {sample}: {got} vs {want} (relative {error:e})",
                case["name"]
            );
        }
    }
}

/// Largest absolute difference divided by the largest absolute expected value.
fn relative_to_peak(actual: &[f64], expected: &[f64]) -> f64 {
    assert_eq!(actual.len(), expected.len(), "value counts differ");
    let peak = expected.iter().fold(0f64, |m, v| m.max(v.abs()));
    let diff = actual
        .iter()
        .zip(expected)
        .fold(0f64, |m, (a, e)| m.max((a - e).abs()));
    diff / peak
}

fn widen(values: &[f32]) -> Vec<f64> {
    values.iter().map(|&v| f64::from(v)).collect()
}

fn indices(value: &Value) -> Vec<usize> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect()
}

// Scores against the reference

#[test]
fn react_scores_match_reference() {
    check_scores(FittedKind::React);
}

#[test]
fn gradnorm_react_scores_match_reference() {
    check_scores(FittedKind::GradNormReact);
}

#[test]
fn ash_p_scores_match_reference() {
    check_scores(FittedKind::AshP);
}

#[test]
fn ash_b_scores_match_reference() {
    check_scores(FittedKind::AshB);
}

#[test]
fn ash_s_scores_match_reference() {
    check_scores(FittedKind::AshS);
}

#[test]
fn scale_scores_match_reference() {
    check_scores(FittedKind::Scale);
}

#[test]
fn kl_matching_scores_match_reference() {
    check_scores(FittedKind::KlMatching);
}

#[test]
fn mahalanobis_scores_match_reference() {
    check_scores(FittedKind::Mahalanobis);
}

#[test]
fn vim_scores_match_reference() {
    check_scores(FittedKind::Vim);
}

#[test]
fn knn_scores_match_reference() {
    check_scores(FittedKind::Knn);
}

// Fitted statistics against the reference

#[test]
fn react_threshold_matches_reference() {
    let fixture = fixture();
    for case in cases(&fixture) {
        for kind in [FittedKind::React, FittedKind::GradNormReact] {
            let (DetectorStats::React(stats) | DetectorStats::GradNormReact(stats)) =
                fit_case(&fixture, &case, kind)
            else {
                panic!("{kind} fitted other statistics");
            };
            let want = case["detectors"][kind.name()]["threshold"]
                .as_f64()
                .unwrap();
            let error = relative_error(f64::from(stats.threshold), want);
            assert!(
                error < STATS_RELATIVE,
                "{kind} case {}: threshold {} vs {want}",
                case["name"],
                stats.threshold
            );
        }
    }
}

#[test]
fn kl_templates_match_reference() {
    let fixture = fixture();
    for case in cases(&fixture) {
        let DetectorStats::KlMatching(stats) = fit_case(&fixture, &case, FittedKind::KlMatching)
        else {
            panic!("kl-matching fitted other statistics");
        };
        let want = &case["detectors"]["kl-matching"];
        let name = &case["name"];
        assert_eq!(stats.classes, indices(&want["classes"]), "{name}: classes");
        assert_eq!(stats.counts, indices(&want["counts"]), "{name}: counts");
        let expected: Vec<f64> = want["templates"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(floats)
            .collect();
        let error = relative_to_peak(&widen(&stats.templates.concat()), &expected);
        assert!(
            error < STATS_RELATIVE,
            "{name}: templates differ by {error:e} of the peak"
        );
    }
}

#[test]
fn mahalanobis_means_match_reference() {
    let fixture = fixture();
    for case in cases(&fixture) {
        let DetectorStats::Mahalanobis(stats) = fit_case(&fixture, &case, FittedKind::Mahalanobis)
        else {
            panic!("mahalanobis fitted other statistics");
        };
        let want = &case["detectors"]["mahalanobis"];
        let name = &case["name"];
        assert_eq!(stats.classes, indices(&want["classes"]), "{name}: classes");
        assert_eq!(stats.counts, indices(&want["counts"]), "{name}: counts");
        let expected: Vec<f64> = want["means"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(floats)
            .collect();
        let error = relative_to_peak(&widen(&stats.means.concat()), &expected);
        assert!(
            error < STATS_RELATIVE,
            "{name}: means differ by {error:e} of the peak"
        );
    }
}

#[test]
fn mahalanobis_precision_matches_reference() {
    let fixture = fixture();
    let dim = fixture["feature_dim"].as_u64().unwrap() as usize;
    for case in cases(&fixture) {
        let DetectorStats::Mahalanobis(stats) = fit_case(&fixture, &case, FittedKind::Mahalanobis)
        else {
            panic!("mahalanobis fitted other statistics");
        };
        let want = &case["detectors"]["mahalanobis"];
        let name = &case["name"];
        assert_eq!(
            stats.whitening.len(),
            want["rank"].as_u64().unwrap() as usize,
            "{name}: rank"
        );
        // Σ⁺ = L·Lᵀ, with L stored as one column of D values per rank.
        let mut precision = vec![0f64; dim * dim];
        for column in &stats.whitening {
            for i in 0..dim {
                for j in 0..dim {
                    precision[i * dim + j] += f64::from(column[i]) * f64::from(column[j]);
                }
            }
        }
        let expected: Vec<f64> = want["precision"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(floats)
            .collect();
        let error = relative_to_peak(&precision, &expected);
        assert!(
            error < STATS_RELATIVE,
            "{name}: precision differs by {error:e} of the peak"
        );
    }
}

#[test]
fn vim_statistics_match_reference() {
    let fixture = fixture();
    for case in cases(&fixture) {
        let DetectorStats::Vim(stats) = fit_case(&fixture, &case, FittedKind::Vim) else {
            panic!("vim fitted other statistics");
        };
        let want = &case["detectors"]["vim"];
        let name = &case["name"];
        assert_eq!(
            stats.principal_dim,
            want["principal_dim"].as_u64().unwrap() as usize,
            "{name}: principal dimension"
        );
        let origin_error = relative_to_peak(&widen(&stats.origin), &floats(&want["origin"]));
        assert!(
            origin_error < STATS_RELATIVE,
            "{name}: origin differs by {origin_error:e} of the peak"
        );
        let alpha_error = relative_error(f64::from(stats.alpha), want["alpha"].as_f64().unwrap());
        assert!(
            alpha_error < STATS_RELATIVE,
            "{name}: alpha relative error {alpha_error:e}"
        );
    }
}

#[test]
fn knn_k_is_capped_at_fit_set_size() {
    let fixture = fixture();
    for case in cases(&fixture) {
        let DetectorStats::Knn(stats) = fit_case(&fixture, &case, FittedKind::Knn) else {
            panic!("knn fitted other statistics");
        };
        assert_eq!(
            stats.k,
            case["detectors"]["knn"]["k"].as_u64().unwrap() as usize,
            "{}: k",
            case["name"]
        );
    }
}

// Properties

#[test]
fn knn_fit_image_is_at_distance_zero() {
    let fixture = fixture();
    let head = head(&fixture);
    let features = fit_set(&fixture, "large");
    let params = FitParams {
        knn_k: 1,
        ..FitParams::default()
    };
    let stats = fit(FittedKind::Knn, &head, &slices(&features), &params).unwrap();
    let mut scorer = FittedScorer::new(stats, &head).unwrap();
    for (image, h) in features.iter().enumerate() {
        let score = scorer.score(&activations(&head, h), &head);
        assert_eq!(score, 0.0, "fit image {image}");
    }
}

#[test]
fn knn_bank_rows_have_unit_norm() {
    let fixture = fixture();
    let head = head(&fixture);
    let features = fit_set(&fixture, "large");
    let stats = fit(
        FittedKind::Knn,
        &head,
        &slices(&features),
        &FitParams::default(),
    );
    let Ok(DetectorStats::Knn(stats)) = stats else {
        panic!("knn fit failed");
    };
    for (row, entry) in stats.bank.iter().enumerate() {
        let norm = entry
            .iter()
            .map(|&v| f64::from(v).powi(2))
            .sum::<f64>()
            .sqrt();
        assert!((norm - 1.0).abs() < 1e-6, "bank row {row} has norm {norm}");
    }
}

#[test]
fn react_at_percentile_100_equals_energy() {
    let fixture = fixture();
    let head = head(&fixture);
    let features = fit_set(&fixture, "large");
    let params = FitParams {
        react_percentile: 100.0,
        ..FitParams::default()
    };
    let stats = fit(FittedKind::React, &head, &slices(&features), &params).unwrap();
    let mut scorer = FittedScorer::new(stats, &head).unwrap();
    // Every fit feature is at or below the fit set's maximum, so nothing is clipped.
    for (image, h) in features.iter().enumerate() {
        let act = activations(&head, h);
        let score = scorer.score(&act, &head);
        assert_eq!(score, energy(act.logits(), 1.0), "fit image {image}");
    }
}

#[test]
fn gradnorm_react_at_percentile_100_equals_gradnorm() {
    let fixture = fixture();
    let head = head(&fixture);
    let features = fit_set(&fixture, "large");
    let params = FitParams {
        react_percentile: 100.0,
        temperature: 2.0,
        ..FitParams::default()
    };
    let stats = fit(
        FittedKind::GradNormReact,
        &head,
        &slices(&features),
        &params,
    )
    .unwrap();
    let mut scorer = FittedScorer::new(stats, &head).unwrap();
    for (image, h) in features.iter().enumerate() {
        let act = activations(&head, h);
        let score = scorer.score(&act, &head);
        let plain = gradnorm(act.features_l1(), act.logits(), 2.0, GradNormScale::Paper);
        assert_eq!(score, plain, "fit image {image}");
    }
}

#[test]
fn ash_p_at_percentile_0_equals_energy() {
    let fixture = fixture();
    let head = head(&fixture);
    let params = FitParams {
        ash_percentile: 0.0,
        ..FitParams::default()
    };
    let stats = fit(FittedKind::AshP, &head, &[], &params).unwrap();
    let mut scorer = FittedScorer::new(stats, &head).unwrap();
    for (sample, h) in rows(&fixture["test_features"]).iter().enumerate() {
        let act = activations(&head, h);
        let score = scorer.score(&act, &head);
        assert_eq!(score, energy(act.logits(), 1.0), "test sample {sample}");
    }
}

#[test]
fn vim_origin_zeroes_every_logit() {
    let fixture = fixture();
    let head = head(&fixture);
    let features = fit_set(&fixture, "large");
    let stats = fit(
        FittedKind::Vim,
        &head,
        &slices(&features),
        &FitParams::default(),
    );
    let Ok(DetectorStats::Vim(stats)) = stats else {
        panic!("vim fit failed");
    };
    // C < D and W has full row rank, so W·o = −b has an exact solution.
    let act = activations(&head, &stats.origin);
    for (class, &z) in act.logits().iter().enumerate() {
        assert!(z.abs() < 1e-5, "logit {class} at the origin is {z}");
    }
}

#[test]
fn scores_do_not_depend_on_earlier_frames() {
    let fixture = fixture();
    let head = head(&fixture);
    let features = fit_set(&fixture, "large");
    let tests = rows(&fixture["test_features"]);
    for kind in FittedKind::ALL {
        let stats = fit(kind, &head, &slices(&features), &FitParams::default()).unwrap();
        let mut scorer = FittedScorer::new(stats, &head).unwrap();
        let first: Vec<f32> = tests
            .iter()
            .map(|h| scorer.score(&activations(&head, h), &head))
            .collect();
        let again: Vec<f32> = tests
            .iter()
            .rev()
            .map(|h| scorer.score(&activations(&head, h), &head))
            .collect();
        let again: Vec<f32> = again.into_iter().rev().collect();
        assert_eq!(first, again, "{kind}: scores changed with the frame order");
    }
}

#[test]
fn memory_counts_knn_bank_and_scratch() {
    let fixture = fixture();
    let head = head(&fixture);
    let features = fit_set(&fixture, "large");
    let stats = fit(
        FittedKind::Knn,
        &head,
        &slices(&features),
        &FitParams::default(),
    )
    .unwrap();
    let scorer = FittedScorer::new(stats, &head).unwrap();
    let (n, d) = (features.len(), head.feature_dim());
    let buffers = 4 * (n * (d + 1) + d);
    assert!(scorer.memory_bytes() >= buffers, "memory below the buffers");
    assert!(
        scorer.memory_bytes() < buffers + 1024,
        "memory far above the buffers"
    );
}

#[test]
fn memory_is_reported_for_every_kind() {
    let fixture = fixture();
    let head = head(&fixture);
    let features = fit_set(&fixture, "large");
    let floor = 4 * (head.feature_dim() + head.num_classes());
    for kind in FittedKind::ALL {
        let stats = fit(kind, &head, &slices(&features), &FitParams::default()).unwrap();
        let scorer = FittedScorer::new(stats, &head).unwrap();
        assert!(
            scorer.memory_bytes() >= floor,
            "{kind}: {} bytes",
            scorer.memory_bytes()
        );
    }
}

// Names

#[test]
fn kind_names_round_trip() {
    for kind in FittedKind::ALL {
        assert_eq!(kind.name().parse::<FittedKind>(), Ok(kind), "{kind}");
    }
}

#[test]
fn unknown_kind_lists_choices() {
    let err = "odin".parse::<FittedKind>().unwrap_err();
    assert_eq!(
        err.to_string(),
        "unknown detector 'odin': expected one of react, gradnorm-react, ash-p, ash-b, ash-s, \
         scale, kl-matching, mahalanobis, vim, knn"
    );
}

#[test]
fn only_shaping_kinds_need_no_fit() {
    for kind in FittedKind::ALL {
        let shaping = matches!(
            kind,
            FittedKind::AshP | FittedKind::AshB | FittedKind::AshS | FittedKind::Scale
        );
        assert_eq!(kind.needs_fit(), !shaping, "{kind}");
    }
}

#[test]
fn stats_kind_matches_fitted_kind() {
    let fixture = fixture();
    let head = head(&fixture);
    let features = fit_set(&fixture, "large");
    for kind in FittedKind::ALL {
        let stats = fit(kind, &head, &slices(&features), &FitParams::default()).unwrap();
        assert_eq!(stats.kind(), kind, "statistics kind");
        let scorer = FittedScorer::new(stats, &head).unwrap();
        assert_eq!(scorer.kind(), kind, "scorer kind");
    }
}

// Errors

#[test]
fn empty_fit_set_is_rejected() {
    let head = head(&fixture());
    for kind in FittedKind::ALL.into_iter().filter(|k| k.needs_fit()) {
        let err = fit(kind, &head, &[], &FitParams::default()).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("{kind} needs at least 1 fit image, got 0")
        );
    }
}

#[test]
fn shaping_kinds_accept_empty_fit_set() {
    let head = head(&fixture());
    for kind in FittedKind::ALL.into_iter().filter(|k| !k.needs_fit()) {
        let result = fit(kind, &head, &[], &FitParams::default());
        assert!(result.is_ok(), "{kind}: {result:?}");
    }
}

#[test]
fn wrong_feature_count_is_rejected() {
    let head = head(&fixture());
    let short = vec![1.0f32; head.feature_dim() - 1];
    let features = [short.as_slice()];
    for kind in FittedKind::ALL.into_iter().filter(|k| k.needs_fit()) {
        let err = fit(kind, &head, &features, &FitParams::default()).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{kind}: fit image 0 has 19 features, but the head expects 20; fit with \
                 activations of the same model"
            )
        );
    }
}

#[test]
fn non_finite_feature_is_rejected() {
    let head = head(&fixture());
    let mut bad = vec![1.0f32; head.feature_dim()];
    bad[7] = f32::NAN;
    let good = vec![1.0f32; head.feature_dim()];
    let features = [good.as_slice(), bad.as_slice()];
    let err = fit(FittedKind::Knn, &head, &features, &FitParams::default()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "knn: fit image 1 has a non-finite value in its features at index 7: NaN; remove the \
         image from the fit set"
    );
}

#[test]
fn react_percentile_above_100_is_rejected() {
    let fixture = fixture();
    let features = fit_set(&fixture, "large");
    let params = FitParams {
        react_percentile: 120.0,
        ..FitParams::default()
    };
    let err = fit(
        FittedKind::React,
        &head(&fixture),
        &slices(&features),
        &params,
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "react: percentile 120 is invalid; expected a value from 0 to 100"
    );
}

#[test]
fn ash_percentile_that_keeps_nothing_is_rejected() {
    let head = head(&fixture());
    let params = FitParams {
        ash_percentile: 100.0,
        ..FitParams::default()
    };
    let err = fit(FittedKind::AshB, &head, &[], &params).unwrap_err();
    assert!(
        matches!(
            err,
            FitError::InvalidParameter {
                name: "percentile",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn zero_temperature_is_rejected() {
    let head = head(&fixture());
    let params = FitParams {
        temperature: 0.0,
        ..FitParams::default()
    };
    let err = fit(FittedKind::Scale, &head, &[], &params).unwrap_err();
    assert_eq!(
        err.to_string(),
        "scale: temperature 0 is invalid; expected a finite value above 0"
    );
}

#[test]
fn knn_k_zero_is_rejected() {
    let fixture = fixture();
    let features = fit_set(&fixture, "large");
    let params = FitParams {
        knn_k: 0,
        ..FitParams::default()
    };
    let err = fit(
        FittedKind::Knn,
        &head(&fixture),
        &slices(&features),
        &params,
    )
    .unwrap_err();
    assert_eq!(err.to_string(), "knn: k 0 is invalid; expected at least 1");
}

#[test]
fn knn_bank_over_limit_is_rejected() {
    let head = head(&fixture());
    let image = vec![1.0f32; head.feature_dim()];
    let features = vec![image.as_slice(); MAX_KNN_BANK + 1];
    let err = fit(FittedKind::Knn, &head, &features, &FitParams::default()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "knn stores at most 50000 fit images, got 50001; fit on a random subset"
    );
}

#[test]
fn vim_dim_at_rank_is_rejected() {
    let fixture = fixture();
    // 12 generic fit images in 20 dimensions: rank 12.
    let features = fit_set(&fixture, "small");
    let params = FitParams {
        vim_dim: Some(12),
        ..FitParams::default()
    };
    let err = fit(
        FittedKind::Vim,
        &head(&fixture),
        &slices(&features),
        &params,
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "vim: principal dimension 12 must be below 12, the rank of the fit features about the \
         origin; pass a smaller dimension or add fit images"
    );
}

#[test]
fn mahalanobis_with_one_image_per_class_is_rejected() {
    let fixture = fixture();
    let head = head(&fixture);
    // One fit image of each predicted class: every image is its class mean.
    let features = fit_set(&fixture, "large");
    let mut seen = Vec::new();
    let mut singletons = Vec::new();
    for h in &features {
        let class = gradgate::score::top1(activations(&head, h).logits())
            .unwrap()
            .0;
        if !seen.contains(&class) {
            seen.push(class);
            singletons.push(h.clone());
        }
    }
    let err = fit(
        FittedKind::Mahalanobis,
        &head,
        &slices(&singletons),
        &FitParams::default(),
    )
    .unwrap_err();
    assert_eq!(
        err,
        FitError::ZeroCovariance {
            kind: FittedKind::Mahalanobis,
            images: singletons.len()
        }
    );
}

#[test]
fn stats_of_another_head_are_rejected() {
    let fixture = fixture();
    let features = fit_set(&fixture, "large");
    let stats = fit(
        FittedKind::Vim,
        &head(&fixture),
        &slices(&features),
        &FitParams::default(),
    )
    .unwrap();
    let other = Head::from_row_major(&[0.5; 6 * 8], &[0.0; 6], 8).unwrap();
    let err = FittedScorer::new(stats, &other).unwrap_err();
    assert_eq!(
        err.to_string(),
        "vim statistics field origin has 20 values, but the head needs 8; refit the statistics \
         for this model"
    );
}

#[test]
fn every_kind_rejects_another_head() {
    let fixture = fixture();
    let features = fit_set(&fixture, "large");
    let other = Head::from_row_major(&[0.5; 7 * 8], &[0.0; 7], 8).unwrap();
    for kind in FittedKind::ALL {
        let stats = fit(
            kind,
            &head(&fixture),
            &slices(&features),
            &FitParams::default(),
        )
        .unwrap();
        let result = FittedScorer::new(stats, &other);
        // ReAct and its GradNorm variant hold one threshold and no per-feature statistics,
        // and ASH and SCALE hold only parameters, so any head fits them.
        let size_free = matches!(
            kind,
            FittedKind::React
                | FittedKind::GradNormReact
                | FittedKind::AshP
                | FittedKind::AshB
                | FittedKind::AshS
                | FittedKind::Scale
        );
        assert_eq!(result.is_ok(), size_free, "{kind}: {:?}", result.err());
    }
}

// Statistics file

fn all_stats(fixture: &Value) -> Vec<DetectorStats> {
    let head = head(fixture);
    let features = fit_set(fixture, "large");
    FittedKind::ALL
        .into_iter()
        .map(|kind| fit(kind, &head, &slices(&features), &FitParams::default()).unwrap())
        .collect()
}

#[test]
fn stats_file_round_trips() {
    let fixture = fixture();
    let file = StatsFile::new(
        "ab".repeat(32),
        40,
        vec!["fit/large".into()],
        all_stats(&fixture),
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stats.json");
    file.save(&path).unwrap();
    let loaded = StatsFile::load(&path).unwrap();
    assert_eq!(loaded, file, "loaded file differs");
}

#[test]
fn stats_file_scores_match_after_reload() {
    let fixture = fixture();
    let head = head(&fixture);
    let tests = rows(&fixture["test_features"]);
    let file = StatsFile::new("00".repeat(32), 40, vec![], all_stats(&fixture));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stats.json");
    file.save(&path).unwrap();
    let loaded = StatsFile::load_for_model(&path, &"00".repeat(32)).unwrap();
    for kind in FittedKind::ALL {
        let mut before = FittedScorer::new(file.detector(kind).unwrap().clone(), &head).unwrap();
        let mut after = FittedScorer::new(loaded.detector(kind).unwrap().clone(), &head).unwrap();
        for (sample, h) in tests.iter().enumerate() {
            let act = activations(&head, h);
            assert_eq!(
                before.score(&act, &head),
                after.score(&act, &head),
                "{kind} sample {sample}"
            );
        }
    }
}

#[test]
fn stats_file_for_another_model_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stats.json");
    StatsFile::new("aa".repeat(32), 0, vec![], vec![])
        .save(&path)
        .unwrap();
    let err = StatsFile::load_for_model(&path, &"bb".repeat(32)).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "statistics file {} was fitted for model SHA-256 {}, but the loaded model is {}; \
             refit the statistics for this model",
            path.display(),
            "aa".repeat(32),
            "bb".repeat(32)
        )
    );
}

#[test]
fn stats_file_of_other_format_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stats.json");
    std::fs::write(&path, r#"{"format": 99, "layout": "from the future"}"#).unwrap();
    let err = StatsFile::load(&path).unwrap_err();
    assert!(
        matches!(err, StatsFileError::UnsupportedFormat { found: 99, .. }),
        "{err}"
    );
}

#[test]
fn stats_file_that_is_not_json_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stats.json");
    std::fs::write(&path, "not json").unwrap();
    let err = StatsFile::load(&path).unwrap_err();
    assert!(matches!(err, StatsFileError::Parse { .. }), "{err}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "message does not name the file: {err}"
    );
}

#[test]
fn missing_stats_file_names_the_path() {
    let path = std::path::Path::new("/nonexistent/gradgate/stats.json");
    let err = StatsFile::load(path).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("cannot read statistics file /nonexistent/gradgate/stats.json: "),
        "{err}"
    );
}

#[test]
fn stats_file_format_is_current() {
    let file = StatsFile::new(String::new(), 0, vec![], vec![]);
    assert_eq!(file.format, STATS_FORMAT);
}

// The bundled model

/// Features of every image under `dir` (recursively), from the fp32 model.
fn model_features(pipeline: &mut gradgate::Pipeline, dir: &str) -> Vec<Vec<f32>> {
    let files = gradgate::source::expand_sources(&[repo(dir)]).unwrap();
    files
        .iter()
        .map(|path| {
            pipeline.load_file(path).unwrap();
            pipeline.preprocess();
            pipeline.infer().unwrap();
            pipeline.activations().features().to_vec()
        })
        .collect()
}

#[test]
fn bundled_model_scores_are_finite() {
    use gradgate::frame::FrameLimits;
    use gradgate::{Gate, Model, Pipeline, Scorer, ScorerKind};

    let model = Model::load(&fp32_model()).unwrap();
    let head = model.head().clone();
    let mut pipeline = Pipeline::new(
        model,
        Scorer::new(ScorerKind::Energy),
        Gate::new(0.0),
        FrameLimits::default(),
    );
    let fit_features = model_features(&mut pipeline, "models/calibration");
    let id = model_features(&mut pipeline, "tests/data/id");
    let ood = model_features(&mut pipeline, "tests/data/ood");

    for kind in FittedKind::ALL {
        let stats = fit(kind, &head, &slices(&fit_features), &FitParams::default()).unwrap();
        let mut scorer = FittedScorer::new(stats, &head).unwrap();
        let mut score_all = |set: &[Vec<f32>]| -> Vec<f32> {
            set.iter()
                .map(|h| scorer.score(&activations(&head, h), &head))
                .collect()
        };
        let (id_scores, ood_scores) = (score_all(&id), score_all(&ood));
        for (set, scores) in [("id", &id_scores), ("ood", &ood_scores)] {
            for (image, score) in scores.iter().enumerate() {
                assert!(score.is_finite(), "{kind} {set} image {image}: {score}");
            }
        }
        let auroc = gradgate::eval::metrics::auroc(&id_scores, &ood_scores);
        eprintln!(
            "{kind}: AUROC {auroc:.3} on {} id / {} ood images, {} bytes",
            id.len(),
            ood.len(),
            scorer.memory_bytes()
        );
    }
}
