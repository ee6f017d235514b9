"""Architecture-aware scaling (METHODS.md section 5) against independent oracles written here.

- Path sums: explicit enumeration of every input->output path (exact integers) on hand-built DAGs, on all
  59,049 reference MLP/CNN cells (the R1 count 7,848 is METHODS.md's, measured on the reference), on the raw
  torch.fx graph of traced models (no collapsing: an oracle independent of graph.py), and closed forms for
  residual chains (k blocks, each a skip and one weighted edge: sum over subsets, 2^60 paths).
- Reference numbers (METHODS.md AS-R2): chains with 1/3/5 hidden layers give 1 / 0.4648 / 0.2806; 5 weight
  layers (3 cell edges) give L = 6 and 0.354; `1_11_111` gives 27 in the cell convention.
- Init: empirical std of large layers against sqrt(2 / (fan * indeg)) from the full shape, with in-degree 2
  after a residual add; the reference MLP cell's per-layer std from its own degree rule.
- Refusals: sharded parameters, untraceable modules, no input->output path, ops without a DAG rule.
- Real data: on digits, the lr predicted for 4- and 8-layer MLPs from the 2-layer net's grid-best lr lands
  within a factor 3 of their own grid-best lr (measured ratios in the test's comment).
"""

from __future__ import annotations

import inspect
import itertools
import math
import random

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from autoopt_dist.models import MLP, CellMLP, cell_rows, resnet18, resnet50
from autoopt_dist.scaling import (
    NB201_EDGE_WEIGHTS,
    PathDAG,
    arch_init_,
    arch_init_std,
    arch_lr,
    dag_from_code,
    path_moments,
    path_summary,
    scaled_lr,
    sum_cubed_lengths,
    trace_model_graph,
)

# ----------------------------------------------------------------------------- oracles (written from the spec)


def enumerate_path_lengths(num_nodes, edges):
    """Every path 0 -> num_nodes-1 by depth-first search; each path's length = sum of its edge weights."""
    out_edges = {}
    for s, t, w in edges:
        out_edges.setdefault(s, []).append((t, w))
    lengths = []

    def dfs(node, length):
        if node == num_nodes - 1:
            lengths.append(length)
            return
        for t, w in out_edges.get(node, []):
            dfs(t, length + w)

    dfs(0, 0)
    return lengths


def reference_sum_cubed(lengths, offset):
    """The reference's rule: L = l + offset; no weighted path (all l = 0, or no path) -> L = [3] (R1)."""
    if sum(lengths) == 0:
        return 27
    return sum((l + offset) ** 3 for l in lengths)


def code_edges(code):
    """Reference cell code -> (source, target, weight); op 0 none, 1 skip (0), 2 linear (1)."""
    return [(s, t + 1, op - 1) for t, row in enumerate(cell_rows(code)) for s, op in enumerate(row) if op]


def fx_path_lengths(model):
    """Every input->output path of the raw fx graph (every node, nothing collapsed): weighted layers on it.

    Independent of graph.py: a node's data inputs are its Node arguments except parameters (get_attr), with
    multiplicity; weighted = nn.Linear / nn.Conv2d modules and F.linear calls."""
    flags = {"return_all": False} if "return_all" in inspect.signature(model.forward).parameters else None
    gm = fx.symbolic_trace(model, concrete_args=flags)
    placeholder = next(n for n in gm.graph.nodes if n.op == "placeholder")

    def is_weighted(n):
        if n.op == "call_module":
            return isinstance(gm.get_submodule(n.target), (nn.Linear, nn.Conv2d))
        return n.op == "call_function" and n.target is F.linear

    def inputs(n):
        found = []
        fx.node.map_arg((n.args, n.kwargs), found.append)
        return [a for a in found if a.op != "get_attr"]

    lengths = []

    def dfs(n, length):
        if n is placeholder:
            lengths.append(length)
            return
        for a in inputs(n):
            dfs(a, length + is_weighted(n))

    dfs(gm.graph.output_node(), 0)
    return lengths


def moments_of(lengths):
    return tuple(sum(l**j for l in lengths) for j in range(4))


# ----------------------------------------------------------------------------- small models


class Residual(nn.Module):
    """x + relu(linear(x)): a skip (length 0) and one weighted edge (length 1)."""

    def __init__(self, width):
        super().__init__()
        self.linear = nn.Linear(width, width)

    def forward(self, x):
        return x + torch.relu(self.linear(x))


class ResidualChain(nn.Module):
    """stem, k residual blocks, readout: paths = subsets S of blocks, L = |S| + 2 weight layers + 1."""

    def __init__(self, k, width=3, d_in=4, d_out=2):
        super().__init__()
        self.stem = nn.Linear(d_in, width)
        self.blocks = nn.Sequential(*[Residual(width) for _ in range(k)])
        self.readout = nn.Linear(width, d_out)

    def forward(self, x):
        return self.readout(self.blocks(torch.relu(self.stem(x))))


def Cell(code, width=4, d_in=5, d_out=3):
    """The reference's MLP cell (`models/mlp_dags.py`) at test sizes."""
    return CellMLP(code, d_in=d_in, width=width, d_out=d_out)


class Branches(nn.Module):
    """A three-way sum (in-degree 3), a concatenation and a functional F.linear."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)
        self.c = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))
        self.w = nn.Parameter(torch.randn(3, 8))

    def forward(self, x):
        h = self.a(x) + self.b(x) + self.c(x)  # one node summing 3 branches
        y = torch.cat([h, torch.relu(x)], dim=1)  # a join: 2 more paths through x
        return F.linear(y, self.w)


# ----------------------------------------------------------------------------- path sums


def test_moments_match_enumeration_on_random_dags():
    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(2, 7)
        edges = [(s, t, rng.choice([0, 0, 1, 1, 2, 3])) for t in range(1, n) for s in range(t) for _ in
                 range(rng.choice([0, 1, 1, 2]))]
        lengths = enumerate_path_lengths(n, edges)
        dag = PathDAG(n, tuple(edges))
        if not lengths:
            with pytest.raises(ValueError, match="no input->output path"):
                sum_cubed_lengths(path_moments(dag), offset=1)
            continue
        assert path_moments(dag) == moments_of(lengths)
        for c in (0, 1, 3):
            assert sum_cubed_lengths(path_moments(dag), c, r1_length=None) == sum((l + c) ** 3 for l in lengths)


def test_all_reference_cells_match_enumeration_and_r1_count():
    """All 3^10 MLP/CNN cells with 5 nodes: S as the reference computes it; METHODS.md's R1 count 7,848."""
    r1 = 0
    for ops in itertools.product((0, 1, 2), repeat=10):
        it = iter(ops)
        code = "_".join("".join(str(next(it)) for _ in range(r)) for r in (1, 2, 3, 4))
        lengths = enumerate_path_lengths(5, code_edges(code))
        r1 += sum(lengths) == 0
        moments = path_moments(dag_from_code(code))
        if not lengths:  # AS-D2: refused (the reference's MLP/CNN falls into R1 here, NB201 exits)
            with pytest.raises(ValueError, match="AS-D2"):
                sum_cubed_lengths(moments, offset=3)
        elif ops[:3] == (2, 0, 2) or ops[-4:] == (1, 2, 1, 2):  # a spread subset, enumeration is the slow part
            assert sum_cubed_lengths(moments, offset=3) == reference_sum_cubed(lengths, 3)
        assert moments == moments_of(lengths)
    assert r1 == 7848


def test_reference_numbers():
    def reference_lr(lr, depths_base, depths):  # main.py's auto_scale_lr_depth_width
        return lr * (np.array(depths, float) ** 3).sum() ** -0.5 / (np.array(depths_base, float) ** 3).sum() ** -0.5

    # Cell convention (offset 3): chains of 0/2/4 cell edges = 1/3/5 hidden layers, and 3 edges (5 layers).
    for code, L, factor in (("1", 3, 1.0), ("2_02", 5, 0.4648), ("2_02_002_0002", 7, 0.2806), ("2_02_002", 6, 0.354)):
        S = sum_cubed_lengths(path_moments(dag_from_code(code)), offset=3)
        assert S == L**3
        assert scaled_lr(1.0, S) == pytest.approx(reference_lr(1.0, [3], [L]))
        assert scaled_lr(1.0, S) == pytest.approx(factor, abs=5e-4)
    # Traced models (offset 1): MLPs with 2/4/6/5 weight layers give the same numbers.
    for depth, factor in ((2, 1.0), (4, 0.4648), (6, 0.2806), (5, 0.354)):
        model = MLP(6, 5, depth, 3, agd_compatible=False)
        assert arch_lr(model, torch.zeros(2, 6), 0.1) == pytest.approx(0.1 * factor, abs=5e-5)
        assert path_summary(model, torch.zeros(2, 6)).sum_cubed == (depth + 1) ** 3
    # Quirk R1 in the cell convention: 4 skip-only paths give 27, not 108.
    assert sum_cubed_lengths(path_moments(dag_from_code("1_11_111")), offset=3) == 27
    assert sum_cubed_lengths(path_moments(dag_from_code("1_11_111")), offset=3, r1_length=None) == 108
    # NB201 convention (offset 1, no R1): "1_01_001" is the base, [1]; conv3x3 and avg-pool codes map to 1 and 0.
    assert sum_cubed_lengths(path_moments(dag_from_code("1_01_001", NB201_EDGE_WEIGHTS)), 1, None) == 1
    lengths = enumerate_path_lengths(4, [(0, 1, 1), (0, 2, 0), (1, 2, 1), (0, 3, 0), (2, 3, 1)])  # "3_43_403"
    nb = path_moments(dag_from_code("3_43_403", NB201_EDGE_WEIGHTS))
    assert sum_cubed_lengths(nb, 1, None) == sum((1 + l) ** 3 for l in lengths)


@pytest.mark.parametrize("k", [1, 7, 60])
def test_residual_chain_closed_form(k):
    """k blocks of (skip, one weighted edge): paths = subsets S, l = |S|; S_c = sum_s C(k, s) (s + c)^3."""
    edges = tuple(e for i in range(k) for e in ((i, i + 1, 1), (i, i + 1, 0)))
    moments = path_moments(PathDAG(k + 1, edges))
    assert moments[0] == 2**k
    for c in (1, 3):
        assert sum_cubed_lengths(moments, c) == sum(math.comb(k, s) * (s + c) ** 3 for s in range(k + 1))
    # The traced model: stem and readout add 2 weight layers to every path, L = |S| + 3.
    summary = path_summary(ResidualChain(k), torch.zeros(2, 4))
    assert summary.num_paths == 2**k
    assert summary.sum_cubed == sum(math.comb(k, s) * (s + 3) ** 3 for s in range(k + 1))
    if k <= 7:
        assert summary.moments == moments_of([l for l in fx_path_lengths(ResidualChain(k))])
    assert set(summary.in_degrees.values()) == ({1, 2} if k else {1})


@pytest.mark.parametrize("model,x", [
    (MLP(5, 4, 3, 2, agd_compatible=True), torch.zeros(2, 5)),  # ScaledReLU is traced through (x * const)
    (Branches(), torch.zeros(2, 4)),
    (ResidualChain(5), torch.zeros(2, 4)),
    (Cell("2_12_212"), torch.zeros(2, 5)),
], ids=["mlp", "branches", "residual", "cell"])
def test_traced_moments_match_raw_fx_enumeration(model, x):
    assert path_summary(model, x).moments == moments_of(fx_path_lengths(model))


def test_branches_in_degrees_and_join():
    graph = trace_model_graph(Branches(), torch.zeros(2, 4))
    assert sorted(graph.in_degrees) == [1, 1, 1, 3]  # input, the 3-way sum, the cat (counts 1), output
    layers = graph.layers
    names = ("a.weight", "b.weight", "c.0.weight", "c.2.weight", "w")
    assert [layers[n].source_degree for n in names] == [1] * 5
    assert [layers[n].target_degree for n in names] == [3, 3, 1, 3, 1]
    assert [n for n, l in layers.items() if l.readout] == ["w"]
    # paths: a, b, c (2 layers) and relu(x) through the cat, each then through w.
    assert sorted(fx_path_lengths(Branches())) == [1, 2, 2, 3]


CELL_CODES = ["2_02_002", "2_22_222", "2_12_112", "2_02_222", "1_21_122", "2_22_222_2222"]


@pytest.mark.parametrize("code", CELL_CODES + ["1_11_111"])
def test_traced_reference_cell_matches_cell_convention(code):
    """The traced reference MLP (offset 1 over stem + cell + readout) gives the cell convention's S (offset 3),
    except where R1 fires in the cell (no weighted cell edge): the traced model counts every path."""
    lengths = enumerate_path_lengths(len(cell_rows(code)) + 1, code_edges(code))
    summary = path_summary(Cell(code), torch.zeros(2, 5))
    assert summary.num_paths == len(lengths)
    assert summary.sum_cubed == sum((l + 3) ** 3 for l in lengths)  # 108 for 1_11_111 (cell convention: 27)
    if sum(lengths) > 0:
        assert summary.sum_cubed == reference_sum_cubed(lengths, 3)


@pytest.mark.parametrize("code", CELL_CODES)
def test_reference_cell_init_degrees(code):
    """AS-R1/AS-D1: a cell edge from node s has degree = nonzero edges into s (the input node counts 1);
    stem and readout degree 1; fan_out mode; readout std 2/classes. Written from `get_in_out_degree`."""
    rows = cell_rows(code)
    in_degree = [1] + [sum(op > 0 for op in row) for row in rows]
    width, classes = 4, 3
    graph = trace_model_graph(Cell(code, width=width, d_out=classes), torch.zeros(2, 5))
    expected = {"stem.0.weight": math.sqrt(2 / width), "readout.weight": 2 / classes}
    for t, row in enumerate(rows):
        for s, op in enumerate(row):
            if op == 2:
                expected[f"edges.{t}_{s}.0.weight"] = math.sqrt(2 / (width * max(1, in_degree[s])))
    got = {n: arch_init_std(layer, degree="source", fan_mode="fan_out", readout="reference")
           for n, layer in graph.layers.items()}
    assert got == pytest.approx(expected)


def test_resnet18_and_50_paths_against_enumeration():
    # ResNet-18: 8 basic blocks, each a 2-conv branch and a skip (3 are 1x1 projections); stem and fc.
    model = resnet18(num_classes=10)
    summary = path_summary(model, torch.zeros(1, 3, 32, 32))
    lengths = fx_path_lengths(model)
    assert len(lengths) == summary.num_paths == 2**8
    assert summary.moments == moments_of(lengths)
    assert summary.sum_cubed == sum((l + 1) ** 3 for l in lengths)
    assert sorted(summary.in_degrees.values()) == [1, 1] + [2] * 8
    assert summary.kernel_side == 3  # 7x7 stem, 3x3 bodies, 1x1 projections
    assert model.layer2[0].downsample is not None and summary.layers["layer2.0.downsample.0.weight"].source_degree == 2
    assert summary.layers["layer1.0.conv1.weight"].source_degree == 1  # reads the stem (max-pooled)
    assert summary.layers["layer1.1.conv1.weight"].source_degree == 2  # reads relu(conv branch + skip)
    assert summary.layers["layer1.1.conv2.weight"].source_degree == 1
    assert summary.layers["fc.weight"].readout and summary.layers["fc.weight"].source_degree == 2
    # ResNet-50: 16 bottlenecks (a 3-conv branch; the first of each stage projects its skip): product over blocks.
    summary = path_summary(resnet50(num_classes=10), torch.zeros(1, 3, 32, 32))
    blocks = [(3, 1 if j == 0 else 0) for n in (3, 4, 6, 3) for j in range(n)]
    lengths = [2 + sum(b[c] for b, c in zip(blocks, choice)) for choice in itertools.product((0, 1), repeat=16)]
    assert summary.num_paths == 2**16
    assert summary.moments == moments_of(lengths)
    assert summary.sum_cubed == sum((l + 1) ** 3 for l in lengths)
    assert arch_lr(resnet50(num_classes=10), torch.zeros(1, 3, 32, 32), 1.0) == pytest.approx(
        math.sqrt(27 / sum((l + 1) ** 3 for l in lengths)))  # k = 3: no kernel factor


def test_kernel_factor():
    def cnn(k):  # conv (k x k) + linear: one path of 2 weight layers, S = 27
        return nn.Sequential(nn.Conv2d(2, 3, k, padding=k // 2), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 36, 2))

    x = torch.zeros(1, 2, 6, 6)
    assert arch_lr(cnn(5), x, 1.0) == pytest.approx(3 / 5)
    assert arch_lr(cnn(5), x, 1.0, kernel_size_factor=False) == pytest.approx(1.0)
    assert arch_lr(cnn(3), x, 1.0, base_model=cnn(5)) == pytest.approx(5 / 3)
    mlp = MLP(72, 4, 2, 2)
    assert arch_lr(mlp, x, 1.0, base_model=cnn(5)) == pytest.approx(1.0)  # no convs in the target: no factor
    assert arch_lr(cnn(3), x, 1.0, base_model=MLP(72, 4, 4, 2)) == pytest.approx(math.sqrt(125 / 27))


# ----------------------------------------------------------------------------- init


class Wide(nn.Module):
    """stem -> relu -> h; y = h + relu(block(h)); head reads relu(y), a node summing 2 branches."""

    def __init__(self, d_in=256, width=1024, d_out=512):
        super().__init__()
        self.stem, self.block, self.head = nn.Linear(d_in, width), nn.Linear(width, width), nn.Linear(width, d_out)
        self.norm = nn.LayerNorm(width)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        y = self.norm(h + torch.relu(self.block(h)))
        return self.head(torch.relu(y))


def _std(t):
    return t.double().std().item()


@pytest.mark.parametrize("fan_mode", ["fan_in", "fan_out"])
def test_init_std_full_shape_and_residual_degree(fan_mode):
    torch.manual_seed(0)
    model = Wide()
    with torch.no_grad():
        for p in model.parameters():
            p.uniform_(-3, 3)
    arch_init_(model, torch.zeros(2, 256), fan_mode=fan_mode)
    fan = {"stem": (256, 1024), "block": (1024, 1024), "head": (1024, 512)}
    pick = 0 if fan_mode == "fan_in" else 1
    for name, degree in (("stem", 1), ("block", 1), ("head", 2)):  # head reads the residual sum
        want = math.sqrt(2 / (fan[name][pick] * degree))
        assert _std(getattr(model, name).weight) == pytest.approx(want, rel=0.02), name
        assert abs(getattr(model, name).weight.double().mean().item()) < 0.05 * want
        assert torch.count_nonzero(getattr(model, name).bias) == 0
    assert torch.all(model.norm.weight == 1) and torch.all(model.norm.bias == 0)


def test_init_target_degree_and_reference_readout():
    torch.manual_seed(1)
    model = arch_init_(Wide(), torch.zeros(2, 256), degree="target", readout="reference", fan_mode="fan_out")
    # target: stem and block outputs are summed (in-degree 2); the head feeds the output (1).
    assert _std(model.stem.weight) == pytest.approx(math.sqrt(2 / (1024 * 2)), rel=0.02)
    assert _std(model.block.weight) == pytest.approx(math.sqrt(2 / (1024 * 2)), rel=0.02)
    assert _std(model.head.weight) == pytest.approx(2 / 512, rel=0.02)  # AS-R1: 2 / fan_out, not sqrt


def test_init_conv_fan_includes_kernel_and_bn_affine():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(64, 128, 3, padding=1), nn.BatchNorm2d(128), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(128, 10))
    with torch.no_grad():
        model[1].weight.fill_(5)
        model[1].bias.fill_(5)
    arch_init_(model, torch.zeros(2, 64, 4, 4))
    assert _std(model[0].weight) == pytest.approx(math.sqrt(2 / (64 * 9)), rel=0.03)
    assert torch.all(model[1].weight == 1) and torch.all(model[1].bias == 0)
    arch_init_(model, torch.zeros(2, 64, 4, 4), fan_mode="fan_out")
    assert _std(model[0].weight) == pytest.approx(math.sqrt(2 / (128 * 9)), rel=0.03)


def test_init_is_deterministic_per_seed_and_draws_full_tensors():
    """Same seed -> the same full tensors (what every rank draws before the engine shards them)."""
    def draw(seed, generator=False):
        torch.manual_seed(123)
        model = ResidualChain(3, width=8)
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed) if generator else None
        arch_init_(model, torch.zeros(2, 4), generator=gen)
        return [p.detach().clone() for p in model.parameters()]

    a, b, c = draw(7), draw(7), draw(8)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))
    assert all(torch.equal(x, y) for x, y in zip(draw(7, True), draw(7, True)))


def test_tracing_leaves_model_and_input_untouched():
    torch.manual_seed(0)
    model = nn.Sequential(nn.ReLU(inplace=True), nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.Flatten(), nn.Linear(12, 2))
    model.train()
    model[2].running_mean.fill_(0.5)
    x = torch.randn(4, 2, 4, 4)
    x_before = x.clone()
    path_summary(model, x)
    assert torch.equal(x, x_before)  # the in-place ReLU ran on a copy
    assert torch.all(model[2].running_mean == 0.5) and model[2].num_batches_tracked == 0
    assert all(m.training for m in model.modules())


# ----------------------------------------------------------------------------- refusals


def test_refuses_sharded_parameters():
    for attr, engine in (("_fsdp_flattened", "FSDP1"), ("ds_id", "DeepSpeed")):
        model = MLP(4, 3, 2, 2)
        setattr(model.layers[0].weight, attr, True)
        with pytest.raises(ValueError, match=rf"layers\.0\.weight.*{engine}.*before wrapping"):
            arch_init_(model, torch.zeros(1, 4))
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    own_group = not dist.is_initialized()
    if own_group:
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (dist.get_world_size(),))
        model = MLP(4, 3, 2, 2)
        model.layers[1].weight = nn.Parameter(distribute_tensor(model.layers[1].weight.detach(), mesh, [Shard(0)]))
        with pytest.raises(ValueError, match=r"layers\.1\.weight.*FSDP2/DTensor.*before wrapping"):
            arch_init_(model, torch.zeros(1, 4))
    finally:
        if own_group:
            dist.destroy_process_group()


class DataDependent(nn.Module):
    def forward(self, x):
        return x if x.sum() > 0 else -x


def test_untraceable_module_is_named_with_the_fix():
    model = nn.Sequential(nn.Linear(3, 3), DataDependent(), nn.Linear(3, 2))
    with pytest.raises(ValueError, match=r"module '1' \(DataDependent\).*control flow.*torch\.fx\.wrap"):
        arch_init_(model, torch.zeros(1, 3))
    with pytest.raises(ValueError, match="DataDependent"):
        arch_lr(model, torch.zeros(1, 3), 0.1)


class Constant(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2)

    def forward(self, x):
        return self.lin(torch.ones(1, 3))


class Gated(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 3)

    def forward(self, x):
        return x * torch.sigmoid(self.lin(x))


class TwoOutputs(nn.Module):
    def forward(self, x):
        return x, -x


class Embed(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 3)

    def forward(self, x):
        return self.emb(x.long()).sum(1)


def test_refuses_models_outside_the_dag_rules():
    with pytest.raises(ValueError, match="does not depend on its input.*AS-D2"):
        path_summary(Constant(), torch.zeros(1, 3))
    with pytest.raises(ValueError, match="no input->output path.*AS-D2"):
        sum_cubed_lengths(path_moments(dag_from_code("0_01")), offset=3)
    with pytest.raises(NotImplementedError, match="mul.*only sums"):
        path_summary(Gated(), torch.zeros(1, 3))
    with pytest.raises(ValueError, match="one tensor"):
        path_summary(TwoOutputs(), torch.zeros(1, 3))
    with pytest.raises(NotImplementedError, match=r"'emb'.*Embedding"):
        arch_init_(Embed(), torch.zeros(1, 3))
    with pytest.raises(TypeError, match="example_input"):
        path_summary(MLP(3, 2, 2, 2), [torch.zeros(1, 3)])
    for kwargs in ({"degree": "sink"}, {"fan_mode": "fan_avg"}, {"readout": "mup"}):
        with pytest.raises(ValueError, match=next(iter(kwargs))):
            arch_init_(MLP(3, 2, 2, 2), torch.zeros(1, 3), **kwargs)
    with pytest.raises(ValueError, match="base_lr"):
        arch_lr(MLP(3, 2, 2, 2), torch.zeros(1, 3), 0.0)


def test_r1_on_a_traced_model_without_weighted_paths():
    """No path carries a weighted layer: S = 27 (quirk R1), the lr stays at the base lr."""
    model = nn.Sequential(nn.Flatten(), nn.BatchNorm1d(4))
    summary = path_summary(model, torch.zeros(2, 4))
    assert summary.r1_applied and summary.sum_cubed == 27 and summary.num_paths == 1
    assert arch_lr(model, torch.zeros(2, 4), 0.3) == pytest.approx(0.3)


# ----------------------------------------------------------------------------- real data: lr transfer


def test_lr_transfer_on_digits():
    """eta_base from a grid on the 2-layer MLP (one hidden layer); the predicted lr of 4- and 8-layer MLPs
    lands within a factor 3 of their own grid-best lr. Digits (1500 train, standardised), width 64, arch_init_
    (fan_in, source degree), plain SGD, batch 50, 2 epochs, 2 seeds; score = final full-train loss.
    Measured: eta_base = 0.707; depth 4: predicted 0.329, best 0.354 (ratio 0.93); depth 8: predicted 0.136,
    best 0.125 (ratio 1.09). Without the path rule the depth-8 lr would be 0.707, 5.7x its best."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    perm = np.random.default_rng(0).permutation(len(X))[:1500]
    X, y = X[perm], y[perm]
    mu, sd = X.mean(0), X.std(0)
    sd[sd == 0] = 1  # constant pixels keep scale 1
    X, y = torch.tensor((X - mu) / sd, dtype=torch.float32), torch.tensor(y)

    from experiments.claim_scaling import final_loss as sgd_loss  # the docs/results.md experiment's loop

    def final_loss(depth, lr):
        return sgd_loss(lambda: MLP(64, 64, depth, 10, agd_compatible=False), X, y, lr, (0, 1), 2, 50)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        grid = [2 ** (k / 2) for k in range(-10, 4)]
        best = {d: min(grid, key=lambda lr: final_loss(d, lr)) for d in (2, 4, 8)}
    finally:
        torch.set_num_threads(threads)
    assert grid[0] < best[2] < grid[-1]  # an interior optimum, so the grid brackets it
    for depth in (4, 8):
        predicted = arch_lr(MLP(64, 64, depth, 10), X[:2], best[2])
        assert best[depth] / 3 <= predicted <= best[depth] * 3, (depth, predicted, best)
