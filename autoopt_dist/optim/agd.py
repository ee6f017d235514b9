"""Automatic Gradient Descent (Bernstein et al. 2023, arXiv 2304.05187; reference jxbz/agd@1f8454d).

METHODS.md section 1. For weight k with taps tau (one for a dense weight, kx*ky for a conv), L weights:

    n_{k,tau} = ||grad W_k[:, :, tau]||_F
    s_k       = sqrt(d_out / d_in) / sqrt(kx * ky)
    G         = (1/L) sum_k s_k sum_tau n_{k,tau}
    eta       = log((1 + sqrt(1 + 4 G)) / 2)
    W_k[:, :, tau] -= gain * (eta / L) * s_k * grad W_k[:, :, tau] / n_{k,tau}

One step reduces one fp32 vector of per-(weight, tap) sums of squares (AR-SUM; none under DDP), then
takes roots (METHODS.md G2). Decisions, recorded here because they change numbers:
- AGD-R3: a tap whose gradient norm is 0 is not updated, by an explicit mask (the reference's
  `nan_to_num` maps an underflowed norm's infinite factor to the largest float, which explodes).
- AGD-D3: eta and G stay on the device; `last_scalars` holds them for a logger, so a step makes no
  host sync (the reference's `math.sqrt` makes one per step).
- AGD-R2: the init scale is sqrt(fan_out / fan_in) as in the algorithm box and the code; the paper's
  text says the inverse, a typo.
- L counts original weight tensors over all parameter groups, from the side table: never local or
  flattened tensors (METHODS.md 1.4, failure 2).
"""

from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import nn

from ..layout import Layout, LocalView, ParamInfo, Role
from .base import ShardedOptimizer
from .taps import add_scaled_by_tap_, stat_dtype, tap_sum_of_squares


def agd_scale(info: ParamInfo) -> float:
    """s_k = sqrt(d_out / d_in) / sqrt(kx * ky): the weight's target spectral scale per tap."""
    return math.sqrt(info.fan_out / info.fan_in) / math.sqrt(info.taps)


def agd_scalars(q: torch.Tensor, s: torch.Tensor, num_weights: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """From reduced per-tap sums of squares `q` and per-tap scales `s` (both (T,), fp32): G, eta and the
    per-tap update factor eta/L * s / n, zero where n = 0. Arithmetic on reduced values only, so it is
    identical on every rank."""
    n = q.sqrt()
    G = (s * n).sum() / num_weights
    eta = torch.log((1 + torch.sqrt(1 + 4 * G)) / 2)
    factor = torch.where(n > 0, eta / num_weights * s / n.clamp_min(torch.finfo(n.dtype).tiny), torch.zeros_like(n))
    return G, eta, factor


class AGD(ShardedOptimizer):
    """Automatic Gradient Descent: no learning rate, no state.

    Args:
        params: the weights (`model.named_parameters()` preferred). Every one must be a matrix or a
            conv kernel: AGD has no rule for biases or norm affine parameters.
        gain: multiplies every update; 1 in every experiment of the paper.
        layout: `Layout.from_model(model)` under FSDP1; optional otherwise.

    Raises:
        ValueError: a parameter is 1-D (bias, norm affine), or gain is not positive.

    Example:
        >>> model = MLP(64, 32, 3, 10)          # autoopt_dist.models: bias-free
        >>> agd_init_(model)                     # before wrapping it in DDP / FSDP
        >>> opt = AGD(model.named_parameters())
        >>> model(x).square().mean().backward(); opt.step()
        >>> opt.last_scalars["eta"]              # a device tensor; read it when you log
    """

    def __init__(self, params: Iterable, gain: float = 1.0, *, layout: Layout | None = None):
        if not gain > 0:
            raise ValueError(f"AGD gain must be > 0, got {gain}")
        super().__init__(params, {"gain": gain}, layout)
        self.last_scalars: dict[str, torch.Tensor] = {}

    def check_views(self, views: list[LocalView]) -> None:
        for view in views:
            if view.info.role is Role.VECTOR:
                raise ValueError(
                    f"AGD cannot step parameter {view.info.name!r} of shape {list(view.info.shape)}: AGD updates "
                    "matrices and conv kernels only, not biases or norm affine parameters. Use an AGD-compatible "
                    "model (bias=False, BatchNorm affine=False; autoopt_dist.models with agd_compatible=True), "
                    "or put such parameters in another optimizer"
                )
        # Per original weight: its slot in the statistic vector and its scale, identical on every rank.
        originals: dict[str, ParamInfo] = {}
        for view in views:
            originals.setdefault(view.info.name, view.info)
        offsets, start = {}, 0
        for name, info in originals.items():
            offsets[name] = start
            start += info.taps
        self._num_weights = len(originals)
        self._dtype = stat_dtype(views)
        self._offsets = offsets
        self._scale = torch.cat([torch.full((i.taps,), agd_scale(i), dtype=self._dtype) for i in originals.values()])
        partial = {v.info.name: v.sharded for v in views}
        self._partial = torch.cat([torch.full((i.taps,), partial[n], dtype=torch.bool) for n, i in originals.items()])
        self._index = torch.cat([torch.arange(offsets[v.info.name], offsets[v.info.name] + v.info.taps) for v in views])
        self._on_device: dict[torch.device, tuple[torch.Tensor, ...]] = {}

    def _constants(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(index, partial mask, scale) on `device`, copied there once rather than every step."""
        if device not in self._on_device:
            self._on_device[device] = tuple(t.to(device) for t in (self._index, self._partial, self._scale))
        return self._on_device[device]

    @torch.no_grad()
    def step(self, closure=None):
        loss = self._closure_loss(closure)
        device = self.views[0].param.device
        index, partial, scale = self._constants(device)
        local = torch.cat([tap_sum_of_squares(v, v.grad(), self._dtype) for v in self.views])
        q = torch.zeros(scale.numel(), dtype=self._dtype, device=device).index_add_(0, index, local)
        q = self.reducer.sum({"q": (q, partial)})["q"]
        G, eta, factor = agd_scalars(q, scale, self._num_weights)
        # Update in the reverse order of the statistics pass: the gradients it read last are the ones
        # still in the last-level cache (measured ~10% off a ResNet-18 step on CPU, benchmarks/README.md).
        for group, views in reversed(list(zip(self.param_groups, self.group_views))):
            group_factor = factor * -group["gain"]
            for view in reversed(views):
                grad = view.grad()
                if grad is None:
                    continue
                offset = self._offsets[view.info.name]
                add_scaled_by_tap_(view, view.data(), grad, group_factor[offset : offset + view.info.taps])
        self.last_scalars = {"eta": eta, "G": G}
        return loss


@torch.no_grad()
def agd_init_(model: nn.Module) -> nn.Module:
    """AGD's initialisation, in place, on a bare (unwrapped) model: every weight, and for a conv every
    tap slice W[:, :, a, b], uniform semi-orthogonal, then scaled by s_k (see `agd_scale`).

    Call it before wrapping, with the same seed on every rank, so every rank draws the full matrices
    identically and the engine then shards them: orthogonal blocks drawn per shard would not stack
    into an orthogonal matrix (METHODS.md 1.4, failure 4). Draws in the reference's order (parameters
    in registration order, taps row-major), so the reference seed gives the reference weights.

    Raises:
        ValueError: a parameter is 1-D, or the model is already sharded.
    """
    for name, param in model.named_parameters():
        if getattr(param, "_fsdp_flattened", False) or hasattr(param, "ds_id") or type(param).__name__ == "DTensor":
            raise ValueError(f"agd_init_: parameter {name!r} is already sharded; call agd_init_ before wrapping")
        info = ParamInfo.from_shape(name, param.shape)
        if info.role is Role.VECTOR:
            raise ValueError(
                f"agd_init_: parameter {name!r} has shape {list(param.shape)}; AGD initialises matrices and conv "
                "kernels only. Build the model with agd_compatible=True (no biases, BatchNorm affine=False)"
            )
        if info.role is Role.MATRIX:
            nn.init.orthogonal_(param)
        else:
            kernel = param.view(*param.shape[:2], -1)
            for tap in range(info.taps):
                nn.init.orthogonal_(kernel[:, :, tap])
        param.mul_(agd_scale(info))
    return model
