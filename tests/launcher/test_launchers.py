"""Every launcher path and every file in launch/ runs a real 2-process job on CPU, and the engine that
ran is the one the launch file asked for (Accelerate on CPU silently drops some: we check, never assume).

Paths: `accelerate launch` with each launch/accelerate/*.yaml (a user loop via autoopt_dist.accelerate
for ddp, fsdp2, zero2; the harness with train.strategy=auto for fsdp1, zero1, zero3), the `deepspeed`
launcher, launch/torchrun.sh, and the refusal of N unsynchronised copies.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def run(cmd, extra_env=None, timeout=300):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", **(extra_env or {})}
    if "ACCELERATE_USE_CPU" not in (extra_env or {}):
        env.pop("ACCELERATE_USE_CPU", None)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)


def accelerate(config: str, *args, extra_env=None):
    cmd = [str(BIN / "accelerate"), "launch", "--config_file", f"launch/accelerate/{config}.yaml",
           "--main_process_port", free_port(), *args]
    return run(cmd, extra_env)


@pytest.mark.parametrize(
    "config,env,expected",
    [
        ("ddp", {"ACCELERATE_USE_CPU": "1"}, {"distributed_type": "DistributedType.MULTI_CPU", "model_class": "DistributedDataParallel"}),
        ("fsdp2", {}, {"param_class": "DTensor"}),  # Accelerate ignores FSDP on CPU; autoopt_dist applies it
        ("zero2", {}, {"distributed_type": "DistributedType.DEEPSPEED", "model_class": "DeepSpeedEngine"}),
    ],
)
def test_accelerate_user_loop(tmp_path, config, env, expected):
    report = tmp_path / "report.json"
    proc = accelerate(config, "examples/accelerate_agd.py", "3", str(report), extra_env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(report.read_text())
    assert {k: got[k] for k in expected} == expected
    assert got["world_size"] == 2 and got["synchronised"]
    assert got["accuracy"] > 0.85  # 3 epochs of AGD on digits; measured 0.922 on every engine


def test_accelerate_unsynchronised_copies_are_refused():
    proc = accelerate("ddp", "examples/accelerate_agd.py", "1")  # no ACCELERATE_USE_CPU on a CPU machine
    assert proc.returncode != 0
    assert "unsynchronised copies" in proc.stderr and "ACCELERATE_USE_CPU=1" in proc.stderr


@pytest.mark.parametrize("config,strategy", [("fsdp1", "fsdp1"), ("zero1", "zero1"), ("zero3", "zero3")])
def test_accelerate_harness_runs_the_configured_engine(tmp_path, config, strategy):
    proc = accelerate(config, "-m", "autoopt_dist", "train", "configs/digits_agd.yaml", "train.strategy=auto",
                      "train.epochs=3", f"track.out_dir={tmp_path}", "track.wandb=disabled")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / f"digits-mlp-agd-{strategy}" / "summary.json").read_text())
    assert summary["strategy"] == strategy and summary["world_size"] == 2
    assert summary["test/accuracy"] > 0.85


def test_explicit_strategy_contradicting_the_accelerate_config_is_an_error(tmp_path):
    proc = accelerate("zero1", "-m", "autoopt_dist", "train", "configs/digits_agd.yaml", "train.strategy=ddp",
                      f"track.out_dir={tmp_path}")
    assert proc.returncode != 0  # each process exits 2; accelerate launch reports 1
    assert "autoopt: error: train.strategy: ddp, but the accelerate config asks for zero1" in proc.stderr


def test_deepspeed_launcher(tmp_path):
    cmd = [str(BIN / "deepspeed"), "--num_gpus", "2", "--master_port", free_port(), "--module", "autoopt_dist",
           "train", "configs/digits_agd.yaml", "train.strategy=zero2", "train.epochs=3",
           f"track.out_dir={tmp_path}", "track.wandb=disabled"]
    proc = run(cmd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "digits-mlp-agd-zero2" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["strategy"] == "zero2"


def test_torchrun_wrapper(tmp_path):
    proc = run(["bash", "launch/torchrun.sh", "configs/digits_agd.yaml", "train.strategy=ddp", "train.epochs=3",
                f"track.out_dir={tmp_path}", "track.wandb=disabled"], {"NPROC": "2", "PATH": f"{BIN}:{os.environ['PATH']}"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "digits-mlp-agd-ddp" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["strategy"] == "ddp"
