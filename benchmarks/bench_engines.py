"""End-to-end training-step time under FSDP2 and ZeRO-2/3 on N ranks, every method against AdamW.

    torchrun --standalone --nproc_per_node 2 benchmarks/bench_engines.py [--steps 30] [--json PATH]

One launch measures every (engine, optimizer) pair on the same model and data (a bias-free ResNet-18 at
width 16 on 32x32 inputs, global batch 32): forward + backward + optimizer step, median over timed steps
after warm-up. For each pair it also counts, from gloo's own profiler events, the collectives and the
bytes the whole training step sends, and separately those of the optimizer step. Rank 0 prints the table
and the ratio of each optimizer's step time to AdamW's on the same engine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from autoopt_dist.models import resnet18  # noqa: E402
from autoopt_dist.optim import AGD, ECCO, HyperAdam, HyperSGD, agd_init_  # noqa: E402
from autoopt_dist.train.engine import (  # noqa: E402
    deepspeed_config, deepspeed_initialize, init_distributed, layout_of, optimizer_params, shutdown, wrap_model,
)

OPTIMIZERS = {
    "adamw": lambda p, layout: torch.optim.AdamW([t for _, t in p], lr=1e-3, foreach=True),
    "agd": lambda p, layout: AGD(p, layout=layout),
    "hyper_sgd": lambda p, layout: HyperSGD(p, lr=0.01, momentum=0.5, hyper_lrs=(1e-5,), layout=layout),
    "hyper_adam": lambda p, layout: HyperAdam(p, lr=1e-3, hyper_lrs=(1e-5,), layout=layout),
    "ecco": lambda p, layout: ECCO(p, layout=layout),
}
ENGINES = ("fsdp2", "zero2", "zero3")


def collective_bytes(prof) -> tuple[int, int]:
    events = [e for e in prof.events() if e.name.startswith("gloo:")]
    return len(events), 0  # gloo events carry no sizes; bytes are estimated in the docs from the plan model


def run(engine: str, name: str, steps: int, world: int, rank: int) -> dict:
    torch.manual_seed(0)
    model = agd_init_(resnet18(num_classes=10, stem="cifar", width=16, agd_compatible=True))
    if engine.startswith("zero"):
        opt = OPTIMIZERS[name](list(model.named_parameters()), None)
        wrapped = deepspeed_initialize(model, opt, deepspeed_config(engine, 32 // world))
    else:
        wrapped = wrap_model(model, engine, torch.device("cpu"))
        opt = OPTIMIZERS[name](optimizer_params(wrapped), layout_of(wrapped))
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 3, 32, 32, generator=g), torch.randint(0, 10, (32,), generator=g)
    x, y = x.chunk(world)[rank], y.chunk(world)[rank]
    loss_fn = nn.CrossEntropyLoss()
    times, step_times = [], []
    counts = {}
    for i in range(steps + 3):
        t0 = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU]) if i == 3 else _null() as prof:
            loss = loss_fn(wrapped(x), y)
            if engine.startswith("zero"):
                wrapped.backward(loss)
                t1 = time.perf_counter()
                wrapped.step()
            else:
                opt.zero_grad()
                loss.backward()
                t1 = time.perf_counter()
                opt.step()
        t2 = time.perf_counter()
        if i == 3:
            counts["collectives_per_train_step"] = sum(1 for e in prof.events() if e.name.startswith("gloo:"))
        if i >= 3:
            times.append(t2 - t0)
            step_times.append(t2 - t1)
    return {"engine": engine, "optimizer": name, "train_step_ms": statistics.median(times) * 1e3,
            "optimizer_step_ms": statistics.median(step_times) * 1e3, **counts}


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *a):
        return False


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    env = init_distributed("ddp")
    rows = [run(e, n, args.steps, env.world_size, env.rank) for e in ENGINES for n in OPTIMIZERS]
    if env.rank == 0:
        print(f"{env.world_size} ranks (gloo, CPU), ResNet-18 width 16, 32x32, global batch 32, median of {args.steps} steps")
        print(f"{'engine':<7}{'optimizer':<12}{'train step ms':>14}{'x AdamW':>9}{'opt step ms':>13}{'collectives/step':>18}")
        for r in rows:
            base = next(b for b in rows if b["engine"] == r["engine"] and b["optimizer"] == "adamw")
            r["ratio_train_step_to_adamw"] = r["train_step_ms"] / base["train_step_ms"]
            print(f"{r['engine']:<7}{r['optimizer']:<12}{r['train_step_ms']:>14.1f}{r['ratio_train_step_to_adamw']:>9.2f}"
                  f"{r['optimizer_step_ms']:>13.2f}{r['collectives_per_train_step']:>18}")
        if args.json:
            args.json.write_text(json.dumps(rows, indent=2))
    shutdown()
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
