#!/usr/bin/env bash
# Run the OOD benchmark. The script builds the image set if it is missing and
# builds gradgate. For the fp32 and the int8 model, it fits the fitted detectors
# on id/fit, evaluates every detector on id/test against every OOD set, and
# scores every image with every detector for the transfer check. Last,
# report.py writes the markdown tables.
#
# Usage, from anywhere in the checkout:
#   benches/ood-benchmark/run.sh
# Environment:
#   BENCH       image set folder (default: target/ood-benchmark)
#   BENCH_VENV  Python virtual environment with requirements.txt installed,
#               created when missing (default: $BENCH/venv)
#   SCORERS     scorers for the transfer check. By default these are the detectors in
#               the fp32 eval output. A scorer that `gradgate run` rejects is skipped.
# Output goes to $BENCH/results/, which each run replaces:
#   eval-MODEL.json, eval-MODEL.txt   gradgate eval output as JSON lines and as a table
#   plots-MODEL/                      ROC curves and score histograms
#   stats-MODEL.json, fit-MODEL.log   gradgate fit output on id/fit
#   scores-MODEL-SCORER.jsonl         gradgate run output, one line per image
#   run-info.txt                      machine, commit, commands and their wall times
#   tables.md                         report.py output
set -euo pipefail

cd "$(dirname "$0")/../.."
HERE=benches/ood-benchmark
BENCH=${BENCH:-target/ood-benchmark}
BENCH_VENV=${BENCH_VENV:-$BENCH/venv}
RESULTS=$BENCH/results
GRADGATE=target/release/gradgate
OOD_KINDS="texture landscape cartoon painting icon near-blank near-ood"
FAULTS="black gray noise blur overexposed covered"
started=$(date +%s)

if [ ! -x "$BENCH_VENV/bin/python" ]; then
    echo "creating the Python environment $BENCH_VENV"
    timeout 300 python3 -m venv "$BENCH_VENV"
    timeout 600 "$BENCH_VENV/bin/pip" install --quiet -r "$HERE/requirements.txt"
fi
PYTHON=$BENCH_VENV/bin/python

# Rebuild the image set when it is missing or was built from another manifest or build.py.
stamp=$(cat "$HERE/manifest.tsv" "$HERE/build.py" | sha256sum | cut -d ' ' -f 1)
if [ ! -f "$BENCH/build-info.json" ] || [ "$(cat "$BENCH/build-stamp" 2>/dev/null)" != "$stamp" ]; then
    echo "building the image set in $BENCH"
    timeout --foreground 1800 "$PYTHON" "$HERE/build.py" "$BENCH"
    echo "$stamp" > "$BENCH/build-stamp"
fi

echo "building gradgate (release)"
timeout --foreground 1800 cargo build --release --quiet

# Start from an empty results folder and feature cache, so every figure comes from this build.
# The cache is keyed by model and image, not by the code that computed the features.
rm -rf "$RESULTS"
mkdir -p "$RESULTS"
info=$RESULTS/run-info.txt
{
    echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "commit: $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src Cargo.toml Cargo.lock || echo ' (src or Cargo files modified)')"
    echo "nproc: $(nproc)"
    lscpu | head -n 15
    echo
} > "$info"

# One --ood per OOD kind and camera fault, plus the cut-outs: a domain-shift check, not OOD.
sets=()
for kind in $OOD_KINDS; do
    sets+=(--ood "$kind=$BENCH/ood/$kind")
done
for fault in $FAULTS; do
    sets+=(--ood "fault-$fault=$BENCH/ood/camera-fault/$fault")
done
sets+=(--ood "id-cutout=$BENCH/id-cutout")

# Runs a command under a time limit and logs it to run-info.txt with its wall time.
# Exit code 1 (some frames skipped) is accepted because gradgate reports those frames on stderr.
# --foreground keeps the command in the terminal's process group, so Ctrl-C stops it too.
timed() {
    local start status=0
    start=$(date +%s)
    timeout --foreground 1800 "$@" || status=$?
    if [ "$status" -gt 1 ]; then
        echo "error: '$*' failed with exit code $status" >&2
        exit "$status"
    fi
    echo "$* ($(($(date +%s) - start)) s, exit code $status)" >> "$info"
}

for model in fp32 int8; do
    onnx=models/efficientnet-lite0-$model.onnx
    stats=$RESULTS/stats-$model.json
    # The fitted detectors (ReAct, ASH, ViM, KNN, ...) are fitted on id/fit only. A detector
    # that cannot be fitted on so few images is left out of the file, with a warning.
    echo "fitting the fitted detectors on $BENCH/id/fit for $onnx"
    timed "$GRADGATE" fit --model "$onnx" --out "$stats" --cache "$RESULTS/cache" "$BENCH/id/fit" \
        2> "$RESULTS/fit-$model.log"
    echo "evaluating $onnx"
    timed "$GRADGATE" eval --model "$onnx" --stats "$stats" --id "$BENCH/id/test" "${sets[@]}" \
        --cache "$RESULTS/cache" --plots "$RESULTS/plots-$model" --format json \
        > "$RESULTS/eval-$model.json"
    # The same evaluation again as a table, from the feature cache.
    timed "$GRADGATE" eval --model "$onnx" --stats "$stats" --id "$BENCH/id/test" "${sets[@]}" \
        --cache "$RESULTS/cache" --format table > "$RESULTS/eval-$model.txt"

    # Transfer check: every image scored by every detector, for report.py.
    if [ -z "${SCORERS:-}" ]; then
        SCORERS=$("$PYTHON" -c 'import json, sys
names = [json.loads(line)["detector"] for line in open(sys.argv[1]) if line.strip()]
print(" ".join(dict.fromkeys(names)))' "$RESULTS/eval-fp32.json")
    fi
    for scorer in $SCORERS; do
        echo "scoring every image with $scorer on $onnx"
        scores=$RESULTS/scores-$model-$scorer
        command=("$GRADGATE" run --model "$onnx" --stats "$stats" --scorer "$scorer" --threshold -1e30
                 "$BENCH/id" "$BENCH/id-cutout" "$BENCH/ood")
        start=$(date +%s)
        status=0
        timeout --foreground 1800 "${command[@]}" > "$scores.jsonl" 2> "$scores.log" || status=$?
        if [ "$status" -gt 1 ]; then
            echo "warning: gradgate run --scorer $scorer failed with exit code $status, see $scores.log" >&2
            rm -f "$scores.jsonl"
        fi
        echo "${command[*]} ($(($(date +%s) - start)) s, exit code $status)" >> "$info"
    done
done

timeout 300 "$PYTHON" "$HERE/report.py" --bench "$BENCH" > "$RESULTS/tables.md"
echo "total: $(($(date +%s) - started)) s" >> "$info"
echo "results in $RESULTS (tables.md, run-info.txt)"
