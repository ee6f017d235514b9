"""Tensor-side augmentation whose randomness is a pure function of (data seed, epoch, example index).

No global RNG is touched: each example's crop offsets and flip come from a counter-based hash
(SplitMix64) of the data seed, the epoch and the example's index in the training split. So the same
example gets the same augmentation whichever rank, world size, worker process or resumed run draws it,
and a batch computed in a DataLoader worker equals the one computed in the main process.

Images are (B, C, H, W) float tensors in [0, 1] here; normalisation comes last, so the crop's zero
padding is black in pixel space (as torchvision's RandomCrop(32, padding=4) before Normalize, the
recipe of the AGD and ECCO references).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

CROP_PAD = 4  # pixels of zero padding before the random crop (CIFAR recipe)

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)

# Streams drawn from one example key; fixed numbers so that adding a stream never shifts the others.
STREAM_CROP_Y, STREAM_CROP_X, STREAM_FLIP = 0, 1, 2
STREAM_RESIZED_CROP = 16  # 4 draws per attempt from here on


def splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on a uint64 array (a bijection; wraps modulo 2^64)."""
    x = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = x + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


def example_keys(seed: int, epoch: int, indices) -> np.ndarray:
    """One 64-bit key per example: hash(seed, epoch, index in the training split)."""
    base = splitmix64(splitmix64(np.array([seed % 2**64], dtype=np.uint64)) ^ np.uint64(epoch % 2**64))
    idx = np.asarray(indices, dtype=np.int64).astype(np.uint64).reshape(-1)
    return splitmix64(base ^ idx)


def uniform(keys: np.ndarray, stream: int) -> np.ndarray:
    """A float64 in [0, 1) per key, independent across streams."""
    with np.errstate(over="ignore"):
        bits = splitmix64(keys + np.uint64(stream + 1) * _M2)
    return (bits >> np.uint64(11)).astype(np.float64) * 2.0**-53


def randint(keys: np.ndarray, stream: int, high: int) -> np.ndarray:
    """An int64 in [0, high) per key."""
    return np.minimum((uniform(keys, stream) * high).astype(np.int64), high - 1)


def flip_mask(keys: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(uniform(keys, STREAM_FLIP) < 0.5)


def hflip(x: torch.Tensor, keys: np.ndarray) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2."""
    flip = flip_mask(keys).view(-1, *([1] * (x.dim() - 1)))
    return torch.where(flip, x.flip(-1), x)


def crop_flip(x: torch.Tensor, keys: np.ndarray, pad: int = CROP_PAD) -> torch.Tensor:
    """Random crop with zero padding `pad`, then a random horizontal flip (each per example).

    Two gathers on the padded batch: rows dy..dy+H-1, then columns dx..dx+W-1 (reversed when flipped).
    """
    if len(x) == 0:
        return x
    b, c, h, w = x.shape
    dy = torch.from_numpy(randint(keys, STREAM_CROP_Y, 2 * pad + 1))
    dx = torch.from_numpy(randint(keys, STREAM_CROP_X, 2 * pad + 1))
    xp = F.pad(x, (pad, pad, pad, pad))
    rows = (dy.view(-1, 1) + torch.arange(h)).view(b, 1, h, 1).expand(b, c, h, w + 2 * pad)
    ar = torch.arange(w)
    cols = dx.view(-1, 1) + torch.where(flip_mask(keys).view(-1, 1), w - 1 - ar, ar)
    return xp.gather(2, rows).gather(3, cols.view(b, 1, 1, w).expand(b, c, h, w))


def resized_crop_box(key: np.uint64, height: int, width: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """(top, left, h, w) of a random area-and-aspect crop, as torchvision's RandomResizedCrop draws it:
    up to 10 attempts, then a centre crop clamped to the ratio range."""
    keys = np.array([key], dtype=np.uint64)
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for attempt in range(10):
        s = STREAM_RESIZED_CROP + 4 * attempt
        target = area * (scale[0] + (scale[1] - scale[0]) * float(uniform(keys, s)[0]))
        aspect = math.exp(log_lo + (log_hi - log_lo) * float(uniform(keys, s + 1)[0]))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(randint(keys, s + 2, height - h + 1)[0])
            left = int(randint(keys, s + 3, width - w + 1)[0])
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Per-channel (x - mean) / std for (B, C, ...) tensors."""
    shape = (1, -1) + (1,) * (x.dim() - 2)
    return (x - mean.view(shape)) / std.view(shape)
