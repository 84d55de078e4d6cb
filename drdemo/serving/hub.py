"""The checkpoint store's CLI: push a checkpoint folder to a Hugging Face Hub repo, describe one, convert
official weights.

Loading lives in drdemo.checkpoint (its io.py) beside the format it reads and writes, so the app's serving
and the Space deployment need not import this CLI:

    from drdemo.checkpoint import load_model
    load_model("checkpoints/medmamba_t")                 # a local folder
    load_model("org/drdemo-medmamba-t", revision="v1")   # a Hub repo, pinned to a tag/branch/commit

Hub access is huggingface_hub's own (snapshot_download), so HF_ENDPOINT, HF_HOME /
HF_HUB_CACHE, HF_HUB_OFFLINE and HF_TOKEN behave as its documentation says: downloads land
in the shared cache, a revision already cached loads with no network, and offline mode never
touches the network. Only safetensors, config.json, the record files (training/provenance.json,
eval/*.json) and the model card are ever downloaded.

CLI:
    python -m drdemo.serving.hub push FOLDER --repo-id ORG/NAME [--revision BRANCH]
    python -m drdemo.serving.hub convert FOLDER     (rewrite a folder whose config.json still holds its records)
    python -m drdemo.serving.hub convert-official --weights FILE --variant medmamba_t --out FOLDER
    python -m drdemo.serving.hub info SOURCE [--revision REV]
    python -m drdemo.serving.hub deploy-space ORG/NAME [--hardware FLAVOR] [--medmamba SOURCE[@REV]]
        [--inception SOURCE[@REV]] [--private] [--dry-run DIR]      (drdemo.serving.space)
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import torch
from huggingface_hub.errors import HfHubHTTPError

from drdemo.checkpoint import (
    CARD_NAME,
    CONFIG_NAME,
    PROVENANCE_NAME,
    REPO_ID,
    CheckpointConfig,
    CheckpointError,
    code_commit,
    convert_folder,
    count_parameters,
    fetch,
    push,
    read_config,
    save_checkpoint,
    weight_files,
)
from drdemo.models import create_model
from drdemo.tasks import TASK_CLASS_NAMES

__all__ = ["convert_official", "describe", "main"]


def convert_official(weights: str | Path, variant: str, out: str | Path, task: str | None = None) -> Path:
    """Turn a state_dict saved by the official MedMamba train.py into a checkpoint folder.

    Loaded with torch.load(weights_only=True), which refuses pickled code. The official script
    resizes to 224 and normalises with mean = std = 0.5, so the config says so.
    """
    weights = Path(weights)
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise CheckpointError(f"{weights}: no such file") from exc
    except Exception as exc:  # torch raises UnpicklingError or RuntimeError for non-weights files
        raise CheckpointError(f"{weights} is not a plain PyTorch state_dict (loaded with weights_only=True): "
                              f"{exc}") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise CheckpointError(f"{weights} does not hold a state_dict of tensors")
    state = {key.removeprefix("module."): value for key, value in state.items()}
    if "head.weight" not in state:
        raise CheckpointError(f"{weights} has no 'head.weight': not a MedMamba (VSSM) state_dict")
    num_classes = state["head.weight"].shape[0]
    task = task or {5: "icdr5", 2: "binary"}.get(num_classes)
    if task is None or len(TASK_CLASS_NAMES[task]) != num_classes:
        raise CheckpointError(f"{weights} has a {num_classes}-class head; drdemo checkpoints are 5 ICDR grades "
                              f"(icdr5) or 2 classes (--task binary or referable)")
    model = create_model(variant, num_classes=num_classes)
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(f"{weights} does not match {variant}: missing {result.missing_keys[:3]}, "
                              f"unexpected {result.unexpected_keys[:3]} (check --variant)")
    config = CheckpointConfig.for_architecture(
        variant, task=task, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
        preprocessing={"interpolation": "bilinear", "crop_fov": False},  # the official script: a plain resize
        provenance={"trained": True, "data": "unknown (converted from the official MedMamba training script's output)",
                    "recipe": "official MedMamba train.py", "source_file": weights.name,
                    "source_sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
                    "code_commit": code_commit()})
    return save_checkpoint(model, config, out)


def describe(source: str, revision: str | None = None) -> str:
    """Human-readable summary of a checkpoint, without building the network."""
    folder, commit = fetch(source, revision)
    config = read_config(folder)
    card = [folder / CARD_NAME] if (folder / CARD_NAME).exists() else []
    records = [p for p in [folder / PROVENANCE_NAME, *sorted((folder / "eval").glob("*.json"))] if p.is_file()]
    files = weight_files(folder) + [folder / CONFIG_NAME] + card + records
    lines = [
        f"source:       {source}" + (f" (revision {revision})" if revision else ""),
        f"commit:       {commit or '(local folder)'}",
        f"folder:       {folder}",
        f"architecture: {config.architecture} ({count_parameters(folder) / 1e6:.2f} M parameters)",
        f"task:         {config.task}; classes: {', '.join(config.class_names)}",
        f"input:        {config.input_size} px, mean {list(config.mean)}, std {list(config.std)}, "
        f"{config.preprocessing}",
        f"trained:      {'yes' if config.trained else 'NO (random weights)'}; "
        f"data: {config.provenance.get('data', '-')}",
        f"metrics:      {config.metrics or '-'}",
        "files:        " + ", ".join(f"{f.relative_to(folder)} ({f.stat().st_size / 1e3:.1f} KB)" for f in files),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m drdemo.serving.hub", description="drdemo checkpoint store")
    commands = parser.add_subparsers(dest="command", required=True)
    push_cmd = commands.add_parser("push", help="upload a checkpoint folder to a Hub model repo")
    push_cmd.add_argument("folder", type=Path)
    push_cmd.add_argument("--repo-id", required=True, help="ORG/NAME")
    push_cmd.add_argument("--revision", help="branch to commit to (created from main if new)")
    push_cmd.add_argument("--private", action="store_true")
    rewrite = commands.add_parser("convert", help="rewrite a checkpoint folder in the current form (config.json "
                                  "the contract; training/provenance.json and eval/*.json the records); "
                                  "weights untouched")
    rewrite.add_argument("folder", type=Path)
    convert = commands.add_parser("convert-official", help="convert an official MedMamba train.py state_dict")
    convert.add_argument("--weights", type=Path, required=True)
    convert.add_argument("--variant", required=True, choices=["medmamba_t", "medmamba_s", "medmamba_b"])
    convert.add_argument("--out", type=Path, required=True)
    convert.add_argument("--task", choices=sorted(TASK_CLASS_NAMES), help="default: from the head size")
    info = commands.add_parser("info", help="describe a checkpoint folder or Hub repo")
    info.add_argument("source")
    info.add_argument("--revision")
    from drdemo.serving import space  # imports this module: loaded only when the CLI runs
    space.add_arguments(commands.add_parser("deploy-space", help="deploy the app as a Gradio Space, its models "
                                                                 "pushed and pinned to their commits"))
    args = parser.parse_args(argv)
    if args.command == "deploy-space":
        return space.run(args)

    try:
        if args.command == "push":
            if not REPO_ID.match(args.repo_id):
                parser.error(f"--repo-id must look like ORG/NAME, got {args.repo_id!r}")
            print(push(args.folder, args.repo_id, args.revision, args.private))
        elif args.command == "convert":
            if not args.folder.is_dir():
                raise CheckpointError(f"{args.folder} is not a checkpoint folder")
            convert_folder(args.folder)
            print(f"rewrote {args.folder}")
        elif args.command == "convert-official":
            folder = convert_official(args.weights, args.variant, args.out, args.task)
            print(f"wrote {folder}")
        else:
            print(describe(args.source, args.revision))
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except HfHubHTTPError as exc:
        print(f"error: the Hub refused the request: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
