"""The model card (the checkpoint's README.md, with Hub YAML metadata): what a reader must know
about the weights, written from config.json alone, so the card never says what the config does not.
"""

from __future__ import annotations

import re

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from drdemo.cam.methods import CAM_METHOD_NAMES, CLASS_INDEPENDENT_METHODS
from drdemo.checkpoint.config import CheckpointConfig, idrid_in_training, training_stages
from drdemo.data.datasets import IDRID_ATTRIBUTION, IDRID_CAMERA


def model_card(config: CheckpointConfig, evaluations: dict[str, dict] | None = None) -> str:
    """README.md for the checkpoint: Hub YAML metadata (with a model-index of the recorded test results),
    then what a reader must know. `evaluations` are the folder's eval/*.json by name."""
    provenance, metrics = config.provenance, config.metrics
    evaluations = evaluations or {}
    data = ModelCardData(
        license="other", license_name="research-demo", library_name="pytorch", pipeline_tag="image-classification",
        tags=["diabetic-retinopathy", "fundus", "medical-imaging", config.architecture, "safetensors", "drdemo"]
        + (["synthetic-data"] if config.trained_on_synthetic_data else []),
        model_name=config.display_name,
        eval_results=(_eval_results(evaluations.get("lesion_aware_test")) + model_index(evaluations)) or None,
    )
    metric_rows = "\n".join(f"| {name} | {value} |" for name, value in sorted(metrics.items())) or "| (none) | - |"
    trained = config.trained
    body = f"""
# {config.architecture} for diabetic retinopathy grading ({config.task})

**Not a medical device.** This checkpoint belongs to a research demonstration. It must not be
used to diagnose, grade, triage or refer patients.

## Intended use
Demonstrating and comparing models in the drdemo app: for each colour fundus photo, the
probability of every class ({", ".join(config.class_names)}). "Referable" means ICDR grade 2 or
above; the app calls an eye referable when that probability reaches {config.referable_threshold}.

## Training data
{provenance.get("data", "Not recorded.") if trained else "None: these weights are untrained (randomly initialised)."}
{_attribution(provenance)}{_starting_weights(provenance)}{_calibration_text(config)}{_threshold_text(config)}
Recipe: {provenance.get("recipe", "not recorded")}. Seed: {provenance.get("seed", "not recorded")}.
Code commit: {provenance.get("code_commit", "not recorded")}.
{_how_it_was_made(provenance)}
## Evaluation
| metric | value |
|---|---|
{metric_rows}
{_lesion_aware_text(config, evaluations)}{_confusion_matrices(config)}{_generalisation(provenance)}
{_explanations(config)}{_other_evaluations(evaluations)}
## Input
RGB, {"cropped to the field of view (black border removed, padded to a square), " if config.preprocessing["crop_fov"]
      else ""}resized to {config.input_size} x {config.input_size} ({config.preprocessing["interpolation"]}),
{_local_contrast_text(config.preprocessing)}scaled to [0, 1], normalised with mean {list(config.mean)} and std
{list(config.std)}.

## Limitations
{_limitations(provenance, config.heads)} Grad-CAM overlays show where the model looked, not why.

## Loading
```python
from drdemo.checkpoint import load_model
loaded = load_model("<this repo id or folder>")
```
"""
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}").content


# The IDRiD challenge's reported results on the same test split (sub-challenge 2, grading), beside ours: all
# used ImageNet-pretrained weights and outside data; ours use IDRiD's training photos only (and, by stage, ImageNet
# weights, a teacher, this project's synthetic images), as `_trained_with` says.
CHALLENGE_RESULTS = (
    ("IDRiD challenge, 1st (joint accuracy)", "0.631", "ImageNet weights, outside data"),
    ("IDRiD challenge, 2nd", "0.554", "ImageNet weights, outside data"),
    ("IDRiD challenge, 3rd", "0.515", "ImageNet weights, outside data"),
    ("CANet (Li et al., IEEE TMI 2019)", "0.65", "ImageNet weights"),
    ("ResNet-50, ImageNet-pretrained (DR accuracy 0.73, DME accuracy 0.80)", "-", "ImageNet weights"),
)
_MODEL_INDEX = (("qwk", "Quadratic weighted kappa (DR grade)"), ("accuracy", "DR grade accuracy"),
                ("referable_auc", "Referable DR ROC AUC"), ("dme_accuracy", "DME risk accuracy"),
                ("referable_dme_auc", "Referable DME ROC AUC"), ("joint_accuracy", "Joint accuracy (DR and DME)"))


def _eval_results(test: dict | None) -> list[EvalResult]:
    if not test:
        return []
    return [EvalResult(task_type="image-classification", dataset_type="idrid", dataset_name="IDRiD disease grading",
                       dataset_split="test", metric_type=key, metric_name=name, metric_value=round(float(test[key]), 4))
            for key, name in _MODEL_INDEX if test.get(key) is not None]


def _number(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def _lesion_aware_text(config: CheckpointConfig, evaluations: dict[str, dict]) -> str:
    """The three-head results (validation and test), the shortcut checks, the lesion maps and the challenge's."""
    runs = {part: evaluations.get(f"lesion_aware_{part}") for part in ("val", "test")}
    if not config.heads or not any(runs.values()):
        return ""
    columns = [(f"{'validation' if part == 'val' else 'test'} ({record['n']} photos)", record)
               for part, record in runs.items() if record]
    columns += [(f"{'validation' if record.get('part') == 'val' else 'test'}, mean of {record.get('views')} views: "
                 f"the page's test-time option ({record['n']} photos)", record)
                for name, record in sorted(evaluations.items()) if VIEWS_REPORT.fullmatch(name)]
    keys = (("qwk", "DR grade: QWK"), ("accuracy", "DR grade: accuracy"), ("referable_auc", "referable DR: ROC AUC"),
            ("referable_sensitivity", "referable DR: sensitivity at the threshold"),
            ("referable_specificity", "referable DR: specificity at the threshold"),
            ("dme_accuracy", "DME risk: accuracy"), ("referable_dme_auc", "referable DME (risk 2): ROC AUC"),
            ("joint_accuracy", "joint accuracy (grade and DME risk both right)"),
            ("combined_referral_sensitivity", "combined referral: sensitivity"),
            ("combined_referral_specificity", "combined referral: specificity"),
            ("most_probable_qwk", "the most probable grade instead: QWK"),
            ("most_probable_accuracy", "the most probable grade instead: accuracy"),
            ("dme_most_probable_accuracy", "the most probable DME risk instead: accuracy"),
            ("joint_most_probable_accuracy", "the most probable grade and DME risk instead: joint accuracy"))
    header = " | ".join(label for label, _ in columns)
    rows = "\n".join(f"| {label} | " + " | ".join(_number(record.get(k)) for _, record in columns) + " |"
                     for k, label in keys)
    lines = [f"\n### Three heads: DR grade ({config.heads['grade_head']} head served), macular oedema risk, "
             f"lesion maps\n\nThresholds: refer when P(grade >= 2) reaches {config.referable_threshold:g} or "
             f"P(DME risk 2) reaches {config.dme_threshold:g}, both chosen on the validation photos for "
             f"sensitivity >= 0.9. The grade and DME risk scored are the ones the page names, which agree with "
             f"those referrals: the most probable grade of 2-4 where P(grade >= 2) reaches its threshold, of 0-1 "
             f"elsewhere; DME risk 2 where P(DME risk 2) reaches its threshold, else the more probable of 0 and 1. "
             f"The last rows score the most probable ones instead (- where not measured).\n\n"
             f"| metric | {header} |\n|---|" + "---|" * len(columns) + f"\n{rows}\n"]
    test = runs["test"]
    if test:
        shift, probe = test["colour_shift"], test["mean_colour_probe"]
        lines.append(f"\nColour-shift test on the test photos (each re-balanced to the healthy-train mean colour "
                     f"{shift['healthy_train_rgb']} and to the diseased-train one {shift['diseased_train_rgb']}): mean "
                     f"|change in P(referable)| {shift['mean_abs_delta_p_referable']:.4f}, "
                     f"{shift['flipped_referrals']} of {shift['n']} referrals flipped. Mean-colour probe (any DR from "
                     f"the mean colour inside the field of view alone, logistic regression): ROC AUC "
                     f"{_number(probe['raw_photo']['train_cv_auc'])} in 5-fold cross-validation on the training "
                     f"photos and {_number(probe['raw_photo']['evaluated_auc'])} on the test photos from the raw "
                     f"photo; {_number(probe['model_input']['train_cv_auc'])} and "
                     f"{_number(probe['model_input']['evaluated_auc'])} from the model's input.\n")
        lesions = test.get("lesion_maps")
        if lesions:
            per_type = "\n".join(f"| {name} | {row['photos_with_lesion']} | {row['aupr']:.4f} | "
                                 f"{row['blank_aupr']:.4f} | {row['centre_aupr']:.4f} | {row['aupr_over_blank']:.2f}x |"
                                 for name, row in lesions["per_type"].items())
            lines.append(f"\nLesion maps on the {lesions['n']} IDRiD segmentation photos that are not copies of "
                         f"grading-training photos (pixel AUPR inside the field of view; a blank map scores the pixel "
                         f"prevalence): pointing game {_number(lesions['pointing_game'])} against "
                         f"{_number(lesions['centre_pointing_game'])} for a centre-peaked map.\n\n| lesion type | "
                         f"photos with it | AUPR | blank map | centre map | AUPR / blank |\n|---|---|---|---|---|---|\n"
                         f"{per_type}\n")
        others = test.get("other_cameras") or {}
        if others:
            lines.append("\nOther cameras (combined referral): " + "; ".join(
                f"{name}: {row['referred']} of {row['n']} referred ({100 * row['referred_share']:.1f}%)"
                for name, row in others.items()) + ".\n")
        challenge = "\n".join(f"| {name} | {joint} | {source} |" for name, joint, source in CHALLENGE_RESULTS)
        lines.append(f"\nOn the same test split, reported by others (joint accuracy): \n\n| model | joint accuracy | "
                     f"trained with |\n|---|---|---|\n| this checkpoint | {_number(test.get('joint_accuracy'))} | "
                     f"{_trained_with(config.provenance)} |\n{challenge}\n")
    return "".join(lines)


def _trained_with(provenance: dict) -> str:
    """What the weights learned from, for the comparison with the challenge: IDRiD's training photos, and
    whichever of ImageNet weights, a teacher and synthetic images their stages used."""
    stages = training_stages(provenance)
    extra = []
    if any(stage.get("pretrained") for stage in stages):
        extra.append("ImageNet weights")
    if any(stage.get("distillation") for stage in stages):
        extra.append("a teacher fine-tuned from ImageNet weights, on IDRiD and unlabelled DRIVE/CHASE_DB1 photos")
    if any("synthetic" in str(stage.get("data", "")).lower() for stage in stages):
        extra.append("this project's synthetic images")
    start = "random initialisation, " if not any(stage.get("pretrained") for stage in stages) else ""
    return f"{start}IDRiD training photos" + (f", {', '.join(extra)}" if extra else "") + "; no other graded data"


def _attribution(provenance: dict) -> str:
    if not idrid_in_training(provenance):
        return ""
    return f"\nThese weights were trained on IDRiD photos. Attribution: {IDRID_ATTRIBUTION}\n"


IDRID_LIMITATIONS = (
    f"Trained on photos of {IDRID_CAMERA} (see "
    "Training data); the test numbers above come from IDRiD's own test split, the same camera and clinic. "
    "Other cameras, populations, image quality and screening settings were not validated (the referral "
    "shares on DRIVE and CHASE_DB1 above are the only check on other cameras). IDRiD's training split has "
    "20 photos of Mild NPDR, so grade 1 is barely learned.")


def _limitations(provenance: dict, heads: dict | None = None) -> str:
    if idrid_in_training(provenance):
        return IDRID_LIMITATIONS + (" The macular oedema risk and the lesion maps were learned from the same camera's "
                                    "photos (lesion masks of 59 of them) and share these limits." if heads else
                                    " Macular oedema is not graded.")
    return provenance.get("limitations") or ("Performance on real fundus photographs, other cameras, populations or "
                                            "image quality is unknown unless reported above on such data.")


def _threshold_text(config: CheckpointConfig) -> str:
    choice = config.provenance.get("referable_threshold_choice")
    if not choice:
        return ""
    return (f"\nReferable threshold {config.referable_threshold:g}: {choice['rule']}, chosen on {choice['data']} "
            f"(there: sensitivity {choice['sensitivity']:.3f}, specificity {choice['specificity']:.3f}).\n")


def _calibration_text(config: CheckpointConfig) -> str:
    choice = config.provenance.get("calibration_choice")
    views = (f"the mean over {config.test_time_views} symmetric views of each photo (flips and rotations by 90 "
             f"degrees)" if config.test_time_views > 1 else "one view of each photo")
    if not config.calibration:
        return f"\nProbabilities: plain softmax, {views}.\n" if config.test_time_views > 1 else ""
    bias = ", ".join(f"{name} {b:+.2f}" for name, b in zip(config.class_names, config.calibration["logit_bias"]))
    fitted = (f", fitted on {choice['data']} (there the negative log-likelihood went from {choice['nll_before']:.3f} "
              f"to {choice['nll_after']:.3f})") if choice else ""
    return (f"\nCalibration: probabilities are softmax(logits / {config.calibration['temperature']:g} + bias), "
            f"bias {bias}, {views}{fitted}. It repairs the class priors that class-weighted training teaches; "
            f"the network is unchanged.\n")


def _confusion_matrices(config: CheckpointConfig) -> str:
    """Each recorded confusion matrix as a table: rows the true class, columns the predicted one."""
    matrices = config.provenance.get("confusion_matrices") or {}
    blocks = []
    for prefix, matrix in matrices.items():
        label = {"val": "validation", "test": "test"}.get(prefix, prefix)
        header = "| true \\ predicted | " + " | ".join(config.class_names) + " |"
        rule = "|---" * (len(config.class_names) + 1) + "|"
        rows = [f"| {name} | " + " | ".join(str(v) for v in row) + " |"
                for name, row in zip(config.class_names, matrix)]
        blocks.append(f"\nConfusion matrix ({label}):\n\n{header}\n{rule}\n" + "\n".join(rows) + "\n")
    return "".join(blocks)


def _generalisation(provenance: dict) -> str:
    """Share of photos from cameras the model never saw that it refers (most show no referable DR)."""
    rows = provenance.get("other_cameras") or []
    if not rows:
        return ""
    lines = "\n".join(f"| {row['data']} | {row['n']} | {row['referred']} | {100 * row['share']:.1f}% |"
                      for row in rows)
    return ("\nOther cameras, never seen in training (mostly photos without referable DR: a model that refers many "
            "has learned the camera, not the disease):\n\n| data | photos | referred | share |\n|---|---|---|---|\n"
            f"{lines}\n")


def _local_contrast_text(preprocessing: dict) -> str:
    sigma = preprocessing.get("local_contrast", 0.0)
    if not sigma:
        return ""
    return (f"local average colour subtracted inside the field of view (Gaussian sigma {sigma:g} x the input size, "
            "difference x 4 around mid-grey; outside the field of view mid-grey), ")


def _explanations(config: CheckpointConfig) -> str:
    """The CAM table: how often each method's peak falls on a lesion, against a random map."""
    test, selection = config.cam_evaluation.get("test"), config.cam_evaluation.get("selection")
    if not test:
        return ""

    def cell(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    rows = [f"| {CAM_METHOD_NAMES.get(name, name)}{' (default)' if name == config.cam_method else ''} | "
            f"{cell(v['pointing_game'])} | {cell(v.get('pointing_game_graded_dr'))} | "
            f"{cell(v['energy_pointing_game'])} | {cell(v['road_combined'])} |"
            for name, v in test["methods"].items()]
    for key, label in (("random_baseline", "random map (baseline)"),
                       ("centre_baseline", "map peaked at the centre of the field of view (baseline)")):
        if test.get(key):
            baseline = test[key]
            rows.append(f"| {label} | {cell(baseline['pointing_game'])} | "
                        f"{cell(baseline.get('pointing_game_graded_dr'))} | "
                        f"{cell(baseline['energy_pointing_game'])} | {cell(baseline['road_combined'])} |")
    one_photo = (f" With {test['n_images']} photos, one photo moves the pointing game by "
                 f"{1 / test['n_images']:.3f}." if test.get("n_images") else "")
    graded, healthy = test.get("n_images_graded_dr"), config.class_names[0]
    chosen = (f"\nThe default ({CAM_METHOD_NAMES.get(selection['method'], selection['method'])} at "
              f"`{selection['layer']}`) was chosen by the pointing game, then the share of the map's energy on "
              f"the lesions (a pointing game no better than a centred blob's does not count), on other images: "
              f"{selection['data']}.\n"
              if selection else "")
    notes = "".join(f"\n- {note}" for note in test.get("notes", []))
    independent = [CAM_METHOD_NAMES.get(m, m) for m in test["methods"] if m in CLASS_INDEPENDENT_METHODS]
    targets = (f"each map explains {test['target']}" if not independent else
               f"each map explains {test['target']}, except {' and '.join(independent)}, which shows where the "
               f"layer responds most strongly whatever the class")
    road = (f"- ROAD (higher is more faithful; first {test['n_images_road']} images): how much more the prediction "
            "drops when\n  the most-highlighted pixels are removed first than when the least-highlighted are."
            if test.get("n_images_road") else "- ROAD: not measured on these photos.")
    return f"""
## Explanations (Grad-CAM)
Does the heat map point at the lesions? Measured with the lesion masks of {test['n_images']} photos with
lesions of: {test['data']}. Layer `{test['layer']}`; {targets}.{one_photo}

- Pointing game: share of images whose heat map peak lies on a lesion (within
  {test['pointing_tolerance_px']} px at {test['input_size']} px); also on the {"-" if graded is None else graded}
  of them the model does not grade "{healthy}" (where it does, its map shows evidence for that class instead).
- Energy share: share of the map's mass on lesions (lesions cover {100 * test['mask_area_share']:.1f}% of the image).
{road}
{chosen}

| method | pointing game | pointing game, not graded "{healthy}" | energy share | ROAD |
|---|---|---|---|---|
{chr(10).join(rows)}
{notes}
"""


def _starting_weights(provenance: dict) -> str:
    """Where the weights started (ImageNet, with its source and credit) and the teacher they learned from."""
    lines = []
    for stage in training_stages(provenance):
        pretrained = stage.get("pretrained")
        if pretrained:
            lines.append(f"Initialised from ImageNet weights: {pretrained.get('source')}. "
                         f"{pretrained.get('credit', '')}.")
        soup = stage.get("soup")
        if soup:
            parts = ", ".join(f"seed {i.get('seed')} (weight {i.get('weight'):g})" for i in soup.get("ingredients", []))
            lines.append(f"The weights are the average of {len(soup.get('ingredients', []))} checkpoints fine-tuned "
                         f"from the same start with different seeds: {parts}. {soup.get('method', '')}.")
        distillation = stage.get("distillation")
        if distillation:
            teacher = distillation.get("teacher_provenance") or {}
            imagenet = [s.get("pretrained") for s in training_stages(teacher) if s.get("pretrained")]
            unlabelled = ", ".join(f"{n} from {folder}" for folder, n in (distillation.get("unlabelled_photos")
                                                                          or {}).items())
            lines.append(f"Distilled from a teacher checkpoint ({distillation.get('teacher')}"
                         f"{', fine-tuned from ImageNet weights' if imagenet else ''}): its grade and DME "
                         f"probabilities (temperature {distillation.get('temperature')}, weight "
                         f"{distillation.get('weight')}) on augmented views of the "
                         f"{distillation.get('labelled_photos')} labelled training photos"
                         + (f" and of photos nobody graded ({unlabelled})" if unlabelled else "")
                         + ", beside the labels.")
        evidence = stage.get("lesion_evidence")
        if evidence:
            ordinal = (stage.get("recipe") or {}).get("grade_regression") == "proportional_odds"
            regressions = ("an ordinal (proportional-odds) logistic regression for the grade and a logistic "
                           "regression for the DME risk" if ordinal else "a logistic regression")
            lines.append(f"The grade and DME probabilities served weigh the network's own "
                         f"({1 - evidence['weight']:.0%}) against what its lesion maps show "
                         f"({evidence['weight']:.0%}): {regressions} on each lesion type's amount, cells, "
                         f"spread over the four quadrants and distance from the centre, fitted on the maps of the "
                         f"{evidence.get('training_photos')} training photos, its weight chosen by log-loss on the "
                         f"{evidence.get('validation_photos')} validation photos (drdemo.train.lesion_evidence; no "
                         f"network weight changed).")
    return "".join(f"\n{line}\n" for line in lines)


def _how_it_was_made(provenance: dict) -> str:
    """The exact commands behind the weights and the reported metrics, where recorded."""
    stages = training_stages(provenance)
    data_commands = list(dict.fromkeys(s["data_command"] for s in stages if s.get("data_command")))
    steps = [("Data", command) for command in data_commands]
    for number, stage in enumerate(stages, 1):
        ingredients = (stage.get("soup") or {}).get("ingredients") or []
        for index, ingredient in enumerate(ingredients, 1):
            if ingredient.get("command"):
                steps.append((f"Training, ingredient {index} of {len(ingredients)}", ingredient["command"]))
        if ingredients and stage.get("command"):
            steps.append(("Weight average of the ingredients", stage["command"]))
        elif stage.get("command"):
            label = "Training" if len(stages) == 1 else f"Training, stage {number} of {len(stages)}"
            seconds = stage.get("training_seconds")
            steps.append((label + (f" ({seconds / 60:.0f} min on {stage.get('device', '?')})" if seconds else ""),
                          stage["command"]))
    for key, label in (("calibration_command", "Calibration"), ("threshold_command", "Referable threshold"),
                       ("validation_command", "Validation"),
                       ("evaluation_command", "Evaluation"), ("cam_selection_command", "Default heat map"),
                       ("cam_test_command", "Heat map evaluation")):
        if provenance.get(key):
            steps.append((label, provenance[key]))
    for data, command in (provenance.get("other_camera_commands") or {}).items():
        steps.append((f"Referrals on {data}", command))
    if not steps:
        return ""
    first_label = {}  # one command that did two things (choose the threshold and record) is listed once
    for label, command in steps:
        first_label.setdefault(command, label)
    steps = [(label, command) for command, label in first_label.items()]
    lines = "\n".join(f"# {label}\n{command}" for label, command in steps)
    evaluated_on = f"\nMetrics prefixed test_ were measured on: {provenance['evaluation_data']}\n" if provenance.get(
        "evaluation_data") else ""
    if sum(bool(stage.get("command")) for stage in stages) > 1:
        # the recorded paths are the training machine's; a reader re-running the chain needs to know they connect
        evaluated_on = ("\nEach training stage continues from the weights of the stage listed before it; the paths "
                        "are the ones recorded where it ran, which a reader's own run replaces with its own.\n"
                        + evaluated_on)
    if provenance.get("validation_data"):
        choices = (("best_epoch", "the epoch"), ("calibration_choice", "the calibration"),
                   ("referable_threshold_choice", "the referral threshold"))
        chosen = [what for key, what in choices if provenance.get(key)]
        caveat = (f" (the photos {', '.join(chosen[:-1]) + ' and ' * (len(chosen) > 1) + chosen[-1]} were chosen on, "
                  f"so these numbers are optimistic; the test_ ones are not)") if chosen else ""
        evaluated_on += f"Metrics prefixed val_ were measured on: {provenance['validation_data']}{caveat}\n"
    return f"\n### How it was made\n```bash\n{lines}\n```\n{evaluated_on}"


# eval/ records the card's own sections show; every other kind is listed under "Other recorded evaluations".
SHOWN_EVALUATIONS = ("validation", "test", "calibration", "referable_threshold", "cam", "cam_selection",
                     "lesion_aware_val", "lesion_aware_test")
# `evaluate heads --views N` reports (lesion_aware_<part>_<N>views): a column of the three-head table.
VIEWS_REPORT = re.compile(r"lesion_aware_(val|test)_\d+views")
INDEX_SKIPPED = {"n", "seconds", "images_per_second", "threshold", "referable_threshold", "views"}


def _scalars(results: dict, prefix: str = "") -> dict:
    """The numbers of a record's results, nested objects flattened to dotted names (lists left out)."""
    numbers = {}
    for key, value in results.items():
        if isinstance(value, dict):
            numbers.update(_scalars(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            numbers[f"{prefix}{key}"] = value
    return numbers


def model_index(evaluations: dict[str, dict]) -> list[EvalResult]:
    """The Hub's model-index: every top-level number of each recorded graded evaluation (validation, test
    and any new kind), with its data set and split; the heat map and choice records stay in the card's text."""
    from drdemo.checkpoint.layout import CAMS, CHOICES, dataset_of, is_legacy_name, results_of

    entries = []
    for name, record in evaluations.items():
        if name in CAMS or name in CHOICES or name.startswith("lesion_aware_") or (
                is_legacy_name(name) and name not in ("validation", "test")):
            continue
        dataset = record.get("dataset") or dataset_of(record.get("data"))
        for key, value in results_of(record).items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or key in INDEX_SKIPPED:
                continue
            entries.append(EvalResult(
                task_type="image-classification", dataset_type=dataset.get("type") or "unknown",
                dataset_name=dataset.get("name") or "unknown", dataset_split=dataset.get("split"),
                metric_type=key, metric_name=f"{key} ({name})", metric_value=value))
    return entries


def _other_evaluations(evaluations: dict[str, dict]) -> str:
    """Recorded evaluations of kinds the sections above do not show: data, command and numbers each."""
    from drdemo.checkpoint.layout import OTHER_CAMERA_PREFIX, results_of

    blocks = []
    for name, record in evaluations.items():
        if name in SHOWN_EVALUATIONS or name.startswith(OTHER_CAMERA_PREFIX) or VIEWS_REPORT.fullmatch(name):
            continue
        rows = "\n".join(f"| {key} | {value:.4g} |" if isinstance(value, float) else f"| {key} | {value} |"
                         for key, value in _scalars(results_of(record)).items()) or "| (none) | - |"
        made = ", ".join(part for part in (f"code {record['code_commit'][:7]}" if record.get("code_commit") else "",
                                           record.get("date") or "") if part)
        blocks.append(f"\n### {name.replace('_', ' ').capitalize()}\nData: {record.get('data') or 'not recorded'}"
                      f"{f' ({made})' if made else ''}.\n"
                      + (f"\n```bash\n{record['command']}\n```\n" if record.get("command") else "")
                      + f"\n| result | value |\n|---|---|\n{rows}\n")
    return "\n## Other recorded evaluations\n" + "".join(blocks) if blocks else ""
