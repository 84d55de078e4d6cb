"""The checkpoint folder's record files: config.json the contract only, training/provenance.json the
lineage, eval/<name>.json one evaluation each, the card (and its model-index) generated from them, and
folders written before the record files still loading and converting."""

import json
import shutil
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from drdemo.checkpoint import (
    CheckpointConfig,
    convert_folder,
    read_config,
    read_evaluations,
    record_evaluation,
    save_checkpoint,
)
from drdemo.checkpoint.config import HUB_FILE_PATTERNS
from drdemo.models import create_model
from drdemo.serving.hub import main as hub_main

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = [ROOT / "checkpoints" / name for name in ("medmamba_t", "inception_v3")]


def _old_form(folder: Path) -> Path:
    """A folder in the form written before the record files: everything in config.json."""
    config = CheckpointConfig.for_architecture("resnet50", input_size=64)
    save_checkpoint(create_model("resnet50", num_classes=5).eval(), config, folder)
    first = {"trained": True, "data": "Synthetic fundus images (seed 1)", "recipe": json.dumps({"lr": 0.001}),
             "command": "python -m drdemo.train --out a", "seed": 0}
    old = {**config.contract_dict(),
           "provenance": {"trained": True, "data": "IDRiD disease grading, official train part", "seed": 0,
                          "recipe": json.dumps({"lr": 0.0003}), "command": "python -m drdemo.train --out b",
                          "initialised_from": "a", "initialised_from_provenance": json.dumps(first),
                          "evaluation_data": "103 photos of IDRiD's disease grading set (test part)",
                          "evaluation_command": "python -m drdemo.evaluate --part test --record",
                          "confusion_matrices": {"test": [[1, 0, 0, 0, 0]] * 5},
                          "other_cameras": [{"data": "drive", "n": 40, "referred": 4, "share": 0.1}],
                          "other_camera_commands": {"drive": "python -m drdemo.evaluate --ungraded"}},
           "metrics": {"val_qwk": 0.7, "val_n": 83, "test_qwk": 0.5791, "test_n": 103},
           "cam_evaluation": {}}
    (folder / "config.json").write_text(json.dumps(old))
    shutil.rmtree(folder / "training")
    shutil.rmtree(folder / "eval", ignore_errors=True)
    return folder


def test_old_form_loads_and_converts_without_losing_a_value(tmp_path):
    folder = _old_form(tmp_path / "old")
    old = read_config(folder)
    assert old.metrics["test_qwk"] == 0.5791 and old.provenance["other_cameras"][0]["referred"] == 4
    assert hub_main(["convert", str(folder)]) == 0
    config_json = json.loads((folder / "config.json").read_text())
    assert not {"provenance", "metrics", "cam_evaluation"} & set(config_json)
    stages = json.loads((folder / "training" / "provenance.json").read_text())["stages"]
    assert [s["command"] for s in stages] == ["python -m drdemo.train --out a", "python -m drdemo.train --out b"]
    assert stages[0]["recipe"] == {"lr": 0.001} and "initialised_from_provenance" not in stages[1]
    evaluations = read_evaluations(folder)
    assert evaluations["test"]["results"]["qwk"] == 0.5791
    assert evaluations["test"]["command"] == "python -m drdemo.evaluate --part test --record"
    assert evaluations["other_cameras_drive"]["results"] == {"n": 40, "referred": 4, "share": 0.1}
    new = read_config(folder)
    assert new.metrics == old.metrics and new.contract_dict() == old.contract_dict()
    assert new.provenance["confusion_matrices"] == old.provenance["confusion_matrices"]
    assert new.provenance["initialised_from_provenance"]["data"] == "Synthetic fundus images (seed 1)"
    convert_folder(folder)  # a second conversion changes nothing
    assert read_evaluations(folder) == evaluations


def test_a_new_kind_of_evaluation_needs_no_writer_and_reaches_the_model_index(tmp_path):
    folder = _old_form(tmp_path / "ck")
    convert_folder(folder)
    record_evaluation(folder, "colour_shift", data="83 photos of IDRiD's disease grading set (val part)",
                      command="python -m drdemo.evaluate colour-shift", results={"mean_abs_delta_p": 0.0213})
    record = read_evaluations(folder)["colour_shift"]
    assert record["date"] and record["code_commit"] and record["dataset"]["split"] == "val"
    card = ModelCard((folder / "README.md").read_text())
    values = {(m["type"], r["dataset"].get("split")): m["value"]
              for entry in card.data.to_dict()["model-index"] for r in entry["results"] for m in r["metrics"]}
    assert values[("mean_abs_delta_p", "val")] == 0.0213 and values[("qwk", "test")] == 0.5791
    assert "colour_shift" not in read_config(folder).metrics  # only validation and test are flat metrics
    with pytest.raises(ValueError, match="file name"):
        record_evaluation(folder, "../x", data="d", command=None, results={})


@pytest.mark.parametrize("folder", BUNDLED, ids=lambda f: f.name)
def test_bundled_checkpoints_are_in_the_new_form(folder):
    assert (folder / "config.json").stat().st_size <= 4096
    assert not {"provenance", "metrics", "cam_evaluation"} & set(json.loads((folder / "config.json").read_text()))
    config = read_config(folder)
    assert config.trained_on_idrid and config.metrics["test_n"] == 103 and config.cam_evaluation["test"]
    index = ModelCard((folder / "README.md").read_text()).data.to_dict()["model-index"]
    assert any(m["type"] == "qwk" and m["value"] == config.metrics["test_qwk"]
               for r in index[0]["results"] for m in r["metrics"])


def test_hub_patterns_carry_the_record_files():
    from fnmatch import fnmatch
    for path in ("training/provenance.json", "eval/test.json", "config.json"):
        assert any(fnmatch(path, pattern) for pattern in HUB_FILE_PATTERNS)
    assert not any(fnmatch("training/log.jsonl", pattern) for pattern in HUB_FILE_PATTERNS)


def test_convert_cli_names_a_missing_folder(tmp_path, capsys):
    assert hub_main(["convert", str(tmp_path / "nothing")]) == 1
    assert "is not a checkpoint folder" in capsys.readouterr().err
