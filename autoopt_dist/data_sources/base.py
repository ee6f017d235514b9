"""What every reader returns: sources that fetch raw batches by index, and the data set's shape."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from ..train.errors import ConfigError


class Source(Protocol):
    """A split that fetches examples by index, undecoded work left until asked for.

    `fetch` returns x as float32 (images in [0, 1], before normalisation) and y (int64 labels, or
    float32 targets of shape (B, 1) for regression). `keys` (one uint64 per example) is given only when
    the augmentation happens at decode time (random resized crops of file-backed images).
    """

    def __len__(self) -> int: ...

    def fetch(self, indices: torch.Tensor, keys: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]: ...


class TensorSource:
    """A split held in memory: x (float32, or uint8 images scaled to [0, 1] on fetch) and y."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def fetch(self, indices: torch.Tensor, keys: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.x[indices]
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
        return x, self.y[indices]


@dataclass
class SourceData:
    train: Source
    test: Source
    num_classes: int  # 0 for regression
    input_shape: tuple[int, ...]  # one example's x, e.g. (3, 32, 32), (64,), (seq_len, features)
    task: str = "classification"  # or "regression"
    kind: str = "vector"  # vector | image | sequence: which augmentations apply
    file_backed: bool = False  # images decoded per batch (random resized crops possible)
    default_augment: str = "none"  # what augment=auto means for this source
    mean: torch.Tensor | None = None  # per-channel normalisation applied per batch (images)
    std: torch.Tensor | None = None
    extras: dict = field(default_factory=dict)  # e.g. target_mean / target_std for regression


def require_path(cfg, what: str) -> Path:
    """`data.path` as an existing Path, or a ConfigError saying what to put there."""
    raw = getattr(cfg, "path", "") or ""
    if not raw:
        raise ConfigError(f"data.path: data.name={cfg.name} needs data.path set to {what}")
    path = Path(raw).expanduser()
    if not path.exists():
        raise ConfigError(f"data.path: {raw!r} does not exist; set data.path to {what}")
    return path


def holdout_split(n: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train indices, held-out indices) of a seeded shuffle; the same on every rank."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_test = int(round(fraction * n))
    return perm[n_test:], perm[:n_test]
