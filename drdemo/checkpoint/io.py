"""Checkpoint folders and Hub repos: reading and writing config.json, its record files
(drdemo.checkpoint.layout), the model card and the weights (safetensors only), building the registry model
from them, and the store (load a checkpoint from a folder or a Hugging Face Hub repo, push one), like
timm's _hub.py.

Hub access is huggingface_hub's own (snapshot_download), so HF_ENDPOINT, HF_HOME / HF_HUB_CACHE,
HF_HUB_OFFLINE and HF_TOKEN behave as its documentation says. drdemo.serving.hub is the store's CLI.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import torch
from huggingface_hub import HfApi, snapshot_download
from huggingface_hub import constants as hub_constants
from huggingface_hub.errors import (
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from drdemo.checkpoint import layout
from drdemo.checkpoint.card import model_card
from drdemo.checkpoint.config import (
    CARD_NAME,
    CONFIG_NAME,
    FORMAT,
    HUB_FILE_PATTERNS,
    INDEX_NAME,
    PICKLE_SUFFIXES,
    PROVENANCE_NAME,
    RECORD_FIELDS,
    WEIGHTS_NAME,
    CheckpointConfig,
    CheckpointError,
)
from drdemo.models import create_model, target_layers


def read_config(folder: Path) -> CheckpointConfig:
    """config.json with the records (training/provenance.json, eval/*.json) in memory beside it. A
    config.json that still holds the records itself (written before the record files) reads as it is;
    `python -m drdemo.serving.hub convert FOLDER` rewrites such a folder."""
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{folder} has no {CONFIG_NAME}: a checkpoint folder needs {WEIGHTS_NAME} and "
                              f"{CONFIG_NAME} (see drdemo.checkpoint.save_checkpoint, or `python -m drdemo.serving.hub "
                              f"convert-official` for weights from the official MedMamba code)")
    data = layout.read_json(path)
    if not is_old_form(data):
        provenance, metrics, cam_evaluation = layout.in_memory(layout.read_provenance(folder)["stages"],
                                                               layout.read_evaluations(folder))
        data = {**data, "provenance": provenance, "metrics": metrics, "cam_evaluation": cam_evaluation}
    return CheckpointConfig.from_dict(data, source=str(path))


def is_old_form(config_json: dict) -> bool:
    """Whether a config.json holds the records itself (the form before training/ and eval/ held them)."""
    return any(key in config_json for key in RECORD_FIELDS)


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a checkpoint; refuses folders that only offer pickles."""
    index = folder / INDEX_NAME
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{index} is not a safetensors index (needs a 'weight_map'): {exc}") from exc
        files = [folder / name for name in sorted(set(weight_map.values()))]
        absent = [f.name for f in files if not f.is_file()]
        if absent:
            raise CheckpointError(f"{index} lists shard(s) that are not in {folder}: {', '.join(absent)}")
        return files
    if (folder / WEIGHTS_NAME).is_file():
        return [folder / WEIGHTS_NAME]
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        raise CheckpointError(
            f"{folder} has weights only in pickle format ({', '.join(pickles)}), which can run arbitrary code "
            f"when loaded and is refused. Convert them once, in a place you trust: python -m drdemo.serving.hub "
            f"convert-official --weights {folder / pickles[0]} --variant <name> --out <folder>")
    raise CheckpointError(f"{folder} has no {WEIGHTS_NAME}")


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of the checkpoint, floating ones upcast to float32."""
    state: dict[str, torch.Tensor] = {}
    for path in weight_files(folder):
        try:
            tensors = load_file(path)
        except Exception as exc:  # safetensors raises its own error type for corrupt headers
            raise CheckpointError(f"{path} is not a readable safetensors file: {exc}") from exc
        state.update({k: v.float() if v.is_floating_point() else v for k, v in tensors.items()})
    return state


BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


def count_parameters(folder: Path) -> int:
    """Number of parameters stored, BatchNorm statistics excluded (read from headers only)."""
    total = 0
    for path in weight_files(folder):
        with safe_open(path, framework="pt") as f:
            for key in f.keys():
                if not key.endswith(BUFFER_SUFFIXES):
                    total += int(torch.Size(f.get_slice(key).get_shape()).numel())
    return total


def build_model(config: CheckpointConfig, state: dict[str, torch.Tensor], source: str) -> nn.Module:
    """The registry model of `config`, with `state` loaded strictly; mismatches explained."""
    try:
        model = create_model(config.architecture, num_classes=config.num_classes, heads=config.heads,
                             initialise=False, **config.model_options)   # every parameter is loaded below
    except TypeError as exc:  # an option the builder does not take
        raise CheckpointError(f"{source}: model_options {config.model_options!r} in {CONFIG_NAME} do not fit "
                              f"{config.architecture}'s builder ({exc})") from exc
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        detail = "; ".join(part for part in (
            f"missing {len(missing)} key(s) e.g. {', '.join(missing[:3])}" if missing else "",
            f"unexpected {len(unexpected)} key(s) e.g. {', '.join(unexpected[:3])}" if unexpected else "") if part)
        raise CheckpointError(f"{source}: the weights are not a {config.architecture} state_dict ({detail}). "
                              f"Check 'architecture' in {CONFIG_NAME}.")
    for key, tensor in state.items():
        if tensor.shape != expected[key].shape:
            is_head = (tensor.dim() > 0 and expected[key].dim() > 0
                       and expected[key].shape[0] == config.num_classes != tensor.shape[0])
            hint = (f"{CONFIG_NAME} says num_classes={config.num_classes} but these weights have a "
                    f"{tensor.shape[0]}-class head: fix num_classes and class_names in {CONFIG_NAME}."
                    if is_head else f"Check 'architecture' in {CONFIG_NAME}.")
            raise CheckpointError(f"{source}: {key} has shape {list(tensor.shape)} but {config.architecture} "
                                  f"expects {list(expected[key].shape)}. {hint}")
    model.load_state_dict(state, strict=True)
    try:
        target_layers(model, config.cam_target_layer)
    except ValueError as exc:
        raise CheckpointError(f"{source}: cam_target_layer in {CONFIG_NAME}: {exc}") from exc
    return model.eval()


read_evaluations = layout.read_evaluations


def write_config(folder: Path, config: CheckpointConfig) -> CheckpointConfig:
    """Validate `config` and write it as `folder`'s files: config.json (the contract), its records
    (training/provenance.json and the eval/ files of the kinds the records hold; other eval files are
    left as they are) and the model card generated from them; returns it."""
    config = CheckpointConfig.from_dict(config.to_dict(), source=str(folder / CONFIG_NAME))
    write_records(folder, config)
    layout.write_json(folder / CONFIG_NAME, config.contract_dict())
    write_card(folder)
    return config


def write_records(folder: Path, config: CheckpointConfig) -> None:
    """training/provenance.json and the eval/ files of `config`'s in-memory records. A recorded evaluation
    whose data, command and results are unchanged keeps its file (and with it its code commit and date)."""
    layout.write_json(folder / PROVENANCE_NAME, layout.provenance_file(config.provenance))
    existing = layout.read_evaluations(folder)
    wanted = layout.evaluations_of(config.provenance, config.metrics, config.cam_evaluation)
    for name, record in wanted.items():
        kept = existing.get(name)
        if kept is None or any(kept.get(key) != record[key] for key in ("data", "command")) \
                or layout.results_of(kept) != record["results"]:
            layout.write_evaluation(folder, record)
    for name in existing:
        if layout.is_legacy_name(name) and name not in wanted:
            layout.remove_evaluation(folder, name)


def write_card(folder: Path) -> Path:
    """Regenerate README.md from the folder's config.json and record files."""
    path = folder / CARD_NAME
    path.write_text(model_card(read_config(folder), layout.read_evaluations(folder)))
    return path


def convert_folder(folder: str | Path) -> CheckpointConfig:
    """Rewrite a checkpoint folder in the current form (config.json the contract only; the records in
    training/provenance.json and eval/*.json; the card regenerated). The weights are not touched."""
    folder = Path(folder)
    return write_config(folder, read_config(folder))


def save_checkpoint(model: nn.Module, config: CheckpointConfig, folder: str | Path,
                    dtype: torch.dtype = torch.float16) -> Path:
    """Write model.safetensors (floating tensors as `dtype`), config.json, the record files and README.md."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {key: (value.detach().to(dtype) if value.is_floating_point() else value.detach()).contiguous().cpu()
             for key, value in model.state_dict().items()}
    save_file(state, folder / WEIGHTS_NAME, metadata={"format": "pt", "drdemo": FORMAT})
    write_config(folder, config)
    return folder


REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class HubUnavailable(CheckpointError):
    """The Hub could not be reached (or offline mode is on) and the revision is not cached."""


@dataclass(frozen=True)
class LoadedModel:
    """A network ready to run, with the facts about it and where it came from."""

    model: nn.Module
    config: CheckpointConfig
    source: str            # the folder or repo id asked for
    folder: Path           # where the files are on disk (a Hub cache snapshot for repo ids)
    revision: str | None   # the revision asked for (None: main, or a folder)
    commit: str | None     # the Hub commit the files came from (None for a folder)

    @property
    def origin(self) -> str:
        """One line for people: 'org/name @ 1a2b3c4' or the folder path."""
        return f"{self.source} @ {self.commit[:7]}" if self.commit else str(self.folder)


def is_repo_id(source: str) -> bool:
    return bool(REPO_ID.match(source)) and not Path(source).exists()


def fetch(source: str, revision: str | None = None) -> tuple[Path, str | None]:
    """Local folder of a checkpoint and its Hub commit (None for a folder); downloads if needed."""
    if Path(source).is_dir():
        if revision:
            raise CheckpointError(f"{source} is a local folder; a revision ({revision}) only applies to Hub repos")
        return Path(source), None
    if not is_repo_id(source):
        raise CheckpointError(f"{source!r} is neither a folder nor a Hub repo id like 'org/name'")
    try:
        folder = Path(snapshot_download(repo_id=source, revision=revision, allow_patterns=HUB_FILE_PATTERNS))
    except RepositoryNotFoundError as exc:
        raise CheckpointError(f"no model repo {source!r} on {hub_constants.ENDPOINT} (or it is private and no "
                              f"HF_TOKEN with access is set)") from exc
    except RevisionNotFoundError as exc:
        raise CheckpointError(f"model repo {source!r} has no revision {revision!r}") from exc
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as exc:
        mode = "offline mode is on (HF_HUB_OFFLINE=1)" if hub_constants.HF_HUB_OFFLINE else \
            f"{hub_constants.ENDPOINT} could not be reached"
        raise HubUnavailable(
            f"cannot load {source}{'@' + revision if revision else ''}: {mode} and it is not in the Hub cache "
            f"({hub_constants.HF_HUB_CACHE}). Download it once while online (it then loads with HF_HUB_OFFLINE=1), "
            f"or point the app at a local folder such as the bundled checkpoints/.") from exc
    except HfHubHTTPError as exc:
        raise HubUnavailable(f"cannot load {source} from {hub_constants.ENDPOINT}: {exc}") from exc
    return folder, folder.name


def resolve_device(device: str | torch.device) -> torch.device:
    """"auto": CUDA when available, else the CPU; anything else as torch reads it."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_model(source: str | Path, revision: str | None = None, device: str | torch.device = "auto") -> LoadedModel:
    """Load a checkpoint from a folder or a Hub repo id; model in eval mode on `device`."""
    source = str(source)
    folder, commit = fetch(source, revision)
    config = read_config(folder)
    label = f"{source}@{commit[:7]}" if commit else str(folder)
    model = build_model(config, read_weights(folder), label).to(resolve_device(device))
    return LoadedModel(model=model, config=config, source=source, folder=folder, revision=revision, commit=commit)


def push(folder: str | Path, repo_id: str, revision: str | None = None, private: bool = False,
         commit_message: str | None = None) -> str:
    """Upload a checkpoint folder to a Hub model repo (created if needed); returns the commit id."""
    folder = Path(folder)
    config = read_config(folder)
    build_model(config, read_weights(folder), str(folder))  # never publish a checkpoint that does not load
    api = HfApi()
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    if revision and revision != "main":
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, revision=revision,
                             allow_patterns=HUB_FILE_PATTERNS,
                             commit_message=commit_message or f"Upload {config.architecture} checkpoint")
    return info.oid


def code_commit() -> str:
    """The git commit of this code (recorded in a checkpoint's provenance); "unknown" outside a git checkout."""
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return result.stdout.strip() if result.returncode == 0 and result.stdout.strip() else "unknown"

