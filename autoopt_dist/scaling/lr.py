"""Architecture-aware learning rate (Chen, Wu, Wang, Hanin, ICLR 2024, arXiv 2402.17440; reference
VITA-Group/principled_scaling_lr_init@674f69b `main.py::auto_scale_lr_depth_width`; METHODS.md 5.2, 5.3).

Find eta_base for a base net by a sweep, then for a target net

    eta = eta_base * sqrt(S_base / S_target) * (k_base / k),     S = sum over input->output paths of L_p^3

One scalar for all parameters, static: no per-step work and no communication under any engine.

Path lengths (AS-R2, generalised to a traced model): L_p = weighted (linear/conv) layers on p, plus 1.
For the reference MLP/CNN families (stem, cell, readout) that is exactly their `#cell edges + 3`, and the
default base, the one-hidden-layer net (stem + readout: 2 weight layers), has one path of L = 3, S = 27.
Chains with 1/3/5 hidden layers (2/4/6 weight layers) give L = 3/5/7 and factors 1 / 0.4648 / 0.2806;
5 weight layers give L = 6 and 0.354. S is computed from path moments, never by listing paths (paths.py).
Quirk R1 is kept: if no input->output path carries a weighted layer, S = 3^3 (the lr stays at eta_base);
quirk R2 (no path) is refused (AS-D2).

Kernel factor k_base / k (the reference's `3 / kernel_size` for its CNNs, k_base = 3): k is the typical conv
kernel side of the model (`ModelGraph.kernel_side`: the most common side among convs larger than 1x1), so a
ResNet with a 7x7 stem and 3x3 bodies has k = 3. A model without convolutions gets no factor. A base model
without convolutions has k_base = 3 (the reference's hard-coded value).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .graph import ModelGraph, WeightedLayer, trace_model_graph
from .paths import R1_LENGTH, path_moments, sum_cubed_lengths

TRACED_OFFSET = 1  # L_p = weighted layers on the path + 1 (METHODS.md AS-R2)
BASE_SUM_CUBED = 27  # the one-hidden-layer net: one path, L = 3
BASE_KERNEL = 3  # the reference's KERNEL_BASE


@dataclass(frozen=True)
class PathSummary:
    """What the learning rate and the init were computed from, for logging.

    Attributes:
        num_paths: input->output paths (m_0).
        moments: (m_0, m_1, m_2, m_3): sums over paths of l^j, l = weighted layers on the path.
        sum_cubed: S = sum_p L_p^3 with L_p = l_p + 1 (after quirk R1).
        r1_applied: no path had a weighted layer, so S = 27 (quirk R1).
        kernel_side: the typical conv kernel side k, None without convolutions.
        in_degrees: DAG node name -> number of summed branches.
        layers: weight FQN -> WeightedLayer (source/target degree, readout flag, full shape).
    """

    num_paths: int
    moments: tuple[int, int, int, int]
    sum_cubed: int
    r1_applied: bool
    kernel_side: float | None
    in_degrees: dict[str, int]
    layers: dict[str, WeightedLayer]

    def as_dict(self) -> dict[str, Any]:
        """Plain values for a logger or a JSON file."""
        return {
            "num_paths": self.num_paths,
            "moments": list(self.moments),
            "sum_cubed": self.sum_cubed,
            "r1_applied": self.r1_applied,
            "kernel_side": self.kernel_side,
            "in_degrees": dict(self.in_degrees),
            "layers": {n: {"shape": list(l.shape), "source_degree": l.source_degree,
                           "target_degree": l.target_degree, "readout": l.readout} for n, l in self.layers.items()},
        }


def summarise_graph(graph: ModelGraph) -> PathSummary:
    """The PathSummary of an already traced graph."""
    moments = path_moments(graph.dag)
    return PathSummary(
        num_paths=moments[0],
        moments=moments,
        sum_cubed=sum_cubed_lengths(moments, TRACED_OFFSET, R1_LENGTH),
        r1_applied=moments[1] == 0,
        kernel_side=graph.kernel_side(),
        in_degrees={graph.dag.name(i): d for i, d in enumerate(graph.in_degrees)},
        layers=dict(graph.layers),
    )


def path_summary(model: nn.Module, example_input: torch.Tensor) -> PathSummary:
    """Trace `model` and summarise its paths and degrees (number of paths, S, in-degrees, per-layer degrees).

    Raises:
        ValueError: the model cannot be traced (the module is named) or has no input->output path.
    """
    return summarise_graph(trace_model_graph(model, example_input))


def scaled_lr(base_lr: float, sum_cubed: int, *, base_sum_cubed: int = BASE_SUM_CUBED,
              kernel_side: float | None = None, base_kernel_side: float = BASE_KERNEL) -> float:
    """eta = base_lr * sqrt(S_base / S) * (k_base / k); no kernel factor when `kernel_side` is None."""
    factor = math.sqrt(base_sum_cubed / sum_cubed)
    if kernel_side is not None:
        factor *= base_kernel_side / kernel_side
    return base_lr * factor


def arch_lr(model: nn.Module, example_input: torch.Tensor, base_lr: float, *, base_model: nn.Module | None = None,
            base_input: torch.Tensor | None = None, kernel_size_factor: bool = True) -> float:
    """The architecture-aware learning rate of `model`, transferred from `base_lr` tuned on the base net.

    Args:
        model: the bare model (or any traceable model with full parameters).
        example_input: one input batch, used only to trace (eval mode, no grad).
        base_lr: the learning rate found by a sweep on the base net.
        base_model: the net `base_lr` was tuned on; default the one-hidden-layer reference (S = 27, k = 3).
        base_input: its example input; default `example_input`.
        kernel_size_factor: apply k_base / k (the reference does for its CNNs).

    Returns:
        eta as a Python float (identical on every rank: it depends on the architecture only).

    Raises:
        ValueError: base_lr is not positive, a model cannot be traced, or one has no input->output path.

    Example:
        >>> arch_lr(MLP(64, 128, 4, 10), torch.zeros(2, 64), base_lr=0.1)   # 4 weight layers: L = 5
        0.0464758...
    """
    if not base_lr > 0:
        raise ValueError(f"arch_lr: base_lr must be > 0, got {base_lr}")
    target = path_summary(model, example_input)
    base_sum, base_kernel = BASE_SUM_CUBED, BASE_KERNEL
    if base_model is not None:
        base = path_summary(base_model, example_input if base_input is None else base_input)
        base_sum = base.sum_cubed
        base_kernel = base.kernel_side if base.kernel_side is not None else BASE_KERNEL
    kernel = target.kernel_side if kernel_size_factor else None
    return scaled_lr(base_lr, target.sum_cubed, base_sum_cubed=base_sum, kernel_side=kernel,
                     base_kernel_side=base_kernel)
