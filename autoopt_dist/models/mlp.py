"""Fully connected classifier, with a variant that fits Automatic Gradient Descent."""

from __future__ import annotations

import math

import torch
from torch import nn


class ScaledReLU(nn.Module):
    """ReLU times sqrt(2).

    ReLU zeroes half of a symmetric input, halving its second moment; the sqrt(2)
    factor restores it, as in the AGD reference FCN, so that depth does not shrink
    the signal.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x) * math.sqrt(2.0)


class MLP(nn.Module):
    """Multilayer perceptron over flattened inputs.

    Args:
        in_features: Size of the flattened input.
        width: Size of every hidden layer.
        depth: Number of Linear layers (>= 1); depth 1 maps input to classes directly.
        num_classes: Size of the output.
        agd_compatible: If True, no biases (AGD updates matrices only) and the
            activation is sqrt(2) * ReLU. If False, biases and a plain ReLU.
    """

    def __init__(
        self,
        in_features: int,
        width: int,
        depth: int,
        num_classes: int,
        agd_compatible: bool = True,
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.agd_compatible = agd_compatible
        use_bias = not agd_compatible
        sizes = [in_features] + [width] * (depth - 1) + [num_classes]
        self.layers = nn.ModuleList(
            nn.Linear(fan_in, fan_out, bias=use_bias) for fan_in, fan_out in zip(sizes[:-1], sizes[1:])
        )
        self.activation = ScaledReLU() if agd_compatible else nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        *hidden, last = self.layers
        for layer in hidden:
            x = self.activation(layer(x))
        return last(x)  # logits: no activation after the last layer
