"""Per-tap statistics and updates on a local view, whether it holds whole rows or any run of elements.

A conv weight (d_out, d_in, kx, ky) is kx*ky independent (d_out, d_in) matrices, one per tap; in the
row-major flattening element j belongs to tap `j mod taps`. A shaped view (whole rows) reduces over its
first two dims. A flat view is split into a head (the end of a row it starts inside), a body of whole
rows, and a tail (the start of the row it ends inside); all three are views, so nothing is copied.

Both passes are memory-bound, so they are written to stream each gradient once at full width
(benchmarks/README.md): sums of squares over rows accumulate into a cache-sized buffer on CPU, and the
update multiplies by a factor laid out like one whole row, never by a (kx, ky)-shaped broadcast.
"""

from __future__ import annotations

import math

import torch

from ..layout import LocalView
from . import cpu_kernel

# Elements of the CPU row-block accumulator (1 MiB in fp32): small enough to stay in a core's L2 cache.
_BLOCK = 1 << 18


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
        if grad.dim() < 2:  # a vector: one tap, all elements
            return torch.linalg.vector_norm(grad, dtype=dtype).square().reshape(1)
        # Sum over rows per element of a row (d_in, kx, ky), then over d_in: per tap.
        rows = grad.view(grad.shape[0], -1) if grad.is_contiguous() else grad
        return _tap_sums_over_rows(rows, taps, dtype)
    phase, head, body, tail = _flat_pieces(view)
    out = torch.zeros(taps, dtype=dtype, device=grad.device)
    if head:
        out[phase : phase + head] += grad[:head].to(dtype).square()
    if body:
        out += _per_tap_sum_of_squares(grad[head : head + body], taps, dtype)
    if tail:
        out[:tail] += grad[head + body :].to(dtype).square()
    return out


def _per_tap_sum_of_squares(flat: torch.Tensor, taps: int, dtype: torch.dtype) -> torch.Tensor:
    """Sum of squares per tap of a run of whole rows (1-D, a multiple of `taps` long): reduced as rows of
    about 4096 elements (a multiple of taps), whose length keeps the row-wise reductions vectorised,
    then the rest (fewer than that many elements) as rows of `taps`."""
    per_row = max(1, 4096 // taps) * taps
    full = flat.numel() // per_row * per_row
    out = torch.zeros(taps, dtype=dtype, device=flat.device)
    for part in (flat[:full].view(-1, per_row), flat[full:].view(-1, taps)):
        if part.numel():
            out += _tap_sums_over_rows(part, taps, dtype)
    return out


def _tap_sums_over_rows(rows: torch.Tensor, taps: int, dtype: torch.dtype) -> torch.Tensor:
    """Per-tap sums of squares of whole rows (element j of a row is tap j mod taps): the compiled CPU
    kernel where it serves (one streaming pass at dot-product speed, cpu_kernel.py), else ATen."""
    fused = cpu_kernel.sum_sq_taps(rows, taps) if dtype == torch.float32 else None
    return fused if fused is not None else _sum_of_squares_over_rows(rows, dtype).reshape(-1, taps).sum(0)


def _sum_of_squares_over_rows(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """sum_i x[i]^2 over the first dim, in `dtype`: a tensor shaped like one row `x[0]`.

    On CPU, ATen's reductions over a leading (outer) dim run well below memory bandwidth, and
    `x.square().sum(0)` also writes and rereads a temporary as large as x. So blocks of rows are
    squared and added into an accumulator of a few rows, which stays in cache while x streams through
    once; the accumulator's rows are summed at the end (the compiled kernel in cpu_kernel.py, where it
    is available, does this in one fused loop and is tried first by the callers). Other devices reduce
    directly.
    """
    if x.device.type != "cpu":
        return torch.linalg.vector_norm(x, dim=0, dtype=dtype).square()
    rows = x.shape[0]
    block = max(1, min(rows, _BLOCK // max(1, math.prod(x.shape[1:]))))
    acc = x[:block].to(dtype).square()
    for start in range(block, rows, block):
        rows_in = x[start : start + block].to(dtype)
        acc[: rows_in.shape[0]].addcmul_(rows_in, rows_in)
    return acc.sum(0)


def add_scaled_by_tap_(view: LocalView, data: torch.Tensor, grad: torch.Tensor, factor: torch.Tensor) -> None:
    """data += factor[tap] * grad, element-wise by tap, in place. `factor` has shape (taps,)."""
    if view.numel == 0:
        return
    factor = factor.to(data.dtype)
    if view.shaped:
        if grad.dim() < 2:
            data.addcmul_(grad, factor.view((1,) * grad.dim()))
            return
        # The factor of every element of one row (d_in, kx, ky), tap-minor like the row itself: the
        # broadcast then runs over rows only, with a contiguous inner loop of d_in * taps elements
        # instead of kx * ky (a (1, 1, kx, ky) factor makes that loop a few elements long).
        row = factor.expand(view.info.shape[1], view.info.taps).reshape(view.info.shape[1:]).contiguous()
        data.addcmul_(grad, row)
        return
    phase, head, body, tail = _flat_pieces(view)
    taps = view.info.taps
    if head:
        data[:head].addcmul_(grad[:head], factor[phase : phase + head])
    if body:
        data[head : head + body].view(-1, taps).addcmul_(grad[head : head + body].view(-1, taps), factor)
    if tail:
        data[head + body :].addcmul_(grad[head + body :], factor[:tail])
