"""Data: every source behind one interface, and global batches that split the same for any world size.

    data = load_dataset(cfg.data)
    for x, y in data.train_loader(epoch, start_step, rank, world): ...   # this rank's share of each step
    for x, y in data.eval_loader(rank, world, batch_size): ...           # same batch count on every rank

The sharding rule makes a run on N ranks compute what one process computes: step t's global batch is
the same set of examples for every world size (one shuffle per epoch from the data seed), and rank r
takes the r-th contiguous chunk of it. Augmentation is a function of (data seed, epoch, example index)
(`transforms.py`), so it too is the same on any world size, in any worker process and after a resume.

Sources (`autoopt_dist/data_sources/`): digits, mnist1d (in memory, generated offline); cifar10/cifar100
(local python-version copy, in memory as uint8); imagefolder and imagenet (file lists, decoded per batch);
hub (`datasets.load_dataset`, decoded per batch); csv (a time series cut into windows). See docs/data.md.
"""

from __future__ import annotations

import math
import types
from typing import Any, Iterator

import numpy as np
import torch

from ..data_sources.base import SourceData, TensorSource
from .errors import ConfigError
from .transforms import crop_flip, example_keys, hflip, normalize

DATA_SOURCES = ("digits", "mnist1d", "cifar10", "cifar100", "imagefolder", "imagenet", "hub", "csv")
PATH_SOURCES = ("cifar10", "cifar100", "imagefolder", "imagenet", "hub", "csv")  # need data.path
AUGMENTS = ("auto", "none", "flip", "crop_flip", "resized_crop_flip")
NON_IMAGE = {"digits": "vector", "mnist1d": "vector", "csv": "sequence"}  # no augmentation applies
IN_MEMORY_IMAGES = ("cifar10", "cifar100")  # no decode step for resized crops

# Fields added with issue #5, and their defaults: load_dataset reads them with getattr, so an older
# DataConfig (or any namespace with name / batch_size / test_fraction / seed) still works.
DEFAULTS: dict[str, Any] = {
    "path": "",
    "test_fraction": 0.2,
    "seed": 0,
    "augment": "auto",
    "num_workers": 0,
    "image_size": 0,
    "seq_len": 24,
    "target_column": "",
}

Split = TensorSource  # the in-memory split (x, y) of earlier versions


def _int(field: str, value: Any, least: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"{field}: expected int, got {value!r} ({type(value).__name__})")
    if value < least:
        raise ConfigError(f"{field}: must be {'> 0' if least == 1 else f'>= {least}'}, got {value!r}")


def check_data_config(cfg) -> None:
    """Checks that need no files: names, ranges, required fields. Raises ConfigError naming the field.

    `DataConfig.__post_init__` can call this, and `load_dataset` does, so a namespace is checked too.
    """
    name = getattr(cfg, "name", None)
    if name not in DATA_SOURCES:
        raise ConfigError(f"data.name: {name!r} is not a known data set; choose one of {', '.join(DATA_SOURCES)}")
    _int("data.batch_size", getattr(cfg, "batch_size", None), 1)
    fraction = getattr(cfg, "test_fraction", DEFAULTS["test_fraction"])
    if not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        raise ConfigError(f"data.test_fraction: must be in (0, 1), got {fraction!r}")
    _int("data.num_workers", getattr(cfg, "num_workers", 0), 0)
    _int("data.image_size", getattr(cfg, "image_size", 0), 0)
    _int("data.seq_len", getattr(cfg, "seq_len", DEFAULTS["seq_len"]), 1)
    augment = _augment_name(getattr(cfg, "augment", "auto"))
    if augment not in AUGMENTS:
        raise ConfigError(f"data.augment: {augment!r} is not allowed; choose one of {', '.join(AUGMENTS)}")
    _check_augment(name, augment)
    if name in PATH_SOURCES and not (getattr(cfg, "path", "") or ""):
        what = "a hub data set id, e.g. uoft-cs/cifar10" if name == "hub" else "the local copy of the data"
        raise ConfigError(f"data.path: data.name={name} needs data.path set to {what}")


def _check_augment(name: str, augment: str, kind: str | None = None, file_backed: bool | None = None) -> None:
    kind = kind or NON_IMAGE.get(name, "image")
    if augment not in ("auto", "none") and kind != "image":
        raise ConfigError(f"data.augment: {augment} needs images; data.name={name} gives {kind} data. Use none or auto")
    if augment == "resized_crop_flip" and (file_backed is False or name in IN_MEMORY_IMAGES):
        raise ConfigError(
            f"data.augment: resized_crop_flip crops at decode time and needs images read from files "
            f"(imagefolder, imagenet, hub); for {name} use crop_flip"
        )


def _augment_name(value: Any) -> Any:
    if value is True:
        return "auto"
    if value is False or value is None:
        return "none"
    return value


def _settings(cfg) -> types.SimpleNamespace:
    """cfg's fields with the defaults filled in (attributes only are read)."""
    values = {k: getattr(cfg, k, default) for k, default in DEFAULTS.items()}
    values.update(name=cfg.name, batch_size=cfg.batch_size, augment=_augment_name(values["augment"]))
    return types.SimpleNamespace(**values)


def _read_source(s) -> SourceData:
    if s.name == "digits":
        from ..data_sources.builtin import load_digits

        return load_digits(s)
    if s.name == "mnist1d":
        from ..data_sources.builtin import load_mnist1d

        return load_mnist1d(s)
    if s.name in ("cifar10", "cifar100"):
        from ..data_sources.cifar import load_cifar

        return load_cifar(s)
    if s.name == "imagefolder":
        from ..data_sources.images import load_imagefolder

        return load_imagefolder(s)
    if s.name == "imagenet":
        from ..data_sources.images import load_imagenet

        return load_imagenet(s)
    if s.name == "hub":
        from ..data_sources.hub import load_hub

        return load_hub(s)
    from ..data_sources.tabular import load_csv

    return load_csv(s)


def load_dataset(cfg) -> "Dataset":
    """The data set `cfg` (a DataConfig, or any object with its attributes) names, ready to batch.

    Identical on every rank: file lists are sorted and every random choice comes from data.seed.
    Raises ConfigError (naming data.<field>) for bad settings and for missing or malformed data.
    """
    check_data_config(cfg)
    s = _settings(cfg)
    src = _read_source(s)
    augment = src.default_augment if s.augment == "auto" else s.augment
    _check_augment(s.name, augment, src.kind, src.file_backed)
    if len(src.train) == 0:
        raise ConfigError(f"data.path: the training split of {s.name} is empty")
    if len(src.test) == 0:
        raise ConfigError(f"data.test_fraction: the held-out split of {s.name} is empty; raise data.test_fraction")
    if len(src.train) < s.batch_size:
        raise ConfigError(
            f"data.batch_size: {s.batch_size} exceeds the {len(src.train)} training examples of {s.name}; "
            f"use at most {len(src.train)}"
        )
    return Dataset(s.name, src, s.batch_size, s.seed, augment, s.num_workers)


class GlobalBatches:
    """Indices of each step's global batch, and this rank's share of it.

    Args:
        n: training examples. batch_size: global batch. seed: data seed. rank, world_size: this process.
    """

    def __init__(self, n: int, batch_size: int, seed: int, rank: int, world_size: int):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self._order: tuple[int, torch.Tensor] | None = None

    @property
    def steps_per_epoch(self) -> int:
        return self.n // self.batch_size  # the incomplete last batch is dropped: every step has B examples

    def epoch_order(self, epoch: int) -> torch.Tensor:
        """The epoch's shuffle of all n examples: one permutation from (seed, epoch), whatever the world."""
        if self._order is None or self._order[0] != epoch:
            gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._order = (epoch, torch.randperm(self.n, generator=gen))
        return self._order[1]

    def global_indices(self, epoch: int, step: int) -> torch.Tensor:
        return self.epoch_order(epoch)[step * self.batch_size : (step + 1) * self.batch_size]

    def local_indices(self, epoch: int, step: int) -> torch.Tensor:
        """This rank's contiguous chunk of step's global batch (equal chunks when world | batch)."""
        return self.global_indices(epoch, step).tensor_split(self.world_size)[self.rank]


class _Batches(torch.utils.data.Dataset):
    """Item k is batch k, already assembled: a DataLoader worker builds whole batches, in order."""

    def __init__(self, data: "Dataset", index_lists: list[torch.Tensor], epoch: int | None):
        self.data, self.index_lists, self.epoch = data, index_lists, epoch

    def __len__(self) -> int:
        return len(self.index_lists)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.data.batch(self.index_lists[k], self.epoch)


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # workers decode and augment; N workers x all cores would oversubscribe


class Dataset:
    """A loaded data set: its shape, and per-rank batch iterators for training and evaluation.

    Attributes:
        name, task ("classification" | "regression"), num_classes (0 for regression), input_shape
        (one example's x), output_size (classes, or the regression target's width), steps_per_epoch,
        augment (resolved: none | flip | crop_flip | resized_crop_flip), num_workers, train / test
        (sources: len() and fetch(indices)), extras (e.g. target_mean / target_std for csv).
    """

    def __init__(self, name: str, src: SourceData, batch_size: int, seed: int, augment: str, num_workers: int):
        self.name, self.batch_size, self.seed = name, batch_size, seed
        self.train, self.test = src.train, src.test
        self.num_classes, self.input_shape, self.task = src.num_classes, tuple(src.input_shape), src.task
        self.kind, self.augment, self.num_workers = src.kind, augment, num_workers
        self.mean, self.std, self.extras = src.mean, src.std, dict(src.extras)
        # Workers pay off only when a batch costs work: decoding files or augmenting.
        self._cheap = not src.file_backed and augment == "none"

    @property
    def in_features(self) -> int:
        return int(np.prod(self.input_shape))

    @property
    def output_size(self) -> int:
        return self.num_classes if self.task == "classification" else 1

    @property
    def steps_per_epoch(self) -> int:
        return len(self.train) // self.batch_size

    def describe(self) -> str:
        what = f"{self.num_classes} classes" if self.task == "classification" else "regression"
        return (f"{self.name}: {len(self.train)} train / {len(self.test)} held out, {what}, x {self.input_shape}, "
                f"augment {self.augment}, {self.num_workers} workers")

    def batch(self, indices: torch.Tensor, epoch: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Examples `indices` of the training split (epoch given: augmented as in that epoch) or of the
        held-out split (epoch None: never augmented), normalised."""
        source = self.train if epoch is not None else self.test
        augment = self.augment if epoch is not None else "none"
        keys = example_keys(self.seed, epoch, indices.numpy()) if augment != "none" else None
        x, y = source.fetch(indices, keys if augment == "resized_crop_flip" else None)
        if augment == "crop_flip":
            x = crop_flip(x, keys)
        elif augment in ("flip", "resized_crop_flip"):  # resized crops were cut at decode time
            x = hflip(x, keys)
        if self.mean is not None:
            x = normalize(x, self.mean, self.std)
        return x, y

    def train_loader(self, epoch: int, start_step: int = 0, rank: int = 0, world: int = 1
                     ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's share of each global batch of `epoch`, from `start_step` to the end of the epoch.

        Step t's global batch is the same examples for any `world`; rank r gets the r-th contiguous chunk.
        `start_step` > 0 resumes mid-epoch: the batches are those an uninterrupted epoch would give.
        """
        _check_rank(rank, world)
        if not 0 <= start_step <= self.steps_per_epoch:
            raise ValueError(f"start_step {start_step} outside 0..{self.steps_per_epoch}")
        batches = GlobalBatches(len(self.train), self.batch_size, self.seed, rank, world)
        lists = [batches.local_indices(epoch, step) for step in range(start_step, self.steps_per_epoch)]
        return self._iterate(lists, epoch)

    def eval_loader(self, rank: int = 0, world: int = 1, batch_size: int | None = None
                    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's contiguous share of the held-out split, in batches of `batch_size` (default: the
        training batch per rank). Every rank yields the same number of batches, padding with empty ones
        (FSDP needs every rank in each forward); over all ranks each example comes exactly once."""
        _check_rank(rank, world)
        size = batch_size or max(1, self.batch_size // world)
        if size < 1:
            raise ValueError(f"batch_size must be >= 1, got {size}")
        shares = torch.arange(len(self.test)).tensor_split(world)
        count = math.ceil(len(shares[0]) / size)  # rank 0 holds the largest share
        mine = shares[rank]
        return self._iterate([mine[k * size : (k + 1) * size] for k in range(count)], None)

    def _iterate(self, lists: list[torch.Tensor], epoch: int | None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.num_workers == 0 or self._cheap or not lists:
            return (self.batch(idx, epoch) for idx in lists)
        loader = torch.utils.data.DataLoader(
            _Batches(self, lists, epoch), batch_size=None, shuffle=False, num_workers=self.num_workers,
            worker_init_fn=_worker_init, pin_memory=torch.cuda.is_available(),
            generator=torch.Generator().manual_seed(self.seed),  # workers' seeds drawn here, not from the global RNG
        )
        return _one_line_errors(iter(loader))


def _one_line_errors(batches: Iterator) -> Iterator:
    """A worker's ConfigError arrives wrapped in its traceback; re-raise the one-line message. Workers
    stop as soon as the iteration ends, breaks or fails (left to garbage collection, a failed loader's
    shutdown waits 5 s)."""
    try:
        yield from batches
    except ConfigError as e:
        tag = "ConfigError: "
        lines = [line.split(tag, 1)[1] for line in str(e).splitlines() if tag in line]
        raise ConfigError(lines[-1] if lines else str(e)) from None
    finally:
        shutdown = getattr(batches, "_shutdown_workers", None)  # torch's multi-process iterator
        if shutdown is not None:
            shutdown()


def _check_rank(rank: int, world: int) -> None:
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank {rank} outside 0..{world - 1}")
