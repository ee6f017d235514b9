"""slurm/*.sbatch on a real two-node Slurm cluster started by tests/slurm/cluster.sh (docs/slurm.md, CI).

The cluster (slurmctld + 2 slurmd in their own network namespaces, 96 CPUs and 8 fake GPUs per node) lives
in a `mktemp -d` folder for this module and is stopped on teardown, also after a failure. The production
script files run unchanged: the jobs inherit the test's environment (the virtualenv first on PATH,
GPUS_PER_NODE=1 or 2 processes per node on CPU, OMP_NUM_THREADS=1), and each job runs in its own folder
so its `logs/` and `runs/` land there. Needs root and the packages of tests/slurm/install.sh; without
them every test here FAILS (never skips) and says so.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SLURM = ROOT / "slurm"
CLUSTER_SH = ROOT / "tests" / "slurm" / "cluster.sh"
CONFIG = str(ROOT / "configs" / "digits_agd.yaml")
SCRIPTS = sorted(p.name for p in SLURM.glob("*.sbatch"))
NEEDED = ("slurmctld", "slurmd", "sbatch", "srun", "scontrol", "munged", "mungekey", "shellcheck", "ip", "unshare",
          "nsenter")
INSTALL = "run `tests/slurm/install.sh` as root first (it installs slurm-wlm, munge, shellcheck, iproute2)"
JOB_TIMEOUT = 300  # seconds from submission to the end of a job, on a loaded 2-core machine
# A job must not see the variables of a launcher or of a Slurm job that runs this test suite.
FOREIGN = re.compile(r"^(SLURM_|SBATCH_|SRUN_|SALLOC_|PET_|TORCHELASTIC_|ACCELERATE_)|^(RANK|WORLD_SIZE|LOCAL_RANK|"
                     r"LOCAL_WORLD_SIZE|MASTER_ADDR|MASTER_PORT|GPUS_PER_NODE|RUN_NAME|OUT_DIR|SWEEP_KEY)$")


def clean_environ() -> dict:
    return {k: v for k, v in os.environ.items() if not FOREIGN.match(k)}


def which(cmd: str) -> str | None:
    return shutil.which(cmd, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")


def require(*cmds: str) -> None:
    """Fail (never skip) with what to do when the machine cannot run these tests."""
    missing = [c for c in cmds if which(c) is None]
    if missing:
        pytest.fail(f"tests/slurm: {', '.join(missing)} not found; {INSTALL}", pytrace=False)


class Cluster:
    def __init__(self, base: Path):
        self.base = base
        self.hub = (base / "run" / "ns-ctl.pid").read_text().strip()
        self._dirs = 0

    def run(self, *args: str, env: dict | None = None, cwd: Path | None = None, check: bool = True,
            timeout: float = 60) -> subprocess.CompletedProcess:
        """A Slurm client (or a script that calls one) in the hub's network namespace, against this cluster."""
        full_env = dict(env) if env is not None else clean_environ()
        full_env["SLURM_CONF"] = str(self.base / "etc" / "slurm.conf")
        proc = subprocess.run(["nsenter", f"--net=/proc/{self.hub}/ns/net", "--", *args], env=full_env,
                              cwd=cwd, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
        return proc

    def workdir(self, name: str) -> Path:
        """A fresh submit directory (job ids restart at 1 per cluster, so never reuse one)."""
        self._dirs += 1
        d = self.base / "work" / f"{self._dirs:02d}-{name}"
        (d / "logs").mkdir(parents=True)
        return d

    def job_env(self, gpus_per_node: int, **extra: str) -> dict:
        env = clean_environ()
        env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}"
        env.update(OMP_NUM_THREADS="1", WANDB_MODE="offline", GPUS_PER_NODE=str(gpus_per_node), **extra)
        return env

    def submit(self, script: str, *args: str, cwd: Path, env: dict) -> str:
        proc = self.run("sbatch", "--parsable", str(SLURM / script), *args, env=env, cwd=cwd)
        return proc.stdout.strip().split(";")[0]

    def queued(self, job: str, fmt: str = "%T") -> list[str]:
        return self.run("squeue", "-h", "-j", job, "-o", fmt, check=False).stdout.split()

    def wait_gone(self, job: str, log: Path | None = None, timeout: float = JOB_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while self.queued(job):
            if time.monotonic() > deadline:
                self.run("scancel", job, check=False)
                raise AssertionError(f"job {job} still queued after {timeout} s\n{tail(log)}")
            time.sleep(0.5)

    def records(self, job: str) -> list[dict]:
        """`scontrol show job` (kept MinJobAge=300 s after the end): one dict per job or array task."""
        out = self.run("scontrol", "show", "job", job).stdout
        return [dict(tok.split("=", 1) for tok in rec.split() if "=" in tok) for rec in out.strip().split("\n\n")]


def running(pid: int) -> bool:
    """Alive and not a zombie (killed orphans wait for init to reap them)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def tail(path: Path | None, n: int = 60) -> str:
    if path is None or not path.is_file():
        return f"(no log at {path})"
    lines = [ln for ln in path.read_text(errors="replace").splitlines() if "socket.cpp" not in ln]
    return f"--- {path} (last {n} lines) ---\n" + "\n".join(lines[-n:])


@pytest.fixture(scope="module")
def cluster():
    if os.geteuid() != 0:
        pytest.fail(f"tests/slurm needs root (network namespaces, munge, mknod); {INSTALL}, then run pytest as root",
                    pytrace=False)
    require(*NEEDED)
    base = Path(tempfile.mkdtemp(prefix="slurm-ci-"))
    try:
        proc = subprocess.run(["bash", str(CLUSTER_SH), "start", str(base), "2", "96", "8"], capture_output=True,
                              text=True, timeout=120)
        if proc.returncode != 0:
            logs = "\n".join(tail(p, 20) for p in sorted((base / "log").glob("*")))
            pytest.fail(f"cluster.sh start failed ({proc.returncode}): {proc.stderr}\n{logs}", pytrace=False)
        yield Cluster(base)
    finally:
        subprocess.run(["bash", str(CLUSTER_SH), "stop", str(base)], timeout=120)
        shutil.rmtree(base, ignore_errors=True)


def assert_completed(rec: dict, restarts: int = 0, log: Path | None = None) -> None:
    got = (rec.get("JobState"), rec.get("ExitCode"), rec.get("Restarts"))
    assert got == ("COMPLETED", "0:0", str(restarts)), f"job {rec.get('JobId')}: {got}\n{tail(log)}"


# --- static checks: no cluster needed ----------------------------------------------------------------------


def test_scripts_are_shellcheck_clean():
    require("shellcheck")
    files = [str(SLURM / s) for s in SCRIPTS] + [str(p) for p in sorted((ROOT / "tests" / "slurm").glob("*.sh"))]
    assert len(SCRIPTS) == 6, SCRIPTS
    proc = subprocess.run(["shellcheck", "-s", "bash", *files], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_common_block_is_identical_in_every_script():
    """The argument handling, run folder and preemption traps are copied, not sourced (a job runs a spool
    copy of its script, far from the repository): they must not drift apart."""
    blocks = {}
    for s in SCRIPTS:
        text = (SLURM / s).read_text()
        m = re.search(r"^# ---- common:.*?^# ---- end common ----$", text, re.S | re.M)
        assert m, f"{s}: no common block"
        blocks[s] = m.group(0)
    assert len(set(blocks.values())) == 1, "common blocks differ: " + ", ".join(blocks)


def test_cluster_script_is_idempotent_and_leaves_nothing_behind(cluster):
    """A second, one-node cluster beside the module's: start twice, stop twice, then no daemon, namespace
    or process of it is left (the addresses exist only in its own namespaces, so both clusters coexist)."""
    base = Path(tempfile.mkdtemp(prefix="slurm-ci-"))
    sh = ["bash", str(CLUSTER_SH)]
    try:
        for _ in range(2):
            proc = subprocess.run([*sh, "start", str(base), "1", "4", "1"], capture_output=True, text=True, timeout=120)
            assert proc.returncode == 0, proc.stderr
        assert subprocess.run([*sh, "status", str(base)]).returncode == 0
        proc = subprocess.run([*sh, "exec", str(base), "sinfo", "-h", "-o", "%N %t %c %G"], capture_output=True,
                              text=True, env=clean_environ())
        assert proc.stdout.split("\n")[0].split() == ["node1", "idle", "4", "gpu:1"], proc.stdout + proc.stderr
        pids = [int(f.read_text()) for f in (base / "run").glob("*.pid")]  # daemons and namespace holders
        namespaces = {os.readlink(f"/proc/{p}/ns/net") for p in pids} - {os.readlink("/proc/self/ns/net")}
        assert len(namespaces) == 2  # the hub and node1
    finally:
        stops = [subprocess.run([*sh, "stop", str(base)], timeout=120).returncode for _ in range(2)]
        status = subprocess.run([*sh, "status", str(base)]).returncode
        leftover_pid_files = list((base / "run").glob("*.pid"))
        shutil.rmtree(base, ignore_errors=True)
    assert stops == [0, 0] and status != 0 and not leftover_pid_files, (stops, status, leftover_pid_files)
    left = []
    for proc_dir in Path("/proc").iterdir():
        if proc_dir.name.isdigit():
            try:
                if os.readlink(proc_dir / "ns" / "net") in namespaces and running(int(proc_dir.name)):
                    left.append(proc_dir.name)
            except OSError:
                pass
    assert not left, f"processes left in the stopped cluster's namespaces: {left}"
    assert not [p for p in pids if running(p)], "a daemon or namespace holder survived stop"
    assert cluster.run("sinfo", "-h", "-t", "idle", "-o", "%D").stdout.strip() == "2"  # the other one is intact


# --- directives against the live cluster -------------------------------------------------------------------


@pytest.mark.parametrize("script", SCRIPTS)
def test_directives_accepted_at_production_size(cluster, script):
    text = (SLURM / script).read_text()
    for directive in ("--ntasks-per-node=1", "--cpus-per-task=", "--time=", "--requeue", "--open-mode=append",
                      "--signal=B:USR1@", "--output=logs/"):
        assert f"#SBATCH {directive}" in text, f"{script}: no #SBATCH {directive}"
    gpus = 1 if script == "sweep_array.sbatch" else 8
    assert f"#SBATCH --gres=gpu:{gpus}\n" in text
    opts = ("--array=0-2",) if script == "sweep_array.sbatch" else ()
    proc = cluster.run("sbatch", "--test-only", *opts, str(SLURM / script), cwd=cluster.base)
    nodes = "node1" if script in ("sweep_array.sbatch", "train_single_node.sbatch") else "node[1-2]"
    assert re.search(rf"to start at .* on nodes {re.escape(nodes)} in partition train", proc.stderr), proc.stderr


def test_directives_beyond_the_cluster_are_refused(cluster):
    """--test-only really checks: 16 GPUs per node or 3 nodes do not exist here."""
    for opt in ("--gres=gpu:16", "--nodes=3"):
        proc = cluster.run("sbatch", "--test-only", opt, str(SLURM / "imagenet_resnet50.sbatch"), cwd=cluster.base,
                           check=False)
        assert proc.returncode != 0 and "not available" in proc.stderr, (opt, proc.stderr)


# --- real trainings ----------------------------------------------------------------------------------------

def preempt(cluster: Cluster, job: str, log: Path, run: Path) -> int:
    """Preempt a running job as Slurm does before its time limit (--signal=B:USR1@N: USR1 to the batch
    shell only), once it trains; release the requeued job; wait for its end. Returns the resumed step."""
    deadline = time.monotonic() + JOB_TIMEOUT
    metrics = run / "metrics.jsonl"
    while not (metrics.is_file() and metrics.read_text()):  # training steps are being taken
        assert cluster.queued(job) and time.monotonic() < deadline, f"no training steps seen\n{tail(log)}"
        time.sleep(0.2)
    cluster.run("scancel", "--batch", "--signal=USR1", job)
    while cluster.queued(job) != ["PENDING"]:  # checkpoint, exit, `scontrol requeue`: eligible ~120 s later
        assert cluster.queued(job) and time.monotonic() < deadline, f"job ended instead of requeueing\n{tail(log)}"
        time.sleep(0.3)
    assert cluster.records(job)[0]["Restarts"] == "1"
    time.sleep(2)  # a restart within the second of the requeue is refused ("Job credential revoked")
    cluster.run("scontrol", "update", f"jobid={job}", "StartTime=now")
    cluster.wait_gone(job, log)
    assert_completed(cluster.records(job)[0], 1, log)
    text = log.read_text()
    assert "USR1: asking every process to checkpoint and stop" in text and f"requeueing job {job}" in text, tail(log)
    assert re.search(rf"job {job} \(\S+\) restart 1 on node\[1-2\]", text), tail(log)
    m = re.search(r"resuming from step_(\d{8}) \(step (\d+)\)", text)
    assert m and (run / "checkpoints" / f"step_{m.group(1)}" / "COMPLETE").is_file(), tail(log)
    print(f"job {job}: preempted, checkpoint at step {m.group(2)}, requeued, resumed, completed")
    return int(m.group(2))


LAUNCHERS = {  # script: (processes per node, overrides, expected strategy, preempted mid-run)
    "train.sbatch": (2, [], "fsdp2", False),  # the config's own strategy; 2 nodes x 2 = world 4
    "train_single_node.sbatch": (2, ["train.strategy=ddp"], "ddp", False),
    # accelerate and deepspeed forward USR1 differently from torchrun (PET_* variables; launchers ignoring
    # it): each of their runs is preempted once, requeued and resumed on its way to completion
    "train_accelerate.sbatch": (1, ["train.strategy=ddp"], "ddp", True),
    "train_deepspeed.sbatch": (1, ["train.strategy=zero2"], "zero2", True),
}


@pytest.mark.parametrize("script", list(LAUNCHERS))
def test_launcher_trains_to_completion(cluster, script):
    per_node, overrides, strategy, preempted = LAUNCHERS[script]
    nodes = 1 if script == "train_single_node.sbatch" else 2
    epochs = 60 if preempted else 2  # 11 steps per epoch
    work = cluster.workdir(script.removesuffix(".sbatch"))
    job = cluster.submit(script, CONFIG, f"train.epochs={epochs}", "train.log_every=5", "track.wandb=disabled",
                         *overrides, cwd=work, env=cluster.job_env(per_node))
    name = cluster.records(job)[0]["JobName"]
    log, run = work / "logs" / f"{name}-{job}.out", work / "runs" / f"{name}-{job}"
    if preempted:
        assert 0 < preempt(cluster, job, log, run) < epochs * 11
    else:
        cluster.wait_gone(job, log)
        assert_completed(cluster.records(job)[0], 0, log)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == nodes * per_node and summary["strategy"] == strategy, summary
    assert summary["steps"] == epochs * 11 and summary["stopped_early"] == "no", summary
    assert (run / "final_params.pt").is_file()
    text = log.read_text()
    assert f"restart 0 on {'node1' if nodes == 1 else 'node[1-2]'}" in text and "starting at step 0" in text


def test_preempted_job_requeues_resumes_and_matches_an_uninterrupted_one(cluster):
    """USR1 to the batch shell (as --signal=B:USR1@N does before the time limit): the workers checkpoint,
    the job requeues itself, resumes from that checkpoint and ends with the uninterrupted job's parameters."""
    import torch

    args = (CONFIG, "train.epochs=100", "train.log_every=5", "track.wandb=disabled")  # 1100 steps, fsdp2
    env = cluster.job_env(1)
    straight_dir, preempt_dir = cluster.workdir("straight"), cluster.workdir("preempted")
    straight = cluster.submit("train.sbatch", *args, cwd=straight_dir, env=env)
    cluster.wait_gone(straight, straight_dir / "logs" / f"autoopt-{straight}.out")
    assert_completed(cluster.records(straight)[0], 0, straight_dir / "logs" / f"autoopt-{straight}.out")

    job = cluster.submit("train.sbatch", *args, cwd=preempt_dir, env=env)
    log, run = preempt_dir / "logs" / f"autoopt-{job}.out", preempt_dir / "runs" / f"autoopt-{job}"
    resumed = preempt(cluster, job, log, run)
    assert 0 < resumed < 1100
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 1100 and summary["stopped_early"] == "no" and summary["world_size"] == 2, summary
    assert summary["strategy"] == "fsdp2"
    want = torch.load(straight_dir / "runs" / f"autoopt-{straight}" / "final_params.pt")
    got = torch.load(run / "final_params.pt")
    assert want.keys() == got.keys()
    for name in want:  # same world size and ranks: bitwise, preempted at step `resumed` or not
        assert torch.equal(want[name], got[name]), f"{name} differs after resuming at step {resumed}"


def test_sweep_array_runs_one_task_per_line(cluster):
    """Self-submission (`bash slurm/sweep_array.sbatch FILE ...`): creates logs/, counts the lines, submits
    --array=0-2; each task gets its line's overrides (after the common ones) and its own run folder."""
    work = cluster.base / "work" / "sweep"
    work.mkdir(parents=True)  # no logs/: the script makes it
    (work / "gains.txt").write_text("# optim.gain per task\n0.5\n\n2 train.epochs=1\n4\n")
    env = cluster.job_env(1, SWEEP_KEY="optim.gain")
    proc = cluster.run("bash", str(SLURM / "sweep_array.sbatch"), "gains.txt", CONFIG, "train.epochs=2",
                       "train.strategy=single", "track.wandb=disabled", env=env, cwd=work)
    job = re.search(r"Submitted batch job (\d+)", proc.stdout).group(1)
    cluster.wait_gone(job)
    records = {r["ArrayTaskId"]: r for r in cluster.records(job)}
    assert sorted(records) == ["0", "1", "2"], list(records)
    expected = {"0": ("0.5", 0.5, 22), "1": ("2 train.epochs=1", 2.0, 11), "2": ("4", 4.0, 22)}
    for task, (line, gain, steps) in expected.items():
        log = work / "logs" / f"autoopt-sweep-{job}_{task}.out"
        assert_completed(records[task], 0, log)
        run = work / "runs" / f"autoopt-sweep-{job}_{task}"
        assert f"sweep task {task} of 3 (gains.txt): optim.gain={line}" in log.read_text(), tail(log)
        config = (run / "config.yaml").read_text()
        assert re.search(rf"^  gain: {gain}$", config, re.M), config
        summary = json.loads((run / "summary.json").read_text())
        assert summary["steps"] == steps and summary["world_size"] == 1, summary


def test_autoopt_sweep_with_slurm_runs_the_grid_as_an_array_then_collects(cluster):
    """`autoopt sweep ... --slurm`: the same command as a local sweep submits one array task per point and
    a collect job after them; the collect job writes results.csv, summary.json and the plot."""
    work = cluster.base / "work" / "autoopt-sweep"
    work.mkdir(parents=True)
    env = cluster.job_env(1)
    proc = cluster.run(sys.executable, "-m", "autoopt_dist", "sweep", CONFIG, "train.epochs=1", "track.wandb=disabled",
                       "--param", "optim.lr", "--log-grid", "1e-2:1e-1:2", "--optims", "agd,sgd", "--out", "sw",
                       "--slurm", "--sbatch-args=--cpus-per-task=1", env=env, cwd=work)
    found = re.search(r"submitted array job (\d+) \(3 points\) and collect job (\d+)", proc.stdout)
    assert found, proc.stdout + proc.stderr
    array, collect = found.groups()
    cluster.wait_gone(collect, work / "sw" / "logs" / f"autoopt-sweep-collect-{collect}.out")
    records = {r["ArrayTaskId"]: r for r in cluster.records(array)}
    assert sorted(records) == ["0", "1", "2"], list(records)
    for task, rec in records.items():
        assert_completed(rec, 0, work / "sw" / "logs" / f"autoopt-sweep-{array}_{task}.out")
    assert_completed(cluster.records(collect)[0], 0, work / "sw" / "logs" / f"autoopt-sweep-collect-{collect}.out")
    rows = list(csv.DictReader(open(work / "sw" / "results.csv")))
    assert sorted((r["optimizer"], r["value"], r["status"]) for r in rows) == [
        ("agd", "", "ok"), ("sgd", "0.01", "ok"), ("sgd", "0.1", "ok")], rows
    assert (work / "sw" / "sweep.png").stat().st_size > 10_000
