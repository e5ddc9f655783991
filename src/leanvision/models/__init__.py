"""Model registry and families. Importing this package registers every model.

Example: `from leanvision.models import create_model, list_models; model = create_model("compact")`.
"""

from . import compact, dsconv, fastnet, lenet, resnet, seed, whitenet  # noqa: F401  (registers the models)
from .registry_api import MODELS, create_model, list_models, regularization_loss
from .spec import build_from_spec, load_spec

__all__ = ["MODELS", "build_from_spec", "create_model", "list_models", "load_spec", "regularization_loss"]
