"""What an equivalence case is, and the small sharding-hostile models the cases share.

Each method contributes a `cases_<method>.py` module with a `CASES` list; equivalence_worker.py runs
every case on every engine in one torchrun launch per world size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from autoopt_dist.models import MLP, BasicBlock, Bottleneck, ResNet

GLOBAL_BATCH = 12  # divisible by 1, 2 and 3
ENGINES = ("ddp", "fsdp1", "fsdp1_flat", "fsdp2")
ZERO_ENGINES = ("zero1", "zero2", "zero3")


@dataclass
class ModelSpec:
    model: nn.Module
    input_shape: tuple[int, ...]
    loss_fn: Callable
    shard_modules: tuple[type[nn.Module], ...] = ()
    num_outputs: int = 2  # regression targets (MSE) or classes (cross-entropy)


def mlp(agd_compatible=True) -> ModelSpec:
    # Odd widths, and a 2-row last layer: over 3 ranks FSDP2 leaves one rank an empty (0, 9) shard.
    return ModelSpec(MLP(13, 9, 4, 2, agd_compatible=agd_compatible), (13,), nn.MSELoss())


def resnet_basic(agd_compatible=True) -> ModelSpec:
    model = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=2, stem="cifar", width=5, agd_compatible=agd_compatible)
    return ModelSpec(model, (3, 8, 8), nn.CrossEntropyLoss(), (BasicBlock,))


def resnet_bottleneck(agd_compatible=True) -> ModelSpec:
    model = ResNet(Bottleneck, [1, 1, 1, 1], num_classes=3, stem="imagenet", width=3, agd_compatible=agd_compatible)
    return ModelSpec(model, (3, 32, 32), nn.CrossEntropyLoss(), (Bottleneck,), num_outputs=3)


def default_oracle_step(model, opt, micro_batches, loss_fn):
    """World size 1: the global batch as world-size micro-batches, losses averaged (accumulation)."""
    opt.zero_grad()
    for x, y in micro_batches:
        (loss_fn(model(x), y) / len(micro_batches)).backward()
    opt.step()


def default_engine_step(model, opt, x, y, loss_fn):
    """One rank: its micro-batch; the engine averages gradients."""
    if hasattr(model, "zero_optimization_stage"):  # DeepSpeed: the engine owns backward and step
        model.backward(loss_fn(model(x), y))
        model.step()
        return
    opt.zero_grad()
    loss_fn(model(x), y).backward()
    opt.step()


@dataclass
class Case:
    """One method on one model in one dtype.

    Attributes:
        make_model: builds the bare model (called after the seed is set).
        make_optimizer: (named params, layout, model) -> optimizer; `model` is the bare model for the
            oracle and the wrapped one for an engine (for methods that hook modules).
        init: optional in-place initialisation of the bare model (e.g. agd_init_).
        collectives: (engine, world size) -> collectives the optimizer step must issue.
        tol_params / tol_scalars: relative tolerances vs world size 1 (see test_equivalence.py).
    """

    name: str
    make_model: Callable[[], ModelSpec]
    make_optimizer: Callable
    dtype: torch.dtype = torch.float32
    init: Callable[[nn.Module], None] | None = None
    collectives: Callable[[str, int], int] = lambda engine, world: int(engine.startswith(("fsdp", "zero")) and world > 1)
    tol_params: float | None = None
    tol_scalars: float | None = None
    steps: int = 10
    engines: tuple[str, ...] = ENGINES
    oracle_step: Callable = default_oracle_step
    engine_step: Callable = default_engine_step
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        fp64 = self.dtype == torch.float64
        self.tol_params = self.tol_params or (1e-11 if fp64 else 1e-5)
        self.tol_scalars = self.tol_scalars or (1e-11 if fp64 else 1e-4)
