"""AGD against an independent float64 computation of METHODS.md 1.3, and the tap helpers against
single-process shard simulators (METHODS.md 7.1)."""

import math

import pytest
import torch
from torch import nn

from autoopt_dist.layout import LocalView, ParamInfo
from autoopt_dist.models import MLP
from autoopt_dist.optim import AGD, agd_init_
from autoopt_dist.optim.taps import add_scaled_by_tap_, tap_sum_of_squares


def agd_reference_step(weights, grads, gain=1.0):
    """METHODS.md 1.3 in float64, one (weight, tap) at a time, written from the spec."""
    L = len(weights)
    norms, scales = [], []
    for w, g in zip(weights, grads):
        d_out, d_in = w.shape[0], w.shape[1]
        k = 1 if w.dim() == 2 else w.shape[2] * w.shape[3]
        s = math.sqrt(d_out / d_in) / math.sqrt(k)
        if w.dim() == 2:
            taps = [g]
        else:
            taps = [g[:, :, a, b] for a in range(w.shape[2]) for b in range(w.shape[3])]
        norms.append([math.sqrt(float((t.double() ** 2).sum())) for t in taps])
        scales.append(s)
    G = sum(s * sum(n) for s, n in zip(scales, norms)) / L
    eta = math.log((1 + math.sqrt(1 + 4 * G)) / 2)
    new = []
    for w, g, s, n in zip(weights, grads, scales, norms):
        w = w.double().clone()
        g = g.double()
        if w.dim() == 2:
            if n[0] > 0:
                w -= gain * eta / L * s * g / n[0]
        else:
            i = 0
            for a in range(w.shape[2]):
                for b in range(w.shape[3]):
                    if n[i] > 0:
                        w[:, :, a, b] -= gain * eta / L * s * g[:, :, a, b] / n[i]
                    i += 1
        new.append(w)
    return new, G, eta


class ConvNet(nn.Module):
    """Dense and conv (3x3, 1x1, 5x5) weights with odd sizes, no biases."""

    def __init__(self):
        super().__init__()
        self.c3 = nn.Conv2d(3, 5, 3, padding=1, bias=False)
        self.c1 = nn.Conv2d(5, 7, 1, bias=False)
        self.c5 = nn.Conv2d(7, 4, 5, padding=2, bias=False)
        self.fc = nn.Linear(4 * 6 * 6, 3, bias=False)

    def forward(self, x):
        x = torch.relu(self.c3(x))
        x = torch.relu(self.c1(x))
        x = torch.relu(self.c5(x))
        return self.fc(x.flatten(1))


@pytest.mark.parametrize("gain", [1.0, 3.0])
def test_agd_matches_float64_oracle_over_steps(gain):
    torch.manual_seed(0)
    model = agd_init_(ConvNet())
    opt = AGD(model.named_parameters(), gain=gain)
    x, y = torch.randn(8, 3, 6, 6), torch.randn(8, 3)
    weights = [p.detach().double().clone() for p in model.parameters()]
    for _ in range(4):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        grads = [p.grad.detach().clone() for p in model.parameters()]
        weights_in = [p.detach().clone() for p in model.parameters()]
        expected, G, eta = agd_reference_step(weights_in, grads, gain)
        opt.step()
        for p, e in zip(model.parameters(), expected):
            torch.testing.assert_close(p.detach().double(), e, rtol=2e-6, atol=1e-7)
        assert opt.last_scalars["G"].item() == pytest.approx(G, rel=1e-5)
        assert opt.last_scalars["eta"].item() == pytest.approx(eta, rel=1e-5)
    assert not torch.equal(weights[0], model.c3.weight.double())


def test_zero_gradient_tap_is_not_updated():
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 3, bias=False)
    agd_init_(conv)
    before = conv.weight.detach().clone()
    conv.weight.grad = torch.randn_like(conv.weight)
    conv.weight.grad[:, :, 1, 2] = 0
    AGD([conv.weight]).step()
    assert torch.equal(conv.weight[:, :, 1, 2], before[:, :, 1, 2])
    assert torch.isfinite(conv.weight).all()
    assert not torch.equal(conv.weight[:, :, 0, 0], before[:, :, 0, 0])


def test_init_is_orthogonal_per_tap_and_scaled():
    torch.manual_seed(1)
    conv = nn.Conv2d(4, 6, 3, bias=False)
    lin = nn.Linear(5, 9, bias=False)
    agd_init_(nn.Sequential(conv, lin))
    s_conv = math.sqrt(6 / 4) / 3
    for a in range(3):
        for b in range(3):
            w = conv.weight[:, :, a, b].double() / s_conv  # (6, 4): orthonormal columns
            torch.testing.assert_close(w.T @ w, torch.eye(4, dtype=torch.float64), atol=1e-5, rtol=0)
    w = lin.weight.double() / math.sqrt(9 / 5)
    torch.testing.assert_close(w.T @ w, torch.eye(5, dtype=torch.float64), atol=1e-5, rtol=0)


def test_agd_refuses_bias_naming_it_and_the_fix():
    model = MLP(4, 5, 2, 3, agd_compatible=False)
    with pytest.raises(ValueError, match=r"layers\.0\.bias.*agd_compatible=True"):
        AGD(model.named_parameters())
    with pytest.raises(ValueError, match="agd_compatible=True"):
        agd_init_(model)


def _flat_chunks(numel, world):
    """FSDP1-style even split of a flat tensor (padded to a multiple of world): [start, end) per rank."""
    chunk = -(-numel // world)
    return [(min(r * chunk, numel), min((r + 1) * chunk, numel)) for r in range(world)]


@pytest.mark.parametrize("world", [1, 2, 3, 4, 7, 50])
@pytest.mark.parametrize("shape", [(5, 3, 3, 3), (4, 2, 1, 1), (3, 2, 5, 5), (7, 3)])
def test_flat_fragments_sum_to_full_tap_statistics_and_update(world, shape):
    torch.manual_seed(0)
    info = ParamInfo.from_shape("w", shape)
    full_w, full_g = torch.randn(shape), torch.randn(shape)
    full_view = LocalView(info, full_w, True, 0, full_w.numel(), 0, None)
    expected = tap_sum_of_squares(full_view, full_g)
    factor = torch.randn(info.taps)
    want = full_w.clone()
    add_scaled_by_tap_(LocalView(info, want, True, 0, want.numel(), 0, None), want, full_g, factor)

    total = torch.zeros(info.taps)
    got = full_w.clone().view(-1)
    for start, end in _flat_chunks(full_w.numel(), world):
        view = LocalView(info, got, False, start, end - start, start, None)
        total += tap_sum_of_squares(view, full_g.view(-1)[start:end])
        add_scaled_by_tap_(view, view.data(), full_g.view(-1)[start:end], factor)
    torch.testing.assert_close(total, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got.view(shape), want, rtol=1e-6, atol=1e-6)


def test_channels_last_weights_step_like_contiguous():
    torch.manual_seed(0)
    a = nn.Conv2d(3, 5, 3, bias=False)
    b = nn.Conv2d(3, 5, 3, bias=False).to(memory_format=torch.channels_last)
    b.weight.data.copy_(a.weight.data)
    g = torch.randn_like(a.weight)
    a.weight.grad = g.clone()
    b.weight.grad = g.clone().to(memory_format=torch.channels_last)
    assert not b.weight.is_contiguous()
    AGD([a.weight]).step()
    AGD([b.weight]).step()
    torch.testing.assert_close(a.weight, b.weight)


def test_bf16_parameters_get_fp32_statistics():
    torch.manual_seed(0)
    w32 = nn.Parameter(torch.randn(6, 5))
    w16 = nn.Parameter(w32.detach().to(torch.bfloat16))
    g = torch.randn(6, 5)
    w32.grad, w16.grad = g.clone(), g.to(torch.bfloat16)
    opt32, opt16 = AGD([w32]), AGD([w16])
    assert opt16._dtype == torch.float32
    opt32.step(), opt16.step()
    # G from the bf16 gradient accumulated in fp32: within bf16's rounding of g, not of the sum.
    assert opt16.last_scalars["G"].dtype == torch.float32
    assert abs(opt16.last_scalars["G"].item() - opt32.last_scalars["G"].item()) < 1e-2 * opt32.last_scalars["G"].item()
