"""`autoopt sweep`: held-out accuracy (or loss, for regression) against a hyperparameter over orders of
magnitude, one line per optimizer.

    autoopt sweep configs/digits_agd.yaml --param optim.lr --log-grid 1e-5:1e0:11 \\
        --optims agd,adamw,sgd --seeds 3 --out runs/sweep-lr

Every (optimizer, value, seed) point is one single-process run of `autoopt train` with overrides. A
point that raises or diverges is recorded (status, message), never fatal. An optimizer that does not
read the swept hyperparameter (AGD has no learning rate) runs once per seed and is drawn as the flat
line it is, labelled so. Outputs in --out: points/*.json (one per point), results.csv, sweep.png, and a
summary of each optimizer's spread over the grid (best, worst, max-min of the seed-mean).

On SLURM the same command with `--slurm` submits a job array, one task per point (`--point
$SLURM_ARRAY_TASK_ID`), and a job that runs `--collect` once every task has ended. A point already
recorded in --out is not run again, so a rerun (or a requeued array task) picks up where it stopped.

wandb (when the config's track.wandb is not "disabled"): every point is a run in the wandb group
`sweep-<out folder>`, with the swept value in its config; `--collect` adds one summary run to the group
with the results table, the plot and each optimizer's spread.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .train.config import TrackConfig, load_config
from .train.errors import ConfigError

# Hyperparameters each optimizer reads; a swept key outside its set does not change its run.
USES = {
    "agd": {"optim.gain"},
    "adamw": {"optim.lr", "optim.weight_decay"},
    "sgd": {"optim.lr", "optim.momentum", "optim.weight_decay"},
    "hyper_sgd": {"optim.lr", "optim.momentum", "optim.hyper_lrs"},
    "hyper_adam": {"optim.lr", "optim.betas", "optim.hyper_lrs"},
    "ecco": {"optim.eta", "optim.alpha0"},
}


@dataclass(frozen=True)
class Point:
    optimizer: str
    value: float | None  # None: the optimizer ignores the swept key
    seed: int
    label: str = ""  # names a variant (e.g. "3 levels"): its own line, beside other runs into the same --out

    @property
    def line(self) -> str:
        return f"{self.optimizer} ({self.label})" if self.label else self.optimizer

    @property
    def name(self) -> str:
        v = "na" if self.value is None else f"{self.value:.3e}"
        tag = "".join(c if c.isalnum() else "-" for c in self.label)
        return f"{self.optimizer}{'-' + tag if tag else ''}_{v}_s{self.seed}"


def log_grid(spec: str) -> list[float]:
    """'1e-5:1e0:11' -> 11 values evenly spaced in log10 from 1e-5 to 1."""
    try:
        lo, hi, n = spec.split(":")
        lo, hi, n = float(lo), float(hi), int(n)
    except ValueError:
        raise ConfigError(f"--log-grid: {spec!r} must look like LOW:HIGH:COUNT, e.g. 1e-5:1e0:11") from None
    if lo <= 0 or hi <= lo or n < 2:
        raise ConfigError(f"--log-grid: {spec!r} needs 0 < LOW < HIGH and COUNT >= 2")
    return [float(v) for v in np.logspace(math.log10(lo), math.log10(hi), n)]


def points(param: str, grid: list[float], optims: list[str], seeds: int, label: str = "") -> list[Point]:
    out = []
    for opt in optims:
        if opt not in USES:
            raise ConfigError(f"--optims: unknown optimizer {opt!r}; known: {', '.join(USES)}")
        values = grid if param in USES[opt] else [None]
        out += [Point(opt, v, s, label) for v in values for s in range(seeds)]
    return out


def wandb_group(out: Path) -> str:
    return f"sweep-{out.resolve().name}"


def point_overrides(overrides: list[str], param: str, point: Point, out: Path) -> list[str]:
    """The `autoopt train` overrides of one point: one process, its seed, its value, its run folder."""
    args = [*overrides, f"optim.name={point.optimizer}", f"train.seed={point.seed}", f"data.seed={point.seed}",
            "train.strategy=single", f"track.group={wandb_group(out)}", f"track.out_dir={out / 'runs'}",
            f"track.run_name={point.name}", "checkpoint.resume=never"]
    if point.value is not None:
        args.append(f"{param}={point.value!r}")
    if point.optimizer != "agd":
        args.append("model.agd_compatible=false")
    return args


def run_point(config: str, overrides: list[str], param: str, point: Point, out: Path) -> dict:
    from .train.loop import TrainingError, train

    recorded = out / "points" / f"{point.name}.json"
    if recorded.exists():  # done by an earlier run of this sweep
        return json.loads(recorded.read_text())
    args = point_overrides(overrides, param, point, out)
    record = {"optimizer": point.line, "value": point.value, "seed": point.seed}
    try:
        summary = train(load_config(config, args))
        acc = summary.get("test/accuracy", float("nan"))  # regression runs have none
        record |= {"status": "ok" if math.isfinite(summary["test/loss"]) else "diverged", "accuracy": acc,
                   "loss": summary["test/loss"], **optimizer_scalars(out / "runs" / point.name / "metrics.jsonl")}
    except (TrainingError, FloatingPointError, RuntimeError, ValueError) as e:
        record |= {"status": "failed", "accuracy": float("nan"), "loss": float("nan"), "error": str(e).splitlines()[0]}
    recorded.parent.mkdir(parents=True, exist_ok=True)
    tmp = recorded.with_suffix(".tmp")
    tmp.write_text(json.dumps(record))
    tmp.replace(recorded)  # atomic: a point killed mid-write is run again, not read half-written
    return record


NOT_OPTIMIZER = ("step", "epoch", "train/", "test/", "throughput/", "memory/")


def optimizer_scalars(metrics: Path) -> dict[str, float]:
    """The mean and the last value of each scalar the optimizer logged over the run (a learned lr, how
    often ECCO's step cap bound, ...): what explains a point's accuracy beside the accuracy itself."""
    series: dict[str, list[float]] = {}
    for line in metrics.read_text().splitlines() if metrics.exists() else []:
        for key, value in json.loads(line).items():
            if not key.startswith(NOT_OPTIMIZER) and isinstance(value, (int, float)):
                series.setdefault(key, []).append(float(value))
    return {f"{key} ({how})": v for key, s in series.items() for how, v in (("mean", sum(s) / len(s)), ("last", s[-1]))}


def collect(out: Path, param: str, grid: list[float], track: TrackConfig | None = None) -> dict:
    """results.csv, summary.json, sweep.png (and the wandb summary run) from the recorded points;
    returns the summary: per line, best, worst, spread and failed points."""
    records = [json.loads(p.read_text()) for p in sorted((out / "points").glob("*.json"))]
    scalars = sorted({k for r in records for k in r if k.endswith((" (mean)", " (last)"))})
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["optimizer", "value", "seed", "status", "accuracy", "loss", "error",
                                               *scalars])
        writer.writeheader()
        for r in records:
            writer.writerow({k: r.get(k, "") for k in writer.fieldnames})
    summary = spread(records, grid)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    plot(records, summary, param, grid, out / "sweep.png")
    if track is not None and track.wandb != "disabled":
        log_to_wandb(records, summary, param, grid, out, track)
    return summary


def log_to_wandb(records, summary, param, grid, out: Path, track: TrackConfig) -> None:
    """One summary run in the sweep's group: the table of points, the plot, and the spread per optimizer."""
    import os

    try:
        import wandb
    except ImportError:
        print("wandb is not installed (pip install 'autoopt_dist[track]'); sweep not logged to wandb", file=sys.stderr)
        return
    columns = ["optimizer", "value", "seed", "status", "accuracy", "loss"]
    run = wandb.init(project=track.project, group=wandb_group(out), name=f"{wandb_group(out)}-summary",
                     job_type="sweep-summary", dir=str(out), mode=os.environ.get("WANDB_MODE", track.wandb),
                     config={"param": param, "grid": grid})
    run.log({"results": wandb.Table(columns=columns, data=[[r.get(c) for c in columns] for r in records]),
             "sweep": wandb.Image(str(out / "sweep.png"))})
    run.summary.update({f"{opt}/{k}": v for opt, s in summary.items() for k, v in s.items()})
    run.finish()


def submit_to_slurm(argv: list[str], n_points: int, sbatch_args: str, out: Path) -> None:
    """The same sweep as a Slurm job array (one point per task, this Python, this folder) plus a collect
    job that starts once every task has ended, failed ones included (their points are recorded)."""
    this = [sys.executable, "-m", "autoopt_dist", "sweep", *[a for a in argv if a != "--slurm"]]
    common = ["--parsable", "--job-name=autoopt-sweep", f"--output={out}/logs/%x-%A_%a.out", *shlex.split(sbatch_args)]
    (out / "logs").mkdir(parents=True, exist_ok=True)

    def sbatch(*args: str) -> str:
        proc = subprocess.run(["sbatch", *common, *args], capture_output=True, text=True)
        if proc.returncode != 0:
            raise ConfigError(f"--slurm: sbatch failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc.stdout.strip().split(";")[0]

    points_cmd = shlex.join(this) + " --point $SLURM_ARRAY_TASK_ID"
    array = sbatch(f"--array=0-{n_points - 1}", "--requeue", f"--wrap={points_cmd}")
    collect_job = sbatch(f"--dependency=afterany:{array}", f"--output={out}/logs/%x-collect-%j.out",
                         f"--wrap={shlex.join([*this, '--collect'])}")
    print(f"submitted array job {array} ({n_points} points) and collect job {collect_job}")


def metric_of(records: list[dict]) -> str:
    """Held-out accuracy where the task has one (classification), else the held-out loss (regression)."""
    return "accuracy" if any(math.isfinite(r["accuracy"]) for r in records if r["status"] == "ok") else "loss"


def _curve(records: list[dict], optimizer: str, grid: list[float], metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Seed-mean and seed-std of the metric at each grid value (a flat line for an optimizer that
    ignores the key). A failed point counts as accuracy 0 (chance would flatter a divergence less); it
    has no loss, so a loss curve leaves it out (the summary counts it)."""
    rows = [r for r in records if r["optimizer"] == optimizer]

    def value(r):
        if r["status"] == "ok" and math.isfinite(r[metric]):
            return r[metric]
        return 0.0 if metric == "accuracy" else np.nan

    def stats(a):
        a = np.array(a, dtype=float)
        return (np.nan, np.nan) if np.isnan(a).all() else (np.nanmean(a), np.nanstd(a))

    if rows and rows[0]["value"] is None:
        m, sd = stats([value(r) for r in rows])
        return np.full(len(grid), m), np.full(len(grid), sd)
    points = [stats([value(r) for r in rows if r["value"] is not None and math.isclose(r["value"], v, rel_tol=1e-9)])
              for v in grid]
    return np.array([m for m, _ in points]), np.array([sd for _, sd in points])


def spread(records: list[dict], grid: list[float]) -> dict:
    metric = metric_of(records)
    best, worst = (np.nanmax, np.nanmin) if metric == "accuracy" else (np.nanmin, np.nanmax)
    out = {}
    for opt in sorted({r["optimizer"] for r in records}):
        mean, _ = _curve(records, opt, grid, metric)
        failed = sum(r["status"] != "ok" for r in records if r["optimizer"] == opt)
        finite = not np.isnan(mean).all()
        out[opt] = {"metric": metric, "best": float(best(mean)) if finite else float("nan"),
                    "worst": float(worst(mean)) if finite else float("nan"),
                    "spread": float(np.nanmax(mean) - np.nanmin(mean)) if finite else float("nan"),
                    "failed_points": failed,
                    "reads_swept_key": any(r["value"] is not None for r in records if r["optimizer"] == opt)}
    return out


def plot(records, summary, param, grid, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = metric_of(records)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for opt in summary:
        mean, std = _curve(records, opt, grid, metric)
        label = opt if summary[opt]["reads_swept_key"] else f"{opt} (no {param})"
        style = "-o" if summary[opt]["reads_swept_key"] else "--"
        ax.plot(grid, mean, style, label=label, markersize=4)
        ax.fill_between(grid, mean - std, mean + std, alpha=0.2)
    ax.set_xscale("log")
    ax.set_xlabel(param)
    if metric == "accuracy":
        ax.set_ylabel("held-out accuracy")
        ax.set_ylim(0, 1)
    else:
        ax.set_ylabel("held-out loss (failed points left out)")
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="autoopt sweep")
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--param", required=True, help="dotted key, e.g. optim.lr")
    parser.add_argument("--log-grid", required=True, help="LOW:HIGH:COUNT")
    parser.add_argument("--optims", default="agd,adamw,sgd")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--label", default="", help="name this variant's lines (e.g. '3 levels'); sweeps run with "
                        "different labels and overrides into the same --out share one plot and CSV")
    parser.add_argument("--out", default="runs/sweep")
    parser.add_argument("--point", type=int, default=None, help="run only this point (a SLURM array task)")
    parser.add_argument("--collect", action="store_true", help="only assemble results.csv, summary and plot")
    parser.add_argument("--list", action="store_true", help="print the number of points and exit")
    parser.add_argument("--slurm", action="store_true", help="submit the points as a Slurm job array")
    parser.add_argument("--sbatch-args", default="", help='extra sbatch options, e.g. "--partition=gpu --gres=gpu:1"')
    args = parser.parse_args(argv)
    grid = log_grid(args.log_grid)
    todo = points(args.param, grid, args.optims.split(","), args.seeds, args.label)
    out = Path(args.out)
    # Fail before any run on a bad config: check each optimizer's first point as it will run.
    cfg = [load_config(args.config, point_overrides(args.overrides, args.param, first, out))
           for first in {p.optimizer: p for p in reversed(todo)}.values()][0]
    if args.list:
        print(len(todo))
        return
    if args.slurm:
        submit_to_slurm(argv, len(todo), args.sbatch_args, out)
        return
    if args.point is not None:
        if not 0 <= args.point < len(todo):
            raise ConfigError(f"--point: {args.point} outside 0..{len(todo) - 1}")
        run_point(args.config, args.overrides, args.param, todo[args.point], out)
        return
    if not args.collect:
        for p in todo:
            run_point(args.config, args.overrides, args.param, p, out)
    for opt, s in collect(out, args.param, grid, cfg.track).items():
        print(f"{opt:>12}: best {s['best']:.3f}  worst {s['worst']:.3f}  spread {s['spread']:.3f}  failed {s['failed_points']}")
    print(f"wrote {out / 'results.csv'} and {out / 'sweep.png'}")
