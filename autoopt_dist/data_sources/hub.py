"""Image-classification data sets from the Hugging Face hub (`datasets.load_dataset(data.path)`).

`data.path` is a hub id (`uoft-cs/cifar10`) or anything `datasets.load_dataset` accepts locally (a folder
of parquet/arrow files). Images are decoded per batch from the memory-mapped Arrow table, like image
folders. Splits: `train`, and `test` / `validation` / `valid` / `val` if present, otherwise
data.test_fraction of train is held out.

Offline: with HF_HUB_OFFLINE=1 or HF_DATASETS_OFFLINE=1 only the local cache is used and a missing data
set fails at once. Without those variables, a 3 s connection probe runs first: `datasets` itself would
retry for ~25 s before failing on a machine without internet.
"""

from __future__ import annotations

import io
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import torch

from ..train.errors import ConfigError
from .base import SourceData, holdout_split
from .images import _GRAY_MODES, _pil, decode, estimate_stats

HELDOUT_SPLITS = ("test", "validation", "valid", "val")
IMAGE_COLUMNS = ("image", "img", "pixel_values", "picture")
LABEL_COLUMNS = ("label", "labels", "fine_label", "target", "class")
PROBE_TIMEOUT_S = 3.0
_TRUE = ("1", "true", "yes", "on")


def offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in _TRUE for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def _probe_endpoint(name: str) -> None:
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    url = urlparse(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=PROBE_TIMEOUT_S).close()
    except OSError as e:
        raise ConfigError(
            f"data.path: cannot reach {endpoint} to load {name!r} ({e}); connect to the internet, or set "
            f"HF_HUB_OFFLINE=1 to use a copy in the local Hugging Face cache, or save the data set as an image "
            f"folder and use data.name=imagefolder"
        ) from None


def _load(name: str):
    try:
        import datasets
    except ImportError:
        raise ConfigError("data.name: hub needs the data extra: pip install 'autoopt_dist[data]'") from None
    local = Path(name).expanduser().exists()
    if not local and not offline():
        _probe_endpoint(name)
    try:
        return datasets.load_dataset(str(Path(name).expanduser()) if local else name)
    except Exception as e:  # not found, offline and not cached, malformed files: all fixed via data.path
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        hint = (
            "HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set and it is not in the local cache; load it once with "
            "internet access (the cache is reused), or save it as an image folder and use data.name=imagefolder"
            if offline() else "check the id on huggingface.co/datasets, or use a local copy (data.name=imagefolder)"
        )
        raise ConfigError(f"data.path: cannot load {name!r} with datasets.load_dataset ({type(e).__name__}: {first}); {hint}") from None


def _column(features, names: tuple[str, ...], kind) -> str | None:
    typed = [c for c, f in features.items() if kind is not None and isinstance(f, kind)]
    if typed:
        return typed[0]
    return next((c for c in names if c in features), None)


def _to_pil(value):
    Image = _pil()
    if isinstance(value, dict) and value.get("bytes") is not None:
        return Image.open(io.BytesIO(value["bytes"]))
    if isinstance(value, dict) and value.get("path"):
        return Image.open(value["path"])
    if isinstance(value, (np.ndarray, list)):
        arr = np.asarray(value, dtype=np.uint8)
        return Image.fromarray(arr[..., 0] if arr.ndim == 3 and arr.shape[-1] == 1 else arr)
    return value  # already a PIL image (datasets.Image decodes)


class HubImageSource:
    """Rows of a `datasets.Dataset`, their images decoded to (C, size, size) per batch."""

    def __init__(self, ds, image_col: str, labels: torch.Tensor, rows: np.ndarray, size: int, mode: str):
        self.ds, self.image_col, self.labels, self.rows = ds, image_col, labels, rows
        self.size, self.mode = size, mode

    @property
    def channels(self) -> int:
        return 1 if self.mode == "L" else 3

    def __len__(self) -> int:
        return len(self.rows)

    def subset(self, indices: torch.Tensor) -> "HubImageSource":
        idx = indices.numpy()
        return HubImageSource(self.ds, self.image_col, self.labels[indices], self.rows[idx], self.size, self.mode)

    def fetch(self, indices: torch.Tensor, keys: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        idx = indices.tolist()
        if not idx:
            return torch.zeros(0, self.channels, self.size, self.size), self.labels[:0]
        column = self.ds[[int(self.rows[i]) for i in idx]][self.image_col]
        images = [decode(_to_pil(v), self.size, self.mode, 1.0, None if keys is None else keys[k])
                  for k, v in enumerate(column)]
        return torch.stack(images).float().div_(255.0), self.labels[indices]


def load_hub(cfg) -> SourceData:
    name = getattr(cfg, "path", "") or ""
    if not name:
        raise ConfigError("data.path: data.name=hub needs the data set id in data.path, e.g. data.path=uoft-cs/cifar10")
    dd = _load(name)
    splits = list(dd.keys()) if hasattr(dd, "keys") else []
    if "train" not in splits:
        raise ConfigError(f"data.path: {name!r} has splits {splits}, no 'train'; hub data sets need a train split")
    train_ds = dd["train"]
    import datasets

    features = train_ds.features
    image_col = _column(features, IMAGE_COLUMNS, datasets.Image)
    label_col = _column(features, LABEL_COLUMNS, datasets.ClassLabel)
    if image_col is None or label_col is None:
        missing = "an image column (datasets.Image, or one named image/img)" if image_col is None else \
            "a label column (datasets.ClassLabel, or one named label/labels/fine_label)"
        raise ConfigError(
            f"data.path: {name!r} has columns {list(features)} but no {missing}; data.name=hub reads image "
            f"classification sets (for a table of numbers use data.name=csv)"
        )
    held = next((s for s in HELDOUT_SPLITS if s in splits), None)
    label_feature = features[label_col]
    num_classes = label_feature.num_classes if isinstance(label_feature, datasets.ClassLabel) else None

    def source(ds, size=None, mode=None) -> HubImageSource:
        if image_col not in ds.features or label_col not in ds.features:
            raise ConfigError(f"data.path: {name!r}: split columns {list(ds.features)} lack {image_col!r} or {label_col!r}")
        labels = torch.as_tensor(np.asarray(ds[label_col], dtype=np.int64))
        return HubImageSource(ds.select_columns([image_col]), image_col, labels, np.arange(len(ds)), size, mode)

    train = source(train_ds)
    if len(train) == 0:
        raise ConfigError(f"data.path: the train split of {name!r} is empty")
    first = _to_pil(train.ds[0][image_col])
    size = getattr(cfg, "image_size", 0) or min(first.size)
    mode = "L" if first.mode in _GRAY_MODES else "RGB"
    train.size, train.mode = size, mode
    if held is not None:
        test = source(dd[held])
        test.size, test.mode = size, mode
        if isinstance(dd[held].features[label_col], datasets.ClassLabel) and num_classes is not None and \
                dd[held].features[label_col].num_classes != num_classes:
            raise ConfigError(
                f"data.path: {name!r}: train has {num_classes} classes but {held} has "
                f"{dd[held].features[label_col].num_classes}; the splits must share one label set"
            )
    else:
        tr, te = holdout_split(len(train), cfg.test_fraction, cfg.seed)
        train, test = train.subset(tr), train.subset(te)
    if len(test) == 0:
        raise ConfigError(f"data.path: the held-out split of {name!r} is empty; raise data.test_fraction")
    if num_classes is None:
        num_classes = int(max(train.labels.max(), test.labels.max())) + 1
    mean, std = estimate_stats(train)
    return SourceData(train, test, num_classes, (train.channels, size, size), kind="image", file_backed=True,
                      default_augment="crop_flip", mean=mean, std=std)
