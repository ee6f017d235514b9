"""`autoopt`: the command line. `autoopt train CONFIG [section.key=value ...]`."""

from __future__ import annotations

import argparse
import os
import sys

from .train.config import load_config
from .train.errors import ConfigError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="autoopt", description="Learning-rate-free training, exact under sharding.")
    # The deepspeed launcher inserts --local_rank=N before the command; the rank is read from the environment.
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True)
    p_train = sub.add_parser("train", help="train a model from a YAML config")
    p_train.add_argument("config", nargs="?", help="YAML file (defaults: digits, MLP, AGD, FSDP2)")
    p_train.add_argument("overrides", nargs="*", help="section.key=value, e.g. optim.gain=2")
    p_plan = sub.add_parser("plan", help="validate a recipe and size it per GPU, without data or GPUs")
    p_plan.add_argument("rest", nargs=argparse.REMAINDER, help="CONFIG [overrides] --nodes N --gpus-per-node G")
    p_sweep = sub.add_parser("sweep", help="accuracy against a hyperparameter, one line per optimizer")
    p_sweep.add_argument("rest", nargs=argparse.REMAINDER, help="CONFIG [overrides] --param KEY --log-grid LO:HI:N ...")
    args = parser.parse_args(argv)
    if args.command in ("plan", "sweep"):
        try:
            if args.command == "plan":
                from .plan import main as command
            else:
                from .sweep import main as command
            command(args.rest)
            return 0
        except ConfigError as e:
            print(f"autoopt: error: {e}", file=sys.stderr)
            return 2
    try:
        cfg = load_config(args.config, args.overrides)
        from .train.loop import train  # torch imports after the config is known to be valid

        train(cfg)
        code = 0
    except ConfigError as e:
        print(f"autoopt: error: {e}", file=sys.stderr)
        code = 2
    return _exit_after_process_group(code)


def _exit_after_process_group(code: int) -> int:
    """Leave without running C++ static destructors once a gloo process group has existed: at interpreter
    teardown they race with gloo's worker threads and abort the process ("terminate called without an
    active exception", seen in ~1 of 6 two-rank runs here) after all work was done and saved. Everything
    is already flushed and closed (the group destroyed, wandb finished, files written)."""
    engine = sys.modules.get("autoopt_dist.train.engine")
    if engine is not None and engine.PROCESS_GROUP_STARTED:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
