#!/usr/bin/env bash
# Makes the seed corpora under corpus/. Run once from anywhere with ffmpeg and python3 on
# PATH (made with ffmpeg 5.1); the outputs are committed and run.sh needs neither tool.
# Seeds are real files from tests/data and tests/fixtures, copied or shrunk, each under 20 KB.
# The sources and licences of the originals are listed in tests/data/ATTRIBUTION.md.
set -euo pipefail
cd "$(dirname "$0")"

data=../data
mjpeg=corpus/mjpeg_stream
image=corpus/decode_image
mkdir -p "$mjpeg" "$image"
ff=(ffmpeg -v error -nostdin -y)

# decode_image: small JPEGs as they are, and PNG and WebP made from a test photo, since
# tests/data has none under 20 KB.
for file in id/screwdriver-phillips.jpg ood/near-ood/coin-us-half-dollar.jpg \
    ood/icon/treble-clef.jpg ood/near-blank/flat-grey-gnome-vnc.jpg; do
    cp "$data/$file" "$image/$(basename "$file")"
done
"${ff[@]}" -i "$data/id/espresso-cup.jpg" -vf scale=48:32 "$image/espresso-48x32.png"
"${ff[@]}" -i "$data/formats/rgba-brown-bear.png" -vf scale=24:24 -pix_fmt rgba64be \
    "$image/brown-bear-24x24-rgba16.png"
"${ff[@]}" -i "$data/id/espresso-cup.jpg" -vf scale=48:32 -c:v libwebp -quality 50 \
    "$image/espresso-48x32.webp"
"${ff[@]}" -i "$data/id/espresso-cup.jpg" -vf scale=48:32 -c:v libwebp -lossless 1 \
    "$image/espresso-48x32-lossless.webp"

# mjpeg_stream: ffmpeg's two-frame MJPEG, the same cut inside its second frame and with
# garbage around it, and a single JPEG with an EXIF-style thumbnail in APP1.
two_frames=../fixtures/raw/two-frames-64x36.mjpeg
cp "$two_frames" "$mjpeg/two-frames.mjpeg"
python3 - "$two_frames" "$data/ood/near-ood/coin-us-half-dollar.jpg" "$mjpeg" <<'PY'
import pathlib, struct, sys

stream = pathlib.Path(sys.argv[1]).read_bytes()
coin = pathlib.Path(sys.argv[2]).read_bytes()
out = pathlib.Path(sys.argv[3])
first, second = stream[:830], stream[830:]
damaged = b"xy" + first + b"junk" + second[:400] + first + b"\xff"
(out / "garbage-and-truncated.mjpeg").write_bytes(damaged)
thumbnail = b"\xff\xd8\xff\xdb\x00\x04\x00\x01\xff\xda\x00\x02\x12\x34\xff\xd9"
body = b"Exif\x00\x00" + thumbnail
app1 = b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body
(out / "exif-thumbnail.jpg").write_bytes(coin[:2] + app1 + coin[2:])
PY
