"""Architecture-aware scaling equivalence cases: init-then-shard gives world-size-independent trajectories.

`arch_init_` runs on the bare model with the same seed on every rank (the harness seeds before building), so
every rank draws the same full tensors, which the engine then shards; `arch_lr` is computed once from a fresh
bare model of the same spec (static: it depends on the architecture only). The optimizer is plain
`torch.optim.SGD`, which issues no collective: 0 per step on every engine (METHODS.md section 6).
"""

import torch

from autoopt_dist.scaling import arch_init_, arch_lr

from .cases import Case, mlp, resnet_basic

BASE_LR = 0.1  # eta_base of the one-hidden-layer net; any positive value exercises the transfer


def init_for(make_spec):
    """An `init` applying arch_init_ with an example batch of the spec's input shape, in the model's dtype."""
    input_shape = make_spec(agd_compatible=False).input_shape

    def init(model):
        dtype = next(model.parameters()).dtype
        arch_init_(model, torch.zeros(2, *input_shape, dtype=dtype))

    return init


def sgd_for(make_spec):
    """make_optimizer: SGD at the architecture-aware lr, computed once on a fresh bare model of the spec."""
    spec = make_spec(agd_compatible=False)
    lr = arch_lr(spec.model, torch.zeros(2, *spec.input_shape), BASE_LR)

    def make_optimizer(params, layout, model=None):
        return torch.optim.SGD(params, lr=lr)

    return make_optimizer


def standard_mlp():
    return mlp(agd_compatible=False)


def standard_resnet_basic():
    return resnet_basic(agd_compatible=False)


no_collectives = lambda engine, world: 0  # noqa: E731  static method; torch SGD is element-wise

# The ResNet's worst fp32 errors are BatchNorm biases: they start at 0 (arch_init_) and after 10 steps at the
# arch lr (0.1 * sqrt(27 / 10540) = 0.0051) their norm is small, so the ~1e-7 per-step rounding of the 3-way
# gradient average shows as up to 9.0e-6 relative at world size 3 (measured; 0 at world size 2, exact halving),
# a thin margin under the default 1e-5: the fp32 case allows 3e-5, and the fp64 case, where a layout or init
# bug would still show at full size, holds the default 1e-11.
CASES = [
    Case("scaling/mlp/fp32", standard_mlp, sgd_for(mlp), init=init_for(mlp), collectives=no_collectives),
    Case("scaling/resnet_basic/fp32", standard_resnet_basic, sgd_for(resnet_basic), init=init_for(resnet_basic),
         collectives=no_collectives, tol_params=3e-5),
    Case("scaling/resnet_basic/fp64", standard_resnet_basic, sgd_for(resnet_basic), torch.float64,
         init=init_for(resnet_basic), collectives=no_collectives),
]
