"""Model families: torchvision-compatible names/counts, AGD variants, shapes, MLP, registry.

The expected numbers are independent of this code: parameter counts are torchvision's
published ones, state_dict lengths are counted by hand (resnet18: 20 convs + 20 BN x 5
entries + fc weight/bias = 122; resnet50: 53 convs + 53 BN x 5 + 2 = 320), and the AGD
weight/tap counts come from the AGD spec (CIFAR ResNet-18: 21/157; ResNet-50: 54/230).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from autoopt_dist.models import MLP, MODELS, build_model, resnet18, resnet34, resnet50


def _num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _taps(weight: torch.Tensor) -> int:
    """Kernel taps kx*ky of a conv weight; 1 for a Linear weight."""
    return math.prod(weight.shape[2:])


# --- torchvision compatibility -----------------------------------------------------------


@pytest.mark.parametrize(
    ("factory", "expected"),
    [(resnet18, 11_689_512), (resnet50, 25_557_032)],
)
def test_standard_param_count_matches_torchvision(factory, expected):
    assert _num_params(factory()) == expected


def test_resnet18_state_dict_keys():
    state = resnet18().state_dict()
    assert len(state) == 122
    for key in [
        "conv1.weight",
        "bn1.weight",
        "bn1.bias",
        "bn1.running_mean",
        "bn1.running_var",
        "bn1.num_batches_tracked",
        "layer1.0.conv1.weight",
        "layer1.1.bn2.running_var",
        "layer2.0.downsample.0.weight",
        "layer2.0.downsample.1.weight",
        "layer4.1.conv2.weight",
        "fc.weight",
        "fc.bias",
    ]:
        assert key in state, key
    # BasicBlock stage 1 keeps its shape, so it has no projection shortcut.
    assert "layer1.0.downsample.0.weight" not in state


def test_resnet50_state_dict_keys():
    state = resnet50().state_dict()
    assert len(state) == 320
    for key in ["layer1.0.conv3.weight", "layer1.0.downsample.0.weight", "layer4.2.bn3.running_mean"]:
        assert key in state, key
    # torchvision v1.5: the stride is on the 3x3 conv, not the first 1x1.
    assert resnet50().layer2[0].conv2.stride == (2, 2)
    assert resnet50().layer2[0].conv1.stride == (1, 1)


def test_standard_init_like_torchvision():
    torch.manual_seed(0)
    model = resnet18(width=16)
    assert torch.equal(model.bn1.weight, torch.ones(16))
    assert torch.equal(model.bn1.bias, torch.zeros(16))
    # kaiming_normal_ fan_out: std = sqrt(2 / (out_channels * kx * ky)).
    w = model.layer1[0].conv1.weight
    expected_std = math.sqrt(2.0 / (16 * 9))
    assert w.std().item() == pytest.approx(expected_std, rel=0.1)


# --- AGD-compatible variants -----------------------------------------------------------------


def _assert_only_matrices(model: nn.Module) -> None:
    for name, p in model.named_parameters():
        assert p.ndim >= 2, name
        assert not name.endswith("bias"), name


@pytest.mark.parametrize("factory", [resnet18, resnet34, resnet50])
@pytest.mark.parametrize("stem", ["imagenet", "cifar"])
def test_agd_resnet_has_only_weight_matrices(factory, stem):
    model = factory(agd_compatible=True, stem=stem, width=4, num_classes=3)
    _assert_only_matrices(model)
    assert all(not m.affine for m in model.modules() if isinstance(m, nn.BatchNorm2d))


def test_agd_cifar_resnet18_weights_and_taps():
    weights = [p for p in resnet18(agd_compatible=True, stem="cifar", num_classes=10).parameters()]
    assert len(weights) == 21
    assert sum(_taps(w) for w in weights) == 157


def test_agd_imagenet_resnet50_weights_and_taps():
    weights = [p for p in resnet50(agd_compatible=True, stem="imagenet", width=8).parameters()]
    assert len(weights) == 54
    assert sum(_taps(w) for w in weights) == 230


def test_agd_variant_keeps_torchvision_names():
    standard = {n for n, _ in resnet18(width=4).named_parameters()}
    agd = {n for n, _ in resnet18(width=4, agd_compatible=True).named_parameters()}
    assert agd == {n for n in standard if n.endswith("weight") and "bn" not in n and "downsample.1" not in n}


# --- shapes, forward and backward --------------------------------------------------------------


def test_cifar_stem_output_shape():
    model = resnet18(stem="cifar", width=4, num_classes=10)
    assert isinstance(model.maxpool, nn.Identity)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_imagenet_stem_output_shape():
    model = resnet50(stem="imagenet", width=4, num_classes=7)
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 7)


def test_in_channels():
    model = resnet18(stem="cifar", width=4, num_classes=10, in_channels=1)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize("factory", [resnet18, resnet50])
@pytest.mark.parametrize("agd_compatible", [False, True])
def test_tiny_odd_width_forward_backward(factory, agd_compatible):
    torch.manual_seed(0)
    model = factory(stem="cifar", width=5, num_classes=3, agd_compatible=agd_compatible)
    expansion = 4 if factory is resnet50 else 1
    assert model.fc.in_features == 8 * 5 * expansion
    out = model(torch.randn(2, 3, 16, 16))
    assert out.shape == (2, 3)
    out.square().sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_unknown_stem_raises():
    with pytest.raises(ValueError, match="stem"):
        resnet18(stem="tiny")


# --- MLP ------------------------------------------------------------------------------------------


def test_mlp_depth_and_width():
    model = MLP(in_features=12, width=7, depth=4, num_classes=3)
    shapes = [tuple(layer.weight.shape) for layer in model.layers]
    assert shapes == [(7, 12), (7, 7), (7, 7), (3, 7)]
    assert [n for n, _ in model.named_parameters()] == [f"layers.{i}.weight" for i in range(4)]
    assert model(torch.randn(5, 3, 2, 2)).shape == (5, 3)  # input is flattened


def test_mlp_depth_one_is_single_linear():
    model = MLP(in_features=6, width=100, depth=1, num_classes=4, agd_compatible=False)
    assert len(model.layers) == 1
    x = torch.randn(3, 6)
    layer = model.layers[0]
    torch.testing.assert_close(model(x), x @ layer.weight.T + layer.bias)  # no activation on output


def test_mlp_bias_only_in_standard_variant():
    agd = MLP(8, 4, 3, 2, agd_compatible=True)
    standard = MLP(8, 4, 3, 2, agd_compatible=False)
    _assert_only_matrices(agd)
    assert all(layer.bias is None for layer in agd.layers)
    assert all(layer.bias is not None for layer in standard.layers)
    assert _num_params(standard) == (8 * 4 + 4) + (4 * 4 + 4) + (4 * 2 + 2)


def test_mlp_depth_zero_rejected():
    with pytest.raises(ValueError):
        MLP(4, 4, 0, 2)


def _two_layer_with_identity_weights(agd_compatible: bool) -> MLP:
    model = MLP(in_features=3, width=3, depth=2, num_classes=3, agd_compatible=agd_compatible)
    with torch.no_grad():
        for layer in model.layers:
            layer.weight.copy_(torch.eye(3))
            if layer.bias is not None:
                layer.bias.zero_()
    return model


def test_mlp_agd_activation_is_sqrt2_relu():
    x = torch.tensor([[-2.0, 0.0, 3.0]])
    out = _two_layer_with_identity_weights(agd_compatible=True)(x)
    torch.testing.assert_close(out, torch.tensor([[0.0, 0.0, 3.0 * math.sqrt(2.0)]]))


def test_mlp_standard_activation_is_plain_relu():
    x = torch.tensor([[-2.0, 0.0, 3.0]])
    out = _two_layer_with_identity_weights(agd_compatible=False)(x)
    torch.testing.assert_close(out, torch.tensor([[0.0, 0.0, 3.0]]))


# --- registry --------------------------------------------------------------------------------


def test_registry_names():
    assert set(MODELS) == {"mlp", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "vgg16", "lstm"}


def test_build_model_passes_kwargs():
    model = build_model("mlp", in_features=4, width=3, depth=2, num_classes=2)
    assert isinstance(model, MLP)
    model = build_model("resnet18", stem="cifar", width=4, num_classes=5, agd_compatible=True)
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 5)


@pytest.mark.parametrize(("name", "blocks"), [("resnet101", [3, 4, 23, 3]), ("resnet152", [3, 8, 36, 3])])
def test_deep_factories_layer_counts(name, blocks):
    model = build_model(name, width=2, num_classes=2, agd_compatible=True)
    assert [len(stage) for stage in (model.layer1, model.layer2, model.layer3, model.layer4)] == blocks


def test_build_model_unknown_name():
    with pytest.raises(ValueError) as excinfo:
        build_model("vgg19x")
    message = str(excinfo.value)
    assert "vgg19x" in message
    for known in MODELS:
        assert known in message


def test_cell_mlp_builds_the_reference_dag_and_refuses_bad_codes():
    import pytest
    import torch

    from autoopt_dist.models import CellMLP

    cell = CellMLP("2_12_212", d_in=5, width=4, d_out=3)
    # rows [2], [1, 2], [2, 1, 2]: four op-2 edges are Linear layers, the 1s are skips; plus stem and readout
    assert sum(isinstance(m, torch.nn.Linear) for m in cell.modules()) == 4 + 2
    nodes, out = cell(torch.zeros(2, 5), return_all=True)
    assert len(nodes) == 4 and out.shape == (2, 3)
    for bad in ("2_3", "2_2", "22_222"):
        with pytest.raises(ValueError, match="cell code"):
            CellMLP(bad, d_in=5, width=4, d_out=3)
