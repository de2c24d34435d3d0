#!/usr/bin/env python3
"""Turn the OOD benchmark's results into the markdown tables of docs/benchmarks.md.

Reads, under the benchmark folder (default target/ood-benchmark):
  build-info.json                       set sizes, written by build.py
  results/eval-fp32.json, eval-int8.json  `gradgate eval --format json` output
  results/scores-MODEL-SCORER.jsonl     `gradgate run --threshold -1e30` output,
                                        one JSON line per image with its score
and prints markdown on stdout.

Transfer check: for each model and scorer, the threshold is computed from the
id/fit scores as `gradgate calibrate` does (scores sorted ascending, the one at
index floor(0.05 * n)), then the table gives the fraction of id/test and
id-cutout images that pass it (score >= threshold) and the fraction of each
OOD set that it catches (score < threshold).
"""

import argparse
import glob
import json
import math
import os
import sys

MODELS = ["fp32", "int8"]
OOD_KINDS = ["texture", "landscape", "cartoon", "painting", "icon", "near-blank", "near-ood"]
FAULTS = ["black", "gray", "noise", "blur", "overexposed", "covered"]
FAULT_SETS = ["fault-" + fault for fault in FAULTS]
DOMAIN_SHIFT = "id-cutout"
TARGET_TPR = 0.95


def read_eval(path):
    """Return {(detector, ood_set): metrics} from gradgate eval's JSON lines."""
    rows = {}
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                row = json.loads(line)
                rows[(row["detector"], row["ood_set"])] = row
    return rows


def set_of(source, bench):
    """Return the set an image belongs to from its path: id/fit, id/test, id-cutout, a kind or fault-NAME."""
    relative = os.path.relpath(source, bench).replace(os.sep, "/")
    parts = relative.split("/")
    if parts[0] == "id":
        return "id/" + parts[1]
    if parts[0] == DOMAIN_SHIFT:
        return DOMAIN_SHIFT
    if parts[:2] == ["ood", "camera-fault"]:
        return "fault-" + parts[2]
    return parts[1]


def read_scores(path, bench):
    """Return {set: [score, ...]} from gradgate run's JSON lines, skipping frames with an error."""
    scores = {}
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            if "score" in row:
                scores.setdefault(set_of(row["source"], bench), []).append(row["score"])
    return scores


def calibrate(scores):
    """Return the threshold that TARGET_TPR of scores reach, by gradgate calibrate's rule."""
    ordered = sorted(scores)
    return ordered[math.floor((1.0 - TARGET_TPR) * len(ordered))]


def mean(values):
    return sum(values) / len(values)


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def sizes_table(info):
    sizes = info["sizes"]
    rows = [["id/fit (calibration part)", sizes.get("id/fit", 0)],
            ["id/test (in-distribution set of every metric)", sizes.get("id/test", 0)],
            ["id-cutout (domain-shift check, not OOD)", sizes.get("id-cutout", 0)]]
    rows += [["ood/" + kind, sizes.get("ood/" + kind, 0)] for kind in OOD_KINDS]
    rows += [["ood/camera-fault/" + fault, sizes.get("ood/camera-fault/" + fault, 0)] for fault in FAULTS]
    rows.append(["**total**", info["images"]])
    return table(["set", "images"], rows)


def detector_table(evals, detector, ood_sets):
    """Return a table of AUROC and both FPR95 conventions, fp32 and int8 side by side, one row per set."""
    header = ["set", "n OOD", "AUROC fp32", "AUROC int8", "FPR95 ID+ fp32", "FPR95 ID+ int8",
              "FPR95 OOD+ fp32", "FPR95 OOD+ int8"]
    keys = ["auroc", "fpr95_id_positive", "fpr95_ood_positive"]

    def cells(name, values):
        row = [name, values["n"]]
        for key in keys:
            for model in MODELS:
                value = values[model][key]
                row.append("%.3f" % value if key == "auroc" else "%.0f%%" % (100.0 * value))
        return row

    def metrics(ood_set):
        result = {"n": evals[MODELS[0]][(detector, ood_set)]["n_ood"]}
        for model in MODELS:
            result[model] = evals[model][(detector, ood_set)]
        return result

    def averaged(sets):
        result = {"n": sum(evals[MODELS[0]][(detector, s)]["n_ood"] for s in sets)}
        for model in MODELS:
            result[model] = {key: mean([evals[model][(detector, s)][key] for s in sets]) for key in keys}
        return result

    rows = [cells(s, metrics(s)) for s in ood_sets]
    content = [s for s in OOD_KINDS if s in ood_sets]
    faults = [s for s in FAULT_SETS if s in ood_sets]
    rows.append(cells("**mean, %d OOD kinds**" % len(content), averaged(content)))
    rows.append(cells("**mean, %d camera faults**" % len(faults), averaged(faults)))
    rows.append(cells("**mean, all %d OOD sets**" % len(content + faults), averaged(content + faults)))
    if (detector, DOMAIN_SHIFT) in evals[MODELS[0]]:
        rows.append(cells("id-cutout (domain shift, not OOD)", metrics(DOMAIN_SHIFT)))
    return table(header, rows)


def summary_table(evals, detectors, ood_sets):
    """Return a table of mean AUROC per detector and model over the OOD kinds, the camera faults and both."""
    content = [s for s in OOD_KINDS if s in ood_sets]
    faults = [s for s in FAULT_SETS if s in ood_sets]
    header = ["detector"]
    for label in ("OOD kinds", "camera faults", "all OOD sets"):
        header += ["%s fp32" % label, "%s int8" % label]
    rows = []
    for detector in detectors:
        row = [detector]
        for sets in (content, faults, content + faults):
            for model in MODELS:
                row.append("%.3f" % mean([evals[model][(detector, s)]["auroc"] for s in sets]))
        rows.append(row)
    return table(header, rows)


def auroc_matrix(evals, model, detectors, ood_sets):
    """Return a table of the AUROC of every detector (columns) on every OOD set (rows) for one model."""
    content = [s for s in OOD_KINDS if s in ood_sets]
    faults = [s for s in FAULT_SETS if s in ood_sets]
    rows = [[s] + ["%.3f" % evals[model][(d, s)]["auroc"] for d in detectors] for s in ood_sets]
    for label, sets in (("**mean, OOD kinds**", content), ("**mean, camera faults**", faults)):
        rows.append([label] + ["%.3f" % mean([evals[model][(d, s)]["auroc"] for s in sets])
                               for d in detectors])
    if (detectors[0], DOMAIN_SHIFT) in evals[model]:
        rows.append(["id-cutout (domain shift)"]
                    + ["%.3f" % evals[model][(d, DOMAIN_SHIFT)]["auroc"] for d in detectors])
    return table([model] + detectors, rows)


def pass_rate(values, threshold):
    return sum(v >= threshold for v in values) / len(values)


def transfer_tables(scores, calibrations):
    """Return the transfer tables: thresholds from id/fit, the pass rates they give and the OOD sets they catch.

    scores is {model: {scorer: {set: [score, ...]}}} and calibrations is {model: bundled calibration}.
    """
    scorers = [s for s in scores[MODELS[0]] if all(s in scores[m] for m in MODELS)]
    header = ["detector"]
    for label in ("threshold", "id/test passing", "id-cutout passing", "id/test passing, bundled threshold"):
        header += ["%s fp32" % label, "%s int8" % label]
    rows = []
    thresholds = {}
    for scorer in scorers:
        row = [scorer]
        for model in MODELS:
            thresholds[(model, scorer)] = calibrate(scores[model][scorer]["id/fit"])
        row += ["%.4g" % thresholds[(model, scorer)] for model in MODELS]
        for name in ("id/test", DOMAIN_SHIFT):
            row += ["%.0f%%" % (100.0 * pass_rate(scores[model][scorer][name], thresholds[(model, scorer)]))
                    for model in MODELS]
        for model in MODELS:
            bundled = calibrations.get(model, {}).get("scorers", {}).get(scorer)
            row.append("%.0f%%" % (100.0 * pass_rate(scores[model][scorer]["id/test"], bundled["threshold"]))
                       if bundled else "n/a")
        rows.append(row)
    out = [table(header, rows)]

    for model in MODELS:
        sets = OOD_KINDS + FAULT_SETS
        caught = []
        for scorer in scorers:
            threshold = thresholds[(model, scorer)]
            caught.append([scorer] + ["%.0f%%" % (100.0 * (1.0 - pass_rate(scores[model][scorer][s], threshold)))
                                      for s in sets])
        out += ["", "OOD images caught at the id/fit threshold, %s:" % model, "",
                table(["detector"] + sets, caught)]
    return "\n".join(out)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bench", default="target/ood-benchmark", help="benchmark folder (default: %(default)s)")
    parser.add_argument("--models-dir", default="models",
                        help="folder with the bundled calibration files (default: %(default)s)")
    args = parser.parse_args()
    results = os.path.join(args.bench, "results")

    with open(os.path.join(args.bench, "build-info.json"), encoding="utf-8") as handle:
        info = json.load(handle)
    evals = {model: read_eval(os.path.join(results, "eval-%s.json" % model)) for model in MODELS}
    # Detectors in gradgate's own order: the closed-form ones, then the fitted ones.
    detectors = list(dict.fromkeys(detector for detector, _ in evals[MODELS[0]]))
    present = {ood_set for _, ood_set in evals[MODELS[0]]}
    ood_sets = [s for s in OOD_KINDS + FAULT_SETS if s in present]
    missing = [s for s in OOD_KINDS + FAULT_SETS if s not in present]
    if missing:
        sys.exit("error: eval output has no rows for %s" % ", ".join(missing))

    out = ["## Set sizes", "",
           "%d manifest rows; %d of them are already bundled in tests/data or models/calibration "
           "and were skipped." % (info["manifest_rows"], info["skipped_as_bundled"]), "",
           sizes_table(info), "",
           "## Mean AUROC", "",
           "Unweighted mean over sets: %d OOD kinds, %d camera faults. id-cutout is not in any mean."
           % (len(OOD_KINDS), len(FAULTS)), "",
           summary_table(evals, detectors, ood_sets), "",
           "## AUROC per OOD set", ""]
    for model in MODELS:
        out += [auroc_matrix(evals, model, detectors, ood_sets), ""]
    out += ["## Per detector", ""]
    for detector in detectors:
        out += ["### %s" % detector, "", detector_table(evals, detector, ood_sets), ""]

    scores = {}
    calibrations = {}
    for model in MODELS:
        scores[model] = {}
        for path in sorted(glob.glob(os.path.join(results, "scores-%s-*.jsonl" % model))):
            scorer = os.path.basename(path)[len("scores-%s-" % model):-len(".jsonl")]
            scores[model][scorer] = read_scores(path, args.bench)
        if not scores[model]:
            sys.exit("error: no scores-%s-*.jsonl in %s; run run.sh first" % (model, results))
        scores[model] = {d: scores[model][d] for d in detectors if d in scores[model]}
        calibration_path = os.path.join(args.models_dir, "efficientnet-lite0-%s.calibration.json" % model)
        if os.path.exists(calibration_path):
            with open(calibration_path, encoding="utf-8") as handle:
                calibrations[model] = json.load(handle)
    fit_size = len(next(iter(scores[MODELS[0]].values()))["id/fit"])
    out += ["## Transfer check", "",
            "Thresholds from id/fit (%d images, index floor(0.05 n) of the ascending scores, as "
            "gradgate calibrate computes them); pass rates on id/test (%d images) and id-cutout; "
            "bundled threshold: the model's calibration file, from models/calibration."
            % (fit_size, len(next(iter(scores[MODELS[0]].values()))["id/test"])), "",
            transfer_tables(scores, calibrations), ""]
    print("\n".join(out))


if __name__ == "__main__":
    main()
