"""Model registry in the style of timm: builders register by name with their default facts.

Each entry's `ModelDefaults` says what a new checkpoint of that architecture starts from
(input size, normalisation, Grad-CAM target). Once a checkpoint exists, its config.json is
the source of truth and these defaults are not consulted again.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass

import torch
from torch import nn

from drdemo.errors import DrdemoError
from drdemo.models.heads import BACKBONE_PREFIX, MultiHeadNet, lesion_layer_channels
from drdemo.tasks import ICDR_GRADES

# Channel statistics of colour fundus photographs (the MedMamba paper's DR set), the default for new
# checkpoints until the training data's own statistics are measured.
FUNDUS_MEAN = (0.416, 0.222, 0.076)
FUNDUS_STD = (0.238, 0.132, 0.053)


@dataclass(frozen=True)
class ModelDefaults:
    """What a new checkpoint of this architecture starts from."""

    input_size: int
    cam_target_layer: str
    cam_reshape: str | None = None  # name in drdemo.models.CAM_RESHAPES, for non-NCHW features
    mean: tuple[float, float, float] = FUNDUS_MEAN
    std: tuple[float, float, float] = FUNDUS_STD
    display_name: str = ""  # what people read ("MedMamba-T"); empty: the registry id
    # Serve and train with channels-last weights: measured faster on CPU by `python -m benchmarks
    # inference` with no grade changed (InceptionV3 0.78x; a training step 0.75x); left off where it
    # gained nothing (MedMamba-T 1.03x).
    channels_last: bool = False
    classifier: str = "fc"            # the final linear layer; its input is the pooled features
    # Where a new MultiHeadNet's lesion decoder reads (about 1/8 of the input). A checkpoint's config records
    # its decoder's layers as heads.lesion_layers; one that names none (every one before they were named) means
    # this layer alone. drdemo.train.lesion_head refits a decoder on other layers.
    lesion_layer: str = "layer2"
    lesion_features_channels_last: bool = False  # the lesion layer's output is (B, H, W, C)
    early_layers: tuple[str, ...] = ()  # name prefixes of the first layers, fine-tuned slowest from pretrained weights

    @property
    def memory_format(self) -> torch.memory_format:
        """The layout the predictor and the trainer put weights and inputs in."""
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def to_dict(self) -> dict:
        return asdict(self)


_builders: dict[str, Callable[..., nn.Module]] = {}
_defaults: dict[str, ModelDefaults] = {}
_pretrained: set[str] = set()  # builders that take pretrained=True


class NoPretrainedWeightsError(DrdemoError, ValueError):
    """pretrained=True for an architecture that has no pretrained weights."""


def register_model(defaults: ModelDefaults, pretrained: Callable | None = None
                   ) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register a builder `fn(num_classes=..., **kwargs) -> nn.Module` under its name. `pretrained`
    (the function that finds its weights) says that the builder also takes `pretrained=True`."""

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if fn.__name__ in _builders:
            raise ValueError(f"model {fn.__name__!r} is registered twice")
        _builders[fn.__name__] = fn
        _defaults[fn.__name__] = defaults
        if pretrained is not None:
            _pretrained.add(fn.__name__)
        return fn

    return wrap


def list_models(pretrained: bool = False) -> list[str]:
    """Registered architecture names, sorted; only those with pretrained weights when `pretrained`."""
    return sorted(_pretrained if pretrained else _builders)


def model_defaults(name: str) -> ModelDefaults:
    """The registered defaults of architecture `name`."""
    _check_known(name)
    return _defaults[name]


# torch.nn.init's public functions (kaiming_uniform_, trunc_normal_, zeros_, ...), as torch ships them.
_INIT_FUNCTIONS = {name: getattr(nn.init, name) for name in dir(nn.init)
                   if name.endswith("_") and not name.startswith("_") and callable(getattr(nn.init, name))}
_skipping = threading.local()
_patch_lock = threading.Lock()
_threads_skipping = 0


def _skippable(original: Callable) -> Callable:
    @functools.wraps(original)
    def init(tensor, *args, **kwargs):
        return tensor if getattr(_skipping, "active", False) else original(tensor, *args, **kwargs)
    return init


@contextlib.contextmanager
def _without_random_init() -> Iterator[None]:
    """torch.nn.init leaves tensors as they are, in this thread only (another thread building a model meanwhile
    still initialises it): for weights a strict load overwrites next, InceptionV3's random initialisation alone
    taking ~0.25-0.3 s of the app's start."""
    global _threads_skipping
    with _patch_lock:
        if _threads_skipping == 0:
            for function_name, original in _INIT_FUNCTIONS.items():
                setattr(nn.init, function_name, _skippable(original))
        _threads_skipping += 1
    _skipping.active = True
    try:
        yield
    finally:
        _skipping.active = False
        with _patch_lock:
            _threads_skipping -= 1
            if _threads_skipping == 0:
                for function_name, original in _INIT_FUNCTIONS.items():
                    setattr(nn.init, function_name, original)


def create_model(name: str, num_classes: int = len(ICDR_GRADES), heads: Mapping | None = None,
                 pretrained: bool = False, initialise: bool = True, **kwargs) -> nn.Module:
    """Build architecture `name`: freshly initialised, or with its ImageNet weights when `pretrained`
    (drdemo.models.pretrained says where they are found; the classifier is new either way).

    `heads` (a checkpoint config's `heads`: grade_head, dme_classes, lesion_types, and lesion_layers where it
    names them) wraps it in a MultiHeadNet; None or empty builds the plain single-head classifier. `kwargs` are
    the builder's options (a checkpoint's `model_options`). `initialise=False` skips torch.nn.init's random
    weights, for a caller that loads every parameter next (a strict `load_state_dict`); until then the
    parameters hold whatever memory they were given.
    """
    _check_known(name)
    if pretrained and not initialise:
        raise ValueError("pretrained=True needs initialise=True: the new classifier is initialised, not loaded")
    with contextlib.nullcontext() if initialise else _without_random_init():
        return _create_model(name, num_classes, heads, pretrained, **kwargs)


def _create_model(name: str, num_classes: int, heads: Mapping | None, pretrained: bool, **kwargs) -> nn.Module:
    if pretrained:
        if name not in _pretrained:
            raise NoPretrainedWeightsError(
                f"{name} has no pretrained weights: it trains from random initialisation (pretrained=False), or "
                f"from a teacher by distillation; architectures with pretrained weights: "
                f"{', '.join(list_models(pretrained=True)) or 'none'}")
        kwargs["pretrained"] = True
    model = _builders[name](num_classes=num_classes, **kwargs)
    defaults = _defaults[name]
    if heads:
        layers = tuple(heads.get("lesion_layers") or (defaults.lesion_layer,))
        for layer in layers:
            get_submodule(model, layer)  # a clear message for a layer this architecture does not have
        channels = lesion_layer_channels(model, layers, defaults.lesion_features_channels_last)
        model = MultiHeadNet(model, classifier=defaults.classifier, lesion_layers=layers,
                             lesion_channels=channels, channels_last_features=defaults.lesion_features_channels_last,
                             num_grades=num_classes, dme_classes=len(heads["dme_classes"]),
                             lesion_types=len(heads["lesion_types"]), grade_head=heads.get("grade_head", "softmax"),
                             lesion_evidence_weight=heads.get("lesion_evidence_weight"),
                             lesion_evidence_grade=heads.get("lesion_evidence_grade", "multinomial"))
    model.default_cfg = {"architecture": name, "num_classes": num_classes, **defaults.to_dict(),
                         "model_options": dict(getattr(_unwrap(model), "builder_options", {})),
                         "pretrained": getattr(_unwrap(model), "pretrained", None)}
    if pretrained:
        prefix = BACKBONE_PREFIX if heads else ""
        model.pretrained_parameters = frozenset(prefix + name for name in _unwrap(model).pretrained_parameters)
    return model


def _unwrap(model: nn.Module) -> nn.Module:
    return model.backbone if isinstance(model, MultiHeadNet) else model


def get_submodule(model: nn.Module, path: str) -> nn.Module:
    """Module at dotted `path` (e.g. 'layers.3'), with a message naming what exists if absent."""
    try:
        return model.get_submodule(path)
    except AttributeError as exc:
        names = [name for name, _ in model.named_modules() if name]
        close = difflib.get_close_matches(path, names, n=3, cutoff=0.6)
        top = ", ".join(name for name, _ in model.named_children())
        hint = f"; did you mean {' or '.join(repr(name) for name in close)}?" if close else ""
        raise ValueError(f"{type(model).__name__} has no submodule {path!r} (top level: {top}; "
                         f"{len(names)} layers in all){hint}") from exc


LAYER_SEPARATOR = "+"


def target_layers(model: nn.Module, spec: str) -> list[nn.Module]:
    """The CAM target layers named by `spec`: one dotted path, or several joined by "+"."""
    return [get_submodule(model, path) for path in spec.split(LAYER_SEPARATOR)]


def _check_known(name: str) -> None:
    if name not in _builders:
        raise ValueError(f"unknown model {name!r}; registered: {', '.join(list_models())}")


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (buffers excluded)."""
    return sum(p.numel() for p in model.parameters())


def bhwc_to_bchw(features: torch.Tensor) -> torch.Tensor:
    """Grad-CAM reshape for channels-last feature maps (MedMamba's stages)."""
    return features.permute(0, 3, 1, 2)


CAM_RESHAPES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"bhwc_to_bchw": bhwc_to_bchw}
