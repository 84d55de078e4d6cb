"""Which checkpoints the app serves, and what happens when the configured one cannot be had.

Each model slot has a source (a Hub repo id or a folder) and an optional revision, from a
small TOML file and/or environment variables (which win):

    # drdemo.toml (or the file named by $DRDEMO_SETTINGS)
    [models.medmamba]
    source = "org/drdemo-medmamba-t"
    revision = "v1.0"

    DRDEMO_MEDMAMBA_SOURCE=org/name  DRDEMO_MEDMAMBA_REVISION=v1.0
    DRDEMO_INCEPTION_SOURCE=...      DRDEMO_INCEPTION_REVISION=...

Defaults are the bundled folders under checkpoints/. If the configured checkpoint cannot be
loaded (Hub unreachable, not cached, broken), the slot falls back to the bundled folder; if
that is missing too, to an untrained model. The status line of each slot says which happened.
"""

from __future__ import annotations

import logging
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from drdemo.checkpoint import CheckpointError
from drdemo.hub import load_model
from drdemo.predictor import Predictor

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
# slot -> (bundled checkpoint folder, architecture of the untrained last resort)
SLOTS: dict[str, tuple[Path, str]] = {
    "medmamba": (ROOT / "checkpoints" / "medmamba_t", "medmamba_t"),
    "inception": (ROOT / "checkpoints" / "inception_v3", "inception_v3"),
}
DEFAULT_SETTINGS_FILE = ROOT / "drdemo.toml"


@dataclass(frozen=True)
class SlotSettings:
    slot: str
    source: str
    revision: str | None
    bundled: Path
    architecture: str


@dataclass(frozen=True)
class ServedModel:
    slot: str
    predictor: Predictor
    status: str          # one line for the page: where the weights came from, and any fallback
    fallback: bool       # True when the configured checkpoint was not the one served


def load_settings(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> list[SlotSettings]:
    """Settings of every slot: defaults, then the TOML file, then environment variables."""
    environ = os.environ if environ is None else environ
    path = Path(path or environ.get("DRDEMO_SETTINGS") or DEFAULT_SETTINGS_FILE)
    table: dict = {}
    if path.is_file():
        try:
            table = tomllib.loads(path.read_text()).get("models", {})
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"{path} is not valid TOML: {exc}") from exc
        unknown = sorted(set(table) - set(SLOTS))
        if unknown:
            raise ValueError(f"{path}: unknown model slot(s) {', '.join(unknown)}; slots are {', '.join(SLOTS)}")
    elif path != DEFAULT_SETTINGS_FILE:
        raise ValueError(f"settings file {path} does not exist")
    settings = []
    for slot, (bundled, architecture) in SLOTS.items():
        entry = table.get(slot, {})
        source = environ.get(f"DRDEMO_{slot.upper()}_SOURCE") or entry.get("source") or str(bundled)
        revision = environ.get(f"DRDEMO_{slot.upper()}_REVISION") or entry.get("revision") or None
        settings.append(SlotSettings(slot, source, revision, bundled, architecture))
    return settings


def serve(settings: SlotSettings) -> ServedModel:
    """Load the slot's configured checkpoint, else its bundled one, else an untrained model."""
    try:
        loaded = load_model(settings.source, settings.revision)
        return ServedModel(settings.slot, Predictor.from_loaded(loaded), loaded.origin, fallback=False)
    except CheckpointError as exc:
        reason = str(exc)
    log.warning("%s: %s", settings.slot, reason)
    if settings.bundled.is_dir() and Path(settings.source) != settings.bundled:
        try:
            loaded = load_model(settings.bundled)
            return ServedModel(settings.slot, Predictor.from_loaded(loaded),
                               f"{settings.source} could not be loaded ({reason}); serving the bundled "
                               f"{settings.bundled.relative_to(ROOT)} instead", fallback=True)
        except CheckpointError as exc:
            reason = f"{reason}; the bundled checkpoint failed too: {exc}"
    return ServedModel(settings.slot, Predictor.untrained(settings.architecture),
                       f"no checkpoint could be loaded ({reason}); serving an UNTRAINED {settings.architecture}",
                       fallback=True)
