"""Layout and reducer behaviour that needs no process group."""

import pytest
import torch
from torch import nn

from autoopt_dist.layout import Layout, ParamInfo, Reducer, Role, SideTable, clean_name
from autoopt_dist.optim import AGD
from autoopt_dist.train.config import load_config
from autoopt_dist.train.errors import ConfigError


def test_side_table_roles_and_taps():
    model = nn.Sequential(nn.Conv2d(3, 5, (3, 2)), nn.Flatten(), nn.Linear(10, 4))
    table = SideTable.from_module(model)
    assert table["0.weight"] == ParamInfo("0.weight", (5, 3, 3, 2), Role.CONV)
    assert table["0.weight"].taps == 6 and table["2.weight"].taps == 1
    assert table["0.bias"].role is Role.VECTOR and table["2.weight"].role is Role.MATRIX


def test_clean_name_strips_wrapper_prefixes():
    assert clean_name("module._fsdp_wrapped_module.layers.0._checkpoint_wrapped_module.weight") == "layers.0.weight"


def test_deepspeed_partition_is_refused_not_guessed():
    p = nn.Parameter(torch.zeros(0))
    p.ds_id = 3
    with pytest.raises(NotImplementedError, match="ZeRO"):
        Layout().views("fc.weight", p)


def test_fsdp1_flattened_view_without_layout_names_the_fix():
    p = nn.Parameter(torch.zeros(7))
    p._fsdp_flattened = True
    with pytest.raises(ValueError, match=r"fc\.weight.*Layout\.from_model"):
        AGD([("fc.weight", p)])


def test_reducer_without_group_is_local_and_issues_nothing():
    reducer = Reducer(None, None)
    v = torch.tensor([1.0, 2.0])
    assert torch.equal(reducer.sum({"q": (v, True)})["q"], v)
    assert torch.equal(reducer.sum({"q": (v, True)}, data_dependent=True)["q"], v)
    assert torch.equal(reducer.max({"m": v})["m"], v)
    assert reducer.collectives == 0


def test_batch_size_must_split_over_ranks():
    cfg = load_config(None, ["data.batch_size=128"])
    cfg.check_world(2)
    with pytest.raises(ConfigError, match="data.batch_size: 128 does not split evenly over 3"):
        cfg.check_world(3)
