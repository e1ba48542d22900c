"""The ResNet family of He et al. 2015 behind one registry: `get_model(name, **overrides)`, `list_models()`."""

from models import zoo as _zoo  # noqa: F401  (registers the builders)
from models.blocks import BasicBlock, Bottleneck
from models.registry import get_model, list_models, model_options, register_model
from models.resnet import ResNet

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "get_model", "list_models", "model_options", "register_model"]
