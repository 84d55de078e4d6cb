"""The app, over real HTTP: start app.py, call /grade with gradio_client, read the page."""

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    port = _free_port()
    log = tmp_path_factory.mktemp("app") / "app.log"
    # MedMamba's slot points at a Hub repo that cannot be reached (nothing listens on the
    # discard port) and no checkpoint is bundled yet: the page must say what it serves instead.
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "GRADIO_ANALYTICS_ENABLED": "False",
           "DRDEMO_MEDMAMBA_SOURCE": "drdemo/unreachable", "HF_ENDPOINT": "http://127.0.0.1:9",
           "HF_HOME": str(tmp_path_factory.mktemp("hf-home"))}
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 120
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
        pytest.fail(f"app.py did not answer within 120 s:\n{log.read_text()}")
    yield url
    process.terminate()
    process.wait(timeout=30)


def test_grade_endpoint_returns_both_models(app_url, tmp_path):
    path = tmp_path / "photo.png"
    Image.fromarray((np.random.default_rng(0).random((300, 400, 3)) * 255).astype(np.uint8)).save(path)
    shown, medmamba, inception, summary = Client(app_url, verbose=False).predict(handle_file(str(path)),
                                                                                 api_name="/grade")
    assert Image.open(shown).size == (400, 300)
    for label in (medmamba, inception):
        confidences = {c["label"]: c["confidence"] for c in label["confidences"]}
        assert set(confidences) == {"No DR", "Mild NPDR", "Moderate NPDR", "Severe NPDR", "Proliferative DR"}
        assert abs(sum(confidences.values()) - 1) < 1e-4
        assert label["label"] == max(confidences, key=confidences.get)
    assert "medmamba_t" in summary and "inception_v3" in summary and " ms" in summary


def test_page_says_models_are_untrained_and_where_they_come_from(app_url):
    page = urllib.request.urlopen(app_url + "config", timeout=10).read().decode()
    assert "untrained" in page and "not a medical device" in page
    assert "cannot load drdemo/unreachable: http://127.0.0.1:9 could not be reached" in page
    assert "no bundled checkpoint at checkpoints/medmamba_t; serving an UNTRAINED medmamba_t" in page
    assert "no bundled checkpoint at checkpoints/inception_v3; serving an UNTRAINED inception_v3" in page


def test_non_image_upload_gets_a_message_not_a_crash(app_url, tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("this is not an image")
    with pytest.raises(Exception, match="not an image file this app can read"):
        Client(app_url, verbose=False).predict(handle_file(str(path)), api_name="/grade")
    # The app is still up and answering.
    assert urllib.request.urlopen(app_url, timeout=10).status == 200
