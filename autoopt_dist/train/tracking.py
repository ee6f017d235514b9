"""Tracking from rank 0: a progress bar, wandb (offline unless the user is logged in and asks for
online; never required), a metrics.jsonl beside it, and a final summary table."""

from __future__ import annotations

import json
import os
import resource
import sys
from pathlib import Path
from typing import Any

from .config import Config


class Tracker:
    def __init__(self, cfg: Config, is_main: bool, run_dir: Path, total_steps: int):
        self.is_main = is_main
        self.run = None
        self.bar = None
        if not is_main:
            return
        self.metrics_file = open(run_dir / "metrics.jsonl", "a")
        if cfg.track.wandb != "disabled":
            try:
                import wandb
            except ImportError:
                print("wandb is not installed (pip install 'autoopt_dist[track]'); logging to metrics.jsonl only",
                      file=sys.stderr)
            else:
                self.run = wandb.init(
                    project=cfg.track.project, name=run_dir.name, group=cfg.track.group or None, dir=str(run_dir),
                    config=cfg.to_dict(),
                    mode=os.environ.get("WANDB_MODE", cfg.track.wandb),
                )
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total_steps, desc=run_dir.name, unit="step", dynamic_ncols=True)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.is_main:
            return
        self.metrics_file.write(json.dumps({"step": step, **metrics}) + "\n")
        self.metrics_file.flush()
        if self.run is not None:
            self.run.log(metrics, step=step)
        self.bar.set_postfix({k.split("/")[-1]: f"{v:.4g}" for k, v in metrics.items() if k != "epoch"}, refresh=False)

    def advance(self, steps: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(steps)

    def finish(self, summary: dict[str, Any]) -> None:
        if not self.is_main:
            return
        self.bar.close()
        if self.run is not None:
            self.run.summary.update(summary)
            self.run.finish()
        self.metrics_file.close()
        from rich.console import Console
        from rich.table import Table

        table = Table(title="autoopt_dist run summary")
        table.add_column("metric")
        table.add_column("value", justify="right")
        for k, v in summary.items():
            table.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
        Console().print(table)


def peak_memory_mb() -> float:
    """Peak resident memory of this process (CPU) or peak allocated CUDA memory."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
