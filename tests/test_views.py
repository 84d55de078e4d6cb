"""What the page says, from plain analyses: grades, referral, agreement between the models."""

import numpy as np
from PIL import Image

from drdemo.predictor import Analysis, Prediction
from drdemo.ui import views

GRADES = ("No DR", "Mild NPDR", "Moderate NPDR", "Severe NPDR", "Proliferative DR")


def _analysis(probabilities, referable_probability=None, threshold=0.5, heatmap=None, spread=None, seconds=0.05,
              cam_method="gradcam"):
    grade = int(np.argmax(probabilities))
    prediction = Prediction(probabilities=dict(zip(GRADES, probabilities)), grade=grade, grade_name=GRADES[grade],
                            seconds=seconds, referable_probability=referable_probability,
                            referable=None if referable_probability is None else referable_probability >= threshold)
    return Analysis(prediction=prediction, model_view=Image.new("RGB", (32, 32), (150, 60, 30)), heatmap=heatmap,
                    cam_method=cam_method if heatmap is not None else None, cam_target=grade if heatmap is not None
                    else None, spread=spread, views=8 if spread else 1)


def test_verdict_names_the_grade_the_referral_and_the_map():
    heatmap = np.zeros((32, 32), np.float32)
    text = views.verdict(_analysis([0.05, 0.05, 0.6, 0.2, 0.1], 0.9, heatmap=heatmap), "medmamba_t", GRADES, 0.5)
    assert "**medmamba_t: Moderate NPDR** (ICDR grade 2, probability 60%)" in text
    assert "**Referable**: P(grade 2 or worse) = 90%, threshold 50%." in text
    assert 'Grad-CAM for "Moderate NPDR"' in text and "not why" in text
    low = views.verdict(_analysis([0.7, 0.2, 0.05, 0.03, 0.02], 0.1), "inception_v3", GRADES, 0.5)
    assert "Not referable: P(grade 2 or worse) = 10%" in low and "Heat map" not in low
    eigen = views.verdict(_analysis([0.05, 0.05, 0.6, 0.2, 0.1], 0.9, heatmap=heatmap, cam_method="eigencam"),
                          "inception_v3", GRADES, 0.5)
    assert "EigenCAM: where the model's features respond" in eigen and "same whichever grade" in eigen
    assert '"Moderate NPDR"' not in eigen           # it names no class it would not depend on


def test_test_time_augmentation_spread_is_reported_and_flagged_when_large():
    steady = views.verdict(_analysis([0.9, 0.1, 0, 0, 0], spread={g: 0.02 for g in GRADES}), "m", GRADES, 0.5)
    shaky = views.verdict(_analysis([0.5, 0.5, 0, 0, 0], spread={g: 0.2 for g in GRADES}), "m", GRADES, 0.5)
    assert "over 8 flips/rotations" in steady and "±2%" in steady and "unstable" not in steady
    assert "±20%" in shaky and "unstable" in shaky


def test_agreement_line():
    a = _analysis([0.1, 0.1, 0.7, 0.05, 0.05], 0.8)
    b = _analysis([0.1, 0.1, 0.3, 0.4, 0.1], 0.8)
    c = _analysis([0.8, 0.1, 0.05, 0.03, 0.02], 0.1)
    same_referral = views.agreement(a, b, ("medmamba_t", "inception_v3"))
    assert "**Different grades**: medmamba_t says Moderate NPDR, inception_v3 says Severe NPDR." in same_referral
    assert "**Same referral**" in same_referral and "Largest probability difference: 40% (Moderate NPDR)" in \
        same_referral
    assert "**Different referral**" in views.agreement(a, c, ("x", "y"))
    assert "**Same grade**" in views.agreement(a, a, ("x", "y"))


def test_overlay_pair_without_a_map_shows_the_input_twice():
    analysis = _analysis([1, 0, 0, 0, 0])
    first, second = views.overlay_pair(analysis, 0.5)
    assert first is second is analysis.model_view
    heated = _analysis([1, 0, 0, 0, 0], heatmap=np.ones((32, 32), np.float32))
    original, overlaid = views.overlay_pair(heated, 0.5)
    assert original.size == overlaid.size and np.asarray(original).tolist() != np.asarray(overlaid).tolist()


def test_grades_table_lists_every_grade():
    table = views.grades_table()
    assert all(name in table for name in GRADES) and "Referable" in table


def test_how_to_read_follows_each_models_views_calibration_and_threshold():
    averaged = views.ModelReading("MedMamba-T", 8, "83 validation photos", 0.638, "highest threshold with "
                                  "referable sensitivity >= 0.9 on 83 validation photos")
    plain = views.ModelReading("InceptionV3", 1, None, 0.378, None)
    text = views.how_to_read([averaged, plain])
    assert "MedMamba-T: the mean over 8 flips and rotations of the photo, calibrated on 83 validation photos" in text
    assert "InceptionV3: one view of the photo)" in text and "not the chance that the patient has the disease" in text
    assert "MedMamba-T 64% (highest threshold with referable sensitivity >= 0.9" in text and "InceptionV3 38%" in text
    assert "computed on that one view even where the probabilities average several" in text
    assert "average several" not in views.how_to_read([plain])    # nothing to warn about with one view each


def test_heat_maps_of_different_sizes_are_drawn_over_one_view():
    view = Image.new("RGB", (120, 120), (150, 60, 30))
    small = _analysis([1, 0, 0, 0, 0], heatmap=np.eye(32, dtype=np.float32))
    large = _analysis([0, 1, 0, 0, 0], heatmap=np.eye(48, dtype=np.float32))
    first, second = views.shared_view_overlays(view, [small, large], 0.6)
    assert first.size == second.size == view.size
    difference = np.abs(np.asarray(first, float) - np.asarray(second, float)).mean()
    assert difference < 10            # the same diagonal map, resized from 32 and 48 px, lands in the same place
    assert views.shared_view_overlays(view, [_analysis([1, 0, 0, 0, 0])], 0.6) == [view]


def test_preview_note_says_what_happens_next():
    assert "Press the button" in views.preview_note("accepted", "Looks like a colour fundus photo.")
    assert "will not be graded" in views.preview_note("refused", "No round field of view.")
    assert "accepted with a warning" in views.preview_note("warned", "Blurred.")


def test_agreement_headline_over_the_chart():
    a = _analysis([0.1, 0.1, 0.7, 0.05, 0.05], 0.8)
    b = _analysis([0.1, 0.1, 0.3, 0.4, 0.1], 0.8)
    c = _analysis([0.8, 0.1, 0.05, 0.03, 0.02], 0.1)
    assert views.agreement_headline(a, b, ("M", "I")) == "Different grades: M Moderate NPDR, I Severe NPDR; both refer"
    assert views.agreement_headline(a, c, ("M", "I")).endswith("; only M refers")
    assert views.agreement_headline(c, c, ("M", "I")) == "Same grade (No DR); both do not refer"


def _config(provenance: dict | None = None, **fields):
    from drdemo.checkpoint import CheckpointConfig
    return CheckpointConfig.for_architecture("resnet50", input_size=64, provenance=provenance or {}, **fields)


def test_notice_says_untrained_synthetic_or_neither():
    untrained = _config({"trained": False})
    synthetic = _config({"trained": True, "data": "Synthetic fundus images made by drdemo.data.synthetic"})
    real = _config({"trained": True, "data": "EyePACS train split"})
    assert "untrained" in views.notice([untrained, synthetic])
    assert "trained only on synthetic fundus images" in views.notice([synthetic, real])
    assert views.notice([real]) == f"**{views.NOT_A_DEVICE}**"


def test_notice_for_idrid_trained_models_gives_their_test_numbers_and_what_was_not_validated():
    idrid = _config({"trained": True, "data": "IDRiD disease grading (B. Disease Grading), its official train part"})
    idrid.metrics.update(test_qwk=0.712, test_referable_auc=0.901, test_n=103)
    notice = views.notice([idrid])
    assert "trained on photos of one camera from one hospital in India (IDRiD)" in notice
    assert "ResNet50 QWK 0.71, referable-DR AUC 0.90 (n = 103)" in notice
    assert "Other cameras, populations and image quality were not validated" in notice


def test_example_captions_give_the_true_grade():
    from pathlib import Path
    assert views.example_label(Path("assets/examples/idrid_test_029_grade0_no_dr.jpg")) == "Grade 0: No DR"
    assert views.example_label(Path("own_photo.jpg")) == "own_photo"


def test_the_examples_label_carries_idrids_attribution():
    from drdemo.data.datasets import IDRID_ATTRIBUTION
    assert views.EXAMPLES_LABEL.endswith(IDRID_ATTRIBUTION) and "IDRiD test photos" in views.EXAMPLES_LABEL


def test_the_tta_box_names_the_models_that_always_average_eight_views():
    from dataclasses import replace

    from drdemo.checkpoint import CheckpointConfig

    def config(architecture: str, views_: int) -> CheckpointConfig:
        return replace(CheckpointConfig.for_architecture(architecture), test_time_views=views_)

    assert views.tta_label([config("medmamba_t", 1), config("inception_v3", 1)]).endswith("(up to 8x slower)")
    assert views.tta_label([config("medmamba_t", 8), config("inception_v3", 1)]).endswith("; MedMamba-T always does")
    assert views.tta_label([config("medmamba_t", 8), config("inception_v3", 8)]).endswith(
        "; MedMamba-T and InceptionV3 always do")
