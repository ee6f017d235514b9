"""`autoopt`: the command line. `autoopt train CONFIG [section.key=value ...]`."""

from __future__ import annotations

import argparse
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
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        from .train.loop import train  # torch imports after the config is known to be valid

        train(cfg)
    except ConfigError as e:
        print(f"autoopt: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
