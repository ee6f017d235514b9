"""slimTrain's central claims, re-measured on real data (scikit-learn digits, offline).

Claims (Newman, Chung, Chung, Ruthotto, SISC 2022, arXiv 2109.14002, abstract): slimTrain shows "fast initial
convergence" and "reduces the sensitivity of DNN training to the remaining hyperparameters".

Setup (the experiment in tests/unit/test_slimtik.py::_train_digits, copied here so the script stands alone):
digits from `autoopt_dist`'s loader (1438 train / 359 test, standardised, split seed 0); extractor
64 -> 32 -> 32 with tanh, stepped by Adam lr 1e-3; head either
  - slimtrain:  SlimTikHead(32, 10, memory_depth=5), W solved every step (MSE on one-hot targets), or
  - linear_ce:  nn.Linear(32, 10) trained by the same Adam with cross-entropy (the usual baseline), or
  - linear_mse: nn.Linear(32, 10) trained by Adam with MSE on one-hot targets (same loss as slimTrain: separates
                the effect of the solve from the effect of the loss).
Seed s sets the parameter draw (torch.manual_seed(s)) and the batch order (a generator seeded with s).

(a) Early convergence: test accuracy after epochs 1..E, batch 32 and 64, every seed.
(b) Sensitivity: final test accuracy after E epochs over a regularisation grid, as the reference's paper runs
    (`runs_from_paper/*.sh`): alpha1 = L2 weight on the extractor (Adam weight_decay = alpha1, which adds
    alpha1 * theta to the gradient, i.e. alpha1/2 ||theta||^2 in the loss), alpha2 = sum_lambda (Lambda_0) for
    slimTrain and the L2 weight of the Linear head for Adam. Sweeps:
      alpha1: alpha1 in {1e-10, 1e-5, 1e-3, 1e-1, 1}, alpha2 = 1e-10   (both methods)
      alpha2: alpha1 = 1e-10, alpha2 in {1e-10, 1e-1, 1}               (both methods: `*_fixed_alpha1.sh`)
      tied:   alpha1 = alpha2 in {1e-10, ..., 1}                        (the paper's `*_varied_alpha1.sh`)
    Spread = max - min over the grid of the seed-mean accuracy.

Run (about 30 s on one thread of a shared 2-core machine; `--epochs 20` about 2 min):
    python experiments/claim_slimtik.py --out docs/results
writes slimtik_convergence.{csv,png} and slimtik_alpha_sweep.{csv,png} and prints the verdict tables.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `import autoopt_dist` without the editable install

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from autoopt_dist.optim.slimtik import SlimTikHead  # noqa: E402

METHODS = ("slimtrain", "linear_ce", "linear_mse")
ALPHA_GRID = (1e-10, 1e-5, 1e-3, 1e-1, 1.0)  # the paper runs' grid
ALPHA2_GRID = (1e-10, 1e-1, 1.0)  # the paper's fixed-alpha1 runs
TINY = 1e-10  # the "off" value the paper uses for the regulariser not being swept


def load_digits_split():
    """The split and standardisation the unit test uses (data seed 0)."""
    from autoopt_dist.train.config import DataConfig
    from autoopt_dist.train.data import load_dataset

    data = load_dataset(DataConfig(name="digits", batch_size=32, seed=0))
    return data.train.x, data.train.y, data.test.x, data.test.y


def build(method: str, seed: int, alpha1: float, alpha2: float):
    """Extractor + head + Adam. Weight decay in Adam is plain L2 (added to the gradient), exactly the
    reference's way of adding alpha/2 ||theta||^2 to the loss."""
    torch.manual_seed(seed)
    extractor = nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh())
    if method == "slimtrain":
        # alpha2 is Lambda_0 (`--sum-lambda`); the head has no parameters, so Adam only sees the extractor.
        head = SlimTikHead(32, 10, memory_depth=5, sum_lambda=alpha2)
        groups = [{"params": extractor.parameters(), "weight_decay": alpha1}]
    else:
        head = nn.Linear(32, 10)  # the same draw as SlimTikHead's initial W
        groups = [{"params": extractor.parameters(), "weight_decay": alpha1},
                  {"params": head.parameters(), "weight_decay": alpha2}]
    return extractor, head, torch.optim.Adam(groups, lr=1e-3)


def train(method: str, data, seed: int, epochs: int, batch: int, alpha1: float = TINY, alpha2: float = TINY):
    """Test accuracy and slimTrain's Lambda after each epoch (Lambda is nan for the Linear heads)."""
    xtr, ytr, xte, yte = data
    extractor, head, opt = build(method, seed, alpha1, alpha2)
    g = torch.Generator().manual_seed(seed)
    n = len(xtr)
    history = []
    for _ in range(epochs):
        extractor.train(), head.train()
        order = torch.randperm(n, generator=g)
        for i in range(n // batch):  # drop the short last batch, as the unit test does
            idx = order[i * batch:(i + 1) * batch]
            x, y = xtr[idx], ytr[idx]
            opt.zero_grad()
            if method == "linear_ce":
                loss = F.cross_entropy(head(extractor(x)), y)
            else:
                onehot = F.one_hot(y, 10).float()
                out = head(extractor(x), targets=onehot) if method == "slimtrain" else head(extractor(x))
                loss = F.mse_loss(out, onehot)
            loss.backward()
            opt.step()
        extractor.eval(), head.eval()  # eval mode: SlimTikHead does not solve on test data
        with torch.no_grad():
            acc = float((head(extractor(xte)).argmax(1) == yte).float().mean())
        lam = float(head.Lambda) if method == "slimtrain" else float("nan")
        history.append((acc, lam))
    return history


# ------------------------------------------------------------------------------------------- experiments


def run_convergence(data, seeds, epochs, batches):
    rows = []
    for batch in batches:
        for method in METHODS:
            for seed in seeds:
                for epoch, (acc, lam) in enumerate(train(method, data, seed, epochs, batch), 1):
                    rows.append({"batch": batch, "method": method, "seed": seed, "epoch": epoch,
                                 "test_acc": acc, "Lambda": lam})
    return rows


def sweep_points():
    """(sweep, method, alpha1, alpha2) for every point of the three sweeps."""
    points = []
    for method in METHODS:
        points += [("alpha1", method, a, TINY) for a in ALPHA_GRID]
        points += [("alpha2", method, TINY, a) for a in ALPHA2_GRID]
        points += [("tied", method, a, a) for a in ALPHA_GRID]
    return points


def run_sweep(data, seeds, epochs, batches):
    rows, cache = [], {}
    for batch in batches:
        for sweep, method, a1, a2 in sweep_points():
            for seed in seeds:
                key = (batch, method, a1, a2, seed)  # (1e-10, 1e-10) appears in all three sweeps: train once
                if key not in cache:
                    cache[key] = train(method, data, seed, epochs, batch, a1, a2)[-1]
                acc, lam = cache[key]
                rows.append({"batch": batch, "sweep": sweep, "method": method, "alpha1": a1, "alpha2": a2,
                             "seed": seed, "test_acc": acc, "Lambda": lam})
    return rows


# ------------------------------------------------------------------------------------------- summaries


def seed_stats(rows, key_fields, value="test_acc"):
    """{key: (mean, min, max)} over seeds."""
    groups = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in key_fields), []).append(r[value])
    return {k: (float(np.mean(v)), float(np.min(v)), float(np.max(v))) for k, v in groups.items()}


def convergence_table(rows, batches, epochs):
    stats = seed_stats(rows, ("batch", "method", "epoch"))
    lines = ["(a) test accuracy, mean [min, max] over seeds",
             f"{'batch':>5} {'method':<11} " + " ".join(f"{'epoch ' + str(e):>20}" for e in range(1, epochs + 1))]
    for b in batches:
        for m in METHODS:
            cells = [f"{stats[(b, m, e)][0]:.3f} [{stats[(b, m, e)][1]:.3f},{stats[(b, m, e)][2]:.3f}]"
                     for e in range(1, epochs + 1)]
            lines.append(f"{b:>5} {m:<11} " + " ".join(f"{c:>20}" for c in cells))
        lead = [stats[(b, "slimtrain", e)][0] - stats[(b, "linear_ce", e)][0] for e in range(1, epochs + 1)]
        lines.append(f"{b:>5} {'lead vs CE':<11} " + " ".join(f"{d:>+20.3f}" for d in lead))
        lead = [stats[(b, "slimtrain", e)][0] - stats[(b, "linear_mse", e)][0] for e in range(1, epochs + 1)]
        lines.append(f"{b:>5} {'lead vs MSE':<11} " + " ".join(f"{d:>+20.3f}" for d in lead))
    lam = seed_stats([r for r in rows if r["method"] == "slimtrain"], ("batch", "epoch"), "Lambda")
    for b in batches:
        lines.append(f"slimTrain Lambda (mean over seeds), batch {b}: "
                     + ", ".join(f"{lam[(b, e)][0]:.3g}" for e in range(1, epochs + 1)))
    return lines


def spreads(rows):
    """{(batch, sweep, method): (spread, worst mean, best mean)} of the seed-mean accuracy over the grid."""
    stats = seed_stats(rows, ("batch", "sweep", "method", "alpha1", "alpha2"))
    out = {}
    for (b, s, m, _, _), (mean, _, _) in stats.items():
        out.setdefault((b, s, m), []).append(mean)
    return {k: (max(v) - min(v), min(v), max(v)) for k, v in out.items()}


def sweep_table(rows, batches):
    stats = seed_stats(rows, ("batch", "sweep", "method", "alpha1", "alpha2"))
    lines = ["(b) final test accuracy, seed mean, per grid point"]
    for b in batches:
        for s in ("alpha1", "alpha2", "tied"):
            grid = ALPHA2_GRID if s == "alpha2" else ALPHA_GRID
            lines.append(f"batch {b}, sweep {s}: " + " ".join(f"{a:>8.0e}" for a in grid))
            for m in METHODS:
                vals = []
                for a in grid:
                    a1, a2 = {"alpha1": (a, TINY), "alpha2": (TINY, a), "tied": (a, a)}[s]
                    vals.append(stats[(b, s, m, a1, a2)][0])
                lines.append(f"    {m:<11}" + " ".join(f"{v:>8.3f}" for v in vals))
    lines.append("spread = max - min of the seed-mean accuracy over the grid (worst .. best)")
    sp = spreads(rows)
    for b in batches:
        for s in ("alpha1", "alpha2", "tied"):
            lines.append(f"batch {b:>3} {s:<7} " + "  ".join(
                f"{m}: {sp[(b, s, m)][0]:.3f} ({sp[(b, s, m)][1]:.3f}..{sp[(b, s, m)][2]:.3f})" for m in METHODS))
    return lines


# ------------------------------------------------------------------------------------------- plots and files


COLORS = {"slimtrain": "C0", "linear_ce": "C3", "linear_mse": "C2"}


def plot_convergence(rows, batches, epochs, path):
    stats = seed_stats(rows, ("batch", "method", "epoch"))
    fig, axes = plt.subplots(1, len(batches), figsize=(5 * len(batches), 4), squeeze=False)
    ep = np.arange(1, epochs + 1)
    for ax, b in zip(axes[0], batches):
        for m in METHODS:
            mean, lo, hi = (np.array([stats[(b, m, e)][i] for e in ep]) for i in range(3))
            ax.plot(ep, mean, "o-", color=COLORS[m], label=m)
            ax.fill_between(ep, lo, hi, color=COLORS[m], alpha=0.2)  # band: min..max over seeds
        ax.set(title=f"digits, batch {b}", xlabel="epoch", ylabel="test accuracy", xticks=ep)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_sweep(rows, batches, path):
    stats = seed_stats(rows, ("batch", "sweep", "method", "alpha1", "alpha2"))
    sweeps = ("alpha1", "alpha2", "tied")
    xlabel = {"alpha1": "alpha1 (alpha2 = 1e-10)", "alpha2": "alpha2 (alpha1 = 1e-10)", "tied": "alpha1 = alpha2"}
    fig, axes = plt.subplots(len(batches), 3, figsize=(15, 4 * len(batches)), squeeze=False)
    for row, b in zip(axes, batches):
        for ax, s in zip(row, sweeps):
            grid = np.array(ALPHA2_GRID if s == "alpha2" else ALPHA_GRID)
            for m in METHODS:
                pts = [{"alpha1": (a, TINY), "alpha2": (TINY, a), "tied": (a, a)}[s] for a in grid]
                mean, lo, hi = (np.array([stats[(b, s, m, a1, a2)][i] for a1, a2 in pts]) for i in range(3))
                ax.plot(grid, mean, "o-", color=COLORS[m], label=m)
                ax.fill_between(grid, lo, hi, color=COLORS[m], alpha=0.2)
            ax.set(xscale="log", title=f"batch {b}, sweep {s}", xlabel=xlabel[s], ylabel="final test accuracy")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_csv(rows, path):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def verdicts(conv, sweep, batches, epochs):
    stats = seed_stats(conv, ("batch", "method", "epoch"))
    per_seed = {(r["batch"], r["method"], r["seed"], r["epoch"]): r["test_acc"] for r in conv}
    seeds = sorted({r["seed"] for r in conv})
    lines = ["verdicts"]
    for b in batches:
        e1 = stats[(b, "slimtrain", 1)][0] - stats[(b, "linear_ce", 1)][0]
        seed_wins = sum(per_seed[(b, "slimtrain", s, 1)] > per_seed[(b, "linear_ce", s, 1)] for s in seeds)
        lead_epochs = sum(stats[(b, "slimtrain", e)][0] > stats[(b, "linear_ce", e)][0] for e in range(1, epochs + 1))
        lines.append(f"  fast initial convergence, batch {b}: epoch-1 lead over linear_ce {e1:+.3f} "
                     f"({seed_wins}/{len(seeds)} seeds), slimTrain ahead at {lead_epochs}/{epochs} epochs, "
                     f"final {stats[(b, 'slimtrain', epochs)][0]:.3f} vs {stats[(b, 'linear_ce', epochs)][0]:.3f}")
    sp = spreads(sweep)
    for b in batches:
        for s in ("alpha1", "alpha2", "tied"):
            slim, ce, mse = (sp[(b, s, m)][0] for m in METHODS)
            lines.append(f"  sensitivity, batch {b}, {s}: spread slimtrain {slim:.3f} vs linear_ce {ce:.3f}, "
                         f"linear_mse {mse:.3f} -> {'lower' if slim < min(ce, mse) else 'NOT lower'}")
    return lines


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="docs/results", help="directory for the CSV and PNG files")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1")
    p.add_argument("--epochs", type=int, default=5, help="epochs for both the curves and the sweep")
    p.add_argument("--batches", default="32,64", help="comma-separated batch sizes")
    args = p.parse_args()
    torch.set_num_threads(1)  # the head's tiny fp64 products lose time in thread hand-offs; shared machine
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seeds, batches = list(range(args.seeds)), [int(b) for b in args.batches.split(",")]
    data = load_digits_split()
    t0 = time.time()
    conv = run_convergence(data, seeds, args.epochs, batches)
    t1 = time.time()
    sweep = run_sweep(data, seeds, args.epochs, batches)
    t2 = time.time()
    write_csv(conv, out / "slimtik_convergence.csv")
    write_csv(sweep, out / "slimtik_alpha_sweep.csv")
    plot_convergence(conv, batches, args.epochs, out / "slimtik_convergence.png")
    plot_sweep(sweep, batches, out / "slimtik_alpha_sweep.png")
    print(f"train {len(data[0])} / test {len(data[2])}; seeds {seeds}; epochs {args.epochs}; "
          f"convergence {t1 - t0:.0f} s, sweep {t2 - t1:.0f} s")
    for line in convergence_table(conv, batches, args.epochs) + [""] + sweep_table(sweep, batches) + [""] \
            + verdicts(conv, sweep, batches, args.epochs):
        print(line)


if __name__ == "__main__":
    main()
