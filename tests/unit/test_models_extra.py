"""VGG (CIFAR) and the LSTM regressor: parameter counts by hand, shapes, AGD-compatible variants.

Oracles: counts are summed by hand below from the layer list (3x3 kernels, 2 BatchNorm affine vectors
per conv, 4 gates per LSTM layer with two bias vectors each); the standard VGG-16 with 10 classes is
kuangliu's pytorch-cifar VGG('VGG16'), whose published size is 14,728,266 parameters.
"""

from __future__ import annotations

import pytest
import torch

from autoopt_dist.models import MODELS, LSTMRegressor, build_model, vgg16
from autoopt_dist.optim import AGD, agd_init_


def _count(model):
    return sum(p.numel() for p in model.parameters())


def _vgg16_count(width, in_ch, classes, standard):
    stages = [[1, 1], [2, 2], [4, 4, 4], [8, 8, 8], [8, 8, 8]]
    total, prev = 0, in_ch
    for stage in stages:
        for mult in stage:
            out = mult * width
            total += prev * out * 9 + (3 * out if standard else 0)  # kernel; conv bias + BN weight + BN bias
            prev = out
    return total + prev * classes + (classes if standard else 0)


def test_vgg16_standard_matches_the_published_cifar10_size():
    assert _count(vgg16(num_classes=10)) == 14_728_266


@pytest.mark.parametrize("agd", [False, True])
@pytest.mark.parametrize("width,in_ch,classes", [(64, 3, 100), (4, 3, 7), (3, 1, 2)])
def test_vgg16_param_count_by_hand(agd, width, in_ch, classes):
    model = vgg16(num_classes=classes, agd_compatible=agd, width=width, in_channels=in_ch)
    assert _count(model) == _vgg16_count(width, in_ch, classes, standard=not agd)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 13 and len(list(model.parameters())) == (14 if agd else 14 + 3 * 13 + 1)


def test_vgg16_shapes_and_agd_compatibility():
    model = vgg16(num_classes=5, agd_compatible=True, width=2)
    assert all(p.dim() >= 2 for p in model.parameters())
    assert model(torch.randn(3, 3, 32, 32)).shape == (3, 5)
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 5)  # adaptive pooling: other sizes pass
    assert not all(p.dim() >= 2 for p in vgg16(num_classes=5, width=2).parameters())
    AGD(agd_init_(model).named_parameters())  # AGD accepts it (it refuses any 1-D parameter)
    with pytest.raises(ValueError):
        AGD(vgg16(num_classes=5, width=2).named_parameters())


def _lstm_count(inp, hidden, layers, out, standard):
    total = 0
    for layer in range(layers):
        fan_in = inp if layer == 0 else hidden
        total += 4 * hidden * (fan_in + hidden) + (8 * hidden if standard else 0)
    return total + hidden * out + (out if standard else 0)


@pytest.mark.parametrize("agd", [False, True])
@pytest.mark.parametrize("inp,hidden,layers,out", [(6, 200, 2, 1), (3, 5, 1, 2), (4, 7, 3, 1)])
def test_lstm_param_count_by_hand(agd, inp, hidden, layers, out):
    model = LSTMRegressor(inp, hidden, layers, out, agd_compatible=agd)
    assert _count(model) == _lstm_count(inp, hidden, layers, out, standard=not agd)


def test_lstm_reference_size_and_shapes():
    model = LSTMRegressor(6)  # ECCO reference: 2 x LSTM(200) + Linear(200, 1) on 6 features
    assert _count(model) == 4 * 200 * 206 + 1600 + 4 * 200 * 400 + 1600 + 201 == 488_201
    assert model(torch.randn(4, 24, 6)).shape == (4, 1)
    assert model(torch.randn(4, 6)).shape == (4, 1)  # one time step
    assert model(torch.randn(0, 24, 6)).shape == (0, 1)  # empty eval padding batch


def test_lstm_uses_the_last_time_step():
    torch.manual_seed(0)
    model = LSTMRegressor(3, 4, 2, 1)
    x = torch.randn(2, 5, 3)
    full, _ = model.lstm(x)
    assert torch.allclose(model(x), model.head(full[:, -1]))
    assert torch.allclose(model(x[:, :3]), model.head(full[:, 2]), atol=1e-6)  # causal: a prefix ends at t=2


def test_lstm_agd_variant_has_only_matrices():
    model = LSTMRegressor(3, 4, agd_compatible=True)
    assert all(p.dim() == 2 for p in model.parameters())
    AGD(agd_init_(model).named_parameters())


def test_registry_builds_both():
    assert {"vgg16", "lstm"} <= set(MODELS)
    assert build_model("vgg16", num_classes=3, width=2, agd_compatible=True)(torch.randn(1, 3, 32, 32)).shape == (1, 3)
    assert build_model("lstm", input_size=2, hidden_size=3)(torch.randn(2, 4, 2)).shape == (2, 1)
