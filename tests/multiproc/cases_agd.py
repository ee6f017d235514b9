"""AGD equivalence cases (issue #2)."""

import torch

from autoopt_dist.optim import AGD, agd_init_

from .cases import ZERO_ENGINES, Case, mlp, resnet_basic, resnet_bottleneck


def agd(params, layout, model=None):
    return AGD(params, gain=1.0, layout=layout)


def agd_two_groups(params, layout, model=None):
    """Two parameter groups with different gains: under ZeRO-1/2 each group is its own flat partition and
    DeepSpeed calls step() once per group; G and eta must still span both."""
    params = list(params)
    half = len(params) // 2
    return AGD([{"params": params[:half]}, {"params": params[half:], "gain": 2.0}], layout=layout)


# fp32 runs check the 1e-5 bound. The bottleneck net runs in fp64 only: its BatchNorm over 4-sample
# micro-batches at 1x1 resolution amplifies fp32 rounding about tenfold per step (measured: all four engines
# agree with each other yet sit 4e-2 from the oracle after 10 steps), so fp32 there tests the model's
# conditioning, not the optimizer; in fp64 any layout bug still shows at full size while rounding cannot
# (the same amplification takes fp64's 1e-16 to ~1e-11 by step 10, hence its 1e-9 bound).
# ZeRO runs fp32 masters only. sub_group_size 40 splits even the MLP's 117+81+63+18 elements into several
# ZeRO-3 sub-groups (several step() calls per optimizer step), and parameters straddle ZeRO-1/2 partitions.
# FSDP1 with use_orig_params=False is left out: one FlatParameter cannot be split into parameter groups.
ZERO = {"engines": ("ddp", "fsdp1", "fsdp2") + ZERO_ENGINES, "extra": {"sub_group_size": 40}}

CASES = [
    Case("agd/zero-groups/mlp/fp32", mlp, agd_two_groups, init=agd_init_, **ZERO),
    Case("agd/zero-groups/resnet_basic/fp32", resnet_basic, agd_two_groups, init=agd_init_, **ZERO),
    Case("agd/mlp/fp32", mlp, agd, init=agd_init_),
    Case("agd/resnet_basic/fp32", resnet_basic, agd, init=agd_init_),
    Case("agd/mlp/fp64", mlp, agd, torch.float64, init=agd_init_),
    Case("agd/resnet_basic/fp64", resnet_basic, agd, torch.float64, init=agd_init_),
    Case("agd/resnet_bottleneck/fp64", resnet_bottleneck, agd, torch.float64, init=agd_init_,
         tol_params=1e-9, tol_scalars=1e-9),
]
