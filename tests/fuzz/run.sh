#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 60) and fails if any input crashes one.
#
#   tests/fuzz/run.sh [SECONDS]
#
# Each target starts from a copy of corpus/<target> in a temporary folder, so the committed
# seeds do not grow. A crashing input is saved under tests/fuzz/artifacts/<target>/, and
# `cargo fuzz run --fuzz-dir tests/fuzz <target> <file>` replays it.
#
# cargo-fuzz builds with a stable toolchain when the sanitizer is off: every flag it passes
# then (-Cpasses=sancov-module, -Cllvm-args=-sanitizer-coverage-*, --cfg fuzzing) is stable.
# AddressSanitizer would need nightly's -Zsanitizer. gradgate and its parsers are safe Rust,
# so the fuzzers look for panics, integer overflows (debug assertions are on) and failed
# asserts.
set -euo pipefail

seconds=${1:-60}
if ! [[ $seconds =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: $0 [SECONDS], with SECONDS a whole number above 0; got '$seconds'" >&2
    exit 2
fi

fuzz_dir=$(cd "$(dirname "$0")" && pwd)
cd "$fuzz_dir/../.."

cargo_fuzz_version=0.13.2
if ! cargo fuzz --version 2>/dev/null | grep -qx "cargo-fuzz $cargo_fuzz_version"; then
    cargo install cargo-fuzz --version "$cargo_fuzz_version" --locked
fi

targets=(mjpeg_stream decode_image)
build_flags=(--fuzz-dir "$fuzz_dir" --sanitizer none --debug-assertions)
cargo fuzz build "${build_flags[@]}"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

failed=()
for target in "${targets[@]}"; do
    cp -r "$fuzz_dir/corpus/$target" "$work/$target"
    log="$work/$target.log"
    echo "fuzzing $target for $seconds s"
    status=0
    cargo fuzz run "${build_flags[@]}" "$target" "$work/$target" -- \
        -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1 || status=$?
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    if [ "$status" -ne 0 ]; then
        tail -n 60 "$log" >&2
        echo "$target: FAILED (exit $status) after ${runs:-an unknown number of} runs" >&2
        failed+=("$target")
    else
        echo "$target: ${runs:-?} runs in $seconds s, no crash"
    fi
done

if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz targets that crashed: ${failed[*]}" >&2
    exit 1
fi
