"""The model card (the checkpoint's README.md, with Hub YAML metadata): what a reader must know
about the weights, written from config.json alone, so the card never says what the config does not.
"""

from __future__ import annotations

from huggingface_hub import ModelCard, ModelCardData

from drdemo.cam.methods import CAM_METHOD_NAMES, CLASS_INDEPENDENT_METHODS
from drdemo.checkpoint.config import CheckpointConfig, idrid_in_training, training_stages
from drdemo.data.datasets import IDRID_ATTRIBUTION


def model_card(config: CheckpointConfig) -> str:
    """README.md for the checkpoint: Hub YAML metadata, then what a reader must know."""
    provenance, metrics = config.provenance, config.metrics
    data = ModelCardData(
        license="other", license_name="research-demo", library_name="pytorch", pipeline_tag="image-classification",
        tags=["diabetic-retinopathy", "fundus", "medical-imaging", config.architecture, "safetensors", "drdemo"]
        + (["synthetic-data"] if config.trained_on_synthetic_data else []),
        metrics=sorted(metrics) or None,
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
{_attribution(provenance)}{_calibration_text(config)}{_threshold_text(config)}
Recipe: {provenance.get("recipe", "not recorded")}. Seed: {provenance.get("seed", "not recorded")}.
Code commit: {provenance.get("code_commit", "not recorded")}.
{_how_it_was_made(provenance)}
## Evaluation
| metric | value |
|---|---|
{metric_rows}
{_confusion_matrices(config)}{_generalisation(provenance)}
{_explanations(config)}
## Input
RGB, {"cropped to the field of view (black border removed, padded to a square), " if config.preprocessing["crop_fov"]
      else ""}resized to {config.input_size} x {config.input_size} ({config.preprocessing["interpolation"]}),
{_local_contrast_text(config.preprocessing)}scaled to [0, 1], normalised with mean {list(config.mean)} and std
{list(config.std)}.

## Limitations
{_limitations(provenance)} Grad-CAM overlays show where the model looked, not why.

## Loading
```python
from drdemo.serving.hub import load_model
loaded = load_model("<this repo id or folder>")
```
"""
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}").content


def _attribution(provenance: dict) -> str:
    if not idrid_in_training(provenance):
        return ""
    return f"\nThese weights were trained on IDRiD photos. Attribution: {IDRID_ATTRIBUTION}\n"


IDRID_LIMITATIONS = (
    "Trained on photos of one camera (Kowa VX-10 alpha, 50 degree field) from one hospital in India (see "
    "Training data); the test numbers above come from IDRiD's own test split, the same camera and clinic. "
    "Other cameras, populations, image quality and screening settings were not validated (the referral "
    "shares on DRIVE and CHASE_DB1 above are the only check on other cameras). IDRiD's training split has "
    "20 photos of Mild NPDR, so grade 1 is barely learned. Macular oedema is not graded.")


def _limitations(provenance: dict) -> str:
    if idrid_in_training(provenance):
        return IDRID_LIMITATIONS
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
              f"`{selection['layer']}`) was chosen by the pointing game on other images: {selection['data']}.\n"
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


def _how_it_was_made(provenance: dict) -> str:
    """The exact commands behind the weights and the reported metrics, where recorded."""
    stages = training_stages(provenance)
    data_commands = list(dict.fromkeys(s["data_command"] for s in stages if s.get("data_command")))
    steps = [("Data", command) for command in data_commands]
    for number, stage in enumerate(stages, 1):
        if stage.get("command"):
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
    if provenance.get("validation_data"):
        choices = (("best_epoch", "the epoch"), ("calibration_choice", "the calibration"),
                   ("referable_threshold_choice", "the referral threshold"))
        chosen = [what for key, what in choices if provenance.get(key)]
        caveat = (f" (the photos {', '.join(chosen[:-1]) + ' and ' * (len(chosen) > 1) + chosen[-1]} were chosen on, "
                  f"so these numbers are optimistic; the test_ ones are not)") if chosen else ""
        evaluated_on += f"Metrics prefixed val_ were measured on: {provenance['validation_data']}{caveat}\n"
    return f"\n### How it was made\n```bash\n{lines}\n```\n{evaluated_on}"
