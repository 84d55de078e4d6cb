"""The checkpoint format: a folder that is also a Hugging Face Hub model repository.

    model.safetensors   weights, float16 on disk, upcast to float32 on load (or sharded:
                        model-0000N-of-0000M.safetensors + model.safetensors.index.json)
    config.json         the one source of truth for what the model needs and is (CheckpointConfig), <= 4 KB
    training/provenance.json   the training runs behind the weights, first to last (layout.py)
    eval/<name>.json    one recorded evaluation each: data, command, code commit, date, results (records.py)
    README.md           the model card, with Hub YAML metadata and model-index, generated from the files above

Weights are only ever read from safetensors: pickle files (.bin/.pt/.pth/.pkl/.ckpt) can run
arbitrary code when loaded and are refused.

    config.py    CheckpointConfig (config.json), its validation, CheckpointError, the file names
    io.py        reading and writing the files, building the model, the store (folders, Hub repos)
    layout.py    the record files' form, and reading the form config.json held them in before
    card.py      the model card's text
    records.py   what evaluation writes into a checkpoint (record_evaluation for any kind; the choosers)

Every public name is importable from drdemo.checkpoint itself.
"""

from drdemo.checkpoint.card import model_card
from drdemo.checkpoint.config import (
    CARD_NAME,
    CONFIG_NAME,
    FORMAT,
    HUB_FILE_PATTERNS,
    INDEX_NAME,
    MAX_DISPLAY_NAME,
    PICKLE_SUFFIXES,
    PROVENANCE_NAME,
    WEIGHTS_NAME,
    CheckpointConfig,
    CheckpointError,
)
from drdemo.checkpoint.io import (
    REPO_ID,
    HubUnavailable,
    LoadedModel,
    build_model,
    code_commit,
    convert_folder,
    count_parameters,
    fetch,
    is_repo_id,
    load_model,
    push,
    read_config,
    read_weights,
    resolve_device,
    save_checkpoint,
    weight_files,
    write_config,
)
from drdemo.checkpoint.records import (
    choose_cam_default,
    choose_referable_threshold,
    read_evaluations,
    record_calibration,
    record_cam_test,
    record_evaluation,
    record_grading,
    record_referral_share,
)

__all__ = [
    "CARD_NAME", "CONFIG_NAME", "FORMAT", "HUB_FILE_PATTERNS", "INDEX_NAME", "MAX_DISPLAY_NAME", "PICKLE_SUFFIXES",
    "PROVENANCE_NAME", "REPO_ID", "WEIGHTS_NAME", "CheckpointConfig", "CheckpointError", "HubUnavailable",
    "LoadedModel", "build_model", "choose_cam_default", "choose_referable_threshold", "code_commit", "convert_folder",
    "count_parameters", "fetch", "is_repo_id", "load_model", "model_card", "push", "read_config", "read_evaluations",
    "read_weights", "record_calibration", "record_cam_test", "record_evaluation", "record_grading",
    "record_referral_share", "resolve_device", "save_checkpoint", "weight_files", "write_config",
]
