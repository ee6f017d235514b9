"""Architecture-aware initialisation and learning rate (Chen et al., ICLR 2024; METHODS.md section 5).

Static: computed once from the model's DAG (traced with torch.fx) before any engine wraps it; no per-step
work, no collectives. `arch_init_` draws full tensors (same seed on every rank, then shard); `arch_lr` gives
one learning rate for any optimizer; `path_summary` says what both were computed from.
"""

from .graph import ModelGraph, WeightedLayer, trace_model_graph
from .init import arch_init_, arch_init_std
from .lr import BASE_SUM_CUBED, PathSummary, arch_lr, path_summary, scaled_lr
from .paths import (
    MLP_CNN_EDGE_WEIGHTS,
    NB201_EDGE_WEIGHTS,
    PathDAG,
    dag_from_code,
    node_moments,
    path_moments,
    sum_cubed_lengths,
)

__all__ = [
    "BASE_SUM_CUBED",
    "MLP_CNN_EDGE_WEIGHTS",
    "NB201_EDGE_WEIGHTS",
    "ModelGraph",
    "PathDAG",
    "PathSummary",
    "WeightedLayer",
    "arch_init_",
    "arch_init_std",
    "arch_lr",
    "dag_from_code",
    "node_moments",
    "path_moments",
    "path_summary",
    "scaled_lr",
    "sum_cubed_lengths",
    "trace_model_graph",
]
