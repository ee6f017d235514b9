"""Every method under DeepSpeed ZeRO-1/2/3 (issue #4), beside the PyTorch engines, against world size 1.

ZeRO keeps fp32 masters, so these cases are fp32 (tolerances as test_equivalence.py). Two parameter
groups make ZeRO-1/2 call step() once per group with a flat partition each, parameters straddle rank
partitions (odd widths), and sub_group_size=40 splits the model into several ZeRO-3 sub-groups: the
step-boundary handling of layout/zero.py is exercised for every method. AGD's ZeRO cases sit in
cases_agd.py; architecture-aware scaling adds no optimizer of its own (torch's SGD is the client).
"""

import torch
import torch.nn.functional as F

from autoopt_dist.optim import ECCO, HyperAdam, HyperSGD

from .cases import ZERO_ENGINES, Case, mlp
from .cases_slimtik import _targets, oracle_step as slimtik_oracle_step, regression

ZERO = dict(engines=("ddp", "fsdp2") + ZERO_ENGINES, extra={"sub_group_size": 40})


def sharded(engine, world):
    return int(engine.startswith(("fsdp", "zero")) and world > 1)


def two_groups(params):
    params = list(params)
    half = len(params) // 2
    return [{"params": params[:half]}, {"params": params[half:]}]


def hyper_sgd(params, layout, model=None):
    return HyperSGD(two_groups(params), lr=0.05, momentum=0.5, hyper_lrs=(1e-2, 1e-1), layout=layout)


def hyper_adam(params, layout, model=None):
    return HyperAdam(two_groups(params), lr=1e-2, hyper_lrs=(1e-3,), layout=layout)


def hidden_linears(model):
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    return linears[:-1]


def ecco_limited(params, layout, model):
    return ECCO(two_groups(params), eta=0.3, mode="batched", limit=hidden_linears(model), layout=layout)


def ecco_plain(params, layout, model=None):
    return ECCO(two_groups(params), eta=0.3, mode="batched", layout=layout)


def ecco_counts(per_step):
    """ECCO's step 0 is a plain step with alpha0: no statistics, no collective."""
    return lambda engine, world: [0] + [per_step(engine, world)] * 9


def limited_counts(engine, world):
    if world == 1:
        return 0
    return 3 if engine.startswith(("fsdp", "zero")) else 1  # MAX, full-tensor SUM, MIN; DDP: the MIN only


def mlp_full():
    return mlp(agd_compatible=False)


# slimTrain under ZeRO: the extractor is stepped by torch's SGD as DeepSpeed's client optimizer; the head
# (buffers only, outside the partitioning) solves from the global batch with its own one AR-SUM.
def slimtik_sgd(named_params, layout, model):
    opt = torch.optim.SGD(two_groups([p for _, p in named_params]), lr=0.1)
    opt._slimtik_head = model.module.head if hasattr(model, "module") else model.head
    opt.last_scalars = {}
    return opt


def _head_scalars(opt):
    head = opt._slimtik_head
    W = head.W
    opt.last_scalars = {**head.last_scalars, **{f"W[{i},{j}]": W[i, j] for i in range(W.shape[0]) for j in range(W.shape[1])}}


def slimtik_oracle(model, opt, micro_batches, loss_fn):
    model.head.data_group = None  # one process holds the whole global batch
    slimtik_oracle_step(model, opt, micro_batches, loss_fn)
    _head_scalars(opt)


def slimtik_engine(model, opt, x, y, loss_fn):
    c = _targets(y, x.dtype)
    if hasattr(model, "zero_optimization_stage"):
        model.backward(F.mse_loss(model(x, targets=c), c))
        model.step()
    else:
        opt.zero_grad()
        F.mse_loss(model(x, targets=c), c).backward()
        opt.step()
    _head_scalars(opt)


CASES = [
    Case("zero/hyper_sgd3/mlp/fp32", mlp_full, hyper_sgd, collectives=sharded, **ZERO),
    Case("zero/hyper_adam2/mlp/fp32", mlp_full, hyper_adam, collectives=sharded, **ZERO),
    Case("zero/ecco_limit/mlp/fp32", mlp_full, ecco_limited, collectives=ecco_counts(limited_counts), **ZERO),
    Case("zero/ecco/mlp/fp32", mlp_full, ecco_plain, collectives=ecco_counts(sharded), **ZERO),
    Case("zero/slimtik/mlp/fp32", regression, slimtik_sgd, oracle_step=slimtik_oracle, engine_step=slimtik_engine,
         collectives=lambda engine, world: 0, engines=("ddp",) + ZERO_ENGINES, extra={"sub_group_size": 40}),
]
