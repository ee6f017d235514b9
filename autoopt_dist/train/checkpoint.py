"""Checkpoints: written atomically, found again by `resume: auto`, and resumable on another world size.

Layout of one checkpoint, `<run>/checkpoints/step_00000120/`:
    model + optimizer   torch.distributed.checkpoint (DCP), FQN-keyed and sharded like the engine holds
                        them, so an FSDP2 run saved on 2 ranks loads on 3 (DCP reshards); under ZeRO,
                        DeepSpeed's own `save_checkpoint` (its optimizer state includes ours)
    trainer_rank{r}.pt  step, epoch and batch position, this rank's RNG states, fault counters
    COMPLETE            written last, by rank 0, after every rank finished
Every rank writes into `step_N.tmp/`; after a barrier rank 0 marks it complete and renames it. A crash
mid-save leaves only a `.tmp` folder, which `latest_checkpoint` ignores: nothing complete is lost.
"""

from __future__ import annotations

import os
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

MARKER = "COMPLETE"


@dataclass
class TrainerState:
    step: int = 0  # optimizer steps taken
    epoch: int = 0  # epoch of the next batch
    batch: int = 0  # index within the epoch of the next batch
    skipped_steps: int = 0  # non-finite steps skipped so far
    consecutive_skips: int = 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def latest_checkpoint(folder: Path) -> Path | None:
    """The newest complete checkpoint under `folder`, or None."""
    if not folder.is_dir():
        return None
    done = [p for p in folder.glob("step_*") if p.is_dir() and not p.name.endswith(".tmp") and (p / MARKER).is_file()]
    return max(done, key=lambda p: int(p.name.split("_")[1]), default=None)


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def save_checkpoint(folder: Path, trainer: TrainerState, model, optimizer, deepspeed_engine=None, keep: int = 2) -> Path:
    """Save everything needed to continue exactly; returns the checkpoint's folder."""
    final = folder / f"step_{trainer.step:08d}"
    tmp = folder / f"step_{trainer.step:08d}.tmp"
    if _rank() == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier()
    if deepspeed_engine is not None:
        deepspeed_engine.save_checkpoint(str(tmp), tag="deepspeed")
    else:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_sd, optim_sd = get_state_dict(model, optimizer)
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp / "dcp"), no_dist=not dist.is_initialized())
    torch.save({"trainer": asdict(trainer), "rng": _rng_state()}, tmp / f"trainer_rank{_rank()}.pt")
    _barrier()
    if _rank() == 0:
        (tmp / MARKER).write_text(f"step {trainer.step}\n")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in sorted(folder.glob("step_*"), key=lambda p: p.name)[:-keep]:
            if not old.name.endswith(".tmp") and old != final:
                shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return final


def load_checkpoint(path: Path, model, optimizer, deepspeed_engine=None) -> TrainerState:
    """Load a checkpoint saved by `save_checkpoint`, possibly on a different world size (DCP)."""
    if deepspeed_engine is not None:
        deepspeed_engine.load_checkpoint(str(path), tag="deepspeed")
    else:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        model_sd, optim_sd = get_state_dict(model, optimizer)
        state = {"model": model_sd, "optim": optim_sd}
        dcp.load(state, checkpoint_id=str(path / "dcp"), no_dist=not dist.is_initialized())
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    own = path / f"trainer_rank{_rank()}.pt"
    # A rank that did not exist when the checkpoint was written (resuming on more ranks) takes rank 0's
    # counters; its RNG stream then restarts from rank 0's, which only matters for stochastic layers.
    saved = torch.load(own if own.is_file() else path / "trainer_rank0.pt", weights_only=False)
    _set_rng_state(saved["rng"])
    return TrainerState(**saved["trainer"])
