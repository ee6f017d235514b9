"""Our optimizers through Hugging Face Accelerate, exact on every engine Accelerate may (or may not) apply.

    accelerator = Accelerator()
    model, optimizer = autoopt_dist.accelerate.prepare(
        accelerator, model, lambda params, layout: AGD(params, layout=layout))
    ...
    accelerator.backward(loss); optimizer.step(); optimizer.zero_grad()

Why not plain `accelerator.prepare(model, optimizer)`:
- DeepSpeed: Accelerate passes our optimizer to `deepspeed.initialize` (and silently allows untested
  optimizers, LESSONS.md R6); ZeRO then calls `step()` once per group or sub-group. `bind_deepspeed`
  takes over that boundary so statistics span the whole model.
- FSDP on CPU: Accelerate (1.15) ignores its FSDP plugin when no GPU is present and returns the model
  unwrapped. We apply the FSDP version the plugin asked for ourselves (`FSDP_VERSION`,
  `FSDP_USE_ORIG_PARAMS`), with the same wrapping the harness uses, and build the optimizer over it.
- N processes, one model each: `accelerate launch` with a multi-GPU config on a CPU machine starts N
  processes that Accelerate then treats as N independent single-process runs (DistributedType.NO), so
  they train N unsynchronised copies. Refused here, naming the fix.
"""

from __future__ import annotations

import os
from typing import Callable

import torch
from torch import nn

from .layout import Layout
from .layout.zero import bind_deepspeed
from .train.engine import layout_of, optimizer_params, wrap_model

OptimizerFactory = Callable[[list, Layout | None], torch.optim.Optimizer]


def fsdp_strategy_from_env() -> str | None:
    """The FSDP variant an Accelerate config asked for, from the variables `accelerate launch` exports."""
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true":
        return None
    if os.environ.get("FSDP_VERSION", "1") == "2":
        return "fsdp2"
    return "fsdp1" if os.environ.get("FSDP_USE_ORIG_PARAMS", "true").lower() == "true" else "fsdp1_flat"


def check_synchronised(accelerator) -> None:
    """Refuse N launched processes that Accelerate runs as N separate single-process trainings.

    The tell is DistributedType.NO with WORLD_SIZE > 1 (DeepSpeed keeps its own process group and
    Accelerate may then report one process; `prepare` checks that group's size instead)."""
    from accelerate.utils import DistributedType

    launched = int(os.environ.get("WORLD_SIZE", "1"))
    alone = accelerator.distributed_type == DistributedType.NO
    if launched > 1 and alone and fsdp_strategy_from_env() is None:
        raise RuntimeError(
            f"accelerate launch started {launched} processes but Accelerate runs each alone "
            f"(distributed_type={accelerator.distributed_type}, num_processes={accelerator.num_processes}): they would "
            "train unsynchronised copies. On a machine without GPUs export ACCELERATE_USE_CPU=1 (or use "
            "launch/accelerate/ddp.yaml through autoopt's launcher), so Accelerate uses DDP on CPU"
        )


def prepare(accelerator, model: nn.Module, make_optimizer: OptimizerFactory, *, micro_batch_size: int | None = None):
    """Prepare a bare model (initialised on full tensors) and one of our optimizers with `accelerator`.

    Args:
        make_optimizer: `(named_params, layout) -> optimizer`, called once the engine has decided what
            the optimizer steps.
        micro_batch_size: per-process batch, required by DeepSpeed when no dataloader goes through
            `prepare` and the DeepSpeed config leaves it "auto".

    Returns:
        (model, optimizer) to train with `accelerator.backward(loss)`, `optimizer.step()`.
    """
    from accelerate.utils import DistributedType

    check_synchronised(accelerator)
    kind = accelerator.distributed_type
    if kind == DistributedType.DEEPSPEED:
        ds_config = accelerator.state.deepspeed_plugin.deepspeed_config
        if not isinstance(ds_config.get("train_micro_batch_size_per_gpu"), int):
            if micro_batch_size is None:
                raise ValueError("DeepSpeed through Accelerate needs micro_batch_size= (per-process batch)")
            ds_config["train_micro_batch_size_per_gpu"] = micro_batch_size
        optimizer = make_optimizer(list(model.named_parameters()), None)
        model, prepared = accelerator.prepare(model, optimizer)
        launched = int(os.environ.get("WORLD_SIZE", "1"))
        if torch.distributed.get_world_size() != launched:
            raise RuntimeError(f"DeepSpeed runs {torch.distributed.get_world_size()} processes of {launched} launched")
        bind_deepspeed(model, optimizer)
        return model, prepared
    fsdp = fsdp_strategy_from_env()
    if fsdp is not None and kind != DistributedType.FSDP:
        # Accelerate ignored its FSDP plugin (no GPU): apply it ourselves, and keep Accelerate's own
        # wrapping out of the way (it would put DDP around the sharded model under MULTI_CPU).
        wrapped = wrap_model(model, fsdp, accelerator.device)
        return wrapped, make_optimizer(optimizer_params(wrapped), layout_of(wrapped))
    optimizer = make_optimizer(list(model.named_parameters()), None)
    model, prepared = accelerator.prepare(model, optimizer)
    if kind == DistributedType.FSDP:
        # Accelerate swaps the optimizer's tensors for sharded ones inside prepare (its PR #3394):
        # rebuild the views over what the optimizer now holds.
        optimizer._layout = layout_of(model)
        optimizer._build_views()
    return model, prepared
