"""Typed run configuration: YAML file + dotted command-line overrides, validated before any work.

One dataclass per component, a comment per field with its unit and why its default. Every error names
the field, the bad value and what is allowed (`ConfigError`, a `ValueError`), so `autoopt train` can
print it on one line and exit non-zero before starting a process group.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .engine import STRATEGIES
from .data import check_data_config
from .errors import ConfigError


def _choice(field_name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{field_name}: {value!r} is not allowed; choose one of {', '.join(allowed)}")


def _positive(field_name: str, value: float, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{field_name}: must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")


MODEL_NAMES = ("mlp", "resnet18", "resnet34", "resnet50", "vgg16", "lstm")
OPTIMIZERS = ("agd", "hyper_sgd", "hyper_adam", "ecco", "adamw", "sgd")
LOSSES = ("mse", "xent")
WANDB_MODES = ("offline", "online", "disabled")


@dataclass(kw_only=True)
class DataConfig:
    name: str = "digits"  # digits | mnist1d (offline built-ins) | cifar10 | cifar100 | imagefolder | imagenet
    # (local copies) | hub (datasets.load_dataset) | csv (time-series regression); layouts in docs/data.md
    path: str = ""  # the local folder / archive / CSV file, or the hub id for hub; unused by digits, mnist1d
    batch_size: int = 128  # GLOBAL batch per optimizer step, split evenly over ranks: same maths on 1 or N
    test_fraction: float = 0.2  # held out where the source has no test split (digits, an image folder
    # without val/, a hub set without test; csv: the last rows)
    seed: int = 0  # fixes the split, the shuffling and the augmentation, identically for any world size
    augment: str = "auto"  # auto: crop_flip for CIFAR / image folders / hub, resized_crop_flip for imagenet,
    # none otherwise | none | flip | crop_flip (pad 4, random crop, flip) | resized_crop_flip
    num_workers: int = 0  # processes building batches ahead (decode + augment); the batches do not depend on it
    image_size: int = 0  # square side images are resized / cropped to; 0: native (CIFAR 32, imagenet 224,
    # image folders and hub: the first training image's shorter side)
    seq_len: int = 24  # csv: time steps in each input window
    target_column: str = ""  # csv: the column to predict; empty: the last numeric column

    def __post_init__(self):
        check_data_config(self)  # names, ranges, data.path present where needed (files are checked on load)


@dataclass(kw_only=True)
class ModelConfig:
    name: str = "mlp"
    width: int = 128  # hidden width (MLP), first-stage channels (ResNet, VGG), hidden units (LSTM; reference 200)
    depth: int = 3  # Linear layers of the MLP; stacked layers of the LSTM (reference 2); unused by ResNet, VGG
    agd_compatible: bool = True  # no biases, BatchNorm affine=False: the only kind AGD can step

    def __post_init__(self):
        _choice("model.name", self.name, MODEL_NAMES)
        _positive("model.width", self.width)
        _positive("model.depth", self.depth)


@dataclass(kw_only=True)
class OptimConfig:
    name: str = "agd"  # agd has no learning rate; hyper_* learn theirs; adamw and sgd are the tuned baselines
    gain: float = 1.0  # AGD: multiplies every update; 1 in all of the paper's experiments
    lr: float = 1e-3  # adamw / sgd; the initial (learned) lr of hyper_sgd / hyper_adam
    momentum: float = 0.0  # sgd; the initial (learned) momentum of hyper_sgd (0 keeps it off, as the reference)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # hyper_adam: initial (learned) betas
    hyper_lrs: list[float] = field(default_factory=lambda: [1e-5])  # hyper_*: step sizes of the levels above
    # level 1 (one entry: lr learned by SGD with that step; two: a 3-level tower); 1e-5: the reference README's
    weight_decay: float = 0.0  # adamw / sgd only
    eta: float = 0.3  # ecco: the local-truncation-error bound, its one hyperparameter (reference default)
    alpha0: float = 0.01  # ecco: the first step's size (reference default)
    ecco_mode: str = "batched"  # ecco: batched (one collective) | faithful (the reference's per-tensor chain)
    ecco_limit: bool = False  # ecco: activation limiting on the MLP's hidden Linear layers

    def __post_init__(self):
        _choice("optim.name", self.name, OPTIMIZERS)
        _choice("optim.ecco_mode", self.ecco_mode, ("batched", "faithful"))
        _positive("optim.eta", self.eta)
        _positive("optim.alpha0", self.alpha0)
        _positive("optim.gain", self.gain)
        _positive("optim.lr", self.lr)
        _positive("optim.weight_decay", self.weight_decay, allow_zero=True)
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"optim.momentum: must be in [0, 1), got {self.momentum!r}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"optim.betas: must be two numbers in [0, 1), got {self.betas!r}")
        if any(h < 0 for h in self.hyper_lrs):
            raise ConfigError(f"optim.hyper_lrs: step sizes must be >= 0, got {self.hyper_lrs!r}")


@dataclass(kw_only=True)
class TrainConfig:
    strategy: str = "auto"  # auto (from the launcher) | single | ddp | fsdp1 | fsdp1_flat | fsdp2 | zero1-3
    epochs: int = 30
    loss: str = "mse"  # mse: the AGD reference's mean of (f - sqrt(C) onehot)^2 (AGD-D1); xent: cross-entropy
    seed: int = 0  # model initialisation, same on every rank
    log_every: int = 10  # optimizer steps between metric logs (one host sync each)
    max_bad_steps: int = 5  # non-finite steps in a row before the run stops (with a checkpoint)
    grad_accum: int = 1  # micro-batches per optimizer step on each rank; statistics once, on their mean
    precision: str = "fp32"  # fp32 | bf16 (autocast forward; DeepSpeed bf16 under ZeRO); statistics stay fp32

    def __post_init__(self):
        _positive("train.grad_accum", self.grad_accum)
        _choice("train.precision", self.precision, ("fp32", "bf16"))
        _positive("train.max_bad_steps", self.max_bad_steps)
        _choice("train.strategy", self.strategy, ("auto",) + STRATEGIES)
        _choice("train.loss", self.loss, LOSSES)
        _positive("train.epochs", self.epochs)
        _positive("train.log_every", self.log_every)


@dataclass(kw_only=True)
class CheckpointConfig:
    every: int = 0  # optimizer steps between checkpoints; 0: only on SIGTERM/SIGUSR1 and session end
    keep: int = 2  # complete checkpoints kept (older ones deleted after a new one is complete)
    resume: str = "auto"  # auto: the latest complete checkpoint of this run, if any | never | a path
    session_steps: int = 0  # stop with a checkpoint after this many steps in this process (0: no limit),
    # for time-limited allocations: the next job resumes where this one stopped

    def __post_init__(self):
        _positive("checkpoint.every", self.every, allow_zero=True)
        _positive("checkpoint.keep", self.keep)
        _positive("checkpoint.session_steps", self.session_steps, allow_zero=True)


@dataclass(kw_only=True)
class TrackConfig:
    wandb: str = "offline"  # offline needs no account; online needs `wandb login`; disabled skips it
    project: str = "autoopt_dist"
    out_dir: str = "runs"  # run folders: resolved config, metrics, summary, wandb files
    run_name: str = ""  # empty: <dataset>-<model>-<optimizer>-<strategy>
    group: str = ""  # wandb group; `autoopt sweep` puts its points in `sweep-<out folder>`

    def __post_init__(self):
        _choice("track.wandb", self.wandb, WANDB_MODES)


@dataclass(kw_only=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    track: TrackConfig = field(default_factory=TrackConfig)

    def __post_init__(self):
        if self.data.name == "csv" and self.train.loss != "mse":
            raise ConfigError(
                f"train.loss: {self.train.loss} needs class labels; data.name=csv is a regression task. Use train.loss=mse"
            )
        if self.optim.name == "agd" and not self.model.agd_compatible:
            raise ConfigError(
                "model.agd_compatible: false, but optim.name is agd; AGD steps only bias-free weights. "
                "Set model.agd_compatible=true or choose another optimizer"
            )

    def check_world(self, world_size: int) -> None:
        """Checks that need the launcher's world size."""
        parts = world_size * self.train.grad_accum
        if self.data.batch_size % parts:
            raise ConfigError(
                f"data.batch_size: {self.data.batch_size} does not split evenly over {world_size} processes x "
                f"{self.train.grad_accum} micro-batches (train.grad_accum); use a multiple of {parts}"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:
    """Defaults <- YAML file <- `section.key=value` overrides (values parsed as YAML scalars)."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {str(path)!r} is not valid YAML: {str(e).splitlines()[0]}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {str(path)!r} must hold a mapping of sections, got {type(raw).__name__}")
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise ConfigError(f"override {item!r} must look like section.key=value, e.g. optim.gain=2")
        section, name = key.split(".", 1)
        raw.setdefault(section, {})
        if not isinstance(raw[section], dict):
            raise ConfigError(f"{section}: must be a mapping, got {raw[section]!r}")
        raw[section][name] = yaml.safe_load(value) if value != "" else ""
    return _build(Config, raw, "")


def _build(cls: type, raw: Any, where: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where.rstrip('.') or 'config'}: must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"{where}{unknown[0]}: unknown field; known fields of {where.rstrip('.') or 'config'}: {', '.join(fields)}")
    kwargs = {}
    for name, value in raw.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value, f"{where}{name}.")
        else:
            kwargs[name] = _coerce(f"{where}{name}", value, hint)
    return cls(**kwargs)


def _coerce(field_name: str, value: Any, hint: Any) -> Any:
    if typing.get_origin(hint) is list:
        if not isinstance(value, (list, tuple)):
            value = [value]  # a single number on the command line: optim.hyper_lrs=1e-4
        (item,) = typing.get_args(hint)
        return [_coerce(f"{field_name}[{i}]", v, item) for i, v in enumerate(value)]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        for option in typing.get_args(hint):
            if option is type(None) and value is None:
                return None
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        try:  # YAML reads 1e-3 (no dot) as a string
            return float(value)
        except ValueError:
            pass
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ConfigError(f"{field_name}: expected {hint.__name__}, got {value!r} ({type(value).__name__})")
    return value
