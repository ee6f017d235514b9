"""A compiled CPU kernel for AGD's statistics pass: per-tap sums of squares of a gradient, in one
streaming pass.

ATen has no reduction that does this at streaming speed on a CPU: `vector_norm(x, dim=0)` is an outer
reduction (4-5x slower than a dot product here), and the fastest stock construction, `addcmul_` into a
cache-resident block of rows, reaches about 60 % of `torch.dot`'s speed (docs/benchmarks.md). This
kernel keeps row-sized accumulators per thread (float32 over chunks of 64 rows, float64 across chunks),
which stay in L1/L2 while the matrix streams through once, and runs at `torch.dot`'s speed.

It is built on first use with `torch.utils.cpp_extension` (g++; about 20-40 s once, then loaded from
the torch extensions cache, as DeepSpeed builds its CPU ops). Without a compiler, after a failed build,
or with AUTOOPT_CPU_KERNEL=0, callers get None and use the ATen path; both sum short runs of rows in
float32 and agree to float32 rounding (tests/unit/test_cpu_kernel.py checks both against float64).
"""

from __future__ import annotations

import os
import warnings

import torch

_SOURCE = r"""
#include <torch/extension.h>
#include <algorithm>
#include <vector>

// out[k] = sum of x[r, j]^2 over all r and all j = k mod taps, for a contiguous float32 matrix x (rows,
// row_len) whose row_len is a multiple of taps: the per-tap sums of squares of a conv kernel's rows
// (taps = kx*ky) or of a matrix (taps = 1). Rows are summed in float32
// in chunks of kChunk (vectorised, cache-resident), chunks in float64: a column of many rows summed one by
// one in float32 would lose digits, and float64 throughout halves the vector width.
constexpr int64_t kChunk = 64;

torch::Tensor sum_sq_taps(torch::Tensor x, int64_t taps) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous() && x.scalar_type() == torch::kFloat32 && x.device().is_cpu(),
              "sum_sq_taps: a contiguous float32 CPU matrix");
  TORCH_CHECK(taps >= 1 && x.size(1) % taps == 0, "sum_sq_taps: row length must be a multiple of taps");
  const int64_t rows = x.size(0), row_len = x.size(1);
  const float* data = x.data_ptr<float>();
  const int threads = at::get_num_threads();
  std::vector<std::vector<double>> partial(threads, std::vector<double>(row_len, 0.0));
  at::parallel_for(0, rows, 1, [&](int64_t first, int64_t last) {
    double* total = partial[at::get_thread_num()].data();
    std::vector<float> chunk(row_len);
    float* acc = chunk.data();
    for (int64_t r0 = first; r0 < last; r0 += kChunk) {
      std::fill(chunk.begin(), chunk.end(), 0.f);
      for (int64_t r = r0; r < std::min(last, r0 + kChunk); ++r) {
        const float* row = data + r * row_len;
#pragma omp simd
        for (int64_t j = 0; j < row_len; ++j) acc[j] += row[j] * row[j];
      }
      for (int64_t j = 0; j < row_len; ++j) total[j] += acc[j];
    }
  });
  std::vector<double> total(taps, 0.0);
  for (const auto& acc : partial)
    for (int64_t j = 0; j < row_len; ++j) total[j % taps] += acc[j];
  auto out = torch::empty({taps}, x.options());
  float* o = out.data_ptr<float>();
  for (int64_t k = 0; k < taps; ++k) o[k] = static_cast<float>(total[k]);
  return out;
}
"""

_module = None
_unavailable = os.environ.get("AUTOOPT_CPU_KERNEL", "1") == "0"


def _load():
    global _module, _unavailable
    try:
        from torch.utils.cpp_extension import load_inline

        _module = load_inline("autoopt_sum_sq_taps", cpp_sources=_SOURCE, functions=["sum_sq_taps"],
                              extra_cflags=["-O3", "-march=native", "-fopenmp"], verbose=False)
    except Exception as e:  # no compiler, no headers, a sandbox without write access to the cache, ...
        _unavailable = True
        warnings.warn(f"autoopt_dist: the CPU statistics kernel could not be built ({type(e).__name__}: "
                      f"{str(e).splitlines()[0] if str(e) else ''}); using the slower ATen path. "
                      "Set AUTOOPT_CPU_KERNEL=0 to skip the build", stacklevel=3)


def sum_sq_taps(x: torch.Tensor, taps: int) -> torch.Tensor | None:
    """Per-tap sums of squares, shape (taps,), of a contiguous float32 CPU matrix whose rows hold whole
    runs of taps (element j of a row belongs to tap j mod taps); None where the kernel cannot serve."""
    if _unavailable or x.dtype != torch.float32 or x.device.type != "cpu" or not x.is_contiguous() or x.dim() != 2:
        return None
    if _module is None:
        _load()
        if _module is None:
            return None
    return _module.sum_sq_taps(x, taps)
