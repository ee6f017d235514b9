"""Architecture-aware initialisation (Chen, Wu, Wang, Hanin, ICLR 2024, arXiv 2402.17440; reference
VITA-Group/principled_scaling_lr_init@674f69b `models/utils.py::critic_init_`; METHODS.md 5.1, 5.3, 5.4).

Every weighted layer (linear or conv) on the DAG edge leaving node s:

    W ~ N(0, 2 / (fan * max(1, indeg(s))))

with fan from the FULL weight shape in the chosen fan mode (fan_in = in * kx * ky, fan_out = out * kx * ky)
and indeg(s) the number of branches summed at s (graph.py). Reading: a node summing k branches has second
moment ~k; each weighted edge leaving it divides that out. Biases 0; norm affine weight 1, bias 0.

Decisions (METHODS.md 5.1):
- AS-D1, in-degree of the SOURCE node (default, `degree="source"`): it is what the reference code does
  (`in_degree[_from]` in mlp_dags.py / cnn_dags.py, `degrees[0][op_in]` in cells.py), checked exhaustively
  against it, so reproduction needs it. `degree="target"` divides by the in-degree of the node the layer's
  output is summed into, the variance-preserving reading (each of k summed branches carries 1/k), offered
  for comparison; docs/methods/scaling.md records what the lr-transfer check measured for both.
- Fan mode: default `fan_in` (forward-variance preserving, what the NB201-style cells use); the reference
  MLP/CNN families use `fan_out` (their stem then gets std sqrt(2/width)). `fan_mode="fan_out",
  readout="reference"` reproduces them.
- AS-R1 readout, an option (`readout="reference"`): the reference gives the readout degree 1 and std 2/fan
  (not sqrt(2/fan); 0.2 for 10 classes in fan_out mode). Default `readout="degree"`: the readout follows the
  same rule as every other layer.

Under sharding (METHODS.md 5.4): call this on the bare model, before any engine wraps it, with the same
seed on every rank. Every rank then draws identical FULL tensors, and the engine shards them: the fan is the
true fan and shards of one tensor are not correlated copies. Already-sharded parameters (DTensor, FSDP1 flat
parameters, DeepSpeed partitions) are refused: their local shape is not the layer's shape.

Layers the trace does not reach and parameters that are neither linear/conv weights and biases nor norm
affine parameters are left as they are.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .graph import WeightedLayer, trace_model_graph

DEGREES = ("source", "target")
FAN_MODES = ("fan_in", "fan_out")
READOUTS = ("degree", "reference")
NORM_MODULES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)


def refuse_sharded(model: nn.Module, caller: str) -> None:
    """Raise if any parameter is already sharded by an engine: its local shape is not the layer's shape."""
    for name, param in model.named_parameters():
        engine = None
        if type(param).__name__ == "DTensor" or type(getattr(param, "data", None)).__name__ == "DTensor":
            engine = "FSDP2/DTensor"
        elif getattr(param, "_fsdp_flattened", False):
            engine = "FSDP1"
        elif hasattr(param, "ds_id"):
            engine = "DeepSpeed ZeRO"
        if engine:
            raise ValueError(
                f"{caller}: parameter {name!r} is already sharded by {engine}; call {caller} on the bare model, "
                "before wrapping it, with the same seed on every rank (METHODS.md 5.4)"
            )


def arch_init_std(layer: WeightedLayer, *, degree: str = "source", fan_mode: str = "fan_in",
                  readout: str = "degree") -> float:
    """The std of one weighted layer: sqrt(2 / (fan * max(1, indeg))), or 2/fan for a reference readout."""
    fan = layer.fan_in if fan_mode == "fan_in" else layer.fan_out
    if readout == "reference" and layer.readout:
        return 2 / fan  # AS-R1: the reference's std_power=2, degree 1
    indeg = layer.source_degree if degree == "source" else layer.target_degree
    return math.sqrt(2 / (fan * max(1, indeg)))


@torch.no_grad()
def arch_init_(model: nn.Module, example_input: torch.Tensor, *, degree: str = "source", fan_mode: str = "fan_in",
               readout: str = "degree", generator: torch.Generator | None = None) -> nn.Module:
    """Initialise `model` in place from its DAG (see the module docstring for the rule and decisions).

    Args:
        model: the bare (unwrapped) model.
        example_input: one input batch, used only to trace the graph (eval mode, no grad).
        degree: "source" (AS-D1, the reference) or "target" (variance-preserving) in-degree.
        fan_mode: "fan_in" (default) or "fan_out" (the reference MLP/CNN families).
        readout: "degree" (same rule as every layer) or "reference" (AS-R1: std 2/fan, degree 1).
        generator: optional RNG; draws follow the model's parameter order either way.

    Returns:
        The model.

    Raises:
        ValueError: an unknown option, an already-sharded parameter, or an untraceable model.

    Example:
        >>> model = MLP(64, 128, 4, 10, agd_compatible=False)
        >>> torch.manual_seed(0)                       # the same seed on every rank
        >>> arch_init_(model, torch.zeros(2, 64))      # before DDP / FSDP wraps it
    """
    for arg, value, allowed in (("degree", degree, DEGREES), ("fan_mode", fan_mode, FAN_MODES),
                                ("readout", readout, READOUTS)):
        if value not in allowed:
            raise ValueError(f"arch_init_: {arg}={value!r}; expected one of {allowed}")
    refuse_sharded(model, "arch_init_")
    graph = trace_model_graph(model, example_input)
    params = dict(model.named_parameters(remove_duplicate=False))
    for layer in graph.layers.values():
        params[layer.name].normal_(0, arch_init_std(layer, degree=degree, fan_mode=fan_mode, readout=readout),
                                   generator=generator)
        if layer.bias is not None:
            params[layer.bias].zero_()
    for module in model.modules():
        if isinstance(module, NORM_MODULES):
            if getattr(module, "weight", None) is not None:
                module.weight.fill_(1)
            if getattr(module, "bias", None) is not None:
                module.bias.zero_()
    return model
