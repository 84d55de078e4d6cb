"""The request handlers: gate first, each checkpoint's own threshold by default, both compare maps over one
view, previews that leave the upload untouched, batch outputs that do not pile up on disk."""

import json
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
    assert len(graded) == 8 and len(compared) == 12       # the /grade and /compare endpoints' outputs
    assert "threshold 30%" in graded.decision
    assert "threshold 30%" in compared.decision and "threshold 70%" in compared.decision
    assert graded.result["referable_threshold"] == 0.3
    assert [m["referable_threshold"] for m in compared.result["models"]] == [0.3, 0.7]


def test_the_decision_comes_first_and_says_which_checkpoint_answered(tmp_path):
    graded = handlers.make_handlers(_two_models(low=0.01)).grade(_photo(tmp_path / "fundus.png", seed=7, grade=2))
    first_line = graded.decision.splitlines()[0]
    referred = graded.result["referable_probability"] >= 0.01
    assert first_line == ("### ResNet50: Refer: retinopathy" if referred else "### ResNet50: Do not refer")
    assert graded.decision.index("P(grade ≥ 2)") < graded.decision.index("Grade: ")
    assert "Answered by ResNet50: `org/a @ 1234567`" in graded.decision
    assert graded.result["answered_by"] == {"model": "ResNet50", "architecture": "resnet50",
                                            "checkpoint": "org/a @ 1234567", "revision": None, "fallback": False,
                                            "trained": True}
    assert graded.upload_note.startswith("**Image check:") and graded.upload_note in graded.decision


def test_compare_draws_both_maps_at_one_size_over_one_view_and_charts_both_models(tmp_path):
    compared = handlers.make_handlers(_two_models()).compare(_photo(tmp_path / "fundus.png"), opacity=0.0)
    side = handlers.COMPARE_VIEW_SIZE
    assert compared.first_map.size == compared.second_map.size == (side, side)   # models of 64 and 96 px
    assert np.asarray(compared.first_map).tolist() == np.asarray(compared.second_map).tolist()  # opacity 0
    for chart, label, name in ((compared.first_chart, compared.first_probabilities, "ResNet50"),
                               (compared.second_chart, compared.second_probabilities, "Big VGG")):
        assert list(chart["model"]) == [name] * 5        # a table the browser draws, one colour per model
        assert list(chart["grade"]) == ["0 No DR", "1 Mild", "2 Moderate", "3 Severe", "4 PDR"]
        assert np.allclose(list(chart["probability"]), list(label.values()))
    assert "ResNet50" in compared.decision and "Big VGG" in compared.decision
    assert "resnet50" not in compared.decision
    assert compared.first_dme is None and compared.second_dme is None            # single-head models


def test_the_agents_tools_answer_in_json_with_the_heat_map(tmp_path):
    answer = handlers.make_handlers(_two_models(low=0.3, high=0.7))
    photo = _photo(tmp_path / "fundus.png", seed=7, grade=2)
    text, heat_map = answer.grade_tool(photo, "inception")
    result = json.loads(text)
    assert result["graded"] and result["model"] == "Big VGG" and result["referable_threshold"] == 0.7
    assert set(result["grade_probabilities"]) == set(views.ICDR_GRADES) and heat_map.size == (96, 96)
    result, heat_map = answer.compare_tool(photo)
    result = json.loads(result)
    assert [m["model"] for m in result["models"]] == ["ResNet50", "Big VGG"] and heat_map.size == (598, 299)
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    result, heat_map = answer.grade_tool(str(text))
    result = json.loads(result)
    assert result["graded"] is False and result["image_check"]["outcome"] == "refused" and heat_map is None


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


def test_a_refused_upload_is_said_where_the_decision_would_be(tmp_path):
    answer = handlers.make_handlers(_two_models())
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    graded = answer.grade(str(text))
    assert graded.decision.startswith("### Not graded") and "not an image" in graded.decision
    assert graded.upload_note.startswith("**Image check: refused.**") and graded.probabilities is None
    compared = answer.compare(str(text))
    assert compared.decision.startswith("### Not graded") and compared.first_chart is None


def test_each_model_s_input_is_prepared_beside_the_image_check_and_a_refused_photo_is_not_graded(tmp_path,
                                                                                                  monkeypatch):
    served = _two_models()
    predictors = [s.predictor for s in served]
    photo = _photo(tmp_path / "eye.png")
    checked, prepared = handlers.admit_prepared(photo, predictors)
    for predictor, made in zip(predictors, prepared):
        assert made.view.size == (predictor.input_size,) * 2
        assert np.asarray(made.view).tobytes() == np.asarray(predictor.model_view(checked.image)).tobytes()
    blue = tmp_path / "blue.png"
    Image.new("RGB", (512, 512), (20, 90, 230)).save(blue)
    forwards = []
    monkeypatch.setattr(Predictor, "analyse", lambda *args, **kwargs: forwards.append(args))
    answer = handlers.make_handlers(served)
    assert answer.grade(str(blue)).decision.startswith("### Not graded")
    assert answer.compare(str(blue)).decision.startswith("### Not graded")
    assert forwards == []


def test_the_learned_check_runs_its_network_once_per_upload(tmp_path, monkeypatch):
    from drdemo.intake.learned_check import LIKELIHOOD
    from drdemo.serving.photo_check import PhotoCheck, shared_photo_check
    check = shared_photo_check()
    if not check.available:
        return   # tests/test_learned_check.py says why (and fails under DRDEMO_REQUIRE_DATA)
    batches = []
    real = PhotoCheck.features
    monkeypatch.setattr(PhotoCheck, "features", lambda self, views: batches.append(len(views)) or real(self, views))
    photo = _photo(tmp_path / "eye.png", seed=11, grade=2)
    checked, _ = handlers.admit_prepared(photo, [_two_models()[0].predictor])
    assert batches == [1] and LIKELIHOOD in checked.assessment.measurements


def test_compare_reuses_a_model_s_view_only_when_it_is_the_shared_view_exactly(tmp_path):
    """A model that sees the photo at COMPARE_VIEW_SIZE made the shared view already; its copy is the same
    pixels prepare_image makes."""
    from drdemo.preprocess import prepare_image
    served = _two_models()
    side = handlers.COMPARE_VIEW_SIZE
    at_side = CheckpointConfig.for_architecture("vgg16", input_size=side, provenance={"trained": True, "data": "x"})
    pair = [served[0].predictor, Predictor(served[1].predictor.model, at_side)]
    photo = _photo(tmp_path / "fundus.png")
    checked, prepared = handlers.admit_prepared(photo, pair)
    analyses = [p.analyse(made) for p, made in zip(pair, prepared)]
    maps = handlers.compare_maps(checked, pair, analyses, 0.0)
    expected = prepare_image(checked.image, side, pair[0].config.preprocessing["interpolation"], True)
    assert all(np.asarray(m).tobytes() == np.asarray(expected).tobytes() for m in maps)


def test_grading_leaves_torch_its_threads_for_every_thread_that_comes_after(tmp_path):
    """torch.set_num_threads anywhere sets the count every thread started later runs with: the handlers' helper
    threads must not change it, or Gradio's next worker thread grades on one core."""
    import threading

    import torch
    original = torch.get_num_threads()
    torch.set_num_threads(2)   # a count a helper's 1 would differ from, whatever the test run was given
    try:
        handlers.make_handlers(_two_models()).compare(_photo(tmp_path / "eye.png"))
        seen = []
        thread = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
        thread.start()
        thread.join()
        assert seen == [2] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(original)
