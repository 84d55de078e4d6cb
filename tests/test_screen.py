"""Screening: every photo graded exactly once across shards, unreadable files as rows, resumable after a kill
(a half-written last line included), a different model configuration refused, CSV input, clear CLI errors, and
torchrun on 2 processes giving the grades of one."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from drdemo.checkpoint import CheckpointConfig, save_checkpoint
from drdemo.data.synthetic import generate_fundus
from drdemo.models import create_model
from drdemo.screen import cli, writer
from drdemo.screen.shards import list_inputs, shard

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Two small untrained checkpoints (64-pixel inputs) to serve in the two slots."""
    folder = tmp_path_factory.mktemp("checkpoints")
    for architecture, name in [("medmamba_t", "mm"), ("resnet50", "rn")]:
        torch.manual_seed(0)
        save_checkpoint(create_model(architecture), CheckpointConfig.for_architecture(
            architecture, input_size=64, provenance={"trained": False}), folder / name)
    return {"DRDEMO_MEDMAMBA_SOURCE": str(folder / "mm"), "DRDEMO_INCEPTION_SOURCE": str(folder / "rn")}


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Six synthetic fundus photos in two folders, a broken JPEG and a picture that is not a fundus."""
    folder = tmp_path_factory.mktemp("photos")
    (folder / "left").mkdir()
    for i in range(6):
        photo = Image.fromarray(generate_fundus(i, i % 5, size=128).image)
        photo.save(folder / ("left" if i % 2 else "") / f"p{i}.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff this is not a JPEG")
    Image.new("RGB", (128, 128), (40, 200, 40)).save(folder / "green.png")
    (folder / "notes.txt").write_text("not a photo")
    return folder


@pytest.fixture
def served(checkpoints, monkeypatch):
    for key, value in checkpoints.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("DRDEMO_DEVICE", raising=False)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)


def _rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("count", [0, 1, 7, 100])
def test_shards_cover_every_file_exactly_once(count):
    names = [f"{i:04d}.png" for i in range(count)]
    for world_size in (1, 2, 3, 8):
        shards = [shard(names, rank, world_size) for rank in range(world_size)]
        assert sorted(sum(shards, [])) == names
        assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_folder_and_csv_inputs_list_the_same_photos(photos, tmp_path):
    root, names = list_inputs(photos)
    assert root == photos
    assert names == ["broken.jpg", "green.png", "left/p1.png", "left/p3.png", "left/p5.png", "p0.png", "p2.png",
                     "p4.png"]
    listing = tmp_path / "list.csv"
    listing.write_text("file,site\n" + "".join(f"{photos / n},a\n" for n in reversed(names)))
    assert list_inputs(listing)[1] == sorted(str(photos / n) for n in names)


def test_grades_every_photo_with_unreadable_and_refused_rows(served, photos, tmp_path, capsys):
    assert cli.main([str(photos), "--out", str(tmp_path / "out"), "--batch-size", "3"]) == 0
    rows = _rows(tmp_path / "out" / "grades.csv")
    by_file = {row["file"]: row for row in rows}
    assert list(by_file) == list_inputs(photos)[1]
    assert by_file["broken.jpg"]["outcome"] == "unreadable" and by_file["broken.jpg"]["reason"]
    assert by_file["green.png"]["outcome"] == "refused" and by_file["green.png"]["medmamba_grade"] == ""
    graded = [row for row in rows if row["outcome"] in ("accepted", "warned")]
    assert len(graded) == 6
    for row in graded:
        for slot in ("medmamba", "inception"):
            p = [float(row[f"{slot}_p_{c}"]) for c in ("no_dr", "mild_npdr", "moderate_npdr", "severe_npdr",
                                                         "proliferative_dr")]
            assert abs(sum(p) - 1) < 1e-4 and int(row[f"{slot}_grade"]) == int(np.argmax(p))
            assert float(row[f"{slot}_p_referable"]) == pytest.approx(sum(p[2:]), abs=1e-5)
            assert row[f"{slot}_referred"] == str(float(row[f"{slot}_p_referable"]) >= 0.5)   # the config's default
    assert "8 photos" in capsys.readouterr().out
    import json
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    for slot in ("medmamba", "inception"):
        assert summary["referral_rate"][slot] == pytest.approx(
            sum(row[f"{slot}_referred"] == "True" for row in graded) / len(graded))
    agree = sum(row["medmamba_referred"] == row["inception_referred"] for row in graded) / len(graded)
    assert summary["agreement"]["referral"] == pytest.approx(agree) and summary["graded"] == 6


def test_resume_after_a_kill_mid_part_grades_each_photo_once(served, photos, tmp_path):
    out = tmp_path / "out"
    assert cli.main([str(photos), "--out", str(out), "--models", "medmamba", "--batch-size", "2"]) == 0
    complete = _rows(out / "grades.csv")
    part = writer.part_path(out, 0, 1)
    lines = part.read_text(encoding="utf-8").splitlines(keepends=True)
    part.write_text("".join(lines[:3]) + lines[3][: len(lines[3]) // 2], encoding="utf-8")  # killed mid-line
    (out / "grades.csv").unlink()
    assert cli.main([str(photos), "--out", str(out), "--models", "medmamba", "--batch-size", "2"]) == 0
    assert _rows(out / "grades.csv") == complete
    assert len(part.read_text(encoding="utf-8").splitlines()) == len(complete)


def test_a_different_model_configuration_refuses_to_resume(served, photos, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli.main([str(photos), "--out", str(out), "--models", "medmamba"]) == 0
    assert cli.main([str(photos), "--out", str(out), "--models", "medmamba", "inception"]) == 2
    assert "different configuration" in capsys.readouterr().err


@pytest.mark.parametrize("arguments, message", [
    (["missing-folder", "--out", "o"], "does not exist"),
    (["{photos}", "--out", "o", "--batch-size", "0"], "--batch-size must be at least 1"),
    (["{photos}", "--out", "o", "--models", "resnet"], "invalid choice: 'resnet'"),
    (["{photos}", "--out", "o", "--device", "tpu"], "choose auto, cpu, cuda"),
    (["{listing}", "--out", "o"], "needs a 'file' column"),
])
def test_bad_arguments_say_what_is_wrong(served, photos, tmp_path, capsys, arguments, message):
    listing = tmp_path / "list.csv"
    listing.write_text("path\na.png\n")
    arguments = [a.format(photos=photos, listing=listing) for a in arguments]
    try:
        code = cli.main(arguments)
    except SystemExit as exc:
        code = exc.code
    assert code == 2
    assert message in capsys.readouterr().err


def test_torchrun_on_two_processes_gives_the_grades_of_one(served, photos, tmp_path):
    assert cli.main([str(photos), "--out", str(tmp_path / "one"), "--batch-size", "4"]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                             "-m", "drdemo.screen", str(photos), "--out", str(tmp_path / "two"), "--batch-size", "2"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(list((tmp_path / "two").glob("part-*-of-00002.csv"))) == 2
    one, two = _rows(tmp_path / "one" / "grades.csv"), _rows(tmp_path / "two" / "grades.csv")
    assert [(r["file"], r["outcome"], r["medmamba_grade"], r["inception_grade"]) for r in one] == \
           [(r["file"], r["outcome"], r["medmamba_grade"], r["inception_grade"]) for r in two]
    for a, b in zip(one, two):
        for key in a:
            if key.endswith(tuple(f"_p_{c}" for c in ("referable", "no_dr", "proliferative_dr"))) and a[key]:
                assert float(a[key]) == pytest.approx(float(b[key]), abs=1e-4)   # batch composition differs


def test_each_models_feature_score_joins_the_image_check_as_in_the_app(served, checkpoints, photos, tmp_path,
                                                                       monkeypatch):
    """A stored score that calls every photo unlike the training photos turns the rules' accepted rows into warned
    ones with the app's wording, and a DIR graded without that score will not resume with it."""
    import shutil

    from drdemo.checkpoint import load_model
    from drdemo.intake.ood import fit, save
    from drdemo.predictor import Predictor

    assert cli.main([str(photos), "--out", str(tmp_path / "out"), "--models", "medmamba"]) == 0
    before = {r["file"]: r for r in _rows(tmp_path / "out" / writer.GRADES)}
    scored = tmp_path / "mm-scored"
    shutil.copytree(checkpoints["DRDEMO_MEDMAMBA_SOURCE"], scored)
    predictor = Predictor.from_loaded(load_model(str(scored)))
    root, names = list_inputs(photos)
    features = np.stack([a.features for a in predictor.predict_batch(
        [Image.open(root / n).convert("RGB") for n in names if n.endswith(".png") and "green" not in n])])
    score = fit(np.concatenate([features, features + 1e-3]), [0, 1, 2, 3, 4, 0] * 2, components=4, fitted_on="test")
    save(score.with_threshold(-1.0, "everything is far"), scored)
    monkeypatch.setenv("DRDEMO_MEDMAMBA_SOURCE", str(scored))
    assert cli.main([str(photos), "--out", str(tmp_path / "out"), "--models", "medmamba"]) == 2
    assert cli.main([str(photos), "--out", str(tmp_path / "scored"), "--models", "medmamba"]) == 0
    after = {r["file"]: r for r in _rows(tmp_path / "scored" / writer.GRADES)}
    admitted = [name for name, row in before.items() if row["outcome"] in ("accepted", "warned")]
    assert admitted and all(after[n]["outcome"] == "warned" and "unlike" in after[n]["reason"] for n in admitted)
    assert all(after[n]["medmamba_grade"] == before[n]["medmamba_grade"] for n in admitted)
    assert all(after[n]["outcome"] == before[n]["outcome"] for n in before if n not in admitted)
