"""Per-tap statistics and updates on a local view, whether it holds whole rows or any run of elements.

A conv weight (d_out, d_in, kx, ky) is kx*ky independent (d_out, d_in) matrices, one per tap; in the
row-major flattening element j belongs to tap `j mod taps`. A shaped view (whole rows) reduces over its
first two dims. A flat view is split into a head (the end of a row it starts inside), a body of whole
rows, and a tail (the start of the row it ends inside); all three are views, so nothing is copied.
"""

from __future__ import annotations

import torch

from ..layout import LocalView


def _flat_pieces(view: LocalView) -> tuple[int, int, int, int]:
    """(phase, head, body, tail): the tap of the first element, and the lengths of the three pieces."""
    taps, n = view.info.taps, view.numel
    phase = view.orig_start % taps
    head = min((taps - phase) % taps, n)
    body = (n - head) // taps * taps
    return phase, head, body, n - head - body


def stat_dtype(views: list[LocalView]) -> torch.dtype:
    """fp32, or wider if a parameter is wider: statistics never accumulate below fp32 (METHODS.md G5)."""
    dtype = torch.float32
    for view in views:
        dtype = torch.promote_types(dtype, view.param.dtype)
    return dtype


def tap_sum_of_squares(view: LocalView, grad: torch.Tensor | None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Sum of g^2 over this view's elements, per tap of the original parameter, in `dtype`: shape (taps,)."""
    taps = view.info.taps
    if grad is None or view.numel == 0:
        # Identity for SUM: empty shards and absent gradients still take part in the collective.
        return torch.zeros(taps, dtype=dtype, device=view.param.device)
    if view.shaped:
        dims = (0, 1) if grad.dim() > 2 else tuple(range(grad.dim()))
        return torch.linalg.vector_norm(grad, dim=dims, dtype=dtype).square().reshape(taps)
    phase, head, body, tail = _flat_pieces(view)
    out = torch.zeros(taps, dtype=dtype, device=grad.device)
    g = grad.to(dtype)
    if head:
        out[phase : phase + head] += g[:head].square()
    if body:
        out += g[head : head + body].view(-1, taps).square().sum(0)
    if tail:
        out[:tail] += g[head + body :].square()
    return out


def add_scaled_by_tap_(view: LocalView, data: torch.Tensor, grad: torch.Tensor, factor: torch.Tensor) -> None:
    """data += factor[tap] * grad, element-wise by tap, in place. `factor` has shape (taps,)."""
    if view.numel == 0:
        return
    factor = factor.to(data.dtype)
    if view.shaped:
        shape = (1, 1, *view.info.shape[2:]) if grad.dim() > 2 else (1,) * grad.dim()
        data.addcmul_(grad, factor.view(shape))
        return
    phase, head, body, tail = _flat_pieces(view)
    taps = view.info.taps
    if head:
        data[:head].addcmul_(grad[:head], factor[phase : phase + head])
    if body:
        data[head : head + body].view(-1, taps).addcmul_(grad[head : head + body].view(-1, taps), factor)
    if tail:
        data[head + body :].addcmul_(grad[head + body :], factor[:tail])
