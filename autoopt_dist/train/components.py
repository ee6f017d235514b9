"""Builders from config sections: the model, its loss, and the optimizer over the engine's views."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..models import MLP, build_model
from ..optim import AGD, ECCO, HyperAdam, HyperSGD, agd_init_
from .config import Config
from .errors import ConfigError
from .data import Dataset
from .trainstep import TrainStep
from .engine import ZERO_STRATEGIES, deepspeed_config, deepspeed_initialize, layout_of, optimizer_params, wrap_model


def make_model(cfg: Config, data: Dataset) -> nn.Module:
    """The bare model, initialised on full tensors (same seed on every rank), before any wrapping."""
    return make_model_for(cfg, data.input_shape, data.num_classes)


def make_model_for(cfg: Config, input_shape: tuple[int, ...], num_classes: int, initialise: bool = True) -> nn.Module:
    m = cfg.model
    outputs = num_classes or 1  # 0 classes: regression, one target
    if m.name == "mlp":
        model = MLP(math.prod(input_shape), m.width, m.depth, outputs, agd_compatible=m.agd_compatible)
    elif m.name == "lstm":
        if len(input_shape) != 2:
            raise ConfigError(f"model.name: lstm needs sequences (time, features); data.name {cfg.data.name} gives "
                              f"{input_shape}. Use data.name=csv, or model.name=mlp")
        model = build_model("lstm", input_size=input_shape[1], hidden_size=m.width, num_layers=m.depth,
                            output_size=outputs, agd_compatible=m.agd_compatible)
    else:
        if len(input_shape) != 3 or num_classes == 0:
            raise ConfigError(f"model.name: {m.name} needs image classification data (C, H, W); data.name "
                              f"{cfg.data.name} gives {input_shape}. Use model.name=mlp")
        kwargs = dict(num_classes=num_classes, width=m.width, agd_compatible=m.agd_compatible, in_channels=input_shape[0])
        if m.name.startswith("resnet"):  # vgg16 takes no stem
            kwargs["stem"] = "cifar" if input_shape[-1] <= 64 else "imagenet"
        model = build_model(m.name, **kwargs)
    if initialise and cfg.optim.name == "agd":
        agd_init_(model)
    return model


def make_loss(cfg: Config, num_classes: int):
    if num_classes == 0:  # regression: y is (B, 1) like the output
        return nn.MSELoss()
    if cfg.train.loss == "xent":
        return nn.CrossEntropyLoss()
    scale = math.sqrt(num_classes)

    def mse(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # AGD reference (AGD-R1/D1): mean over batch and classes of (f - sqrt(C) * onehot)^2, no 1/2.
        onehot = nn.functional.one_hot(target, num_classes).to(output.dtype)
        return (output - scale * onehot).square().mean()

    return mse


def make_optimizer(cfg: Config, wrapped: nn.Module) -> torch.optim.Optimizer:
    return make_optimizer_for(cfg, optimizer_params(wrapped), layout_of(wrapped), wrapped)


def make_optimizer_for(cfg: Config, params, layout, model: nn.Module | None = None) -> torch.optim.Optimizer:
    o = cfg.optim
    if o.name == "ecco":
        limit = _hidden_linears(model) if o.ecco_limit else None
        return ECCO(params, eta=o.eta, alpha0=o.alpha0, mode=o.ecco_mode, limit=limit, layout=layout)
    if o.name == "agd":
        return AGD(params, gain=o.gain, layout=layout)
    if o.name == "hyper_sgd":
        return HyperSGD(params, lr=o.lr, momentum=o.momentum, hyper_lrs=tuple(o.hyper_lrs), layout=layout)
    if o.name == "hyper_adam":
        return HyperAdam(params, lr=o.lr, betas=tuple(o.betas), hyper_lrs=tuple(o.hyper_lrs), layout=layout)
    if o.name == "adamw":
        return torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay, foreach=True)
    return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay, foreach=True)


def build_engine(cfg: Config, model: nn.Module, device: torch.device, world_size: int) -> TrainStep:
    """Wrap the bare model for `train.strategy` and build the optimizer over the engine's layout."""
    strategy, accum, bf16 = cfg.train.strategy, cfg.train.grad_accum, cfg.train.precision == "bf16"
    if strategy in ZERO_STRATEGIES:
        optimizer = make_optimizer(cfg, model.to(device))  # DeepSpeed's client optimizer, rebound to ZeRO views
        config = deepspeed_config(strategy, cfg.data.batch_size // (world_size * accum), accum, bf16=bf16)
        ds = deepspeed_initialize(model, optimizer, config)
        return TrainStep(ds, optimizer, strategy, accum, bf16, device, deepspeed_engine=ds)
    wrapped = wrap_model(model, strategy, device)
    return TrainStep(wrapped, make_optimizer(cfg, wrapped), strategy, accum, bf16, device)


def _hidden_linears(model: nn.Module | None) -> list[nn.Module]:
    """The Linear layers that feed an activation (all but the last), for ECCO's activation limiting."""
    linears = [m for m in (model.modules() if model is not None else []) if isinstance(m, nn.Linear)]
    if len(linears) < 2:
        raise ConfigError("optim.ecco_limit: needs a model with hidden Linear layers (model.name=mlp, model.depth >= 2)")
    return linears[:-1]


def optimizer_scalars(opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """The scalars a method produced in its last step (device tensors; reading them syncs)."""
    return dict(getattr(opt, "last_scalars", {}))
