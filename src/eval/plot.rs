//! ROC curves and score histograms as SVG files, for reading an evaluation at a glance.

use plotters::prelude::*;
use std::path::Path;

/// Points of the ROC curve with in-distribution as the positive class: for each distinct
/// score threshold t, from the highest down, the fraction of OOD scores ≥ t (x, false
/// positives) and of in-distribution scores ≥ t (y, true positives). Starts at (0, 0) and ends
/// at (1, 1). NaN scores are ignored.
pub fn roc_points(id: &[f32], ood: &[f32]) -> Vec<(f64, f64)> {
    let mut scored: Vec<(f32, bool)> = id
        .iter()
        .map(|&s| (s, true))
        .chain(ood.iter().map(|&s| (s, false)))
        .filter(|(s, _)| !s.is_nan())
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    let positives = scored.iter().filter(|(_, is_id)| *is_id).count().max(1) as f64;
    let negatives = scored.iter().filter(|(_, is_id)| !*is_id).count().max(1) as f64;

    let mut points = vec![(0.0, 0.0)];
    let (mut true_positives, mut false_positives) = (0usize, 0usize);
    for (i, &(score, is_id)) in scored.iter().enumerate() {
        if is_id {
            true_positives += 1;
        } else {
            false_positives += 1;
        }
        // Emit a point only after the last of a run of equal scores.
        if scored.get(i + 1).is_none_or(|next| next.0 != score) {
            points.push((
                false_positives as f64 / negatives,
                true_positives as f64 / positives,
            ));
        }
    }
    points
}

/// Palette for the curves, one colour per series, cycling.
const COLOURS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// Writes one SVG with a ROC curve per OOD set for one detector.
pub fn write_roc(
    path: &Path,
    detector: &str,
    id: &[f32],
    sets: &[(&str, &[f32])],
) -> Result<(), String> {
    let root = SVGBackend::new(path, (640, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("ROC, {detector} (in-distribution positive)"),
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..1f64, 0f64..1f64)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("OOD frames accepted (false positive rate)")
        .y_desc("in-distribution frames accepted (true positive rate)")
        .draw()
        .map_err(|e| e.to_string())?;
    chart
        .draw_series(LineSeries::new([(0.0, 0.0), (1.0, 1.0)], BLACK.mix(0.3)))
        .map_err(|e| e.to_string())?;
    for (index, (name, ood)) in sets.iter().enumerate() {
        let colour = COLOURS[index % COLOURS.len()];
        chart
            .draw_series(LineSeries::new(roc_points(id, ood), colour.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(name.to_string())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], colour.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}

/// Writes one SVG with score histograms (as outlines over shared bins) of the in-distribution
/// set and every OOD set for one detector, with the threshold as a vertical line if given.
pub fn write_histogram(
    path: &Path,
    detector: &str,
    id: &[f32],
    sets: &[(&str, &[f32])],
    threshold: Option<f32>,
) -> Result<(), String> {
    const BINS: usize = 40;
    let finite = |s: &&f32| s.is_finite();
    let all = id
        .iter()
        .chain(sets.iter().flat_map(|(_, s)| s.iter()))
        .filter(finite);
    let (low, high) = all.fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &s| {
        (lo.min(s), hi.max(s))
    });
    if low > high {
        return Err(format!("no finite {detector} scores to plot"));
    }
    let width = ((high - low) / BINS as f32).max(f32::EPSILON);
    let density = |scores: &[f32]| -> Vec<(f64, f64)> {
        let mut counts = [0usize; BINS];
        for &s in scores.iter().filter(|s| s.is_finite()) {
            counts[(((s - low) / width) as usize).min(BINS - 1)] += 1;
        }
        let total = scores.len().max(1) as f64;
        counts
            .iter()
            .enumerate()
            .flat_map(|(bin, &count)| {
                let left = f64::from(low + bin as f32 * width);
                let fraction = count as f64 / total;
                [(left, fraction), (left + f64::from(width), fraction)]
            })
            .collect()
    };

    let series: Vec<(String, Vec<(f64, f64)>)> =
        std::iter::once(("in-distribution".to_string(), density(id)))
            .chain(sets.iter().map(|(name, s)| (name.to_string(), density(s))))
            .collect();
    let peak = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(_, y)| *y))
        .fold(0.0, f64::max)
        .max(1e-9);

    let root = SVGBackend::new(path, (640, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("{detector} scores (higher = in-distribution)"),
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(f64::from(low)..f64::from(high + width), 0f64..peak * 1.1)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("score")
        .y_desc("fraction of the set")
        .draw()
        .map_err(|e| e.to_string())?;
    for (index, (name, points)) in series.into_iter().enumerate() {
        let colour = COLOURS[index % COLOURS.len()];
        chart
            .draw_series(LineSeries::new(points, colour.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], colour.stroke_width(2)));
    }
    if let Some(t) = threshold.filter(|t| t.is_finite()) {
        chart
            .draw_series(LineSeries::new(
                [(f64::from(t), 0.0), (f64::from(t), peak * 1.1)],
                BLACK.stroke_width(1),
            ))
            .map_err(|e| e.to_string())?
            .label("threshold")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], BLACK));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roc_of_separated_sets_reaches_top_left() {
        let points = roc_points(&[3.0, 4.0], &[1.0, 2.0]);
        assert_eq!(
            points,
            vec![(0.0, 0.0), (0.0, 0.5), (0.0, 1.0), (0.5, 1.0), (1.0, 1.0)]
        );
    }

    #[test]
    fn roc_merges_tied_scores() {
        let points = roc_points(&[1.0], &[1.0]);
        assert_eq!(points, vec![(0.0, 0.0), (1.0, 1.0)]);
    }

    #[test]
    fn plots_are_written_as_svg() {
        let dir = tempfile::tempdir().unwrap();
        let roc = dir.path().join("roc.svg");
        let histogram = dir.path().join("histogram.svg");
        write_roc(&roc, "msp", &[0.9, 0.8, 0.7], &[("icons", &[0.2, 0.75])]).unwrap();
        write_histogram(
            &histogram,
            "msp",
            &[0.9, 0.8, 0.7],
            &[("icons", &[0.2, 0.75])],
            Some(0.5),
        )
        .unwrap();
        assert!(std::fs::read_to_string(&roc).unwrap().starts_with("<svg"));
        assert!(std::fs::read_to_string(&histogram)
            .unwrap()
            .starts_with("<svg"));
    }
}
