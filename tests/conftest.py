"""Shared fixtures: the local Hub, untrained checkpoints, one torch thread, and one running app for the HTTP and
browser tests."""

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest


@pytest.fixture()
def hub(tmp_path, monkeypatch):
    """The local Hub, with huggingface_hub pointed at it and at an empty cache, and a token set."""
    from hub_server import HubServer, point_hub_at
    from huggingface_hub import constants as hub_constants
    with HubServer() as server:
        point_hub_at(monkeypatch, server.endpoint)
        monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
        monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setenv("HF_TOKEN", "hf_local_test_token")
        yield server


@pytest.fixture()
def one_torch_thread() -> Iterator[None]:
    """torch on one thread for the test, the previous count restored after: tiny inputs run fastest on one
    thread, which also escapes OpenMP spin-waits on cores shared with others."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@pytest.fixture()
def untrained_checkpoint() -> Callable[..., Path]:
    """Writes a checkpoint folder of freshly initialised weights: `make(folder, architecture, seed)` returns the
    folder. Seeded, so two seeds are two different checkpoints and one seed is the same one twice.
    `three_heads=True` makes a MultiHeadNet (grade, DME risk, lesion maps); `input_size` overrides the model's."""
    import torch

    from drdemo.checkpoint import CheckpointConfig, save_checkpoint
    from drdemo.models import create_model, model_defaults
    from drdemo.tasks import DME_RISKS, LESION_TYPES

    def make(folder: Path, architecture: str = "medmamba_t", seed: int = 0, three_heads: bool = False,
             input_size: int | None = None) -> Path:
        torch.manual_seed(seed)
        heads = ({"grade_head": "softmax", "dme_classes": list(DME_RISKS), "lesion_types": list(LESION_TYPES)}
                 if three_heads else {})
        overrides = {"input_size": input_size} if input_size else {}
        if three_heads:
            overrides.update(heads=heads, cam_target_layer="backbone." + model_defaults(architecture).cam_target_layer)
        return save_checkpoint(create_model(architecture, heads=heads).eval(), CheckpointConfig.for_architecture(
            architecture, provenance={"trained": False, "seed": seed}, **overrides), folder)

    return make


@pytest.fixture(scope="session")
def app_url(app_process) -> str:
    """The running app's address (see app_process)."""
    return app_process.url


@pytest.fixture(scope="session")
def app_process(tmp_path_factory):
    """app.py on 127.0.0.1, as a user starts it. MedMamba's slot points at a Hub repo that cannot be
    reached (nothing listens on the discard port), and InceptionV3's at a copy of its bundled
    checkpoint whose config names a CAM layer the network does not have: the app must start, fall
    back for both and say why."""
    from benchmarks.app_process import start_app, wait_until_serving

    env = {"DRDEMO_MEDMAMBA_SOURCE": "drdemo/unreachable", "HF_ENDPOINT": "http://127.0.0.1:9",
           "HF_HOME": str(tmp_path_factory.mktemp("hf-home"))}
    bundled = Path(__file__).resolve().parents[1] / "checkpoints" / "inception_v3"
    if (bundled / "model.safetensors").is_file():
        broken = tmp_path_factory.mktemp("broken") / "inception_v3"
        shutil.copytree(bundled, broken)
        config = json.loads((broken / "config.json").read_text())
        config["cam_target_layer"] = "backbone.Mixed_6z"
        (broken / "config.json").write_text(json.dumps(config))
        env["DRDEMO_INCEPTION_SOURCE"] = str(broken)
    app = start_app(tmp_path_factory.mktemp("app"), env)
    try:
        wait_until_serving(app, timeout_s=180)
    except RuntimeError as exc:
        app.stop()
        pytest.fail(str(exc))
    yield app
    app.stop()
