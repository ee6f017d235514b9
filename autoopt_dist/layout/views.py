"""Local views: which elements of each original parameter this rank holds, under every engine.

A `LocalView` is one fragment of one original parameter inside one tensor the optimizer steps. It is
either *shaped* (the local tensor keeps the original trailing dims and holds whole rows: full tensors
under a single process or DDP, FSDP2 `Shard(0)` row blocks) or *flat* (a 1-D run of elements at an
element offset into the row-major flattening of the original: FSDP1, and the ZeRO partitions of
issue #4). A view may be empty; it still exists on every rank so collectives keep one schedule.

`Layout` maps each optimizer tensor to its views. It is built from the wrapped model (needed for FSDP1,
whose flat-parameter handles record the original shapes and shard offsets) or, for engines whose
tensors describe themselves (plain tensors, DTensors), from the parameters alone.

This module reads engine internals (FSDP1 `_ShardParamInfo`, DTensor placements) checked against
torch 2.13; pyproject bounds torch for that reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
import torch.distributed as dist
from torch import nn

from .side_table import ParamInfo, clean_name

try:  # DTensor is public from torch 2.5 on
    from torch.distributed.tensor import DTensor, Replicate, Shard
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset
except ImportError:  # pragma: no cover - torch without distributed support
    DTensor = None


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """The rank-local tensor behind a DTensor (aliasing its storage), or `t` itself."""
    if DTensor is not None and isinstance(t, DTensor):
        return t.to_local()
    return t


@dataclass(frozen=True, eq=False)
class LocalView:
    """One fragment of one original parameter held by this rank.

    Attributes:
        info: structure of the original parameter (full shape, role, taps).
        param: the tensor the optimizer owns and updates in place.
        shaped: True if the local tensor keeps the original trailing dims and holds whole rows.
        local_start: (flat views) element offset of the fragment in `param`'s local 1-D data.
        numel: number of elements of the original held here; 0 for an empty shard.
        orig_start: element offset of the fragment's first element in the original, row-major.
        group: process group whose pieces sum to the whole parameter; None if replicated
            (every rank holds the same full tensor and the same averaged gradient).
    """

    info: ParamInfo
    param: torch.Tensor
    shaped: bool
    local_start: int
    numel: int
    orig_start: int
    group: dist.ProcessGroup | None

    @property
    def sharded(self) -> bool:
        return self.group is not None

    def select(self, t: torch.Tensor) -> torch.Tensor:
        """This view's elements of `t`, a tensor laid out like `param` (its data, gradient or a state
        buffer shaped like it): the local block, or the fragment's 1-D run."""
        t = local_tensor(t)
        if self.shaped:
            return t
        return t.view(-1).narrow(0, self.local_start, self.numel)

    def data(self) -> torch.Tensor:
        """The local elements, as a view: in-place updates reach the engine's parameter."""
        return self.select(self.param.data)

    def grad(self) -> torch.Tensor | None:
        """The local gradient elements (a view), or None if the parameter got no gradient."""
        return None if self.param.grad is None else self.select(self.param.grad)


def _is_dtensor(t: torch.Tensor) -> bool:
    return DTensor is not None and isinstance(t, DTensor)


def _group_size(group: dist.ProcessGroup | None) -> int:
    return 1 if group is None else dist.get_world_size(group)


# ---- adapters: one per engine ------------------------------------------------------------------


def _replicated_view(name: str, param: torch.Tensor) -> LocalView:
    """Single process and DDP: the full tensor; DDP's gradient is already the global average."""
    return LocalView(ParamInfo.from_shape(name, param.shape), param, True, 0, param.numel(), 0, None)


def _fsdp2_view(name: str, param: torch.Tensor) -> LocalView:
    """FSDP2 `fully_shard`: a `Shard(0)` block of rows, possibly empty on trailing ranks.

    HSDP meshes carry `Replicate` on the replica dim: the pieces are summed over the shard dim only,
    since replicas hold identical shards and would be counted several times (LESSONS.md R3).
    """
    shard_dims = [i for i, p in enumerate(param.placements) if isinstance(p, Shard)]
    others = [p for p in param.placements if not isinstance(p, (Shard, Replicate))]
    if others or len(shard_dims) > 1 or any(param.placements[i].dim != 0 for i in shard_dims):
        raise NotImplementedError(
            f"parameter {name!r} has DTensor placements {param.placements}; autoopt_dist handles Shard(0) "
            "(FSDP2) and Replicate (HSDP replicas) only, not tensor-parallel splits"
        )
    info = ParamInfo.from_shape(name, param.shape)
    if not shard_dims:
        return LocalView(info, param, True, 0, info.numel, 0, None)
    local_shape, offset = compute_local_shape_and_global_offset(param.shape, param.device_mesh, param.placements)
    row_numel = info.numel // max(info.shape[0], 1)
    group = param.device_mesh.get_group(mesh_dim=shard_dims[0])
    numel = int(torch.Size(local_shape).numel())
    return LocalView(info, param, True, 0, numel, int(offset[0]) * row_numel, group)


def _fsdp1_views(module: nn.Module) -> dict[int, list[LocalView]]:
    """FSDP1: each handle's flat parameter concatenates whole original parameters, pads, and splits
    the result evenly over ranks, so a rank holds arbitrary runs of elements that may end mid-row or
    be empty. The handle records, per original parameter, its full shape, FQN and the run it keeps
    here (`_ShardParamInfo`): the engine's own side table.

    With `use_orig_params=True` the optimizer steps the original parameters (1-D views, size 0 when
    absent); with `use_orig_params=False` it steps the flat parameter, one view per original inside.
    """
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    views: dict[int, list[LocalView]] = {}
    for fsdp_module in FSDP.fsdp_modules(module):
        handle = fsdp_module._handle
        if handle is None:  # a wrapper that owns no parameters itself
            continue
        flat = handle.flat_param
        group = fsdp_module.process_group
        prefix = _module_prefix(module, fsdp_module)
        originals = flat._params if handle._use_orig_params else [flat] * len(flat._fqns)
        for fqn, shape, shard, param in zip(flat._fqns, flat._shapes, flat._shard_param_infos, originals):
            info = ParamInfo.from_shape(clean_name(prefix + fqn), shape)
            if shard.in_shard:
                start = 0 if handle._use_orig_params else shard.offset_in_shard
                view = LocalView(info, param, False, start, shard.numel_in_shard, shard.intra_param_start_idx, group)
            else:
                view = LocalView(info, param, False, 0, 0, 0, group)
            views.setdefault(id(param), []).append(view)
    return views


def _module_prefix(root: nn.Module, target: nn.Module) -> str:
    for name, mod in root.named_modules():
        if mod is target:
            return name + "." if name else ""
    raise AssertionError("FSDP module not found under its root")


def _refuse_unmapped(name: str, param: torch.Tensor) -> None:
    if hasattr(param, "ds_id") or hasattr(param, "_hp_mapping"):
        # The ZeRO adapter (flat fp32 partitions, ds_shape) is issue #4; refuse rather than guess.
        raise NotImplementedError(
            f"parameter {name!r} is a DeepSpeed ZeRO partition; ZeRO layouts are not supported yet"
        )
    if getattr(param, "_fsdp_flattened", False):
        raise ValueError(
            f"parameter {name!r} is an FSDP1 flattened view whose original shape only the FSDP module knows; "
            "pass layout=autoopt_dist.layout.Layout.from_model(model) with the wrapped model"
        )


class Layout:
    """Optimizer tensor -> its local views; the one object that knows how an engine shards."""

    def __init__(self, engine_views: dict[int, list[LocalView]] | None = None):
        self._engine_views = engine_views or {}

    @classmethod
    def from_model(cls, model: nn.Module) -> "Layout":
        """Layout of a wrapped model (any engine): reads FSDP1 handles, if any, once."""
        return cls(_fsdp1_views(model))

    def views(self, name: str, param: torch.Tensor) -> list[LocalView]:
        """Views of one optimizer tensor, in a fixed order identical on every rank."""
        if id(param) in self._engine_views:
            return self._engine_views[id(param)]
        _refuse_unmapped(name, param)
        if _is_dtensor(param):
            return [_fsdp2_view(name, param)]
        return [_replicated_view(name, param)]

    def views_of(self, named_params: Iterable[tuple[str, torch.Tensor]]) -> list[LocalView]:
        return [view for name, param in named_params for view in self.views(name, param)]


def shard_group(views: list[LocalView]) -> dist.ProcessGroup | None:
    """The one process group over which the sharded views' partial statistics are summed.

    None when nothing is sharded (or every group has one rank): then no collective is needed.
    Views sharded over different groups would need several collectives per step; refused.
    """
    groups = {id(v.group): v.group for v in views if v.sharded and _group_size(v.group) > 1}
    if len(groups) > 1:
        names = sorted({v.info.name for v in views if v.sharded})[:4]
        raise NotImplementedError(
            f"parameters ({', '.join(names)}, ...) are sharded over {len(groups)} different process groups; "
            "shard every parameter an optimizer steps over one mesh, or build one optimizer per mesh"
        )
    return next(iter(groups.values()), None)
