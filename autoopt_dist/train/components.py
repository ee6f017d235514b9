"""Builders from config sections: the model, its loss, and the optimizer over the engine's views."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..models import MLP, build_model
from ..optim import AGD, agd_init_
from .config import Config
from .errors import ConfigError
from .data import Dataset
from .engine import ZERO_STRATEGIES, deepspeed_config, deepspeed_initialize, layout_of, optimizer_params, wrap_model


def make_model(cfg: Config, data: Dataset) -> nn.Module:
    """The bare model, initialised on full tensors (same seed on every rank), before any wrapping."""
    m = cfg.model
    if m.name == "mlp":
        model = MLP(data.in_features, m.width, m.depth, data.num_classes, agd_compatible=m.agd_compatible)
    else:
        if data.train.x.dim() != 4:
            raise ConfigError(
                f"model.name: {m.name} needs image data (N, C, H, W); data.name {cfg.data.name} gives "
                f"{tuple(data.train.x.shape[1:])}. Use model.name=mlp"
            )
        model = build_model(
            m.name, num_classes=data.num_classes, stem="cifar", width=m.width,
            agd_compatible=m.agd_compatible, in_channels=data.train.x.shape[1],
        )
    if cfg.optim.name == "agd":
        agd_init_(model)
    return model


def make_loss(cfg: Config, num_classes: int):
    if cfg.train.loss == "xent":
        return nn.CrossEntropyLoss()
    scale = math.sqrt(num_classes)

    def mse(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # AGD reference (AGD-R1/D1): mean over batch and classes of (f - sqrt(C) * onehot)^2, no 1/2.
        onehot = nn.functional.one_hot(target, num_classes).to(output.dtype)
        return (output - scale * onehot).square().mean()

    return mse


def make_optimizer(cfg: Config, wrapped: nn.Module) -> torch.optim.Optimizer:
    params = optimizer_params(wrapped)
    o = cfg.optim
    if o.name == "agd":
        return AGD(params, gain=o.gain, layout=layout_of(wrapped))
    if o.name == "adamw":
        return torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay, foreach=True)
    return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay, foreach=True)


class Engine:
    """The three calls a training step makes, whatever wraps the model.

    PyTorch engines: backward is `loss.backward()`, step is `optimizer.step()` then `zero_grad`.
    DeepSpeed: its engine owns both (it reduces, partitions and calls our optimizer per part).
    """

    def __init__(self, model, optimizer, deepspeed_engine=None):
        self.model, self.optimizer, self._ds = model, optimizer, deepspeed_engine

    @property
    def deepspeed(self):
        return self._ds

    @torch.no_grad()
    def local_step_is_bad(self, loss: torch.Tensor) -> bool:
        """A non-finite loss, or a non-finite local gradient (under DeepSpeed the gradients sit in its
        partitions until step(); a non-finite gradient there comes from a non-finite loss)."""
        if not torch.isfinite(loss).all():
            return True
        if self._ds is not None:
            return False
        grads = [p.grad for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
        if not grads:
            return False
        local = [g.to_local() if hasattr(g, "to_local") else g for g in grads]
        return not bool(torch.isfinite(torch.stack(torch._foreach_norm(local))).all())

    def skip(self) -> None:
        """Drop this step's gradients without touching parameters or optimizer state."""
        if self._ds is not None:
            self._ds.optimizer.zero_grad(set_to_none=True)
        else:
            self.optimizer.zero_grad(set_to_none=True)

    def backward(self, loss: torch.Tensor) -> None:
        if self._ds is not None:
            self._ds.backward(loss)
        else:
            loss.backward()

    def step(self) -> None:
        if self._ds is not None:
            self._ds.step()
        else:
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)


def build_engine(cfg: Config, model: nn.Module, device: torch.device, world_size: int) -> Engine:
    """Wrap the bare model for `train.strategy` and build the optimizer over the engine's layout."""
    strategy = cfg.train.strategy
    if strategy in ZERO_STRATEGIES:
        optimizer = make_optimizer(cfg, model.to(device))  # DeepSpeed's client optimizer, rebound to ZeRO views
        config = deepspeed_config(strategy, cfg.data.batch_size // world_size)
        ds = deepspeed_initialize(model, optimizer, config)
        return Engine(ds, optimizer, ds)
    wrapped = wrap_model(model, strategy, device)
    return Engine(wrapped, make_optimizer(cfg, wrapped))


def optimizer_scalars(opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """The scalars a method produced in its last step (device tensors; reading them syncs)."""
    return dict(getattr(opt, "last_scalars", {}))
