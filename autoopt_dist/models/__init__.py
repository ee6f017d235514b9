"""Model families: an MLP, torchvision-named ResNets, CIFAR VGGs and an LSTM regressor, each with an
AGD-compatible variant; and the scaling paper's MLP cells (`CellMLP`, by code, not in the registry)."""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

from .dag import CellMLP, cell_rows
from .lstm import LSTMRegressor
from .mlp import MLP
from .resnet import BasicBlock, Bottleneck, ResNet, resnet18, resnet34, resnet50, resnet101, resnet152
from .vgg import VGG, vgg11, vgg13, vgg16, vgg19

MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": MLP,
    "resnet18": resnet18,
    "resnet34": resnet34,
    "resnet50": resnet50,
    "resnet101": resnet101,
    "resnet152": resnet152,
    "vgg16": vgg16,
    "lstm": LSTMRegressor,
}


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model by name, passing ``kwargs`` to its constructor.

    Raises:
        ValueError: If ``name`` is not in ``MODELS``.
    """
    try:
        factory = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}") from None
    return factory(**kwargs)


__all__ = [
    "LSTMRegressor",
    "MLP",
    "MODELS",
    "BasicBlock",
    "CellMLP",
    "cell_rows",
    "Bottleneck",
    "ResNet",
    "build_model",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "VGG",
    "vgg11",
    "vgg13",
    "vgg16",
    "vgg19",
]
