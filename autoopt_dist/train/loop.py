"""`autoopt train`: one readable training entry point, whatever launched the processes.

    autoopt train configs/digits_agd.yaml                                   # one process
    torchrun --standalone --nproc_per_node 2 -m autoopt_dist train configs/digits_agd.yaml
    autoopt train configs/digits_agd.yaml optim.name=adamw optim.lr=3e-3 train.strategy=ddp

Build order: config -> processes -> data -> bare model (initialised on full tensors) -> engine wrap ->
optimizer over the engine's views -> loop -> held-out evaluation -> summary.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import torch.distributed as dist
import yaml

from .components import build_engine, make_loss, make_model, optimizer_scalars
from .config import Config
from .data import GlobalBatches, load_dataset
from .engine import DistEnv, device_for, init_distributed, resolve_strategy, shutdown
from .tracking import Tracker, peak_memory_mb


def train(cfg: Config) -> dict:
    cfg.train.strategy = resolve_strategy(cfg.train.strategy, DistEnv.from_environ())
    env = init_distributed(cfg.train.strategy)
    try:
        cfg.check_world(env.world_size)
        return _train(cfg, env)
    finally:
        shutdown()


def _train(cfg: Config, env) -> dict:
    device = device_for(env)
    run_dir = _run_dir(cfg, env.is_main)

    data = load_dataset(cfg.data)  # identical on every rank; each step takes its share below
    torch.manual_seed(cfg.train.seed)  # same seed everywhere: full tensors drawn alike, then sharded
    model = make_model(cfg, data)
    engine = build_engine(cfg, model, device, env.world_size)  # wraps, and builds the optimizer over its views
    optimizer, wrapped = engine.optimizer, engine.model
    loss_fn = make_loss(cfg, data.num_classes)

    batches = GlobalBatches(len(data.train.x), cfg.data.batch_size, cfg.data.seed, env.rank, env.world_size)
    total = cfg.train.epochs * batches.steps_per_epoch
    tracker = Tracker(cfg, env.is_main, run_dir, total)
    step, started, last_log = 0, time.perf_counter(), time.perf_counter()
    wrapped.train()
    for epoch in range(cfg.train.epochs):
        for batch_step in range(batches.steps_per_epoch):
            idx = batches.local_indices(epoch, batch_step)
            x, y = data.train.x[idx].to(device), data.train.y[idx].to(device)
            loss = loss_fn(wrapped(x), y)
            engine.backward(loss)  # the engine averages gradients: the mean loss over the global batch
            engine.step()
            step += 1
            tracker.advance()
            if step % cfg.train.log_every == 0 or step == total:
                now = time.perf_counter()
                metrics = {
                    "train/loss": _global_mean(loss.detach()),  # one collective and host sync per log
                    "epoch": epoch,
                    "throughput/samples_per_s": cfg.train.log_every * cfg.data.batch_size / (now - last_log),
                    "memory/peak_mb": peak_memory_mb(),
                }
                metrics |= {f"{cfg.optim.name}/{k}": float(v) for k, v in optimizer_scalars(optimizer).items()}
                tracker.log(step, metrics)
                last_log = now
    test_loss, test_acc = evaluate(wrapped, loss_fn, data.test.x, data.test.y, env, device)
    summary = {
        "test/accuracy": test_acc,
        "test/loss": test_loss,
        "steps": step,
        "world_size": env.world_size,
        "strategy": cfg.train.strategy,
        "optimizer": cfg.optim.name,
        "seconds": round(time.perf_counter() - started, 2),
    }
    tracker.log(step, {"test/accuracy": test_acc, "test/loss": test_loss})
    tracker.finish(summary)
    if env.is_main:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


@torch.no_grad()
def evaluate(model, loss_fn, x, y, env, device) -> tuple[float, float]:
    """Held-out loss and accuracy over the whole split: each rank scores its share, one SUM combines.
    Every rank runs exactly one forward (FSDP needs all ranks in each forward), possibly on fewer rows."""
    model.eval()
    xs, ys = x.tensor_split(env.world_size)[env.rank], y.tensor_split(env.world_size)[env.rank]
    out = model(xs.to(device))
    totals = torch.tensor(
        [loss_fn(out, ys.to(device)).item() * len(ys) if len(ys) else 0.0,
         (out.argmax(1) == ys.to(device)).sum().item(), len(ys)], dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(totals)
    model.train()
    return float(totals[0] / totals[2]), float(totals[1] / totals[2])


def _global_mean(value: torch.Tensor) -> float:
    if dist.is_initialized():
        value = value.clone()
        dist.all_reduce(value)
        value /= dist.get_world_size()
    return float(value)


def _run_dir(cfg: Config, is_main: bool) -> Path:
    name = cfg.track.run_name or f"{cfg.data.name}-{cfg.model.name}-{cfg.optim.name}-{cfg.train.strategy}"
    run_dir = Path(cfg.track.out_dir) / name
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    return run_dir
