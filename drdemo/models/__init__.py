"""Networks only: the registry and its architectures. No files, no preprocessing here."""

from drdemo.models import medmamba, torchvision_models  # noqa: F401  (registers the builders)
from drdemo.models._registry import (
    CAM_RESHAPES,
    FUNDUS_MEAN,
    FUNDUS_STD,
    ICDR_GRADES,
    LAYER_SEPARATOR,
    ModelDefaults,
    NoPretrainedWeightsError,
    count_parameters,
    create_model,
    get_submodule,
    list_models,
    model_defaults,
    register_model,
    target_layers,
)

__all__ = [
    "CAM_RESHAPES", "FUNDUS_MEAN", "FUNDUS_STD", "ICDR_GRADES", "LAYER_SEPARATOR", "ModelDefaults",
    "NoPretrainedWeightsError", "count_parameters",
    "create_model", "get_submodule", "list_models", "model_defaults", "register_model",
    "target_layers",
]
