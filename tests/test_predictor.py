"""The predictor: config-driven preprocessing, probabilities and CAM from one pass, referral, test-time augmentation."""

import numpy as np
import pytest
import torch
from PIL import Image

from drdemo.checkpoint import CheckpointConfig
from drdemo.models import create_model
from drdemo.predictor import Predictor
from drdemo.preprocess import to_model_input


@pytest.fixture(scope="module")
def predictor():
    torch.manual_seed(0)
    config = CheckpointConfig.for_architecture("medmamba_t", input_size=64, referable_threshold=0.3,
                                               provenance={"trained": True, "data": "synthetic test"})
    return Predictor(create_model("medmamba_t", num_classes=5), config)


@pytest.fixture(scope="module")
def photo():
    rng = np.random.default_rng(0)
    pixels = np.zeros((120, 160, 3), np.uint8)
    yy, xx = np.mgrid[:120, :160]
    disc = (xx - 80) ** 2 + (yy - 60) ** 2 < 55 ** 2
    pixels[disc] = rng.integers(60, 200, (disc.sum(), 3))
    return Image.fromarray(pixels)


def test_probabilities_follow_the_checkpoint_preprocessing(predictor, photo):
    prediction = predictor.predict(photo)
    kwargs = dict(input_size=64, mean=predictor.config.mean, std=predictor.config.std, crop_fov=True)
    with torch.inference_mode():
        expected = torch.softmax(predictor.model(to_model_input(photo, **kwargs)).double(), 1)[0].numpy()
    np.testing.assert_allclose(list(prediction.probabilities.values()), expected, atol=1e-6)
    assert prediction.grade == int(expected.argmax())
    assert prediction.grade_name == predictor.class_names[prediction.grade]
    assert prediction.referable_probability == pytest.approx(expected[2:].sum())
    assert prediction.referable == (expected[2:].sum() >= 0.3)                  # the config's threshold
    assert predictor.predict(photo, referable_threshold=0.99).referable is False


def test_a_cam_comes_with_the_same_probabilities(predictor, photo):
    plain = predictor.analyse(photo)
    explained = predictor.analyse(photo, cam_method="gradcam", cam_target=1)
    np.testing.assert_allclose(list(explained.prediction.probabilities.values()),
                               list(plain.prediction.probabilities.values()), atol=1e-6)
    assert explained.heatmap.shape == (64, 64) and explained.cam_target == 1 and explained.cam_method == "gradcam"
    assert explained.model_view.size == (64, 64) and plain.heatmap is None


def test_a_photo_prepared_beforehand_gets_the_same_answer_and_only_from_its_own_predictor(predictor, photo):
    """`prepare` is analyse's first step on its own (the app runs it beside the image check)."""
    prepared = predictor.prepare(photo)
    direct = predictor.analyse(photo, cam_method="gradcam")
    again = predictor.analyse(prepared, cam_method="gradcam")
    assert again.prediction.probabilities == direct.prediction.probabilities
    np.testing.assert_array_equal(again.heatmap, direct.heatmap)
    assert np.asarray(again.model_view).tobytes() == np.asarray(direct.model_view).tobytes()
    assert again.prediction.seconds >= prepared.seconds
    other = Predictor(predictor.model, CheckpointConfig.for_architecture("medmamba_t", input_size=96))
    with pytest.raises(ValueError, match="prepared for a model with other preprocessing"):
        other.analyse(prepared)


def test_test_time_augmentation_reports_the_spread_over_eight_views(predictor, photo):
    analysis = predictor.analyse(photo, tta=True)
    assert analysis.views == 8 and set(analysis.spread) == set(predictor.class_names)
    assert all(0 <= s < 0.5 for s in analysis.spread.values())
    assert sum(analysis.prediction.probabilities.values()) == pytest.approx(1.0)


def test_untrained_predictors_say_so_and_repeat_their_answers(photo):
    first, second = Predictor.untrained("resnet50", seed=3), Predictor.untrained("resnet50", seed=3)
    assert not first.trained and first.config.provenance == {"trained": False}
    assert first.predict(photo).probabilities == second.predict(photo).probabilities


def test_the_checkpoints_views_and_calibration_decide_grade_and_cam_target(predictor, photo):
    """A calibration that favours Severe NPDR makes it the grade, the CAM explains that grade, and with
    eight views the probabilities are the mean over them whether or not a CAM is asked for."""
    from dataclasses import replace

    from drdemo.calibration import class_probabilities
    from drdemo.inference import view_logits
    calibration = {"temperature": 1.0, "logit_bias": [0.0, 0.0, 0.0, 8.0, 0.0]}
    for views in (1, 8):
        config = replace(predictor.config, test_time_views=views, calibration=calibration)
        served = Predictor(predictor.model, config)
        kwargs = dict(input_size=64, mean=config.mean, std=config.std, crop_fov=True)
        logits = view_logits(served.model, to_model_input(photo, **kwargs), views)
        expected = class_probabilities(logits, calibration)[0]
        for cam in (None, "gradcam"):
            analysis = served.analyse(photo, cam_method=cam)
            np.testing.assert_allclose(list(analysis.prediction.probabilities.values()), expected, atol=1e-6)
            assert analysis.prediction.grade == 3 and analysis.views == views
            assert analysis.cam_target == (3 if cam else None)
            assert (analysis.spread is not None) == (views == 8)


def test_a_batch_gets_each_photos_own_answer_from_one_forward(predictor, photo):
    """predict_batch over the checkpoint's views: the probabilities, grade, referral and pooled features that
    analyse gives each photo alone."""
    from dataclasses import replace
    photos = [photo, photo.rotate(90), Image.new("RGB", (90, 90), (120, 40, 10))]
    for views in (1, 8):
        served = Predictor(predictor.model, replace(predictor.config, test_time_views=views))
        batch = served.predict_batch(photos, referable_threshold=0.2)
        assert len(batch) == len(photos)
        for alone, together in zip((served.analyse(p, referable_threshold=0.2) for p in photos), batch):
            np.testing.assert_allclose(list(together.prediction.probabilities.values()),
                                       list(alone.prediction.probabilities.values()), atol=1e-5)
            assert together.prediction.grade == alone.prediction.grade
            assert together.prediction.referable == alone.prediction.referable
            np.testing.assert_allclose(together.features, alone.features, atol=1e-4)
            assert together.views == views and together.heatmap is None
    assert predictor.predict_batch([]) == []


def test_the_grade_named_and_the_map_agree_with_the_referral_at_any_threshold(predictor, photo):
    """A screening threshold far from 0.5 moves the grade the page names to the referral's side of it, and
    the Grad-CAM explains that grade, with or without test-time views."""
    for tta in (False, True):
        seen = set()
        for threshold in (0.02, 0.5, 0.98):
            analysis = predictor.analyse(photo, cam_method="gradcam", referable_threshold=threshold, tta=tta)
            p = analysis.prediction
            assert p.referable == (p.grade >= 2) == (p.referable_probability >= threshold)
            assert analysis.cam_target == p.grade
            side = list(p.probabilities.values())[2:] if p.referable else list(p.probabilities.values())[:2]
            assert p.probabilities[p.grade_name] == max(side)
            seen.add(p.referable)
        assert seen == {True, False}


def test_the_lesion_maps_cell_size_follows_the_layers_its_decoder_reads(tmp_path, untrained_checkpoint):
    from drdemo.checkpoint import load_model
    from drdemo.train.lesion_head import refit_model
    folder = untrained_checkpoint(tmp_path / "heads", "resnet50", three_heads=True, input_size=64)
    loaded = load_model(folder, device="cpu")
    assert Predictor.from_loaded(loaded).lesion_cell_px == 8.0                  # layer2: 1/8 of the input
    finer = refit_model(loaded.config, loaded.model.state_dict(), ["layer1", "layer2"])
    assert Predictor(finer, loaded.config).lesion_cell_px == 4.0                # fused at layer1: 1/4
    single = CheckpointConfig.for_architecture("resnet50", input_size=64)
    assert Predictor(create_model("resnet50"), single).lesion_cell_px is None
