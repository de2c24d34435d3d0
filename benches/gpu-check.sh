#!/bin/sh
# Compares gradgate's CPU and CUDA backends on the bundled images: `gradgate gpu-check`, with
# a 5-minute limit. Needs no Rust toolchain, only the binary, models/ and tests/data/.
#
# Usage: benches/gpu-check.sh [BINARY] [GPU-CHECK OPTIONS…]
#   BINARY  a gradgate built with --features cuda (CUDA 13) or cuda-12 (JetPack 6)
#           [default: target/release/gradgate beside this script's folder, else gradgate on PATH]
#   Options go to `gradgate gpu-check`, for example
#   --model models/efficientnet-lite0-fp32.onnx to check the fp32 model instead of int8.
#
# To run it on a GPU machine, build and pack on the development machine, from the repository
# root:
#   cargo build --release --features cuda
#   strip target/release/gradgate    # optional: about 40 MB instead of 290 MB of line tables
#   tar -czf gradgate-gpu.tar.gz target/release/gradgate benches/gpu-check.sh models tests/data
#   scp gradgate-gpu.tar.gz HOST:
# and on HOST:
#   mkdir -p gradgate && tar -xzf gradgate-gpu.tar.gz -C gradgate && gradgate/benches/gpu-check.sh
#
# The GPU machine needs the NVIDIA driver and CUDA's runtime libraries: cudart, NVRTC, cuBLAS,
# cuDNN 9, plus the CUDA headers NVRTC compiles tract's kernels with (Debian/Ubuntu packages
# cuda-cudart-dev-VER and cuda-cccl-VER; set CUDA_HOME if they are not under /usr/local/cuda).
# Compiled kernels are cached under $XDG_CACHE_HOME/tract, else ~/.cache/tract.
#
# Exit status: that of gradgate gpu-check (0 the backends agree, 1 they disagree, 2 error,
# 77 no CUDA device, after printing "skipped: no CUDA device (reason)" or "skipped: built
# without CUDA (reason)"), 124 when it ran past 5 minutes, 127 when no binary was found.
set -eu

root=$(cd "$(dirname "$0")/.." && pwd)

# The binary: the first argument unless it is an option, else the build output, else PATH.
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then
    binary=$1
    shift
elif [ -x "$root/target/release/gradgate" ]; then
    binary=$root/target/release/gradgate
elif command -v gradgate >/dev/null 2>&1; then
    binary=$(command -v gradgate)
else
    echo "gpu-check.sh: no gradgate binary: give its path, or build target/release/gradgate" >&2
    exit 127
fi
if [ ! -x "$binary" ]; then
    echo "gpu-check.sh: $binary is not an executable file" >&2
    exit 127
fi
# The script changes to the repository root below, so a relative path must be made absolute.
case "$binary" in
    */*) binary=$(cd "$(dirname "$binary")" && pwd)/$(basename "$binary") ;;
esac

# gradgate finds models/ and the default images relative to the working folder, so image
# and --model arguments are read relative to the repository root too.
for needed in models/efficientnet-lite0-int8.onnx tests/data/id tests/data/ood; do
    if [ ! -e "$root/$needed" ]; then
        echo "gpu-check.sh: $root/$needed is missing; copy models/ and tests/data/ beside benches/" >&2
        exit 2
    fi
done
cd "$root"

echo "gpu-check.sh: $binary gpu-check in $root" >&2
status=0
timeout 300 "$binary" -v gpu-check "$@" || status=$?
if [ "$status" -eq 124 ]; then
    echo "gpu-check.sh: gradgate gpu-check ran past 5 minutes and was stopped" >&2
fi
exit "$status"
