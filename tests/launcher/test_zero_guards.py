"""ZeRO configurations that would change a method's maths are refused with the reason, never run.

The fp16 and optimizer-offload refusals in layout/zero.py cannot be reached on a CPU machine: DeepSpeed
itself refuses fp16 there ("Type fp16 is not supported on your device") and its CPU offload needs its
own CPU-Adam build; they are exercised only where a GPU is present."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import sys, torch
from autoopt_dist.models import MLP
from autoopt_dist.optim import AGD, agd_init_
from autoopt_dist.train.engine import deepspeed_config, deepspeed_initialize, init_distributed, shutdown
init_distributed("ddp")
model = agd_init_(MLP(13, 9, 3, 2))
config = deepspeed_config("zero2", 4)
config.update(eval(sys.argv[1]))
try:
    deepspeed_initialize(model, AGD(model.named_parameters()), config)
except (ValueError, NotImplementedError) as e:
    print("REFUSED:", e)
shutdown()
"""


@pytest.mark.parametrize(
    "override,needle",
    [
        ('{"gradient_clipping": 1.0}', "gradient_clipping=1.0: clipping rescales the gradient"),
    ],
)
def test_refused_with_reason(tmp_path, override, needle):
    script = tmp_path / "guard.py"
    script.write_text(SCRIPT)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", str(script), override],
        capture_output=True, text=True, timeout=300, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert "REFUSED:" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert needle in proc.stdout
