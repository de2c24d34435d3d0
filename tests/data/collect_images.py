#!/usr/bin/env python3
"""Assemble the test and calibration images from Debian and PyPI packages.

This is a one-time tool. It wrote tests/data/{id,ood,formats}/,
models/calibration/, tests/data/labels.tsv and tests/data/ATTRIBUTION.md.
Nothing at build, test or run time needs it, and the runtime never reads
the package files or the candidate lists it reads.

Inputs (all read-only):
  * files of these Debian 12 packages, installed with
    `apt-get install --no-install-recommends`: gcompris-qt-data,
    tuxpaint-stamps-default, gimp-data, mate-backgrounds, desktop-base,
    plasma-workspace-wallpapers, gnome-backgrounds;
  * the scikit-image wheel from PyPI, fetched with
    `pip download --no-deps scikit-image -d WHEEL_DIR`;
  * optionally, the surveyed candidate lists id_candidates.tsv and
    ood_candidates.tsv, read from the folder given with --candidates (the
    shared data-sources folder outside the repository). The script then
    prints every selected file whose ImageNet class or match differs from
    its row, or that has no row.

GCompris stores its images inside Qt binary resource bundles
(/usr/share/gcompris-qt/rcc/*.rcc); `read_rcc` below parses that format.
Requires Pillow, numpy and zstandard.
"""

import argparse
import csv
import glob
import io
import os
import re
import struct
import subprocess
import sys
import zipfile
import zlib
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

MAX_SHORT_SIDE = 320
JPEG_QUALITY = 90
GCOMPRIS_RCC_DIR = "/usr/share/gcompris-qt/rcc"
TUX = "/usr/share/tuxpaint/stamps/"
TUX_PKG = "tuxpaint-stamps-default"
TUX_LICENCE = "GPL-2 (Debian copyright of tuxpaint-stamps-default)"
GC_PKG = "gcompris-qt-data"
GC_ERASE = "rcc:erase:gcompris/src/activities/erase/resource/"
GC_CAT = "rcc:categorization:gcompris/src/activities/categorization/resource/images/"
GC_MON = "rcc:explore_monuments:gcompris/src/activities/explore_monuments/resource/"
GC_MUSIC = "rcc:explore_world_music:gcompris/src/activities/explore_world_music/resource/music/"
GC_PAINT = "rcc:paintings:gcompris/src/activities/paintings/resource/image/"
GC_LANG = "rcc:lang:gcompris/src/activities/lang/resource/words_sample/"


@dataclass
class Item:
    """One output image and where it comes from."""

    dest: str  # repository path relative to the repository root
    set: str  # id, ood, calibration or formats
    kind: str  # photo or cut-out for id/calibration, OOD kind, or format name
    package: str
    path: str  # /usr/... file, wheel:PACKAGE/PATH or rcc:BUNDLE:PATH
    imagenet_class: str = ""
    match: str = ""
    author: str = ""  # filled from the GCompris README when left empty
    licence: str = ""
    note: str = ""
    keep_alpha: bool = False
    derive: str = ""  # format conversion for set == formats
    changes: list = field(default_factory=list)


def photo(dest, set_, path, cls, match, kind="photo", **kw):
    package = GC_PKG if path.startswith("rcc:") else kw.pop("package")
    return Item(dest, set_, kind, package, path, cls, match, **kw)


def tux(dest, set_, kind, rel, cls="", match="", author="", licence=TUX_LICENCE, **kw):
    return Item(dest, set_, kind, TUX_PKG, TUX + rel, cls, match, author, licence, **kw)


SKIMAGE = "scikit-image"
SKLEARN = "scikit-learn"
MATE = "mate-backgrounds"

# In-distribution test photos (tests/data/id).
ID_ITEMS = [
    photo("tests/data/id/llama-alpaca.jpg", "id", GC_ERASE + "alpaca.webp", "llama", "exact"),
    photo("tests/data/id/bee-pollinating.jpg", "id", GC_ERASE + "bee.webp", "bee", "exact"),
    photo("tests/data/id/ox-calf.jpg", "id", GC_ERASE + "calf.webp", "ox", "exact"),
    photo("tests/data/id/african-chameleon-branch.jpg", "id", GC_ERASE + "chamaeleon.webp",
          "African_chameleon", "exact"),
    photo("tests/data/id/cheetah-grass.jpg", "id", GC_ERASE + "cheetah.webp", "cheetah", "exact"),
    photo("tests/data/id/gorilla-mountain.jpg", "id", GC_ERASE + "gorilla.webp", "gorilla", "exact"),
    photo("tests/data/id/sorrel-horse.jpg", "id", GC_ERASE + "horse.webp", "sorrel", "exact"),
    photo("tests/data/id/tabby-kitten.jpg", "id", GC_ERASE + "kitten.webp", "tabby/tiger_cat", "exact"),
    photo("tests/data/id/proboscis-monkey-mother.jpg", "id", GC_ERASE + "long_nosed_monkey.webp",
          "proboscis_monkey", "exact"),
    photo("tests/data/id/meerkat-group.jpg", "id", GC_ERASE + "meerkats.webp", "meerkat", "exact"),
    photo("tests/data/id/lesser-panda-branch.jpg", "id", GC_ERASE + "red_panda.webp",
          "lesser_panda", "exact"),
    photo("tests/data/id/goldfish-side.jpg", "id", GC_CAT + "fishes/fish25.webp", "goldfish", "exact"),
    photo("tests/data/id/anemone-fish-clownfish.jpg", "id", GC_CAT + "fishes/fish9.webp",
          "anemone_fish", "exact"),
    photo("tests/data/id/hammer-claw-gravel.jpg", "id", GC_CAT + "tools/hammer4.webp", "hammer", "exact"),
    photo("tests/data/id/screwdriver-phillips.jpg", "id", GC_CAT + "tools/screwDriver1.webp",
          "screwdriver", "exact"),
    photo("tests/data/id/baseball-closeup.jpg", "id", GC_CAT + "others/baseball.webp", "baseball", "exact"),
    photo("tests/data/id/volleyball-beach-ball.jpg", "id", GC_CAT + "others/volleyball.webp",
          "volleyball", "exact"),
    photo("tests/data/id/frying-pan-cast-iron.jpg", "id", GC_CAT + "others/pan.webp", "frying_pan", "exact"),
    photo("tests/data/id/espresso-cup.jpg", "id", "wheel:skimage/data/coffee.png", "espresso/cup", "exact",
          package=SKIMAGE, author="Rachel Michetti (courtesy of Pikolo Espresso Bar)",
          licence="CC0-1.0 (skimage.data.coffee docstring)"),
    photo("tests/data/id/triumphal-arch-carrousel.jpg", "id", GC_CAT + "monuments/arcDeTriomphe.webp",
          "triumphal_arch", "exact"),
    photo("tests/data/id/castle-neuschwanstein.jpg", "id", GC_MON + "germany/neuschwansteinCastle.webp",
          "castle", "exact"),
    photo("tests/data/id/drum-bata.jpg", "id", GC_MUSIC + "africa.webp", "drum", "exact"),
    tux("tests/data/id/fire-engine-cutout.png", "id", "cut-out", "vehicles/emergency/firetruck.png",
        "fire_engine", "exact", keep_alpha=True,
        author="Aaron M. Lang (photo, Wikipedia user LangAM); prepared by Bill Kendrick",
        licence="CC-BY-2.5 (upstream changelog); GPL-2 (Debian copyright)"),
    tux("tests/data/id/airliner-cutout.png", "id", "cut-out", "vehicles/flight/planes/747.png",
        "airliner", "exact", keep_alpha=True,
        author="Albert Cahalan (upstream changelog: \"Great big airplane\")"),
    tux("tests/data/id/brown-bear-cutout.jpg", "id", "cut-out", "animals/mammals/bears/european-bear.png",
        "brown_bear", "exact", author="Pere Pujal i Carabantes",
        licence="GPL-2+ (upstream changelog); GPL-2 (Debian copyright)"),
]

# In-distribution calibration photos (models/calibration), disjoint from ID_ITEMS.
CAL = "models/calibration/"
CALIBRATION_ITEMS = [
    photo(CAL + "gibbon-lar.jpg", "calibration", GC_ERASE + "gibbon.webp", "gibbon", "exact"),
    photo(CAL + "macaque-bonnet.jpg", "calibration", GC_ERASE + "macaque.webp", "macaque", "exact"),
    photo(CAL + "ibex-nubian.jpg", "calibration", GC_ERASE + "nubian_ibex.webp", "ibex", "exact"),
    photo(CAL + "goose-gosling.jpg", "calibration", GC_ERASE + "gosling.webp", "goose", "exact"),
    photo(CAL + "spoonbill-pair.jpg", "calibration", GC_ERASE + "spoonbills.webp", "spoonbill", "exact"),
    photo(CAL + "arabian-camel-bactrian.jpg", "calibration", GC_ERASE + "camels.webp",
          "Arabian_camel", "near"),
    photo(CAL + "rock-crab-sally-lightfoot.jpg", "calibration", GC_ERASE + "crab.webp", "rock_crab", "near"),
    photo(CAL + "admiral-glassy-tiger-butterfly.jpg", "calibration", GC_ERASE + "butterfly.webp",
          "admiral/monarch", "near"),
    photo(CAL + "king-penguin-chinstrap.jpg", "calibration", GC_ERASE + "penguin.webp",
          "king_penguin", "near"),
    photo(CAL + "fox-squirrel-red-squirrel.jpg", "calibration", GC_ERASE + "squirrel.webp",
          "fox_squirrel", "near"),
    photo(CAL + "toucan-collared-aracari.jpg", "calibration", GC_ERASE + "toucan.webp", "toucan", "near"),
    photo(CAL + "little-blue-heron-purple-heron.jpg", "calibration", GC_ERASE + "heron.webp",
          "little_blue_heron", "near"),
    photo(CAL + "kite-northern-harrier.jpg", "calibration", GC_ERASE + "northern_harrier.webp",
          "kite", "near", note="The list writes the class as kite(bird); ImageNet-1k names it kite."),
    photo(CAL + "tabby-chelsea.jpg", "calibration", "wheel:skimage/data/chelsea.png",
          "tabby/tiger_cat/Egyptian_cat", "exact", package=SKIMAGE,
          author="Stefan van der Walt", licence="CC0-1.0 (skimage.data.chelsea docstring)"),
    photo(CAL + "hammer-sledgehammer.jpg", "calibration", GC_CAT + "tools/hammer3.webp", "hammer", "exact"),
    photo(CAL + "hammer-blue-background.jpg", "calibration", GC_CAT + "tools/hammer1.webp", "hammer", "exact"),
    photo(CAL + "bucket-milk-pail.jpg", "calibration", GC_CAT + "others/bucket.webp", "bucket", "exact"),
    photo(CAL + "cup-fermanagh.jpg", "calibration", GC_CAT + "others/cup.webp", "cup", "exact"),
    photo(CAL + "pillow-bed.jpg", "calibration", GC_CAT + "others/pillow.webp", "pillow", "exact"),
    photo(CAL + "rubber-eraser-shreddings.jpg", "calibration", GC_CAT + "others/erasers.webp",
          "rubber_eraser", "exact"),
    photo(CAL + "scale-lab-balance.jpg", "calibration", GC_CAT + "others/weighingMachine.webp",
          "scale", "exact"),
    photo(CAL + "puffer-spotted.jpg", "calibration", GC_CAT + "fishes/fish28.webp", "puffer", "exact"),
    photo(CAL + "dam-bekes.jpg", "calibration", GC_CAT + "renewable/dam2.webp", "dam", "exact"),
    photo(CAL + "geyser-geothermal-plant.jpg", "calibration", GC_CAT + "renewable/geothermal.webp",
          "geyser", "exact"),
    photo(CAL + "solar-dish-cooker.jpg", "calibration", GC_CAT + "renewable/solar1.webp",
          "solar_dish", "exact"),
    photo(CAL + "triumphal-arch-india-gate.jpg", "calibration", GC_CAT + "monuments/IndiaGate.webp",
          "triumphal_arch", "exact"),
    photo(CAL + "church-santiago-cathedral.jpg", "calibration", GC_CAT + "monuments/cathedral.webp",
          "church", "exact"),
    photo(CAL + "mosque-dome-of-the-rock.jpg", "calibration", GC_CAT + "monuments/monument1.webp",
          "mosque", "exact"),
    photo(CAL + "dome-us-capitol.jpg", "calibration", GC_CAT + "monuments/usCapitol.webp", "dome", "exact"),
    photo(CAL + "palace-mysore.jpg", "calibration", GC_MON + "india/mysorePalace.webp", "palace", "exact"),
    photo(CAL + "castle-carcassonne.jpg", "calibration", GC_MON + "france/citedeCarcassonne.webp",
          "castle", "exact"),
    photo(CAL + "viaduct-pont-du-gard.jpg", "calibration", GC_MON + "france/pontduGard.webp",
          "viaduct", "exact"),
    photo(CAL + "stupa-sanchi.jpg", "calibration", GC_MON + "india/greatStupa.webp", "stupa", "exact"),
]


def ood(kind, name, package, path, author="", licence="", note=""):
    return Item("tests/data/ood/%s/%s" % (kind, name), "ood", kind, package, path,
                author=author, licence=licence, note=note)


def painting(name, tile, artist):
    return ood("painting", name, GC_PKG, GC_PAINT + tile,
               "%s (artwork, public domain); scan from the WebMuseum (Nicolas Pioch, 1994-2006), "
               "puzzle tile by Bruno Coudoin (2008)" % artist,
               "GPL-3+ (GCompris README, following the WebMuseum licence)")


MATE_DIR = "/usr/share/backgrounds/mate/"
OOD_ITEMS = [
    # Textures.
    ood("texture", "gravel-gray.jpg", SKIMAGE, "wheel:skimage/data/gravel.png",
        "CC0Textures (texture Gravel04)", "CC0-1.0 (skimage.data.gravel docstring)"),
    ood("texture", "wood-grain.jpg", MATE, MATE_DIR + "nature/Wood.jpg",
        "Jean-François Fortin Tam", "GPL-2+"),
    ood("texture", "grass-meadow-closeup.jpg", MATE, MATE_DIR + "nature/GreenMeadow.jpg",
        "Timothy Schellhase; Lapo Calamandrei", "GPL-2+"),
    ood("texture", "cardboard.jpg", GC_PKG,
        "rcc:digital_electricity:gcompris/src/activities/digital_electricity/resource/texture01.webp"),
    ood("texture", "marble-gimp.jpg", "gimp-data", "/usr/share/gimp/2.0/scripts/images/texture.jpg",
        "Spencer Kimball, Peter Mattis and the GIMP Development Team", "GPL-3+"),
    # Landscapes.
    ood("landscape", "forest-path.jpg", "plasma-workspace-wallpapers",
        "/usr/share/wallpapers/Path/contents/images/2560x1600.jpg",
        "Risto Saukonpää (metadata.json)", "LGPL-3 (metadata.json); GPL-2+ (Debian copyright, Files: *)"),
    ood("landscape", "storm-road.jpg", MATE, MATE_DIR + "nature/Storm.jpg", "Sergey Nazarov", "GPL-2+"),
    ood("landscape", "dune-grass.jpg", MATE, MATE_DIR + "nature/Dune.jpg",
        "Marco Cogoni; Hylke Bons", "GPL-2+",
        note="Sea in the background; ImageNet-1k has a seashore scene class."),
    ood("landscape", "canyon-de-chelly.jpg", GC_PKG, GC_MON + "usa/canyondeChelly.webp",
        note="ImageNet-1k has valley and cliff scene classes."),
    # Cartoons and drawings.
    ood("cartoon", "dragon.jpg", GC_PKG, GC_LANG + "dragon.webp", "Art4Apps project",
        "CC-BY-SA-3.0 (Debian copyright)"),
    ood("cartoon", "family.jpg", GC_PKG, GC_LANG + "family.webp", "Art4Apps project",
        "CC-BY-SA-3.0 (Debian copyright)"),
    ood("cartoon", "giraffe.jpg", GC_PKG, GC_LANG + "giraffe.webp", "Art4Apps project",
        "CC-BY-SA-3.0 (Debian copyright)", note="ImageNet-1k has no giraffe class."),
    ood("cartoon", "snowman.jpg", TUX_PKG, TUX + "people/cartoon/snowman.png",
        "Anna Bujak (Google Code-in, upstream changelog)", TUX_LICENCE),
    ood("cartoon", "fire-engine-drawing.jpg", TUX_PKG, TUX + "vehicles/emergency/cartoon/fire_engine.png",
        "Jim Trice (upstream changelog)", TUX_LICENCE,
        note="Drawing of an ImageNet class (fire_engine): a change of style, not of subject."),
    # Icons and symbols.
    ood("icon", "recycle-symbol.jpg", TUX_PKG, TUX + "symbols/recycle.png",
        "Caroline Ford (upstream changelog)", TUX_LICENCE),
    ood("icon", "sign-language-a.jpg", TUX_PKG, TUX + "symbols/alphabets/asl/asl_a.png",
        "Caroline Ford, traced from a public-domain drawing by Wikipedia user Ds13",
        "Public domain (upstream changelog); GPL-2 (Debian copyright)"),
    ood("icon", "treble-clef.jpg", TUX_PKG, TUX + "symbols/music/clef0_treble.png",
        "Tux Paint contributors (file author not recorded)", TUX_LICENCE),
    ood("icon", "speech-balloon.jpg", TUX_PKG, TUX + "symbols/shapes/speech_balloon.png",
        "Steve Karg (upstream changelog)", TUX_LICENCE),
    # Paintings (one puzzle tile of each artwork).
    painting("van-gogh-auvers-tile.jpg", "gogh_auvert_3.webp", "Vincent van Gogh"),
    painting("cassatt-summertime-tile.jpg", "cassat_summertime_3.webp", "Mary Cassatt"),
    painting("hokusai-great-wave-tile.jpg", "GreatWave_b2.webp", "Katsushika Hokusai"),
    painting("kandinsky-tile.jpg", "kandinky_4.webp", "Wassily Kandinsky"),
    painting("renoir-moulin-de-la-galette-tile.jpg", "renoir-moulin_de_la_galette-3.webp",
             "Pierre-Auguste Renoir"),
    # Near-blank frames and gradients.
    ood("near-blank", "flat-dark-gnome-vnc.jpg", "gnome-backgrounds", "/usr/share/backgrounds/gnome/vnc-d.webp",
        "GNOME design team (the Debian copyright file names no author for this file)",
        "CC-BY-SA-3.0 / GPL-2+ (Debian copyright)"),
    ood("near-blank", "flat-grey-gnome-vnc.jpg", "gnome-backgrounds", "/usr/share/backgrounds/gnome/vnc-l.webp",
        "GNOME design team (the Debian copyright file names no author for this file)",
        "CC-BY-SA-3.0 / GPL-2+ (Debian copyright)"),
    ood("near-blank", "near-black-mate.jpg", MATE, MATE_DIR + "desktop/Ubuntu-Mate-Dark-no-logo.png",
        "Goce Mitevski", "CC-BY-SA-4.0"),
    ood("near-blank", "gradient-grey-blue.jpg", "desktop-base",
        "/usr/share/desktop-base/futureprototype-theme/plymouth/plymouth_background_future.png",
        "Alex Makas", "GPL-2+"),
    ood("near-blank", "gradient-dark-blue.jpg", "desktop-base",
        "/usr/share/desktop-base/spacefun-theme/plymouth/background.png",
        "Valessio Brito", "GPL-2"),
    # Near-OOD: real photos of objects that have no ImageNet-1k class.
    ood("near-ood", "coins-greek.jpg", SKIMAGE, "wheel:skimage/data/coins.png",
        "Brooklyn Museum (Greek coins from Pompeii)",
        "No known copyright restrictions (skimage.data.coins docstring)"),
    ood("near-ood", "coin-us-half-dollar.jpg", TUX_PKG, TUX + "symbols/money/us/coins/050kennedy-halfdollar.png",
        "Tux Paint contributors (file author not recorded)", TUX_LICENCE),
    ood("near-ood", "windmill-rhodes.jpg", GC_PKG, GC_CAT + "renewable/windmill1.webp"),
    ood("near-ood", "wind-turbine.jpg", GC_PKG, GC_CAT + "renewable/windmill6.webp"),
    ood("near-ood", "solar-panels-tracker.jpg", GC_PKG, GC_CAT + "renewable/solar4.webp"),
]

# Decoder cases derived from images selected above. `derive` names the conversion.
FMT = "tests/data/formats/"
FORMAT_ITEMS = [
    Item(FMT + "grayscale-cheetah.jpg", "formats", "grayscale-jpeg", GC_PKG, GC_ERASE + "cheetah.webp",
         "cheetah", "exact", derive="grayscale"),
    Item(FMT + "cmyk-tabby-kitten.jpg", "formats", "cmyk-jpeg", GC_PKG, GC_ERASE + "kitten.webp",
         "tabby/tiger_cat", "exact", derive="cmyk"),
    Item(FMT + "rgba-brown-bear.png", "formats", "rgba-png", TUX_PKG,
         TUX + "animals/mammals/bears/european-bear.png", "brown_bear", "exact",
         "Pere Pujal i Carabantes", "GPL-2+ (upstream changelog); GPL-2 (Debian copyright)",
         derive="rgba"),
    Item(FMT + "webp-lesser-panda.webp", "formats", "webp", GC_PKG, GC_ERASE + "red_panda.webp",
         "lesser_panda", "exact", derive="webp"),
    Item(FMT + "png16-espresso-cup.png", "formats", "png-16bit", SKIMAGE, "wheel:skimage/data/coffee.png",
         "espresso/cup", "exact", "Rachel Michetti (courtesy of Pikolo Espresso Bar)",
         "CC0-1.0 (skimage.data.coffee docstring)", derive="png16"),
    Item(FMT + "progressive-castle.jpg", "formats", "progressive-jpeg", GC_PKG,
         GC_MON + "germany/neuschwansteinCastle.webp", "castle", "exact", derive="progressive"),
]

ALL_ITEMS = ID_ITEMS + CALIBRATION_ITEMS + OOD_ITEMS + FORMAT_ITEMS


# --- Qt resource bundles ---------------------------------------------------

def read_rcc(path):
    """Return {resource path: bytes} for a Qt binary resource file (.rcc).

    Layout (Qt's rcc format versions 1 to 3, big-endian): the magic "qres",
    the format version, then offsets of the node tree, the data and the names.
    A tree node is 14 bytes (22 from version 2, with a modification time):
    name offset, flags, then either child count and first child index
    (directory) or locale and data offset (file). Flag 1 marks a zlib payload
    prefixed with its 4-byte uncompressed size, flag 4 a zstd payload.
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
    """Reader for source files named in the candidate-list path syntax."""

    def __init__(self, wheel_dir):
        self.wheel_dir = wheel_dir
        self.bundles = {}
        self.wheels = {}

    def wheel(self, top_package):
        if top_package not in self.wheels:
            project = {"skimage": "scikit_image", "sklearn": "scikit_learn"}[top_package]
            matches = sorted(glob.glob(os.path.join(self.wheel_dir, project + "-*.whl")))
            if not matches:
                sys.exit("missing wheel %s-*.whl in %s; run pip download first" % (project, self.wheel_dir))
            self.wheels[top_package] = matches[-1]
        return self.wheels[top_package]

    def wheel_version(self, top_package):
        return os.path.basename(self.wheel(top_package)).split("-")[1]

    def bundle(self, name):
        if name not in self.bundles:
            self.bundles[name] = read_rcc(os.path.join(GCOMPRIS_RCC_DIR, name + ".rcc"))
        return self.bundles[name]

    def read(self, path):
        if path.startswith("rcc:"):
            _, bundle, inner = path.split(":", 2)
            return self.bundle(bundle)[inner]
        if path.startswith("wheel:"):
            inner = path[len("wheel:"):]
            with zipfile.ZipFile(self.wheel(inner.split("/")[0])) as wheel:
                return wheel.read(inner)
        with open(path, "rb") as handle:
            return handle.read()

    def gcompris_credit(self, path):
        """Return (author, licence, source URL, upstream changes) from the README next to an rcc file."""
        _, bundle, inner = path.split(":", 2)
        files = self.bundle(bundle)
        directory = inner
        while "/" in directory:
            directory = directory.rsplit("/", 1)[0]
            readme = directory + "/README"
            if readme not in files:
                continue
            relative = inner[len(directory) + 1:]
            for block in parse_readme(files[readme].decode("utf-8")):
                if relative in block["files"]:
                    comment = block.get("comments", block.get("comment", ""))
                    return (block.get("copyright", ""), normalise_licence(block.get("license", "")),
                            block.get("source", ""), comment)
        return "", "", "", ""


def normalise_licence(text):
    """Write GCompris README licence names as SPDX-style identifiers (CC-BY-SA 4.0 -> CC-BY-SA-4.0)."""
    text = re.sub(r"^(CC-BY(?:-SA)?) (\d\.\d)$", r"\1-\2", text.strip())
    return {"GPLv2+": "GPL-2+", "GPLv3 or later": "GPL-3+"}.get(text, text)


def parse_readme(text):
    """Split a GCompris resource README into blocks of Copyright/License/Source/Files."""
    blocks = []
    for chunk in re.split(r"\n\s*\n", text):
        block = {"files": []}
        key = None
        for line in chunk.splitlines():
            match = re.match(r"^(Copyright|License|Source|Comments?|Files):\s*(.*)$", line)
            if match:
                key = match.group(1).lower()
                value = match.group(2).strip()
                if key == "files":
                    if value:
                        block["files"].append(value)
                else:
                    block[key] = value
            elif key == "files" and line.strip():
                block["files"].append(line.strip())
            elif key and line.strip():
                block[key] = (block[key] + " " + line.strip()).strip()
        if block["files"]:
            blocks.append(block)
    return blocks


# --- image processing -------------------------------------------------------

def downscale(image):
    """Resize so the shorter side is at most MAX_SHORT_SIDE (LANCZOS, never upscale)."""
    width, height = image.size
    short = min(width, height)
    if short <= MAX_SHORT_SIDE:
        return image
    scale = MAX_SHORT_SIDE / short
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return image.resize(size, Image.LANCZOS)


def flatten_on_white(image):
    background = Image.new("RGBA", image.size, (255, 255, 255, 255))
    background.alpha_composite(image.convert("RGBA"))
    return background.convert("RGB")


def has_transparency(image):
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        alpha = image.convert("RGBA").getchannel("A")
        return alpha.getextrema()[0] < 255
    return False


def normalise(image, item):
    """Return an RGB, L or RGBA image ready to save, and record what was done."""
    if getattr(image, "n_frames", 1) > 1:
        image.seek(0)
        item.changes.append("first frame only")
    if has_transparency(image):
        if item.keep_alpha or item.derive == "rgba":
            return image.convert("RGBA")
        item.changes.append("alpha flattened onto white")
        return flatten_on_white(image)
    if image.mode in ("L", "I;16", "I"):
        if image.mode != "L":
            item.changes.append("converted from %s to 8-bit grayscale" % image.mode)
        return image.convert("L")
    if image.mode != "RGB":
        item.changes.append("converted from %s to RGB" % image.mode)
    return image.convert("RGB")


def write_png16(path, rgb):
    """Write an 8-bit RGB image as a 16-bit-per-channel PNG (value * 257)."""
    array = np.asarray(rgb, dtype=np.uint16) * 257
    height, width, _ = array.shape
    rows = b"".join(b"\x00" + array[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind, payload):
        crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    with open(path, "wb") as handle:
        handle.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b""))


def save(item, image, root):
    out = os.path.join(root, item.dest)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    derive = item.derive
    if derive == "grayscale":
        image = image.convert("L")
        item.changes.append("converted to 8-bit grayscale")
    elif derive == "cmyk":
        image = image.convert("CMYK")
        item.changes.append("converted to CMYK (Pillow convert('CMYK'))")
    elif derive == "png16":
        write_png16(out, image.convert("RGB"))
        item.changes.append("written as 16-bit-per-channel RGB PNG (8-bit value * 257)")
        return out
    if out.endswith(".png"):
        image.save(out, optimize=True)
    elif out.endswith(".webp"):
        image.save(out, quality=JPEG_QUALITY, method=6)
        item.changes.append("re-encoded as lossy WebP, quality %d" % JPEG_QUALITY)
    elif derive == "progressive":
        image.save(out, quality=JPEG_QUALITY, progressive=True, optimize=True)
        item.changes.append("saved as progressive JPEG, quality %d" % JPEG_QUALITY)
    else:
        image.save(out, quality=JPEG_QUALITY, optimize=True)
        item.changes.append("saved as JPEG, quality %d" % JPEG_QUALITY)
    return out


def process(item, sources, root):
    raw = Image.open(io.BytesIO(sources.read(item.path)))
    raw.load()
    image = normalise(raw, item)
    resized = downscale(image)
    if resized.size != image.size:
        item.changes.insert(0, "downscaled from %dx%d to %dx%d (LANCZOS)" % (image.size + resized.size))
    else:
        item.changes.insert(0, "kept at %dx%d (no upscaling)" % image.size)
    if item.keep_alpha or item.derive == "rgba":
        item.changes.append("alpha channel kept, saved as RGBA PNG")
    return save(item, resized, root)


# --- credits ----------------------------------------------------------------

def debian_versions(packages):
    output = subprocess.run(["dpkg-query", "-W"] + sorted(packages), check=True,
                            capture_output=True, text=True).stdout
    return dict(line.split("\t", 1) for line in output.splitlines())


def fill_credits(item, sources, versions):
    if item.package in (SKIMAGE, SKLEARN):
        top = item.path[len("wheel:"):].split("/")[0]
        item.origin = "PyPI %s %s (wheel)" % (item.package, sources.wheel_version(top))
    else:
        item.origin = "Debian %s %s" % (item.package, versions[item.package])
    item.source_url = ""
    if item.path.startswith("rcc:"):
        author, licence, url, upstream_changes = sources.gcompris_credit(item.path)
        item.source_url = url
        if upstream_changes:
            item.note = ("GCompris changed the original: %s." % upstream_changes + " " + item.note).strip()
        item.author = item.author or author
        item.licence = item.licence or licence
    if not item.author or not item.licence:
        sys.exit("no author or licence recorded for %s" % item.path)


def check_against_candidates(items, candidates_dir):
    """Print differences between the selection and the surveyed candidate lists."""
    rows = {}
    for name in ("id_candidates.tsv", "ood_candidates.tsv"):
        with open(os.path.join(candidates_dir, name), newline="") as handle:
            for row in csv.DictReader(handle, delimiter="\t"):
                rows[row["path"]] = row
    for item in items:
        row = rows.get(item.path)
        if row is None:
            print("not in the candidate lists: %s" % item.path)
            continue
        if item.set in ("id", "calibration") and row["match"] != item.match:
            print("match differs for %s: list %s, selection %s" % (item.path, row["match"], item.match))
        if item.set in ("id", "calibration") and row["imagenet_class"] != item.imagenet_class:
            print("class differs for %s: list %s, selection %s"
                  % (item.path, row["imagenet_class"], item.imagenet_class))


def markdown_cell(text):
    return text.replace("|", "\\|").replace("\n", " ")


LICENCE_NOTES = """\
## Licences

Every file listed here keeps the licence of the file it was made from,
whatever licence the rest of the repository uses. Downscaling,
format conversion and flattening transparency onto white are modifications,
so the Changes column lists them, as CC-BY-SA, CC-BY and the GPL ask.

- **Public domain and CC0-1.0** (most GCompris object and building photos,
  the scikit-image photos): reuse has no conditions. The author is credited
  anyway.
- **CC-BY-2.0, CC-BY-2.5, CC-BY-3.0**: reuse needs credit to the author, a
  link to the licence and a note of changes (this table).
- **CC-BY-SA-3.0, CC-BY-SA-4.0** (most GCompris animal photos, Art4Apps
  drawings, MATE and GNOME backgrounds): the CC-BY conditions apply, and
  derived images must be shared under the same licence.
- **GPL-2, GPL-2+, GPL-3+, LGPL-3** (Tux Paint stamps, MATE, desktop-base and
  GIMP images, GCompris painting tiles, the Plasma wallpaper): the image may
  be redistributed and modified under that licence. The original files are
  in the Debian packages named in the table (`apt-get source PACKAGE` for the
  source package).

Where two licences are given, the first comes from the record closest to the
file (a GCompris resource README, a Plasma metadata.json or the Tux Paint
upstream changelog) and the second from the package's Debian copyright file.
Some Tux Paint stamps were made from Wikimedia Commons photos under CC-BY,
CC-BY-SA or GFDL, while the Debian copyright file lists the whole package as
GPL-2. Both are given where the changelog names the source photo.

The GCompris painting tiles are puzzle pieces of old public-domain artworks.
GCompris ships them under GPL-3+ because the WebMuseum scans they come from
were released under that licence.
"""


def write_attribution(items, root):
    lines = [
        "# Image attribution",
        "",
        "Images under tests/data/ and models/calibration/ were copied from Debian 12",
        "and PyPI packages by tests/data/collect_images.py, downscaled so the shorter",
        "side is at most %d px (Pillow LANCZOS, never upscaled) and saved as JPEG" % MAX_SHORT_SIDE,
        "quality %d unless the Changes column says otherwise. `rcc:BUNDLE:PATH` is a" % JPEG_QUALITY,
        "file inside the Qt resource bundle /usr/share/gcompris-qt/rcc/BUNDLE.rcc of",
        "gcompris-qt-data; `wheel:PATH` is a file inside the named wheel.",
        "tests/data/labels.tsv gives the set, kind and ImageNet-1k class of every file.",
        "Its imagenet_class column uses the class names of the Keras ImageNet index",
        "(for example African_chameleon, lesser_panda); where it lists several names",
        "separated by '/', each of them is a correct prediction. It is empty for",
        "out-of-distribution images. The match column is exact when the subject is",
        "the class itself and near when it is a close relative (a bactrian camel for",
        "Arabian_camel, a purple heron for little_blue_heron).",
        "",
        "| Path | Source package | Original path | Author | Licence | Changes |",
        "|---|---|---|---|---|---|",
    ]
    for item in items:
        author = item.author + ("; " + item.source_url if item.source_url else "")
        changes = "; ".join(item.changes)
        if item.set == "formats":
            changes = "derived from %s: %s" % (item.path.rsplit("/", 1)[-1], changes)
        if item.note:
            changes += ". " + item.note
        cells = [item.dest, item.origin, item.path, author, item.licence, changes]
        lines.append("| " + " | ".join(markdown_cell(cell) for cell in cells) + " |")
    lines += ["", LICENCE_NOTES]
    with open(os.path.join(root, "tests/data/ATTRIBUTION.md"), "w") as handle:
        handle.write("\n".join(lines))


def write_labels(items, root):
    with open(os.path.join(root, "tests/data/labels.tsv"), "w", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(["path", "set", "kind", "imagenet_class", "match"])
        for item in items:
            writer.writerow([item.dest, item.set, item.kind, item.imagenet_class, item.match])


def verify(items, root):
    """Reopen every written file with Pillow and print its format, mode and size."""
    for item in items:
        path = os.path.join(root, item.dest)
        with Image.open(path) as image:
            image.load()
            short = min(image.size)
            assert short <= MAX_SHORT_SIDE, "%s is %dx%d" % ((item.dest,) + image.size)
            print("%-60s %-5s %-5s %4dx%-4d %7d B"
                  % (item.dest, image.format, image.mode, image.size[0], image.size[1],
                     os.path.getsize(path)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=os.path.normpath(os.path.join(os.path.dirname(__file__), "../..")),
                        help="repository root to write into (default: this checkout)")
    parser.add_argument("--wheel-dir", required=True,
                        help="folder holding the scikit-image wheel")
    parser.add_argument("--candidates", help="folder with id_candidates.tsv and ood_candidates.tsv")
    args = parser.parse_args()

    dests = [item.dest for item in ALL_ITEMS]
    assert len(dests) == len(set(dests)), "duplicate destination paths"
    id_sources = {item.path for item in ID_ITEMS}
    assert not id_sources & {item.path for item in CALIBRATION_ITEMS}, "calibration overlaps id"

    sources = Sources(args.wheel_dir)
    versions = debian_versions({item.package for item in ALL_ITEMS} - {SKIMAGE, SKLEARN})
    if args.candidates:
        check_against_candidates(ALL_ITEMS, args.candidates)
    for item in ALL_ITEMS:
        fill_credits(item, sources, versions)
        process(item, sources, args.root)
    write_labels(ALL_ITEMS, args.root)
    write_attribution(ALL_ITEMS, args.root)
    verify(ALL_ITEMS, args.root)


if __name__ == "__main__":
    main()
