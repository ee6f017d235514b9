"""Model families: an MLP and torchvision-named ResNets, each with an AGD-compatible variant."""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

from .mlp import MLP
from .resnet import BasicBlock, Bottleneck, ResNet, resnet18, resnet34, resnet50, resnet101, resnet152

MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": MLP,
    "resnet18": resnet18,
    "resnet34": resnet34,
    "resnet50": resnet50,
    "resnet101": resnet101,
    "resnet152": resnet152,
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
]
