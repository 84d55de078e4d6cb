"""The everyday-photo corpus of the gate benchmark: photographs from Debian packages, installed and split once.

    python -m benchmarks.gate_setup [--out ~/.cache/drdemo/everyday] [--no-install]

Installs the packages below with apt-get (where missing), collects their photographs (one file per wallpaper, its
largest; Tux Paint's photo stamps, without its cartoons, letters and symbols, which are drawn) and links each into
OUT/tuning/<package>/ or OUT/report/<package>/. The split is by a hash of the file's path, so it never changes
and a photo is in one part only: the score's threshold may look at the tuning part, the benchmark reports on the
report part. OUT/manifest.json lists every photo with its package, licence and part. Nothing is copied into the
repository.
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

DEFAULT_OUT = Path.home() / ".cache" / "drdemo" / "everyday"
TUNING_SHARE = 0.35
# package -> (its licence, as debian/copyright states it, and what its photographs show)
PACKAGES = {
    "tuxpaint-stamps-default": ("GPL-2 (Tux Paint stamps; individual stamps also public domain / CC)",
                                "photo stamps: animals, food, plants, household objects, clothes, vehicles, space"),
    "plasma-workspace-wallpapers": ("GPL-2+ / LGPL-3 / CC-BY-SA (KDE Plasma wallpapers)", "landscapes, nature"),
    "mate-backgrounds": ("GPL-2+", "landscapes, animals, abstract"),
    "gnome-backgrounds": ("CC-BY-SA-3.0 / CC-BY-2.0 (GNOME backgrounds)", "landscapes, abstract"),
    "ukui-wallpapers": ("CC-BY-SA-3.0", "landscapes, flowers"),
    "lomiri-wallpapers": ("CC-BY-4.0 / CC-BY-SA-3.0 / CC-BY-SA-4.0", "wallpapers"),
    "palapeli-data": ("GPL-2+ / LGPL-2+ / GFDL-1.2+", "jigsaw puzzle photos"),
}
PHOTO = re.compile(r"\.(jpe?g|png|webp)$", re.IGNORECASE)
SKIPPED = re.compile(r"/(doc|icons|help)/|screenshot|thumb|/cartoon|/symbols/", re.IGNORECASE)
SIZE_IN_NAME = re.compile(r"(\d+)x(\d+)")


def install(packages) -> None:
    missing = [p for p in packages if subprocess.run(["dpkg", "-s", p], capture_output=True).returncode != 0]
    if missing:
        print(f"apt-get install {' '.join(missing)}", file=sys.stderr)
        subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", *missing], check=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def package_photos(package: str) -> list[Path]:
    """The package's photographs, one per picture: of several sizes of one wallpaper, the largest."""
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


def part_of(path: Path) -> str:
    """'tuning' or 'report', fixed by the path's hash."""
    digest = int(hashlib.sha256(str(path).encode()).hexdigest()[:8], 16)
    return "tuning" if digest / 0xFFFFFFFF < TUNING_SHARE else "report"


def build(out: Path, do_install: bool = True) -> dict:
    if do_install:
        install(PACKAGES)
    if out.exists():
        shutil.rmtree(out)
    entries = []
    for package, (licence, shows) in PACKAGES.items():
        if subprocess.run(["dpkg", "-s", package], capture_output=True).returncode != 0:
            print(f"{package} is not installed; skipped", file=sys.stderr)
            continue
        for i, path in enumerate(package_photos(package)):
            part = part_of(path)
            link = out / part / package / f"{i:04d}_{path.name}"
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(path)
            entries.append({"file": str(link.relative_to(out)), "source": str(path), "package": package,
                            "licence": licence, "part": part})
    manifest = {"packages": {p: {"licence": lic, "shows": shows} for p, (lic, shows) in PACKAGES.items()},
                "tuning_share": TUNING_SHARE, "photos": entries}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gate_setup", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--no-install", action="store_true", help="use only the packages already installed")
    args = parser.parse_args(argv)
    manifest = build(args.out, not args.no_install)
    counts: dict[str, int] = {}
    for entry in manifest["photos"]:
        counts[entry["part"]] = counts.get(entry["part"], 0) + 1
    print(f"{args.out}: {counts.get('tuning', 0)} tuning, {counts.get('report', 0)} report photos")
    return 0


if __name__ == "__main__":
    sys.exit(main())
