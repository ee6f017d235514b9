"""Gradient accumulation gives the no-accumulation trajectory; bf16 trains with fp32 statistics."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def launch(nproc, out, *overrides):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "autoopt_dist", "train", "configs/digits_agd.yaml", "train.epochs=3", "track.wandb=disabled",
           f"track.out_dir={out}", *overrides]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = Path(out).iterdir()
    return json.loads((run / "summary.json").read_text()), torch.load(run / "final_params.pt")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return launch(1, tmp_path_factory.mktemp("ref"), "train.strategy=single")[1]


@pytest.mark.parametrize("strategy", ["ddp", "fsdp2", "zero2"])
def test_two_micro_batches_match_one_process_without_accumulation(tmp_path, reference, strategy):
    # 2 ranks x 2 micro-batches of 32 = the same 128 examples per step as one process with one batch.
    _, params = launch(2, tmp_path, f"train.strategy={strategy}", "train.grad_accum=2")
    for name, want in reference.items():
        torch.testing.assert_close(params[name], want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("strategy", ["fsdp2", "zero3"])
def test_bf16_trains(tmp_path, strategy):
    summary, params = launch(2, tmp_path, f"train.strategy={strategy}", "train.precision=bf16")
    assert summary["test/accuracy"] > 0.85  # measured 0.922 (fsdp2), 0.919 (zero3) after 3 epochs
    assert all(p.dtype == torch.float32 for p in params.values())  # fp32 masters, whatever the compute dtype
