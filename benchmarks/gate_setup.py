"""The everyday-photo corpus of the image check: photographs from Debian packages, installed and split once, and a
few legitimate variants of them made here.

    python -m benchmarks.gate_setup [--out ~/.cache/drdemo/everyday] [--no-install]

Installs the packages below with apt-get (where missing), collects their photographs (one file per wallpaper, its
largest; Tux Paint's photo stamps, without its cartoons, letters and symbols, which are drawn; OpenCV's sample
photographs, by name, without its drawings, charts and the "Lena" picture) and links each into
OUT/tuning/<package>/ or OUT/report/<package>/. The split is by a hash of the file's path, so it never changes
and a photo is in one part only: the image check's classifier and thresholds may look at the tuning part, the
benchmark reports on the report part.

Categories the packages are thin in are widened with variants, written (not linked) to OUT/<part>/variants/, each in
its source's part: every Tux Paint photo stamp (a cut-out: animals, food, drinks, cups, balls, planets) placed on a
plain background (a table, a wall, a cloth) and, for most kinds (not clothes, vehicles, buildings), also cropped
close so that the object fills the frame without a border; and dimmed copies (tungsten light, sensor noise) of
OpenCV's photos, of the household stamps on their backgrounds and of a quarter of the other photos, as a photo taken
in a dim room is. OUT/manifest.json lists every photo with its
package, licence, category, part and, for a variant, what was done to which source. Nothing is copied into the
repository. scikit-image's and fundus-image-toolbox's sample pictures are never used (kept for independent checks).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

DEFAULT_OUT = Path.home() / ".cache" / "drdemo" / "everyday"
TUNING_SHARE = 0.35
OPENCV_DATA = Path("/usr/share/doc/opencv-doc/examples/data")
# package -> (its licence, as debian/copyright states it, and what its photographs show)
PACKAGES = {
    "tuxpaint-stamps-default": ("GPL-2 (Tux Paint stamps; individual stamps also public domain / CC)",
                                "photo stamps: animals, food, plants, household objects, clothes, vehicles, space"),
    "plasma-workspace-wallpapers": ("GPL-2+ / LGPL-3 / CC-BY-SA (KDE Plasma wallpapers)", "landscapes, nature"),
    "mate-backgrounds": ("GPL-2+", "landscapes, animals, abstract"),
    "gnome-backgrounds": ("CC-BY-SA-3.0 / CC-BY-2.0 (GNOME backgrounds)", "landscapes, abstract"),
    "ukui-wallpapers": ("CC-BY-SA-3.0", "landscapes, flowers"),
    "lomiri-wallpapers": ("CC-BY-4.0 / CC-BY-SA-3.0 / CC-BY-SA-4.0", "wallpapers"),
    "lomiri-wallpapers-16.04": ("CC-BY-SA-3.0 / CC-BY-SA-4.0 (Ubuntu Touch wallpapers)", "landscapes, wallpapers"),
    "lomiri-wallpapers-20.04": ("CC-BY-SA-3.0 / CC-BY-SA-4.0 (Ubuntu Touch wallpapers)", "landscapes, wallpapers"),
    "palapeli-data": ("GPL-2+ / LGPL-2+ / GFDL-1.2+", "jigsaw puzzle photos"),
    "opencv-doc": ("Apache-2.0 AND BSD-3-Clause (OpenCV's samples/data, as debian/copyright states for Files: *)",
                   "OpenCV's sample photos: faces, animals, fruit, indoor scenes, text, buildings"),
}
# OpenCV's sample photographs (examples/data), by category; its drawings, charts, logos, masks, calibration series
# (one pair kept) and "Lena" are left out.
OPENCV_PHOTOS = {
    "faces and people": ("messi5.jpg", "Blender_Suzanne1.jpg"),
    "animals": ("baboon.jpg", "HappyFish.jpg", "squirrel_cls.jpg", "chicky_512.png", "butterfly.jpg"),
    "food and round objects": ("apple.jpg", "orange.jpg", "fruits.jpg", "smarties.png", "basketball1.png"),
    "indoor": ("stuff.jpg", "box_in_scene.png", "left01.jpg", "right01.jpg", "aloeL.jpg", "rubberwhale1.png",
               "ela_original.jpg", "pca_test1.jpg", "board.jpg"),
    "text": ("imageTextN.png", "text_defocus.jpg", "text_motion.jpg", "licenseplate_motion.jpg", "sudoku.png",
             "notes.png"),
    "buildings and landscapes": ("aero1.jpg", "building.jpg", "leuvenA.jpg", "graf1.png", "starry_night.jpg"),
}
TUXPAINT_STAMPS = Path("/usr/share/tuxpaint/stamps")
CLOSE_CROPPED = ("food", "household", "sports", "space", "plants", "hobbies", "medical", "animals")   # cropped close
PHOTO = re.compile(r"\.(jpe?g|png|webp)$", re.IGNORECASE)
SKIPPED = re.compile(r"/(doc|icons|help)/|screenshot|thumb|/cartoon|/symbols/", re.IGNORECASE)
SIZE_IN_NAME = re.compile(r"(\d+)x(\d+)")
# Plain backgrounds a cut-out is placed on: a white table, a cream wall, light and dark wood, a grey desk, a blue
# cloth, a saucer-white, a dark tablecloth.
BACKGROUNDS = ((245, 245, 242), (236, 226, 205), (196, 160, 118), (110, 72, 45), (150, 150, 152), (120, 150, 190),
               (230, 232, 236), (45, 40, 38))
TUNGSTEN = (1.0, 0.82, 0.58)   # per-channel gains of a dim room's warm light
MIN_SIDE = 256                 # variants are made at least this large on their shorter side


def install(packages) -> None:
    missing = [p for p in packages if subprocess.run(["dpkg", "-s", p], capture_output=True).returncode != 0]
    if missing:
        print(f"apt-get install {' '.join(missing)}", file=sys.stderr)
        subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", *missing], check=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def package_photos(package: str) -> list[Path]:
    """The package's photographs, one per picture: of several sizes of one wallpaper, the largest."""
    if package == "opencv-doc":
        return sorted(OPENCV_DATA / name for names in OPENCV_PHOTOS.values() for name in names
                      if (OPENCV_DATA / name).is_file())
    listed = subprocess.run(["dpkg", "-L", package], capture_output=True, text=True, check=True).stdout.split("\n")
    files = [Path(line) for line in listed if PHOTO.search(line) and not SKIPPED.search(line) and Path(line).is_file()]
    by_picture: dict[str, Path] = {}
    for path in files:
        key = str(path.parent.parent) if path.parent.name == "images" else str(path.with_suffix(""))
        key = SIZE_IN_NAME.sub("", key).rstrip("_-")
        best = by_picture.get(key)
        if best is None or path.stat().st_size > best.stat().st_size:
            by_picture[key] = path
    return sorted(by_picture.values())


def category_of(package: str, path: Path) -> str:
    """What a photo shows, roughly: a Tux Paint stamp's folder, OpenCV's category, else the package's kind."""
    if package == "tuxpaint-stamps-default" and path.is_relative_to(TUXPAINT_STAMPS):
        return f"stamps: {path.relative_to(TUXPAINT_STAMPS).parts[0]}"
    if package == "opencv-doc":
        return next(category for category, names in OPENCV_PHOTOS.items() if path.name in names)
    return "puzzle photos" if package == "palapeli-data" else "wallpapers"


def _hash(text: str) -> float:
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


def part_of(path: Path) -> str:
    """'tuning' or 'report', fixed by the path's hash."""
    return "tuning" if _hash(str(path)) < TUNING_SHARE else "report"


def _at_least(image: Image.Image, side: int = MIN_SIDE) -> Image.Image:
    scale = side / min(image.size)
    if scale <= 1:
        return image
    return image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BICUBIC)


def on_background(cutout: Image.Image, key: str) -> Image.Image:
    """A cut-out (RGBA) placed on a plain background with a margin of 15-45% of its size, as on a table."""
    rng = np.random.default_rng(int(_hash(key) * 2**31))
    cutout = _at_least(cutout.convert("RGBA"), MIN_SIDE // 2)
    margin = rng.uniform(0.15, 0.45)
    w, h = cutout.size
    size = (round(w * (1 + 2 * margin)), round(h * (1 + 2 * margin)))
    colour = np.array(BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))], np.float32)
    yy, xx = np.mgrid[0:size[1], 0:size[0]].astype(np.float32)
    light = 1 + 0.08 * (xx / size[0] - 0.5) - 0.06 * (yy / size[1] - 0.5)   # light falling from one side
    canvas = colour * light[..., None] + rng.normal(0, 2.5, (size[1], size[0], 3))
    background = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
    background.paste(cutout, ((size[0] - w) // 2, (size[1] - h) // 2), cutout)
    return _at_least(background)


def close_crop(cutout: Image.Image, key: str) -> Image.Image | None:
    """The middle of a cut-out's opaque region (55-75% of its box), so that the object fills the frame without a
    border; None where the middle is not opaque (a thin or hollow object)."""
    rng = np.random.default_rng(int(_hash(key + "crop") * 2**31))
    rgba = cutout.convert("RGBA")
    alpha = np.asarray(rgba)[..., 3]
    rows, cols = np.flatnonzero(alpha.max(axis=1) > 128), np.flatnonzero(alpha.max(axis=0) > 128)
    if len(rows) < 16 or len(cols) < 16:
        return None
    share = rng.uniform(0.55, 0.75)
    cy, cx = (rows[0] + rows[-1]) / 2, (cols[0] + cols[-1]) / 2
    half_h, half_w = share * (rows[-1] - rows[0]) / 2, share * (cols[-1] - cols[0]) / 2
    box = (round(cx - half_w), round(cy - half_h), round(cx + half_w), round(cy + half_h))
    if (alpha[box[1]:box[3], box[0]:box[2]] > 128).mean() < 0.97:
        return None
    return _at_least(rgba.crop(box).convert("RGB"))


def dimmed(photo: Image.Image, key: str) -> Image.Image:
    """The photo as taken in a dim room: 10-35% of the light, warm tungsten colour, a lifted gamma and sensor
    noise (which grows as the light falls)."""
    rng = np.random.default_rng(int(_hash(key + "dim") * 2**31))
    rgb = np.asarray(photo.convert("RGB"), np.float32) / 255
    level = rng.uniform(0.10, 0.35)
    out = (rgb ** rng.uniform(1.1, 1.5)) * level * np.array(TUNGSTEN, np.float32)
    out += rng.normal(0, 0.012, out.shape).astype(np.float32)
    return Image.fromarray(np.clip(out * 255, 0, 255).round().astype(np.uint8))


def _variants(package: str, path: Path, category: str) -> list[tuple[str, str, Image.Image]]:
    """(kind, how it was made, picture) for each variant of one photo."""
    made: list[tuple[str, str, Image.Image]] = []
    key = str(path)
    with Image.open(path) as opened:
        opened.load()
        cutout = opened.mode in ("RGBA", "LA", "PA") or "transparency" in opened.info
        photo = opened.convert("RGBA") if cutout else opened.convert("RGB")
    if package == "tuxpaint-stamps-default" and cutout:
        made.append(("plain", "the cut-out placed on a plain background", on_background(photo, key)))
        if category.split(": ")[-1] in CLOSE_CROPPED:
            crop = close_crop(photo, key)
            if crop is not None:
                made.append(("crop", "the middle of the cut-out, filling the frame without a border", crop))
    dim_it = package == "opencv-doc" or (not cutout and _hash(key + "dim?") < 0.25)
    if dim_it or (cutout and category.split(": ")[-1] == "household"):
        source = made[0][2] if made and made[0][0] == "plain" else photo.convert("RGB")
        made.append(("dim", "a dimmed copy (10-35% of the light, tungsten colour, sensor noise)", dimmed(source, key)))
    return made


def build(out: Path, do_install: bool = True, variants: bool = True) -> dict:
    if do_install:
        install(PACKAGES)
    if out.exists():
        shutil.rmtree(out)
    entries = []
    for package, (licence, _shows) in PACKAGES.items():
        if subprocess.run(["dpkg", "-s", package], capture_output=True).returncode != 0:
            print(f"{package} is not installed; skipped", file=sys.stderr)
            continue
        for i, path in enumerate(package_photos(package)):
            part, category = part_of(path), category_of(package, path)
            link = out / part / package / f"{i:04d}_{path.name}"
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(path)
            entries.append({"file": str(link.relative_to(out)), "source": str(path), "package": package,
                            "licence": licence, "category": category, "part": part})
            if not variants:
                continue
            for kind, how, picture in _variants(package, path, category):
                target = out / part / "variants" / package / f"{i:04d}_{path.stem}_{kind}.jpg"
                target.parent.mkdir(parents=True, exist_ok=True)
                picture.save(target, quality=90)
                entries.append({"file": str(target.relative_to(out)), "source": str(path), "package": package,
                                "licence": licence, "category": f"{category} ({kind})", "part": part,
                                "variant": how})
    manifest = {"packages": {p: {"licence": lic, "shows": shows} for p, (lic, shows) in PACKAGES.items()},
                "tuning_share": TUNING_SHARE, "photos": entries}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def corpus_part(out: Path, part: str) -> list[dict]:
    """The manifest's entries of one part ('tuning' or 'report'), with "path" set; empty without a corpus."""
    manifest = out / "manifest.json"
    if not manifest.is_file():
        return []
    return [{**e, "path": out / e["file"]} for e in json.loads(manifest.read_text())["photos"] if e["part"] == part]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gate_setup", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--no-install", action="store_true", help="use only the packages already installed")
    parser.add_argument("--no-variants", action="store_true", help="link the packages' photos only")
    args = parser.parse_args(argv)
    manifest = build(args.out, not args.no_install, not args.no_variants)
    counts: dict[str, int] = {}
    for entry in manifest["photos"]:
        key = f"{entry['part']}{' variants' if 'variant' in entry else ''}"
        counts[key] = counts.get(key, 0) + 1
    print(f"{args.out}: " + ", ".join(f"{n} {key}" for key, n in sorted(counts.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
