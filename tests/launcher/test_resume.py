"""Stop mid-epoch, resume, and end with exactly the parameters of an uninterrupted run, per strategy.

The stop is the same path a SLURM preemption takes (checkpoint, leave; `checkpoint.session_steps` stands
in for the signal so the test is deterministic; test_signals covers SIGUSR1 itself). 14 steps is inside
epoch 2 (11 steps per epoch at batch 128 on digits), so the data position must be restored too.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from autoopt_dist.train.checkpoint import MARKER, latest_checkpoint

ROOT = Path(__file__).resolve().parents[2]
COMMON = ["configs/digits_agd.yaml", "train.epochs=3", "track.wandb=disabled", "train.log_every=5"]


def launch(nproc, out, *overrides, expect_ok=True):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "autoopt_dist", "train", *COMMON, f"track.out_dir={out}", *overrides]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    if expect_ok:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def final_params(out):
    (run,) = Path(out).iterdir()
    return torch.load(run / "final_params.pt")


@pytest.mark.parametrize("strategy", ["ddp", "fsdp1", "fsdp2", "zero2", "zero3"])
def test_resume_mid_epoch_matches_uninterrupted(tmp_path, strategy):
    launch(2, tmp_path / "straight", f"train.strategy={strategy}")
    launch(2, tmp_path / "resumed", f"train.strategy={strategy}", "checkpoint.session_steps=14")
    (run,) = (tmp_path / "resumed").iterdir()
    assert latest_checkpoint(run / "checkpoints").name == "step_00000014"
    assert not (run / "final_params.pt").exists()
    launch(2, tmp_path / "resumed", f"train.strategy={strategy}")
    want, got = final_params(tmp_path / "straight"), final_params(tmp_path / "resumed")
    assert want.keys() == got.keys()
    for name in want:  # same strategy, same world size: bitwise
        assert torch.equal(want[name], got[name]), name


def test_fsdp2_saved_on_2_ranks_resumes_on_3(tmp_path):
    common = ["train.strategy=fsdp2", "data.batch_size=120"]  # 120 splits over 2 and 3 ranks
    launch(2, tmp_path / "straight", *common)
    launch(2, tmp_path / "resumed", *common, "checkpoint.session_steps=14")
    launch(3, tmp_path / "resumed", *common)
    want, got = final_params(tmp_path / "straight"), final_params(tmp_path / "resumed")
    for name in want:  # other world size: other reduction order, fp32 rounding only
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-6)


def test_sigusr1_checkpoints_and_resume_completes(tmp_path):
    """SIGUSR1 (SLURM's --signal) to every process: checkpoint at the next step, exit 0, resume later."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "autoopt_dist", "train", "configs/digits_agd.yaml", "train.epochs=400", "train.strategy=ddp",
           "track.wandb=disabled", f"track.out_dir={tmp_path}"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True)
    run = tmp_path / "digits-mlp-agd-ddp"
    deadline = time.time() + 120
    while not (run / "metrics.jsonl").exists() or not (run / "metrics.jsonl").read_text():
        assert time.time() < deadline and proc.poll() is None, proc.stderr.read() if proc.poll() is not None else ""
        time.sleep(0.5)
    # torchrun forwards SIGTERM to its workers but not SIGUSR1: signal the workers themselves, as SLURM's
    # --signal with srun does for every task of the step.
    workers = subprocess.run(["pgrep", "-f", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert workers
    for pid in workers:
        os.kill(int(pid), signal.SIGUSR1)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    ckpt = latest_checkpoint(run / "checkpoints")
    assert ckpt is not None and (ckpt / MARKER).is_file()
    steps = int(ckpt.name.split("_")[1])
    assert 0 < steps < 400 * 11


def test_non_finite_steps_stop_the_run_with_a_checkpoint(tmp_path):
    # SGD with lr 1e30 overflows within a few steps: each non-finite step is skipped, then the run stops.
    proc = launch(2, tmp_path, "train.strategy=ddp", "optim.name=sgd", "optim.lr=1e30", "model.agd_compatible=false",
                  "train.max_bad_steps=3", expect_ok=False)
    assert proc.returncode != 0
    assert "3 optimizer steps in a row had a non-finite loss or gradient" in proc.stderr
    (run,) = tmp_path.iterdir()
    ckpt = latest_checkpoint(run / "checkpoints")
    assert ckpt is not None
    state = torch.load(ckpt / "trainer_rank0.pt", weights_only=False)["trainer"]
    assert state["skipped_steps"] >= 3 and state["consecutive_skips"] == 3


def test_incomplete_checkpoint_is_ignored(tmp_path):
    (tmp_path / "step_00000010").mkdir()
    (tmp_path / "step_00000010" / MARKER).write_text("")
    (tmp_path / "step_00000020.tmp").mkdir()  # a save interrupted by a crash
    (tmp_path / "step_00000030").mkdir()  # no marker: never completed
    assert latest_checkpoint(tmp_path).name == "step_00000010"


@pytest.mark.parametrize("strategy,optimizer", [("zero2", "hyper_adam"), ("fsdp2", "ecco")])
def test_stateful_methods_resume_exactly(tmp_path, strategy, optimizer):
    """Optimizer state (learned lr/betas, moments, stored update derivatives; ECCO's previous gradient and
    direction) saved by DCP or DeepSpeed's checkpoint and loaded back: the same end as no interruption."""
    common = [f"train.strategy={strategy}", f"optim.name={optimizer}", "model.agd_compatible=false", "train.loss=xent"]
    launch(2, tmp_path / "straight", *common)
    launch(2, tmp_path / "resumed", *common, "checkpoint.session_steps=14")
    launch(2, tmp_path / "resumed", *common)
    want, got = final_params(tmp_path / "straight"), final_params(tmp_path / "resumed")
    for name in want:
        assert torch.equal(want[name], got[name]), name
