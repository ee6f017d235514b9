"""VGG with BatchNorm for 32x32 images (CIFAR), as in the AGD paper's CIFAR-100 experiment.

Layout follows the AGD reference (`jxbz/agd`, architecture/vgg.py, itself kuangliu's CIFAR VGG): 3x3
convolutions (padding 1) each followed by BatchNorm and ReLU, 2x2 max-pools between stages, and one
Linear classifier on the 8w channels left after five pools. Names (`features.<i>`, `classifier`) match it.
The reference's trailing AvgPool2d(1) is a no-op on 32x32 inputs; an adaptive average pool to 1x1 takes
its place, identical there and letting other input sizes through.

`agd_compatible=True` is the reference's own setting (bias=False, BatchNorm affine=False): every
parameter is a conv kernel or a matrix. The standard variant has conv and classifier biases and affine
BatchNorm (kuangliu's VGG). `width` scales every stage (64 -> 64, 128, 256, 512, 512 channels).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

# Channels per conv as multiples of width (1 = 64 at width 64); "M" is a 2x2 max-pool.
CONFIGS: dict[str, list[Any]] = {
    "vgg11": [1, "M", 2, "M", 4, 4, "M", 8, 8, "M", 8, 8, "M"],
    "vgg13": [1, 1, "M", 2, 2, "M", 4, 4, "M", 8, 8, "M", 8, 8, "M"],
    "vgg16": [1, 1, "M", 2, 2, "M", 4, 4, 4, "M", 8, 8, 8, "M", 8, 8, 8, "M"],
    "vgg19": [1, 1, "M", 2, 2, "M", 4, 4, 4, 4, "M", 8, 8, 8, 8, "M", 8, 8, 8, 8, "M"],
}


class VGG(nn.Module):
    """VGG for small images.

    Args:
        config: one of CONFIGS' lists (channel multiples and "M" pools).
        num_classes: size of the output.
        agd_compatible: no biases and BatchNorm affine=False (only >= 2-D parameters), as AGD needs.
        width: channels of the first stage (the reference: 64).
        in_channels: channels of the input image.
    """

    def __init__(self, config: list[Any], num_classes: int = 100, agd_compatible: bool = False, width: int = 64,
                 in_channels: int = 3) -> None:
        super().__init__()
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        self.agd_compatible = agd_compatible
        bias, affine = not agd_compatible, not agd_compatible
        layers: list[nn.Module] = []
        channels = in_channels
        for item in config:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                out = item * width
                layers += [nn.Conv2d(channels, out, kernel_size=3, padding=1, bias=bias),
                           nn.BatchNorm2d(out, affine=affine), nn.ReLU(inplace=True)]
                channels = out
        layers.append(nn.AdaptiveAvgPool2d((1, 1)))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels, num_classes, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


def vgg11(num_classes: int = 100, agd_compatible: bool = False, width: int = 64, in_channels: int = 3) -> VGG:
    return VGG(CONFIGS["vgg11"], num_classes, agd_compatible, width, in_channels)


def vgg13(num_classes: int = 100, agd_compatible: bool = False, width: int = 64, in_channels: int = 3) -> VGG:
    return VGG(CONFIGS["vgg13"], num_classes, agd_compatible, width, in_channels)


def vgg16(num_classes: int = 100, agd_compatible: bool = False, width: int = 64, in_channels: int = 3) -> VGG:
    """VGG-16 (13 convs + 1 Linear): the AGD paper's CIFAR-100 model at width 64."""
    return VGG(CONFIGS["vgg16"], num_classes, agd_compatible, width, in_channels)


def vgg19(num_classes: int = 100, agd_compatible: bool = False, width: int = 64, in_channels: int = 3) -> VGG:
    return VGG(CONFIGS["vgg19"], num_classes, agd_compatible, width, in_channels)
