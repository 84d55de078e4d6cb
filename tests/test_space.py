"""The repository is a Hugging Face Space: its README header, requirements and CI command agree."""

import re
from pathlib import Path

import gradio
from huggingface_hub import metadata_load

ROOT = Path(__file__).resolve().parents[1]


def test_space_header_matches_the_requirements_and_the_installed_gradio():
    meta = metadata_load(ROOT / "README.md")
    assert meta["sdk"] == "gradio" and (ROOT / meta["app_file"]).is_file()
    pinned = re.search(r"^gradio==([\d.]+)", (ROOT / "requirements.txt").read_text(), re.MULTILINE).group(1)
    assert meta["sdk_version"] == pinned == gradio.__version__
    assert meta["python_version"] == "3.11"


def test_readme_opens_with_the_two_commands_and_ci_runs_the_test_one():
    body = (ROOT / "README.md").read_text().split("\n---\n", 1)[1]
    commands = re.search(r"```bash\n(.*?)\n```", body, re.DOTALL).group(1).splitlines()
    assert body.lstrip().startswith("# drdemo") and len(commands) == 2
    install_and_run, install_and_test = (line.split("#")[0].strip() for line in commands)
    assert install_and_run == "pip install -r requirements.txt && python app.py"
    assert install_and_test == "pip install -r requirements.txt && python -m pytest"
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1] == install_and_test
