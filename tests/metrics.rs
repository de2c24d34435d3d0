//! OOD metrics against scikit-learn and the two reference FPR95 helpers.
//!
//! The expected values in tests/fixtures/metrics.json were computed once by
//! tests/fixtures/make_metrics.py with scikit-learn 1.9.1 and numpy 2.4.6: AUROC and
//! AUPR from sklearn, FPR95 (ID positive) from a rewrite of Outlier Exposure's
//! fpr_and_fdr_at_recall, FPR95 (OOD positive) from OpenOOD v1.5's roc_curve recipe.
//! Regenerate with `/work/pyenv/bin/python tests/fixtures/make_metrics.py`; these tests
//! need no Python.

mod common;

use common::load_json;
use gradgate::eval::metrics::{
    aupr_in, aupr_out, auroc, evaluate, fpr95_id_positive, fpr95_ood_positive, MetricsError,
    ScoreSet,
};
use serde_json::Value;

/// Absolute tolerance: every metric is a ratio of integer counts, so only float64
/// rounding separates gradgate from sklearn.
const TOLERANCE: f64 = 1e-12;

const CASE_NAMES: [&str; 10] = [
    "ties_across_sets",
    "all_equal",
    "perfectly_separated",
    "inverted",
    "unequal_sizes",
    "large_scores",
    "random_500_300",
    "negative_scores",
    "many_duplicates",
    "collinear_ties",
];

fn fixture() -> Value {
    load_json("tests/fixtures/metrics.json")
}

fn case(name: &str) -> Value {
    fixture()["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|case| case["name"] == name)
        .unwrap_or_else(|| panic!("case {name} is missing from tests/fixtures/metrics.json"))
        .clone()
}

/// Scores stored as the exact float64 value of an f32, so the cast back is exact.
fn scores(case: &Value, key: &str) -> Vec<f32> {
    case[key]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect()
}

fn expected(case: &Value, key: &str) -> f64 {
    case[key].as_f64().unwrap()
}

fn assert_close(actual: f64, expected: f64, metric: &str, name: &str) {
    assert!(
        (actual - expected).abs() <= TOLERANCE,
        "{name}: {metric} is {actual}, reference value {expected}"
    );
}

/// Checks `evaluate` and each per-metric function against the fixture case.
fn check_case(name: &str) {
    let case = case(name);
    let id = scores(&case, "id");
    let ood = scores(&case, "ood");
    let metrics = evaluate(&id, &ood).unwrap();

    assert_eq!(metrics.n_id, id.len(), "{name}: n_id");
    assert_eq!(metrics.n_ood, ood.len(), "{name}: n_ood");
    for (metric, actual) in [
        ("auroc", metrics.auroc),
        ("aupr_in", metrics.aupr_in),
        ("aupr_out", metrics.aupr_out),
        ("fpr95_id_positive", metrics.fpr95_id_positive),
        ("fpr95_ood_positive", metrics.fpr95_ood_positive),
    ] {
        assert_close(actual, expected(&case, metric), metric, name);
    }

    assert_close(auroc(&id, &ood), expected(&case, "auroc"), "auroc()", name);
    assert_close(
        aupr_in(&id, &ood),
        expected(&case, "aupr_in"),
        "aupr_in()",
        name,
    );
    assert_close(
        aupr_out(&id, &ood),
        expected(&case, "aupr_out"),
        "aupr_out()",
        name,
    );
    assert_close(
        fpr95_id_positive(&id, &ood),
        expected(&case, "fpr95_id_positive"),
        "fpr95_id_positive()",
        name,
    );
    assert_close(
        fpr95_ood_positive(&id, &ood),
        expected(&case, "fpr95_ood_positive"),
        "fpr95_ood_positive()",
        name,
    );
}

#[test]
fn fixture_lists_every_case() {
    let fixture = fixture();
    let names: Vec<&str> = fixture["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|case| case["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names, CASE_NAMES,
        "each fixture case needs its own test below"
    );
}

#[test]
fn fixture_recall_level_is_95_percent() {
    assert_eq!(
        fixture()["recall_level"],
        0.95,
        "the FPR95 functions use 0.95"
    );
}

#[test]
fn ties_across_sets_match_sklearn() {
    check_case("ties_across_sets");
}

#[test]
fn all_equal_scores_match_sklearn() {
    check_case("all_equal");
}

#[test]
fn perfectly_separated_match_sklearn() {
    check_case("perfectly_separated");
}

#[test]
fn inverted_scores_match_sklearn() {
    check_case("inverted");
}

#[test]
fn unequal_set_sizes_match_sklearn() {
    check_case("unequal_sizes");
}

#[test]
fn large_scores_match_sklearn() {
    check_case("large_scores");
}

#[test]
fn random_500_300_match_sklearn() {
    check_case("random_500_300");
}

#[test]
fn negative_scores_match_sklearn() {
    check_case("negative_scores");
}

#[test]
fn many_duplicates_match_sklearn() {
    check_case("many_duplicates");
}

#[test]
fn collinear_ties_match_sklearn() {
    check_case("collinear_ties");
}

/// gradgate keeps every ROC point, so it differs here from OpenOOD, which calls roc_curve
/// with drop_intermediate=True. The case would prove nothing if the two agreed.
#[test]
fn collinear_ties_differ_from_drop_intermediate() {
    let case = case("collinear_ties");
    let actual = fpr95_ood_positive(&scores(&case, "id"), &scores(&case, "ood"));
    let openood_default = expected(&case, "openood_drop_intermediate_fpr95");
    assert!(
        (actual - openood_default).abs() > 0.01,
        "collinear_ties: {actual} should differ from OpenOOD's {openood_default}"
    );
}

/// A sigmoid maps every score above about 17 to 1.0 in f32, which turns this perfect
/// separation into a tie (AUROC 0.5). Scores must be used as given.
#[test]
fn thousands_not_squashed_by_sigmoid() {
    let id = [4000.0f32, 4500.0, 5000.0];
    let ood = [1000.0f32, 2000.0, 3000.0];
    let metrics = evaluate(&id, &ood).unwrap();
    assert_eq!(metrics.auroc, 1.0, "auroc");
    assert_eq!(metrics.aupr_in, 1.0, "aupr_in");
    assert_eq!(metrics.aupr_out, 1.0, "aupr_out");
    assert_eq!(metrics.fpr95_id_positive, 0.0, "fpr95_id_positive");
    assert_eq!(metrics.fpr95_ood_positive, 0.0, "fpr95_ood_positive");
}

#[test]
fn evaluate_rejects_empty_id() {
    let error = evaluate(&[], &[0.5]).unwrap_err();
    assert_eq!(error, MetricsError::EmptyId, "variant");
    let message = error.to_string();
    assert!(
        message.contains("in-distribution score set is empty"),
        "message: {message}"
    );
    assert!(message.contains("score at least one"), "message: {message}");
}

#[test]
fn evaluate_rejects_empty_ood() {
    let error = evaluate(&[0.5], &[]).unwrap_err();
    assert_eq!(error, MetricsError::EmptyOod, "variant");
    let message = error.to_string();
    assert!(
        message.contains("out-of-distribution score set is empty"),
        "message: {message}"
    );
    assert!(message.contains("score at least one"), "message: {message}");
}

#[test]
fn evaluate_rejects_nan_in_ood() {
    let error = evaluate(&[0.5, 0.7], &[0.1, 0.2, f32::NAN, f32::NAN]).unwrap_err();
    assert_eq!(
        error,
        MetricsError::NanScore {
            set: ScoreSet::Ood,
            index: 2
        },
        "first NaN of the OOD set"
    );
    let message = error.to_string();
    assert!(
        message.starts_with("out-of-distribution score at index 2 is NaN"),
        "message: {message}"
    );
    assert!(message.contains("drop that image"), "message: {message}");
}

#[test]
fn evaluate_rejects_nan_in_id() {
    let error = evaluate(&[f32::NAN, 0.7], &[0.1]).unwrap_err();
    assert_eq!(
        error,
        MetricsError::NanScore {
            set: ScoreSet::Id,
            index: 0
        },
        "first NaN of the ID set"
    );
    let message = error.to_string();
    assert!(
        message.starts_with("in-distribution score at index 0 is NaN"),
        "message: {message}"
    );
}
