"""`autoopt plan`: sizes from first principles, optimizer state measured, bad recipes refused."""

import pytest

from autoopt_dist.cli import main
from autoopt_dist.plan import plan, state_bytes_per_param
from autoopt_dist.train.config import load_config


def test_plan_sizes_an_mlp_per_strategy(capsys):
    cfg = load_config("configs/digits_agd.yaml", ["model.width=256", "model.depth=4"])
    rows = {r["strategy"]: r for r in plan(cfg, nodes=2, gpus_per_node=8)}
    P = 64 * 256 + 256 * 256 * 2 + 256 * 10  # bias-free MLP, computed by hand
    MiB = 2**20
    assert rows["ddp"]["params_MiB"] == pytest.approx(4 * P / MiB)
    assert rows["zero3"]["params_MiB"] == pytest.approx(4 * P / 16 / MiB)
    assert rows["zero1"]["grads_MiB"] == pytest.approx(4 * P / MiB) and rows["zero2"]["grads_MiB"] == pytest.approx(4 * P / 16 / MiB)
    assert rows["ddp"]["optimizer_MiB"] == 0  # AGD keeps no state
    assert rows["ddp"]["comm_MiB_per_step"] == pytest.approx(2 * 15 / 16 * 4 * P / MiB)
    assert rows["fsdp2"]["method_stat_floats"] == 4  # one per dense weight (one tap each)
    assert "digits" in capsys.readouterr().out


def test_optimizer_state_is_measured():
    assert state_bytes_per_param(load_config(None, ["optim.name=adamw"])) == 8.0  # exp_avg + exp_avg_sq, fp32
    assert state_bytes_per_param(load_config(None, ["optim.name=sgd", "optim.momentum=0.9"])) == 4.0
    assert state_bytes_per_param(load_config(None, ["optim.name=agd"])) == 0.0


def test_plan_refuses_a_batch_that_does_not_split(capsys):
    assert main(["plan", "configs/digits_agd.yaml", "--nodes", "3", "--gpus-per-node", "1"]) == 2
    assert "data.batch_size: 128 does not split evenly over 3" in capsys.readouterr().err


@pytest.mark.parametrize(
    "recipe,nodes,gpus,params",
    [
        ("configs/imagenet_resnet50.yaml", 4, 8, 25_503_912),  # torchvision's 25,557,032 less fc bias and BN affine
        ("configs/cifar10_resnet18_agd.yaml", 1, 8, None),
        ("configs/cifar100_vgg16_agd.yaml", 1, 8, None),
        ("configs/digits_agd.yaml", 1, 2, None),
    ],
)
def test_every_recipe_validates_and_plans_without_data(recipe, nodes, gpus, params, capsys):
    assert main(["plan", recipe, "--nodes", str(nodes), "--gpus-per-node", str(gpus)]) == 0
    out = capsys.readouterr().out
    assert "zero3" in out and "fsdp2" in out
    if params:
        assert f"{params / 1e6:.2f} M parameters" in out
