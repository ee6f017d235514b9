"""DeepSpeed ZeRO-1/2/3: local views of the fp32 partitions, and ownership of the step boundary.

ZeRO hands the client optimizer flat fp32 partitions that cut across layers, and calls its `step()`
once per parameter group (ZeRO-1/2) or once per sub-group (ZeRO-3), each time with only that part's
gradient alive (LESSONS.md R5). A layer-wise statistic computed inside such a call sees one part and is
silently wrong (DeepSpeed #490, #1217). So `bind_deepspeed`:

1. rebuilds the optimizer's views over the partitions: ZeRO-1/2 from each parameter's `_hp_mapping`
   (its fragment's offset in the fp32 partition and in the original tensor, so a parameter straddling
   two ranks is two fragments); ZeRO-3 from each parameter's own partition (`ds_numel` elements at
   rank * ds_numel of the flattened original, shape from `ds_shape`), packed in sub-group order;
2. replaces the ZeRO optimizer's `_optimizer_step(i)` so the calls for parts 0..n-2 only keep their
   gradient, and the last one runs ONE step of ours over every part (statistics once per optimizer
   step, one packed collective), then redoes DeepSpeed's own fp32 -> low-precision copy for the
   parts it already copied. Cost: the fp32 gradients of all parts are alive together during that one
   step (under ZeRO-3 DeepSpeed keeps one sub-group's at a time).

Refused, with the reason: fp16 loss scaling (statistics need the unscaled gradient, METHODS.md G1),
optimizer offload and NVMe swapping (partitions move between devices under the step), and gradient
clipping for methods whose statistics clipping would change (G7; the method says so).
Reads DeepSpeed internals checked against deepspeed 0.19.8 (pinned in pyproject for that reason).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from .side_table import ParamInfo, clean_name
from .views import Layout, LocalView


def _zero_optimizer(engine):
    zopt = getattr(engine, "optimizer", engine)
    if not hasattr(zopt, "_optimizer_step"):
        raise TypeError(f"bind_deepspeed: {type(zopt).__name__} is not a DeepSpeed ZeRO optimizer (stage 1, 2 or 3)")
    return zopt


def _stage(zopt) -> int:
    return 3 if hasattr(zopt, "fp32_partitioned_groups_flat") else 2


def _refuse_unsupported(engine, zopt, clipping_changes_statistics: bool, method: str) -> None:
    if getattr(engine, "fp16_enabled", lambda: False)():
        raise NotImplementedError(
            f"{method} under DeepSpeed fp16: the loss-scaled gradient would enter the statistics (METHODS.md G1); "
            "use bf16 (\"bf16\": {\"enabled\": true}) or fp32"
        )
    if getattr(zopt, "cpu_offload", False) or getattr(zopt, "offload_optimizer", False):
        raise NotImplementedError(f"{method} with ZeRO optimizer offload is not supported; remove offload_optimizer")
    clip = getattr(engine, "gradient_clipping", lambda: 0.0)()
    if clipping_changes_statistics and clip and clip > 0:
        raise ValueError(
            f"DeepSpeed config gradient_clipping={clip}: clipping rescales the gradient {method}'s statistics are "
            "computed from and so changes its step sizes (METHODS.md G7); set \"gradient_clipping\": 0"
        )


def _names(engine) -> dict[int, str]:
    module = getattr(engine, "module", None)
    return {} if module is None else {id(p): clean_name(n) for n, p in module.named_parameters()}


def zero12_views(zopt, names: dict[int, str]) -> list[list[LocalView]]:
    """Per param group: one view per original parameter, into this rank's fp32 partition (maybe empty)."""
    groups = []
    for i, bit16_params in enumerate(zopt.bit16_groups):
        partition = zopt.single_partition_of_fp32_groups[i]
        group = zopt.real_dp_process_group[i]
        views = []
        for p in bit16_params:
            info = ParamInfo.from_shape(names.get(id(p), f"group{i}.param{len(views)}"), p.shape)
            mapping = getattr(p, "_hp_mapping", None)
            if mapping is None:  # no element of this parameter in this rank's partition
                views.append(LocalView(info, partition, False, 0, 0, 0, group))
                continue
            lp, hp = mapping.lp_fragment_address, mapping.hp_fragment_address
            views.append(LocalView(info, partition, False, hp.start, lp.numel, lp.start, group))
        groups.append(views)
    return groups


def zero3_views(zopt, names: dict[int, str]) -> list[list[LocalView]]:
    """Per param group: views of every parameter's own partition, inside its sub-group's fp32 buffer."""
    groups: list[list[LocalView]] = [[] for _ in zopt.optimizer.param_groups]
    for sub, params in enumerate(zopt.fp16_groups):
        flat = zopt.fp32_partitioned_groups_flat[sub]
        group = zopt._get_sub_group_process_group(sub) if hasattr(zopt, "_get_sub_group_process_group") else zopt.dp_process_group
        rank = dist.get_rank(group=group)
        offset = 0
        for p in params:
            info = ParamInfo.from_shape(names.get(id(p), f"subgroup{sub}.param{offset}"), p.ds_shape)
            per_rank = p.ds_tensor.ds_numel  # ceil(numel / world): the last rank's share is padded
            start = rank * per_rank
            held = max(0, min(per_rank, info.numel - start))
            groups[zopt.sub_group_to_group_id[sub]].append(LocalView(info, flat, False, offset, held, start, group))
            offset += per_rank
    return groups


def bind_deepspeed(engine, optimizer, *, clipping_changes_statistics: bool = True) -> None:
    """Make `optimizer` (ours, the client optimizer given to `deepspeed.initialize`) exact under ZeRO.

    Call once, right after `deepspeed.initialize` (or `accelerator.prepare`), before the first step.
    """
    zopt = _zero_optimizer(engine)
    method = type(optimizer).__name__
    _refuse_unsupported(engine, zopt, clipping_changes_statistics, method)
    names = _names(engine)
    stage = _stage(zopt)
    group_views = zero3_views(zopt, names) if stage == 3 else zero12_views(zopt, names)
    optimizer.rebind_views(group_views)
    parts = zopt.fp32_partitioned_groups_flat if stage == 3 else zopt.single_partition_of_fp32_groups
    pending: dict[int, torch.Tensor | None] = {}

    def deferred_optimizer_step(part: int) -> None:
        pending[part] = parts[part].grad
        if len(pending) < len(parts):
            return  # DeepSpeed copies this part's (unchanged) fp32 values down; redone below
        for j, grad in pending.items():
            parts[j].grad = grad
        try:
            optimizer.step()
        finally:
            for j in pending:
                parts[j].grad = None if j != part else pending[j]
            pending.clear()
        for j in range(len(parts) - 1):
            _copy_fp32_down(zopt, stage, j)

    zopt._optimizer_step = deferred_optimizer_step


def _copy_fp32_down(zopt, stage: int, part: int) -> None:
    """DeepSpeed's own post-step copy of a part's fp32 master values into the model's parameters."""
    if stage == 3:
        zopt._reassign_or_swap_out_partitioned_parameters(part)
        return
    rank = dist.get_rank(group=zopt.real_dp_process_group[part])
    zopt.parallel_partitioned_bit16_groups[part][rank].data.copy_(zopt.single_partition_of_fp32_groups[part].data)


__all__ = ["bind_deepspeed", "zero12_views", "zero3_views", "Layout"]
