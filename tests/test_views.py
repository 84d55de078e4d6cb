"""What the page says, from plain analyses: grades, referral, agreement between the models."""

import numpy as np
from PIL import Image

from drdemo.predictor import Analysis, Prediction
from drdemo.tasks import decided_classes, decided_dme_risks
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


def _three_head(probabilities, referable_probability, dme_probability, threshold, dme_threshold):
    # as the predictor names them: the grade and risk on the referral's side of each threshold
    grade = int(decided_classes(np.array([probabilities]), "icdr5", threshold)[0])
    dme = np.array([[1 - dme_probability - 0.01, 0.01, dme_probability]])
    reasons = tuple(r for r, on in (("retinopathy", referable_probability >= threshold),
                                     ("macular oedema", dme_probability >= dme_threshold)) if on)
    return Prediction(probabilities=dict(zip(GRADES, probabilities)), grade=grade, grade_name=GRADES[grade],
                      seconds=0.05, referable_probability=referable_probability,
                      referable=referable_probability >= threshold,
                      dme_probabilities={"No DME risk": 1 - dme_probability - 0.01, "DME risk 1": 0.01,
                                         "DME risk 2": dme_probability},
                      dme_referable_probability=dme_probability, dme_referable=dme_probability >= dme_threshold,
                      dme_risk=int(decided_dme_risks(dme, dme_threshold)[0]), referral_reasons=reasons)


def test_the_decision_heads_the_panel_and_nothing_under_it_says_the_opposite():
    # "No DR" most likely, yet P(grade >= 2) 23% reaches a 22% screening threshold: the heading is the referral
    prediction = _three_head([0.5, 0.27, 0.13, 0.06, 0.04], 0.23, 0.02, 0.22, 0.13)
    text = views.decision(prediction, "MedMamba-T", 0.22, 0.13)
    lines = text.splitlines()
    assert lines[0] == "### MedMamba-T: Refer: retinopathy"
    assert lines[1] == "- P(grade ≥ 2) 23% ≥ threshold 22%: refer for retinopathy"
    assert lines[2] == "- P(DME risk 2) 2% < threshold 13%"
    assert lines[3] == ""       # a paragraph of its own, not read as part of the last criterion
    # the grade named agrees with the referral, and says which grade was the most probable
    assert lines[4] == ("Grade: Moderate NPDR (ICDR grade 2, 13%), the most probable of grades 2-4, as P(grade ≥ 2) "
                        "reaches its threshold (most probable grade: No DR, 50%); DME risk: No DME risk (97%).")
    assert "No DR" not in lines[0]


def test_the_grade_and_dme_risk_named_agree_with_the_decision():
    # most probable No DR and DME risk 1, but both referral probabilities reach their thresholds
    prediction = _three_head([0.4, 0.1, 0.2, 0.2, 0.1], 0.5, 0.3, 0.45, 0.25)
    line = views.decision(prediction, "I", 0.45, 0.25).splitlines()[-1]
    assert line.startswith("Grade: Moderate NPDR (ICDR grade 2, 20%), the most probable of grades 2-4")
    assert line.endswith("DME risk: DME risk 2 (30%).")
    assert views.decision_heading(prediction) == "Refer: retinopathy and macular oedema"
    # neither reached: the named grade is one of 0-1 and needs no aside when it is the most probable
    prediction = _three_head([0.2, 0.45, 0.2, 0.1, 0.05], 0.35, 0.05, 0.5, 0.25)
    assert views.decision(prediction, "I", 0.5, 0.25).splitlines()[-1] == (
        "Grade: Mild NPDR (ICDR grade 1, 45%); DME risk: No DME risk (94%).")


def test_a_probability_at_its_threshold_reads_as_reaching_it():
    # 13.4% against 13.0% must not print as "13% against a 13% threshold"
    assert views.percent_against(0.134, 0.13) == "13.4% ≥ threshold 13.0%"
    assert views.percent_against(0.126, 0.13) == "12.6% < threshold 13.0%"
    assert views.percent_against(0.13, 0.13) == "13.00% ≥ threshold 13.00%"
    assert views.percent_against(0.61, 0.7) == "61% < threshold 70%"
    prediction = _three_head([0.6, 0.1, 0.2, 0.05, 0.05], 0.3, 0.134, 0.5, 0.13)
    assert views.decision_heading(prediction) == "Refer: macular oedema"
    assert "P(DME risk 2) 13.4% ≥ threshold 13.0%: refer for macular oedema" in views.decision(
        prediction, "I", 0.5, 0.13)
    assert views.decision_heading(_three_head([0.9, 0.05, 0.03, 0.01, 0.01], 0.05, 0.01, 0.5, 0.13)) == "Do not refer"


def test_the_explanation_names_the_map_and_the_spread():
    heatmap = np.zeros((32, 32), np.float32)
    text = views.explanation(_analysis([0.05, 0.05, 0.6, 0.2, 0.1], 0.9, heatmap=heatmap), GRADES)
    assert 'Grad-CAM for "Moderate NPDR"' in text and "not why" in text and "Time: 50 ms" in text
    assert "Heat map" not in views.explanation(_analysis([0.7, 0.2, 0.05, 0.03, 0.02], 0.1), GRADES)
    eigen = views.explanation(_analysis([0.05, 0.05, 0.6, 0.2, 0.1], 0.9, heatmap=heatmap, cam_method="eigencam"),
                              GRADES)
    assert "EigenCAM: where the model's features respond" in eigen and "same whichever grade" in eigen
    assert '"Moderate NPDR"' not in eigen           # it names no class it would not depend on


def test_test_time_augmentation_spread_is_reported_and_flagged_when_large():
    steady = views.explanation(_analysis([0.9, 0.1, 0, 0, 0], spread={g: 0.02 for g in GRADES}), GRADES)
    shaky = views.explanation(_analysis([0.5, 0.5, 0, 0, 0], spread={g: 0.2 for g in GRADES}), GRADES)
    assert "over 8 flips/rotations" in steady and "±2%" in steady and "unstable" not in steady
    assert "unstable" in shaky
    assert "will not be graded" in views.preview_note("refused", "No round field of view.")
    assert "accepted with a warning" in views.preview_note("warned", "Blurred.")


def test_answered_by_says_where_the_weights_came_from_and_warns_of_fallbacks():
    source = {"model": "MedMamba-T", "checkpoint": "org/mm", "revision": "1a2b3c4d5e", "fallback": False,
              "trained": True}
    assert views.answered_by(source) == "Answered by MedMamba-T: `org/mm @ 1a2b3c4`"
    assert "a fallback" in views.answered_by({**source, "fallback": True})
    assert "untrained" in views.answered_by({**source, "trained": False, "fallback": True})


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
    assert views.EXAMPLES_CREDIT.endswith(IDRID_ATTRIBUTION) and "IDRiD test photos" in views.EXAMPLES_LABEL


def test_the_tta_box_names_the_models_that_always_average_eight_views():
    from dataclasses import replace

    from drdemo.checkpoint import CheckpointConfig

    def config(architecture: str, views_: int) -> CheckpointConfig:
        return replace(CheckpointConfig.for_architecture(architecture), test_time_views=views_)

    assert views.tta_label([config("medmamba_t", 1), config("inception_v3", 1)]).endswith("(up to 8x slower)")
    assert views.tta_label([config("medmamba_t", 8), config("inception_v3", 1)]).endswith("; MedMamba-T always does")
    assert views.tta_label([config("medmamba_t", 8), config("inception_v3", 8)]).endswith(
        "; MedMamba-T and InceptionV3 always do")


def test_how_to_read_gives_each_lesion_maps_cell_size_and_no_photo_count_it_cannot_know():
    common = dict(views=1, calibrated_on=None, threshold=0.5, threshold_rule=None, dme_threshold=0.2)
    text = views.how_to_read([views.ModelReading("MedMamba-T", lesion_cell_px=4.0, **common),
                              views.ModelReading("InceptionV3", lesion_cell_px=299 / 35, **common)])
    assert "Its cells are MedMamba-T 4 pixels; InceptionV3 8.54 pixels of the model input" in text
    unknown = views.how_to_read([views.ModelReading("MedMamba-T", **common)])
    assert "**Lesion map**" in unknown and "Its cells" not in unknown
    assert "**Lesion map**" not in views.how_to_read([views.ModelReading("ResNet50", 1, None, 0.5, None)])


def test_how_to_read_says_how_much_the_lesion_map_weighs_in_the_probabilities():
    common = dict(views=1, calibrated_on=None, threshold=0.5, threshold_rule=None, dme_threshold=0.2)
    text = views.how_to_read([views.ModelReading("MedMamba-T", lesion_evidence_weight=0.6, **common),
                              views.ModelReading("InceptionV3", **common)])
    assert "MedMamba-T: one view of the photo, 60% of the weight on what its lesion map shows" in text
    assert "40% on the whole photo's features" in text and "InceptionV3: one view of the photo)" in text
