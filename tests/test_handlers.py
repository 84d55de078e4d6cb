"""The request handlers: gate first, each checkpoint's own threshold by default, both compare maps over one
view, previews that leave the upload untouched, batch outputs that do not pile up on disk."""

import os
import time

import numpy as np
from PIL import Image

from drdemo.checkpoint import CheckpointConfig
from drdemo.data.synthetic import generate_fundus
from drdemo.models import create_model
from drdemo.predictor import Predictor
from drdemo.serving.slots import ServedModel
from drdemo.ui import handlers, views


def _two_models(low: float = 0.5, high: float = 0.5) -> list[ServedModel]:
    small = CheckpointConfig.for_architecture("resnet50", input_size=64, referable_threshold=low,
                                              provenance={"trained": True, "data": "x"})
    large = CheckpointConfig.for_architecture("vgg16", input_size=96, display_name="Big VGG", referable_threshold=high,
                                              provenance={"trained": True, "data": "x"})
    return [ServedModel("medmamba", Predictor(create_model("resnet50", num_classes=5), small), "org/a @ 1234567",
                        False),
            ServedModel("inception", Predictor(create_model("vgg16", num_classes=5), large), "org/b @ 89abcde",
                        False)]


def _photo(path, seed: int = 3, grade: int = 3):
    Image.fromarray(generate_fundus(seed, grade, size=256).image).save(path)
    return str(path)


def test_old_batch_outputs_are_deleted(monkeypatch, tmp_path):
    monkeypatch.setattr(handlers.tempfile, "gettempdir", lambda: str(tmp_path))
    folder = handlers.output_folder()
    stale, fresh = folder / "old.csv", folder / "new.csv"
    stale.write_text("x")
    fresh.write_text("y")
    past = time.time() - handlers.CACHE_SECONDS - 10
    os.utime(stale, (past, past))
    handlers.output_folder()
    assert not stale.exists() and fresh.exists()


def test_called_with_just_an_image_each_model_refers_at_its_checkpoints_threshold(tmp_path):
    answer = handlers.make_handlers(_two_models(low=0.3, high=0.7))
    photo = _photo(tmp_path / "fundus.png", seed=7, grade=2)
    graded = answer.grade(photo)
    compared = answer.compare(photo)
    assert len(graded) == 5 and len(compared) == 9       # the /grade and /compare endpoints' outputs
    assert "threshold 30%" in graded.verdict
    assert "threshold 30%" in compared.agreement and "threshold 70%" in compared.agreement


def test_compare_draws_both_maps_at_one_size_over_one_view_and_charts_both_models(tmp_path):
    compared = handlers.make_handlers(_two_models()).compare(_photo(tmp_path / "fundus.png"), opacity=0.0)
    side = handlers.COMPARE_VIEW_SIZE
    assert compared.first_map.size == compared.second_map.size == (side, side)   # models of 64 and 96 px
    assert np.asarray(compared.first_map).tolist() == np.asarray(compared.second_map).tolist()  # opacity 0
    chart = compared.chart
    bars = [patch for patch in chart.axes[0].patches]
    assert len(bars) == 10 and sorted(round(b.get_height(), 6) for b in bars) == sorted(
        round(v, 6) for v in [*compared.first_probabilities.values(), *compared.second_probabilities.values()])
    assert [t.get_text() for t in chart.axes[0].get_legend().get_texts()] == ["ResNet50", "Big VGG"]
    assert "ResNet50" in compared.agreement and "Big VGG" in compared.agreement
    assert "resnet50" not in compared.agreement
    assert compared.first_dme is None and compared.second_dme is None            # single-head models


def test_the_preview_is_a_display_copy_and_says_what_the_image_check_found(tmp_path):
    photo = tmp_path / "camera.jpeg"
    Image.fromarray(generate_fundus(3, 3, size=256).image).resize((1600, 1200)).save(photo, quality=90)
    before = photo.read_bytes()
    shown, note = handlers.preview(str(photo))
    assert shown.size == (views.PREVIEW_SIDE, 480) and "Image check: accepted" in note
    assert photo.read_bytes() == before                  # a display copy: the upload itself is untouched
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    shown, note = handlers.preview(str(text))
    assert shown is None and "refused" in note and "not an image" in note
    assert handlers.preview(None) == (None, "")
