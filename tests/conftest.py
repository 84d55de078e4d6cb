"""Shared fixtures: tests/ importable (for the local Hub server), and one running app for the HTTP and browser tests."""

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def app_url(tmp_path_factory):
    """app.py on 127.0.0.1, as a user starts it. MedMamba's slot points at a Hub repo that cannot be
    reached (nothing listens on the discard port), so the app must fall back and say so."""
    port = _free_port()
    log = tmp_path_factory.mktemp("app") / "app.log"
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "GRADIO_ANALYTICS_ENABLED": "False",
           "DRDEMO_MEDMAMBA_SOURCE": "drdemo/unreachable", "HF_ENDPOINT": "http://127.0.0.1:9",
           "HF_HOME": str(tmp_path_factory.mktemp("hf-home")),
           "GRADIO_TEMP_DIR": str(tmp_path_factory.mktemp("gradio-tmp"))}
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 180
    while time.time() < deadline:
        if process.poll() is not None:
            pytest.fail(f"app.py exited with {process.returncode}:\n{log.read_text()}")
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            time.sleep(0.5)
    else:
        process.kill()
        pytest.fail(f"app.py did not answer within 180 s:\n{log.read_text()}")
    yield url
    process.terminate()
    process.wait(timeout=30)
