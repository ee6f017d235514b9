"""AGD equivalence cases (issue #2)."""

import torch

from autoopt_dist.optim import AGD, agd_init_

from .cases import Case, mlp, resnet_basic, resnet_bottleneck


def agd(params, layout, model=None):
    return AGD(params, gain=1.0, layout=layout)


# fp32 runs check the 1e-5 bound. The bottleneck net runs in fp64 only: its BatchNorm over 4-sample
# micro-batches at 1x1 resolution amplifies fp32 rounding about tenfold per step (measured: all four engines
# agree with each other yet sit 4e-2 from the oracle after 10 steps), so fp32 there tests the model's
# conditioning, not the optimizer; in fp64 any layout bug still shows at full size while rounding cannot
# (the same amplification takes fp64's 1e-16 to ~1e-11 by step 10, hence its 1e-9 bound).
CASES = [
    Case("agd/mlp/fp32", mlp, agd, init=agd_init_),
    Case("agd/resnet_basic/fp32", resnet_basic, agd, init=agd_init_),
    Case("agd/mlp/fp64", mlp, agd, torch.float64, init=agd_init_),
    Case("agd/resnet_basic/fp64", resnet_basic, agd, torch.float64, init=agd_init_),
    Case("agd/resnet_bottleneck/fp64", resnet_bottleneck, agd, torch.float64, init=agd_init_,
         tol_params=1e-9, tol_scalars=1e-9),
]
