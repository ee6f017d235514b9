"""`autoopt sweep`: grid, flat lines for optimizers that ignore the key, failures recorded, array mode."""

import csv
import json

import pytest

from autoopt_dist.cli import main
from autoopt_dist.sweep import log_grid, points
from autoopt_dist.train.errors import ConfigError

BASE = ["configs/digits_agd.yaml", "train.epochs=1", "train.max_bad_steps=2", "track.wandb=disabled"]


def test_grid_and_points():
    assert log_grid("1e-4:1e0:5") == pytest.approx([1e-4, 1e-3, 1e-2, 1e-1, 1.0])
    pts = points("optim.lr", [0.1, 1.0], ["agd", "sgd"], seeds=2)
    assert [p.value for p in pts if p.optimizer == "agd"] == [None, None]  # AGD has no learning rate
    assert sorted(p.value for p in pts if p.optimizer == "sgd") == [0.1, 0.1, 1.0, 1.0]
    with pytest.raises(ConfigError, match="--optims"):
        points("optim.lr", [0.1], ["adam"], 1)
    with pytest.raises(ConfigError, match="--log-grid"):
        log_grid("1e-3:1e-5:3")


def test_sweep_records_divergence_and_plots(tmp_path, capsys):
    out = tmp_path / "sweep"
    # lr 1e30 diverges: recorded as a failed point, the sweep goes on.
    assert main(["sweep", *BASE, "--param", "optim.lr", "--log-grid", "1e-1:1e30:2", "--optims", "agd,sgd",
                 "--out", str(out)]) == 0
    rows = list(csv.DictReader(open(out / "results.csv")))
    by = {(r["optimizer"], r["value"]): r for r in rows}
    assert by[("sgd", "1e+30")]["status"] == "failed" and "non-finite" in by[("sgd", "1e+30")]["error"]
    assert by[("sgd", "0.1")]["status"] == "ok" and float(by[("sgd", "0.1")]["accuracy"]) > 0.2  # chance: 0.1
    assert by[("agd", "")]["status"] == "ok"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["agd"]["spread"] == 0 and not summary["agd"]["reads_swept_key"]
    assert summary["sgd"]["failed_points"] == 1 and summary["sgd"]["spread"] > 0.2
    assert (out / "sweep.png").stat().st_size > 10_000


def test_array_mode_runs_one_point_then_collects(tmp_path, capsys):
    out = tmp_path / "arr"
    args = ["sweep", *BASE, "--param", "optim.gain", "--log-grid", "0.5:2:2", "--optims", "agd", "--out", str(out)]
    assert main([*args, "--list"]) == 0
    assert capsys.readouterr().out.strip() == "2"
    for i in range(2):
        assert main([*args, "--point", str(i)]) == 0
    assert main([*args, "--collect"]) == 0
    assert len(list(csv.DictReader(open(out / "results.csv")))) == 2
    assert main([*args, "--point", "7"]) == 2


def test_rerun_keeps_recorded_points_and_runs_the_rest(tmp_path, capsys):
    out = tmp_path / "resume"
    args = ["sweep", *BASE, "--param", "optim.lr", "--log-grid", "1e-2:1e-1:2", "--optims", "sgd", "--out", str(out)]
    (out / "points").mkdir(parents=True)
    # A point an earlier (interrupted) run recorded: a rerun must keep it, not train it again.
    done = {"optimizer": "sgd", "value": 0.01, "seed": 0, "status": "ok", "accuracy": 0.123456, "loss": 1.0}
    (out / "points" / "sgd_1.000e-02_s0.json").write_text(json.dumps(done))
    assert main(args) == 0
    rows = {r["value"]: r for r in csv.DictReader(open(out / "results.csv"))}
    assert rows["0.01"]["accuracy"] == "0.123456"
    assert rows["0.1"]["status"] == "ok" and float(rows["0.1"]["accuracy"]) > 0.2
    assert not (out / "runs" / "sgd_1.000e-02_s0").exists() and (out / "runs" / "sgd_1.000e-01_s0").exists()


def test_wandb_groups_the_points_and_logs_a_summary_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "wb"
    base = [a for a in BASE if not a.startswith("track.wandb")]
    assert main(["sweep", *base, "track.wandb=offline", "--param", "optim.lr", "--log-grid", "1e-2:1e-1:2",
                 "--optims", "agd,sgd", "--out", str(out)]) == 0
    # Each point is an offline wandb run in the group sweep-wb.
    point_runs = sorted(out.glob("runs/*/wandb/offline-run-*/run-*.wandb"))
    assert len(point_runs) == 3, point_runs
    for f in point_runs:
        assert _run_group_is(f, "sweep-wb"), f
    # The summary run: in the group, with the results table (the same rows as results.csv) and the plot.
    (summary_run,) = out.glob("wandb/offline-run-*")
    assert _run_group_is(next(summary_run.glob("run-*.wandb")), "sweep-wb")
    (table_file,) = summary_run.glob("files/media/table/results_*.table.json")
    table = json.loads(table_file.read_text())
    csv_rows = list(csv.DictReader(open(out / "results.csv")))
    assert table["columns"][:3] == ["optimizer", "value", "seed"] and len(table["data"]) == len(csv_rows) == 3
    assert sorted(round(r[4], 6) for r in table["data"]) == sorted(round(float(r["accuracy"]), 6) for r in csv_rows)
    assert list(summary_run.glob("files/media/images/sweep_*.png"))


def _run_group_is(run_file, group: str) -> bool:
    """The offline run file holds the RunRecord protobuf: its run_group field is the tag byte, the length and
    the bytes (the group also appears JSON-quoted in the config record, which this does not match)."""
    from wandb.proto import wandb_internal_pb2

    number = wandb_internal_pb2.RunRecord.DESCRIPTOR.fields_by_name["run_group"].number
    return bytes([number << 3 | 2, len(group)]) + group.encode() in run_file.read_bytes()


def test_labelled_variants_share_one_csv_and_plot(tmp_path, capsys):
    out = tmp_path / "variants"
    grid = ["--param", "optim.lr", "--log-grid", "1e-2:1e-1:2", "--optims", "sgd", "--out", str(out)]
    assert main(["sweep", *BASE, *grid, "--label", "plain"]) == 0
    assert main(["sweep", *BASE, "optim.momentum=0.9", *grid, "--label", "momentum 0.9"]) == 0
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert sorted({r["optimizer"] for r in rows}) == ["sgd (momentum 0.9)", "sgd (plain)"] and len(rows) == 4
    acc = {(r["optimizer"], r["value"]): float(r["accuracy"]) for r in rows}
    assert acc[("sgd (plain)", "0.01")] != acc[("sgd (momentum 0.9)", "0.01")]  # the override reached the runs
    assert set(json.loads((out / "summary.json").read_text())) == {"sgd (plain)", "sgd (momentum 0.9)"}


def test_csv_carries_what_the_optimizer_learned(tmp_path, capsys):
    out = tmp_path / "learned"
    assert main(["sweep", *BASE, "optim.hyper_lrs=1e-3", "--param", "optim.lr", "--log-grid", "1e-2:1e-1:2",
                 "--optims", "hyper_sgd", "--out", str(out)]) == 0
    rows = {r["value"]: r for r in csv.DictReader(open(out / "results.csv"))}
    for start, row in rows.items():  # the tower moved its lr away from where the grid started it
        learned = float(row["hyper_sgd/lr (last)"])
        assert learned > 0 and abs(learned - float(start)) > 1e-3 * float(start), row
        assert float(row["hyper_sgd/lr (mean)"]) != learned


def test_regression_sweeps_plot_and_rank_by_loss(tmp_path):
    from autoopt_dist.sweep import collect

    nan = float("nan")
    points = tmp_path / "points"
    points.mkdir()
    rows = [("sgd", 0.01, 0, "ok", 0.50), ("sgd", 0.01, 1, "ok", 0.70), ("sgd", 0.1, 0, "ok", 0.20),
            ("sgd", 0.1, 1, "failed", nan), ("agd", None, 0, "ok", 0.30)]
    for i, (opt, value, seed, status, loss) in enumerate(rows):
        record = {"optimizer": opt, "value": value, "seed": seed, "status": status, "accuracy": nan, "loss": loss}
        (points / f"{i}.json").write_text(json.dumps(record))
    collect(tmp_path, "optim.lr", [0.01, 0.1])
    summary = json.loads((tmp_path / "summary.json").read_text())
    # sgd: seed-mean loss 0.6 at lr 0.01, 0.2 at lr 0.1 (the failed seed left out, but counted)
    assert summary["sgd"]["metric"] == "loss"
    assert summary["sgd"]["best"] == pytest.approx(0.2) and summary["sgd"]["worst"] == pytest.approx(0.6)
    assert summary["sgd"]["failed_points"] == 1 and summary["agd"]["spread"] == 0
    assert (tmp_path / "sweep.png").stat().st_size > 10_000
