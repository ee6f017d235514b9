"""Data sources, per-rank batches, augmentation, workers and data errors (issue #5).

Every fixture is written here, in a temporary folder, in the real on-disk format (PNG/JPEG class folders,
CIFAR python-version pickles, a CSV); nothing is downloaded. The oracles are independent of the code
under test: pixels and labels as written, the world-1 batch for the world-N shares, every zero-padded
window of an image for the random crop, and the pre-issue-#5 digits code for the in-memory fast path.
"""

from __future__ import annotations

import pickle
import tarfile
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from autoopt_dist.train.data import AUGMENTS, DATA_SOURCES, GlobalBatches, check_data_config, load_dataset
from autoopt_dist.train.errors import ConfigError
from autoopt_dist.train.transforms import crop_flip, example_keys

Image = pytest.importorskip("PIL.Image")


def cfg(name, **kw):
    """A DataConfig stand-in: load_dataset reads attributes only."""
    base = dict(name=name, path="", batch_size=6, test_fraction=0.25, seed=3, augment="auto", num_workers=0,
                image_size=0, seq_len=4, target_column="")
    base.update(kw)
    return SimpleNamespace(**base)


# --- fixtures, in the real formats ------------------------------------------------------------------


def _rgb(rng, h, w):
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def image_root(tmp_path_factory):
    """root/train/<class>/*.png (8x8 RGB) with 6/5/4 images, root/val/<class>/ with 2 each."""
    root = tmp_path_factory.mktemp("imagefolder")
    rng = np.random.default_rng(0)
    pixels = {}
    for split, counts in (("train", (6, 5, 4)), ("val", (2, 2, 2))):
        for cls, n in zip(("cat", "dog", "eel"), counts):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                arr = _rgb(rng, 8, 8)
                Image.fromarray(arr).save(root / split / cls / f"{i:02d}.png")
                pixels[(split, cls, i)] = arr
    (root / "train" / "cat" / "notes.txt").write_text("not an image")  # ignored: not an image extension
    return root, pixels


def _cifar_batch(rng, n, label_key, classes):
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, classes, n)]
    d = {b"batch_label": b"fake", b"data": data, b"filenames": [b"x.png"] * n, label_key.encode(): labels}
    if label_key == "fine_labels":
        d[b"coarse_labels"] = [v // 5 for v in labels]
    return d


def _write_pickle(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)  # the official files are Python-2 cPickle, protocol 2


@pytest.fixture(scope="module")
def cifar10_root(tmp_path_factory):
    """parent/cifar-10-batches-py/{data_batch_1..5 (3 images each), test_batch (7 images)}."""
    parent = tmp_path_factory.mktemp("c10")
    folder = parent / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(1)
    batches = {f"data_batch_{i}": _cifar_batch(rng, 3, "labels", 10) for i in range(1, 6)}
    batches["test_batch"] = _cifar_batch(rng, 7, "labels", 10)
    for name, d in batches.items():
        _write_pickle(folder / name, d)
    return parent, batches


@pytest.fixture(scope="module")
def cifar100_root(tmp_path_factory):
    parent = tmp_path_factory.mktemp("c100")
    folder = parent / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(2)
    batches = {"train": _cifar_batch(rng, 12, "fine_labels", 100), "test": _cifar_batch(rng, 5, "fine_labels", 100)}
    for name, d in batches.items():
        _write_pickle(folder / name, d)
    return parent, batches


@pytest.fixture(scope="module")
def imagenet_root(tmp_path_factory):
    """root/train/<wnid>/*.JPEG (30x40, 4 per class) and root/val/<wnid>/*.JPEG (2 per class)."""
    root = tmp_path_factory.mktemp("ilsvrc")
    rng = np.random.default_rng(3)
    for split, n in (("train", 4), ("val", 2)):
        for wnid in ("n01440764", "n01443537", "n01484850"):
            (root / split / wnid).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(_rgb(rng, 30, 40)).save(root / split / wnid / f"{wnid}_{i}.JPEG", quality=90)
    return root


@pytest.fixture(scope="module")
def csv_path(tmp_path_factory):
    """40 hourly rows: a date column (ignored), two features and the target, with missing values."""
    path = tmp_path_factory.mktemp("csv") / "power.csv"
    rng = np.random.default_rng(4)
    a, b, power = rng.normal(size=40), rng.normal(size=40), rng.normal(size=40)
    lines = ["Date;a;b;power"]
    for t in range(40):
        av = "?" if t == 5 else f"{a[t]:.6f}"
        lines.append(f"2006-12-{1 + t // 24:02d} {t % 24:02d}:00;{av};{b[t]:.6f};{power[t]:.6f}")
    path.write_text("\n".join(lines) + "\n")
    a_filled = a.copy()
    a_filled[5] = float(f"{a[4]:.6f}")
    return path, np.stack([a_filled, b, power], 1)


def _source(name, fixtures, **kw):
    paths = {
        "digits": "",
        "cifar10": fixtures["cifar10"],
        "imagefolder": fixtures["imagefolder"],
        "imagenet": fixtures["imagenet"],
        "csv": fixtures["csv"],
    }
    extra = {"image_size": 16} if name == "imagenet" else {}
    return cfg(name, path=str(paths[name]), **(extra | kw))


@pytest.fixture(scope="module")
def fixtures(image_root, cifar10_root, imagenet_root, csv_path):
    return {"imagefolder": image_root[0], "cifar10": cifar10_root[0], "imagenet": imagenet_root, "csv": csv_path[0]}


# --- loading each source ----------------------------------------------------------------------------


def test_digits_matches_the_in_memory_code_it_replaces():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(5))
    n_test = int(round(0.2 * len(x)))
    tr, te = perm[n_test:], perm[:n_test]
    mean, std = x[tr].mean(0), x[tr].std(0)
    std = torch.where(std > 1e-6, std, torch.ones_like(std))
    data = load_dataset(cfg("digits", batch_size=128, test_fraction=0.2, seed=5))
    assert torch.equal(data.train.x, (x[tr] - mean) / std) and torch.equal(data.test.y, y[te])
    assert (data.num_classes, data.input_shape, data.task, data.augment) == (10, (64,), "classification", "none")
    assert data.steps_per_epoch == len(tr) // 128
    # The old loop's indexing still gives what the new loader yields.
    old = GlobalBatches(len(data.train.x), 128, 5, rank=1, world_size=2).local_indices(2, 3)
    x3, y3 = list(data.train_loader(2, 0, rank=1, world=2))[3]
    assert torch.equal(x3, data.train.x[old]) and torch.equal(y3, data.train.y[old])


def test_cifar10_pixels_labels_and_normalisation(cifar10_root):
    parent, batches = cifar10_root
    data = load_dataset(cfg("cifar10", path=str(parent), augment="none"))
    assert (len(data.train), len(data.test), data.num_classes, data.input_shape) == (15, 7, 10, (3, 32, 32))
    raw = np.concatenate([batches[f"data_batch_{i}"][b"data"] for i in range(1, 6)])
    labels = sum((batches[f"data_batch_{i}"][b"labels"] for i in range(1, 6)), [])
    # Row layout: 1024 red, then green, then blue values, each a 32x32 image in row-major order.
    image4 = torch.tensor(raw[4]).view(3, 32, 32).float() / 255
    mean, std = torch.tensor([0.4914, 0.4822, 0.4465]), torch.tensor([0.2023, 0.1994, 0.2010])
    x, y = data.batch(torch.tensor([4, 0]), epoch=0)
    assert torch.allclose(x[0], (image4 - mean[:, None, None]) / std[:, None, None], atol=1e-6)
    assert y.tolist() == [labels[4], labels[0]]
    assert data.test.fetch(torch.arange(7))[1].tolist() == batches["test_batch"][b"labels"]
    assert load_dataset(cfg("cifar10", path=str(parent / "cifar-10-batches-py"))).augment == "crop_flip"


def test_cifar100_reads_fine_labels(cifar100_root):
    parent, batches = cifar100_root
    data = load_dataset(cfg("cifar100", path=str(parent)))
    assert (len(data.train), len(data.test), data.num_classes) == (12, 5, 100)
    assert data.train.fetch(torch.arange(12))[1].tolist() == batches["train"][b"fine_labels"]


def test_cifar10_from_the_archive_without_extracting(cifar10_root, tmp_path):
    parent, _ = cifar10_root
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(parent / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    a = load_dataset(cfg("cifar10", path=str(archive), augment="none"))
    b = load_dataset(cfg("cifar10", path=str(parent), augment="none"))
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)


def test_imagefolder_labels_follow_sorted_class_folders_and_pixels_survive(image_root):
    root, pixels = image_root
    data = load_dataset(cfg("imagefolder", path=str(root), augment="none"))
    assert (len(data.train), len(data.test), data.num_classes, data.input_shape) == (15, 6, 3, (3, 8, 8))
    x, y = data.train.fetch(torch.arange(15))
    assert y.tolist() == [0] * 6 + [1] * 5 + [2] * 4
    assert torch.equal((x[6] * 255).round().to(torch.uint8), torch.from_numpy(pixels[("train", "dog", 0)]).permute(2, 0, 1))
    # Normalisation: per-channel statistics of the training images (all 15 are in the sample).
    assert torch.allclose(data.mean, x.mean((0, 2, 3))) and torch.allclose(data.std, x.std((0, 2, 3)))
    xv, yv = data.batch(torch.tensor([2]), epoch=None)  # held-out split (never augmented): val/dog/00.png
    val_dog = torch.from_numpy(pixels[("val", "dog", 0)]).permute(2, 0, 1).float() / 255
    assert yv.tolist() == [1]
    assert torch.allclose(xv[0], (val_dog - data.mean[:, None, None]) / data.std[:, None, None], atol=1e-5)


def test_imagefolder_without_split_folders_holds_out_test_fraction(image_root, tmp_path):
    root, _ = image_root
    flat = tmp_path / "flat"
    (flat).symlink_to(root / "train", target_is_directory=True)
    data = load_dataset(cfg("imagefolder", path=str(flat), test_fraction=0.2))
    assert len(data.train) + len(data.test) == 15 and len(data.test) == 3 and data.num_classes == 3


def test_imagefolder_resizes_to_image_size(image_root):
    root, _ = image_root
    data = load_dataset(cfg("imagefolder", path=str(root), image_size=5, augment="none"))
    x, _ = next(data.train_loader(0))
    assert data.input_shape == (3, 5, 5) and x.shape == (6, 3, 5, 5)


def test_imagenet_layout(imagenet_root):
    data = load_dataset(cfg("imagenet", path=str(imagenet_root), image_size=16))
    assert (len(data.train), len(data.test), data.num_classes, data.input_shape) == (12, 6, 3, (3, 16, 16))
    assert data.augment == "resized_crop_flip"
    x, y = next(data.train_loader(0))
    assert x.shape == (6, 3, 16, 16) and x.dtype == torch.float32 and torch.isfinite(x).all()
    assert data.test.fetch(torch.arange(6))[1].tolist() == [0, 0, 1, 1, 2, 2]


def test_csv_windows_predict_the_next_target(csv_path):
    path, values = csv_path
    data = load_dataset(cfg("csv", path=str(path), seq_len=4, test_fraction=0.25, batch_size=4))
    assert (data.task, data.num_classes, data.input_shape, data.output_size) == ("regression", 0, (4, 3), 1)
    cut = 30  # round(40 * 0.75): rows 0..29 train the statistics
    assert (len(data.train), len(data.test)) == (cut - 4, 40 - cut)
    mean, std = values[:cut].mean(0), values[:cut].std(0)
    z = (values - mean) / std
    x, y = data.train.fetch(torch.tensor([0, 7]))
    assert np.allclose(x[1].numpy(), z[7:11], atol=1e-5) and np.allclose(y[:, 0].numpy(), z[[4, 11], 2], atol=1e-5)
    xt, yt = data.test.fetch(torch.tensor([0]))  # first held-out target is row 30, its window rows 26..29
    assert np.allclose(xt[0].numpy(), z[26:30], atol=1e-5) and np.isclose(float(yt), z[30, 2], atol=1e-5)
    assert data.extras["target_column"] == "power" and np.isclose(data.extras["target_std"], std[2])


# --- the same global batch for any world size --------------------------------------------------------


SHARDED = ["digits", "cifar10", "imagefolder", "imagenet", "csv"]


@pytest.mark.parametrize("name", SHARDED)
def test_global_batch_is_the_same_for_world_sizes_1_2_3(name, fixtures):
    data = load_dataset(_source(name, fixtures))
    epoch = 1
    whole = list(data.train_loader(epoch))
    assert len(whole) == data.steps_per_epoch >= 2
    for world in (2, 3):
        per_rank = [list(data.train_loader(epoch, 0, rank, world)) for rank in range(world)]
        for step, (x1, y1) in enumerate(whole):
            xs = torch.cat([per_rank[r][step][0] for r in range(world)])
            ys = torch.cat([per_rank[r][step][1] for r in range(world)])
            assert torch.equal(xs, x1) and torch.equal(ys, y1), (name, world, step)
            assert {len(per_rank[r][step][1]) for r in range(world)} == {6 // world}


@pytest.mark.parametrize("name", ["cifar10", "imagefolder", "imagenet", "digits"])
def test_resume_mid_epoch_gives_the_remaining_batches(name, fixtures):
    data = load_dataset(_source(name, fixtures))
    full = list(data.train_loader(2, 0, rank=1, world=2))
    resumed = list(data.train_loader(2, 1, rank=1, world=2))
    assert len(resumed) == len(full) - 1
    for (xa, ya), (xb, yb) in zip(full[1:], resumed):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_epochs_reshuffle_and_reaugment(fixtures):
    data = load_dataset(_source("cifar10", fixtures))
    e0, e1 = GlobalBatches(15, 6, 3, 0, 1).global_indices(0, 0), GlobalBatches(15, 6, 3, 0, 1).global_indices(1, 0)
    assert not torch.equal(e0, e1)
    idx = torch.arange(6)
    assert not torch.equal(data.batch(idx, 0)[0], data.batch(idx, 1)[0])  # new crops / flips each epoch
    assert torch.equal(data.batch(idx, 0)[0], data.batch(idx, 0)[0])


# --- augmentation -------------------------------------------------------------------------------------


def test_crop_flip_is_a_padded_window_possibly_mirrored():
    x = torch.rand(40, 2, 6, 5)
    keys = example_keys(seed=7, epoch=0, indices=np.arange(40))
    out = crop_flip(x, keys, pad=2)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    seen = set()
    for i in range(40):
        matches = [(dy, dx, f) for dy in range(5) for dx in range(5) for f in (0, 1)
                   if torch.equal(out[i], (lambda w: w.flip(-1) if f else w)(padded[i, :, dy:dy + 6, dx:dx + 5]))]
        assert matches, i
        seen.add(matches[0])
    assert len(seen) > 10  # offsets and flips vary across examples
    assert torch.equal(crop_flip(x[7:9], keys[7:9], pad=2), out[7:9])  # per example, not per batch position


def test_example_keys_depend_on_seed_epoch_and_index():
    k = example_keys(0, 0, np.arange(1000))
    assert len(set(k.tolist())) == 1000
    assert not np.array_equal(k, example_keys(1, 0, np.arange(1000)))
    assert not np.array_equal(k, example_keys(0, 1, np.arange(1000)))
    assert np.array_equal(k[[5, 9]], example_keys(0, 0, [5, 9]))


# --- workers ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["imagefolder", "cifar10"])
def test_two_workers_give_the_batches_of_zero_workers(name, fixtures):
    serial = load_dataset(_source(name, fixtures))
    parallel = load_dataset(_source(name, fixtures, num_workers=2))
    for a, b in [(serial.train_loader(1, 0, 1, 2), parallel.train_loader(1, 0, 1, 2)),
                 (serial.eval_loader(0, 2, 2), parallel.eval_loader(0, 2, 2))]:
        a, b = list(a), list(b)
        assert len(a) == len(b) > 0
        for (xa, ya), (xb, yb) in zip(a, b):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_workers_leave_the_global_rng_alone(fixtures):
    data = load_dataset(_source("cifar10", fixtures, num_workers=2))
    torch.manual_seed(0)
    list(data.train_loader(0))
    after = torch.rand(3)
    torch.manual_seed(0)
    assert torch.equal(after, torch.rand(3))  # model init / dropout draws are the same with or without workers


# --- evaluation ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["digits", "imagefolder", "csv"])
@pytest.mark.parametrize("world,batch", [(1, 4), (2, 4), (3, 2), (4, 5), (7, 3)])
def test_eval_loader_equal_batch_counts_and_exact_cover(name, world, batch, fixtures):
    data = load_dataset(_source(name, fixtures))
    n = len(data.test)
    reference = list(data.eval_loader(0, 1, n))
    assert len(reference) == 1
    per_rank = [list(data.eval_loader(r, world, batch)) for r in range(world)]
    assert len({len(b) for b in per_rank}) == 1  # the same number of forwards on every rank
    xs = torch.cat([x for rank in per_rank for x, _ in rank])
    ys = torch.cat([y for rank in per_rank for _, y in rank])
    assert torch.equal(xs, reference[0][0]) and torch.equal(ys, reference[0][1])  # each example once, in order
    for rank in per_rank:
        for x, y in rank:
            assert x.shape[1:] == data.input_shape and len(x) == len(y) <= batch


def test_eval_loader_pads_with_empty_batches(fixtures):
    data = load_dataset(_source("imagefolder", fixtures))  # 6 held-out images
    per_rank = [list(data.eval_loader(r, 4, 1)) for r in range(4)]  # shares 2, 2, 1, 1
    assert [len(b) for b in per_rank] == [2, 2, 2, 2]
    assert [len(y) for _, y in per_rank[3]] == [1, 0] and per_rank[3][1][0].shape == (0, 3, 8, 8)


# --- malformed configs and data: ConfigError naming the field ----------------------------------------


def _break(kind, fx, tmp):
    """(config, needle) for one malformed case; files are built under tmp."""
    if kind == "missing path":
        return cfg("imagefolder", path=str(tmp / "nope")), "data.path: .* does not exist"
    if kind == "no path":
        return cfg("cifar10", path=""), "data.path: data.name=cifar10 needs data.path"
    if kind == "unknown name":
        return cfg("imagenet21k"), "data.name: 'imagenet21k' is not a known data set"
    if kind == "batch larger than split":
        return cfg("imagefolder", path=str(fx["imagefolder"]), batch_size=16), "data.batch_size: 16 exceeds the 15"
    if kind == "cifar missing batch files":
        folder = tmp / "cifar-10-batches-py"
        folder.mkdir()
        _write_pickle(folder / "data_batch_1", _cifar_batch(np.random.default_rng(0), 2, "labels", 10))
        return cfg("cifar10", path=str(tmp)), "data.path: .* missing data_batch_2, .*test_batch"
    if kind == "cifar100 pointed at cifar10":
        return cfg("cifar100", path=str(fx["cifar10"])), "data.path: .*looks like cifar10: set data.name=cifar10"
    if kind == "cifar corrupt file":
        folder = tmp / "cifar-100-python"
        folder.mkdir()
        (folder / "train").write_bytes(b"not a pickle")
        (folder / "test").write_bytes(b"not a pickle")
        return cfg("cifar100", path=str(tmp)), "data.path: .*train is not a CIFAR python-version batch"
    if kind == "cifar pickle runs code":
        folder = tmp / "cifar-100-python"
        folder.mkdir()
        _write_pickle(folder / "train", {b"data": time.sleep})
        _write_pickle(folder / "test", {b"data": time.sleep})
        return cfg("cifar100", path=str(tmp)), "data.path: .*refusing to load time.sleep"
    if kind == "cifar wrong shape":
        folder = tmp / "cifar-100-python"
        folder.mkdir()
        bad = {b"data": np.zeros((2, 100), np.uint8), b"fine_labels": [0, 1]}
        _write_pickle(folder / "train", bad)
        _write_pickle(folder / "test", bad)
        return cfg("cifar100", path=str(tmp)), r"data.path: .*expected uint8 \(N, 3072\)"
    if kind == "folder with no images":
        (tmp / "train" / "a").mkdir(parents=True)
        (tmp / "train" / "b").mkdir(parents=True)
        (tmp / "train" / "a" / "readme.txt").write_text("x")
        return cfg("imagefolder", path=str(tmp)), "data.path: class folder .* has no images"
    if kind == "images without class folders":
        (tmp / "train").mkdir()
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp / "train" / "x.png")
        return cfg("imagefolder", path=str(tmp)), "data.path: .* holds 1 images directly but no class folders"
    if kind == "class folders differ":
        for split, classes in (("train", "abc"), ("val", "ab")):
            for c in classes:
                (tmp / split / c).mkdir(parents=True)
                Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp / split / c / "0.png")
        return cfg("imagefolder", path=str(tmp), batch_size=2), r"data.path: class folders differ .*only in train/: \['c'\]"
    if kind == "imagenet flat val":
        (tmp / "train" / "n01440764").mkdir(parents=True)
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp / "train" / "n01440764" / "a.JPEG")
        (tmp / "val").mkdir()
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp / "val" / "ILSVRC2012_val_00000001.JPEG")
        return cfg("imagenet", path=str(tmp)), "data.path: .*holds the validation images directly"
    if kind == "imagenet class names not wnids":
        for split in ("train", "val"):
            (tmp / split / "cat").mkdir(parents=True)
            Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp / split / "cat" / "0.JPEG")
        return cfg("imagenet", path=str(tmp)), r"data.path: train/ class folders \['cat'\] are not ImageNet wnids"
    if kind == "one class":
        (tmp / "train" / "a").mkdir(parents=True)
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp / "train" / "a" / "0.png")
        return cfg("imagefolder", path=str(tmp), batch_size=1), "data.path: .* has 1 class folder; classification needs >= 2"
    if kind == "nothing held out":
        for c in "ab":
            (tmp / c).mkdir()
            Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp / c / "0.png")
        return cfg("imagefolder", path=str(tmp), batch_size=1, test_fraction=0.2), "data.test_fraction: 0.2 of 2 images holds out none"
    if kind == "imagenet without val":
        (tmp / "train" / "n01440764").mkdir(parents=True)
        return cfg("imagenet", path=str(tmp)), "data.path: .* has no val/"
    if kind == "corrupt image":
        for c in "ab":
            (tmp / "train" / c).mkdir(parents=True)
            Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp / "train" / c / "0.png")
        (tmp / "train" / "b" / "1.png").write_bytes(b"\x89PNG broken")  # found by the statistics sample
        return cfg("imagefolder", path=str(tmp), batch_size=1, test_fraction=0.34), "data.path: cannot decode image .*1.png"
    if kind == "corrupt image in a batch":
        for split in ("train", "val"):
            for wnid in ("n01440764", "n01443537"):
                (tmp / split / wnid).mkdir(parents=True)
                Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp / split / wnid / "0.JPEG")
        (tmp / "train" / "n01443537" / "1.JPEG").write_bytes(b"\xff\xd8 truncated")
        data = load_dataset(cfg("imagenet", path=str(tmp), batch_size=3, image_size=4, num_workers=1))
        return data, "^data.path: cannot decode image .*1.JPEG"  # from a worker, still one line
    if kind == "csv missing target":
        return cfg("csv", path=str(fx["csv"]), target_column="kwh"), "data.target_column: 'kwh' is not a column"
    if kind == "csv non-numeric target":
        return cfg("csv", path=str(fx["csv"]), target_column="Date"), "data.target_column: 'Date' is not numeric"
    if kind == "csv window longer than series":
        return cfg("csv", path=str(fx["csv"]), seq_len=30), "data.seq_len: 30 leaves no training window"
    if kind == "augment on vectors":
        return cfg("digits", augment="crop_flip"), "data.augment: crop_flip needs images"
    if kind == "resized crop of in-memory images":
        return cfg("cifar10", path=str(fx["cifar10"]), augment="resized_crop_flip"), "data.augment: resized_crop_flip"
    if kind == "bad augment name":
        return cfg("digits", augment="mixup"), "data.augment: 'mixup' is not allowed"
    if kind == "negative workers":
        return cfg("digits", num_workers=-1), "data.num_workers: must be >= 0"
    if kind == "cifar image size":
        return cfg("cifar10", path=str(fx["cifar10"]), image_size=64), "data.image_size: CIFAR images are 32x32"
    raise AssertionError(kind)


MALFORMED = [
    "missing path", "no path", "unknown name", "batch larger than split", "cifar missing batch files",
    "cifar100 pointed at cifar10", "cifar corrupt file", "cifar pickle runs code", "cifar wrong shape",
    "folder with no images", "images without class folders", "class folders differ", "imagenet flat val",
    "imagenet without val", "imagenet class names not wnids", "one class", "nothing held out", "corrupt image", "corrupt image in a batch",
    "csv missing target", "csv non-numeric target",
    "csv window longer than series", "augment on vectors", "resized crop of in-memory images", "bad augment name",
    "negative workers", "cifar image size",
]


@pytest.mark.parametrize("kind", MALFORMED)
def test_malformed_data_raises_config_error_naming_the_field(kind, fixtures, tmp_path):
    subject, needle = _break(kind, fixtures, tmp_path)
    with pytest.raises(ConfigError, match=needle) as excinfo:
        if kind == "corrupt image in a batch":
            list(subject.train_loader(0))
        else:
            load_dataset(subject)
    assert "\n" not in str(excinfo.value)  # one line for the CLI


def test_static_checks_need_no_files():
    check_data_config(cfg("imagefolder", path="/does/not/matter"))  # existence is load_dataset's job
    with pytest.raises(ConfigError, match="data.path: data.name=hub needs data.path"):
        check_data_config(cfg("hub"))
    with pytest.raises(ConfigError, match="data.seq_len"):
        check_data_config(cfg("csv", path="x.csv", seq_len=0))
    assert "imagenet" in DATA_SOURCES and "crop_flip" in AUGMENTS


def _hub_folder(root):
    """A local parquet data set as `datasets` writes it (what a hub id resolves to), 9 train / 4 test."""
    datasets = pytest.importorskip("datasets")
    rng = np.random.default_rng(5)
    features = datasets.Features(img=datasets.Image(), label=datasets.ClassLabel(names=["a", "b", "c"]))
    for split, n in (("train", 9), ("test", 4)):
        images = [Image.fromarray(_rgb(rng, 6, 6)) for _ in range(n)]
        ds = datasets.Dataset.from_dict({"img": images, "label": [i % 3 for i in range(n)]}, features=features)
        (root / "data").mkdir(parents=True, exist_ok=True)
        ds.to_parquet(str(root / "data" / f"{split}-00000-of-00001.parquet"))
    return root


def test_hub_loads_a_local_data_set_and_shards_like_the_others(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    root = _hub_folder(tmp_path / "set")
    data = load_dataset(cfg("hub", path=str(root)))
    assert (len(data.train), len(data.test), data.num_classes, data.input_shape) == (9, 4, 3, (3, 6, 6))
    assert data.augment == "crop_flip" and data.test.fetch(torch.arange(4))[1].tolist() == [0, 1, 2, 0]
    whole = list(data.train_loader(1))
    halves = [list(data.train_loader(1, 0, r, 2)) for r in range(2)]
    for step, (x, y) in enumerate(whole):
        assert torch.equal(torch.cat([halves[0][step][0], halves[1][step][0]]), x)


def test_hub_offline_fails_fast_with_a_clear_message(monkeypatch):
    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(ConfigError, match="data.path: cannot load 'nobody/no-such-set'.*HF_HUB_OFFLINE"):
        load_dataset(cfg("hub", path="nobody/no-such-set"))
    assert time.perf_counter() - start < 5


def test_hub_unreachable_endpoint_fails_fast(monkeypatch):
    pytest.importorskip("datasets")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: connection refused at once
    start = time.perf_counter()
    with pytest.raises(ConfigError, match="data.path: cannot reach http://127.0.0.1:9"):
        load_dataset(cfg("hub", path="nobody/no-such-set"))
    assert time.perf_counter() - start < 5
