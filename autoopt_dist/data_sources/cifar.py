"""CIFAR-10 / CIFAR-100 from a local copy of the official python version (held in memory as uint8).

Accepted `data.path`: the extracted folder itself (`cifar-10-batches-py/`, `cifar-100-python/`), its
parent, or the downloaded archive (`cifar-10-python.tar.gz`, `cifar-100-python.tar.gz`, read without
extracting). Files: CIFAR-10 `data_batch_1..5` + `test_batch` (key `labels`); CIFAR-100 `train` + `test`
(key `fine_labels`: the 100-class task). Each is a pickled dict whose `data` is a (N, 3072) uint8 array,
rows laid out as 1024 red, 1024 green, 1024 blue values of a 32x32 image in row-major order.

The pickles are read with an unpickler that only rebuilds numpy arrays: a tampered file cannot run code.
Normalisation uses the AGD reference's per-channel constants (`jxbz/agd`, data/cifar{10,100}.py).
"""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import torch

from ..train.errors import ConfigError
from .base import SourceData, TensorSource, require_path

LAYOUTS = {
    "cifar10": {
        "folder": "cifar-10-batches-py",
        "archive": "cifar-10-python.tar.gz",
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "test": ["test_batch"],
        "label_key": "labels",
        "classes": 10,
        "mean": (0.4914, 0.4822, 0.4465),
        "std": (0.2023, 0.1994, 0.2010),
    },
    "cifar100": {
        "folder": "cifar-100-python",
        "archive": "cifar-100-python.tar.gz",
        "train": ["train"],
        "test": ["test"],
        "label_key": "fine_labels",
        "classes": 100,
        "mean": (0.5071, 0.4867, 0.4408),
        "std": (0.2675, 0.2565, 0.2761),
    },
}

_ALLOWED_GLOBALS = {
    (module, name)
    for module in ("numpy.core.multiarray", "numpy._core.multiarray", "numpy.core.numeric", "numpy._core.numeric")
    for name in ("_reconstruct", "scalar", "_frombuffer")
} | {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}  # bytes in Python-3 protocol-2 pickles


class _ArraysOnly(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: CIFAR files hold only numpy arrays")


def _unpickle(raw: bytes, where: str) -> dict:
    try:
        obj = _ArraysOnly(io.BytesIO(raw), encoding="bytes").load()
    except Exception as e:  # truncated, not a pickle, or a foreign global
        raise ConfigError(f"data.path: {where} is not a CIFAR python-version batch file ({type(e).__name__}: {e})")
    if not isinstance(obj, dict):
        raise ConfigError(f"data.path: {where} holds a {type(obj).__name__}, expected a dict with data and labels")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _find(path: Path, layout: dict, name: str):
    """A callable reading one member file by name, from the folder or the archive."""
    folder, archive = layout["folder"], layout["archive"]
    needed = layout["train"] + layout["test"]
    if path.is_file():
        if not tarfile.is_tarfile(path):
            raise ConfigError(
                f"data.path: {str(path)!r} is a file but not the {archive} archive; point data.path at the "
                f"extracted {folder}/ folder, its parent, or the archive"
            )
        tar = tarfile.open(path)
        members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile() and Path(m.name).parent.name == folder}
        missing = [f for f in needed if f not in members]
        if missing:
            raise ConfigError(f"data.path: archive {str(path)!r} lacks {folder}/{', '.join(missing)}; is it the {archive} of {name}?")
        return lambda f: tar.extractfile(members[f]).read(), f"{path}:{folder}"
    for candidate in (path, path / folder):
        if all((candidate / f).is_file() for f in needed):
            return lambda f, c=candidate: (c / f).read_bytes(), str(candidate)
    if (path / archive).is_file():
        return _find(path / archive, layout, name)
    other = next((n for n, lay in LAYOUTS.items() if n != name and
                  any((c / f).is_file() for c in (path, path / lay["folder"]) for f in lay["test"])), None)
    hint = f"; it looks like {other}: set data.name={other}" if other else ""
    base = path / folder if (path / folder).is_dir() else path
    missing = [f for f in needed if not (base / f).is_file()]
    raise ConfigError(
        f"data.path: {str(path)!r} is not a {name} python-version folder: missing {', '.join(missing)} in "
        f"{str(base)!r}{hint}. Expected {folder}/{{{', '.join(needed)}}} (extract {archive} there)"
    )


def _read_split(read, files: list[str], where: str, label_key: str, classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    for f in files:
        d = _unpickle(read(f), f"{where}/{f}")
        if "data" not in d or label_key not in d:
            found = ", ".join(sorted(map(str, d)))
            raise ConfigError(f"data.path: {where}/{f} has keys [{found}]; a CIFAR batch needs 'data' and '{label_key}'")
        data = np.asarray(d["data"])
        labels = np.asarray(d[label_key], dtype=np.int64)
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            raise ConfigError(
                f"data.path: {where}/{f}: 'data' is {data.dtype} {data.shape}, expected uint8 (N, 3072) (32x32 RGB rows)"
            )
        if len(labels) != len(data):
            raise ConfigError(f"data.path: {where}/{f}: {len(labels)} labels for {len(data)} images")
        if len(labels) and (labels.min() < 0 or labels.max() >= classes):
            raise ConfigError(
                f"data.path: {where}/{f}: labels span {labels.min()}..{labels.max()}, outside 0..{classes - 1}; "
                f"check data.name (cifar10 has 10 classes, cifar100 100)"
            )
        xs.append(data.reshape(-1, 3, 32, 32))
        ys.append(labels)
    return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))


def load_cifar(cfg) -> SourceData:
    name = cfg.name
    layout = LAYOUTS[name]
    path = require_path(cfg, f"the extracted {layout['folder']}/ folder (or its parent, or {layout['archive']})")
    size = getattr(cfg, "image_size", 0) or 32
    if size != 32:
        raise ConfigError(f"data.image_size: CIFAR images are 32x32; set data.image_size=0 (native) or 32, not {size}")
    read, where = _find(path, layout, name)
    train = TensorSource(*_read_split(read, layout["train"], where, layout["label_key"], layout["classes"]))
    test = TensorSource(*_read_split(read, layout["test"], where, layout["label_key"], layout["classes"]))
    return SourceData(
        train, test, layout["classes"], (3, 32, 32), kind="image", default_augment="crop_flip",
        mean=torch.tensor(layout["mean"]), std=torch.tensor(layout["std"]),
    )
