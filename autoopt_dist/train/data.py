"""Data: offline built-in data sets as tensors, and global batches that split the same for any world size.

The sharding rule makes a run on N ranks compute what one process computes: step t's global batch is
the same set of examples for every world size (one shuffle per epoch from the data seed), and rank r
takes the r-th contiguous chunk of it. Local copies of CIFAR, ImageNet, image folders and hub data sets
come with issue #5.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .config import DataConfig
from .errors import ConfigError


@dataclass
class Split:
    x: torch.Tensor
    y: torch.Tensor


@dataclass
class Dataset:
    train: Split
    test: Split
    num_classes: int

    @property
    def in_features(self) -> int:
        return int(np.prod(self.train.x.shape[1:]))


def load_dataset(cfg: DataConfig) -> Dataset:
    if cfg.name == "digits":
        from sklearn.datasets import load_digits

        x, y = load_digits(return_X_y=True)
        x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.long)
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(cfg.seed))
        n_test = int(round(cfg.test_fraction * len(x)))
        train, test = Split(x[perm[n_test:]], y[perm[n_test:]]), Split(x[perm[:n_test]], y[perm[:n_test]])
    elif cfg.name == "mnist1d":
        try:
            from mnist1d.data import get_dataset_args, make_dataset
        except ImportError:
            raise ConfigError("data.name: mnist1d needs the data extra: pip install 'autoopt_dist[data]'") from None
        args = get_dataset_args()
        args.seed = cfg.seed
        d = make_dataset(args)  # generated offline; mnist1d's get_dataset would download
        train = Split(torch.tensor(d["x"], dtype=torch.float32), torch.tensor(d["y"], dtype=torch.long))
        test = Split(torch.tensor(d["x_test"], dtype=torch.float32), torch.tensor(d["y_test"], dtype=torch.long))
    else:  # config validation lists the allowed names
        raise ConfigError(f"data.name: {cfg.name!r} is not a known data set")
    if len(train.x) < cfg.batch_size:
        raise ConfigError(
            f"data.batch_size: {cfg.batch_size} exceeds the {len(train.x)} training examples of {cfg.name}"
        )
    # Per-feature standardisation from training statistics: AGD assumes inputs of norm ~ sqrt(d_0).
    # A feature constant on the training split (digits' border pixels) keeps scale 1, so a test value
    # there is not divided by ~0.
    mean, std = train.x.mean(0), train.x.std(0)
    std = torch.where(std > 1e-6, std, torch.ones_like(std))
    train.x, test.x = (train.x - mean) / std, (test.x - mean) / std
    return Dataset(train, test, int(max(train.y.max(), test.y.max())) + 1)


class GlobalBatches:
    """Indices of each step's global batch, and this rank's share of it.

    Args:
        n: training examples. batch_size: global batch. seed: data seed. rank, world_size: this process.
    """

    def __init__(self, n: int, batch_size: int, seed: int, rank: int, world_size: int):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world_size = rank, world_size

    @property
    def steps_per_epoch(self) -> int:
        return self.n // self.batch_size  # the incomplete last batch is dropped: every step has B examples

    def local_indices(self, epoch: int, step: int) -> torch.Tensor:
        order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))
        batch = order[step * self.batch_size : (step + 1) * self.batch_size]
        return batch.chunk(self.world_size)[self.rank]
