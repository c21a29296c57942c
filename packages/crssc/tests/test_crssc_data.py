"""The synthetic web-noise task, and every reader on a tiny fixture written in that dataset's real layout."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

from crssc.data import (
    OPEN_SET,
    align_classes,
    cub200,
    fgvc_aircraft,
    stanford_cars,
    synthetic_web_noise,
    webfg_folder,
)
from shared.data import DatasetNotFoundError


def test_synthetic_web_noise_has_exact_close_set_noise_open_set_tags_and_a_clean_test_set():
    d = synthetic_web_noise(num_classes=5, open_classes=2, n_train=140, n_val=70, n_test=50, image_size=8,
                            close_noise=0.4, seed=3)
    train, val = d.train, d.val
    assert len(train) == 140 and len(val) == 70 and len(d.test) == 50 and d.num_classes == 5
    labels = np.concatenate([train.labels, val.labels])
    truth = np.concatenate([train.truth, val.truth])
    inset = truth != OPEN_SET
    assert (labels >= 0).all() and (labels < 5).all()  # open-set images carry in-set labels ...
    assert len(set(labels[~inset].tolist())) >= 4  # ... drawn at random, not one fixed class
    assert ((labels[inset] != truth[inset]).sum()) == round(0.4 * inset.sum())  # exact close-set noise rate
    assert 0.15 < (~inset).mean() < 0.45  # about 2 / 7 of the images are open-set
    assert set(d.test.labels.tolist()) == set(range(5))
    x, y, i = train[7]
    assert x.shape == (3, 8, 8) and y == train.labels[7] and i == 7
    assert d.info["noise_share"] == pytest.approx(1 - (train.labels == train.truth).mean())
    again = synthetic_web_noise(num_classes=5, open_classes=2, n_train=140, n_val=70, n_test=50, image_size=8,
                                close_noise=0.4, seed=3)
    assert np.array_equal(again.train.labels, train.labels) and (again.train.base.images == train.base.images).all()
    other = synthetic_web_noise(num_classes=5, open_classes=2, n_train=140, n_val=70, n_test=50, image_size=8,
                                close_noise=0.4, seed=4)
    assert not np.array_equal(other.train.labels, train.labels)


def _img(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((6, 6, 3), value, np.uint8)).save(path)


def _pixel(ds, i):
    image, label = ds[i]
    return int(np.asarray(image)[0, 0, 0]), label


def _write_cub(root: Path, class_ids, split) -> None:
    base = root / "CUB_200_2011"
    lines_img, lines_lab, lines_split = [], [], []
    for i, (c, s) in enumerate(zip(class_ids, split), start=1):
        rel = f"{c:03d}.Bird_{c}/img_{i}.jpg"
        _img(base / "images" / rel, 10 * i)
        lines_img.append(f"{i} {rel}")
        lines_lab.append(f"{i} {c}")
        lines_split.append(f"{i} {s}")
    (base / "images.txt").write_text("\n".join(lines_img) + "\n")
    (base / "image_class_labels.txt").write_text("\n".join(lines_lab) + "\n")
    (base / "train_test_split.txt").write_text("\n".join(lines_split) + "\n")
    (base / "classes.txt").write_text("".join(f"{c} {c:03d}.Bird_{c}\n" for c in range(1, 4)))


def test_cub_reader_uses_the_official_split_and_one_based_class_ids(tmp_path):
    _write_cub(tmp_path, [1, 1, 2, 3], [1, 0, 1, 0])
    train, test = cub200(tmp_path, train=True), cub200(tmp_path, train=False)
    assert [_pixel(train, i) for i in range(len(train))] == [(10, 0), (30, 1)]
    assert [_pixel(test, i) for i in range(len(test))] == [(20, 0), (40, 2)]
    assert test.classes == ["001.Bird_1", "002.Bird_2", "003.Bird_3"]
    (tmp_path / "CUB_200_2011" / "image_class_labels.txt").write_text("1 1\n2 1\n3 2\n4 9\n")
    with pytest.raises(ValueError, match="class 9"):
        cub200(tmp_path, train=False)
    (tmp_path / "CUB_200_2011" / "images.txt").unlink()
    with pytest.raises(DatasetNotFoundError, match="images.txt"):
        cub200(tmp_path)


def test_stanford_cars_reader_reads_the_devkit_mat_annotations(tmp_path):
    root = tmp_path / "stanford_cars"
    (root / "devkit").mkdir(parents=True)
    savemat(root / "devkit" / "cars_meta.mat",
            {"class_names": np.array([["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Audi R8 Coupe 2012"]],
                                     dtype=object)})
    def annos(fnames, classes):
        rec = np.zeros((1, len(fnames)), dtype=[("bbox_x1", "O"), ("bbox_y1", "O"), ("bbox_x2", "O"),
                                                ("bbox_y2", "O"), ("class", "O"), ("fname", "O")])
        for k, (f, c) in enumerate(zip(fnames, classes)):
            rec[0, k] = (1, 1, 5, 5, c, f)
        return {"annotations": rec}
    savemat(root / "devkit" / "cars_train_annos.mat", annos(["00001.jpg", "00002.jpg"], [3, 1]))
    savemat(root / "cars_test_annos_withlabels.mat", annos(["00001.jpg"], [2]))
    for split, n in (("cars_train", 2), ("cars_test", 1)):
        for k in range(1, n + 1):
            _img(root / split / f"{k:05d}.jpg", 50 * k + (0 if split == "cars_train" else 7))
    train, test = stanford_cars(tmp_path, train=True), stanford_cars(tmp_path, train=False)
    assert [_pixel(train, i) for i in range(2)] == [(50, 2), (100, 0)]
    assert [_pixel(test, 0)] == [(57, 1)] and test.classes[0] == "AM General Hummer SUV 2000"
    savemat(root / "cars_test_annos_withlabels.mat", annos(["00001.jpg"], [4]))
    with pytest.raises(ValueError, match="class 4"):
        stanford_cars(tmp_path, train=False)
    (root / "cars_test_annos_withlabels.mat").write_text("not a mat file")
    with pytest.raises(ValueError, match="not a valid MATLAB"):
        stanford_cars(tmp_path, train=False)
    with pytest.raises(DatasetNotFoundError, match="cars_meta.mat"):
        stanford_cars(tmp_path / "nowhere", train=True)


def test_fgvc_aircraft_reader_handles_variant_names_with_spaces_and_slashes(tmp_path):
    data = tmp_path / "fgvc-aircraft-2013b" / "data"
    data.mkdir(parents=True)
    (data / "variants.txt").write_text("707-320\nF-16A/B\nFalcon 2000\n")
    (data / "images_variant_test.txt").write_text("0056978 F-16A/B\n0001234 Falcon 2000\n")
    (data / "images_variant_trainval.txt").write_text("0000007 707-320\n")
    for name, v in (("0056978", 1), ("0001234", 2), ("0000007", 3)):
        _img(data / "images" / f"{name}.jpg", 20 * v)
    test = fgvc_aircraft(tmp_path, "test")
    assert [_pixel(test, i) for i in range(2)] == [(20, 1), (40, 2)] and test.classes[1] == "F-16A/B"
    assert [_pixel(fgvc_aircraft(tmp_path, "trainval"), 0)] == [(60, 0)]
    (data / "images_variant_val.txt").write_text("0000007 747-400\n")
    with pytest.raises(ValueError, match="747-400"):
        fgvc_aircraft(tmp_path, "val")
    with pytest.raises(DatasetNotFoundError, match="images_variant_train.txt"):
        fgvc_aircraft(tmp_path, "train")
    with pytest.raises(ValueError, match="unknown FGVC-Aircraft split"):
        fgvc_aircraft(tmp_path, "all")


def test_webfg_folder_and_class_alignment(tmp_path):
    for c, name in enumerate(["002.Bird_2", "001.Bird_1", "003.Bird_3"]):
        _img(tmp_path / "web-bird" / "train" / name / f"w{c}.jpg", 30 + c)
    web = webfg_folder(tmp_path / "web-bird", "train")
    assert web.classes == ["001.Bird_1", "002.Bird_2", "003.Bird_3"]  # sorted folder order
    assert _pixel(web, 0) == (31, 0)
    # CUB-style names match even without the numeric prefix and with other separators
    mapping = align_classes(web.classes, ["Bird 2", "003.bird_3", "001.Bird-1"])
    assert mapping.tolist() == [1, 2, 0]
    assert align_classes(web.classes, ["x", "y", "z"], "order").tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="class_match=order"):
        align_classes(web.classes, ["Bird 2", "Bird 9", "Bird 1"])
    with pytest.raises(DatasetNotFoundError):
        webfg_folder(tmp_path / "web-car", "train")
