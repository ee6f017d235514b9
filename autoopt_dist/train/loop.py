"""`autoopt train`: one readable training entry point, whatever launched the processes.

    autoopt train configs/digits_agd.yaml                                   # one process
    torchrun --standalone --nproc_per_node 2 -m autoopt_dist train configs/digits_agd.yaml
    autoopt train configs/digits_agd.yaml optim.name=adamw optim.lr=3e-3 train.strategy=ddp

Build order: config -> processes -> data -> bare model (initialised on full tensors) -> engine wrap ->
optimizer over the engine's views -> loop -> held-out evaluation -> summary.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import torch
import torch.distributed as dist
import yaml

from .components import build_engine, make_loss, make_model, optimizer_scalars
from .config import Config
from .data import load_dataset
from .checkpoint import MARKER, TrainerState, latest_checkpoint, load_checkpoint, save_checkpoint
from .engine import DistEnv, device_for, full_state, init_distributed, resolve_strategy, shutdown
from .errors import ConfigError
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

    steps_per_epoch = data.steps_per_epoch
    total = cfg.train.epochs * steps_per_epoch
    checkpoints = run_dir / "checkpoints"
    trainer = _resume(cfg, checkpoints, engine)
    stop = StopRequest.install()  # SIGTERM / SIGUSR1 (SLURM preemption): checkpoint, then leave
    tracker = Tracker(cfg, env.is_main, run_dir, total)
    tracker.advance(trainer.step)
    session_start, started, last_log = trainer.step, time.perf_counter(), time.perf_counter()
    stopped = None
    wrapped.train()
    while trainer.step < total and stopped is None:
        # This rank's share of each remaining global batch of the epoch (mid-epoch after a resume).
        for x, y in data.train_loader(trainer.epoch, trainer.batch, env.rank, env.world_size):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = engine.forward_backward(x, y, loss_fn)  # gradient of the mean loss over the global batch
            # One small collective per step: every rank must agree to skip a non-finite step or to stop.
            bad, stop_now = _agree(engine.local_step_is_bad(loss), stop.requested)
            if bad:
                engine.skip()  # parameters and optimizer state untouched
                trainer.skipped_steps += 1
                trainer.consecutive_skips += 1
                tracker.log(trainer.step, {"faults/skipped_steps": trainer.skipped_steps})
            else:
                engine.step()
                trainer.consecutive_skips = 0
            trainer.step += 1
            trainer.batch += 1
            if trainer.batch == steps_per_epoch:
                trainer.epoch, trainer.batch = trainer.epoch + 1, 0
            tracker.advance()
            if trainer.consecutive_skips >= cfg.train.max_bad_steps:
                save_checkpoint(checkpoints, trainer, wrapped, optimizer, engine.deepspeed, keep=cfg.checkpoint.keep)
                raise TrainingError(
                    f"{trainer.consecutive_skips} optimizer steps in a row had a non-finite loss or gradient (last at "
                    f"step {trainer.step}); stopped with a checkpoint in {checkpoints}. Check the data and the model, "
                    "or raise train.max_bad_steps"
                )
            if trainer.step % cfg.train.log_every == 0 or trainer.step == total:
                now = time.perf_counter()
                metrics = {
                    "train/loss": _global_mean(loss.detach()),  # one collective and host sync per log
                    "epoch": trainer.epoch,
                    "throughput/samples_per_s": cfg.train.log_every * cfg.data.batch_size / (now - last_log),
                    "memory/peak_mb": peak_memory_mb(),
                }
                metrics |= {f"{cfg.optim.name}/{k}": float(v) for k, v in optimizer_scalars(optimizer).items()}
                tracker.log(trainer.step, metrics)
                last_log = now
            session_done = cfg.checkpoint.session_steps and trainer.step - session_start >= cfg.checkpoint.session_steps
            if stop_now or session_done or (cfg.checkpoint.every and trainer.step % cfg.checkpoint.every == 0):
                save_checkpoint(checkpoints, trainer, wrapped, optimizer, engine.deepspeed, keep=cfg.checkpoint.keep)
            if stop_now or session_done:
                stopped = "signal" if stop_now else "session_steps"
                break
            if trainer.step >= total:
                break
    test_loss, test_acc = evaluate(engine, loss_fn, data, env, device)
    test_metrics = {"test/loss": test_loss}
    if test_acc is not None:
        test_metrics["test/accuracy"] = test_acc
    if data.task == "regression":  # csv targets are standardised: MSE x std^2 is in the column's units
        test_metrics["test/mse_original_units"] = test_loss * data.extras["target_std"] ** 2
    summary = {
        **test_metrics,
        "steps": trainer.step,
        "skipped_steps": trainer.skipped_steps,
        "world_size": env.world_size,
        "strategy": cfg.train.strategy,
        "optimizer": cfg.optim.name,
        "seconds": round(time.perf_counter() - started, 2),
        "stopped_early": stopped or "no",
    }
    tracker.log(trainer.step, test_metrics)
    tracker.finish(summary)
    if env.is_main:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    if stopped is None:
        state = full_state(wrapped)  # a collective under FSDP/ZeRO-3: every rank takes part
        if env.is_main:
            torch.save(state, run_dir / "final_params.pt")
    return summary


class TrainingError(RuntimeError):
    """The run cannot continue; a checkpoint was written first."""


class StopRequest:
    """Set by SIGTERM or SIGUSR1 (what SLURM sends before preemption or the time limit)."""

    def __init__(self):
        self.requested = False

    @classmethod
    def install(cls) -> "StopRequest":
        stop = cls()

        def handler(signum, frame):
            stop.requested = True

        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, handler)
        return stop


def _agree(bad: bool, stop: bool) -> tuple[bool, bool]:
    """Any rank's non-finite step or stop request counts for all: one MAX over a 2-element vector."""
    flags = torch.tensor([float(bad), float(stop)])
    if dist.is_initialized():
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    return bool(flags[0]), bool(flags[1])


def _resume(cfg: Config, checkpoints: Path, engine) -> TrainerState:
    if cfg.checkpoint.resume == "never":
        return TrainerState()
    path = latest_checkpoint(checkpoints) if cfg.checkpoint.resume == "auto" else Path(cfg.checkpoint.resume)
    if path is None:
        return TrainerState()
    if not (path / MARKER).is_file():
        raise ConfigError(f"checkpoint.resume: {str(path)!r} is not a complete checkpoint (no {MARKER} file)")
    return load_checkpoint(path, engine.model, engine.optimizer, engine.deepspeed)


@torch.no_grad()
def evaluate(engine, loss_fn, data, env, device, batch_size=None) -> tuple[float, float | None]:
    """Held-out loss (and accuracy) over the whole split: each rank scores its share, one SUM combines.
    Every rank runs the same number of forwards (FSDP needs all ranks in each), the last ones maybe empty."""
    model = engine.model
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, examples
    for x, y in data.eval_loader(env.rank, env.world_size, batch_size):
        out = engine.forward(x.to(device, non_blocking=True))
        if len(y):
            y = y.to(device, non_blocking=True)
            totals[0] += loss_fn(out, y).double() * len(y)
            if data.task == "classification":
                totals[1] += (out.argmax(1) == y).sum()
            totals[2] += len(y)
    if dist.is_initialized():
        dist.all_reduce(totals)
    model.train()
    return float(totals[0] / totals[2]), (float(totals[1] / totals[2]) if data.task == "classification" else None)


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
