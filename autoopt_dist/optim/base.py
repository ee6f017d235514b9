"""What every method shares: local views of its tensors and a reducer, built once at construction.

A method subclasses `ShardedOptimizer` and writes its step as
`local statistics -> self.reducer -> identical scalars on every rank -> local update`, reading
structure from `view.info` only. It never calls `torch.distributed` and never reads `p.shape`.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch

from ..layout import Layout, LocalView, Reducer, shard_group


class ShardedOptimizer(torch.optim.Optimizer):
    """A `torch.optim.Optimizer` that knows, for each tensor, which elements of which original it holds.

    Args:
        params: tensors, `(name, tensor)` pairs (`model.named_parameters()`, preferred: errors and
            logs then name parameters) or param-group dicts of either.
        defaults: per-group hyperparameter defaults.
        layout: the engine layout; required for FSDP1 (`Layout.from_model(wrapped_model)`), optional
            for a single process, DDP and FSDP2, whose tensors describe themselves.
    """

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any], layout: Layout | None = None):
        self._layout = layout or Layout()
        super().__init__(_named_groups(params), defaults)
        self._build_views()

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        if hasattr(self, "group_views"):
            self._build_views()

    def _build_views(self) -> None:
        group_views = []
        for g, group in enumerate(self.param_groups):
            names = group.get("param_names") or [f"param_groups[{g}][{i}]" for i in range(len(group["params"]))]
            group_views.append(self._layout.views_of(zip(names, group["params"])))
        self.rebind_views(group_views)

    def rebind_views(self, group_views: list[list[LocalView]]) -> None:
        """Adopt views an engine adapter built after construction (DeepSpeed swaps the tensors the
        optimizer holds for flat partitions inside `deepspeed.initialize`; see layout/zero.py)."""
        if len(group_views) != len(self.param_groups):
            raise ValueError(f"{len(group_views)} groups of views for {len(self.param_groups)} parameter groups")
        self.group_views = group_views
        self.views = [v for views in self.group_views for v in views]
        self.reducer = Reducer.for_views(shard_group(self.views))
        self.check_views(self.views)

    def check_views(self, views: list[LocalView]) -> None:
        """Refuse parameters the method cannot step, naming them and the fix. Default: accept all."""

    def _closure_loss(self, closure):
        if closure is None:
            return None
        with torch.enable_grad():
            return closure()


def _named_groups(params: Iterable[Any]) -> list[Any]:
    """Accept (name, tensor) pairs inside param-group dicts too, as torch accepts them at top level only."""
    params = list(params)
    out = []
    for item in params:
        if isinstance(item, dict) and all(isinstance(p, tuple) for p in item["params"]):
            pairs = list(item["params"])
            item = {**item, "params": [p for _, p in pairs], "param_names": [n for n, _ in pairs]}
        out.append(item)
    return out
