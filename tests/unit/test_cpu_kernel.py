"""The compiled CPU kernel for AGD's statistics pass, against float64 sums; and AGD's per-tap statistics
with and without it. The kernel must build on this machine (CI has g++): a failed build FAILS here."""

import warnings

import pytest
import torch

from autoopt_dist.layout.views import LocalView
from autoopt_dist.layout.side_table import ParamInfo
from autoopt_dist.optim import cpu_kernel, taps


@pytest.mark.parametrize("rows,row_len,taps", [(1, 1, 1), (1, 4097, 1), (7, 9, 9), (513, 576, 9), (1000, 512, 1),
                                           (3, 4608, 9), (64, 147, 49), (200, 4095, 9)])
def test_kernel_matches_float64_per_tap_sums(rows, row_len, taps):
    x = torch.randn(rows, row_len, generator=torch.Generator().manual_seed(rows * row_len))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a failed build warns: that is a failure here, not a fallback
        got = cpu_kernel.sum_sq_taps(x, taps)
    assert got is not None, "the CPU kernel did not build; see the warning"
    want = (x.double() ** 2).reshape(-1, taps).sum(0)  # element j of a row is tap j mod taps
    assert got.dtype == torch.float32 and got.shape == (taps,)
    # float32 sums over chunks of at most 64 rows, float64 across chunks: a few float32 roundings at most
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=0)


def test_kernel_declines_what_it_does_not_serve():
    x = torch.randn(8, 6)
    assert cpu_kernel.sum_sq_taps(x.double(), 1) is None
    assert cpu_kernel.sum_sq_taps(x.t(), 1) is None  # not contiguous
    assert cpu_kernel.sum_sq_taps(x.half(), 1) is None
    with pytest.raises(RuntimeError, match="multiple of taps"):
        cpu_kernel.sum_sq_taps(x, 4)


@pytest.mark.parametrize("shape", [(33, 17, 3, 3), (5, 7), (8, 3, 7, 7), (1029, 2, 1, 1)])
@pytest.mark.parametrize("start,end", [(0, None), (4, -5), (11, 12)])
def test_tap_statistics_with_and_without_the_kernel_agree_with_float64(shape, start, end, monkeypatch):
    """Whole tensors (shaped views) and fragments starting and ending mid-row (flat views: head, body of
    whole rows reduced in long rows, tail), each against a float64 sum per tap."""
    info = ParamInfo.from_shape("w", torch.Size(shape))
    g = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    n = g.numel()
    end = n if end is None else (n + end if end < 0 else end)
    if (start, end) == (0, n):
        view, grad = LocalView(info, g, True, 0, n, 0, None), g
    else:
        grad = g.reshape(-1)[start:end].clone()
        view = LocalView(info, grad, False, 0, end - start, start, None)
    element_taps = torch.arange(start, end) % info.taps
    want = torch.zeros(info.taps, dtype=torch.float64).index_add_(0, element_taps, g.reshape(-1)[start:end].double() ** 2)
    for kernel in (True, False):
        monkeypatch.setattr(cpu_kernel, "_unavailable", not kernel)
        got = taps.tap_sum_of_squares(view, grad)
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=0)
