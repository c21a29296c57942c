"""Data: readers on fixtures written in the publishers' formats, the meta / labelled / unlabelled splits,
the deterministic batch streams, batched augmentation, and the intrusion geometry of the rings task."""

import json
import pickle

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from metamixup.data import augment_images, build_data, intrusion_rate, make_rings, ring_class, stream_indices, write_labeled_idx
from shared.data import DatasetNotFoundError


def _write_cifar10(root, n_per_batch=20, n_test=10):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(1, 6):
        labels = [(k + i) % 10 for k in range(n_per_batch)]
        entry = {"data": rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8), "labels": labels,
                 "batch_label": f"training batch {i} of 5", "filenames": [f"{k}.png" for k in range(n_per_batch)]}
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump(entry, f, protocol=2)
    test = {"data": rng.integers(0, 256, (n_test, 3072), dtype=np.uint8), "labels": [k % 10 for k in range(n_test)]}
    with open(folder / "test_batch", "wb") as f:
        pickle.dump(test, f, protocol=2)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{k}" for k in range(10)], "num_cases_per_batch": n_per_batch}, f, protocol=2)


def _write_cifar100(root, n=200):
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for split, size in (("train", n), ("test", 50)):
        entry = {b"data": rng.integers(0, 256, (size, 3072), dtype=np.uint8),
                 b"fine_labels": [k % 100 for k in range(size)], b"coarse_labels": [k % 20 for k in range(size)]}
        with open(folder / split, "wb") as f:
            pickle.dump(entry, f)
    with open(folder / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": [f"f{k}".encode() for k in range(100)],
                     b"coarse_label_names": [f"c{k}".encode() for k in range(20)]}, f)


def _write_svhn(root, n=60):
    import scipy.io

    root.mkdir(parents=True)
    rng = np.random.default_rng(2)
    for split, size in (("train", n), ("test", 20)):
        y = (np.arange(size) % 10) + 1  # 1..10, where 10 is the digit 0
        scipy.io.savemat(root / f"{split}_32x32.mat",
                         {"X": rng.integers(0, 256, (32, 32, 3, size), dtype=np.uint8), "y": y.reshape(-1, 1)})


def _cfg(**kw):
    return OmegaConf.create(kw)


def test_cifar10_fixture_with_meta_and_labelled_splits(tmp_path):
    _write_cifar10(tmp_path)
    cfg = _cfg(name="cifar10", root=str(tmp_path), meta_size=20, num_labeled=30)
    d = build_data(cfg, seed=0)
    assert d.num_classes == 10 and d.kind == "image" and d.test.x.shape == (10, 3, 32, 32)
    assert len(d.meta) == 20 and len(d.train) == 30 and len(d.unlabeled) == 100 - 50
    ids = [set(s.ids.tolist()) for s in (d.meta, d.train, d.unlabeled)]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    assert set().union(*ids) == set(range(100))
    assert np.bincount(d.meta.y.numpy(), minlength=10).tolist() == [2] * 10  # class-balanced
    assert np.bincount(d.train.y.numpy(), minlength=10).tolist() == [3] * 10
    # rows are [R | G | B] planes of 32x32 -> (3, 32, 32)
    import pickle as pk
    raw = pk.load(open(tmp_path / "cifar-10-batches-py" / "data_batch_1", "rb"), encoding="latin1")
    row = int(d.meta.ids[0]) if int(d.meta.ids[0]) < 20 else None
    if row is not None:
        assert torch.equal(d.meta.x[0], torch.from_numpy(raw["data"][row].reshape(3, 32, 32)))
    write_labeled_idx(d, tmp_path / "labeled_idx.json")
    assert sorted(json.loads((tmp_path / "labeled_idx.json").read_text())["labeled_idx"]) == sorted(d.train.ids.tolist())
    again = build_data(cfg, seed=0)
    assert torch.equal(again.train.ids, d.train.ids)  # deterministic for a seed
    assert not torch.equal(build_data(cfg, seed=1).train.ids, d.train.ids)


def test_cifar100_fixture(tmp_path):
    _write_cifar100(tmp_path)
    d = build_data(_cfg(name="cifar100", root=str(tmp_path), meta_size=100, num_labeled=None), seed=0)
    assert d.num_classes == 100 and len(d.train) == 100 and len(d.meta) == 100 and d.unlabeled is None
    assert np.bincount(d.meta.y.numpy(), minlength=100).tolist() == [1] * 100


def test_svhn_fixture_maps_label_10_to_digit_0(tmp_path):
    _write_svhn(tmp_path / "svhn")
    d = build_data(_cfg(name="svhn", root=str(tmp_path / "svhn"), meta_size=0, num_labeled=20), seed=0)
    assert d.num_classes == 10 and d.train.x.shape[1:] == (3, 32, 32)
    assert sorted(set(d.test.y.tolist())) == list(range(10)) and len(d.train) == 20 and len(d.unlabeled) == 40


def test_missing_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="CIFAR-10"):
        build_data(_cfg(name="cifar10", root=str(tmp_path / "nope"), meta_size=0), seed=0)
    with pytest.raises(DatasetNotFoundError, match="SVHN"):
        build_data(_cfg(name="svhn", root=str(tmp_path / "nope"), meta_size=0), seed=0)


def test_stream_indices_are_deterministic_permutations_sharded_over_ranks():
    a = [stream_indices(10, 4, s, seed=3) for s in range(5)]
    assert all(torch.equal(x, y) for x, y in zip(a, [stream_indices(10, 4, s, seed=3) for s in range(5)]))
    flat = torch.cat(a).tolist()
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:20]) == list(range(10))  # epochs are permutations
    r0, r1 = stream_indices(10, 2, 1, seed=3, rank=0, world=2), stream_indices(10, 2, 1, seed=3, rank=1, world=2)
    assert len(r0) == len(r1) == 2 and not set(r0.tolist()) & set(r1.tolist())
    assert sorted(r0.tolist() + r1.tolist()) == sorted(stream_indices(10, 4, 1, seed=3).tolist())
    assert not torch.equal(stream_indices(10, 4, 0, seed=4), a[0])


def test_batched_augmentation():
    x = torch.arange(2 * 1 * 5 * 5, dtype=torch.float32).reshape(2, 1, 5, 5)
    assert torch.equal(augment_images(x, torch.Generator().manual_seed(0), 0, False), x)
    out = augment_images(x, torch.Generator().manual_seed(0), 2, False)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for b in range(2):  # each output is some 5x5 window of the padded image
        windows = [padded[b, :, i:i + 5, j:j + 5] for i in range(5) for j in range(5)]
        assert any(torch.equal(out[b], w) for w in windows)
    flips = augment_images(x.repeat(50, 1, 1, 1), torch.Generator().manual_seed(1), 0, True)
    flipped = [torch.equal(f, x[i % 2].flip(2)) for i, f in enumerate(flips)]
    assert 30 < sum(flipped) < 70  # about half of 100


def test_rings_geometry_and_intrusion():
    x, y = make_rings(3000, 3, 0.05, seed=0)
    assert np.bincount(y).tolist() == [1000] * 3
    assert (ring_class(x, 3) == y).mean() > 0.999  # the nearest ring is the label: the task is clean
    rates = intrusion_rate(np.array([0.0, 0.25, 0.5, 0.75, 1.0]), 3, 0.05)
    assert rates[0] == 0.0 and rates[-1] == 0.0  # the originals never intrude
    assert rates[2] > 0.15 and rates[2] > rates[1]  # mid ratios land on a third class's ring
    assert rates[1] == pytest.approx(intrusion_rate(np.array([0.75]), 3, 0.05)[0], abs=0.01)  # symmetric
