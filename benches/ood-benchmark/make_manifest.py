#!/usr/bin/env python3
"""Write manifest.tsv from the surveyed candidate lists (a one-time tool).

The candidate lists (id_candidates.tsv and ood_candidates.tsv, given with
--candidates) name real images in Debian packages and the scikit-image wheel,
with the ImageNet-1k class of each in-distribution photo and the licence of
each file. They are not part of the repository, so this script copies the
rows the benchmark uses into manifest.tsv, which build.py then reads alone.
Run it again only to change the selection.

Selection rules:
  * id: photos with background whose main subject is an ImageNet-1k class,
    except grayscale photos, a photo with a text overlay, one whose subject is
    a person, the rows marked "ID?" and the scikit-learn wheel's photos;
  * id-cutout: photo cut-outs on a transparent background (Tux Paint stamps);
  * ood: each candidate kind is mapped to one benchmark kind by KIND_OF;
    logos go to icon, and any OOD image with almost no detail (a flat frame or
    a smooth gradient) goes to near-blank (see is_near_blank). Ambiguous fish photos (ImageNet has 16
    fish classes), microscopy and document scans are left out;
  * files with the same decoded content are kept once, and an OOD photo named
    like an in-distribution photo (tajMahal.webp in two bundles) is left out;
  * each OOD kind keeps at most MAX_PER_KIND files not already bundled in
    tests/data or models/calibration, the first ones in SHA-256 order of
    "package:path". Bundled files stay in the manifest so that build.py can
    report the overlap.

Needs the Debian packages installed and the scikit-image wheel (--wheel-dir).
"""

import argparse
import csv
import hashlib
import os
import re
import sys

import numpy as np

import build

MAX_PER_KIND = 150
NEAR_BLANK_DETAIL = 1.0  # grey levels, see is_near_blank
NEAR_BLANK_BLUR_PX = 4

KIND_OF = {
    "OOD texture (tileable, 48-256 px)": "texture",
    "OOD synthetic pattern": "texture",
    "OOD texture-like close-up": "texture",
    "OOD texture-like close-up (plants/water/wood)": "texture",
    "OOD texture (gray 512x512)": "texture",
    "OOD texture (cardboard)": "texture",
    "OOD texture/astronomy": "texture",
    "OOD synthetic texture/abstract (3D renders)": "texture",
    "OOD scene/landscape (lakeside/sky; NB lakeside is an ImageNet class)": "landscape",
    "OOD scene/landscape": "landscape",
    "OOD scene (underwater; NB coral_reef/scuba_diver are ImageNet classes)": "landscape",
    "OOD scene photo (musicians/stage)": "landscape",
    "landmark/scene photo without clear ImageNet class": "landscape",
    "landmark photo without clear ImageNet class": "landscape",
    "OOD-ish landmark photo (no exact ImageNet class)": "landscape",
    "OOD cartoon (many depict ImageNet-class objects: cartoon domain shift)": "cartoon",
    "OOD cartoon (many depict ImageNet-class objects)": "cartoon",
    "OOD cartoon": "cartoon",
    "OOD drawing (fish sprites, 2 frames each)": "cartoon",
    "OOD drawing/abstract (digital art)": "cartoon",
    "OOD drawing/abstract": "cartoon",
    "OOD drawing/synthetic": "cartoon",
    "OOD abstract/gradient/logo/UI screenshot": "cartoon",
    "OOD painting tiles (24 artworks cut into tiles)": "painting",
    "OOD icon/symbol (letters, ASL hand signs, chess, math, music, road signs, flags)": "icon",
    "OOD near-blank (flat grey / near-black)": "near-blank",
    "OOD blank (flat colour 256x256)": "near-blank",
    "near-OOD object photo (coins)": "near-ood",
    "OOD object photo, non-ImageNet class (coins)": "near-ood",
    "near-OOD object/scene photo (windmills, solar panels: no ImageNet class)": "near-ood",
}
LEFT_OUT_KINDS = {
    "ambiguous fish photos (ImageNet has 16 fish classes)",
    "OOD medical/microscopy",
    "OOD document/text",
}
# In-distribution rows left out, matched on the class column's remark.
ID_LEFT_OUT = re.compile(r"grayscale|gray\)|text overlay|^\(person")


def package_name(cell):
    """Return the package a candidate row names ("scikit-image / python3-skimage" -> scikit-image)."""
    return cell.split(" / ")[0].strip()


def source_path(cell):
    """Map the lists' converted GIMP patterns back to the .pat file in gimp-data."""
    match = re.match(r"^gimp_png/patterns/([A-Za-z]+)_(.+)\.png$", cell)
    if match:
        return "/usr/share/gimp/2.0/patterns/%s/%s.pat" % match.groups()
    return cell


def split_class(cell):
    """Split "ladybug (small in frame)" into the class name and its remark."""
    match = re.match(r"^([^()]+?)\s*\((.*)\)$", cell.strip().strip('"'))
    if match and match.group(1):
        return match.group(1), match.group(2)
    return cell.strip().strip('"'), ""


def is_near_blank(image):
    """Return True when an image has almost no detail at the model's input size.

    Detail is the standard deviation of the luminance, resized to 224 x 224,
    minus its Gaussian blur of radius NEAR_BLANK_BLUR_PX. Flat frames and
    smooth gradients score below NEAR_BLANK_DETAIL, while the faintest GIMP
    pattern in the candidates scores 1.5.
    """
    luminance = image.convert("L").resize((224, 224), build.Image.BILINEAR)
    blurred = luminance.filter(build.ImageFilter.GaussianBlur(NEAR_BLANK_BLUR_PX))
    detail = np.asarray(luminance, dtype=np.float64) - np.asarray(blurred, dtype=np.float64)
    return detail.std() < NEAR_BLANK_DETAIL


def read_candidates(folder, name):
    with open(os.path.join(folder, name), newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def select_id(folder):
    rows = []
    for candidate in read_candidates(folder, "id_candidates.tsv"):
        package = package_name(candidate["package"])
        if package == "scikit-learn" or candidate["kind"] == "ID?":
            continue
        if ID_LEFT_OUT.search(candidate["imagenet_class"]):
            continue
        imagenet_class, remark = split_class(candidate["imagenet_class"])
        imagenet_class = imagenet_class.replace("(bird)", "")
        cutout = candidate["photo"].startswith("photo cut-out")
        note = "; ".join(x for x in (candidate["kind"], candidate["match"] + " match", remark) if x)
        rows.append({"set": "id-cutout" if cutout else "id", "kind": "cutout" if cutout else "photo",
                     "package": package, "path": candidate["path"], "licence": candidate["license"],
                     "imagenet_class": imagenet_class, "note": note})
    return rows


def select_ood(folder):
    rows = []
    for candidate in read_candidates(folder, "ood_candidates.tsv"):
        if candidate["kind"] in LEFT_OUT_KINDS:
            continue
        if candidate["kind"] not in KIND_OF:
            sys.exit("error: candidate kind '%s' has no benchmark kind in KIND_OF" % candidate["kind"])
        path = source_path(candidate["path"])
        kind = KIND_OF[candidate["kind"]]
        if kind == "cartoon" and "logo" in os.path.basename(path).lower():
            kind = "icon"
        note = "; ".join(x for x in (candidate["kind"], candidate["note"]) if x)
        rows.append({"set": "ood", "kind": kind, "package": package_name(candidate["package"]),
                     "path": path, "licence": candidate["license"], "imagenet_class": "", "note": note})
    return rows


def order_key(row):
    return hashlib.sha256(("%s:%s" % (row["package"], row["path"])).encode()).hexdigest()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--candidates", required=True,
                        help="folder with id_candidates.tsv and ood_candidates.tsv")
    parser.add_argument("--wheel-dir", required=True, help="folder with the scikit-image wheel")
    parser.add_argument("--out", default=build.MANIFEST, help="manifest to write (default: %(default)s)")
    args = parser.parse_args()

    sources = build.Sources(args.wheel_dir)
    bundled = build.bundled_sources(build.REPO_ROOT)
    id_rows = select_id(args.candidates)
    photo_names = {build.split_key(row["path"]) for row in id_rows if row["set"] == "id"}

    # Decode every file once: drop content duplicates and move nearly flat images to near-blank.
    seen = {}
    selected = []
    for row in id_rows + select_ood(args.candidates):
        image, _ = build.prepare(row, sources)
        digest = hashlib.sha256(image.tobytes() + repr(image.size).encode()).hexdigest()
        if digest in seen:
            print("same content as %s, left out: %s" % (seen[digest], row["path"]))
            continue
        seen[digest] = row["path"]
        if row["kind"] in ("landscape", "near-ood") and build.split_key(row["path"]) in photo_names:
            print("named like an in-distribution photo, left out: %s" % row["path"])
            continue
        if row["set"] == "ood" and row["kind"] != "near-blank" and is_near_blank(image):
            print("nearly flat, moved from %s to near-blank: %s" % (row["kind"], row["path"]))
            row["note"] += "; moved to near-blank: detail below %g" % NEAR_BLANK_DETAIL
            row["kind"] = "near-blank"
        selected.append(row)

    # Cap each OOD kind, counting only files that build.py will not skip as bundled.
    counts = {}
    manifest = []
    for row in sorted(selected, key=order_key):
        is_bundled = (row["package"], row["path"]) in bundled
        if row["set"] == "ood" and not is_bundled:
            counts[row["kind"]] = counts.get(row["kind"], 0) + 1
            if counts[row["kind"]] > MAX_PER_KIND:
                continue
        manifest.append(row)
    order = {"id": 0, "id-cutout": 1, "ood": 2}
    manifest.sort(key=lambda r: (order[r["set"]], r["kind"], r["package"], r["path"]))

    with open(args.out, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=build.MANIFEST_COLUMNS, delimiter="\t",
                                lineterminator="\n")
        writer.writeheader()
        writer.writerows(manifest)
    for kind, count in sorted(counts.items()):
        print("%-11s %4d candidates not bundled, %4d kept" % (kind, count, min(count, MAX_PER_KIND)))
    print("%d rows written to %s" % (len(manifest), args.out))


if __name__ == "__main__":
    main()
