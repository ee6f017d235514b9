"""ECCO-DNN equivalence cases: both chains (EC-D2), activation limiting over the global batch.

Collectives per optimizer step at world size > 1 (none at world size 1; T tensors, L limited layers):
batched: FSDP 1 (MAX), + 2 with limiting (SUM assembling the limited layers' full W, b, u; MIN of
da/a); DDP 0, or 1 with limiting (the MIN: da/a depends on each rank's own samples). faithful: FSDP
T + 2L (one MAX per tensor, in chain order, + SUM and MIN per limited layer); DDP L.

ECCO's step 0 is plain gradient descent with alpha0 and issues nothing, while the harness expects one
count for every step. So `warm_step` takes step 0 on the first batch outside the count (asserting that it
issued no collective), on the oracle and on every engine alike, and the 10 counted steps follow.

The MLP losses are scaled by 50 so that Z^-1 > 1 on a good share of elements and limiting gives
0 < delta < 1: at scale 1 ECCO is SGD with lr 0.5 here and neither chain nor limit would be exercised.
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from autoopt_dist.layout import clean_name
from autoopt_dist.optim.ecco import ECCO

from .cases import Case, default_engine_step, default_oracle_step, mlp, resnet_basic

LOSS_SCALE = 50.0


def scaled_mlp():
    spec = mlp(agd_compatible=False)  # biases, plain ReLU; model.layers are the Linears
    loss = spec.loss_fn
    return replace(spec, loss_fn=lambda out, y: loss(out, y) * LOSS_SCALE)


def hidden_linears(model: nn.Module) -> list[nn.Module]:
    """The MLP's Linear layers that feed a ReLU (all but the last), found in a bare or wrapped model."""
    layers = {clean_name(n): m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    names = sorted((n for n in layers if n.startswith("layers.")), key=lambda n: int(n.split(".")[1]))
    return [layers[n] for n in names[:-1]]


def relu_batchnorms(model: nn.Module) -> list[nn.Module]:
    """The ResNet's BatchNorms followed by a plain ReLU: the stem's bn1 and each block's bn1."""
    return [m for n, m in model.named_modules() if clean_name(n).endswith("bn1")]


def ecco(mode, find_limited=None):
    def make(params, layout, model):
        return ECCO(params, mode=mode, limit=find_limited(model) if find_limited else None, layout=layout)

    return make


def _step0_outside_the_count(opt, forward_backward):
    """ECCO's step 0 on the first batch, through the class's `step` (the worker counts the instance's)."""
    forward_backward()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        type(opt).step(opt)
    issued = sum(1 for e in prof.events() if e.name.startswith("gloo:"))
    assert issued == 0, f"ECCO step 0 issued {issued} collectives; it must issue none"


def warm_oracle_step(model, opt, micro_batches, loss_fn):
    if not opt.state:

        def accumulate():
            opt.zero_grad()
            for x, y in micro_batches:
                (loss_fn(model(x), y) / len(micro_batches)).backward()

        _step0_outside_the_count(opt, accumulate)
    default_oracle_step(model, opt, micro_batches, loss_fn)


def warm_engine_step(model, opt, x, y, loss_fn):
    if not opt.state:

        def local():
            opt.zero_grad()
            loss_fn(model(x), y).backward()

        _step0_outside_the_count(opt, local)
    default_engine_step(model, opt, x, y, loss_fn)


def counts(fsdp: int, ddp: int):
    return lambda engine, world: 0 if world == 1 else (fsdp if engine.startswith("fsdp") else ddp)


MLP_TENSORS, MLP_LIMITED = 8, 3  # MLP(13, 9, 4, 2) with biases; the 3 hidden Linears limited
ECCOCase = partial(Case, oracle_step=warm_oracle_step, engine_step=warm_engine_step)

# The ResNet runs in fp64 only, 5 steps: SGD-sized steps (dt at the 0.5 cap) through BatchNorm over 4-sample
# micro-batches at 1x1 resolution amplify rounding ~10x per step. Measured at world size 3 with no engine at
# all, only the oracle's micro-batch accumulation order changed: fp32 parameters differ by 1e-4 after 3 steps
# and by 1.8 after 10; fp64 by 1e-11 after 5 and 1e-8 after 10. Any layout bug shows at full size after one
# step, hence fp64, 5 steps, 1e-9. With BN-type limiting delta = 1/|min(da/a)| is set by the pre-activation
# nearest 0, so its relative rounding error is ~eps/|a_min|: measured 3e-8 on delta_min at step 5 (world 3),
# 7e-10 on the parameters it scales; hence 1e-7 and 1e-8 there.
RESNET = dict(dtype=torch.float64, steps=5, tol_params=1e-9, tol_scalars=1e-9)
RESNET_BN_LIMIT = {**RESNET, "tol_params": 1e-8, "tol_scalars": 1e-7}

CASES = [
    ECCOCase("ecco/batched_limit/mlp/fp32", scaled_mlp, ecco("batched", hidden_linears), collectives=counts(3, 1)),
    ECCOCase("ecco/batched_limit/mlp/fp64", scaled_mlp, ecco("batched", hidden_linears), torch.float64,
             collectives=counts(3, 1)),
    ECCOCase("ecco/faithful_limit/mlp/fp64", scaled_mlp, ecco("faithful", hidden_linears), torch.float64,
             collectives=counts(MLP_TENSORS + 2 * MLP_LIMITED, MLP_LIMITED)),
    ECCOCase("ecco/batched/resnet_basic/fp64", partial(resnet_basic, False), ecco("batched"),
             collectives=counts(1, 0), **RESNET),
    ECCOCase("ecco/batched_bn_limit/resnet_basic/fp64", partial(resnet_basic, False), ecco("batched", relu_batchnorms),
             collectives=counts(3, 1), **RESNET_BN_LIMIT),
]
