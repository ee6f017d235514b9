"""Hypergradient-tower equivalence cases: HyperSGD with momentum under a 3-level tower, HyperAdam under a
2-level one, on the bias/BN-affine versions of the shared models (METHODS.md 2.4).

One AR-SUM of the level-1 dot products per step under FSDP (1 number per level-1 value: 2 for SGD with
momentum, 3 for Adam; the levels above add none); none under DDP, whose gradients are already averaged.
`last_scalars` carries every level's value (lr, momentum or beta1/beta2, hyper_lr_1, ...), compared per step.

Step sizes: chosen so every learned value moves visibly within the 10 steps (lr by 10 % or more, the
SGD towers' learned hyper_lr_1 by 20 % or more, momentum and beta1 from step 3 on) while the run stays
bounded. The ResNet's hypergradients are far larger than the MLP's (random labels, BatchNorm over
4-sample micro-batches), so its towers use smaller steps: with the MLP's, the SGD tower's lr and momentum
diverge within 10 steps even in fp64 (with (1e-3, 1e-2) the learned hyper_lr_1 already changes sign at
step 3), and Adam's lr falls by half per step (0.01 to 7e-4 by step 5).
"""

import torch

from autoopt_dist.optim.hypergrad import HyperAdam, HyperSGD

from .cases import Case, mlp, resnet_basic


def sgd_tower(lr, hyper_lrs):
    def make(params, layout, model=None):
        return HyperSGD(params, lr=lr, momentum=0.5, hyper_lrs=hyper_lrs, layout=layout)

    return make


def adam_tower(hyper_lrs):
    def make(params, layout, model=None):
        return HyperAdam(params, lr=1e-2, hyper_lrs=hyper_lrs, layout=layout)

    return make


def mlp_full():
    return mlp(agd_compatible=False)


def resnet_full():
    return resnet_basic(agd_compatible=False)


SGD_MLP = sgd_tower(0.05, (1e-2, 1e-1))
SGD_RESNET = sgd_tower(0.02, (2e-4, 1e-5))
ADAM_MLP = adam_tower((1e-3,))
ADAM_RESNET = adam_tower((1e-4,))


def fsdp_only(engine, world):
    """One AR-SUM per step under FSDP; none under DDP (gradients already averaged) or on one rank."""
    return int(engine.startswith("fsdp") and world > 1)


# The ResNet runs in fp64 only. A tower feeds dot products of gradients back into the step size, and
# BatchNorm over 4-sample micro-batches (world size 3) amplifies rounding on top. Measured at world size 3
# after 10 steps in fp32: the SGD tower is 3.4e-3 from the oracle under DDP (4e-5 to 9e-5 under FSDP),
# Adam 1.1e-4 under DDP and 1.8e-2 under FSDP1 (worst tensors: BatchNorm biases; at world size 2 all stay
# below 7e-7). Under DDP the optimizer does the oracle's arithmetic on replicated tensors, so the only
# difference is the rounding of the gradient average: this is the model's conditioning, not a layout bug.
# In fp64 the same growth takes 1e-16 to at most 6e-13, well inside 1e-11, and any layout bug still shows.
# The MLP runs in both precisions.
CASES = [
    Case("hyper/sgd3/mlp/fp32", mlp_full, SGD_MLP, collectives=fsdp_only),
    Case("hyper/sgd3/mlp/fp64", mlp_full, SGD_MLP, torch.float64, collectives=fsdp_only),
    Case("hyper/sgd3/resnet_basic/fp64", resnet_full, SGD_RESNET, torch.float64, collectives=fsdp_only),
    Case("hyper/adam2/mlp/fp32", mlp_full, ADAM_MLP, collectives=fsdp_only),
    Case("hyper/adam2/mlp/fp64", mlp_full, ADAM_MLP, torch.float64, collectives=fsdp_only),
    Case("hyper/adam2/resnet_basic/fp64", resnet_full, ADAM_RESNET, torch.float64, collectives=fsdp_only),
]
