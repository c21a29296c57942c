"""Readers on fixtures written in the published layouts; the synthetic identities."""

import gzip
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from ir_softmax.data import (
    DatasetFormatError,
    casia_webface,
    imbalanced_indices,
    lfw_pairs,
    market1501,
    mnist,
    parse_reid_name,
    read_idx,
    read_lfw_pairs,
    synthetic_identities,
    write_lfw_layout,
)
from shared.data.root import DatasetNotFoundError


def _img(path, value=0, size=(8, 6)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((*size, 3), value, np.uint8)).save(path)


# ------------------------------------------------------------------------------------ CASIA-WebFace


def test_casia_webface_drops_the_excluded_identities_and_relabels(tmp_path):
    root = tmp_path / "CASIA-WebFace"
    for ident, n in (("0000045", 2), ("0000099", 3), ("0000100", 1)):
        for k in range(n):
            _img(root / ident / f"{k + 1:03d}.jpg", value=10 * k)
    (tmp_path / "overlap.txt").write_text("# identities also in LFW\n0000099\n0000999  # not present\n")
    ds = casia_webface(root, exclude=tmp_path / "overlap.txt")
    assert ds.classes == ["0000045", "0000100"] and len(ds) == 3
    assert sorted(t for _, t in ds.samples) == [0, 0, 1]
    assert len(casia_webface(root)) == 6
    (root / "0000513").mkdir()  # an LFW overlap of AM-Softmax's list
    _img(root / "0000513" / "001.jpg")
    assert "0000513" not in casia_webface(root, exclude="builtin").classes
    from ir_softmax.data import BUILTIN_OVERLAP, read_identity_list

    assert len(set(read_identity_list(BUILTIN_OVERLAP))) == 59
    with pytest.raises(DatasetNotFoundError, match="exclusion list"):
        casia_webface(root, exclude=tmp_path / "missing.txt")
    with pytest.raises(DatasetNotFoundError):
        casia_webface(tmp_path / "nowhere")


# ---------------------------------------------------------------------------------------------- LFW


PAIRS = """2\t2
Alice_A\t1\t2
Bob_B\t1\t3
Alice_A\t1\tBob_B\t2
Carol_C\t1\tAlice_A\t2
Carol_C\t1\t2
Dan_D\t2\t1
Bob_B\t3\tDan_D\t1
Dan_D\t2\tCarol_C\t2
"""


def _lfw(tmp_path):
    root = tmp_path / "lfw"
    for name, n in (("Alice_A", 2), ("Bob_B", 3), ("Carol_C", 2), ("Dan_D", 2)):
        for k in range(1, n + 1):
            _img(root / name / f"{name}_{k:04d}.jpg", value=k)
    (root / "pairs.txt").write_text(PAIRS)
    return root


def test_lfw_pairs_txt_parsing_and_folds(tmp_path):
    root = _lfw(tmp_path)
    pairs = read_lfw_pairs(root / "pairs.txt")
    assert len(pairs) == 8
    assert [p.same for p in pairs] == [True, True, False, False, True, True, False, False]
    assert [p.fold for p in pairs] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert (pairs[2].name1, pairs[2].index1, pairs[2].name2, pairs[2].index2) == ("Alice_A", 1, "Bob_B", 2)
    paths, index, same, fold = lfw_pairs(root)
    assert len(paths) == 9 and index.shape == (8, 2)
    assert paths[index[1, 1]].name == "Bob_B_0003.jpg" and paths[index[5, 0]].name == "Dan_D_0002.jpg"
    assert same.tolist() == [p.same for p in pairs] and fold.tolist() == [p.fold for p in pairs]


def test_lfw_errors_name_the_problem(tmp_path):
    root = _lfw(tmp_path)
    (root / "Dan_D" / "Dan_D_0002.jpg").unlink()
    with pytest.raises(DatasetNotFoundError, match="Dan_D_0002.jpg"):
        lfw_pairs(root)
    bad = tmp_path / "bad.txt"
    bad.write_text(PAIRS.replace("Bob_B\t1\t3\n", "Bob_B\t1\tX\t3\n"))
    with pytest.raises(DatasetFormatError, match="line 3"):
        read_lfw_pairs(bad)
    bad.write_text("\n".join(PAIRS.splitlines()[:-1]))
    with pytest.raises(DatasetFormatError, match="truncated"):
        read_lfw_pairs(bad)
    with pytest.raises(DatasetNotFoundError, match="pairs.txt"):
        read_lfw_pairs(tmp_path / "none.txt")


def test_write_lfw_layout_round_trips_through_the_reader(tmp_path):
    rng = np.random.default_rng(0)
    ids = np.array([7, 7, 7, 9, 9, 11, 11, 11])
    images = rng.integers(0, 255, (8, 8, 8, 3)).astype(np.uint8)
    pairs = np.array([[0, 2], [3, 0], [6, 7], [5, 1]])
    same = np.array([True, False, True, False])
    write_lfw_layout(tmp_path, images, ids, pairs, same, folds=2, ext=".png")
    paths, index, got_same, fold = lfw_pairs(tmp_path, ext=".png")
    assert got_same.tolist() == same.tolist() and fold.tolist() == [0, 0, 1, 1]
    for k in range(4):
        for side in range(2):
            img = np.asarray(Image.open(paths[index[k, side]]))
            assert np.array_equal(img, images[pairs[k, side]])  # png: exact round trip


# -------------------------------------------------------------------------------------- Market-1501


def test_reid_file_names():
    assert parse_reid_name("0002_c1s1_000451_03.jpg") == (2, 1)
    assert parse_reid_name("-1_c3s2_012345_00.jpg") == (-1, 3)
    assert parse_reid_name("0000_c6s4_001234_02.jpg") == (0, 6)
    assert parse_reid_name("0001_c2_f0046182.jpg") == (1, 2)  # DukeMTMC-reID
    with pytest.raises(DatasetFormatError, match="file name"):
        parse_reid_name("person2_cam1.jpg")


def test_market1501_splits(tmp_path):
    root = tmp_path / "Market-1501-v15.09.15"
    for n in ("0002_c1s1_000451_03.jpg", "0002_c2s1_000551_01.jpg", "0007_c3s1_000001_01.jpg",
              "-1_c1s1_000001_01.jpg", "0000_c1s1_000002_01.jpg"):
        _img(root / "bounding_box_train" / n)
    for n in ("0003_c1s1_000001_00.jpg", "0004_c2s1_000001_00.jpg"):
        _img(root / "query" / n)
    for n in ("0003_c2s1_000100_01.jpg", "-1_c1s1_000200_01.jpg", "0000_c4s1_000300_01.jpg"):
        _img(root / "bounding_box_test" / n)
    (root / "bounding_box_test" / "Thumbs.db").write_text("x")  # not an image: ignored
    s = market1501(root)
    assert s["num_train_ids"] == 2 and s["train_labels"].tolist() == [0, 0, 1]
    assert [(it.pid, it.camid) for it in s["query"]] == [(3, 1), (4, 2)]
    assert sorted(it.pid for it in s["gallery"]) == [-1, 0, 3]
    with pytest.raises(DatasetNotFoundError, match="bounding_box_train"):
        market1501(tmp_path / "empty")


# -------------------------------------------------------------------------------------------- MNIST


def _write_idx(path, array, gz=False):
    codes = {np.uint8: 0x08}
    header = bytes([0, 0, codes[array.dtype.type], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.tobytes()
    (gzip.open if gz else open)(path, "wb").write(data)


def test_mnist_idx_reader_and_the_20_to_1_imbalance(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (200, 28, 28)).astype(np.uint8)
    labels = np.repeat(np.arange(10), 20).astype(np.uint8)
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    _write_idx(raw / "train-images-idx3-ubyte.gz", images, gz=True)
    _write_idx(raw / "train-labels-idx1-ubyte", labels)
    x, y = mnist(tmp_path)
    assert np.array_equal(x, images) and y.tolist() == labels.tolist()
    keep = imbalanced_indices(y, minority=3, ratio=20, seed=0)
    counts = np.bincount(y[keep], minlength=10)
    assert counts[3] == 1 and all(counts[c] == 20 for c in range(10) if c != 3)
    keep5 = imbalanced_indices(y, minority=3, ratio=5, seed=1)
    assert np.bincount(y[keep5], minlength=10)[3] == 4 and set(keep5) >= set(np.flatnonzero(y != 3))
    (tmp_path / "junk").write_bytes(b"\x12\x34\x56\x78")
    with pytest.raises(DatasetFormatError, match="magic"):
        read_idx(tmp_path / "junk")
    _write_idx(tmp_path / "short", images[:2])
    (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-10])
    with pytest.raises(DatasetFormatError, match="truncated"):
        read_idx(tmp_path / "short")
    with pytest.raises(DatasetNotFoundError, match="t10k"):
        mnist(tmp_path, train=False)


# ---------------------------------------------------------------------------------------- synthetic


SYN = {"num_classes": 6, "max_per_class": 10, "imbalance_ratio": 5.0, "profile": "step", "test_per_class": 3,
       "verification_ids": 8, "verification_per_id": 3, "pairs_per_half": 2, "folds": 2, "image_size": 16,
       "data_seed": 0, "identity_seed": 0, "yaw": [-20, 20], "pitch": [-10, 10], "roll": [-10, 10],
       "expression_strength": 1.0, "noise": 0.02}


def test_synthetic_identities_are_long_tailed_deterministic_and_write_lfw_pairs(tmp_path):
    d = synthetic_identities(SYN, tmp_path)
    assert d.counts.tolist() == [10, 10, 10, 2, 2, 2] and d.minority.tolist() == [False] * 3 + [True] * 3
    assert torch.bincount(d.train.labels).tolist() == [10, 10, 10, 2, 2, 2]
    assert torch.bincount(d.test.labels).tolist() == [3] * 6
    img, label = d.train[0]
    assert img.shape == (3, 16, 16) and img.dtype == torch.uint8
    paths, index, same, fold = lfw_pairs(d.verification_root)
    assert len(same) == 8 and same.sum() == 4 and fold.tolist() == [0] * 4 + [1] * 4
    names = {p.parent.name for p in paths}
    assert all(int(n.split("_")[1]) >= 6 for n in names)  # unseen identities only
    again = synthetic_identities(SYN, tmp_path)
    assert torch.equal(again.train.images, d.train.images) and again.verification_root == d.verification_root
    balanced = synthetic_identities({**SYN, "imbalance_ratio": 1.0}, tmp_path)
    # the tail's images are the first ones of the balanced pool: same faces across ratios
    tail = balanced.train.images[balanced.train.labels == 3][:2]
    assert torch.equal(tail, d.train.images[d.train.labels == 3])
