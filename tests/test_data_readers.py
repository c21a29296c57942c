"""Tests of the real-dataset readers on tiny fixtures written in the publishers' exact formats."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image
from torchvision.datasets import CIFAR10, CIFAR100, SVHN, ImageFolder

from shared.data import DatasetNotFoundError, cifar, data_root, image_folder, svhn

# ----------------------------------------------------------------------------- root


def test_data_root_env(monkeypatch, tmp_path):
    monkeypatch.delenv("REPRO_DATA", raising=False)
    assert data_root() == Path("data") and data_root("cifar10") == Path("data/cifar10")
    monkeypatch.setenv("REPRO_DATA", str(tmp_path))
    assert data_root("svhn", "x") == tmp_path / "svhn" / "x"
    monkeypatch.setenv("REPRO_DATA", "")
    assert data_root() == Path("data")


def test_dataset_not_found_error_message_and_pickle():
    err = DatasetNotFoundError("Thing", "files a, b", "/some/where", "download it from http://x.")
    assert isinstance(err, FileNotFoundError)
    for part in ("Thing", "files a, b", "/some/where", "http://x", "REPRO_DATA"):
        assert part in str(err)
    assert str(pickle.loads(pickle.dumps(err))) == str(err)


# ----------------------------------------------------------------------------- image folder


def write_image_folder(root: Path) -> None:
    for cls, colour in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
        (root / cls).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (8, 6), colour).save(root / cls / f"{i}.png")
    (root / "dog" / "notes.txt").write_text("not an image")


def test_image_folder_reads_layout(tmp_path):
    write_image_folder(tmp_path)
    ds = image_folder(tmp_path, transform=lambda im: torch.tensor(np.asarray(im)))
    assert isinstance(ds, ImageFolder)
    assert ds.classes == ["cat", "dog"] and len(ds) == 4
    x, y = ds[3]
    assert y == 1 and x.shape == (6, 8, 3) and x[0, 0].tolist() == [0, 0, 255]


def test_image_folder_missing_root(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="does not exist") as info:
        image_folder(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(info.value) and "<class>/<img>.jpg" in str(info.value)


def test_image_folder_without_class_dirs(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "loose.jpg")
    with pytest.raises(DatasetNotFoundError, match="no class sub-directories") as info:
        image_folder(tmp_path)
    assert f"{tmp_path}/<class>/<img>.jpg" in str(info.value)


def test_image_folder_class_without_images(tmp_path):
    write_image_folder(tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(DatasetNotFoundError, match="no image files: empty"):
        image_folder(tmp_path)


# ----------------------------------------------------------------------------- CIFAR


def cifar_images(n: int, offset: int) -> np.ndarray:
    """Distinct deterministic images (N, 32, 32, 3) uint8."""
    rng = np.random.default_rng(offset)
    return rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)


def to_rows(images: np.ndarray) -> np.ndarray:
    """CIFAR row format: (N, 3072) = 1024 red, 1024 green, 1024 blue, each row-major."""
    return images.transpose(0, 3, 1, 2).reshape(len(images), -1)


def dump(path: Path, obj: dict, bytes_keys: bool) -> None:
    if bytes_keys:  # as the python-3 view of the official files (pickle.load(..., encoding="bytes"))
        obj = {k.encode(): ([v.encode() for v in val] if k.endswith("names") else val) for k, val in obj.items()}
    with path.open("wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_cifar10(root: Path, per_batch: int = 3, bytes_keys: bool = True) -> dict[str, np.ndarray]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    written = {}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        images = cifar_images(per_batch, i)
        labels = [(i + j) % 10 for j in range(per_batch)]
        dump(folder / name, {"batch_label": f"batch {i}", "labels": labels, "data": to_rows(images),
                             "filenames": [f"{name}_{j}.png" for j in range(per_batch)]}, bytes_keys)
        written[name] = images
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    dump(folder / "batches.meta", {"num_cases_per_batch": per_batch, "label_names": names, "num_vis": 3072},
         bytes_keys)
    return written


def write_cifar100(root: Path, n: int = 4) -> dict[str, np.ndarray]:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    written = {}
    for i, name in enumerate(["train", "test"]):
        images = cifar_images(n, 10 + i)
        dump(folder / name, {"filenames": [f"{j}.png" for j in range(n)], "batch_label": name,
                             "fine_labels": [99 - j - i for j in range(n)], "coarse_labels": [j for j in range(n)],
                             "data": to_rows(images)}, bytes_keys=True)
        written[name] = images
    dump(folder / "meta", {"fine_label_names": [f"fine{k}" for k in range(100)],
                           "coarse_label_names": [f"coarse{k}" for k in range(20)]}, bytes_keys=True)
    return written


@pytest.mark.parametrize("bytes_keys", [True, False])
def test_cifar10_reads_official_layout(tmp_path, bytes_keys):
    written = write_cifar10(tmp_path, bytes_keys=bytes_keys)
    train = cifar(tmp_path, "cifar10", train=True)
    test = cifar(tmp_path, "cifar10", train=False, transform=np.asarray)
    assert isinstance(train, CIFAR10) and len(train) == 15 and len(test) == 3
    assert train.classes[0] == "airplane" and train.class_to_idx["truck"] == 9
    expected = np.concatenate([written[f"data_batch_{k}"] for k in range(1, 6)])
    assert np.array_equal(train.data, expected)  # channel order and pixel layout preserved
    assert train.targets[:3] == [0, 1, 2] and train.targets[-3:] == [4, 5, 6]
    image, label = test[1]
    assert np.array_equal(image, written["test_batch"][1]) and label == 6
    assert isinstance(train[0][0], Image.Image)


def test_cifar100_reads_fine_labels(tmp_path):
    written = write_cifar100(tmp_path)
    train = cifar(tmp_path, "cifar100")
    test = cifar(tmp_path, "cifar100", train=False)
    assert isinstance(train, CIFAR100) and len(train.classes) == 100 and train.classes[99] == "fine99"
    assert train.targets == [99, 98, 97, 96] and test.targets == [98, 97, 96, 95]
    assert np.array_equal(np.asarray(test[2][0]), written["test"][2])


def test_cifar_missing_root_says_what_where_and_how(tmp_path):
    root = tmp_path / "absent"
    with pytest.raises(DatasetNotFoundError) as info:
        cifar(root, "cifar10")
    msg = str(info.value)
    assert str(root / "cifar-10-batches-py") in msg
    assert "data_batch_1" in msg and "batches.meta" in msg
    assert "cifar-10-python.tar.gz" in msg and "https://www.cs.toronto.edu/~kriz/cifar.html" in msg
    with pytest.raises(DatasetNotFoundError, match="cifar-100-python.tar.gz"):
        cifar(root, "cifar100")


def test_cifar_missing_file_is_listed_and_only_the_split_is_needed(tmp_path):
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DatasetNotFoundError, match=r"missing: data_batch_3\)"):
        cifar(tmp_path, "cifar10", train=True)
    assert len(cifar(tmp_path, "cifar10", train=False)) == 3  # test split is complete


def test_cifar_corrupt_pickle_names_the_file(tmp_path):
    write_cifar10(tmp_path)
    bad = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    bad.write_bytes(b"this is not a pickle")
    with pytest.raises(ValueError, match="not a valid pickle") as info:
        cifar(tmp_path, "cifar10")
    assert str(bad) in str(info.value)


def test_cifar_malformed_content_names_the_file(tmp_path):
    write_cifar10(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    dump(folder / "test_batch", {"labels": [1, 2]}, bytes_keys=True)  # no 'data'
    with pytest.raises(ValueError, match="missing key") as info:
        cifar(tmp_path, "cifar10", train=False)
    assert str(folder / "test_batch") in str(info.value)
    dump(folder / "test_batch", {"labels": [1], "data": np.zeros((1, 100), np.uint8)}, bytes_keys=True)
    with pytest.raises(ValueError, match=r"\(N, 3072\)"):
        cifar(tmp_path, "cifar10", train=False)
    dump(folder / "test_batch", {"labels": [1, 2], "data": np.zeros((1, 3072), np.uint8)}, bytes_keys=True)
    with pytest.raises(ValueError, match="1 images but 2 labels"):
        cifar(tmp_path, "cifar10", train=False)


def test_cifar_checksums_only_on_request(tmp_path):
    write_cifar10(tmp_path)
    assert len(cifar(tmp_path, "cifar10", train=False)) == 3  # fixture md5 differs: not checked by default
    with pytest.raises(ValueError, match="Checksum mismatch") as info:
        cifar(tmp_path, "cifar10", train=False, verify_checksums=True)
    assert "test_batch" in str(info.value) and "40351d587109b95175f43aff81a1287e" in str(info.value)


def test_cifar_unknown_name(tmp_path):
    with pytest.raises(ValueError, match="cifar10"):
        cifar(tmp_path, "cifar1000")


# ----------------------------------------------------------------------------- SVHN


def write_svhn(root: Path, split: str = "train", n: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Format-2 .mat file: X (32, 32, 3, N) uint8, y (N, 1) with 10 meaning digit 0."""
    root.mkdir(parents=True, exist_ok=True)
    images = np.random.default_rng(1).integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    digits = np.arange(n) % 10
    y = np.where(digits == 0, 10, digits).astype(np.uint8).reshape(n, 1)
    scipy.io.savemat(root / f"{split}_32x32.mat", {"X": images.transpose(1, 2, 3, 0), "y": y})
    return images, digits


@pytest.mark.parametrize("split", ["train", "test", "extra"])
def test_svhn_reads_mat_and_maps_10_to_0(tmp_path, split):
    images, digits = write_svhn(tmp_path, split)
    ds = svhn(tmp_path, split, transform=np.asarray)
    assert isinstance(ds, SVHN) and len(ds) == 5
    assert ds.labels.tolist() == digits.tolist() and ds.labels[0] == 0
    for i in range(5):
        image, label = ds[i]
        assert np.array_equal(image, images[i]) and label == digits[i]


def test_svhn_missing_root_and_file(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        svhn(tmp_path / "absent", "test")
    msg = str(info.value)
    assert "test_32x32.mat" in msg and str(tmp_path / "absent") in msg
    assert "http://ufldl.stanford.edu/housenumbers/test_32x32.mat" in msg
    write_svhn(tmp_path, "train")
    with pytest.raises(DatasetNotFoundError, match="extra_32x32.mat"):
        svhn(tmp_path, "extra")


def test_svhn_malformed_files_name_the_file(tmp_path):
    path = tmp_path / "train_32x32.mat"
    path.write_bytes(b"garbage" * 20)
    with pytest.raises(ValueError, match="not a valid MATLAB") as info:
        svhn(tmp_path, "train")
    assert str(path) in str(info.value)
    scipy.io.savemat(path, {"images": np.zeros((32, 32, 3, 1), np.uint8)})
    with pytest.raises(ValueError, match=r"missing variable\(s\) \['X', 'y'\]"):
        svhn(tmp_path, "train")
    scipy.io.savemat(path, {"X": np.zeros((3, 32, 32, 1), np.uint8), "y": np.ones((1, 1))})
    with pytest.raises(ValueError, match=r"\(32, 32, 3, N\)"):
        svhn(tmp_path, "train")


def test_svhn_checksum_and_split_validation(tmp_path):
    write_svhn(tmp_path, "train")
    with pytest.raises(ValueError, match="Checksum mismatch.*e26dedcc434d2e4c54c9b2d4a06d8373"):
        svhn(tmp_path, "train", verify_checksums=True)
    with pytest.raises(ValueError, match="Unknown SVHN split"):
        svhn(tmp_path, "validation")
