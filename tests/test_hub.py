"""Checkpoints and the Hub, for real: huggingface_hub talks HTTP to a Hub-compatible server on
127.0.0.1 (tests/hub_server.py), downloads into a real cache, and loads offline from it."""

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hub_server import point_hub_at
from huggingface_hub import constants as hub_constants
from huggingface_hub import save_torch_state_dict
from safetensors import safe_open

from drdemo.checkpoint import (
    CheckpointConfig,
    CheckpointError,
    HubUnavailable,
    load_model,
    model_card,
    push,
    read_weights,
    save_checkpoint,
)
from drdemo.models import create_model
from drdemo.serving.hub import convert_official
from drdemo.serving.hub import main as hub_main

ROOT = Path(__file__).resolve().parents[1]
INPUT = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))


def logits_of(model) -> torch.Tensor:
    with torch.inference_mode():
        return model(INPUT)


def folder_logits(folder: Path) -> torch.Tensor:
    """The logits on INPUT of the checkpoint in `folder`, as loaded."""
    return logits_of(load_model(folder).model)


def test_push_download_pin_and_load_offline(hub, tmp_path, monkeypatch, untrained_checkpoint):
    v1 = folder_logits(untrained_checkpoint(tmp_path / "v1", seed=1))
    v2 = folder_logits(untrained_checkpoint(tmp_path / "v2", seed=2))
    commit1 = push(tmp_path / "v1", "drdemo/medmamba-t")
    commit2 = push(tmp_path / "v2", "drdemo/medmamba-t")
    assert commit1 != commit2

    latest = load_model("drdemo/medmamba-t")
    assert latest.commit == commit2 and latest.source == "drdemo/medmamba-t"
    assert torch.allclose(logits_of(latest.model), v2, atol=1e-6)
    pinned = load_model("drdemo/medmamba-t", revision=commit1)
    assert pinned.commit == commit1
    assert torch.allclose(logits_of(pinned.model), v1, atol=1e-6)
    assert (pinned.folder / "README.md").read_text().startswith("---\n")

    # Offline: both revisions come from the cache, with no request to the server.
    requests_before = len(hub.state.requests)
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    assert torch.allclose(logits_of(load_model("drdemo/medmamba-t").model), v2, atol=1e-6)
    assert torch.allclose(logits_of(load_model("drdemo/medmamba-t", revision=commit1).model), v1, atol=1e-6)
    assert len(hub.state.requests) == requests_before
    with pytest.raises(HubUnavailable, match="offline mode is on.*HF_HUB_OFFLINE"):
        load_model("drdemo/never-downloaded")


def test_branch_revision(hub, tmp_path, untrained_checkpoint):
    untrained_checkpoint(tmp_path / "main", seed=1)
    experimental = folder_logits(untrained_checkpoint(tmp_path / "exp", seed=3))
    push(tmp_path / "main", "drdemo/model")
    commit = push(tmp_path / "exp", "drdemo/model", revision="experiment")
    loaded = load_model("drdemo/model", revision="experiment")
    assert loaded.commit == commit and loaded.revision == "experiment"
    assert torch.allclose(logits_of(loaded.model), experimental, atol=1e-6)


def test_missing_repo_and_revision_are_named(hub, tmp_path, untrained_checkpoint):
    with pytest.raises(CheckpointError, match="no model repo 'drdemo/absent'"):
        load_model("drdemo/absent")
    untrained_checkpoint(tmp_path / "ckpt", seed=1)
    push(tmp_path / "ckpt", "drdemo/model")
    with pytest.raises(CheckpointError, match="has no revision 'v9'"):
        load_model("drdemo/model", revision="v9")


def test_unreachable_hub_and_nothing_cached(tmp_path, monkeypatch):
    point_hub_at(monkeypatch, "http://127.0.0.1:9")  # the discard port: nothing listens
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(HubUnavailable) as raised:
        load_model("drdemo/medmamba-t")
    message = str(raised.value)
    assert "could not be reached" in message and "HF_HUB_OFFLINE" in message and "bundled" in message


def test_hand_made_cache_layout_loads_offline(tmp_path, monkeypatch, untrained_checkpoint):
    """models--org--name/snapshots/COMMIT + refs/main, as huggingface_hub lays it out."""
    expected = folder_logits(untrained_checkpoint(tmp_path / "folder", seed=4))
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "cache" / "models--drdemo--cached"
    shutil.copytree(tmp_path / "folder", repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    loaded = load_model("drdemo/cached")
    assert loaded.commit == commit
    assert torch.equal(logits_of(loaded.model), expected)


def test_weights_are_stored_fp16_and_loaded_fp32(tmp_path, untrained_checkpoint):
    untrained_checkpoint(tmp_path / "ckpt", seed=5)
    with safe_open(tmp_path / "ckpt" / "model.safetensors", framework="pt") as f:
        assert f.get_tensor("head.weight").dtype == torch.float16
        assert f.get_tensor("layers.0.blocks.0.conv33conv33conv11.0.num_batches_tracked").dtype == torch.int64
    loaded = load_model(tmp_path / "ckpt")
    assert all(p.dtype == torch.float32 for p in loaded.model.parameters())
    assert not loaded.model.training and loaded.commit is None


def test_sharded_weights_load(tmp_path, untrained_checkpoint):
    expected = folder_logits(untrained_checkpoint(tmp_path / "single", seed=6))
    sharded = tmp_path / "sharded"
    shutil.copytree(tmp_path / "single", sharded)
    state = read_weights(sharded)
    (sharded / "model.safetensors").unlink()
    save_torch_state_dict({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, sharded,
                          max_shard_size="10MB")
    assert (sharded / "model.safetensors.index.json").exists()
    assert torch.allclose(logits_of(load_model(sharded).model), expected, atol=1e-6)


class _Exploit:
    """Unpickling this runs code: it would create the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickle_only_folder_is_refused(tmp_path, untrained_checkpoint):
    untrained_checkpoint(tmp_path / "ckpt", seed=7)
    (tmp_path / "ckpt" / "model.safetensors").unlink()
    marker = tmp_path / "pwned"
    (tmp_path / "ckpt" / "pytorch_model.bin").write_bytes(pickle.dumps(_Exploit(marker)))
    with pytest.raises(CheckpointError, match="pickle format.*pytorch_model.bin.*convert"):
        load_model(tmp_path / "ckpt")
    assert not marker.exists()


def test_pickle_beside_safetensors_is_never_opened(tmp_path, untrained_checkpoint):
    expected = folder_logits(untrained_checkpoint(tmp_path / "ckpt", seed=7))
    marker = tmp_path / "pwned"
    (tmp_path / "ckpt" / "model.pth").write_bytes(pickle.dumps(_Exploit(marker)))
    assert torch.allclose(logits_of(load_model(tmp_path / "ckpt").model), expected, atol=1e-6)
    assert not marker.exists()


def _edit_config(folder: Path, **changes) -> None:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


@pytest.mark.parametrize("changes, message", [
    (dict(num_classes=2, class_names=["No DR", "DR"], task="binary"),
     r"num_classes=2 but these weights have a 5-class head"),
    (dict(architecture="medmamba_xl"), r"architecture 'medmamba_xl' is not a registered model"),
    (dict(architecture="resnet50", cam_target_layer="layer4", cam_reshape=None), r"not a resnet50 state_dict"),
    (dict(class_names=["a", "b"]), r"class_names has 2 names but num_classes is 5"),
    (dict(std=[0.2, 0.0, 0.1]), r"std must be positive"),
    (dict(preprocessing={"interpolation": "bicubic", "crop_fov": True, "local_contrast": 2}),
     r"'local_contrast': a number in \[0, 0.5\]"),
    (dict(preprocessing={"interpolation": "bicubic", "crop_fov": True, "gamma": 2}), r"preprocessing must be"),
    (dict(test_time_views=4), r"test_time_views must be one of \[1, 8\], got 4"),
    (dict(calibration={"temperature": 1.0, "logit_bias": [0, 0]}), r"logit_bias must be 5 numbers"),
])
def test_config_that_disagrees_with_weights_is_refused(tmp_path, changes, message, untrained_checkpoint):
    untrained_checkpoint(tmp_path / "ckpt", seed=8)
    _edit_config(tmp_path / "ckpt", **changes)
    with pytest.raises(CheckpointError, match=message) as raised:
        load_model(tmp_path / "ckpt")
    assert "config.json" in str(raised.value) or str(tmp_path / "ckpt") in str(raised.value)


def test_folder_without_config(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="has no config.json"):
        load_model(tmp_path / "empty")
    with pytest.raises(CheckpointError, match="neither a folder nor a Hub repo id"):
        load_model(str(tmp_path / "does-not-exist"))


def test_convert_official(tmp_path):
    """A plain state_dict as the official train.py saves it (torch.save(net.state_dict()))."""
    torch.manual_seed(9)
    official = create_model("medmamba_t").eval()
    torch.save(official.state_dict(), tmp_path / "MedMambaNet.pth")
    folder = convert_official(tmp_path / "MedMambaNet.pth", "medmamba_t", tmp_path / "converted")
    loaded = load_model(folder)
    assert loaded.config.mean == (0.5, 0.5, 0.5) and loaded.config.provenance["trained"] is True
    assert torch.allclose(logits_of(loaded.model), logits_of(official), atol=5e-3)


def test_convert_refuses_code_and_wrong_variant(tmp_path):
    marker = tmp_path / "pwned"
    (tmp_path / "evil.pth").write_bytes(pickle.dumps(_Exploit(marker)))
    with pytest.raises(CheckpointError, match="weights_only=True"):
        convert_official(tmp_path / "evil.pth", "medmamba_t", tmp_path / "out")
    assert not marker.exists()
    torch.save(create_model("medmamba_t").state_dict(), tmp_path / "t.pth")
    with pytest.raises(CheckpointError, match="does not match medmamba_s"):
        convert_official(tmp_path / "t.pth", "medmamba_s", tmp_path / "out")


def test_cli_push_and_info_through_environment_variables(hub, tmp_path, untrained_checkpoint):
    """The CLI as a user runs it: HF_ENDPOINT, HF_HOME, HF_TOKEN and HF_HUB_OFFLINE from the environment."""
    untrained_checkpoint(tmp_path / "ckpt", seed=10)
    env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_HOME": str(tmp_path / "hf-home"),
           "HF_TOKEN": "hf_local_test_token", "PYTHONPATH": str(ROOT)}
    env.pop("HF_HUB_CACHE", None)

    def cli(*args, **extra_env):
        return subprocess.run([sys.executable, "-m", "drdemo.serving.hub", *args], env={**env, **extra_env},
                              capture_output=True, text=True, timeout=300)

    pushed = cli("push", str(tmp_path / "ckpt"), "--repo-id", "drdemo/cli-model")
    assert pushed.returncode == 0, pushed.stderr
    commit = pushed.stdout.strip().splitlines()[-1]
    assert len(commit) == 40

    info = cli("info", "drdemo/cli-model")
    assert info.returncode == 0, info.stderr
    assert "medmamba_t (14.46 M parameters)" in info.stdout and commit in info.stdout
    assert "NO (random weights)" in info.stdout
    assert (tmp_path / "hf-home" / "hub" / "models--drdemo--cli-model").is_dir()

    offline = cli("info", "drdemo/cli-model", HF_HUB_OFFLINE="1", HF_ENDPOINT="http://127.0.0.1:9")
    assert offline.returncode == 0, offline.stderr


def test_cli_errors_are_one_line_and_an_exit_status(tmp_path, monkeypatch, capsys):
    """A repo that is not cached while offline exits 1 with what is wrong, a bad --repo-id is a usage error (2)."""
    point_hub_at(monkeypatch, "http://127.0.0.1:9")                   # the discard port: nothing listens
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    assert hub_main(["info", "drdemo/other"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "offline mode is on" in err and "Traceback" not in err
    with pytest.raises(SystemExit) as bad:
        hub_main(["push", str(tmp_path), "--repo-id", "not a repo"])
    assert bad.value.code == 2 and "ORG/NAME" in capsys.readouterr().err


def test_card_lists_every_training_stage_also_when_an_older_stage_was_stored_as_a_json_string():
    """Checkpoints warm-started before 2026-11-25 carry the earlier stage's provenance as a JSON string."""
    first = {"trained": True, "command": "python -m drdemo.train --out runs/a"}
    second = {"trained": True, "command": "python -m drdemo.train --out runs/b --init-from runs/a",
              "initialised_from_provenance": json.dumps(first)}
    third = {"trained": True, "data": "synthetic", "command": "python -m drdemo.train --out runs/c --init-from runs/b",
             "initialised_from_provenance": second}
    card = model_card(CheckpointConfig.for_architecture("resnet50", provenance=third))
    positions = [card.index(f"# Training, stage {n} of 3\n{stage['command']}\n") for n, stage in
                 enumerate((first, second, third), 1)]
    assert positions == sorted(positions)


def test_a_config_written_before_local_contrast_and_colour_balance_loads_without_them(tmp_path, untrained_checkpoint):
    untrained_checkpoint(tmp_path / "ckpt", seed=8)
    _edit_config(tmp_path / "ckpt", preprocessing={"interpolation": "bicubic", "crop_fov": True})
    assert load_model(tmp_path / "ckpt").config.preprocessing == {"interpolation": "bicubic", "crop_fov": True,
                                                                  "local_contrast": 0.0, "colour_balance": False}


def test_a_config_without_a_display_name_gets_the_registrys_and_a_blank_one_is_refused(tmp_path):
    folder = tmp_path / "ckpt"
    save_checkpoint(create_model("inception_v3").eval(), CheckpointConfig.for_architecture("inception_v3"), folder)
    config = json.loads((folder / "config.json").read_text())
    del config["display_name"]                       # as every config.json written before the field existed
    (folder / "config.json").write_text(json.dumps(config))
    assert load_model(folder).config.display_name == "InceptionV3"
    _edit_config(folder, display_name="Inception (IDRiD, 384 px)")
    assert load_model(folder).config.display_name == "Inception (IDRiD, 384 px)"
    _edit_config(folder, display_name=" ")
    with pytest.raises(CheckpointError, match="display_name must be a non-empty name"):
        load_model(folder)
