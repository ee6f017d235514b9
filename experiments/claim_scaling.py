"""Architecture-aware learning-rate transfer, re-measured on real data (scikit-learn digits, offline).

Claim (Chen, Wu, Wang, Hanin, ICLR 2024, arXiv 2402.17440): the architecture-aware learning rate
    eta = eta_base * sqrt(S_base / S),   S = sum over input->output paths of L_p^3
(`autoopt_dist.scaling.arch_lr`) predicts the best learning rate of a network from the one tuned on a
one-hidden-layer base net, across depths and topologies (with `arch_init_`).

Setup (tests/unit/test_scaling.py::test_lr_transfer_on_digits, copied here so the script stands alone):
digits, 1500 images (permutation seed 0) standardised with their own statistics; width 64; `arch_init_`
(fan_in, source in-degree: AS-D1's default); plain SGD, batch 50, 2 epochs, seeds 0 and 1; score = final
full-train cross-entropy, mean over seeds (a diverged run scores inf); lr grid 2^(k/2), k = -14..4.
eta_base = grid-best lr of MLP depth 2 (one hidden layer). For every other net: predicted = arch_lr(net,
eta_base), best = its own grid-best lr, ratio = predicted / best, naive_ratio = eta_base / best (using the
base lr unchanged). Nets:
  - MLP depth 4, 8, 16 (chains; depth = number of Linear layers);
  - DAG cells of the reference MLP family (`mlp_dags.py`: stem, cell whose node t sums Linear+ReLU (2) and
    identity (1) branches of earlier nodes, readout), codes 2_22_222 (4 paths), 2_02_222 (3 paths),
    2_22_222_2222 (8 paths);
  - residual MLPs: stem, 4 blocks x + relu(linear(x)) (16 paths), without and with BatchNorm1d in the branch;
  - the library's conv ResNet (`ResNet(BasicBlock, [1,1,1,1], stem="cifar", width=8)`, BatchNorm, 8x8 digits as
    1-channel images; the models offer no ResNet without BatchNorm).
Losses are evaluated in train mode (BatchNorm with full-batch statistics: the function SGD optimised).

Run (about 40 s on one thread of a shared 2-core machine):
    python experiments/claim_scaling.py --out docs/results
writes scaling_lr_transfer.csv and scaling_lr_transfer.png and prints the verdict table.
"""

from __future__ import annotations

import argparse
import csv
import math
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

from autoopt_dist.models import MLP, CellMLP  # noqa: E402
from autoopt_dist.models.resnet import BasicBlock, ResNet  # noqa: E402
from autoopt_dist.scaling import arch_init_, arch_lr, path_summary  # noqa: E402

WIDTH = 64
GRID = [2 ** (k / 2) for k in range(-14, 5)]  # 0.0078 .. 4: brackets predictions down to depth 16 / 16 paths


# ------------------------------------------------------------------------------------------- models


class ResidualMLP(nn.Module):
    """stem, k blocks x + relu([bn](linear(x))), readout: 2^k paths (each block a skip or one Linear)."""

    def __init__(self, blocks=4, bn=False, width=WIDTH, d_in=64, d_out=10):
        super().__init__()
        self.stem = nn.Linear(d_in, width)
        self.branches = nn.ModuleList(
            nn.Sequential(nn.Linear(width, width), *([nn.BatchNorm1d(width)] if bn else []), nn.ReLU())
            for _ in range(blocks))
        self.readout = nn.Linear(width, d_out)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        for branch in self.branches:
            h = h + branch(h)
        return self.readout(h)


class ImageResNet(nn.Module):
    """The library ResNet on digits reshaped to 1x8x8 (the flat-input interface the other nets share)."""

    def __init__(self):
        super().__init__()
        self.net = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=10, stem="cifar", width=8, in_channels=1)

    def forward(self, x):
        return self.net(x.reshape(-1, 1, 8, 8))


def model_zoo():
    """name -> constructor; "mlp2" is the base net."""
    zoo = {f"mlp{d}": (lambda d=d: MLP(64, WIDTH, d, 10, agd_compatible=False)) for d in (2, 4, 8, 16)}
    for code in ("2_22_222", "2_02_222", "2_22_222_2222"):
        zoo[f"cell_{code}"] = lambda code=code: CellMLP(code, d_in=64, width=WIDTH, d_out=10)
    zoo["resmlp4"] = lambda: ResidualMLP(4, bn=False)
    zoo["resmlp4_bn"] = lambda: ResidualMLP(4, bn=True)
    zoo["resnet_conv_bn"] = ImageResNet
    return zoo


# ------------------------------------------------------------------------------------------- training


def load_data():
    """The unit test's data: 1500 digits (permutation seed 0), standardised with their own statistics."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    perm = np.random.default_rng(0).permutation(len(X))[:1500]
    X, y = X[perm], y[perm]
    mu, sd = X.mean(0), X.std(0)
    sd[sd == 0] = 1  # constant pixels keep scale 1
    return torch.tensor((X - mu) / sd, dtype=torch.float32), torch.tensor(y)


def final_loss(make, X, y, lr, seeds, epochs, batch):
    """Mean over seeds of the full-train loss after SGD at `lr`; inf if any seed diverges."""
    losses = []
    for seed in seeds:
        torch.manual_seed(seed)
        model = arch_init_(make(), X[:2])
        opt = torch.optim.SGD(model.parameters(), lr=lr)
        g = torch.Generator().manual_seed(seed)
        for _ in range(epochs):
            for idx in torch.randperm(len(X), generator=g).split(batch):
                opt.zero_grad()
                F.cross_entropy(model(X[idx]), y[idx]).backward()
                opt.step()
        with torch.no_grad():
            loss = F.cross_entropy(model(X), y).item()
        losses.append(loss if math.isfinite(loss) else float("inf"))
    return sum(losses) / len(losses)


def grid_best(make, X, y, seeds, epochs, batch):
    """(best lr, {lr: loss}). The scan stops once the loss has diverged past a finite optimum (larger lrs
    only diverge further), which saves most of the time on deep nets."""
    losses = {}
    for lr in GRID:
        losses[lr] = final_loss(make, X, y, lr, seeds, epochs, batch)
        if math.isinf(losses[lr]) and any(math.isfinite(v) for v in losses.values()):
            break
    return min(losses, key=losses.get), losses


# ------------------------------------------------------------------------------------------- outputs


def plot(rows, base_lr, path):
    fig, ax = plt.subplots(figsize=(6.5, 6))
    values = [base_lr] + [r[k] for r in rows for k in ("predicted", "best")]
    lo, hi = min(values) / 2, max(values) * 2
    xs = np.geomspace(lo, hi, 50)
    ax.plot(xs, xs, "k-", lw=1, label="y = x")
    ax.fill_between(xs, xs / 2, xs * 2, color="grey", alpha=0.2, label="factor 2")
    for i, r in enumerate(rows):
        c = f"C{i % 10}"
        ax.plot(r["best"], r["predicted"], "o", color=c, ms=8, label=f"{r['model']} (arch_lr)")
        ax.plot(r["best"], base_lr, "x", color=c, ms=8)  # naive: the base lr unchanged
    ax.plot([], [], "kx", label=f"naive (base lr {base_lr:.3g})")
    ax.set(xscale="log", yscale="log", xlim=(lo, hi), ylim=(lo, hi), xlabel="grid-best lr",
           ylabel="predicted lr", title="digits: architecture-aware lr vs grid-best lr")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="docs/results", help="directory for the CSV and PNG files")
    p.add_argument("--seeds", type=int, default=2, help="seeds 0..N-1")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch", type=int, default=50)
    args = p.parse_args()
    torch.set_num_threads(1)  # shared 2-core machine; tiny matrices gain nothing from threads
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    X, y = load_data()
    seeds = list(range(args.seeds))
    train = dict(seeds=seeds, epochs=args.epochs, batch=args.batch)
    zoo = model_zoo()
    t0 = time.time()
    base_lr, base_losses = grid_best(zoo["mlp2"], X, y, **train)
    if base_lr in (GRID[0], GRID[-1]):
        print(f"WARNING: base lr {base_lr} at the grid edge")
    rows = []
    for name, make in zoo.items():
        if name == "mlp2":
            continue
        best, losses = grid_best(make, X, y, **train)
        predicted = arch_lr(make(), X[:2], base_lr)
        summary = path_summary(make(), X[:2])
        rows.append({
            "model": name, "paths": summary.num_paths, "sum_cubed": summary.sum_cubed,
            "predicted": predicted, "best": best, "ratio": predicted / best, "naive_ratio": base_lr / best,
            # the loss cost of each choice: is the loss curve flat enough that the ratio does not matter?
            "loss_best": losses[best], "loss_predicted": final_loss(make, X, y, predicted, **train),
            "loss_naive": losses[base_lr] if base_lr in losses else final_loss(make, X, y, base_lr, **train),
            "best_at_grid_edge": best in (GRID[0], GRID[-1]),
        })
        print(f"  {name}: {time.time() - t0:.0f} s", flush=True)
    with open(out / "scaling_lr_transfer.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    plot(rows, base_lr, out / "scaling_lr_transfer.png")

    print(f"base: mlp2 grid-best lr {base_lr:.4g} (loss {base_losses[base_lr]:.3f}); seeds {seeds}, "
          f"{args.epochs} epochs, batch {args.batch}; {time.time() - t0:.0f} s")
    print(f"{'model':<20}{'paths':>6}{'S':>8}{'pred':>8}{'best':>8}{'ratio':>7}{'naive':>7}"
          f"{'L best':>8}{'L pred':>8}{'L naive':>8}")
    for r in rows:
        print(f"{r['model']:<20}{r['paths']:>6}{r['sum_cubed']:>8}{r['predicted']:>8.4f}{r['best']:>8.4f}"
              f"{r['ratio']:>7.2f}{r['naive_ratio']:>7.2f}{r['loss_best']:>8.3f}{r['loss_predicted']:>8.3f}"
              f"{r['loss_naive']:>8.3f}" + ("  (best at grid edge)" if r["best_at_grid_edge"] else ""))
    within = lambda key, f: sum(1 / f <= r[key] <= f for r in rows)  # noqa: E731
    geo = lambda key: math.exp(np.mean([abs(math.log(r[key])) for r in rows]))  # noqa: E731
    print(f"verdict: arch_lr within x2 of grid-best for {within('ratio', 2)}/{len(rows)} nets "
          f"(x3: {within('ratio', 3)}), naive for {within('naive_ratio', 2)}/{len(rows)} (x3: "
          f"{within('naive_ratio', 3)}); geometric-mean |log| error x{geo('ratio'):.2f} vs naive x{geo('naive_ratio'):.2f}")
    # Grid points are powers of sqrt(2), so naive ratios tie exactly at 2; the losses settle what a miss costs.
    better = sum(r["loss_predicted"] < r["loss_naive"] for r in rows)
    print(f"         final loss at the arch_lr below the naive lr's for {better}/{len(rows)} nets; "
          f"within 25% of the grid-best loss for {sum(r['loss_predicted'] <= 1.25 * r['loss_best'] for r in rows)}"
          f"/{len(rows)} (naive: {sum(r['loss_naive'] <= 1.25 * r['loss_best'] for r in rows)}/{len(rows)})")


if __name__ == "__main__":
    main()
