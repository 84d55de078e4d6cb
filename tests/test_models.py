"""The registry, MedMamba's fidelity to the official code, and the Grad-CAM targets.

tests/facts/ holds facts generated once by running the official MedMamba.py
(github.com/YubiaoYue/MedMamba, commit 104beb3) on CPU with its mamba_ssm scan replaced by a
float64 sequential reference: the state_dict keys and shapes of T/S/B at 5 classes, and a tiny
official model (depths [1,1,2,1], dims 12..96) with perturbed weights, two inputs (2x3x64x96,
non-square; 1x3x72x72, odd feature maps) and its logits. They are data, not code: the
official source is not part of this repository. (At full size, MedMamba-T with the official
code's seed-0 weights on a 224 px input matched to 4e-7 when checked locally.)
"""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

from drdemo.models import (
    CAM_RESHAPES,
    ICDR_GRADES,
    count_parameters,
    create_model,
    get_submodule,
    list_models,
    model_defaults,
)
from drdemo.models.medmamba import MedMamba

FACTS = Path(__file__).parent / "facts"
OFFICIAL_KEYS = json.loads((FACTS / "medmamba_official_keys.json").read_text())


def test_registry_lists_every_architecture():
    assert set(list_models()) >= {"medmamba_t", "medmamba_s", "medmamba_b", "inception_v3", "resnet50", "vgg16"}
    names = {name: model_defaults(name).display_name for name in ("medmamba_t", "medmamba_b", "inception_v3")}
    assert names == {"medmamba_t": "MedMamba-T", "medmamba_b": "MedMamba-B", "inception_v3": "InceptionV3"}


def test_unknown_model_is_named_in_the_error():
    with pytest.raises(ValueError, match=r"unknown model 'medmamba_xl'.*medmamba_t"):
        create_model("medmamba_xl")


@pytest.mark.parametrize("variant", ["medmamba_t", "medmamba_s", "medmamba_b"])
def test_state_dict_matches_official_keys_and_shapes(variant):
    facts = OFFICIAL_KEYS[variant]
    model = create_model(variant, num_classes=5)
    ours = {key: list(value.shape) for key, value in model.state_dict().items()}
    assert ours == facts["state_dict"]
    assert count_parameters(model) == facts["num_params"]
    # A state_dict with exactly the official keys and shapes loads strictly.
    official = {key: torch.zeros(shape, dtype=torch.long if key.endswith("num_batches_tracked") else torch.float32)
                for key, shape in facts["state_dict"].items()}
    model.load_state_dict(official, strict=True)


def test_parameter_counts_of_the_paper():
    counts = {name: round(count_parameters(create_model(name)) / 1e6, 2) for name in ("medmamba_t", "medmamba_s",
                                                                                       "medmamba_b")}
    assert counts == {"medmamba_t": 14.46, "medmamba_s": 18.62, "medmamba_b": 39.86}


def _tiny_official():
    """The tiny official model's state_dict, inputs and logits from the golden file."""
    with safe_open(FACTS / "medmamba_official_tiny.safetensors", framework="pt") as f:
        tensors = {key: f.get_tensor(key) for key in f.keys()}
        constructor = json.loads(f.metadata()["constructor"])
    state = {key[len("state_dict."):]: value for key, value in tensors.items() if key.startswith("state_dict.")}
    return constructor, state, tensors


@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_logits_match_official_implementation(backend, monkeypatch):
    """Official weights load strictly and give the official logits (non-square and odd inputs).

    The golden's weights carry fan-in-scaled noise so that the SS2D branch matters: assigning
    the four scan directions' parameters to the wrong directions moves the logits by 0.2 to 0.6,
    while the correct model is within ~1e-6, so 2e-5 separates the two.
    """
    monkeypatch.setenv("DRDEMO_SCAN_BACKEND", backend)
    constructor, state, tensors = _tiny_official()
    model = MedMamba(num_classes=constructor["num_classes"], depths=tuple(constructor["depths"]),
                     dims=tuple(constructor["dims"])).eval()
    model.load_state_dict(state, strict=True)
    with torch.inference_mode():
        for name in ("x1", "x2"):
            logits = model(tensors[f"input.{name}"])
            expected = tensors[f"logits.{name}"]
            assert logits.shape == expected.shape
            assert (logits - expected).abs().max().item() < 2e-5, name


def test_loaded_weights_keep_channels_last_convolutions():
    _, state, _ = _tiny_official()
    model = MedMamba(num_classes=5, depths=(1, 1, 2, 1), dims=(12, 24, 48, 96))
    model.load_state_dict(state, strict=True)
    conv = model.layers[0].blocks[0].conv33conv33conv11[1].weight
    assert conv.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(conv, state["layers.0.blocks.0.conv33conv33conv11.1.weight"])


@pytest.mark.parametrize("name", ["medmamba_t", "medmamba_s", "medmamba_b", "inception_v3", "resnet50", "vgg16"])
def test_output_shape_and_cam_target(name):
    """Every registry model gives (batch, 5) logits, and its CAM target yields NCHW maps with gradients."""
    torch.manual_seed(0)
    model = create_model(name).eval()
    defaults = model_defaults(name)
    captured = {}
    layer = get_submodule(model, defaults.cam_target_layer)
    reshape = CAM_RESHAPES[defaults.cam_reshape] if defaults.cam_reshape else (lambda t: t)

    def keep(module, args, out):  # as pytorch-grad-cam does: forward hook + tensor gradient hook
        captured["activation"] = out
        out.register_hook(lambda grad: captured.update(gradient=grad))

    layer.register_forward_hook(keep)

    x = torch.randn(2, 3, defaults.input_size, defaults.input_size)
    logits = model(x)
    assert logits.shape == (2, len(ICDR_GRADES))
    logits[:, 1].sum().backward()
    activation, gradient = reshape(captured["activation"]), reshape(captured["gradient"])
    assert activation.dim() == 4 and activation.shape[0] == 2
    assert activation.shape[2] > 1 and activation.shape[3] > 1
    assert gradient.shape == activation.shape
    assert gradient.abs().sum() > 0
    assert model.default_cfg["architecture"] == name


def test_cam_target_must_exist():
    with pytest.raises(ValueError, match="no submodule 'layers.9'"):
        get_submodule(create_model("medmamba_t"), "layers.9")


def test_inception_aux_head_only_in_training():
    model = create_model("inception_v3")
    x = torch.randn(2, 3, 299, 299)
    train_out = model.train()(x)
    assert train_out.logits.shape == (2, 5) and train_out.aux_logits.shape == (2, 5)
    assert model.eval()(x).shape == (2, 5)


def test_medmamba_learns_on_cpu():
    """Training works through the fused scan's backward: a few steps fit a fixed batch."""
    torch.manual_seed(0)
    model = MedMamba(num_classes=5, depths=(1, 1, 1, 1), dims=(16, 32, 64, 128), drop_path_rate=0.0).train()
    images, labels = torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 3])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert losses[-1] < 0.5 * losses[0]


def test_dims_must_double():
    with pytest.raises(ValueError, match="dims must double"):
        MedMamba(dims=(96, 128, 256, 512))


def test_initialise_false_skips_the_random_weights_in_its_own_thread_only():
    """create_model(initialise=False), what a strict checkpoint load builds: torch.nn.init does nothing inside it,
    while a model another thread builds meanwhile is initialised as usual, and torch.nn.init is torch's again after."""
    import threading

    from drdemo.models import _registry

    def seeded_linear() -> torch.Tensor:
        torch.manual_seed(3)
        return torch.nn.Linear(8, 8).weight.detach().clone()

    expected = seeded_linear()
    beside = []
    with _registry._without_random_init():
        untouched = torch.full((4,), 7.0)
        torch.nn.init.zeros_(untouched)
        worker = threading.Thread(target=lambda: beside.append(seeded_linear()))
        worker.start()
        worker.join()
    assert torch.equal(untouched, torch.full((4,), 7.0))      # skipped here
    assert torch.equal(beside[0], expected)                    # not in the other thread
    assert torch.nn.init.zeros_ is _registry._INIT_FUNCTIONS["zeros_"]
    loaded = create_model("medmamba_t", initialise=False)      # builds, to be loaded next
    fresh = create_model("medmamba_t")
    assert {k: v.shape for k, v in loaded.state_dict().items()} == {k: v.shape for k, v in fresh.state_dict().items()}
    with pytest.raises(ValueError, match="initialise"):
        create_model("inception_v3", pretrained=True, initialise=False)
