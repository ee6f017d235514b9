"""Time one `optimizer.step()` of every method against AdamW and plain SGD on the same ResNet weights.

    .venv/bin/python benchmarks/bench_step.py [--model resnet18] [--repeats 200] [--threads T] [--json PATH]

Single process, on the CPU (or `--device cuda`, where each step is timed between two synchronizes). The model is `build_model(model, agd_compatible=True)` (ImageNet stem, 1000
classes): no biases and no BatchNorm affine parameters, because AGD steps matrices and conv kernels
only; so every optimizer steps exactly the same weight tensors. Gradients are filled with random
values once and never change.

Each optimizer is warmed up first (AdamW's first step allocates its state), then the optimizers are
timed in rounds: every round steps each optimizer once, in an order rotated from round to round, so
machine-load drift falls on all of them alike. Before every timed step a buffer twice the size of the
last-level cache is overwritten (`--no-flush` turns this off), so each step starts cold, as it does in
training, where forward and backward run in between, and no step inherits cache contents from the one
before. The table reports the median over rounds. All of them step the same tensors in place, so the
weights drift over the run; the work a step does does not depend on the values.

These steps are memory-bound: a few flops per element against a read or write of 4 bytes for every
tensor touched. The analytic line counts the fp32 tensor traffic of each step (per parameter):
SGD reads g, reads and writes p (3 x 4 B); AGD reads g twice (statistics, then update) and reads and
writes p (4 x 4 B); AdamW reads g, p, m, v and writes p, m, v (7 x 4 B).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from autoopt_dist.models import MODELS, build_model  # noqa: E402
from autoopt_dist.optim import AGD, ECCO, HyperAdam, HyperSGD  # noqa: E402

# Tensor traffic per parameter per step, in fp32 words (see the module docstring).
WORDS_MOVED = {"AGD": 4, "AdamW": 7, "SGD": 3}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def state_bytes_per_param(opt: torch.optim.Optimizer, numel: int) -> float:
    """Bytes of every tensor the optimizer keeps in `opt.state`, per stepped parameter element."""
    total = sum(t.nbytes for s in opt.state.values() for t in s.values() if torch.is_tensor(t))
    return total / numel


def build_optimizers(params: list[tuple[str, torch.nn.Parameter]]) -> dict[str, torch.optim.Optimizer]:
    tensors = [p for _, p in params]
    return {
        "AGD": AGD(params),
        "AdamW": torch.optim.AdamW(tensors, foreach=True),
        "SGD": torch.optim.SGD(tensors, lr=0.1, foreach=True),  # no momentum: the memory-traffic floor
        # The other methods' steps, beside AdamW (issue #3). slimTrain's head solve is not an optimizer
        # step (its cost: docs/methods/slimtik.md); architecture-aware scaling has no step of its own.
        "HyperSGD": HyperSGD(params, lr=0.01, momentum=0.5, hyper_lrs=(1e-5,)),
        "HyperAdam": HyperAdam(params, lr=1e-3, hyper_lrs=(1e-5,)),
        "ECCO": ECCO(params, eta=0.3),
    }


def last_level_cache_bytes(device: torch.device) -> int:
    """Size of the GPU's L2, or of the largest CPU cache (sysfs), or 32 MiB if unknown."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).L2_cache_size
    sizes = []
    for f in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = f.read_text().strip()
        units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
        sizes.append(int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text))
    return max(sizes, default=32 << 20)


def time_steps(
    opts: dict[str, torch.optim.Optimizer], repeats: int, warmup: int, flush: torch.Tensor | None,
    sync=lambda: None,
) -> dict[str, list[float]]:
    """Per optimizer, the wall time of each timed `step()`, in seconds.

    `flush` (a buffer twice the last-level cache) is overwritten before every step, so each step starts
    from a cold cache, as in training where forward and backward run in between, and no step's time
    depends on which optimizer ran just before it.
    """
    for _ in range(warmup):
        for opt in opts.values():
            opt.step()
    names = list(opts)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            if flush is not None:
                flush.fill_(r)
            sync()  # a GPU step is timed from an idle device to its last kernel's end
            t0 = time.perf_counter()
            opts[name].step()
            sync()
            times[name].append(time.perf_counter() - t0)
    return times


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet18", choices=sorted(m for m in MODELS if m != "mlp"))
    parser.add_argument("--repeats", type=int, default=200, help="timed rounds (each steps every optimizer once)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed rounds first")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--no-flush", action="store_true", help="do not evict the caches before each step")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    model = build_model(args.model, agd_compatible=True).to(device)
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    numel = sum(p.numel() for _, p in params)
    for _, p in params:
        p.grad = torch.randn_like(p)

    opts = build_optimizers(params)
    llc = last_level_cache_bytes(device)
    flush = None if args.no_flush else torch.empty(2 * llc // 4, device=device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    times = time_steps(opts, args.repeats, args.warmup, flush, sync)

    med = {n: statistics.median(t) * 1e3 for n, t in times.items()}
    iqr = {n: tuple(q * 1e3 for q in statistics.quantiles(t, n=4)[::2]) for n, t in times.items()}
    best = {n: min(t) * 1e3 for n, t in times.items()}
    state = {n: state_bytes_per_param(o, numel) for n, o in opts.items()}
    result = {
        "model": args.model,
        "tensors": len(params),
        "params": numel,
        "cpu": cpu_model(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "logical_cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "repeats": args.repeats,
        "warmup": args.warmup,
        "cache_flush_bytes": 0 if flush is None else flush.nbytes,
        "median_ms": med,
        "quartiles_ms": iqr,
        "min_ms": best,
        "state_bytes_per_param": state,
        "ratio_agd_adamw": med["AGD"] / med["AdamW"],
        "ratio_agd_sgd": med["AGD"] / med["SGD"],
        "bytes_moved_per_step": {n: WORDS_MOVED[n] * 4 * numel for n in opts if n in WORDS_MOVED},
        "ratio_to_adamw": {n: med[n] / med["AdamW"] for n in opts},
    }

    print(f"machine: {result['cpu']}, device {result['device']}, {result['threads']} torch threads "
          f"({result['logical_cpus']} logical CPUs), torch {result['torch']}, python {result['python']}")
    print(f"model:   {args.model} (agd_compatible, ImageNet stem, 1000 classes): "
          f"{len(params)} weight tensors, {numel:,} parameters")
    flushed = "no cache flush" if flush is None else f"caches flushed ({flush.nbytes >> 20} MiB written) before each step"
    print(f"timing:  {args.warmup} warm-up rounds, median of {args.repeats} interleaved rounds, {flushed}\n")
    print(f"{'optimizer':<10}{'median ms':>10}{'    (q1 - q3)':<22}{'min ms':>7}{'state B/param':>15}"
          f"{'moved MB/step':>15}{'GB/s':>7}")
    for name in opts:
        q1, q3 = iqr[name]
        line = f"{name:<10}{med[name]:>10.2f}   ({q1:7.2f} - {q3:7.2f}){best[name]:>9.2f}{state[name]:>15.2f}"
        moved = result["bytes_moved_per_step"].get(name)
        line += f"{moved / 1e6:>15.1f}{moved / med[name] / 1e6:>7.1f}" if moved else f"{'-':>15}{'-':>7}"
        print(line + f"   x{result['ratio_to_adamw'][name]:.2f} AdamW")
    print(f"\nAGD/AdamW = {result['ratio_agd_adamw']:.3f}   (target <= 0.3)")
    print(f"AGD/SGD   = {result['ratio_agd_sgd']:.3f}   (target <= 2)")
    print("bytes moved per param per step (fp32): SGD 3 x 4 = 12 B (read g, read+write p); "
          "AGD 4 x 4 = 16 B (read g twice, read+write p); AdamW 7 x 4 = 28 B (read g, p, m, v; write p, m, v)")
    print(f"  => memory-traffic bounds relative to AdamW: AGD {4 / 7:.2f}x, SGD {3 / 7:.2f}x; AGD/SGD {4 / 3:.2f}x")

    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return result


if __name__ == "__main__":
    main()
