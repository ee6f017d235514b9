"""Offline built-ins, held in memory: scikit-learn's digits and mnist1d's generator.

Both are standardised per feature with training statistics (AGD assumes inputs of norm ~ sqrt(d_0)).
A feature constant on the training split (digits' border pixels) keeps scale 1, so a test value there
is not divided by ~0.
"""

from __future__ import annotations

import torch

from ..train.errors import ConfigError
from .base import SourceData, TensorSource, holdout_split


def _standardise(train: TensorSource, test: TensorSource) -> None:
    mean, std = train.x.mean(0), train.x.std(0)
    std = torch.where(std > 1e-6, std, torch.ones_like(std))
    train.x, test.x = (train.x - mean) / std, (test.x - mean) / std


def load_digits(cfg) -> SourceData:
    from sklearn.datasets import load_digits as sk_digits

    x, y = sk_digits(return_X_y=True)
    x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.long)
    tr, te = holdout_split(len(x), cfg.test_fraction, cfg.seed)
    train, test = TensorSource(x[tr], y[tr]), TensorSource(x[te], y[te])
    _standardise(train, test)
    return SourceData(train, test, int(max(train.y.max(), test.y.max())) + 1, tuple(x.shape[1:]))


def load_mnist1d(cfg) -> SourceData:
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError:
        raise ConfigError("data.name: mnist1d needs the data extra: pip install 'autoopt_dist[data]'") from None
    args = get_dataset_args()
    args.seed = cfg.seed
    d = make_dataset(args)  # generated offline; mnist1d's get_dataset would download
    train = TensorSource(torch.tensor(d["x"], dtype=torch.float32), torch.tensor(d["y"], dtype=torch.long))
    test = TensorSource(torch.tensor(d["x_test"], dtype=torch.float32), torch.tensor(d["y_test"], dtype=torch.long))
    _standardise(train, test)
    return SourceData(train, test, int(max(train.y.max(), test.y.max())) + 1, tuple(train.x.shape[1:]))
