"""Per-channel mean and std of a data set's fundus pixels, for a checkpoint's normalisation.

Statistics are taken after the training preprocessing (`drdemo.preprocess.prepare_image`: upright RGB,
cropped to the field of view, resized) and over pixels INSIDE the field of view only. The black camera
surround carries no information and its share varies by camera and crop (a full disc leaves ~21% of a
square black, a clipped one less), so including it would pull the mean towards 0 by a camera-dependent
amount; fundus-only statistics describe the retina alone. The surround still normalises to a constant.

    python -m drdemo.data.stats --data DIR [--input-size 224] [--limit N] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from drdemo.data.datasets import DatasetError, Sample, load_samples, open_image
from drdemo.preprocess import balance_colour, fundus_mask, local_contrast, prepare_image


def channel_stats(samples: Sequence[Sample], input_size: int = 224, limit: int | None = None, seed: int = 0,
                  interpolation: str = "bicubic", crop_fov: bool = True, local_contrast_sigma: float = 0.0,
                  colour_balance: bool = False,
                  progress: bool = False) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """(mean, std) per RGB channel, on the [0, 1] scale, of the field-of-view pixels of `samples`.

    Streams sums and sums of squares in float64, so memory does not grow with the data set. `limit`
    takes a random subset of that many images (chosen by `seed`), enough for stable statistics on
    large sets. Images with no field of view (all black) contribute nothing.
    """
    mean, std, _ = _channel_stats(samples, input_size, limit, seed, interpolation, crop_fov, progress,
                                  local_contrast_sigma, colour_balance)
    return mean, std


def _channel_stats(samples: Sequence[Sample], input_size: int, limit: int | None, seed: int, interpolation: str,
                   crop_fov: bool, progress: bool,
                   local_contrast_sigma: float = 0.0,
                   colour_balance: bool = False) -> tuple[tuple[float, ...], tuple[float, ...], int]:
    """`channel_stats`, plus the number of field-of-view pixels it averaged."""
    if input_size < 1:
        raise ValueError(f"input_size must be positive, got {input_size}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be positive, got {limit}")
    samples = sorted(samples, key=lambda s: s.image_id)
    if not samples:
        raise DatasetError("no images to compute statistics over")
    if limit is not None and limit < len(samples):
        chosen = np.random.default_rng(seed).choice(len(samples), size=limit, replace=False)
        samples = [samples[i] for i in sorted(chosen)]
    if progress:
        from tqdm import tqdm

        samples = tqdm(samples, desc="channel statistics", unit="image")
    total = np.zeros(3)
    total_sq = np.zeros(3)
    count = 0
    for sample in samples:
        prepared = prepare_image(open_image(sample.path), input_size, interpolation, crop_fov)
        pixels = np.asarray(prepared, dtype=np.uint8)
        balanced = balance_colour(prepared) if colour_balance else prepared
        enhanced = np.asarray(local_contrast(balanced, local_contrast_sigma), dtype=np.uint8)
        inside = enhanced[fundus_mask(pixels)].astype(np.float64) / 255.0
        total += inside.sum(axis=0)
        total_sq += np.square(inside).sum(axis=0)
        count += inside.shape[0]
    if count == 0:
        raise DatasetError(f"none of the {len(samples)} image(s) has a field of view (all black?); "
                           "check the data set")
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - np.square(mean), 0.0))
    return tuple(float(v) for v in mean), tuple(float(v) for v in std), count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m drdemo.data.stats",
                                     description="per-channel mean/std of the fundus pixels of a data set")
    parser.add_argument("--data", type=Path, required=True, help="data set folder (layout detected)")
    parser.add_argument("--input-size", type=int, default=224, help="model input size (default 224)")
    parser.add_argument("--limit", type=int, help="use a random subset of this many images")
    parser.add_argument("--seed", type=int, default=0, help="seed of the --limit subset")
    parser.add_argument("--progress", action="store_true", help="show a progress bar on stderr")
    args = parser.parse_args(argv)
    try:
        samples = load_samples(args.data)
        n = len(samples) if args.limit is None else min(args.limit, len(samples))
        mean, std, pixels = _channel_stats(samples, args.input_size, args.limit, args.seed, "bicubic", True,
                                           args.progress)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"mean": [round(v, 6) for v in mean], "std": [round(v, 6) for v in std], "n": n,
                      "pixels": pixels, "input_size": args.input_size}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
