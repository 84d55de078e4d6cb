"""The checkpoint format: a folder that is also a Hugging Face Hub model repository.

    model.safetensors   weights, float16 on disk, upcast to float32 on load (or sharded:
                        model-0000N-of-0000M.safetensors + model.safetensors.index.json)
    config.json         the one source of truth for what the model needs and is (CheckpointConfig)
    README.md           the model card, with Hub YAML metadata

Weights are only ever read from safetensors: pickle files (.bin/.pt/.pth/.pkl/.ckpt) can run
arbitrary code when loaded and are refused.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch
from huggingface_hub import HfApi, ModelCard, ModelCardData, snapshot_download
from huggingface_hub import constants as hub_constants
from huggingface_hub.errors import (
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from drdemo.calibration import SHRINKAGE, check_calibration, class_probabilities, negative_log_likelihood
from drdemo.cam_methods import CAM_METHOD_NAMES, CLASS_INDEPENDENT_METHODS
from drdemo.data.datasets import IDRID_ATTRIBUTION
from drdemo.inference import VIEW_COUNTS
from drdemo.models import create_model, list_models, model_defaults, target_layers
from drdemo.preprocess import RESAMPLING
from drdemo.tasks import TASK_CLASS_NAMES

FORMAT = "drdemo-checkpoint/1"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
CARD_NAME = "README.md"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
HUB_FILE_PATTERNS = ["*.safetensors", INDEX_NAME, CONFIG_NAME, CARD_NAME]
MAX_DISPLAY_NAME = 40  # fits a dropdown, a chart legend and a column header


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and the fix."""


@dataclass(frozen=True)
class CheckpointConfig:
    """Contents of config.json. Everything the code needs to know about a checkpoint."""

    architecture: str
    num_classes: int
    class_names: tuple[str, ...]
    task: str
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    cam_target_layer: str
    cam_reshape: str | None = None
    # The name people read ("MedMamba-T"); a config.json without one gets the registry's, so older files need no edit.
    display_name: str = ""
    cam_method: str = "gradcam"       # the app's default CAM method (a key of drdemo.cam_methods.CAM_METHOD_NAMES)
    # What the image goes through before normalisation (drdemo.preprocess): RGB conversion, cropping to
    # the field of view when crop_fov, a square resize, then (local_contrast > 0) subtracting the local
    # average colour with a Gaussian of sigma = local_contrast x the input size.
    preprocessing: dict = field(default_factory=lambda: {"interpolation": "bicubic", "crop_fov": True,
                                                         "local_contrast": 0.0})
    referable_threshold: float = 0.5
    # How logits become probabilities (drdemo.calibration): the mean over this many symmetric views
    # of each photo (1 or 8), after a temperature and per-class biases fitted on validation photos
    # (`python -m drdemo.evaluate --calibrate`; {} is plain softmax).
    test_time_views: int = 1
    calibration: dict = field(default_factory=dict)
    # How well each CAM method points at lesions ("test") and how the default method and layer were
    # chosen ("selection"), written by `python -m drdemo.evaluate --cam --record / --choose-cam-default`.
    cam_evaluation: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)  # trained, data, recipe, seed, code_commit, ...
    metrics: dict = field(default_factory=dict)
    format: str = FORMAT

    @classmethod
    def for_architecture(cls, architecture: str, task: str = "icdr5", **overrides) -> CheckpointConfig:
        """A new checkpoint's config from the registry's defaults for `architecture`."""
        if task not in TASK_CLASS_NAMES:
            raise CheckpointError(f"unknown task {task!r}; choose from {', '.join(TASK_CLASS_NAMES)}")
        defaults = model_defaults(architecture)
        names = TASK_CLASS_NAMES[task]
        values = dict(architecture=architecture, num_classes=len(names), class_names=names, task=task,
                      input_size=defaults.input_size, mean=defaults.mean, std=defaults.std,
                      cam_target_layer=defaults.cam_target_layer, cam_reshape=defaults.cam_reshape)
        values.update(overrides)
        return cls.from_dict(values, source="(new config)")

    @classmethod
    def from_dict(cls, data: dict, source: str = CONFIG_NAME) -> CheckpointConfig:
        """Validate and build; every problem is reported with `source` and what to change."""
        known = {f.name for f in fields(cls)}
        required = {"architecture", "num_classes", "class_names", "task", "input_size", "mean", "std",
                     "cam_target_layer"}
        missing = sorted(required - set(data))
        if missing:
            raise CheckpointError(f"{source}: missing field(s) {', '.join(missing)}")
        unknown = sorted(set(data) - known)
        if unknown:
            raise CheckpointError(f"{source}: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        values = dict(data)
        if "display_name" not in values and values["architecture"] in list_models():
            values["display_name"] = model_defaults(values["architecture"]).display_name or values["architecture"]
        values["class_names"] = tuple(values["class_names"])
        values["mean"], values["std"] = tuple(values["mean"]), tuple(values["std"])
        if isinstance(values.get("preprocessing"), dict):
            # Written before cropping existed: a plain resize.
            # Written before local contrast existed: none.
            values["preprocessing"] = {"interpolation": "bicubic", "crop_fov": False, "local_contrast": 0.0,
                                       **values["preprocessing"]}
        config = cls(**values)
        config._validate(source)
        return config

    def _validate(self, source: str) -> None:
        def fail(message: str) -> None:
            raise CheckpointError(f"{source}: {message}")

        if self.format != FORMAT:
            fail(f"format {self.format!r} is not {FORMAT!r}")
        if self.architecture not in list_models():
            fail(f"architecture {self.architecture!r} is not a registered model; registered: "
                 f"{', '.join(list_models())}")
        if not isinstance(self.display_name, str) or not 0 < len(self.display_name.strip()) <= MAX_DISPLAY_NAME:
            fail(f"display_name must be a non-empty name of at most {MAX_DISPLAY_NAME} characters (e.g. "
                 f"\"MedMamba-T\"), got {self.display_name!r}; leave it out to use the registry's")
        if not isinstance(self.num_classes, int) or self.num_classes < 2:
            fail(f"num_classes must be an integer >= 2, got {self.num_classes!r}")
        if len(self.class_names) != self.num_classes:
            fail(f"class_names has {len(self.class_names)} names but num_classes is {self.num_classes}")
        if self.task not in TASK_CLASS_NAMES:
            fail(f"task {self.task!r} is not one of {', '.join(TASK_CLASS_NAMES)}")
        if self.task != "icdr5" and self.num_classes != 2:
            fail(f"task {self.task!r} is binary but num_classes is {self.num_classes}")
        if not isinstance(self.input_size, int) or not 32 <= self.input_size <= 2048:
            fail(f"input_size must be an integer in [32, 2048], got {self.input_size!r}")
        for name in ("mean", "std"):
            values = getattr(self, name)
            if len(values) != 3 or not all(isinstance(v, (int, float)) for v in values):
                fail(f"{name} must be three numbers (R, G, B), got {list(values)!r}")
        if any(v <= 0 for v in self.std):
            fail(f"std must be positive, got {list(self.std)!r}")
        if self.cam_method not in CAM_METHOD_NAMES:
            fail(f"cam_method {self.cam_method!r} is not one of {', '.join(CAM_METHOD_NAMES)}")
        if isinstance(self.test_time_views, bool) or self.test_time_views not in VIEW_COUNTS:
            fail(f"test_time_views must be one of {list(VIEW_COUNTS)}, got {self.test_time_views!r}")
        problem = check_calibration(self.calibration, self.num_classes)
        if problem:
            fail(problem)
        if not 0.0 < self.referable_threshold < 1.0:
            fail(f"referable_threshold must be in (0, 1), got {self.referable_threshold!r}")
        if (not isinstance(self.preprocessing, dict)
                or set(self.preprocessing) != {"interpolation", "crop_fov", "local_contrast"}
                or self.preprocessing["interpolation"] not in RESAMPLING
                or not isinstance(self.preprocessing["crop_fov"], bool)
                or isinstance(self.preprocessing["local_contrast"], bool)
                or not isinstance(self.preprocessing["local_contrast"], (int, float))
                or not 0 <= self.preprocessing["local_contrast"] <= 0.5):
            fail(f"preprocessing must be {{'interpolation': one of {list(RESAMPLING)}, 'crop_fov': true or false, "
                 f"'local_contrast': a number in [0, 0.5]}}, got {self.preprocessing!r}")

    @property
    def trained(self) -> bool:
        return bool(self.provenance.get("trained", False))

    @property
    def trained_on_synthetic_data(self) -> bool:
        """True when the training data description names our synthetic generator (or any synthetic set)."""
        return self.trained and "synthetic" in str(self.provenance.get("data", "")).lower()

    @property
    def trained_on_idrid(self) -> bool:
        """True when a training stage of these weights learned from IDRiD's photos."""
        return self.trained and _trained_on_idrid(self.provenance)

    def to_dict(self) -> dict:
        data = asdict(self)
        for name in ("class_names", "mean", "std"):
            data[name] = list(data[name])
        return data


def read_config(folder: Path) -> CheckpointConfig:
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{folder} has no {CONFIG_NAME}: a checkpoint folder needs {WEIGHTS_NAME} and "
                              f"{CONFIG_NAME} (see drdemo.checkpoint.save_checkpoint, or `python -m drdemo.hub "
                              f"convert-official` for weights from the official MedMamba code)")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    return CheckpointConfig.from_dict(data, source=str(path))


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a checkpoint; refuses folders that only offer pickles."""
    index = folder / INDEX_NAME
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{index} is not a safetensors index (needs a 'weight_map'): {exc}") from exc
        files = [folder / name for name in sorted(set(weight_map.values()))]
        absent = [f.name for f in files if not f.is_file()]
        if absent:
            raise CheckpointError(f"{index} lists shard(s) that are not in {folder}: {', '.join(absent)}")
        return files
    if (folder / WEIGHTS_NAME).is_file():
        return [folder / WEIGHTS_NAME]
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        raise CheckpointError(
            f"{folder} has weights only in pickle format ({', '.join(pickles)}), which can run arbitrary code "
            f"when loaded and is refused. Convert them once, in a place you trust: python -m drdemo.hub "
            f"convert-official --weights {folder / pickles[0]} --variant <name> --out <folder>")
    raise CheckpointError(f"{folder} has no {WEIGHTS_NAME}")


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of the checkpoint, floating ones upcast to float32."""
    state: dict[str, torch.Tensor] = {}
    for path in weight_files(folder):
        try:
            tensors = load_file(path)
        except Exception as exc:  # safetensors raises its own error type for corrupt headers
            raise CheckpointError(f"{path} is not a readable safetensors file: {exc}") from exc
        state.update({k: v.float() if v.is_floating_point() else v for k, v in tensors.items()})
    return state


BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


def count_parameters(folder: Path) -> int:
    """Number of parameters stored, BatchNorm statistics excluded (read from headers only)."""
    total = 0
    for path in weight_files(folder):
        with safe_open(path, framework="pt") as f:
            for key in f.keys():
                if not key.endswith(BUFFER_SUFFIXES):
                    total += int(torch.Size(f.get_slice(key).get_shape()).numel())
    return total


def build_model(config: CheckpointConfig, state: dict[str, torch.Tensor], source: str) -> nn.Module:
    """The registry model of `config`, with `state` loaded strictly; mismatches explained."""
    model = create_model(config.architecture, num_classes=config.num_classes)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        detail = "; ".join(part for part in (
            f"missing {len(missing)} key(s) e.g. {', '.join(missing[:3])}" if missing else "",
            f"unexpected {len(unexpected)} key(s) e.g. {', '.join(unexpected[:3])}" if unexpected else "") if part)
        raise CheckpointError(f"{source}: the weights are not a {config.architecture} state_dict ({detail}). "
                              f"Check 'architecture' in {CONFIG_NAME}.")
    for key, tensor in state.items():
        if tensor.shape != expected[key].shape:
            is_head = (tensor.dim() > 0 and expected[key].dim() > 0
                       and expected[key].shape[0] == config.num_classes != tensor.shape[0])
            hint = (f"{CONFIG_NAME} says num_classes={config.num_classes} but these weights have a "
                    f"{tensor.shape[0]}-class head: fix num_classes and class_names in {CONFIG_NAME}."
                    if is_head else f"Check 'architecture' in {CONFIG_NAME}.")
            raise CheckpointError(f"{source}: {key} has shape {list(tensor.shape)} but {config.architecture} "
                                  f"expects {list(expected[key].shape)}. {hint}")
    model.load_state_dict(state, strict=True)
    try:
        target_layers(model, config.cam_target_layer)
    except ValueError as exc:
        raise CheckpointError(f"{source}: cam_target_layer in {CONFIG_NAME}: {exc}") from exc
    return model.eval()


def model_card(config: CheckpointConfig) -> str:
    """README.md for the checkpoint: Hub YAML metadata, then what a reader must know."""
    provenance, metrics = config.provenance, config.metrics
    data = ModelCardData(
        license="other", license_name="research-demo", library_name="pytorch", pipeline_tag="image-classification",
        tags=["diabetic-retinopathy", "fundus", "medical-imaging", config.architecture, "safetensors", "drdemo"]
        + (["synthetic-data"] if config.trained_on_synthetic_data else []),
        metrics=sorted(metrics) or None,
    )
    metric_rows = "\n".join(f"| {name} | {value} |" for name, value in sorted(metrics.items())) or "| (none) | - |"
    trained = config.trained
    body = f"""
# {config.architecture} for diabetic retinopathy grading ({config.task})

**Not a medical device.** This checkpoint belongs to a research demonstration. It must not be
used to diagnose, grade, triage or refer patients.

## Intended use
Demonstrating and comparing models in the drdemo app: for each colour fundus photo, the
probability of every class ({", ".join(config.class_names)}). "Referable" means ICDR grade 2 or
above; the app calls an eye referable when that probability reaches {config.referable_threshold}.

## Training data
{provenance.get("data", "Not recorded.") if trained else "None: these weights are untrained (randomly initialised)."}
{_attribution(provenance)}{_calibration_text(config)}{_threshold_text(config)}
Recipe: {provenance.get("recipe", "not recorded")}. Seed: {provenance.get("seed", "not recorded")}.
Code commit: {provenance.get("code_commit", "not recorded")}.
{_how_it_was_made(provenance)}
## Evaluation
| metric | value |
|---|---|
{metric_rows}
{_confusion_matrices(config)}{_generalisation(provenance)}
{_explanations(config)}
## Input
RGB, {"cropped to the field of view (black border removed, padded to a square), " if config.preprocessing["crop_fov"]
      else ""}resized to {config.input_size} x {config.input_size} ({config.preprocessing["interpolation"]}),
{_local_contrast_text(config.preprocessing)}scaled to [0, 1], normalised with mean {list(config.mean)} and std
{list(config.std)}.

## Limitations
{_limitations(provenance)} Grad-CAM overlays show where the model looked, not why.

## Loading
```python
from drdemo.hub import load_model
loaded = load_model("<this repo id or folder>")
```
"""
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}").content


def _trained_on_idrid(provenance: dict) -> bool:
    return any("IDRiD" in str(stage.get("data", "")) for stage in _training_stages(provenance))


def _attribution(provenance: dict) -> str:
    if not _trained_on_idrid(provenance):
        return ""
    return f"\nThese weights were trained on IDRiD photos. Attribution: {IDRID_ATTRIBUTION}\n"


IDRID_LIMITATIONS = (
    "Trained on photos of one camera (Kowa VX-10 alpha, 50 degree field) from one hospital in India (see "
    "Training data); the test numbers above come from IDRiD's own test split, the same camera and clinic. "
    "Other cameras, populations, image quality and screening settings were not validated (the referral "
    "shares on DRIVE and CHASE_DB1 above are the only check on other cameras). IDRiD's training split has "
    "20 photos of Mild NPDR, so grade 1 is barely learned. Macular oedema is not graded.")


def _limitations(provenance: dict) -> str:
    if _trained_on_idrid(provenance):
        return IDRID_LIMITATIONS
    return provenance.get("limitations") or ("Performance on real fundus photographs, other cameras, populations or "
                                            "image quality is unknown unless reported above on such data.")


def _threshold_text(config: CheckpointConfig) -> str:
    choice = config.provenance.get("referable_threshold_choice")
    if not choice:
        return ""
    return (f"\nReferable threshold {config.referable_threshold:g}: {choice['rule']}, chosen on {choice['data']} "
            f"(there: sensitivity {choice['sensitivity']:.3f}, specificity {choice['specificity']:.3f}).\n")


def _calibration_text(config: CheckpointConfig) -> str:
    choice = config.provenance.get("calibration_choice")
    views = (f"the mean over {config.test_time_views} symmetric views of each photo (flips and rotations by 90 "
             f"degrees)" if config.test_time_views > 1 else "one view of each photo")
    if not config.calibration:
        return f"\nProbabilities: plain softmax, {views}.\n" if config.test_time_views > 1 else ""
    bias = ", ".join(f"{name} {b:+.2f}" for name, b in zip(config.class_names, config.calibration["logit_bias"]))
    fitted = (f", fitted on {choice['data']} (there the negative log-likelihood went from {choice['nll_before']:.3f} "
              f"to {choice['nll_after']:.3f})") if choice else ""
    return (f"\nCalibration: probabilities are softmax(logits / {config.calibration['temperature']:g} + bias), "
            f"bias {bias}, {views}{fitted}. It repairs the class priors that class-weighted training teaches; "
            f"the network is unchanged.\n")


def _confusion_matrices(config: CheckpointConfig) -> str:
    """Each recorded confusion matrix as a table: rows the true class, columns the predicted one."""
    matrices = config.provenance.get("confusion_matrices") or {}
    blocks = []
    for prefix, matrix in matrices.items():
        label = {"val": "validation", "test": "test"}.get(prefix, prefix)
        header = "| true \\ predicted | " + " | ".join(config.class_names) + " |"
        rule = "|---" * (len(config.class_names) + 1) + "|"
        rows = [f"| {name} | " + " | ".join(str(v) for v in row) + " |"
                for name, row in zip(config.class_names, matrix)]
        blocks.append(f"\nConfusion matrix ({label}):\n\n{header}\n{rule}\n" + "\n".join(rows) + "\n")
    return "".join(blocks)


def _generalisation(provenance: dict) -> str:
    """Share of photos from cameras the model never saw that it refers (most show no referable DR)."""
    rows = provenance.get("other_cameras") or []
    if not rows:
        return ""
    lines = "\n".join(f"| {row['data']} | {row['n']} | {row['referred']} | {100 * row['share']:.1f}% |"
                      for row in rows)
    return ("\nOther cameras, never seen in training (mostly photos without referable DR: a model that refers many "
            "has learned the camera, not the disease):\n\n| data | photos | referred | share |\n|---|---|---|---|\n"
            f"{lines}\n")


def _local_contrast_text(preprocessing: dict) -> str:
    sigma = preprocessing.get("local_contrast", 0.0)
    if not sigma:
        return ""
    return (f"local average colour subtracted inside the field of view (Gaussian sigma {sigma:g} x the input size, "
            "difference x 4 around mid-grey; outside the field of view mid-grey), ")


def _explanations(config: CheckpointConfig) -> str:
    """The CAM table: how often each method's peak falls on a lesion, against a random map."""
    test, selection = config.cam_evaluation.get("test"), config.cam_evaluation.get("selection")
    if not test:
        return ""

    def cell(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    rows = [f"| {CAM_METHOD_NAMES.get(name, name)}{' (default)' if name == config.cam_method else ''} | "
            f"{cell(v['pointing_game'])} | {cell(v.get('pointing_game_graded_dr'))} | "
            f"{cell(v['energy_pointing_game'])} | {cell(v['road_combined'])} |"
            for name, v in test["methods"].items()]
    for key, label in (("random_baseline", "random map (baseline)"),
                       ("centre_baseline", "map peaked at the centre of the field of view (baseline)")):
        if test.get(key):
            baseline = test[key]
            rows.append(f"| {label} | {cell(baseline['pointing_game'])} | "
                        f"{cell(baseline.get('pointing_game_graded_dr'))} | "
                        f"{cell(baseline['energy_pointing_game'])} | {cell(baseline['road_combined'])} |")
    one_photo = (f" With {test['n_images']} photos, one photo moves the pointing game by "
                 f"{1 / test['n_images']:.3f}." if test.get("n_images") else "")
    graded, healthy = test.get("n_images_graded_dr"), config.class_names[0]
    chosen = (f"\nThe default ({CAM_METHOD_NAMES.get(selection['method'], selection['method'])} at "
              f"`{selection['layer']}`) was chosen by the pointing game on other images: {selection['data']}.\n"
              if selection else "")
    notes = "".join(f"\n- {note}" for note in test.get("notes", []))
    independent = [CAM_METHOD_NAMES.get(m, m) for m in test["methods"] if m in CLASS_INDEPENDENT_METHODS]
    targets = (f"each map explains {test['target']}" if not independent else
               f"each map explains {test['target']}, except {' and '.join(independent)}, which shows where the "
               f"layer responds most strongly whatever the class")
    road = (f"- ROAD (higher is more faithful; first {test['n_images_road']} images): how much more the prediction "
            "drops when\n  the most-highlighted pixels are removed first than when the least-highlighted are."
            if test.get("n_images_road") else "- ROAD: not measured on these photos.")
    return f"""
## Explanations (Grad-CAM)
Does the heat map point at the lesions? Measured with the lesion masks of {test['n_images']} photos with
lesions of: {test['data']}. Layer `{test['layer']}`; {targets}.{one_photo}

- Pointing game: share of images whose heat map peak lies on a lesion (within
  {test['pointing_tolerance_px']} px at {test['input_size']} px); also on the {"-" if graded is None else graded}
  of them the model does not grade "{healthy}" (where it does, its map shows evidence for that class instead).
- Energy share: share of the map's mass on lesions (lesions cover {100 * test['mask_area_share']:.1f}% of the image).
{road}
{chosen}

| method | pointing game | pointing game, not graded "{healthy}" | energy share | ROAD |
|---|---|---|---|---|
{chr(10).join(rows)}
{notes}
"""


def _training_stages(provenance: dict) -> list[dict]:
    """The training runs behind the weights, first to last: a run started with --init-from records
    the provenance of the checkpoint it started from, which may itself have been warm-started."""
    stages = [provenance]
    while earlier := stages[0].get("initialised_from_provenance"):
        if isinstance(earlier, str):  # written as a JSON string before drdemo 2026-11-25
            try:
                earlier = json.loads(earlier)
            except json.JSONDecodeError:
                break
        if not isinstance(earlier, dict):
            break
        stages.insert(0, earlier)
    return stages


def _how_it_was_made(provenance: dict) -> str:
    """The exact commands behind the weights and the reported metrics, where recorded."""
    stages = _training_stages(provenance)
    data_commands = list(dict.fromkeys(s["data_command"] for s in stages if s.get("data_command")))
    steps = [("Data", command) for command in data_commands]
    for number, stage in enumerate(stages, 1):
        if stage.get("command"):
            label = "Training" if len(stages) == 1 else f"Training, stage {number} of {len(stages)}"
            seconds = stage.get("training_seconds")
            steps.append((label + (f" ({seconds / 60:.0f} min on {stage.get('device', '?')})" if seconds else ""),
                          stage["command"]))
    for key, label in (("calibration_command", "Calibration"), ("threshold_command", "Referable threshold"),
                       ("validation_command", "Validation"),
                       ("evaluation_command", "Evaluation"), ("cam_selection_command", "Default heat map"),
                       ("cam_test_command", "Heat map evaluation")):
        if provenance.get(key):
            steps.append((label, provenance[key]))
    for data, command in (provenance.get("other_camera_commands") or {}).items():
        steps.append((f"Referrals on {data}", command))
    if not steps:
        return ""
    first_label = {}  # one command that did two things (choose the threshold and record) is listed once
    for label, command in steps:
        first_label.setdefault(command, label)
    steps = [(label, command) for command, label in first_label.items()]
    lines = "\n".join(f"# {label}\n{command}" for label, command in steps)
    evaluated_on = f"\nMetrics prefixed test_ were measured on: {provenance['evaluation_data']}\n" if provenance.get(
        "evaluation_data") else ""
    if provenance.get("validation_data"):
        choices = (("best_epoch", "the epoch"), ("calibration_choice", "the calibration"),
                   ("referable_threshold_choice", "the referral threshold"))
        chosen = [what for key, what in choices if provenance.get(key)]
        caveat = (f" (the photos {', '.join(chosen[:-1]) + ' and ' * (len(chosen) > 1) + chosen[-1]} were chosen on, "
                  f"so these numbers are optimistic; the test_ ones are not)") if chosen else ""
        evaluated_on += f"Metrics prefixed val_ were measured on: {provenance['validation_data']}{caveat}\n"
    return f"\n### How it was made\n```bash\n{lines}\n```\n{evaluated_on}"


TEST_METRICS = ("qwk", "accuracy", "referable_auc", "referable_sensitivity", "referable_specificity", "any_dr_auc",
                "any_dr_sensitivity", "any_dr_specificity")


def record_evaluation(folder: str | Path, metrics: dict | None, data_description: str, command: str,
                      cam_metrics: dict | None = None, prefix: str = "test") -> CheckpointConfig:
    """Write an evaluation's headline numbers (as test_*) and how they were measured into the
    checkpoint's config.json, and rewrite its model card: the card then reports held-out results,
    not only the validation numbers training chose the epoch by. With `cam_metrics`, also how well
    each CAM method (at the checkpoint's layer) points at lesions, which the app's About tab shows.
    One write of config.json and the card for both. `prefix` "val" records a validation part's numbers
    (val_*, replacing those training wrote) instead; `metrics` None records the CAM table only."""
    folder = Path(folder)
    config = read_config(folder)
    if metrics is not None:
        recorded = {key: value for key, value in config.metrics.items() if not key.startswith(f"{prefix}_")}
        recorded.update({f"{prefix}_{name}": round(float(metrics[name]), 4) for name in TEST_METRICS
                         if metrics.get(name) is not None})
        for index, (name, recall) in enumerate(metrics.get("per_class_recall", {}).items()):
            if recall is not None:
                recorded[f"{prefix}_recall_{index}_{name.lower().replace(' ', '_')}"] = round(float(recall), 4)
        recorded[f"{prefix}_n"] = int(metrics["n"])
        key = "evaluation" if prefix == "test" else "validation"
        matrices = dict(config.provenance.get("confusion_matrices") or {}, **{prefix: metrics["confusion_matrix"]})
        provenance = dict(config.provenance, **{f"{key}_data": data_description, f"{key}_command": command},
                          confusion_matrices=matrices)
        config = replace(config, metrics=recorded, provenance=provenance)
    if cam_metrics is not None:
        config = replace(config, provenance=dict(config.provenance, cam_test_command=command))
        config = replace(config, cam_evaluation={**config.cam_evaluation,
                                                 "test": _cam_test_record(cam_metrics, data_description, command)})
    return _write(folder, config)


def _rounded(scores: dict) -> dict:
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in scores.items()}


def _write(folder: Path, config: CheckpointConfig) -> CheckpointConfig:
    config = CheckpointConfig.from_dict(config.to_dict(), source=str(folder / CONFIG_NAME))
    (folder / CONFIG_NAME).write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    (folder / CARD_NAME).write_text(model_card(config))
    return config


def _cam_test_record(cam_metrics: dict, data_description: str, command: str) -> dict:
    copied = ("target", "n_images", "n_images_graded_dr", "n_images_road", "pointing_tolerance_px", "input_size")
    return {"data": data_description, "command": command, "layer": cam_metrics["default_layer"],
            **{key: cam_metrics[key] for key in copied}, "mask_area_share": round(cam_metrics["mask_area_share"], 4),
            "methods": {m: _rounded(v) for m, v in cam_metrics["methods"].items()},
            "random_baseline": _rounded(cam_metrics["random_baseline"]),
            **({"centre_baseline": _rounded(cam_metrics["centre_baseline"])}
               if "centre_baseline" in cam_metrics else {}),
            "notes": cam_metrics["notes"]}


def choose_cam_default(folder: str | Path, cam_metrics: dict, data_description: str, command: str) -> CheckpointConfig:
    """Make the best-pointing (layer, method) of `cam_metrics` the checkpoint's default CAM, and say
    in config.json what it was chosen on. Choose on images other than those the card reports."""
    folder = Path(folder)
    config = read_config(folder)
    best = cam_metrics["best"]
    selection = {"data": data_description, "command": command, "layer": best["layer"], "method": best["method"],
                 "rule": "highest pointing game, then energy share",
                 "pointing_game": {layer: {m: round(v["pointing_game"], 4) for m, v in table.items()}
                                   for layer, table in cam_metrics["layers"].items()}}
    evaluation = {key: value for key, value in config.cam_evaluation.items() if key != "test"}
    return _write(folder, replace(config, cam_method=best["method"], cam_target_layer=best["layer"],
                                  cam_evaluation={**evaluation, "selection": selection},
                                  provenance=dict(config.provenance, cam_selection_command=command)))


def record_referral_share(folder: str | Path, row: dict, command: str) -> CheckpointConfig:
    """Record how many photos of a camera the model never saw it refers ({data, n, referred, share}),
    replacing an earlier row for the same data."""
    folder = Path(folder)
    config = read_config(folder)
    rows = [r for r in config.provenance.get("other_cameras") or [] if r["data"] != row["data"]]
    commands = dict(config.provenance.get("other_camera_commands") or {}, **{row["data"]: command})
    return _write(folder, replace(config, provenance=dict(config.provenance, other_cameras=[*rows, row],
                                                          other_camera_commands=commands)))


def choose_referable_threshold(folder: str | Path, grades, referable_probability, min_sensitivity: float,
                               data_description: str, command: str) -> float:
    """Make the highest threshold that keeps referable sensitivity >= `min_sensitivity` on these photos the
    checkpoint's referable threshold (screening misses cost more than extra referrals); returns it.
    Choose on a validation part: the test part then reports what the threshold does."""
    import numpy as np
    from sklearn.metrics import roc_curve

    truth = np.asarray(grades) >= 2
    if truth.all() or not truth.any():
        raise CheckpointError("choosing a referable threshold needs referable and non-referable photos")
    _, tpr, thresholds = roc_curve(truth, np.asarray(referable_probability, dtype=np.float64))
    reachable = thresholds[(tpr >= min_sensitivity) & np.isfinite(thresholds)]
    threshold = float(np.floor(min(max(reachable.max(), 0.001), 0.999) * 1000) / 1000)
    predicted = np.asarray(referable_probability) >= threshold
    sensitivity = float(predicted[truth].mean())
    specificity = float((~predicted[~truth]).mean())
    folder = Path(folder)
    config = read_config(folder)
    choice = {"rule": f"the highest threshold with referable sensitivity >= {min_sensitivity:g}",
              "data": data_description, "sensitivity": round(sensitivity, 4), "specificity": round(specificity, 4)}
    _write(folder, replace(config, referable_threshold=threshold,
                           provenance=dict(config.provenance, referable_threshold_choice=choice,
                                           threshold_command=command)))
    return threshold


def record_calibration(folder: str | Path, calibration: dict, logits, targets, data_description: str,
                       command: str) -> CheckpointConfig:
    """Make `calibration`, fitted on `logits` (n, views, C), and their number of views the checkpoint's,
    with the negative log-likelihood before and after on those images; returns the new config."""
    views = logits.shape[1]
    folder = Path(folder)
    config = read_config(folder)
    choice = {"rule": f"temperature and per-class logit biases minimising the negative log-likelihood over "
                      f"{views} view(s), biases shrunk by {SHRINKAGE:g} x their squares",
              "data": data_description, "views": views,
              "nll_before": round(negative_log_likelihood(class_probabilities(logits), targets), 4),
              "nll_after": round(negative_log_likelihood(class_probabilities(logits, calibration), targets), 4)}
    return _write(folder, replace(config, test_time_views=views, calibration=calibration,
                                  provenance=dict(config.provenance, calibration_choice=choice,
                                                  calibration_command=command)))


def save_checkpoint(model: nn.Module, config: CheckpointConfig, folder: str | Path,
                    dtype: torch.dtype = torch.float16) -> Path:
    """Write model.safetensors (floating tensors as `dtype`), config.json and README.md."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {key: (value.detach().to(dtype) if value.is_floating_point() else value.detach()).contiguous().cpu()
             for key, value in model.state_dict().items()}
    save_file(state, folder / WEIGHTS_NAME, metadata={"format": "pt", "drdemo": FORMAT})
    (folder / CONFIG_NAME).write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    (folder / CARD_NAME).write_text(model_card(config))
    return folder


# ---------------------------------------------------------------------------- the store: folders and Hub repos

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class HubUnavailable(CheckpointError):
    """The Hub could not be reached (or offline mode is on) and the revision is not cached."""


@dataclass(frozen=True)
class LoadedModel:
    """A network ready to run, with the facts about it and where it came from."""

    model: nn.Module
    config: CheckpointConfig
    source: str            # the folder or repo id asked for
    folder: Path           # where the files are on disk (a Hub cache snapshot for repo ids)
    revision: str | None   # the revision asked for (None: main, or a folder)
    commit: str | None     # the Hub commit the files came from (None for a folder)

    @property
    def origin(self) -> str:
        """One line for people: 'org/name @ 1a2b3c4' or the folder path."""
        return f"{self.source} @ {self.commit[:7]}" if self.commit else str(self.folder)


def is_repo_id(source: str) -> bool:
    return bool(REPO_ID.match(source)) and not Path(source).exists()


def fetch(source: str, revision: str | None = None) -> tuple[Path, str | None]:
    """Local folder of a checkpoint and its Hub commit (None for a folder); downloads if needed."""
    if Path(source).is_dir():
        if revision:
            raise CheckpointError(f"{source} is a local folder; a revision ({revision}) only applies to Hub repos")
        return Path(source), None
    if not is_repo_id(source):
        raise CheckpointError(f"{source!r} is neither a folder nor a Hub repo id like 'org/name'")
    try:
        folder = Path(snapshot_download(repo_id=source, revision=revision, allow_patterns=HUB_FILE_PATTERNS))
    except RepositoryNotFoundError as exc:
        raise CheckpointError(f"no model repo {source!r} on {hub_constants.ENDPOINT} (or it is private and no "
                              f"HF_TOKEN with access is set)") from exc
    except RevisionNotFoundError as exc:
        raise CheckpointError(f"model repo {source!r} has no revision {revision!r}") from exc
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as exc:
        mode = "offline mode is on (HF_HUB_OFFLINE=1)" if hub_constants.HF_HUB_OFFLINE else \
            f"{hub_constants.ENDPOINT} could not be reached"
        raise HubUnavailable(
            f"cannot load {source}{'@' + revision if revision else ''}: {mode} and it is not in the Hub cache "
            f"({hub_constants.HF_HUB_CACHE}). Download it once while online (it then loads with HF_HUB_OFFLINE=1), "
            f"or point the app at a local folder such as the bundled checkpoints/.") from exc
    except HfHubHTTPError as exc:
        raise HubUnavailable(f"cannot load {source} from {hub_constants.ENDPOINT}: {exc}") from exc
    return folder, folder.name


def resolve_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_model(source: str | Path, revision: str | None = None, device: str | torch.device = "auto") -> LoadedModel:
    """Load a checkpoint from a folder or a Hub repo id; model in eval mode on `device`."""
    source = str(source)
    folder, commit = fetch(source, revision)
    config = read_config(folder)
    label = f"{source}@{commit[:7]}" if commit else str(folder)
    model = build_model(config, read_weights(folder), label).to(resolve_device(device))
    return LoadedModel(model=model, config=config, source=source, folder=folder, revision=revision, commit=commit)


def push(folder: str | Path, repo_id: str, revision: str | None = None, private: bool = False,
         commit_message: str | None = None) -> str:
    """Upload a checkpoint folder to a Hub model repo (created if needed); returns the commit id."""
    folder = Path(folder)
    config = read_config(folder)
    build_model(config, read_weights(folder), str(folder))  # never publish a checkpoint that does not load
    api = HfApi()
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    if revision and revision != "main":
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, revision=revision,
                             allow_patterns=HUB_FILE_PATTERNS,
                             commit_message=commit_message or f"Upload {config.architecture} checkpoint")
    return info.oid
