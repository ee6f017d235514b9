"""The MLP-cell family of the architecture-aware scaling paper's reference (`models/mlp_dags.py`): the
DAGs on which its learning-rate rule is stated, with parallel paths, skips and in-degrees above one."""

from __future__ import annotations

from torch import nn


def cell_rows(code: str) -> list[list[int]]:
    """'2_02_222' -> [[2], [0, 2], [2, 2, 2]]: row t lists the ops into node t+1 from nodes 0..t."""
    return [[int(c) for c in row] for row in code.split("_")]


class CellMLP(nn.Module):
    """Stem Linear+ReLU (node 0); node t+1 sums, over earlier nodes s, op 2 = Linear+ReLU of node s,
    op 1 = node s itself (a skip), op 0 = nothing; readout Linear of the last node.

    Args:
        code: the reference's cell code, rows joined by '_' (e.g. '2_22_222': 3 nodes, every edge a Linear).
        d_in, width, d_out: input, hidden and output sizes.

    `forward(x, return_all=True)` also returns every node, as the reference's flag does.
    """

    def __init__(self, code: str, d_in: int, width: int, d_out: int):
        super().__init__()
        self.rows = cell_rows(code)
        if any(op not in (0, 1, 2) for row in self.rows for op in row) or any(
            len(row) != t + 1 for t, row in enumerate(self.rows)
        ):
            raise ValueError(f"cell code {code!r}: row t must have t+1 ops from {{0, 1, 2}}, e.g. '2_02_222'")
        self.stem = nn.Sequential(nn.Linear(d_in, width), nn.ReLU())
        self.edges = nn.ModuleDict()
        for t, row in enumerate(self.rows):
            for s, op in enumerate(row):
                if op:
                    self.edges[f"{t}_{s}"] = nn.Sequential(nn.Linear(width, width), nn.ReLU()) if op == 2 else nn.Identity()
        self.readout = nn.Linear(width, d_out)

    def forward(self, x, return_all: bool = False):  # the reference's flag: fixed to its default when traced
        nodes = [self.stem(x)]
        for t, row in enumerate(self.rows):
            nodes.append(sum(self.edges[f"{t}_{s}"](nodes[s]) for s, op in enumerate(row) if op))
        return (nodes, self.readout(nodes[-1])) if return_all else self.readout(nodes[-1])
