//! `gradgate eval` end to end on the bundled images: output formats and the feature cache.

mod common;

use serde_json::Value;
use std::process::{Command, Output};

fn gradgate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gradgate"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn eval_json(cache: &std::path::Path) -> Output {
    gradgate(&[
        "eval",
        "--model",
        "models/efficientnet-lite0-fp32.onnx",
        "--id",
        "tests/data/id",
        "--ood",
        "texture=tests/data/ood/texture",
        "--ood",
        "near-blank=tests/data/ood/near-blank",
        "--format",
        "json",
        "--cache",
        cache.to_str().unwrap(),
    ])
}

#[test]
fn eval_json_rows_per_detector() {
    let cache = tempfile::tempdir().unwrap();
    let output = eval_json(cache.path());
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let rows: Vec<Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // Five closed-form and the six shipped fitted detectors × (two sets + their mean).
    assert_eq!(rows.len(), 33);
    for row in &rows {
        for key in [
            "detector",
            "ood_set",
            "auroc",
            "fpr95_id_positive",
            "fpr95_ood_positive",
            "aupr_in",
            "aupr_out",
        ] {
            assert!(row.get(key).is_some(), "missing {key} in {row}");
        }
        let auroc = row["auroc"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&auroc), "{row}");
    }
}

#[test]
fn second_eval_reads_every_image_from_cache() {
    let cache = tempfile::tempdir().unwrap();
    let first = eval_json(cache.path());
    let second = eval_json(cache.path());
    let stderr = String::from_utf8_lossy(&second.stderr);
    let images = std::fs::read_dir(common::repo("tests/data/id"))
        .unwrap()
        .count()
        + std::fs::read_dir(common::repo("tests/data/ood/texture"))
            .unwrap()
            .count()
        + std::fs::read_dir(common::repo("tests/data/ood/near-blank"))
            .unwrap()
            .count();
    assert!(
        stderr.contains(&format!(
            "{images} images scored ({images} from the feature cache)"
        )),
        "{stderr}"
    );
    assert_eq!(
        first.stdout, second.stdout,
        "cached activations changed the metrics"
    );
}

#[test]
fn near_blank_frames_are_separated_by_gradnorm() {
    let cache = tempfile::tempdir().unwrap();
    let output = eval_json(cache.path());
    let rows: Vec<Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let row = rows
        .iter()
        .find(|r| r["detector"] == "gradnorm" && r["ood_set"] == "near-blank")
        .unwrap();
    // Near-blank frames have small pooled features, so ‖h‖₁ and GradNorm are low.
    assert!(row["auroc"].as_f64().unwrap() > 0.9, "{row}");
}

#[test]
fn eval_writes_roc_and_histogram_plots() {
    let cache = tempfile::tempdir().unwrap();
    let plots = tempfile::tempdir().unwrap();
    let output = gradgate(&[
        "eval",
        "--id",
        "tests/data/id",
        "--ood",
        "icon=tests/data/ood/icon",
        "--cache",
        cache.path().to_str().unwrap(),
        "--plots",
        plots.path().to_str().unwrap(),
    ]);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for detector in ["gradnorm", "msp", "maxlogit", "energy"] {
        for plot in ["roc", "histogram"] {
            let path = plots.path().join(format!("{detector}-{plot}.svg"));
            assert!(
                std::fs::read_to_string(&path).unwrap().starts_with("<svg"),
                "{}",
                path.display()
            );
        }
    }
}

#[test]
fn duplicate_ood_set_name_is_rejected() {
    let output = gradgate(&[
        "eval",
        "--id",
        "tests/data/id",
        "--ood",
        "a=tests/data/ood/icon",
        "--ood",
        "a=tests/data/ood/texture",
    ]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("OOD set name 'a' is given twice"));
}

#[test]
fn ood_set_without_name_is_a_usage_error() {
    let output = gradgate(&[
        "eval",
        "--id",
        "tests/data/id",
        "--ood",
        "tests/data/ood/icon",
    ]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("is not NAME=SOURCE"));
}

/// Copies the fp32 model into `dir`, so that the statistics and calibration files written
/// beside it stay out of the repository.
fn model_copy(dir: &std::path::Path) -> String {
    let model = dir.join("model.onnx");
    std::fs::copy(common::fp32_model(), &model).unwrap();
    model.to_str().unwrap().to_string()
}

#[test]
fn fitted_detector_runs_after_fit_and_calibrate() {
    let dir = tempfile::tempdir().unwrap();
    let model = model_copy(dir.path());
    let cache = dir.path().join("cache");
    let fit = gradgate(&[
        "fit",
        "--model",
        &model,
        "--cache",
        cache.to_str().unwrap(),
        "models/calibration",
    ]);
    assert_eq!(
        fit.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&fit.stderr)
    );
    assert!(dir.path().join("model.stats.json").exists());
    let calibrate = gradgate(&["calibrate", "--model", &model, "models/calibration"]);
    assert_eq!(
        calibrate.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&calibrate.stderr)
    );

    let run = gradgate(&[
        "run",
        "--model",
        &model,
        "--scorer",
        "react",
        "tests/data/ood/near-blank",
    ]);
    assert_eq!(
        run.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("(scorer react, threshold "), "{stderr}");
}

#[test]
fn fitted_detector_without_statistics_asks_for_fit() {
    let dir = tempfile::tempdir().unwrap();
    let model = model_copy(dir.path());
    let output = gradgate(&[
        "run",
        "--model",
        &model,
        "--scorer",
        "knn",
        "--threshold",
        "0",
        "tests/data/id",
    ]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("run 'gradgate fit DIR'"), "{stderr}");
}

#[test]
fn eval_with_fit_reports_fitted_detectors() {
    let cache = tempfile::tempdir().unwrap();
    let output = gradgate(&[
        "eval",
        "--model",
        "models/efficientnet-lite0-fp32.onnx",
        "--id",
        "tests/data/id",
        "--ood",
        "near-blank=tests/data/ood/near-blank",
        "--fit",
        "models/calibration",
        "--format",
        "json",
        "--cache",
        cache.path().to_str().unwrap(),
    ]);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let detectors: std::collections::BTreeSet<String> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["detector"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    for name in [
        "react",
        "gradnorm-react",
        "ash-p",
        "ash-b",
        "ash-s",
        "scale",
        "kl-matching",
        "mahalanobis",
        "vim",
        "knn",
    ] {
        assert!(
            detectors.contains(name),
            "{name} missing from {detectors:?}"
        );
    }
}
