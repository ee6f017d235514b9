"""Image folders (and ImageNet, an image folder with 1000 wnid classes), decoded lazily per batch.

Only the file list lives in memory (relative paths as one numpy bytes array: no per-path Python object
for DataLoader workers to copy on write), so an ImageNet-sized folder costs ~50 MB, not 150 GB. Each
batch opens and decodes its own files with PIL, in the worker processes when `data.num_workers` > 0.

Layouts (class = sorted folder name -> label 0, 1, ...; every split must have the same class folders):
    imagefolder: root/train/<class>/**/*.{png,jpg,...} and root/{val,validation,test}/<class>/...;
                 or root/train/ alone, or root/<class>/... alone: then data.test_fraction is held out
    imagenet:    root/train/<wnid>/*.JPEG and root/val/<wnid>/*.JPEG (the usual ILSVRC-2012 preparation)
Decoding: eval and un-augmented training resize the shorter side to image_size / crop_ratio and take the
centre image_size square (ImageNet: 256 -> 224, crop_ratio 0.875; image folders: crop_ratio 1). With
augment=resized_crop_flip the training crop is a random area/aspect box resized to image_size (as
torchvision's RandomResizedCrop), drawn from the example's key, so it is the same on any world size.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import torch

from ..train.errors import ConfigError
from ..train.transforms import resized_crop_box
from .base import SourceData, holdout_split, require_path

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
HELDOUT_DIRS = ("val", "validation", "test")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
IMAGENET_CROP_RATIO = 0.875  # resize to 256, centre-crop 224
STATS_SAMPLE = 256  # training images decoded to estimate an image folder's per-channel mean / std
_WNID = re.compile(r"^n\d{8}$")
_GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F")


def _pil():
    try:
        from PIL import Image
    except ImportError:
        raise ConfigError("data.name: image folders need Pillow: pip install pillow") from None
    return Image


def is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def list_split(split_dir: Path) -> tuple[list[str], list[str], list[int]]:
    """(class names, image paths relative to split_dir, labels) of split_dir/<class>/**/<image>."""
    entries = sorted(os.scandir(split_dir), key=lambda e: e.name)
    classes = [e.name for e in entries if e.is_dir() and not e.name.startswith(".")]
    if not classes:
        loose = sum(1 for e in entries if e.is_file() and is_image(e.name))
        if loose:
            raise ConfigError(
                f"data.path: {str(split_dir)!r} holds {loose} images directly but no class folders; put each "
                f"class's images in its own folder {split_dir}/<class>/"
            )
        raise ConfigError(
            f"data.path: {str(split_dir)!r} has no class folders; expected {split_dir}/<class>/*.png|jpg"
        )
    paths: list[str] = []
    labels: list[int] = []
    for label, cls in enumerate(classes):
        count = 0
        for dirpath, dirnames, filenames in os.walk(split_dir / cls, followlinks=True):
            dirnames.sort()
            rel = os.path.relpath(dirpath, split_dir)
            found = [f"{rel}/{f}" for f in sorted(filenames) if is_image(f)]
            paths += found
            count += len(found)
        if count == 0:
            raise ConfigError(
                f"data.path: class folder {str(split_dir / cls)!r} has no images ({', '.join(IMAGE_EXTENSIONS)}); "
                f"add its images or remove the folder"
            )
        labels += [label] * count
    return classes, paths, labels


def _check_same_classes(train_dir: Path, test_dir: Path, train_classes: list[str], test_classes: list[str]) -> None:
    if train_classes == test_classes:
        return
    only_train = sorted(set(train_classes) - set(test_classes))
    only_test = sorted(set(test_classes) - set(train_classes))
    raise ConfigError(
        f"data.path: class folders differ between {train_dir.name}/ ({len(train_classes)} classes) and "
        f"{test_dir.name}/ ({len(test_classes)} classes): only in {train_dir.name}/: {only_train[:5]}, only in "
        f"{test_dir.name}/: {only_test[:5]}; every split needs the same class folders (labels follow their order)"
    )


def decode(img, size: int, mode: str, crop_ratio: float, key=None) -> torch.Tensor:
    """A PIL image -> (C, size, size) uint8: resize + centre crop, or (key given) a random resized crop."""
    Image = _pil()
    if key is None:
        short = max(size, int(round(size / crop_ratio)))
        if getattr(img, "format", None) == "JPEG":
            img.draft(mode, (short, short))  # JPEG DCT scaling: decode near the target size (>= it)
        img = img.convert(mode)
        w, h = img.size
        if min(w, h) != short:  # shorter side -> short, as torchvision's Resize(int)
            new = (short, max(1, int(short * h / w))) if w <= h else (max(1, int(short * w / h)), short)
            img = img.resize(new, Image.BILINEAR)
            w, h = new
        left, top = int(round((w - size) / 2.0)), int(round((h - size) / 2.0))
        if (w, h) != (size, size):
            img = img.crop((left, top, left + size, top + size))
    else:
        img = img.convert(mode)
        w, h = img.size
        top, left, ch, cw = resized_crop_box(key, h, w)
        img = img.resize((size, size), Image.BILINEAR, box=(left, top, left + cw, top + ch))
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


class ImageFileSource:
    """Images listed under `root`, decoded to (C, size, size) when a batch asks for them."""

    def __init__(self, root: Path, paths, labels, size: int, mode: str, crop_ratio: float):
        self.root = str(root)
        self.paths = np.array([os.fsencode(p) for p in paths]) if not isinstance(paths, np.ndarray) else paths
        self.labels = torch.as_tensor(np.asarray(labels, dtype=np.int64))
        self.size, self.mode, self.crop_ratio = size, mode, crop_ratio

    @property
    def channels(self) -> int:
        return 1 if self.mode == "L" else 3

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, indices: torch.Tensor) -> "ImageFileSource":
        idx = indices.numpy()
        return ImageFileSource(Path(self.root), self.paths[idx], self.labels.numpy()[idx], self.size, self.mode,
                               self.crop_ratio)

    def path(self, i: int) -> str:
        return os.path.join(self.root, os.fsdecode(self.paths[i]))

    def load(self, i: int, key=None) -> torch.Tensor:
        Image = _pil()
        path = self.path(i)
        try:
            with Image.open(path) as img:
                return decode(img, self.size, self.mode, self.crop_ratio, key)
        except (OSError, ValueError, SyntaxError) as e:  # PIL's UnidentifiedImageError is an OSError
            raise ConfigError(f"data.path: cannot decode image {path!r} ({type(e).__name__}: {e}); "
                              f"replace or remove the file") from None

    def fetch(self, indices: torch.Tensor, keys: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        idx = indices.tolist()
        if not idx:
            return torch.zeros(0, self.channels, self.size, self.size), self.labels[:0]
        images = [self.load(i, None if keys is None else keys[k]) for k, i in enumerate(idx)]
        return torch.stack(images).float().div_(255.0), self.labels[indices]


def estimate_stats(source, sample: int = STATS_SAMPLE) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean / std of [0, 1] pixels over up to `sample` evenly spaced training images."""
    n = len(source)
    idx = torch.from_numpy(np.unique(np.linspace(0, n - 1, min(n, sample)).round().astype(np.int64)))
    x, _ = source.fetch(idx)
    mean, std = x.mean((0, 2, 3)), x.std((0, 2, 3))
    return mean, torch.where(std > 1e-6, std, torch.ones_like(std))


def _probe(root: Path, first: str, field_size: int, imagenet: bool) -> tuple[int, str]:
    """(image size, PIL mode) from data.image_size or the first training image."""
    if imagenet:
        return field_size or 224, "RGB"
    Image = _pil()
    path = root / first
    try:
        with Image.open(path) as img:
            w, h = img.size
            mode = "L" if img.mode in _GRAY_MODES else "RGB"
    except (OSError, ValueError, SyntaxError) as e:
        raise ConfigError(f"data.path: cannot decode image {str(path)!r} ({type(e).__name__}: {e})") from None
    return field_size or min(w, h), mode


def _folder_sources(cfg, root: Path, imagenet: bool):
    train_dir = root / "train"
    held_dir = next((root / d for d in HELDOUT_DIRS if (root / d).is_dir()), None)
    if imagenet:
        if not train_dir.is_dir() or held_dir is None:
            missing = "train/" if not train_dir.is_dir() else "val/"
            raise ConfigError(
                f"data.path: {str(root)!r} has no {missing}; expected the ILSVRC layout train/<wnid>/*.JPEG and "
                f"val/<wnid>/*.JPEG (for another layout use data.name=imagefolder)"
            )
        if not any(e.is_dir() for e in os.scandir(held_dir)) and any(is_image(e.name) for e in os.scandir(held_dir)):
            raise ConfigError(
                f"data.path: {str(held_dir)!r} holds the validation images directly; sort them into "
                f"{held_dir.name}/<wnid>/ folders (e.g. with the ILSVRC ground-truth labels) first"
            )
    if not train_dir.is_dir() and held_dir is not None:
        raise ConfigError(
            f"data.path: {str(root)!r} has {held_dir.name}/ but no train/; expected root/train/<class>/*.png next "
            f"to root/{held_dir.name}/<class>/"
        )
    split_dir = train_dir if train_dir.is_dir() else root
    if split_dir is root and not any(e.is_dir() and not e.name.startswith(".") for e in os.scandir(root)):
        raise ConfigError(
            f"data.path: {str(root)!r} has no train/ folder and no class folders; expected "
            f"root/train/<class>/*.png (and root/val/<class>/...) or root/<class>/*.png"
        )
    classes, paths, labels = list_split(split_dir)
    if imagenet and not all(_WNID.match(c) for c in classes):
        odd = [c for c in classes if not _WNID.match(c)][:3]
        raise ConfigError(
            f"data.path: train/ class folders {odd} are not ImageNet wnids (n01440764 ...); for other folders use "
            f"data.name=imagefolder"
        )
    if len(classes) < 2:
        raise ConfigError(f"data.path: {str(split_dir)!r} has {len(classes)} class folder; classification needs >= 2")
    size, mode = _probe(split_dir, paths[0], getattr(cfg, "image_size", 0), imagenet)
    crop_ratio = IMAGENET_CROP_RATIO if imagenet else 1.0
    train = ImageFileSource(split_dir, paths, labels, size, mode, crop_ratio)
    if split_dir is train_dir and held_dir is not None:
        held_classes, held_paths, held_labels = list_split(held_dir)
        _check_same_classes(train_dir, held_dir, classes, held_classes)
        test = ImageFileSource(held_dir, held_paths, held_labels, size, mode, crop_ratio)
    else:  # no held-out folder: hold out data.test_fraction of the one split, seeded
        tr, te = holdout_split(len(train), cfg.test_fraction, cfg.seed)
        if len(te) == 0:
            raise ConfigError(
                f"data.test_fraction: {cfg.test_fraction} of {len(train)} images holds out none; raise it or add "
                f"a {root}/val/<class>/ folder"
            )
        train, test = train.subset(tr), train.subset(te)
    return train, test, len(classes), size


def load_imagefolder(cfg) -> SourceData:
    root = require_path(cfg, "a folder laid out as root/train/<class>/*.png (and root/val/<class>/...)")
    if not root.is_dir():
        raise ConfigError(f"data.path: {str(root)!r} is a file; data.name=imagefolder needs a folder")
    train, test, classes, size = _folder_sources(cfg, root, imagenet=False)
    mean, std = estimate_stats(train)
    return SourceData(train, test, classes, (train.channels, size, size), kind="image", file_backed=True,
                      default_augment="crop_flip", mean=mean, std=std)


def load_imagenet(cfg) -> SourceData:
    root = require_path(cfg, "an ILSVRC folder with train/<wnid>/*.JPEG and val/<wnid>/*.JPEG")
    if not root.is_dir():
        raise ConfigError(f"data.path: {str(root)!r} is a file; data.name=imagenet needs the ILSVRC folder")
    train, test, classes, size = _folder_sources(cfg, root, imagenet=True)
    return SourceData(train, test, classes, (3, size, size), kind="image", file_backed=True,
                      default_augment="resized_crop_flip", mean=torch.tensor(IMAGENET_MEAN),
                      std=torch.tensor(IMAGENET_STD))
