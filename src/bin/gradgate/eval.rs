//! `gradgate eval`: compare scorers on in-distribution and OOD image sets.

use crate::{ModelArgs, Outcome};
use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use gradgate::calibration::{self, Calibration};
use gradgate::eval::metrics::{evaluate, Metrics};
use gradgate::eval::{collect_activations, plot, score_cached, Collected, FeatureCache};
use gradgate::score::fitted::{self, FitParams, FittedScorer, StatsFile};
use gradgate::score::Detector;
use gradgate::source::expand_sources;
use gradgate::{Scorer, ScorerKind};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;

#[derive(Args)]
pub(crate) struct EvalArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// In-distribution images: files, folders or glob patterns
    #[arg(long = "id", required = true, value_name = "SOURCE")]
    id: Vec<std::ffi::OsString>,
    /// An OOD set as NAME=SOURCE (file, folder or glob pattern); repeat for more sets
    #[arg(long = "ood", required = true, value_name = "NAME=SOURCE", value_parser = parse_named_set)]
    ood: Vec<(String, String)>,
    /// Output format
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// Feature cache folder [default: $XDG_CACHE_HOME/gradgate, else ~/.cache/gradgate]
    #[arg(long, value_name = "DIR")]
    cache: Option<PathBuf>,
    /// Run the model on every image, neither reading nor writing the feature cache
    #[arg(long)]
    no_cache: bool,
    /// Folder for SVG plots: a ROC curve and a score histogram per detector
    #[arg(long, value_name = "DIR")]
    plots: Option<PathBuf>,
    /// In-distribution images to fit the fitted detectors on (ReAct, ViM, KNN, …), instead of
    /// the model's statistics file; they must not overlap the evaluation images
    #[arg(long, value_name = "SOURCE")]
    fit: Vec<std::ffi::OsString>,
    /// Statistics file of the fitted detectors [default: the model path with .stats.json,
    /// when it exists]
    #[arg(long, value_name = "FILE")]
    stats: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    /// Aligned text
    Table,
    /// One JSON object per line per (detector, OOD set)
    Json,
    /// Comma-separated values with a header line
    Csv,
}

fn parse_named_set(value: &str) -> Result<(String, String), String> {
    match value.split_once('=') {
        Some((name, source)) if !name.is_empty() && !source.is_empty() => {
            Ok((name.to_string(), source.to_string()))
        }
        _ => Err(format!(
            "'{value}' is not NAME=SOURCE, e.g. textures=tests/data/ood/texture"
        )),
    }
}

/// One output row: a detector on one OOD set, or its mean over the sets.
#[derive(Serialize)]
struct Row<'a> {
    detector: &'a str,
    ood_set: &'a str,
    #[serde(flatten)]
    metrics: Metrics,
}

pub(crate) fn eval(args: EvalArgs) -> Result<Outcome> {
    let mut names = HashMap::new();
    for (name, _) in &args.ood {
        if names.insert(name.as_str(), ()).is_some() {
            bail!("OOD set name '{name}' is given twice; give each --ood a distinct NAME");
        }
    }
    if args.ood.iter().any(|(name, _)| name == "mean") {
        bail!("'mean' is reserved for the average over OOD sets; rename that --ood set");
    }

    let model = args.model.load()?;
    let cache = (!args.no_cache).then(|| {
        let root = args
            .cache
            .clone()
            .unwrap_or_else(FeatureCache::default_root);
        log::info!("feature cache {}", root.display());
        FeatureCache::new(&root, &model.info().sha256)
    });
    let id_files = expand_sources(&args.id)?;
    let mut ood_files = Vec::new();
    for (name, source) in &args.ood {
        ood_files.push((name.clone(), expand_sources(std::slice::from_ref(source))?));
    }

    // Run the model once per image, through the cache.
    let total = id_files.len() + ood_files.iter().map(|(_, f)| f.len()).sum::<usize>();
    let progress = ProgressBar::new(total as u64);
    progress.set_style(
        ProgressStyle::with_template("{prefix:>12} {bar:30} {pos}/{len} images, {eta} left")
            .expect("the progress template is valid"),
    );
    let scorer = args.model.scorer();
    let mut pipeline = args.model.scoring_pipeline(model);
    progress.set_prefix("in-dist");
    let id = collect_activations(&mut pipeline, cache.as_ref(), &id_files, |_| {
        progress.inc(1)
    });
    let mut ood: Vec<(String, Collected)> = Vec::new();
    for (name, files) in &ood_files {
        progress.set_prefix(name.clone());
        ood.push((
            name.clone(),
            collect_activations(&mut pipeline, cache.as_ref(), files, |_| progress.inc(1)),
        ));
    }
    let fit = if args.fit.is_empty() {
        None
    } else {
        let fit_files = expand_sources(&args.fit)?;
        progress.inc_length(fit_files.len() as u64);
        progress.set_prefix("fit");
        Some(collect_activations(
            &mut pipeline,
            cache.as_ref(),
            &fit_files,
            |_| progress.inc(1),
        ))
    };
    progress.finish_and_clear();
    report_collection(&id, &ood);

    // Every closed-form detector, then the fitted ones from --fit or the statistics file.
    let mut detectors: Vec<Detector> = ScorerKind::ALL
        .into_iter()
        .map(|kind| Detector::Closed(Scorer { kind, ..scorer }))
        .collect();
    let head = pipeline.model().head().clone();
    let fitted_stats = match &fit {
        Some(fit) => {
            warn_overlap(fit, &id, &ood);
            let features: Vec<&[f32]> = fit
                .activations
                .iter()
                .map(|a| a.features.as_slice())
                .collect();
            let params = FitParams {
                temperature: args.model.temperature,
                ..FitParams::default()
            };
            crate::fit::fit_all(&head, &features, &params, &fitted::FittedKind::ALL)
        }
        None => {
            let path = args
                .stats
                .clone()
                .unwrap_or_else(|| fitted::path_for_model(&pipeline.model().info().path));
            if args.stats.is_some() || path.exists() {
                StatsFile::load_for_model(&path, &pipeline.model().info().sha256)?.detectors
            } else {
                log::info!(
                    "no statistics file {}: evaluating the closed-form detectors only",
                    path.display()
                );
                Vec::new()
            }
        }
    };
    for stats in fitted_stats {
        let kind = stats.kind();
        match FittedScorer::new(stats, &head) {
            Ok(scorer) => detectors.push(Detector::Fitted(scorer)),
            Err(err) => log::warn!("skipped detector {kind}: {err}"),
        }
    }

    // Score every set with every detector and compute the metrics.
    if let Some(dir) = &args.plots {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create plot folder {}", dir.display()))?;
    }
    let calibration = load_calibration(pipeline.model());
    let head = &head;
    let mut rows: Vec<(String, String, Metrics)> = Vec::new();
    for detector in &mut detectors {
        let kind = detector.name();
        let id_scores = score_cached(head, detector, &id.activations);
        let mut per_set = Vec::new();
        let mut ood_scores = Vec::new();
        for (name, set) in &ood {
            let scores = score_cached(head, detector, &set.activations);
            let metrics = evaluate(&id_scores, &scores)
                .with_context(|| format!("cannot evaluate {kind} on OOD set '{name}'"))?;
            per_set.push(metrics);
            rows.push((kind.name().to_string(), name.clone(), metrics));
            ood_scores.push((name.as_str(), scores));
        }
        rows.push((kind.name().to_string(), "mean".to_string(), mean(&per_set)));

        if let Some(dir) = &args.plots {
            let sets: Vec<(&str, &[f32])> = ood_scores
                .iter()
                .map(|(name, scores)| (*name, scores.as_slice()))
                .collect();
            let threshold = calibration
                .as_ref()
                .and_then(|c| c.scorers.get(kind.name()))
                .map(|summary| summary.threshold);
            let roc = dir.join(format!("{kind}-roc.svg"));
            let histogram = dir.join(format!("{kind}-histogram.svg"));
            plot::write_roc(&roc, kind.name(), &id_scores, &sets)
                .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", roc.display()))?;
            plot::write_histogram(&histogram, kind.name(), &id_scores, &sets, threshold)
                .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", histogram.display()))?;
        }
    }
    if let Some(dir) = &args.plots {
        eprintln!("gradgate: plots written to {}", dir.display());
    }

    print_rows(args.format, &rows).context("cannot write to stdout")?;
    let skipped = id.skipped.len() + ood.iter().map(|(_, s)| s.skipped.len()).sum::<usize>();
    Ok(if skipped == 0 {
        Outcome::AllFrames
    } else {
        Outcome::SomeSkipped
    })
}

/// Loads the model's calibration, for marking thresholds on the
/// histograms; `None` when there is none or it belongs to another model.
fn load_calibration(model: &gradgate::Model) -> Option<Calibration> {
    let path = calibration::path_for_model(&model.info().path);
    let calibration = Calibration::load(&path).ok()?;
    (calibration.model_sha256 == model.info().sha256).then_some(calibration)
}

/// Warns about fit images whose content is also an evaluation image: fitting on the images
/// being scored inflates the fitted detectors' metrics.
fn warn_overlap(fit: &Collected, id: &Collected, ood: &[(String, Collected)]) {
    let fit_hashes: HashMap<&str, &PathBuf> = fit
        .files
        .iter()
        .map(|(path, hash)| (hash.as_str(), path))
        .collect();
    let evaluated = id
        .files
        .iter()
        .chain(ood.iter().flat_map(|(_, set)| set.files.iter()));
    let overlapping: Vec<_> = evaluated
        .filter(|(_, hash)| fit_hashes.contains_key(hash.as_str()))
        .collect();
    if let Some((path, _)) = overlapping.first() {
        log::warn!(
            "{} evaluation images are also fit images (first: {}); the fitted detectors' metrics are inflated",
            overlapping.len(),
            path.display()
        );
    }
}

fn report_collection(id: &Collected, ood: &[(String, Collected)]) {
    // The same image in the in-distribution set and an OOD set makes the metrics meaningless.
    let id_hashes: HashMap<&str, &PathBuf> = id
        .files
        .iter()
        .map(|(path, hash)| (hash.as_str(), path))
        .collect();
    for (name, set) in ood {
        for (path, hash) in &set.files {
            if let Some(id_path) = id_hashes.get(hash.as_str()) {
                log::warn!(
                    "{} in OOD set '{name}' has the same content as in-distribution image {}",
                    path.display(),
                    id_path.display()
                );
            }
        }
    }
    let hits = id.cache_hits + ood.iter().map(|(_, s)| s.cache_hits).sum::<usize>();
    let images = id.files.len() + ood.iter().map(|(_, s)| s.files.len()).sum::<usize>();
    let skipped = id.skipped.len() + ood.iter().map(|(_, s)| s.skipped.len()).sum::<usize>();
    eprintln!(
        "gradgate: {images} images scored ({hits} from the feature cache), {skipped} skipped"
    );
}

/// Mean of each metric over the OOD sets; the counts are summed.
fn mean(sets: &[Metrics]) -> Metrics {
    let n = sets.len() as f64;
    let average = |field: fn(&Metrics) -> f64| sets.iter().map(field).sum::<f64>() / n;
    Metrics {
        auroc: average(|m| m.auroc),
        aupr_in: average(|m| m.aupr_in),
        aupr_out: average(|m| m.aupr_out),
        fpr95_id_positive: average(|m| m.fpr95_id_positive),
        fpr95_ood_positive: average(|m| m.fpr95_ood_positive),
        n_id: sets.first().map_or(0, |m| m.n_id),
        n_ood: sets.iter().map(|m| m.n_ood).sum(),
    }
}

fn print_rows(format: Format, rows: &[(String, String, Metrics)]) -> std::io::Result<()> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    match format {
        Format::Json => {
            for (detector, ood_set, metrics) in rows {
                let row = Row {
                    detector,
                    ood_set,
                    metrics: *metrics,
                };
                serde_json::to_writer(&mut out, &row)?;
                writeln!(out)?;
            }
        }
        Format::Csv => {
            writeln!(out, "detector,ood_set,n_id,n_ood,auroc,aupr_in,aupr_out,fpr95_id_positive,fpr95_ood_positive")?;
            for (detector, ood_set, m) in rows {
                writeln!(
                    out,
                    "{detector},{ood_set},{},{},{},{},{},{},{}",
                    m.n_id,
                    m.n_ood,
                    m.auroc,
                    m.aupr_in,
                    m.aupr_out,
                    m.fpr95_id_positive,
                    m.fpr95_ood_positive
                )?;
            }
        }
        Format::Table => {
            writeln!(
                out,
                "{:<15} {:<14} {:>5} {:>5} {:>7} {:>8} {:>9} {:>11} {:>12}",
                "detector",
                "ood_set",
                "n_id",
                "n_ood",
                "AUROC",
                "AUPR-in",
                "AUPR-out",
                "FPR95(ID+)",
                "FPR95(OOD+)"
            )?;
            for (detector, ood_set, m) in rows {
                writeln!(
                    out,
                    "{detector:<15} {ood_set:<14} {:>5} {:>5} {:>7.4} {:>8.4} {:>9.4} {:>11.4} {:>12.4}",
                    m.n_id, m.n_ood, m.auroc, m.aupr_in, m.aupr_out, m.fpr95_id_positive, m.fpr95_ood_positive
                )?;
            }
            writeln!(out, "AUROC and AUPR: higher is better. FPR95(ID+): OOD accepted at 95% of in-distribution passing (GradNorm and Outlier Exposure papers). FPR95(OOD+): in-distribution flagged at 95% of OOD caught (OpenOOD v1.5).")?;
        }
    }
    out.flush()
}
