"""Page-level helpers: the notice says what the models are; batch outputs do not pile up on disk."""

import os
import time

from drdemo.checkpoint import CheckpointConfig
from drdemo.models import create_model
from drdemo.predictor import Predictor
from drdemo.ui import blocks


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
