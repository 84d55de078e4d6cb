"""A checkpoint folder's record files, beside config.json (the model contract):

    training/provenance.json   {"format", "stages": [first training run, ..., the run that wrote the weights]}:
                               each stage's data, commands, recipe (an object), seed, code commit, time
    eval/<name>.json           one recorded evaluation each: {"name", "data", "command", "code_commit",
                               "date", "dataset", "results"}

and the conversion between them and the records' in-memory form on CheckpointConfig (`provenance`
with the earlier stages nested under initialised_from_provenance, flat `metrics` val_* / test_*,
`cam_evaluation`), which the trainer writes, the app reads, and config.json held before these files
existed. An evaluation of a kind this module does not name is kept as it is and shown on the card.
"""

from __future__ import annotations

import json
from pathlib import Path

from drdemo.checkpoint.config import PROVENANCE_NAME, CheckpointError, training_stages

EVAL_DIR = "eval"
PROVENANCE_FORMAT = "drdemo-provenance/1"
EVALUATION_FORMAT = "drdemo-evaluation/1"

# Graded evaluations whose results are also the config's flat metrics ({prefix}_{key}), with the
# provenance keys that named their data and command.
GRADED = {"validation": ("val", "validation_data", "validation_command"),
          "test": ("test", "evaluation_data", "evaluation_command")}
# Evaluations whose results were a provenance entry: (choice key, command key).
CHOICES = {"calibration": ("calibration_choice", "calibration_command"),
           "referable_threshold": ("referable_threshold_choice", "threshold_command")}
# Heat map evaluations: (cam_evaluation key, provenance command key).
CAMS = {"cam": ("test", "cam_test_command"), "cam_selection": ("selection", "cam_selection_command")}
OTHER_CAMERA_PREFIX = "other_cameras_"
MOVED_KEYS = frozenset({"confusion_matrices", "other_cameras", "other_camera_commands",
                        *(k for _, *keys in GRADED.values() for k in keys),
                        *(k for keys in CHOICES.values() for k in keys), *(k for _, k in CAMS.values())})


def evaluation_record(name: str, *, data, command: str | None, results: dict, code_commit: str | None = None,
                      date: str | None = None, dataset: dict | None = None) -> dict:
    """One eval/<name>.json: what was measured (`data`, a description), how (`command`, `code_commit`,
    `date`, ISO 8601), and `results`. `dataset` ({"type", "name", "split"}) names the data set for the
    model card's model-index; without it, it is read from `data`."""
    if not name or not all(c.isalnum() or c in "_-" for c in name):
        raise CheckpointError(f"evaluation name {name!r}: use letters, digits, '_' and '-' (it is a file name)")
    if not isinstance(results, dict):
        raise CheckpointError(f"evaluation {name!r}: results must be an object, got {type(results).__name__}")
    return {"format": EVALUATION_FORMAT, "name": name, "data": data, "command": command, "code_commit": code_commit,
            "date": date, "dataset": dataset or dataset_of(data), "results": results}


def dataset_of(data) -> dict:
    """The model-index's dataset for a data description: IDRiD's part, our generator, or the folder named."""
    text = str(data or "")
    split = next((part for part in ("test", "val", "train") if f"{part} part" in text or f"({part}" in text), None)
    if "IDRiD" in text or "A. Segmentation" in text:
        return {"type": "idrid", "name": "IDRiD", "split": split}
    if "synthetic" in text.lower():
        return {"type": "drdemo-synthetic", "name": "drdemo synthetic fundus images", "split": split}
    return {"type": text.split()[0].lower() if text else "unknown", "name": text[:80] or "unknown", "split": split}


# ---------------------------------------------------------------------------------------------- files

def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    return data


def write_json(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return path


def read_provenance(folder: Path) -> dict:
    """training/provenance.json ({"stages": []} when the folder has none)."""
    path = folder / PROVENANCE_NAME
    if not path.is_file():
        return {"format": PROVENANCE_FORMAT, "stages": []}
    data = read_json(path)
    if not isinstance(data.get("stages"), list) or not all(isinstance(s, dict) for s in data["stages"]):
        raise CheckpointError(f"{path}: 'stages' must be a list of objects, first training run first")
    return data


def read_evaluations(folder: Path) -> dict[str, dict]:
    """Every eval/<name>.json of the folder by name, in name order."""
    directory = folder / EVAL_DIR
    if not directory.is_dir():
        return {}
    records = {}
    for path in sorted(directory.glob("*.json")):
        records[path.stem] = read_json(path)
    return records


DESCRIPTION_KEYS = ("format", "name", "data", "command", "code_commit", "date", "dataset")


def results_of(record: dict) -> dict:
    """A record's results: its "results", or for a file written flat, everything but its description."""
    if isinstance(record.get("results"), dict):
        return record["results"]
    return {key: value for key, value in record.items() if key not in DESCRIPTION_KEYS}


def write_evaluation(folder: Path, record: dict) -> Path:
    return write_json(folder / EVAL_DIR / f"{record['name']}.json", record)


def remove_evaluation(folder: Path, name: str) -> None:
    (folder / EVAL_DIR / f"{name}.json").unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------- forms

def _decoded(value):
    """A value written as JSON text inside JSON (older recipes and commands), as the value it encodes."""
    while isinstance(value, str) and value[:1] in ('"', "{", "["):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            break
    return value


def provenance_file(provenance: dict) -> dict:
    """training/provenance.json from the in-memory provenance: the stages as a list, each without the
    nesting, its recipe an object; what evaluations recorded in the last stage is left out (eval/ holds it)."""
    if not provenance:
        return {"format": PROVENANCE_FORMAT, "stages": []}
    stages = []
    nested = training_stages(provenance)
    for number, stage in enumerate(nested, 1):
        stage = {k: v for k, v in stage.items() if k != "initialised_from_provenance"}
        if number == len(nested):
            stage = {k: v for k, v in stage.items() if k not in MOVED_KEYS}
        for key in ("recipe", "command"):
            if key in stage:
                stage[key] = _decoded(stage[key])
        stages.append(stage)
    return {"format": PROVENANCE_FORMAT, "stages": stages}


def evaluations_of(provenance: dict, metrics: dict, cam_evaluation: dict) -> dict[str, dict]:
    """The eval records of the in-memory form (config.json's records before the record files)."""
    records = {}
    matrices = provenance.get("confusion_matrices") or {}
    for name, (prefix, data_key, command_key) in GRADED.items():
        results = {key.removeprefix(f"{prefix}_"): value for key, value in metrics.items()
                   if key.startswith(f"{prefix}_")}
        if not results:
            continue
        if prefix in matrices:
            results["confusion_matrix"] = matrices[prefix]
        training = name == "validation" and data_key not in provenance
        records[name] = evaluation_record(
            name, data=provenance.get(data_key) or (provenance.get("data") if training else None),
            command=provenance.get(command_key) or (_decoded(provenance.get("command")) if training else None),
            results=results)
    for name, (choice_key, command_key) in CHOICES.items():
        choice = provenance.get(choice_key)
        if choice:
            records[name] = evaluation_record(name, data=choice.get("data"), command=provenance.get(command_key),
                                              results={k: v for k, v in choice.items() if k != "data"})
    for name, (key, command_key) in CAMS.items():
        table = cam_evaluation.get(key)
        if table:
            records[name] = evaluation_record(name, data=table.get("data"),
                                              command=table.get("command") or provenance.get(command_key),
                                              results={k: v for k, v in table.items() if k not in ("data", "command")})
    commands = provenance.get("other_camera_commands") or {}
    for row in provenance.get("other_cameras") or []:
        name = OTHER_CAMERA_PREFIX + "".join(c if c.isalnum() or c in "_-" else "_" for c in str(row["data"]))
        records[name] = evaluation_record(name, data=row["data"], command=commands.get(row["data"]),
                                          results={k: v for k, v in row.items() if k != "data"})
    return records


def in_memory(stages: list[dict], evaluations: dict[str, dict]) -> tuple[dict, dict, dict]:
    """(provenance, metrics, cam_evaluation) as CheckpointConfig carries them, from the record files."""
    provenance: dict = {}
    for stage in stages:
        provenance = dict(stage, initialised_from_provenance=provenance) if provenance else dict(stage)
    metrics: dict = {}
    cam_evaluation: dict = {}
    for name, (prefix, data_key, command_key) in GRADED.items():
        record = evaluations.get(name)
        if record is None:
            continue
        results = dict(results_of(record))
        matrix = results.pop("confusion_matrix", None)
        metrics.update({f"{prefix}_{key}": value for key, value in results.items()})
        if matrix is not None:
            provenance.setdefault("confusion_matrices", {})[prefix] = matrix
        if record.get("data") is not None:
            provenance[data_key] = record["data"]
        if record.get("command") is not None:
            provenance[command_key] = record["command"]
    for name, (choice_key, command_key) in CHOICES.items():
        record = evaluations.get(name)
        if record is not None:
            provenance[choice_key] = {**results_of(record), "data": record.get("data")}
            if record.get("command") is not None:
                provenance[command_key] = record["command"]
    for name, (key, command_key) in CAMS.items():
        record = evaluations.get(name)
        if record is not None:
            cam_evaluation[key] = {"data": record.get("data"), "command": record.get("command"), **results_of(record)}
            if record.get("command") is not None:
                provenance[command_key] = record["command"]
    for name, record in evaluations.items():
        if name.startswith(OTHER_CAMERA_PREFIX):
            provenance.setdefault("other_cameras", []).append({"data": record["data"], **results_of(record)})
            if record.get("command") is not None:
                provenance.setdefault("other_camera_commands", {})[record["data"]] = record["command"]
    return provenance, metrics, cam_evaluation


LEGACY_NAMES = (*GRADED, *CHOICES, *CAMS)


def is_legacy_name(name: str) -> bool:
    """Whether eval/<name>.json is one of the kinds config.json's records held (and the in-memory form shows)."""
    return name in LEGACY_NAMES or name.startswith(OTHER_CAMERA_PREFIX)
