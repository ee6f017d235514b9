"""Learning-rate-free optimizers, each exact under every engine the layout knows."""

from .agd import AGD, agd_init_, agd_scale, agd_scalars
from .base import ShardedOptimizer

__all__ = ["AGD", "ShardedOptimizer", "agd_init_", "agd_scalars", "agd_scale"]
