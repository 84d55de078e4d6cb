"""config.json: the one source of truth for what a checkpoint's model needs and is (CheckpointConfig),
its validation (every problem a CheckpointError naming the file and the fix), and the names of a
checkpoint folder's files. Reading and writing them is drdemo.checkpoint.io's.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields

from drdemo.calibration import check_calibration
from drdemo.cam.methods import CAM_METHOD_NAMES
from drdemo.errors import DrdemoError
from drdemo.inference import VIEW_COUNTS
from drdemo.models import list_models, model_defaults
from drdemo.models.heads import GRADE_HEADS
from drdemo.models.lesion_evidence import GRADE_REGRESSIONS, is_blend_weight
from drdemo.preprocess import RESAMPLING
from drdemo.tasks import DME_RISKS, ICDR_GRADES, TASK_CLASS_NAMES

FORMAT = "drdemo-checkpoint/1"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
CARD_NAME = "README.md"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
# The record files beside config.json (drdemo.checkpoint.layout): the training lineage, one file per evaluation.
PROVENANCE_NAME = "training/provenance.json"
EVAL_PATTERN = "eval/*.json"
HUB_FILE_PATTERNS = ["*.safetensors", INDEX_NAME, CONFIG_NAME, CARD_NAME, PROVENANCE_NAME, EVAL_PATTERN]
MAX_DISPLAY_NAME = 40  # fits a dropdown, a chart legend and a column header



class CheckpointError(DrdemoError, ValueError):
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
    cam_method: str = "gradcam"       # the app's default CAM method (a key of drdemo.cam.methods.CAM_METHOD_NAMES)
    # What the image goes through before normalisation (drdemo.preprocess): RGB conversion, cropping to
    # the field of view when crop_fov, a square resize, then (local_contrast > 0) subtracting the local
    # average colour with a Gaussian of sigma = local_contrast x the input size.
    # colour_balance: each channel scaled so that its mean inside the field of view is the reference
    # fundus colour (drdemo.preprocess.balance_colour), before local contrast, so the photo's overall
    # colour balance carries no information the model could use.
    preprocessing: dict = field(default_factory=lambda: {"interpolation": "bicubic", "crop_fov": True,
                                                         "local_contrast": 0.0, "colour_balance": False})
    referable_threshold: float = 0.5
    # How logits become probabilities (drdemo.calibration): the mean over this many symmetric views
    # of each photo (1 or 8), after a temperature and per-class biases fitted on validation photos
    # (`python -m drdemo.evaluate calibrate`; {} is plain softmax).
    test_time_views: int = 1
    calibration: dict = field(default_factory=dict)
    # A three-head model (drdemo.models.heads): {"grade_head": "softmax" | "ordinal", "dme_classes": [3 names],
    # "lesion_types": [names]} and optionally "lesion_layers": [the backbone layers its lesion decoder reads]
    # (absent: the architecture's one default layer, as every checkpoint before they were named) and
    # "lesion_evidence_weight": how much the grade and DME risk read from the lesion maps count beside the
    # network's (drdemo.models.lesion_evidence; absent: the network's alone), with "lesion_evidence_grade": the
    # grade's regression, "multinomial" (absent) or "proportional_odds"; {} is a single-head grade classifier.
    heads: dict = field(default_factory=dict)
    # Refer for macular oedema when P(DME risk 2) reaches this (three-head models only).
    dme_threshold: float = 0.5
    # The registry builder's options the weights were trained with ({"tf_pooling": true}: InceptionV3 fine-tuned
    # from the TF 2015 ImageNet release pools as that graph does); {} builds the registry's default network.
    model_options: dict = field(default_factory=dict)
    # The records (RECORD_FIELDS), read from training/provenance.json and eval/*.json: how well each CAM
    # method points at lesions ("test") and how the default was chosen ("selection"); the training lineage;
    # the flat val_* / test_* numbers.
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
                                       "colour_balance": False, **values["preprocessing"]}
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
                or set(self.preprocessing) != {"interpolation", "crop_fov", "local_contrast", "colour_balance"}
                or not isinstance(self.preprocessing["colour_balance"], bool)
                or self.preprocessing["interpolation"] not in RESAMPLING
                or not isinstance(self.preprocessing["crop_fov"], bool)
                or isinstance(self.preprocessing["local_contrast"], bool)
                or not isinstance(self.preprocessing["local_contrast"], (int, float))
                or not 0 <= self.preprocessing["local_contrast"] <= 0.5):
            fail(f"preprocessing must be {{'interpolation': one of {list(RESAMPLING)}, 'crop_fov': true or false, "
                 f"'local_contrast': a number in [0, 0.5], 'colour_balance': true or false}}, got "
                 f"{self.preprocessing!r}")
        problem = check_heads(self.heads, self.num_classes, self.task)
        if problem:
            fail(problem)
        if not 0.0 < self.dme_threshold < 1.0:
            fail(f"dme_threshold must be in (0, 1), got {self.dme_threshold!r}")
        if not isinstance(self.model_options, dict) or not all(
                isinstance(k, str) and isinstance(v, (bool, int, float, str)) for k, v in self.model_options.items()):
            fail(f"model_options must be an object of builder options (e.g. {{\"tf_pooling\": true}}), got "
                 f"{self.model_options!r}")

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
        return self.trained and idrid_in_training(self.provenance)

    def to_dict(self) -> dict:
        data = asdict(self)
        for name in ("class_names", "mean", "std"):
            data[name] = list(data[name])
        return data

    def contract_dict(self) -> dict:
        """config.json's contents: the model contract and the serving settings, without the records
        (provenance, metrics, cam_evaluation), which live in training/ and eval/ beside it."""
        return {key: value for key, value in self.to_dict().items() if key not in RECORD_FIELDS}


# Fields held in memory for the trainer, the card and the app, and written to the record files
# (drdemo.checkpoint.layout), not to config.json.
RECORD_FIELDS = ("cam_evaluation", "provenance", "metrics")


def check_heads(heads: dict, num_classes: int, task: str) -> str | None:
    """What is wrong with a config's `heads`, or None when it is fine ({} is a single-head model)."""
    if not isinstance(heads, dict):
        return f"heads must be an object, got {heads!r}"
    if not heads:
        return None
    expected = {"grade_head", "dme_classes", "lesion_types"}
    optional = {"lesion_layers", "lesion_evidence_weight", "lesion_evidence_grade"}
    if not expected <= set(heads) <= expected | optional:
        return (f"heads must have the keys {', '.join(sorted(expected))} (and optionally "
                f"{', '.join(sorted(optional))}), got {', '.join(sorted(heads))}")
    if heads["grade_head"] not in GRADE_HEADS:
        return f"heads.grade_head must be one of {', '.join(GRADE_HEADS)}, got {heads['grade_head']!r}"
    if task != "icdr5" or num_classes != len(ICDR_GRADES):
        return "heads need the icdr5 task (five grades)"
    for key in ("dme_classes", "lesion_types", "lesion_layers"):
        if key not in heads:
            continue
        names = heads[key]
        if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
            return f"heads.{key} must be a non-empty list of names, got {names!r}"
    weight = heads.get("lesion_evidence_weight")
    if weight is not None and not is_blend_weight(weight):
        return f"heads.lesion_evidence_weight must be a number in (0, 1], got {weight!r}"
    if "lesion_evidence_grade" in heads:
        if weight is None:
            return "heads.lesion_evidence_grade needs heads.lesion_evidence_weight: there is no evidence without it"
        if heads["lesion_evidence_grade"] not in GRADE_REGRESSIONS:
            return (f"heads.lesion_evidence_grade must be one of {', '.join(GRADE_REGRESSIONS)}, "
                    f"got {heads['lesion_evidence_grade']!r}")
    if len(heads["dme_classes"]) != len(DME_RISKS):
        return f"heads.dme_classes must name IDRiD's {len(DME_RISKS)} DME risk levels, got {heads['dme_classes']!r}"
    return None


def training_stages(provenance: dict) -> list[dict]:
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


def idrid_in_training(provenance: dict) -> bool:
    """True when a training stage behind the weights learned from IDRiD's photos."""
    return any("IDRiD" in str(stage.get("data", "")) for stage in training_stages(provenance))
