"""slimTrain equivalence cases: an MLP feature extractor inside each engine, a SlimTikHead on top whose
W is solved on the GLOBAL batch (METHODS.md 4.4), the extractor stepped by torch's SGD or Adam.

The model is `ExtractorWithHead`: the engine wraps the whole module, but the head owns buffers only
(W, Gram window, Lambda), so DDP and FSDP manage the extractor's parameters alone and leave W
replicated, never sharded (METHODS.md 4.4, failure 3). Each rank's forward solves W from its 4-, 6- or
12-sample share through one AR-SUM of the packed statistics; the oracle (world size 1, same process)
solves once on the concatenated global batch, then accumulates the micro-batch losses.

What is compared, and how:
- The extractor's parameters: by the worker, as for every method (named_parameters via full_state).
- W, lambda, Lambda, min sGCV: W lives in buffers, which the worker does not compare, so every entry
  of W goes into `last_scalars` ("W[i,j]"): compared with the oracle every step, and bitwise across
  ranks by the worker's replicated-scalar check (SL-D3).
- Collectives: the worker counts gloo events inside `optimizer.step()` only, and the solve happens in
  the forward pass (VarPro: W_k before the loss). So `step()` here is torch's (expected: 0 collectives
  on every engine), and the solve is counted separately with the same profiler rule; the scalar
  "solve_collectives_ok" is 1 when the solve issued exactly one collective at world size > 1 (none
  alone, none in the oracle), else 0, which the per-step scalar comparison turns into a failure.

Tolerances: the defaults. n = 12 samples >= f = 6 columns, so the window has full rank from step 1 and
sGCV's choice is well separated (SL-R2 cannot strike).
"""

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.profiler import ProfilerActivity, profile

from autoopt_dist.models import MLP
from autoopt_dist.optim.slimtik import SlimTikHead

from .cases import Case, ModelSpec

NUM_OUTPUTS = 3


class ExtractorWithHead(nn.Module):
    """tanh(MLP(x)) features -> SlimTikHead. `forward(x, targets=...)` solves W, then predicts."""

    def __init__(self, extractor: nn.Module, head: SlimTikHead):
        super().__init__()
        self.extractor, self.head = extractor, head

    def features(self, x):
        return torch.tanh(self.extractor(x))

    def forward(self, x, targets=None):
        return self.head(self.features(x), targets=targets)


def _model(loss_fn):
    # Odd widths (13 -> 9 -> 9 -> 5 features, biases): FSDP shards end mid-row and, over 3 ranks, unevenly.
    extractor = MLP(13, 9, 3, 5, agd_compatible=False)
    head = SlimTikHead(5, NUM_OUTPUTS, memory_depth=2, sum_lambda=1e-3)  # window rolls over in 10 steps
    return ModelSpec(ExtractorWithHead(extractor, head), (13,), loss_fn, num_outputs=NUM_OUTPUTS)


def regression():
    return _model(nn.MSELoss())


def onehot_classifier():
    # The worker draws class labels for a cross-entropy spec; the steps below fit one-hot targets by MSE.
    return _model(nn.CrossEntropyLoss())


def _targets(y, dtype):
    return y if y.is_floating_point() else F.one_hot(y, NUM_OUTPUTS).to(dtype)


def oracle_step(model, opt, micro_batches, loss_fn):
    """World size 1: one solve on the whole global batch, then the micro-batch losses averaged."""
    opt.zero_grad()
    features = [model.features(x) for x, _ in micro_batches]
    targets = [_targets(y, z.dtype) for z, (_, y) in zip(features, micro_batches)]
    model.head.solve_(torch.cat(features).detach(), torch.cat(targets))
    for z, c in zip(features, targets):
        (F.mse_loss(model.head(z), c) / len(features)).backward()
    opt.step()


def engine_step(model, opt, x, y, loss_fn):
    """One rank: the forward solves W from this rank's share (one AR-SUM), then predicts with it."""
    opt.zero_grad()
    c = _targets(y, x.dtype)
    F.mse_loss(model(x, targets=c), c).backward()
    opt.step()


class ExtractorStepAndHeadScalars:
    """torch's optimizer on the extractor, plus the head's replicated values as `last_scalars`."""

    def __init__(self, inner: torch.optim.Optimizer, model: nn.Module, oracle: bool):
        self.inner = inner
        self.head = next(m for m in model.modules() if isinstance(m, SlimTikHead))
        if oracle:
            self.head.data_group = None  # this process holds the whole global batch: nothing to sum
        distributed = not oracle and dist.is_initialized() and dist.get_world_size() > 1
        self.expected_solve_collectives = [1] if distributed else [0]
        self.solve_collectives: list[int] = []
        self.last_scalars: dict[str, torch.Tensor] = {}
        solve = self.head.solve_

        def counted_solve(*args, **kwargs):
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                solve(*args, **kwargs)
            self.solve_collectives.append(sum(1 for e in prof.events() if e.name.startswith("gloo:")))

        self.head.solve_ = counted_solve

    def zero_grad(self, set_to_none: bool = True):
        self.inner.zero_grad(set_to_none)

    def step(self, closure=None):
        loss = self.inner.step(closure)
        ok = self.solve_collectives == self.expected_solve_collectives
        self.solve_collectives = []
        W = self.head.W
        entries = {f"W[{i},{j}]": W[i, j] for i in range(W.shape[0]) for j in range(W.shape[1])}
        self.last_scalars = {**self.head.last_scalars, **entries, "solve_collectives_ok": torch.tensor(float(ok))}
        return loss


def sgd(named_params, layout, model):
    return ExtractorStepAndHeadScalars(torch.optim.SGD([p for _, p in named_params], lr=0.1), model, layout is None)


def adam(named_params, layout, model):
    return ExtractorStepAndHeadScalars(torch.optim.Adam([p for _, p in named_params], lr=1e-3), model, layout is None)


def _case(name, make_model, make_optimizer, dtype):
    return Case(name, make_model, make_optimizer, dtype, oracle_step=oracle_step, engine_step=engine_step,
                collectives=lambda engine, world: 0)  # torch's step: none; the solve's one is checked above


CASES = [
    _case("slimtik/regression/fp64/sgd", regression, sgd, torch.float64),
    _case("slimtik/onehot/fp64/adam", onehot_classifier, adam, torch.float64),
    _case("slimtik/regression/fp32/adam", regression, adam, torch.float32),
    _case("slimtik/onehot/fp32/sgd", onehot_classifier, sgd, torch.float32),
]
