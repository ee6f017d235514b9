"""Path-length sums of a network DAG without enumerating paths (METHODS.md 5.2, 5.3).

The learning-rate rule needs S = sum over input->output paths p of L_p^3, where L_p counts the weighted
(linear/conv) edges on p plus a constant offset c. Residual nets have exponentially many paths (2^60 for
60 residual blocks), so we never list them. Instead, in topological order, each node v carries the path
moments

    m_j(v) = sum over paths input -> v of l^j,   j = 0..3     (l = weighted edges on the path)

with m(input) = (1, 0, 0, 0). An edge s -> v of weight w lengthens every path through it by w, so by the
binomial theorem it adds sum_{i<=j} C(j, i) w^(j-i) m_i(s) to m_j(v). At the output, (l + c)^3 expands the
same way: S = m_3 + 3c m_2 + 3c^2 m_1 + c^3 m_0. Everything is a Python int: exact at any path count.

Conventions (which offset; reference quirks), AS-R2 of METHODS.md:
- reference MLP/CNN cells: the DAG is the cell only, c = 3 (stem and readout sit outside), base L = [3];
- NB201 cells: c = 1, no R1;
- a traced model (graph.py): the DAG holds every weighted layer, c = 1 (L = weight layers on the path + 1,
  so the one-hidden-layer net, 2 weight layers, has L = 3 as in the reference).
- Quirk R1 (kept, AS-D2): when no path carries a weighted edge (m_1 = 0 at the output) the reference uses
  the single path length [3] whatever the number of paths (`1_11_111` gives 27, not 108), so the lr stays
  at the base lr. `r1_length` sets that length (3 as in the reference; None turns R1 off, as for NB201).
- Quirk R2 (refused, AS-D2): no input->output path at all; the reference's NB201 run calls `exit(0)`;
  here it is a ValueError, since no learning rate follows from an empty path set.

This module is pure integer arithmetic: no torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import comb
from typing import Mapping, Sequence

# The reference's cell codes: 0 no edge, 1 skip (length 0), 2 linear/conv block (length 1).
MLP_CNN_EDGE_WEIGHTS: dict[int, int | None] = {0: None, 1: 0, 2: 1}
# NB201 ops: 0 none, 1 skip, 2 conv1x1, 3 conv3x3, 4 avg-pool 3x3 (the reference's `code012_201` map).
NB201_EDGE_WEIGHTS: dict[int, int | None] = {0: None, 1: 0, 2: 1, 3: 1, 4: 0}

R1_LENGTH = 3  # the reference's L = [3] when no path has a weighted edge (quirk R1)


@dataclass(frozen=True)
class PathDAG:
    """A DAG whose nodes are numbered in topological order: node 0 is the input, the last the output.

    Attributes:
        num_nodes: number of nodes.
        edges: (source, target, weight) triples with source < target; weight = weighted (linear/conv)
            layers along the edge (0 for skip, pooling, normalisation, activation).
        names: optional node names, for messages and summaries.
    """

    num_nodes: int
    edges: tuple[tuple[int, int, int], ...]
    names: tuple[str, ...] = field(default=())

    def __post_init__(self):
        if self.num_nodes < 2:
            raise ValueError(f"PathDAG needs an input and an output node, got num_nodes={self.num_nodes}")
        for s, t, w in self.edges:
            if not 0 <= s < t < self.num_nodes:
                raise ValueError(f"PathDAG edge {(s, t, w)} must satisfy 0 <= source < target < {self.num_nodes} "
                                 "(nodes are numbered in topological order)")
            if w < 0:
                raise ValueError(f"PathDAG edge {(s, t, w)} has a negative weight")
        if self.names and len(self.names) != self.num_nodes:
            raise ValueError(f"PathDAG: {len(self.names)} names for {self.num_nodes} nodes")

    @property
    def output(self) -> int:
        return self.num_nodes - 1

    def in_degrees(self) -> list[int]:
        """Edges into each node (the input counts 1, as in the reference's `get_in_out_degree`)."""
        degree = [0] * self.num_nodes
        for _, t, _ in self.edges:
            degree[t] += 1
        degree[0] = 1
        return degree

    def name(self, node: int) -> str:
        return self.names[node] if self.names else str(node)


def dag_from_code(code: str | Sequence[Sequence[int]],
                  edge_weights: Mapping[int, int | None] = MLP_CNN_EDGE_WEIGHTS) -> PathDAG:
    """The reference's cell string (e.g. "2_02_002": node i+1 lists its edges from nodes 0..i) as a PathDAG.

    Args:
        code: the string, or the list of lists it encodes.
        edge_weights: op code -> weight, None for no edge; `MLP_CNN_EDGE_WEIGHTS` or `NB201_EDGE_WEIGHTS`.

    Raises:
        ValueError: a malformed code, or an op code missing from `edge_weights`.
    """
    rows = [[int(c) for c in row] for row in code.split("_")] if isinstance(code, str) else [list(r) for r in code]
    edges = []
    for i, row in enumerate(rows):
        if len(row) != i + 1:
            raise ValueError(f"dag code {code!r}: node {i + 1} must list {i + 1} incoming edges, got {len(row)}")
        for source, op in enumerate(row):
            if op not in edge_weights:
                raise ValueError(f"dag code {code!r}: unknown op {op}; known ops: {sorted(edge_weights)}")
            if edge_weights[op] is not None:
                edges.append((source, i + 1, edge_weights[op]))
    return PathDAG(len(rows) + 1, tuple(edges))


def node_moments(dag: PathDAG) -> list[tuple[int, int, int, int]]:
    """m_j(v) for every node v, j = 0..3, by one sweep in topological order (edges sorted by source)."""
    m = [[0, 0, 0, 0] for _ in range(dag.num_nodes)]
    m[0][0] = 1
    for s, t, w in sorted(dag.edges):  # every edge into s has a smaller source, so m[s] is final here
        for j in range(4):
            m[t][j] += sum(comb(j, i) * w ** (j - i) * m[s][i] for i in range(j + 1))
    return [tuple(row) for row in m]


def path_moments(dag: PathDAG) -> tuple[int, int, int, int]:
    """(number of paths, sum l, sum l^2, sum l^3) over input->output paths, l = weighted edges on the path."""
    return node_moments(dag)[dag.output]


def sum_cubed_lengths(moments: Sequence[int], offset: int, r1_length: int | None = R1_LENGTH) -> int:
    """S = sum_p (l_p + offset)^3 from the output's path moments, with the reference's quirks.

    Args:
        moments: (m_0, m_1, m_2, m_3) at the output.
        offset: c, the constant added to every path length (3 for reference cells, 1 for traced models).
        r1_length: quirk R1: the single path length used when no path has a weighted edge (m_1 = 0);
            None applies the formula unchanged.

    Raises:
        ValueError: no input->output path (m_0 = 0; quirk R2, refused per AS-D2).
    """
    m0, m1, m2, m3 = moments
    if m0 == 0:
        raise ValueError(
            "no input->output path: the network's output does not depend on its input through the DAG, so no "
            "path-length learning rate exists (METHODS.md AS-D2: the reference exits here). Connect the output "
            "to the input"
        )
    if m1 == 0 and r1_length is not None:
        return r1_length**3
    c = offset
    return m3 + 3 * c * m2 + 3 * c**2 * m1 + c**3 * m0
