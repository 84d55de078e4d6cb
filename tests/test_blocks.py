"""Page-level helpers: the notice says what the models are; batch outputs do not pile up on disk."""

import os
import time

import numpy as np
from PIL import Image

from drdemo.checkpoint import CheckpointConfig
from drdemo.data.synthetic import generate_fundus
from drdemo.models import create_model
from drdemo.predictor import Predictor
from drdemo.ui import blocks, views


def _predictor(provenance: dict) -> Predictor:
    config = CheckpointConfig.for_architecture("resnet50", input_size=64, provenance=provenance)
    return Predictor(create_model("resnet50", num_classes=5), config)


def test_notice_says_untrained_synthetic_or_neither():
    untrained = _predictor({"trained": False})
    synthetic = _predictor({"trained": True, "data": "Synthetic fundus images made by drdemo.data.synthetic"})
    real = _predictor({"trained": True, "data": "EyePACS train split"})
    assert "untrained" in blocks._notice([untrained, synthetic])
    assert "trained only on synthetic fundus images" in blocks._notice([synthetic, real])
    assert blocks._notice([real]) == f"**{blocks.NOT_A_DEVICE}**"


def test_old_batch_outputs_are_deleted(monkeypatch, tmp_path):
    monkeypatch.setattr(blocks.tempfile, "gettempdir", lambda: str(tmp_path))
    folder = blocks._output_folder()
    stale, fresh = folder / "old.csv", folder / "new.csv"
    stale.write_text("x")
    fresh.write_text("y")
    past = time.time() - blocks.CACHE_SECONDS - 10
    os.utime(stale, (past, past))
    blocks._output_folder()
    assert not stale.exists() and fresh.exists()


def test_notice_for_idrid_trained_models_gives_their_test_numbers_and_what_was_not_validated():
    idrid = _predictor({"trained": True, "data": "IDRiD disease grading (B. Disease Grading), its official train part"})
    idrid.config.metrics.update(test_qwk=0.712, test_referable_auc=0.901, test_n=103)
    notice = blocks._notice([idrid])
    assert "trained on photos of one camera from one hospital in India (IDRiD)" in notice
    assert "ResNet50 QWK 0.71, referable-DR AUC 0.90 (n = 103)" in notice
    assert "Other cameras, populations and image quality were not validated" in notice


def test_example_captions_give_the_true_grade():
    assert blocks._example_label(blocks.ASSETS / "examples" / "idrid_test_029_grade0_no_dr.jpg") == (
        "Grade 0: No DR")


def test_the_page_and_the_api_default_to_each_checkpoints_own_threshold(tmp_path):
    from drdemo.serving.slots import ServedModel
    low = CheckpointConfig.for_architecture("resnet50", input_size=64, referable_threshold=0.3)
    high = CheckpointConfig.for_architecture("vgg16", input_size=64, referable_threshold=0.7)
    served = [ServedModel("medmamba", Predictor(create_model("resnet50", num_classes=5), low), "test", False),
              ServedModel("inception", Predictor(create_model("vgg16", num_classes=5), high), "test", False)]
    demo = blocks.build_demo(served)
    sliders = [c for c in demo.blocks.values() if type(c).__name__ == "Slider" and "Referral" in (c.label or "")]
    values = sorted(round(s.value, 2) for s in sliders)
    assert values == [0.3, 0.3, 0.3, 0.7, 0.7]           # Grade (first model), Compare and Batch (one per model)
    handlers = {fn.name: fn.fn for fn in demo.fns.values()}
    photo = tmp_path / "fundus.png"
    Image.fromarray(generate_fundus(7, 2, size=256).image).save(photo)
    # called with just an image, as the API allows, each model refers at its checkpoint's threshold
    _, _, text = handlers["grade"](str(photo))
    *_, compared, _ = handlers["compare"](str(photo))
    assert "threshold 30%" in text and "threshold 30%" in compared and "threshold 70%" in compared


def _two_models() -> list:
    from drdemo.serving.slots import ServedModel
    small = CheckpointConfig.for_architecture("resnet50", input_size=64, provenance={"trained": True, "data": "x"})
    large = CheckpointConfig.for_architecture("vgg16", input_size=96, display_name="Big VGG",
                                              provenance={"trained": True, "data": "x"})
    return [ServedModel("medmamba", Predictor(create_model("resnet50", num_classes=5), small), "org/a @ 1234567",
                        False),
            ServedModel("inception", Predictor(create_model("vgg16", num_classes=5), large), "org/b @ 89abcde",
                        False)]


def test_compare_draws_both_maps_at_one_size_over_one_view_and_charts_both_models(tmp_path):
    demo = blocks.build_demo(_two_models())
    handlers = {fn.name: fn.fn for fn in demo.fns.values()}
    photo = tmp_path / "fundus.png"
    Image.fromarray(generate_fundus(3, 3, size=256).image).save(photo)
    first, second, cam_a, cam_b, text, chart = handlers["compare"](str(photo), opacity=0.0)
    side = blocks.COMPARE_VIEW_SIZE
    assert cam_a.size == cam_b.size == (side, side)        # models of 64 and 96 px, one display size
    assert np.asarray(cam_a).tolist() == np.asarray(cam_b).tolist()   # opacity 0: the same view of the photo
    bars = [patch for patch in chart.axes[0].patches]
    assert len(bars) == 10 and sorted(round(b.get_height(), 6) for b in bars) == sorted(
        round(v, 6) for v in [*first.values(), *second.values()])
    assert [t.get_text() for t in chart.axes[0].get_legend().get_texts()] == ["ResNet50", "Big VGG"]
    assert "ResNet50" in text and "Big VGG" in text and "resnet50" not in text


def test_the_page_names_models_as_people_do_shows_the_upload_at_once_and_says_how_to_read_it(tmp_path):
    demo = blocks.build_demo(_two_models())
    components = list(demo.blocks.values())
    dropdown = next(c for c in components if type(c).__name__ == "Dropdown" and c.label == "Model")
    assert [choice[0] for choice in dropdown.choices] == ["ResNet50", "Big VGG"]
    markdown = "\n".join(str(c.value) for c in components if type(c).__name__ == "Markdown")
    assert "**ResNet50** (`resnet50`): org/a @ 1234567" in markdown      # the registry id in the details
    assert "Model card: Big VGG (`vgg16`)" in markdown
    assert markdown.count("**Referral line**") == 2 and markdown.count("**Heat map**") == 2   # Grade, Compare
    galleries = [c for c in components if type(c).__name__ == "Gallery" and (c.elem_id or "").endswith("-examples")]
    assert len(galleries) == 2 and all("IDRiD test photos" in g.label and "Grade 4: Proliferative DR" in str(g.value)
                                       for g in galleries)           # thumbnails captioned with the true grade

    photo = tmp_path / "camera.jpeg"
    Image.fromarray(generate_fundus(3, 3, size=256).image).resize((1600, 1200)).save(photo, quality=90)
    before = photo.read_bytes()
    shown, note = blocks._preview(str(photo))
    assert shown.size == (views.PREVIEW_SIDE, 480) and "Image check: accepted" in note
    assert photo.read_bytes() == before                  # a display copy: the upload itself is untouched
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    shown, note = blocks._preview(str(text))
    assert shown is None and "refused" in note and "not an image" in note
    assert blocks._preview(None) == (None, "")


def test_the_tta_box_names_the_models_that_always_average_eight_views():
    from dataclasses import replace
    from types import SimpleNamespace

    from drdemo.checkpoint import CheckpointConfig
    from drdemo.ui.blocks import _tta_label

    def served(architecture: str, views: int) -> SimpleNamespace:
        return SimpleNamespace(config=replace(CheckpointConfig.for_architecture(architecture), test_time_views=views))

    assert _tta_label([served("medmamba_t", 1), served("inception_v3", 1)]).endswith("(up to 8x slower)")
    assert _tta_label([served("medmamba_t", 8), served("inception_v3", 1)]).endswith("; MedMamba-T always does")
    assert _tta_label([served("medmamba_t", 8), served("inception_v3", 8)]).endswith(
        "; MedMamba-T and InceptionV3 always do")
