"""Bad configs fail before any work with one line naming the field, the value and the fix."""

import subprocess
import sys

import pytest

from autoopt_dist.cli import main
from autoopt_dist.train.config import load_config
from autoopt_dist.train.errors import ConfigError


def write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


CASES = [
    ("optim:\n  name: adam\n", [], "optim.name"),
    ("optim:\n  gainn: 1\n", [], "optim.gainn: unknown field"),
    ("optimizer:\n  name: agd\n", [], "optimizer: unknown field"),
    ("data:\n  batch_size: many\n", [], "data.batch_size: expected int"),
    ("data:\n  batch_size: 0\n", [], "data.batch_size: must be > 0"),
    ("data:\n  test_fraction: 1.5\n", [], "data.test_fraction"),
    ("train:\n  strategy: zero9\n", [], "train.strategy"),
    ("model:\n  agd_compatible: false\n", [], "model.agd_compatible"),
    ("- just\n- a list\n", [], "must hold a mapping"),
    ("data: [1\n", [], "not valid YAML"),
    ("", ["optim.gain"], "section.key=value"),
    ("", ["optim.gain=-1"], "optim.gain: must be > 0"),
    ("", ["track.wandb=maybe"], "track.wandb"),
    ("", ["model.depth=2.5"], "model.depth: expected int"),
    ("", ["train.loss=hinge"], "train.loss"),
]


@pytest.mark.parametrize("text,overrides,needle", CASES)
def test_bad_config_names_the_field(tmp_path, text, overrides, needle, capsys):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.").replace("[", r"\[")):
        load_config(path, overrides)
    assert main(["train", str(path), *overrides]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("autoopt: error:") and "\n" not in err and needle.split(":")[0] in err


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_overrides_apply_with_types():
    cfg = load_config(None, ["optim.gain=2", "data.batch_size=64", "optim.lr=1e-3", "train.strategy=ddp"])
    assert cfg.optim.gain == 2.0 and isinstance(cfg.optim.gain, float)
    assert cfg.data.batch_size == 64 and cfg.optim.lr == 1e-3 and cfg.train.strategy == "ddp"


def test_cli_exit_code_and_no_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "autoopt_dist", "train", str(write(tmp_path, "optim:\n  name: adam\n"))],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
