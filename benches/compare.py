#!/usr/bin/env python3
"""Compare gradgate with onnxruntime and the official PyTorch GradNorm, in one run.

Run from the repository root after `cargo build --release`, with the packages pinned in
models/requirements-export.txt installed:

    python benches/compare.py                  # prints the table
    python benches/compare.py --write          # also replaces it in docs/benchmarks.md

On the same image and the same ONNX files, one after another in one process run, it times:

- onnxruntime's inference alone (session.run on the preprocessed tensor), for each model
  and thread count;
- the official GradNorm (Huang, Geng and Li, NeurIPS 2021, deeplearning-wisc/gradnorm_ood).
  Per image it runs a forward pass and loss.backward() through the whole PyTorch model, with
  the input requiring grad, then takes the L1 norm of the final layer's weight gradient.
  For comparison, the same backward pass also runs through the final layer alone, from
  cached features;
- gradgate, through `gradgate bench --format json` (whole frame: decode, preprocess, infer,
  head, score, gate; start to first frame; peak resident memory).

It checks that the autograd GradNorm equals the closed form on this image before timing.
The PyTorch model is the one models/export.py exported to the fp32 ONNX file. The gradgate
runtime, its tests and CI never run this script.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "models"))
import export  # noqa: E402  (the preprocessing and model wrapper the ONNX files came from)

MODELS = {
    "fp32": REPO / "models" / "efficientnet-lite0-fp32.onnx",
    "int8": REPO / "models" / "efficientnet-lite0-int8.onnx",
}
IMAGE = REPO / "tests" / "data" / "id" / "espresso-cup.jpg"
BEGIN = "<!-- compare.py: begin -->"
END = "<!-- compare.py: end -->"


def median_ms(fn, repeats: int, warm_up: int = 3) -> float:
    for _ in range(warm_up):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def model_input(path: Path) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    spec = json.loads(session.get_modelmeta().custom_metadata_map[export.META_PREPROCESS])
    return export.normalize(export.preprocess_crop(IMAGE), spec["mean"], spec["std"])


def time_onnxruntime(path: Path, x: np.ndarray, threads: int, repeats: int) -> float:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return median_ms(lambda: session.run(None, {name: x}), repeats)


def official_gradnorm(model: export.FeaturesLogits, x: torch.Tensor, temperature: float = 1.0) -> float:
    """Score one image as gradnorm_ood's iterate_data_gradnorm does, on the CPU."""
    inputs = x.clone().requires_grad_(True)
    model.zero_grad()
    _, outputs = model(inputs)
    targets = torch.ones((inputs.shape[0], outputs.shape[1]))
    outputs = outputs / temperature
    loss = torch.mean(torch.sum(-targets * torch.log_softmax(outputs, dim=-1), dim=-1))
    loss.backward()
    return float(torch.sum(torch.abs(model.fc.weight.grad.data)))


def head_only_gradnorm(fc: torch.nn.Linear, features: torch.Tensor) -> float:
    """Compute the same gradient with autograd through the final layer only, from cached features."""
    fc.zero_grad()
    outputs = fc(features)
    targets = torch.ones_like(outputs)
    loss = torch.mean(torch.sum(-targets * torch.log_softmax(outputs, dim=-1), dim=-1))
    loss.backward()
    return float(torch.sum(torch.abs(fc.weight.grad.data)))


def run_gradgate(binary: Path, threads: list[int], frames: int) -> list[dict]:
    command = [str(binary), "bench", "--format", "json", "--frames", str(frames),
               "--threads", ",".join(map(str, threads))]
    for path in MODELS.values():
        command += ["--model", str(path)]
    command.append(str(IMAGE))
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    if done.returncode != 0:
        raise SystemExit(f"error: {' '.join(command)} failed ({done.returncode}):\n{done.stderr.strip()}")
    out = done.stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def machine() -> str:
    cpu = platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores (`nproc`), Linux {platform.release()}"


def commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, check=True,
                             capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               check=True, capture_output=True, text=True).stdout.strip()
        return f"`{sha}`" + (" with uncommitted changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def thread_list(text: str) -> list[int]:
    """Parse --threads: comma-separated whole numbers from 1 up."""
    try:
        threads = [int(t) for t in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of thread counts") from None
    if not threads or min(threads) < 1:
        raise argparse.ArgumentTypeError(f"'{text}': thread counts start at 1")
    return threads


def positive(text: str) -> int:
    """Parse a whole number from 1 up."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number from 1 up")
    return value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gradgate", type=Path, default=REPO / "target" / "release" / "gradgate")
    parser.add_argument("--threads", type=thread_list, default="1,2", help="comma-separated thread counts")
    parser.add_argument("--repeats", type=positive, default=30, help="timed runs per measurement")
    parser.add_argument("--write", action="store_true", help="replace the table in docs/benchmarks.md")
    args = parser.parse_args()
    threads = args.threads
    # The gradgate runs start in the repository root, so a relative path is resolved here.
    args.gradgate = args.gradgate.resolve()
    if not args.gradgate.is_file():
        print(f"error: {args.gradgate} not found; run `cargo build --release` first", file=sys.stderr)
        return 2

    started = datetime.datetime.now(datetime.timezone.utc)
    inputs = {name: model_input(path) for name, path in MODELS.items()}

    # onnxruntime inference alone.
    ort_ms = {(name, t): time_onnxruntime(path, inputs[name], t, args.repeats)
              for name, path in MODELS.items() for t in threads}

    # The official per-image GradNorm, checked against the closed form first.
    torch.use_deterministic_algorithms(True)
    model = export.build_model()
    x = torch.from_numpy(inputs["fp32"])
    with torch.no_grad():
        features, logits = model(x)
    closed = export.gradnorm_closed_form(features.numpy(), logits.numpy())
    autograd = official_gradnorm(model, x)
    relative = abs(autograd - closed) / closed
    assert relative < 1e-4, f"autograd GradNorm {autograd} != closed form {closed}"
    torch_ms = {}
    for t in threads:
        torch.set_num_threads(t)
        torch_ms[("official", t)] = median_ms(lambda: official_gradnorm(model, x), max(5, args.repeats // 3))
        torch_ms[("head", t)] = median_ms(lambda: head_only_gradnorm(model.fc, features), args.repeats * 10)

    # gradgate, whole frames.
    gradgate = run_gradgate(args.gradgate, threads, args.repeats)
    by = {(Path(r["model"]).name.split("-")[-1].removesuffix(".onnx"), r["threads"]): r for r in gradgate}

    lines = [
        BEGIN,
        "",
        "| | |",
        "|---|---|",
        f"| date | {started:%Y-%m-%d %H:%M} UTC |",
        f"| commit | {commit()} |",
        f"| machine | {machine()} |",
        f"| software | Python {platform.python_version()}, onnxruntime {ort.__version__}, torch {torch.__version__} (CPU), gradgate release build |",
        f"| command | `python benches/compare.py {' '.join(sys.argv[1:])}` |",
        f"| image | `tests/data/id/espresso-cup.jpg` (320 × 240 JPEG) |",
        "",
        f"GradNorm check: autograd {autograd:.6g}, closed form {closed:.6g}, relative difference {relative:.1e}.",
        "",
        "| measurement | " + " | ".join(f"{t} thread{'s' if t > 1 else ''}" for t in threads) + " |",
        "|---|" + "---|" * len(threads),
    ]

    def row(label, cell):
        lines.append(f"| {label} | " + " | ".join(cell(t) for t in threads) + " |")

    for name in MODELS:
        row(f"onnxruntime {name} inference alone", lambda t, n=name: f"{ort_ms[(n, t)]:.2f} ms")
        row(f"gradgate {name} whole frame", lambda t, n=name: f"{by[(n, t)]['frame_median_ms']:.2f} ms")
        row(f"gradgate {name} backbone (tract) alone", lambda t, n=name: f"{by[(n, t)]['backbone_ms']:.2f} ms")
        row(f"**ratio: gradgate {name} frame / onnxruntime {name} inference**",
            lambda t, n=name: f"**{by[(n, t)]['frame_median_ms'] / ort_ms[(n, t)]:.2f}×**")
    row("gradgate int8 frame / onnxruntime fp32 inference",
        lambda t: f"{by[('int8', t)]['frame_median_ms'] / ort_ms[('fp32', t)]:.2f}×")
    row("official GradNorm, forward + backward per image (PyTorch)", lambda t: f"{torch_ms[('official', t)]:.2f} ms")
    row("GradNorm, autograd through the final layer only (PyTorch)", lambda t: f"{torch_ms[('head', t)] * 1e3:.0f} µs")
    row("GradNorm closed form (gradgate, cached activations)", lambda t: f"{by[('fp32', t)]['gradnorm_us']:.1f} µs")
    row("**speed-up: closed form vs official backward pass**",
        lambda t: f"**{torch_ms[('official', t)] * 1e3 / by[('fp32', t)]['gradnorm_us']:,.0f}×**")
    row("speed-up: closed form vs final-layer autograd",
        lambda t: f"{torch_ms[('head', t)] * 1e3 / by[('fp32', t)]['gradnorm_us']:,.0f}×")
    for name in MODELS:
        row(f"GradNorm share of the gradgate {name} frame",
            lambda t, n=name: f"{by[(n, t)]['gradnorm_us'] / 1e3 / by[(n, t)]['frame_median_ms'] * 100:.3f}%")
        row(f"gradgate {name}: start to first frame",
            lambda t, n=name: f"{by[(n, t)]['start_to_first_frame_ms']:.0f} ms")
        row(f"gradgate {name}: peak resident memory",
            lambda t, n=name: f"{by[(n, t)]['peak_rss_mib']:.1f} MiB")
    lines += ["", END]
    table = "\n".join(lines)
    print(table)

    if args.write:
        doc = REPO / "docs" / "benchmarks.md"
        text = doc.read_text()
        if BEGIN in text and END in text:
            head, rest = text.split(BEGIN, 1)
            _, tail = rest.split(END, 1)
            text = head + table + tail
        else:
            text = text.rstrip() + "\n\n" + table + "\n"
        doc.write_text(text)
        print(f"wrote {doc.relative_to(REPO)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
