"""Model families: an MLP, torchvision-named ResNets, CIFAR VGGs and an LSTM regressor, each with an
AGD-compatible variant."""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

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
