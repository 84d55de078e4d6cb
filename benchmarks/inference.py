"""Which inference options are worth keeping: each is timed against plain float32 eager in the same rounds
and must give the same grade on every image of a synthetic test set.

    python -m benchmarks inference [--checkpoints checkpoints/medmamba_t,checkpoints/inception_v3]
                                     [--images 100] [--repeats 20] [--json OUT] [--readme benchmarks/README.md]

Options: channels-last memory format, dynamic int8 quantisation of the linear layers, torch.compile
(inductor), and one thread instead of all. The app's path is forward + backward (probabilities and
Grad-CAM from one pass), so an option that cannot run backward is marked as unusable for it.
"""

from __future__ import annotations

import copy
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from drdemo.calibration import class_probabilities
from drdemo.checkpoint import load_model
from drdemo.data.synthetic import generate_fundus
from drdemo.preprocess import preprocess_kwargs, to_model_input

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CHECKPOINTS = (ROOT / "checkpoints" / "medmamba_t", ROOT / "checkpoints" / "inception_v3")
README_START, README_END = "<!-- bench:inference:start -->", "<!-- bench:inference:end -->"
# A generator seed used by no training, validation or test set of the bundled checkpoints.
AGREEMENT_SEED = 31


def agreement_images(n: int, size: int = 384) -> list:
    """`n` synthetic fundus photos, grades cycling 0-4, from a seed no checkpoint has seen."""
    from PIL import Image
    return [Image.fromarray(generate_fundus(np.random.SeedSequence([AGREEMENT_SEED, i]), i % 5, size).image)
            for i in range(n)]


OPTIONS: dict[str, tuple[Callable[[torch.nn.Module], torch.nn.Module], bool, int | None]] = {
    # name -> (how to make the variant from the eager model, feed channels-last input?, threads or None for all)
    "eager float32": (lambda model: model, False, None),
    "eager, 1 thread": (lambda model: model, False, 1),
    "channels-last": (lambda model: copy.deepcopy(model).to(memory_format=torch.channels_last), True, None),
    "dynamic int8 (linear layers)": (lambda model: torch.ao.quantization.quantize_dynamic(
        copy.deepcopy(model), {torch.nn.Linear}, dtype=torch.qint8), False, None),
    "torch.compile (inductor)": (lambda model: torch.compile(copy.deepcopy(model)), False, None),
}
BASELINE = "eager float32"


def _backward_works(model: torch.nn.Module, x: torch.Tensor) -> bool:
    """Whether a gradient reaches the input, as Grad-CAM needs (quantised layers have no backward:
    PyTorch then warns or raises, and no gradient arrives)."""
    x = x.clone().requires_grad_()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model(x)[0].max().backward()
    except Exception:  # the point is to learn whether it raises, whatever it raises
        return False
    return x.grad is not None and bool(x.grad.abs().sum() > 0)


def bench_checkpoint(folder: Path, images: list, repeats: int, options: list[str] | None = None) -> list[dict]:
    """One row per option: median forward ms at batch 1, ratio to eager, first-call seconds,
    grades changed on `images`, largest probability change, and whether backward (the CAM) runs."""
    options = [BASELINE] + [name for name in (options or OPTIONS) if name != BASELINE]
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(unknown)}; choose from {', '.join(OPTIONS)}")
    loaded = load_model(folder, device="cpu")
    config, model = loaded.config, loaded.model.eval()
    inputs = torch.cat([to_model_input(image, **preprocess_kwargs(config)) for image in images])
    threads = torch.get_num_threads()
    rows, reference = [], None
    timers: dict[str, Callable[[], float]] = {}
    for name in options:
        make, channels_last, variant_threads = OPTIONS[name]
        variant = make(model)
        def forward(x: torch.Tensor, variant=variant, channels_last=channels_last) -> torch.Tensor:
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.inference_mode():
                return variant(x).double()

        torch.set_num_threads(variant_threads or threads)
        start = time.perf_counter()
        try:
            forward(inputs[:1])
            first_call = time.perf_counter() - start
            # Plain softmax (no calibration): how far each option moves the network's own output.
            logits = torch.cat([forward(inputs[i:i + 1]) for i in range(len(inputs))]).numpy()
            probabilities = class_probabilities(logits)
        except Exception as exc:  # an option that fails on this model is reported, not fatal
            rows.append({"checkpoint": config.architecture, "option": name,
                         "error": f"{type(exc).__name__}: {exc}"[:200]})
            continue
        finally:
            torch.set_num_threads(threads)
        if reference is None:
            reference = probabilities
        rows.append({
            "checkpoint": config.architecture, "option": name, "first_call_s": round(first_call, 2),
            "grades_changed": int((probabilities.argmax(1) != reference.argmax(1)).sum()), "images": len(images),
            "max_probability_change": float(f"{np.abs(probabilities - reference).max():.2g}"),
            "backward_for_cam": _backward_works(variant, inputs[:1]),
        })

        def timer(forward=forward, variant_threads=variant_threads) -> float:
            torch.set_num_threads(variant_threads or threads)
            try:
                start = time.perf_counter()
                forward(inputs[:1])
                return time.perf_counter() - start
            finally:
                torch.set_num_threads(threads)
        timers[name] = timer
    samples: dict[str, list[float]] = {name: [] for name in timers}
    for _ in range(repeats):  # round-robin, so a load spike hits every option alike
        for name, timer in timers.items():
            samples[name].append(timer())
    eager = statistics.median(samples[BASELINE])
    for row in rows:
        if row["option"] in samples:
            median = statistics.median(samples[row["option"]])
            row["ms"] = round(median * 1e3, 1)
            row["vs_eager"] = round(median / eager, 2)
    return rows


# A first call slower than this would break the app's cold-start budget (15 s for both models).
MAX_FIRST_CALL_S = 5.0


def keep(row: dict) -> bool:
    """Keep an option only if it is faster, changes no test-set grade, still runs the CAM's backward,
    and its first call (compilation) fits the app's cold start."""
    return ("error" not in row and row["vs_eager"] < 0.95 and row["grades_changed"] == 0
            and row["backward_for_cam"] and row["first_call_s"] < MAX_FIRST_CALL_S)


def markdown(rows: list[dict], threads: int) -> str:
    lines = [f"Measured by `python -m benchmarks inference` ({threads} threads): forward at batch 1, each option "
             f"timed against eager float32 in the same rounds; grades compared on synthetic images from a seed no "
             f"checkpoint saw.", "",
             "| model | option | ms | vs eager | first call (s) | grades changed | max prob. change | "
             "backward (CAM) | keep |", "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['checkpoint']} | {row['option']} | fails: {row['error']} | | | | | | no |")
            continue
        lines.append(f"| {row['checkpoint']} | {row['option']} | {row['ms']} | {row['vs_eager']}x | "
                     f"{row['first_call_s']} | {row['grades_changed']}/{row['images']} | "
                     f"{row['max_probability_change']} | {'yes' if row['backward_for_cam'] else 'no'} | "
                     f"{'yes' if keep(row) and row['option'] != BASELINE else '-'} |")
    return "\n".join(lines)
