"""Every reader on a tiny fixture written in that dataset's real on-disk layout."""

from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from scipy.io import savemat

from conv_adapter.data import (
    build_datasets,
    cub,
    fewshot,
    nabirds,
    oxford_flowers,
    paper_transform,
    stanford_cars,
    stanford_dogs,
    vtab1k,
)
from shared.data import DatasetNotFoundError


def _img(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(path)


def _pixel(ds, i):  # the fixture images are constant: the value identifies the file
    image, label = ds[i]
    return int(np.asarray(image)[0, 0, 0]), label


def test_vtab1k_split_lists(tmp_path):
    task = tmp_path / "dtd"
    for i in range(3):
        _img(task / "images" / f"banded {i}.jpg", 10 * i)  # a space in the name: the label is the last field
    (task / "train800val200.txt").write_text("images/banded 0.jpg 4\nimages/banded 1.jpg 46\n")
    (task / "test.txt").write_text("images/banded 2.jpg 0\n")
    tr = vtab1k(tmp_path, "dtd", "train800val200")
    assert tr.targets == [4, 46] and tr.num_classes == 47
    assert vtab1k(tmp_path, "dtd", "test").samples == [(str(task / "images/banded 2.jpg"), 0)]
    image, label = tr[1]
    assert image.size == (8, 8) and label == 46
    with pytest.raises(DatasetNotFoundError, match="val200.txt"):
        vtab1k(tmp_path, "dtd", "val200")
    (task / "val200.txt").write_text("images/banded 0.jpg four\n")
    with pytest.raises(ValueError, match=r"val200.txt:1"):
        vtab1k(tmp_path, "dtd", "val200")
    (task / "val200.txt").write_text("images/banded 0.jpg 47\n")
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 47\)"):
        vtab1k(tmp_path, "dtd", "val200")
    with pytest.raises(ValueError, match="unknown VTAB-1k task"):
        vtab1k(tmp_path, "dtdd", "test")


def _cub_layout(root: Path, class_ids: list[int], split: list[int]) -> None:
    lines_img, lines_lab, lines_split = [], [], []
    for i, (c, s) in enumerate(zip(class_ids, split), start=1):
        rel = f"{c:03d}.Bird_{c}/img_{i}.jpg"
        _img(root / "images" / rel, i)
        lines_img.append(f"{i} {rel}")
        lines_lab.append(f"{i} {c}")
        lines_split.append(f"{i} {s}")
    (root / "images.txt").write_text("\n".join(lines_img) + "\n")
    (root / "image_class_labels.txt").write_text("\n".join(lines_lab) + "\n")
    (root / "train_test_split.txt").write_text("\n".join(lines_split) + "\n")


def test_cub_official_split_and_one_based_labels(tmp_path):
    _cub_layout(tmp_path / "CUB_200_2011", [1, 1, 2, 200], [1, 0, 1, 0])
    tr, te = cub(tmp_path, train=True), cub(tmp_path, train=False)
    assert [_pixel(tr, i) for i in range(len(tr))] == [(1, 0), (3, 1)]
    assert [_pixel(te, i) for i in range(len(te))] == [(2, 0), (4, 2)]


def test_nabirds_sparse_class_ids_become_contiguous(tmp_path):
    _cub_layout(tmp_path, [295, 1000, 295, 817], [1, 1, 0, 0])
    tr, te = nabirds(tmp_path, train=True), nabirds(tmp_path, train=False)
    assert tr.num_classes == 3 and tr.targets == [0, 2] and te.targets == [0, 1]
    (tmp_path / "train_test_split.txt").unlink()
    with pytest.raises(DatasetNotFoundError, match="train_test_split.txt"):
        nabirds(tmp_path)


def test_oxford_flowers_mat_files(tmp_path):
    root = tmp_path / "flowers-102"
    for i in range(1, 6):
        _img(root / "jpg" / f"image_{i:05d}.jpg", i)
    savemat(root / "imagelabels.mat", {"labels": np.array([[77, 1, 102, 5, 5]], dtype=np.uint8)})
    savemat(root / "setid.mat", {"trnid": np.array([[2, 4]], dtype=np.uint16), "valid": np.array([[5]], dtype=np.uint16),
                                 "tstid": np.array([[1, 3]], dtype=np.uint16)})
    tr, te = oxford_flowers(tmp_path, "train"), oxford_flowers(tmp_path, "test")
    assert [_pixel(tr, i) for i in range(2)] == [(2, 0), (4, 4)]
    assert [_pixel(te, i) for i in range(2)] == [(1, 76), (3, 101)]
    assert oxford_flowers(tmp_path, "val").targets == [4]


def test_stanford_dogs_mat_lists(tmp_path):
    files = ["n02085620-Chihuahua/n02085620_1.jpg", "n02116738-African_hunting_dog/n02116738_2.jpg"]
    for i, f in enumerate(files):
        _img(tmp_path / "Images" / f, 50 + i)
    savemat(tmp_path / "train_list.mat", {"file_list": np.array([[np.array([f])] for f in files], dtype=object),
                                          "labels": np.array([[1], [120]], dtype=np.uint8)})
    ds = stanford_dogs(tmp_path, train=True)
    assert [_pixel(ds, i) for i in range(2)] == [(50, 0), (51, 119)]
    with pytest.raises(DatasetNotFoundError, match="test_list.mat"):
        stanford_dogs(tmp_path, train=False)


def test_stanford_cars_devkit_layout(tmp_path):
    base = tmp_path / "stanford_cars"
    ann_dtype = [("bbox_x1", "O"), ("bbox_y1", "O"), ("bbox_x2", "O"), ("bbox_y2", "O"), ("class", "O"), ("fname", "O")]
    annos = np.array([(1, 1, 7, 7, 196, "00001.jpg"), (1, 1, 7, 7, 1, "00002.jpg")], dtype=ann_dtype)
    for i in (1, 2):
        _img(base / "cars_test" / f"{i:05d}.jpg", 30 + i)
    (base / "devkit").mkdir(parents=True)
    savemat(base / "cars_test_annos_withlabels.mat", {"annotations": annos[None]})
    savemat(base / "devkit" / "cars_meta.mat", {"class_names": np.array([[f"car {i}" for i in range(196)]], dtype=object)})
    ds = stanford_cars(tmp_path, train=False)
    assert ds.num_classes == 196 and [_pixel(ds, i) for i in range(2)] == [(31, 195), (32, 0)]
    with pytest.raises(DatasetNotFoundError, match="Stanford Cars"):
        stanford_cars(tmp_path, train=True)  # cars_train/ and its annotations are absent


def _fewshot_layout(root: Path, dataset: str, shots: int, seed: int, num_classes: int) -> None:
    folder = root / dataset
    base = folder if dataset == "stanford_cars" else folder / "data" / "images"
    lines = []
    for c in range(num_classes):
        for j in range(shots):
            rel = f"c{c}/{seed}_{j}.jpg"
            _img(base / rel, c)
            lines.append(f"{rel} {c}")
    (folder / "annotations").mkdir(parents=True, exist_ok=True)
    (folder / "annotations" / f"train_meta.list.num_shot_{shots}.seed_{seed}").write_text("\n".join(lines) + "\n")
    (folder / "annotations" / "test_meta.list").write_text(f"c0/{seed}_0.jpg 0\n")


@pytest.mark.parametrize("dataset", ["oxford_pets", "stanford_cars"])
def test_fewshot_lists_have_exactly_k_per_class(tmp_path, dataset):
    for shots in (1, 2):
        _fewshot_layout(tmp_path, dataset, shots, seed=1, num_classes=37 if dataset == "oxford_pets" else 196)
    ds = fewshot(tmp_path, dataset, "train", shots=2, seed=1)
    assert np.bincount(ds.targets).tolist() == [2] * ds.num_classes
    assert [s for s, _ in ds.samples] == [s for s, _ in fewshot(tmp_path, dataset, "train", shots=2, seed=1).samples]
    assert _pixel(ds, 2) == (1, 1)  # images resolve under data/images/ (Stanford Cars: under the dataset folder)
    assert fewshot(tmp_path, dataset, "test").targets == [0]
    with pytest.raises(DatasetNotFoundError, match="num_shot_4.seed_1"):
        fewshot(tmp_path, dataset, "train", shots=4, seed=1)
    path = tmp_path / dataset / "annotations" / "train_meta.list.num_shot_2.seed_1"
    path.write_text("\n".join(path.read_text().splitlines()[1:]) + "\n")  # class 0 now has only 1 image
    with pytest.raises(ValueError, match="exactly 2 images per class"):
        fewshot(tmp_path, dataset, "train", shots=2, seed=1)


def test_paper_transforms_follow_the_official_exceptions():
    names = lambda t: [type(x).__name__ for x in t.transforms]  # noqa: E731
    assert names(paper_transform(True, 224, "cifar100"))[:2] == ["RandomResizedCrop", "RandomHorizontalFlip"]
    assert "RandomHorizontalFlip" not in names(paper_transform(True, 224, "dsprites_ori"))
    assert names(paper_transform(True, 224, "kitti"))[:2] == ["Resize", "RandomCrop"]
    assert names(paper_transform(False, 224))[:2] == ["Resize", "CenterCrop"]
    out = paper_transform(False, 224)(Image.new("RGB", (300, 200)))
    assert out.shape == (3, 224, 224)


def test_synthetic_transfer_task_and_k_shot_subset():
    cfg = OmegaConf.create({"name": "synthetic", "domain": "shapes-b", "num_classes": 4, "n_train": 40, "n_test": 12,
                            "image_size": 16, "data_seed": 0, "shots": 3})
    train, test, c = build_datasets(cfg, seed=5)
    labels = torch.tensor([train[i][1] for i in range(len(train))])
    assert c == 4 and len(test) == 12 and torch.bincount(labels).tolist() == [3, 3, 3, 3]
    again, _, _ = build_datasets(cfg, seed=5)
    other, _, _ = build_datasets(cfg, seed=6)
    assert again.indices == train.indices and other.indices != train.indices
    x, _ = test[0]
    assert x.shape == (3, 16, 16) and 0 <= x.min() and x.max() <= 1
