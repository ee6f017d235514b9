"""End-to-end training-step time under FSDP2 and ZeRO-2/3 on N ranks, every method against AdamW.

    torchrun --standalone --nproc_per_node 2 benchmarks/bench_engines.py [--rounds 50] [--width 16] [--json PATH]

On the CPU with gloo, or one GPU per rank with NCCL when CUDA is present (each phase timed between
synchronizes).

One launch builds every (engine, optimizer) pair on the same model and data (a bias-free ResNet-18 at
`--width` on 32x32 inputs, global batch 32) and times forward + backward + optimizer step. Steps run in
rounds: each round steps every pair once, in an order rotated from round to round, so load drift on a
shared machine falls on all pairs alike; the table gives the median over rounds. Every rank takes part
in every step (the collectives make them wait for each other), so rank 0's clock is the step's time.

Collectives and bytes are read from gloo's own profiler events with their tensor shapes and dtypes
(`record_shapes`), once over a whole training step and once over the optimizer step alone: "bytes" is
the payload handed to the collectives per rank (an all-reduce of n fp32 counts 4n; an all-gather counts
the shard a rank contributes; gloo has no reduce-scatter, so FSDP2's runs as an all-reduce of the whole
tensor and counts it). Rank 0 prints the table and each method's ratio to AdamW on the same engine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from autoopt_dist.models import resnet18  # noqa: E402
from benchmarks.bench_step import cpu_model  # noqa: E402
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
DTYPE_BYTES = {"float": 4, "double": 8, "c10::BFloat16": 2, "c10::Half": 2, "long int": 8, "int": 4,
               "signed char": 1, "unsigned char": 1, "bool": 1}


@dataclass
class Pair:
    """One (engine, optimizer) training setup and what was measured on it."""
    engine: str
    optimizer: str
    backward: object  # () -> None: forward and backward of one step
    optimizer_step: object  # () -> None: the rest of the step
    train_ms: list[float] = field(default_factory=list)
    optimizer_ms: list[float] = field(default_factory=list)
    comms: dict = field(default_factory=dict)

    def step(self) -> None:
        self.backward()
        self.optimizer_step()


def build(engine: str, name: str, width: int, world: int, rank: int, device: torch.device) -> Pair:
    torch.manual_seed(0)
    model = agd_init_(resnet18(num_classes=10, stem="cifar", width=width, agd_compatible=True)).to(device)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 3, 32, 32, generator=g), torch.randint(0, 10, (32,), generator=g)
    x, y = x.chunk(world)[rank].to(device), y.chunk(world)[rank].to(device)
    loss_fn = nn.CrossEntropyLoss()
    if engine.startswith("zero"):
        opt = OPTIMIZERS[name](list(model.named_parameters()), None)
        ds = deepspeed_initialize(model, opt, deepspeed_config(engine, 32 // world))
        return Pair(engine, name, lambda: ds.backward(loss_fn(ds(x), y)), ds.step)
    wrapped = wrap_model(model, engine, device)
    opt = OPTIMIZERS[name](optimizer_params(wrapped), layout_of(wrapped))

    def backward():
        opt.zero_grad()
        loss_fn(wrapped(x), y).backward()
    return Pair(engine, name, backward, opt.step)


def gloo_traffic(fn) -> tuple[int, int]:
    """(collectives, payload bytes) of fn(): gloo's profiler events with their input shapes and dtypes."""
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        fn()
    count = nbytes = 0
    for e in prof.profiler.kineto_results.events():
        if e.name().startswith(("gloo:", "nccl:")):
            count += 1
            nbytes += sum(DTYPE_BYTES[d] * torch.Size(s).numel() for s, d in zip(e.shapes(), e.dtypes()) if s)
    return count, nbytes


def count_traffic(pair: Pair) -> None:
    c = pair.comms
    c["collectives_per_train_step"], c["bytes_per_train_step"] = gloo_traffic(pair.step)
    pair.backward()
    c["collectives_in_optimizer_step"], c["bytes_in_optimizer_step"] = gloo_traffic(pair.optimizer_step)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    env = init_distributed("ddp")
    device = torch.device("cpu")
    if torch.cuda.is_available():
        device = torch.device("cuda", env.local_rank)
        torch.cuda.set_device(device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    pairs = [build(e, n, args.width, env.world_size, env.rank, device) for e in ENGINES for n in OPTIMIZERS]
    for pair in pairs:
        for _ in range(args.warmup):
            pair.step()
        count_traffic(pair)
    for r in range(args.rounds):
        for pair in pairs[r % len(pairs):] + pairs[:r % len(pairs)]:
            sync()
            t0 = time.perf_counter()
            pair.backward()
            sync()
            t1 = time.perf_counter()
            pair.optimizer_step()
            sync()
            t2 = time.perf_counter()
            pair.train_ms.append((t2 - t0) * 1e3)
            pair.optimizer_ms.append((t2 - t1) * 1e3)
    if env.rank == 0:
        report(pairs, args, env.world_size, device)
    shutdown()
    sys.stdout.flush()
    os._exit(0)


def report(pairs: list[Pair], args, world: int, device: torch.device) -> None:
    rows = []
    for p in pairs:
        base = next(b for b in pairs if b.engine == p.engine and b.optimizer == "adamw")
        median = statistics.median(p.train_ms)
        rows.append({"engine": p.engine, "optimizer": p.optimizer, "train_step_ms": median,
                     "q1_ms": statistics.quantiles(p.train_ms, n=4)[0], "q3_ms": statistics.quantiles(p.train_ms, n=4)[2],
                     "ratio_train_step_to_adamw": median / statistics.median(base.train_ms),
                     "optimizer_step_ms": statistics.median(p.optimizer_ms), **p.comms})
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {os.cpu_count()} logical CPUs"
    print(f"{world} ranks ({where}), ResNet-18 width {args.width}, 32x32, global batch 32, median of {args.rounds} rounds")
    print(f"{'engine':<7}{'optimizer':<12}{'train step ms':>14}{'x AdamW':>9}{'opt step ms':>12}{'collectives':>13}{'bytes':>11}"
          f"{'opt-step collectives':>22}{'opt-step bytes':>16}")
    for r in rows:
        print(f"{r['engine']:<7}{r['optimizer']:<12}{r['train_step_ms']:>14.1f}{r['ratio_train_step_to_adamw']:>9.2f}"
              f"{r['optimizer_step_ms']:>12.2f}{r['collectives_per_train_step']:>13}{r['bytes_per_train_step']:>11}"
              f"{r['collectives_in_optimizer_step']:>22}{r['bytes_in_optimizer_step']:>16}")
    if args.json:
        meta = {"device": where, "cpu": cpu_model(), "cpus": os.cpu_count(), "world_size": world,
                "torch": torch.__version__, "width": args.width, "rounds": args.rounds}
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
