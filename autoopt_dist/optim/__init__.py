"""Learning-rate-free optimizers, each exact under every engine the layout knows."""

from .agd import AGD, agd_init_, agd_scale, agd_scalars
from .base import ShardedOptimizer
from .ecco import ECCO
from .hypergrad import HyperAdam, HyperSGD
from .slimtik import SlimTikHead

__all__ = ["AGD", "ECCO", "HyperAdam", "HyperSGD", "ShardedOptimizer", "SlimTikHead", "agd_init_", "agd_scalars", "agd_scale"]
