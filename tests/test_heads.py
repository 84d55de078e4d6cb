"""Three-head models: shapes and losses, the colour-shift test, the DME label, the combined referral."""

from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from real_data import IDRID_GRADING, needs_real_data
from torch import nn

from drdemo.checkpoint import CheckpointConfig, CheckpointError
from drdemo.data import load_samples
from drdemo.evaluate.heads import colour_shift_test
from drdemo.models import create_model
from drdemo.models.heads import MultiHeadNet, corn_log_probabilities, corn_loss, lesion_map_loss
from drdemo.predictor import Predictor
from drdemo.preprocess import balance_colour, fundus_mask
from drdemo.tasks import DME_RISKS, LESION_TYPES
from drdemo.train.recipes import PRESETS
from drdemo.train.trainer import three_head_loss

HEADS = {"grade_head": "softmax", "dme_classes": list(DME_RISKS), "lesion_types": list(LESION_TYPES)}


def _disc(size: int = 64, rgb=(150, 78, 27)) -> np.ndarray:
    ys, xs = np.mgrid[:size, :size]
    image = np.zeros((size, size, 3), np.uint8)
    image[(ys - size / 2) ** 2 + (xs - size / 2) ** 2 < (0.45 * size) ** 2] = rgb
    return image


def test_a_three_head_model_gives_every_head_and_a_loss_that_skips_photos_without_masks():
    model = create_model("resnet50", heads=HEADS)
    images = torch.randn(3, 3, 64, 64)
    output = model(images)
    assert output.logits.shape == (3, 5) and output.dme_logits.shape == (3, 3)
    assert output.lesion_logits.shape == (3, 4, 8, 8) and output.features.shape == (3, 2048)
    masks = torch.zeros(3, 4, 64, 64, dtype=torch.bool)
    masks[0, 1, 10:20, 10:20] = True
    targets = {"grade": torch.tensor([0, 2, 4]), "dme": torch.tensor([2, -1, 0]),
               "masks": masks, "has_masks": torch.tensor([True, False, False])}
    recipe = PRESETS["lesions"]
    loss = three_head_loss(output, targets, recipe, nn.CrossEntropyLoss(), nn.CrossEntropyLoss())
    loss.backward()
    assert torch.isfinite(loss)
    assert model.lesion_head.block[-1].weight.grad.abs().sum() > 0          # the one photo with masks trains it
    no_masks = dict(targets, has_masks=torch.tensor([False, False, False]))
    model.zero_grad()
    three_head_loss(model(images), no_masks, recipe, nn.CrossEntropyLoss(), nn.CrossEntropyLoss()).backward()
    assert model.lesion_head.block[-1].weight.grad is None or model.lesion_head.block[-1].weight.grad.abs().sum() == 0


def test_corn_gives_valid_probabilities_and_learns_order():
    logits = torch.tensor([[5.0, 5.0, -5.0, -5.0], [-5.0, -5.0, -5.0, -5.0]])
    probabilities = corn_log_probabilities(logits).exp()
    assert torch.allclose(probabilities.sum(1), torch.ones(2), atol=1e-5)
    assert probabilities[0].argmax() == 2 and probabilities[1].argmax() == 0
    assert corn_loss(logits, torch.tensor([2, 0])) < corn_loss(logits, torch.tensor([0, 4]))


def test_the_lesion_loss_rewards_maps_on_the_lesion():
    masks = torch.zeros(1, 4, 32, 32, dtype=torch.bool)
    masks[0, 2, 8:12, 8:12] = True
    right = torch.full((1, 4, 4, 4), -6.0)
    right[0, 2, 1, 1] = 6.0
    wrong = torch.full((1, 4, 4, 4), -6.0)
    wrong[0, 2, 3, 3] = 6.0
    assert lesion_map_loss(right, masks) < 0.5 * lesion_map_loss(wrong, masks)


class _ReadsColour(nn.Module):
    """A 'model' whose grade is nothing but the input's mean blue: what the colour-shift test must catch."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 5)
        with torch.no_grad():
            self.fc.weight.zero_()
            self.fc.bias.zero_()
            self.fc.weight[0, 2] = 40.0     # bluer than the midpoint of the two colours -> No DR
            self.fc.weight[3, 2] = -40.0    # yellower -> Severe NPDR
            self.fc.bias[0], self.fc.bias[3] = 6.8, -6.8
        self.layer1 = nn.Identity()

    def forward(self, x):
        self.layer1(x[:, :, ::8, ::8])
        return self.fc(x.mean(dim=(2, 3)))


def _colour_model(colour_balance: bool) -> SimpleNamespace:
    model = MultiHeadNet(_ReadsColour(), classifier="fc", lesion_layers=["layer1"], lesion_channels=[3],
                         channels_last_features=False, num_grades=5, dme_classes=3, lesion_types=4).eval()
    config = CheckpointConfig.for_architecture(
        "resnet50", heads=HEADS, input_size=64, mean=(0.5, 0.3, 0.1), std=(0.2, 0.2, 0.2),
        preprocessing={"interpolation": "bicubic", "crop_fov": True, "local_contrast": 0.0,
                       "colour_balance": colour_balance})
    return SimpleNamespace(model=model, config=config)


def test_the_colour_shift_test_fails_a_model_that_reads_colour_and_passes_it_once_colour_is_balanced():
    rng = np.random.default_rng(0)
    images = np.stack([np.clip(_disc(rgb=(150, 78, 27)) * rng.uniform(0.8, 1.2, 3), 0, 255).astype(np.uint8)
                       for _ in range(6)])
    samples = [SimpleNamespace(grade=0, dme=0, image_id=str(i)) for i in range(6)]
    healthy, diseased = (148, 75, 34), (165, 80, 18)
    reading = colour_shift_test(_colour_model(False), images, samples, healthy, diseased)
    assert reading["mean_abs_delta_p_referable"] > 0.2 and reading["flipped_share"] > 0.5
    balanced = colour_shift_test(_colour_model(True), images, samples, healthy, diseased)
    assert balanced["mean_abs_delta_p_referable"] <= 0.03 and balanced["flipped_share"] <= 0.05


def test_colour_balance_removes_channel_gains_inside_the_field_of_view():
    photo = _disc(rgb=(120, 60, 40))
    photo[20:30, 20:30] = (200, 30, 10)                       # a lesion-coloured patch
    gained = np.clip(photo * np.array([1.2, 0.9, 0.6]), 0, 255).astype(np.uint8)
    a, b = (np.asarray(balance_colour(Image.fromarray(x)), float) for x in (photo, gained))
    inside = fundus_mask(photo)
    assert np.abs(a - b)[inside].mean() < 1.5
    assert np.allclose(a[inside].mean(axis=0), (150, 78, 27), atol=1.5) and (a[~inside] == 0).all()


def test_the_dme_risk_is_read_from_idrids_csv_layout(tmp_path):
    root = tmp_path / "B. Disease Grading"
    images = root / "1. Original Images" / "a. Training Set"
    labels = root / "2. Groundtruths"
    images.mkdir(parents=True)
    labels.mkdir()
    (root / "1. Original Images" / "b. Testing Set").mkdir()
    for name in ("IDRiD_001", "IDRiD_002"):
        Image.fromarray(_disc()).save(images / f"{name}.jpg")
    # The published header: a trailing space after the DME column, empty trailing columns, CRLF lines.
    (labels / "a. IDRiD_Disease Grading_Training Labels.csv").write_bytes(
        b"Image name,Retinopathy grade,Risk of macular edema ,,,\r\nIDRiD_001,3,2,,,\r\nIDRiD_002,0,0,,,\r\n")
    (labels / "b. IDRiD_Disease Grading_Testing Labels.csv").write_bytes(
        b"Image name,Retinopathy grade,Risk of macular edema \r\n")
    samples = load_samples(root, part="train")
    assert [(s.grade, s.dme) for s in samples] == [(3, 2), (0, 0)]


def test_the_combined_referral_says_which_reason_applies():
    predictor = Predictor(create_model("resnet50", heads=HEADS),
                          CheckpointConfig.for_architecture("resnet50", heads=HEADS, dme_threshold=0.4,
                                                            referable_threshold=0.5,
                                                            cam_target_layer="backbone.layer4"))
    grade_low, grade_high = np.array([0.7, 0.2, 0.05, 0.03, 0.02]), np.array([0.1, 0.1, 0.4, 0.3, 0.1])
    dme_low, dme_high = np.array([0.8, 0.15, 0.05]), np.array([0.1, 0.2, 0.7])
    cases = {(0, 0): (), (1, 0): ("retinopathy",), (0, 1): ("macular oedema",),
             (1, 1): ("retinopathy", "macular oedema")}
    for (grade, dme), reasons in cases.items():
        prediction = predictor._prediction((grade_low, grade_high)[grade], 0.0, None, (dme_low, dme_high)[dme])
        assert prediction.referral_reasons == reasons and prediction.referred == bool(reasons)
        assert set(prediction.dme_probabilities) == set(DME_RISKS)


def test_three_head_configs_are_validated():
    with pytest.raises(CheckpointError, match="heads.grade_head"):
        CheckpointConfig.for_architecture("resnet50", heads=dict(HEADS, grade_head="regression"))
    with pytest.raises(CheckpointError, match="DME risk levels"):
        CheckpointConfig.for_architecture("resnet50", heads=dict(HEADS, dme_classes=["a", "b"]))
    with pytest.raises(CheckpointError, match="heads.lesion_layers"):
        CheckpointConfig.for_architecture("resnet50", heads=dict(HEADS, lesion_layers=[]))
    with pytest.raises(CheckpointError,
                       match="optionally lesion_evidence_grade, lesion_evidence_weight, lesion_layers"):
        CheckpointConfig.for_architecture("resnet50", heads=dict(HEADS, lesion_layer="layer2"))
    assert CheckpointConfig.for_architecture("resnet50", heads=dict(HEADS, lesion_layers=["layer1"])).heads[
        "lesion_layers"] == ["layer1"]
    single = CheckpointConfig.for_architecture("resnet50")
    assert single.heads == {} and replace(single).preprocessing["colour_balance"] is False


def test_a_lesion_decoder_on_several_layers_fuses_them_at_the_finest_ones_resolution():
    model = create_model("resnet50", heads=dict(HEADS, lesion_layers=["layer3", "layer1"]))
    output = model(torch.randn(2, 3, 64, 64))
    assert output.lesion_logits.shape == (2, 4, 16, 16)                     # layer1: 1/4 of the input
    output.lesion_logits.sum().backward()
    assert all(lateral.weight.grad.abs().sum() > 0 for lateral in model.lesion_head.lateral)
    # a config naming no layers is every checkpoint before they were named: the one default layer, the plain decoder
    legacy = create_model("resnet50", heads=HEADS)
    assert legacy.lesion_head.block[0].in_channels == 512 and legacy(torch.randn(1, 3, 64, 64)).lesion_logits.shape[
        -1] == 8
    with pytest.raises(ValueError, match="did you mean 'layer2'"):
        create_model("resnet50", heads=dict(HEADS, lesion_layers=["layer_2"]))


@needs_real_data
def test_a_real_idrid_csv_gives_every_photo_a_dme_risk():
    samples = load_samples(IDRID_GRADING, part="train")
    assert len(samples) == 413 and {s.dme for s in samples} == {0, 1, 2}


def test_lesion_maps_are_scored_against_a_blank_and_a_centre_map():
    from drdemo.cam.lesion_maps import score_lesion_maps
    inside = np.zeros((32, 32), bool)
    inside[4:28, 4:28] = True
    masks = np.zeros((2, 32, 32), bool)
    masks[0, 5:8, 5:8] = True                     # off-centre, where the centre map is low
    on_lesion = {"a": masks[0].astype(np.float32), "b": np.zeros((32, 32), np.float32)}
    result = score_lesion_maps([(on_lesion, masks, inside)], ["a", "b"])
    row = result["per_type"]["a"]
    assert row["aupr"] == 1.0 and row["blank_aupr"] == pytest.approx(9 / inside.sum()) and row["centre_aupr"] < 0.5
    assert "b" not in result["per_type"]           # a type absent from every photo is left out
    assert result["pointing_game"] == 1.0 and result["centre_pointing_game"] == 0.0
