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
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from drdemo.checkpoint import CheckpointError, LoadedModel, load_model, resolve_device
from drdemo.intake.fundus_check import Assessment, second_opinion
from drdemo.intake.ood import FeatureScore, load_feature_score
from drdemo.predictor import Analysis, Predictor
from drdemo.serving.photo_check import PhotoCheck, shared_photo_check

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
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
    feature_score: FeatureScore | None = None   # the checkpoint's ood.safetensors; None: the image check's rules only
    source: str = ""                 # the repo id or folder whose weights are served ("" for an untrained model)
    commit: str | None = None        # the Hub commit they came from (None for a folder)
    # the learned fundus-versus-everyday check (drdemo.serving.photo_check), shared by every slot; None: not asked
    photo_check: PhotoCheck | None = None

    def answered_by(self) -> dict:
        """Which checkpoint answers, for every answer the app gives: model, repo or folder, revision, fallback."""
        return {"model": self.predictor.config.display_name, "architecture": self.predictor.name,
                "checkpoint": self.source or (self.status if self.predictor.trained else "(untrained, no checkpoint)"),
                "revision": self.commit,
                "fallback": self.fallback, "trained": self.predictor.trained}

    def check(self, assessment: Assessment, analysis: Analysis) -> Assessment:
        """The image check's rules, with the learned fundus-versus-everyday check where the upload was not screened
        by it before grading (drdemo.serving.photo_check; it may refuse the photo), and this model's feature score of
        the grading forward (`analysis.features`) added; the rules alone where the checkpoint stores no score."""
        if self.photo_check is not None:
            assessment = self.photo_check.judged(assessment)
        if self.feature_score is None or analysis.features is None:
            return second_opinion(assessment, None, None)
        score = float(self.feature_score.score(analysis.features)[0])
        return second_opinion(assessment, score, self.feature_score.threshold)


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


def serving_device() -> str:
    """Where the models run: $DRDEMO_DEVICE (cpu, cuda, cuda:1, ...) or auto (CUDA when present)."""
    return os.environ.get("DRDEMO_DEVICE", "auto")


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _serveable(source: str, revision: str | None) -> tuple[Predictor, LoadedModel, FeatureScore | None]:
    """Everything between a configured source and a model ready for its first user: load and
    validate the checkpoint (CAM layer included), build the predictor, run one warm-up analysis.
    Returns the predictor, the loaded checkpoint (where its weights came from) and its stored feature score."""
    loaded = load_model(source, revision, device=serving_device())
    predictor = Predictor.from_loaded(loaded)
    predictor.warm_up()
    return predictor, loaded, load_feature_score(loaded.folder)


def serve(settings: SlotSettings) -> ServedModel:
    """Serve the slot's configured checkpoint, else its bundled one, else an untrained model.

    Any failure on the way (not only a checkpoint that will not load, but also one that loads and
    then cannot explain or grade an image) moves to the next candidate, so a bad checkpoint can
    never keep the app from starting; the status line says what failed.
    """
    candidates = [(settings.source, settings.revision)]
    if Path(settings.source) != settings.bundled:
        candidates.append((str(settings.bundled), None))
    problems: list[str] = []
    for source, revision in candidates:
        if Path(source) == settings.bundled and not settings.bundled.is_dir():
            problems.append(f"no bundled checkpoint at {_shown(settings.bundled)}")
            continue
        try:
            predictor, loaded, feature_score = _serveable(source, revision)
        except CheckpointError as exc:
            log.warning("%s: %s", settings.slot, exc)
            problems.append(str(exc))
            continue
        except Exception as exc:  # a checkpoint must never take the app down: report it and fall back
            log.exception("%s: %s cannot be served", settings.slot, source)
            problems.append(f"{source} cannot be served ({type(exc).__name__}: {exc})")
            continue
        status = (loaded.origin if not problems
                  else f"{problems[0]}; serving the bundled {_shown(settings.bundled)} instead")
        if problems:
            log.warning("%s: FALLBACK: %s", settings.slot, status)
        if not predictor.trained:
            log.warning("%s: %s holds UNTRAINED weights: its answers are meaningless", settings.slot, loaded.origin)
        return ServedModel(settings.slot, predictor, status, fallback=bool(problems), feature_score=feature_score,
                           source=_shown(loaded.folder) if loaded.commit is None else loaded.source,
                           commit=loaded.commit, photo_check=shared_photo_check())
    untrained = Predictor.untrained(settings.architecture)
    untrained.model.to(resolve_device(serving_device()))
    untrained.warm_up()
    status = f"{'; '.join(problems)}; serving an UNTRAINED {settings.architecture}"
    log.warning("%s: FALLBACK to an UNTRAINED model, its answers are meaningless: %s", settings.slot, status)
    return ServedModel(settings.slot, untrained, status, fallback=True, photo_check=shared_photo_check())
