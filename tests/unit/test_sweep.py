"""`autoopt sweep`: grid, flat lines for optimizers that ignore the key, failures recorded, array mode."""

import csv
import json

import pytest

from autoopt_dist.cli import main
from autoopt_dist.sweep import log_grid, points
from autoopt_dist.train.errors import ConfigError

BASE = ["configs/digits_agd.yaml", "train.epochs=1", "train.max_bad_steps=2"]


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
