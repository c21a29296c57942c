"""Readers on fixtures in the publishers' formats, the official reduced search splits, the batched
pre/post-processing."""

import pickle

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from dada.data import (
    REDUCED_IMAGENET_CLASSES,
    build_data,
    cutout_default,
    planted_transform,
    random_crop_flip,
    reduced_indices,
    search_split,
)


def write_cifar10(root, n_train=500, n_test=50):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(1, 6):
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump({"data": rng.integers(0, 256, (n_train // 5, 3072), dtype=np.uint8),
                         "labels": [int(v) for v in np.arange(n_train // 5) % 10]}, f)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"data": rng.integers(0, 256, (n_test, 3072), dtype=np.uint8), "labels": list(np.arange(n_test) % 10)}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)


def test_cifar_fixture_reduced_split_is_stratified_and_deterministic(tmp_path):
    write_cifar10(tmp_path)
    d = OmegaConf.create({"name": "cifar10", "root": str(tmp_path), "search_size": 100})
    a, b = build_data(d), build_data(d)
    assert len(a.search_train) == len(a.search_val) == 50 and len(a.train) == 500 and len(a.test) == 50
    assert torch.equal(a.search_train.images, b.search_train.images)
    assert np.bincount(a.search_train.labels.numpy(), minlength=10).tolist() == [5] * 10
    assert a.train.images.dtype == torch.uint8 and a.train.images.shape[1:] == (3, 32, 32)
    from sklearn.model_selection import StratifiedShuffleSplit  # the official call, verbatim

    idx, _ = next(StratifiedShuffleSplit(n_splits=1, test_size=400, random_state=0).split(np.zeros(500), a.train.targets))
    assert np.array_equal(np.sort(reduced_indices(a.train.targets, 100)), np.sort(idx))


def test_search_split_is_the_first_of_five_stratified_halves():
    targets = np.repeat(np.arange(4), 10)
    tr, va = search_split(targets)
    assert len(tr) == len(va) == 20 and not set(tr) & set(va)
    assert np.bincount(targets[tr]).tolist() == [5, 5, 5, 5]


def test_svhn_fixture_maps_label_10_to_0(tmp_path):
    import scipy.io

    rng = np.random.default_rng(0)
    for split, n in (("train", 40), ("test", 10), ("extra", 20)):
        y = (np.arange(n) % 10 + 1).reshape(-1, 1)  # 1..10, 10 = digit 0
        scipy.io.savemat(tmp_path / f"{split}_32x32.mat", {"X": rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8), "y": y})
    d = OmegaConf.create({"name": "svhn", "root": str(tmp_path), "search_size": 20, "use_extra": True})
    data = build_data(d)
    assert len(data.train) == 60 and len(data.test) == 10 and len(data.search_train) == 10
    assert data.train.labels.min() == 0 and data.train.labels.max() == 9 and (data.train.labels == 0).sum() == 6


def test_imagenet_folder_fixture_keeps_the_fixed_classes(tmp_path):
    classes = [f"n{i:08d}" for i in range(24)]
    for split in ("train", "val"):
        for c in classes:
            (tmp_path / split / c).mkdir(parents=True)
            for j in range(4 if split == "train" else 1):
                Image.fromarray(np.full((40, 48, 3), j * 40, dtype=np.uint8)).save(tmp_path / split / c / f"{j}.JPEG")
    d = OmegaConf.create({"name": "imagenet", "root": str(tmp_path), "search_pool": 96, "search_classes": 2})
    data = build_data(d)
    assert REDUCED_IMAGENET_CLASSES[:2] == (16, 23) and len(REDUCED_IMAGENET_CLASSES) == 120
    assert len(data.search_train) + len(data.search_val) == 8 and set(data.search_train.labels) | set(data.search_val.labels) == {0, 1}
    x, y = data.search_train[0]
    assert x.dtype == torch.uint8 and x.shape == (3, 224, 224) and data.num_classes == 24


def test_missing_dataset_is_one_clear_error(tmp_path):
    from shared.data import DatasetNotFoundError

    with pytest.raises(DatasetNotFoundError, match="CIFAR-10 not found"):
        build_data(OmegaConf.create({"name": "cifar10", "root": str(tmp_path), "search_size": 100}))


def test_random_crop_flip_is_a_padded_crop_or_its_mirror():
    x = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8)
    out = random_crop_flip(x, 4, torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    flips = 0
    for i in range(64):
        crops = [padded[i, :, oy:oy + 8, ox:ox + 8] for oy in range(9) for ox in range(9)]
        plain = any(torch.equal(out[i], c) for c in crops)
        mirrored = any(torch.equal(out[i], c.flip(-1)) for c in crops)
        assert plain or mirrored
        flips += mirrored and not plain
    assert 15 < flips < 50


def test_cutout_default_zeroes_a_clipped_square_per_image():
    x = torch.ones(200, 3, 32, 32)
    out = cutout_default(x, 16, torch.Generator().manual_seed(0))
    zeros = (out[:, 0] == 0).sum((1, 2))
    assert zeros.max() == 256 and zeros.min() >= 64 and torch.equal(out[:, 0] == 0, out[:, 2] == 0)


def test_planted_transform_applies_the_op_to_every_image():
    x = torch.randint(0, 256, (5, 3, 8, 8), dtype=torch.uint8)
    assert torch.equal(planted_transform(x, "Invert", 0.5), 255 - x)
    assert torch.equal(planted_transform(x, None, 0.5), x)
