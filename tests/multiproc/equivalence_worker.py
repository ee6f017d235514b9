"""Run under torchrun: every equivalence case on every engine, beside a world-size-1 oracle.

The oracle runs in this same process without torch.distributed: the bare model, the whole global
batch, split into world-size micro-batches whose losses are averaged (gradient accumulation). That is
exactly what N data-parallel ranks compute, BatchNorm included (each rank normalises its own
micro-batch), so any difference is the engine's or the optimizer's. Rank 0 writes a JSON report that
tests/multiproc/test_equivalence.py asserts on.

Usage: torchrun --standalone --nproc_per_node N -m tests.multiproc.equivalence_worker OUT.json [NAME_PREFIX]
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.profiler import ProfilerActivity, profile

from autoopt_dist.layout import Reducer
from autoopt_dist.train.engine import (
    ZERO_STRATEGIES,
    deepspeed_config,
    deepspeed_initialize,
    full_state,
    init_distributed,
    layout_of,
    optimizer_params,
    shutdown,
    wrap_model,
)

from .cases import GLOBAL_BATCH, Case


def all_cases(prefix: str = "") -> list[Case]:
    cases = []
    for mod in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if mod.name.startswith("cases_"):
            cases += importlib.import_module(f"{__package__}.{mod.name}").CASES
    return [c for c in cases if c.name.startswith(prefix)]


def make_data(case: Case, spec):
    g = torch.Generator().manual_seed(1234)
    data = []
    for _ in range(case.steps):
        x = torch.randn(GLOBAL_BATCH, *spec.input_shape, generator=g).to(case.dtype)
        if isinstance(spec.loss_fn, nn.CrossEntropyLoss):
            y = torch.randint(0, spec.num_outputs, (GLOBAL_BATCH,), generator=g)
        else:
            y = torch.randn(GLOBAL_BATCH, spec.num_outputs, generator=g).to(case.dtype)
        data.append((x, y))
    return data


def fresh(case: Case):
    torch.manual_seed(0)
    spec = case.make_model()
    spec.model.to(case.dtype)
    if case.init is not None:
        case.init(spec.model)
    return spec


def scalars(opt) -> dict[str, float]:
    return {k: float(v) for k, v in getattr(opt, "last_scalars", {}).items()}


def run_oracle(case: Case, data, world):
    spec = fresh(case)
    opt = case.make_optimizer(list(spec.model.named_parameters()), None, spec.model)
    trace = []
    for x, y in data:
        case.oracle_step(spec.model, opt, list(zip(x.chunk(world), y.chunk(world))), spec.loss_fn)
        trace.append(scalars(opt))
    return {n: p.detach().clone() for n, p in spec.model.named_parameters()}, trace


def count_collectives(prof) -> int:
    # Backend-level events: every collective, whether issued through c10d or functional collectives.
    return sum(1 for e in prof.events() if e.name.startswith("gloo:"))


def run_engine(case: Case, engine, data, rank, world):
    spec = fresh(case)
    if engine in ZERO_STRATEGIES:
        # ZeRO wraps model and optimizer together: our optimizer is DeepSpeed's client optimizer.
        opt = case.make_optimizer(list(spec.model.named_parameters()), None, spec.model)
        config = deepspeed_config(engine, GLOBAL_BATCH // world, sub_group_size=case.extra.get("sub_group_size"))
        wrapped = deepspeed_initialize(spec.model, opt, config)
    else:
        wrapped = wrap_model(spec.model, engine, torch.device("cpu"), spec.shard_modules)
        opt = case.make_optimizer(optimizer_params(wrapped), layout_of(wrapped), wrapped)
    trace, collectives, calls = [], [], []
    original_step = opt.step

    def counted_step(*args, **kwargs):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            out = original_step(*args, **kwargs)
        calls.append(count_collectives(prof))
        return out

    opt.step = counted_step
    for x, y in data:
        calls.clear()  # DeepSpeed may call a client optimizer's step() once per part: sum them per step
        case.engine_step(wrapped, opt, x.chunk(world)[rank], y.chunk(world)[rank], spec.loss_fn)
        collectives.append(sum(calls))
        trace.append(scalars(opt))
    # How many step() calls DeepSpeed makes per optimizer step (groups, or ZeRO-3 sub-groups).
    zopt = getattr(wrapped, "optimizer", None)
    parts = len(getattr(zopt, "fp32_partitioned_groups_flat", getattr(zopt, "single_partition_of_fp32_groups", [0])))
    return full_state(wrapped), trace, collectives, parts


def relative_errors(got, want):
    return {n: float((got[n].double() - w.double()).norm() / w.double().norm().clamp_min(1e-30)) for n, w in want.items()}


def reducer_checks(rank: int, world: int) -> dict[str, list[float]]:
    """The Reducer on a real group: partial entries summed, replicated ones counted once, maxima."""
    reducer = Reducer.for_views(dist.group.WORLD if world > 1 else None)
    local = torch.tensor([rank + 1.0, 5.0, -rank])
    mixed = reducer.sum({"a": (local[:2], torch.tensor([True, False])), "b": (local[2:], True)})
    data = reducer.sum({"d": (torch.tensor([1.0]), False)}, data_dependent=True)  # masks ignored: data is partial
    maxima = reducer.max({"m": torch.tensor([float(rank), -float(rank)])})
    return {
        "mixed": mixed["a"].tolist() + mixed["b"].tolist(),
        "data": data["d"].tolist(),
        "max": maxima["m"].tolist(),
        "collectives": [reducer.collectives],
    }


def main(out_path: str, prefix: str = "") -> None:
    env = init_distributed("ddp")
    rank, world = env.rank, env.world_size
    report = {"world_size": world, "cases": [], "reducer": reducer_checks(rank, world)}
    for case in all_cases(prefix):
        spec = case.make_model()
        data = make_data(case, spec)
        oracle_params, oracle_trace = run_oracle(case, data, world)
        for engine in case.engines:
            params, trace, collectives, parts = run_engine(case, engine, data, rank, world)
            missing = sorted(set(oracle_params) - set(params))
            report["cases"].append({
                "case": case.name,
                "engine": engine,
                "missing": missing,
                "rel_err": relative_errors(params, oracle_params) if not missing else {},
                "scalars": trace,
                "oracle_scalars": oracle_trace,
                "collectives": collectives,
                "deepspeed_parts": parts,
                "expected_collectives": case.collectives(engine, world),
                "steps": case.steps,
                "tol_params": case.tol_params,
                "tol_scalars": case.tol_scalars,
            })
    # Replicated scalars must be bitwise identical on every rank.
    mine = [c["scalars"] for c in report["cases"]]
    everyone = [None] * world
    dist.all_gather_object(everyone, mine)
    report["scalars_identical_across_ranks"] = all(o == mine for o in everyone)
    if rank == 0:
        Path(out_path).write_text(json.dumps(report))
    shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:])
