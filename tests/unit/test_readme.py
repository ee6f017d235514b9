"""The README's two commands are what CI runs, character for character."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def readme_commands():
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    return [b.strip() for b in blocks[:2]]


def test_ci_runs_exactly_the_readme_commands():
    setup, tests = readme_commands()
    ci_lines = [l for l in (ROOT / ".ci/run").read_text().splitlines() if l and not l.startswith("#")]
    assert setup in ci_lines and tests in ci_lines
    assert "pip install torch==2.13.0" in setup.split("&&")[1], "torch must be installed before the package"
