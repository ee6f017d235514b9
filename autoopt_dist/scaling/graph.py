"""The DAG of a traced model, for architecture-aware scaling (METHODS.md 5.3).

`trace_model_graph(model, example_input)` traces the bare model with torch.fx, runs the trace once on the
example input (eval mode, no grad: buffers untouched) to tell tensors from sizes, and builds:

- DAG nodes: the input, every tensor where branches are summed (add/sub of two or more tensors that depend
  on the input; a chain of such sums whose inner results feed only the next sum is one node summing all
  operands, as in `sum([a, b, c])`), every concatenation (cat/stack), and the output;
- DAG edges: the chains of single-input operations between nodes; an edge's weight is the number of
  weighted layers on it (nn.Linear, convolutions, F.linear/F.conv*d with a parameter weight): 1 each;
  identity, pooling, normalisation, activation, reshapes, dropout: 0. A tensor used by several chains
  (x feeding a conv and a skip) gives one edge per chain, so every input->output path is counted once.
- per weighted layer: its source degree (the in-degree of the DAG node it reads through weight-0 ops; 1
  when it reads another weighted layer's output or the input) and its target degree (the largest in-degree
  of the nodes its output reaches through weight-0 ops; 1 for a weighted layer or the output), and whether
  it is a readout (its output reaches the model output through weight-0 ops only).

In-degree is the number of summed branches: the variance of a sum of k independent unit-variance branches
is k. A concatenation does not add variances, so it counts 1 for the init (its inputs still give separate
paths). Refused, with the node and module named: other ops combining two input-dependent tensors (products,
matmul, attention), leaf modules holding matrices that are not linear/conv (Embedding, MultiheadAttention,
RNNs), and models with several tensor inputs or outputs.

Known limitation: a branch multiplied by a constant zero (the reference's `Zero` op, `x * 0`) is traced as a
weight-0 edge, not as a missing edge: build such cells without the zero branch.
"""

from __future__ import annotations

import inspect
import math
import operator
from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from .paths import PathDAG

WEIGHTED_MODULES: tuple[type[nn.Module], ...] = (nn.Linear, nn.modules.conv._ConvNd)
WEIGHTED_FUNCTIONS = {F.linear, F.conv1d, F.conv2d, F.conv3d, torch.conv1d, torch.conv2d, torch.conv3d}
SUM_FUNCTIONS = {operator.add, operator.sub, operator.iadd, operator.isub, torch.add, torch.sub}
SUM_METHODS = {"add", "add_", "sub", "sub_"}
JOIN_FUNCTIONS = {torch.cat, torch.concat, torch.concatenate, torch.stack}


@dataclass(frozen=True)
class WeightedLayer:
    """A linear or conv layer on the DAG, with the structure the init and the kernel factor need.

    Attributes:
        name: FQN of the weight parameter in the bare model.
        bias: FQN of its bias, or None.
        shape: full weight shape (out, in, *kernel).
        source_degree: in-degree of the node it reads (METHODS.md AS-D1, the reference's choice).
        target_degree: in-degree of the node its output feeds (the variance-preserving reading).
        readout: its output reaches the model output through weight-0 operations only.
    """

    name: str
    bias: str | None
    shape: tuple[int, ...]
    source_degree: int
    target_degree: int
    readout: bool

    @property
    def fan_in(self) -> int:
        return self.shape[1] * math.prod(self.shape[2:])

    @property
    def fan_out(self) -> int:
        return self.shape[0] * math.prod(self.shape[2:])

    @property
    def kernel_side(self) -> float | None:
        """Side of the kernel (geometric mean of its dims: k for k x k), None for a dense weight."""
        kernel = self.shape[2:]
        return math.prod(kernel) ** (1 / len(kernel)) if kernel else None


@dataclass(frozen=True)
class ModelGraph:
    """A traced model's DAG and weighted layers.

    Attributes:
        dag: nodes in topological order (0 = input, last = output), edges weighted by linear/conv count.
        in_degrees: per DAG node, the number of summed branches (1 for input, concatenations, output).
        layers: weight FQN -> WeightedLayer, in the model's parameter order.
    """

    dag: PathDAG
    in_degrees: tuple[int, ...]
    layers: dict[str, WeightedLayer]

    def kernel_side(self) -> float | None:
        """The typical conv kernel side k: the most common side among convolutions with side > 1 (ties to
        the larger; 1x1 projections are ignored unless every conv is 1x1); None without convolutions.

        The reference CNNs use one k everywhere; ResNets mix a 7x7 stem, 3x3 bodies and 1x1 projections,
        and their body (the most common spatial kernel) is what the reference's `3/k` factor is about.
        """
        sides = [layer.kernel_side for layer in self.layers.values() if layer.kernel_side is not None]
        if not sides:
            return None
        spatial = [s for s in sides if s > 1] or sides
        counts = Counter(round(s, 9) for s in spatial)
        return max(counts, key=lambda s: (counts[s], s))


class _ModuleTrackingTracer(fx.Tracer):
    """A tracer that remembers the innermost module whose forward raised, to name it in the error."""

    def call_module(self, m, forward, args, kwargs):
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception as err:
            if not hasattr(err, "_arch_module"):
                err._arch_module = (self.path_of_module(m), type(m).__name__)
            raise


def _trace(model: nn.Module) -> fx.GraphModule:
    # Extra forward arguments with defaults (`return_all=False`) are fixed to their defaults, so that
    # flags like the reference models' do not become data-dependent control flow.
    params = list(inspect.signature(model.forward).parameters.values())[1:]
    concrete = {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}
    tracer = _ModuleTrackingTracer()
    try:
        graph = tracer.trace(model, concrete_args=concrete or None)
    except Exception as err:
        where, kind = getattr(err, "_arch_module", ("", type(model).__name__))
        where = f"module {where!r} ({kind})" if where else f"the model's own forward ({kind})"
        raise ValueError(
            f"architecture-aware scaling: torch.fx cannot trace {where}: {type(err).__name__}: {err}. "
            "The path DAG needs a static graph: remove Python control flow that depends on tensor values "
            "(if/for on a tensor, x.shape used in range()), or move such code into a function decorated with "
            "torch.fx.wrap so it is recorded as one operation"
        ) from err
    return fx.GraphModule(tracer.root, graph)


class _TensorMarker(fx.Interpreter):
    """Runs the trace once and records which nodes produce tensors (or tuples of tensors), not sizes."""

    def __init__(self, gm: fx.GraphModule):
        super().__init__(gm)
        self.is_tensor: dict[fx.Node, bool] = {}

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        if isinstance(result, (tuple, list)):
            self.is_tensor[n] = any(isinstance(r, torch.Tensor) for r in result)
        else:
            self.is_tensor[n] = isinstance(result, torch.Tensor)
        return result


def _flat_nodes(args: Any) -> list[fx.Node]:
    out: list[fx.Node] = []
    fx.node.map_arg(args, out.append)
    return out


def _where(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    module = next(reversed(stack.values()))[0] if stack else ""
    return f"node {node.name!r} ({node.op} {getattr(node.target, '__name__', node.target)})" + (
        f" in module {module!r}" if module else ""
    )


def trace_model_graph(model: nn.Module, example_input: torch.Tensor) -> ModelGraph:
    """Trace `model` and build its path DAG and weighted layers (see the module docstring).

    Args:
        model: the bare (unwrapped) model, with full parameters.
        example_input: one input batch (any batch size); run once in eval mode under no_grad.

    Raises:
        TypeError: `example_input` is not a tensor.
        ValueError: the model cannot be traced (the module is named), or its output does not depend on its
            input, or it returns several tensors.
        NotImplementedError: an operation the DAG rules do not cover (the node and module are named).
    """
    if not isinstance(example_input, torch.Tensor):
        raise TypeError(
            f"example_input must be one tensor (a batch the model accepts), got {type(example_input).__name__}; "
            "models with several inputs are not supported"
        )
    gm = _trace(model)
    marker = _TensorMarker(gm)
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()  # BatchNorm must not update its running statistics on the example batch
        with torch.no_grad():
            marker.run(example_input.detach().clone())  # clone: in-place ops must not touch the caller's batch
    finally:
        for m, mode in modes.items():
            m.training = mode

    nodes = list(gm.graph.nodes)
    placeholders = [n for n in nodes if n.op == "placeholder"]
    input_node = placeholders[0]
    params = dict(model.named_parameters(remove_duplicate=False))  # tied weights: every alias

    # Nodes carrying tensors that depend on the input, with their input-dependent tensor operands (with
    # multiplicity: x + x sums two branches).
    data: dict[fx.Node, list[fx.Node]] = {input_node: []}
    for n in nodes:
        if n.op in ("placeholder", "get_attr", "output") or not marker.is_tensor.get(n, False):
            continue
        operands = [a for a in _flat_nodes((n.args, n.kwargs)) if a in data]
        if operands:
            data[n] = operands

    (output_arg,) = gm.graph.output_node().args
    outputs = [a for a in _flat_nodes(output_arg) if a in data]
    if not outputs:
        raise ValueError("architecture-aware scaling: the model's output does not depend on its input, so it has "
                         "no input->output path (METHODS.md AS-D2)")
    if len(outputs) > 1 or outputs[0] is not output_arg:
        raise ValueError("architecture-aware scaling: the model must return one tensor (the logits); it returns "
                         f"{type(output_arg).__name__} holding {len(outputs)} input-dependent tensors")

    kind: dict[fx.Node, str] = {input_node: "input"}
    weight_of: dict[fx.Node, int] = {}
    layer_params: dict[fx.Node, tuple[str, str | None]] = {}  # weighted node -> (weight FQN, bias FQN)
    for n, operands in data.items():
        if n is input_node:
            continue
        is_sum = (n.op == "call_function" and n.target in SUM_FUNCTIONS) or (
            n.op == "call_method" and n.target in SUM_METHODS
        )
        if len(operands) >= 2:
            if is_sum:
                kind[n] = "sum"
            elif n.op == "call_function" and n.target in JOIN_FUNCTIONS:
                kind[n] = "join"
            else:
                raise NotImplementedError(
                    f"architecture-aware scaling: {_where(n)} combines {len(operands)} input-dependent tensors, "
                    "and only sums (add/sub) and concatenations (cat/stack) have a DAG rule (METHODS.md 5.3); "
                    "products, matmuls and attention have none"
                )
            continue
        kind[n] = "op"
        weight_of[n] = 0
        if n.op == "call_module":
            module = gm.get_submodule(n.target)
            if isinstance(module, WEIGHTED_MODULES):
                weight_of[n] = 1
                bias = f"{n.target}.bias" if getattr(module, "bias", None) is not None else None
                layer_params[n] = (f"{n.target}.weight", bias)
            elif any(p.dim() >= 2 for p in module.parameters()):
                raise NotImplementedError(
                    f"architecture-aware scaling: {_where(n)} is a {type(module).__name__} holding matrices; only "
                    "nn.Linear and convolutions count as weighted layers (METHODS.md 5.3). Express it with "
                    "nn.Linear / nn.Conv*d, or initialise and scale it yourself"
                )
        else:
            attrs = [a for a in _flat_nodes((n.args, n.kwargs)) if a.op == "get_attr" and a.target in params]
            if n.op == "call_function" and n.target in WEIGHTED_FUNCTIONS:
                weight = n.args[1] if len(n.args) > 1 else n.kwargs.get("weight")
                bias = n.args[2] if len(n.args) > 2 else n.kwargs.get("bias")
                if isinstance(weight, fx.Node) and weight.op == "get_attr" and weight.target in params:
                    weight_of[n] = 1
                    bias_name = bias.target if isinstance(bias, fx.Node) and bias.op == "get_attr" else None
                    layer_params[n] = (weight.target, bias_name)
                    continue
            if any(params[a.target].dim() >= 2 for a in attrs):
                raise NotImplementedError(
                    f"architecture-aware scaling: {_where(n)} uses a parameter matrix outside nn.Linear / "
                    "convolutions, which have no DAG rule; express it with nn.Linear / nn.Conv*d or F.linear / "
                    "F.conv*d"
                )

    users: dict[fx.Node, list[fx.Node]] = {n: [] for n in data}
    for n, operands in data.items():
        for a in set(operands):
            users[a].append(n)
    output_user = outputs[0]

    # A sum whose only use is as one operand of another sum is part of that sum: a + b + c is one node
    # summing three branches (in-degree 3), as in the reference's `sum(list)`.
    merged = {
        n for n in kind if kind[n] == "sum" and n is not output_user and len(users[n]) == 1
        and kind.get(users[n][0]) == "sum" and data[users[n][0]].count(n) == 1
    }

    def summands(n: fx.Node) -> list[fx.Node]:
        out = []
        for a in data[n]:
            out += summands(a) if a in merged else [a]
        return out

    dag_nodes = [n for n in data if kind[n] in ("input", "join") or (kind[n] == "sum" and n not in merged)]
    index = {n: i for i, n in enumerate(dag_nodes)}
    out_index = len(dag_nodes)
    in_degrees = [len(summands(n)) if kind[n] == "sum" else 1 for n in dag_nodes] + [1]

    def walk_back(n: fx.Node) -> tuple[int, int]:
        """From a tensor back through single-input ops to a DAG node: (its index, weighted layers passed)."""
        w = 0
        while n not in index:
            w += weight_of[n]
            (n,) = data[n]
        return index[n], w

    edges = []
    for v in dag_nodes[1:]:
        for a in summands(v) if kind[v] == "sum" else data[v]:
            s, w = walk_back(a)
            edges.append((s, index[v], w))
    s, w = walk_back(output_user)
    edges.append((s, out_index, w))
    names = tuple(n.name for n in dag_nodes) + ("output",)
    dag = PathDAG(out_index + 1, tuple(edges), names)

    def source_degree(n: fx.Node) -> int:
        (a,) = data[n]
        while a not in index and weight_of[a] == 0:
            (a,) = data[a]
        return in_degrees[index[a]] if a in index else 1

    def targets(n: fx.Node) -> tuple[int, bool]:
        """(largest in-degree reached through weight-0 ops, whether the output is reached that way)."""
        degree, readout, stack, seen = 1, n is output_user, list(users[n]), set()
        while stack:
            u = stack.pop()
            if u in seen:
                continue
            seen.add(u)
            if u in merged:
                stack += users[u]
            elif u in index:
                degree = max(degree, in_degrees[index[u]])
            elif weight_of[u] == 0:
                readout |= u is output_user
                stack += users[u]
        return degree, readout

    layers: dict[str, WeightedLayer] = {}
    for n, (weight, bias) in layer_params.items():
        target, readout = targets(n)
        source = source_degree(n)
        if weight in layers:  # a layer called at several places: the largest degrees, readout if any call is
            old = layers[weight]
            source, target = max(source, old.source_degree), max(target, old.target_degree)
            readout |= old.readout
        layers[weight] = WeightedLayer(weight, bias, tuple(params[weight].shape), source, target, readout)
    order = {name: i for i, name in enumerate(params)}
    layers = dict(sorted(layers.items(), key=lambda kv: order[kv[0]]))
    return ModelGraph(dag, tuple(in_degrees), layers)
