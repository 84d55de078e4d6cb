"""Fundus data: real public data sets on disk, patient-grouped splits, channel statistics, a synthetic generator.

Names are imported on first use (PEP 562), so `import drdemo.data` stays cheap; the synthetic
generator lives in `drdemo.data.synthetic` and is imported only from there.
"""

from __future__ import annotations

import importlib

__all__ = [
    "LAYOUTS",
    "PARTS",
    "DatasetError",
    "FundusDataset",
    "Sample",
    "channel_stats",
    "check_part",
    "class_counts",
    "detect_layout",
    "generator_info",
    "load_samples",
    "load_photos",
    "load_split",
    "num_classes",
    "open_image",
    "patient_of",
    "save_split",
    "split_samples",
    "task_target",
]
_SPLIT_NAMES = ("load_split", "save_split", "split_samples")
_MODULE_OF = {name: "stats" if name == "channel_stats" else "split" if name in _SPLIT_NAMES else "datasets"
              for name in __all__}


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
