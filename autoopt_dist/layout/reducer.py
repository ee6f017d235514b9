"""The reducer: every statistic of one optimizer step in one collective per reduction op.

The only module a step calls `torch.distributed` from. A method hands it named fp32 vectors of this
rank's partial statistics; the reducer concatenates them, issues one all-reduce, and splits the result.
It issues the collective on every call when anything is sharded, whatever the values (zero gradients,
empty shards), so every rank follows the same schedule (LESSONS.md R2); it issues none when nothing
is sharded, as under DDP, whose gradients are already the global average.

Sums need care with mixed layouts: a replicated tensor's statistic is the same on every rank and must
be added once, *after* the reduction, or it would be counted world-size times (LESSONS.md R3). Each
vector therefore comes with a mask of which entries are partial (from shards) and which replicated.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

Stats = dict[str, tuple[torch.Tensor, torch.Tensor | bool]]


class Reducer:
    """One all-reduce per op per step.

    Args:
        group: the process group the sharded views are split over (`views.shard_group`), or None
            when nothing is sharded: parameter statistics then need no collective.
        data_group: the data-parallel group, over which statistics of the *data* (activations, Gram
            matrices of features) are summed even when parameters are replicated, as under DDP. None
            with one process. Under HSDP it spans replicas and shards alike.

    Attributes:
        collectives: number of collectives issued so far (logged, and read by tests).
    """

    def __init__(self, group: dist.ProcessGroup | None, data_group: dist.ProcessGroup | None = None):
        self.group = group
        self.data_group = data_group
        self.collectives = 0

    @classmethod
    def for_views(cls, group: dist.ProcessGroup | None) -> "Reducer":
        data_group = dist.group.WORLD if dist.is_initialized() and dist.get_world_size() > 1 else None
        return cls(group, data_group)

    @property
    def active(self) -> bool:
        return self.group is not None

    def sum(self, stats: Stats, data_dependent: bool = False) -> dict[str, torch.Tensor]:
        """Global sums of per-rank partial statistics.

        Args:
            stats: name -> (local vector, partial mask). The mask is a bool tensor shaped like the
                vector, True where the entry is a partial sum over a shard, or a bool for all entries.
            data_dependent: the statistics come from this rank's share of the batch: every entry is
                partial and the sum runs over the data-parallel group (masks are ignored).

        Returns:
            name -> reduced vector, identical on every rank.
        """
        names = list(stats)
        local = [stats[n][0] for n in names]
        if data_dependent:
            return self._all_reduce_data(names, local)
        if not self.active:
            return dict(zip(names, local))
        masks = [_as_mask(v, m) for v, m in (stats[n] for n in names)]
        flat = torch.cat([v.reshape(-1) for v in local])
        partial_mask = torch.cat([m.reshape(-1) for m in masks])
        partial = torch.where(partial_mask, flat, torch.zeros_like(flat))
        dist.all_reduce(partial, op=dist.ReduceOp.SUM, group=self.group)
        self.collectives += 1
        total = torch.where(partial_mask, partial, flat)
        return dict(zip(names, _split_like(total, local)))

    def max(self, stats: dict[str, torch.Tensor], data_dependent: bool = False) -> dict[str, torch.Tensor]:
        """Global maxima (over shards, or over the data-parallel group for data statistics).
        Replicated entries need no mask: max(x, x) = x. Fold a MIN in by negation."""
        names = list(stats)
        local = [stats[n] for n in names]
        group = self.data_group if data_dependent else self.group
        if group is None:
            return dict(zip(names, local))
        flat = torch.cat([v.reshape(-1) for v in local])
        dist.all_reduce(flat, op=dist.ReduceOp.MAX, group=group)
        self.collectives += 1
        return dict(zip(names, _split_like(flat, local)))

    def _all_reduce_data(self, names: list[str], local: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.data_group is None:
            return dict(zip(names, local))
        flat = torch.cat([v.reshape(-1) for v in local])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=self.data_group)
        self.collectives += 1
        return dict(zip(names, _split_like(flat, local)))


def _as_mask(vector: torch.Tensor, mask: torch.Tensor | bool) -> torch.Tensor:
    if isinstance(mask, bool):
        return torch.full(vector.shape, mask, dtype=torch.bool, device=vector.device)
    return mask


def _split_like(flat: torch.Tensor, parts: list[torch.Tensor]) -> list[torch.Tensor]:
    pieces = torch.split(flat, [p.numel() for p in parts])
    return [piece.view(p.shape) for piece, p in zip(pieces, parts)]
