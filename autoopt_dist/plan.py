"""`autoopt plan CONFIG --nodes N --gpus-per-node G`: check a recipe and size it, without data or GPUs.

The model is built on the meta device (no memory, no data), the config validated as `train` would, and
for each strategy the per-GPU bytes of parameters, gradients and optimizer state, and the bytes each GPU
sends per optimizer step, are printed. Optimizer state per parameter is measured, not assumed: one
step of the configured optimizer on a small model of the same family, its state bytes divided by its
parameter count (every method here keeps per-element state, so the ratio carries over).

Communication model (ring collectives, per GPU, per optimizer step, P parameters, W ranks, b bytes
per element): all-reduce 2(W-1)/W*P*b; reduce-scatter and all-gather (W-1)/W*P*b each.
DDP: one gradient all-reduce. ZeRO-1/2: gradient reduce-scatter + parameter all-gather. FSDP1/2 and
ZeRO-3: parameter all-gather in forward and again in backward + gradient reduce-scatter. Plus the
method's own statistics (a few floats per layer: negligible, printed anyway).
"""

from __future__ import annotations

import argparse
import math

import torch
from torch import nn

from .train.config import Config, load_config

STRATEGY_ROWS = ("ddp", "fsdp2", "zero1", "zero2", "zero3")
KNOWN_SHAPES = {  # (input shape, classes) when no data is at hand
    "digits": ((64,), 10),
    "mnist1d": ((40,), 10),
    "cifar10": ((3, 32, 32), 10),
    "cifar100": ((3, 32, 32), 100),
    "imagenet": ((3, 224, 224), 1000),
}


def _shape_and_classes(cfg: Config) -> tuple[tuple[int, ...], int]:
    if cfg.data.name in KNOWN_SHAPES:
        return KNOWN_SHAPES[cfg.data.name]
    return (3, 224, 224), 1000  # image folders and hub sets: sized like ImageNet unless data is present


def build_meta_model(cfg: Config) -> nn.Module:
    from .train.components import make_model_for

    shape, classes = _shape_and_classes(cfg)
    with torch.device("meta"):
        return make_model_for(cfg, shape, classes, initialise=False)


def state_bytes_per_param(cfg: Config) -> float:
    """Measured: one step of the configured optimizer on a small model; state bytes / parameters."""
    from .train.components import make_optimizer_for

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32, bias=False), nn.ReLU(), nn.Linear(32, 8, bias=False))
    opt = make_optimizer_for(cfg, list(model.named_parameters()), None)
    model(torch.randn(4, 16)).square().mean().backward()
    opt.step()
    opt.zero_grad()
    model(torch.randn(4, 16)).square().mean().backward()
    opt.step()
    state = sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values() if torch.is_tensor(t) and t.dim() > 0)
    return state / sum(p.numel() for p in model.parameters())


def plan(cfg: Config, nodes: int, gpus_per_node: int) -> list[dict]:
    world = nodes * gpus_per_node
    cfg.check_world(world)
    model = build_meta_model(cfg)
    P = sum(p.numel() for p in model.parameters())
    weights = sum(1 for p in model.parameters() if p.dim() >= 2)
    bf16 = cfg.train.precision == "bf16"
    b = 2 if bf16 else 4  # bytes of a parameter / gradient element as communicated
    opt_bytes = state_bytes_per_param(cfg)
    ring = (world - 1) / world
    rows = []
    for strategy in STRATEGY_ROWS:
        shard_params = strategy in ("fsdp2", "zero3")
        shard_grads = strategy in ("fsdp2", "zero2", "zero3")
        shard_state = strategy != "ddp"
        masters = 4 * P if (bf16 and strategy.startswith("zero")) else 0  # fp32 masters beside bf16 weights
        param_b = P * (b if strategy.startswith("zero") else 4) / (world if shard_params else 1)
        grad_b = P * 4 / (world if shard_grads else 1)
        state_b = (P * opt_bytes + masters) / (world if shard_state else 1)
        if strategy == "ddp":
            comm = 2 * ring * P * b
        elif strategy in ("zero1", "zero2"):
            comm = 2 * ring * P * b
        else:
            comm = 3 * ring * P * b
        rows.append({
            "strategy": strategy, "params_MiB": param_b / 2**20, "grads_MiB": grad_b / 2**20,
            "optimizer_MiB": state_b / 2**20, "comm_MiB_per_step": comm / 2**20,
            "method_stat_floats": 0 if strategy == "ddp" or world == 1 else _stat_floats(cfg, model),
        })
    print_plan(cfg, nodes, gpus_per_node, P, weights, opt_bytes, rows)
    return rows


def _stat_floats(cfg: Config, model: nn.Module) -> int:
    """Length of the method's one packed statistic vector (AGD: one entry per weight tap)."""
    if cfg.optim.name != "agd":
        return sum(1 for _ in model.parameters())
    return sum(math.prod(p.shape[2:]) if p.dim() > 2 else 1 for p in model.parameters())


def print_plan(cfg, nodes, gpus, P, weights, opt_bytes, rows) -> None:
    from rich.console import Console
    from rich.table import Table

    title = (f"{cfg.model.name} on {cfg.data.name}, {cfg.optim.name}, {nodes} node(s) x {gpus} GPU(s): "
             f"{P / 1e6:.2f} M parameters in {weights} weight tensors, optimizer state {opt_bytes:g} B/param")
    table = Table(title=title)
    for col in ("strategy", "params MiB/GPU", "grads MiB/GPU", "optimizer MiB/GPU", "sent MiB/step/GPU", "stat floats"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(r["strategy"], f"{r['params_MiB']:.2f}", f"{r['grads_MiB']:.2f}", f"{r['optimizer_MiB']:.2f}",
                      f"{r['comm_MiB_per_step']:.2f}", str(r["method_stat_floats"]))
    Console(width=160).print(table)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="autoopt plan")
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--gpus-per-node", type=int, default=8)
    args = parser.parse_args(argv)
    plan(load_config(args.config, args.overrides), args.nodes, args.gpus_per_node)
