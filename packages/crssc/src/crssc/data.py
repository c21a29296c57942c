"""Data: the synthetic web-like noisy task of the embedded default, and readers for the paper's datasets.

Synthetic (never a real dataset's name)
    ``shared.data.generate`` images of ``C + K`` classes. Classes ``C .. C+K-1`` are *open-set*: their images get a
    label drawn uniformly from the ``C`` in-set classes (irrelevant web images with an in-set tag). Among the in-set
    images, exactly ``close_noise`` of them get a symmetric close-set error (``shared.data.inject_label_noise``).
    A held-out noisy validation split (same noise) is for model selection; the test set is clean and in-set only.
    The in-set classes are the same for any ``K`` (the generator's class order is a fixed prefix).

Paper datasets (nothing is downloaded; ``${REPRO_DATA:-data}``)::

    WebFG-496 (web-bird, web-car, web-aircraft)   <root>/train/<class>/<image>        (ImageFolder; web images)
                                                  <root>/val/<class>/<image>          (the released test folder)
    CUB-200-2011                                  <root>/CUB_200_2011/{images.txt, image_class_labels.txt,
                                                  train_test_split.txt, classes.txt, images/<class>/<img>.jpg}
    Stanford Cars                                 <root>/devkit/{cars_meta.mat, cars_train_annos.mat,
                                                  cars_test_annos_withlabels.mat}, <root>/cars_{train,test}/
    FGVC-Aircraft (2013b)                         <root>/fgvc-aircraft-2013b/data/{variants.txt,
                                                  images_variant_{train,val,trainval,test}.txt, images/<id>.jpg}

Every reader returns a :class:`ListDataset` (``samples``, ``targets``, ``classes``) and raises
``shared.errors.DatasetNotFoundError`` when a file is missing and ``DatasetFormatError`` naming the file (and line)
when one is malformed. Training sets are wrapped in :class:`Indexed`, which yields ``(image, label, index)`` (the index keys the
prediction history).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from shared.data import generate, inject_label_noise, train_val_test_split
from shared.data.readers import check_files_exist, load_image
from shared.errors import ConfigError, DatasetFormatError, DatasetNotFoundError

__all__ = [
    "DataBundle",
    "Indexed",
    "ListDataset",
    "TensorImages",
    "align_classes",
    "build_data",
    "cub200",
    "fgvc_aircraft",
    "paper_transform",
    "stanford_cars",
    "synthetic_web_noise",
    "webfg_folder",
]

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
OPEN_SET = -1  # true label of an open-set (out-of-distribution) training image
UNKNOWN = -2  # true label not known (real web data)


class Indexed(Dataset):
    """``(x, label, index)`` for the prediction history. ``labels`` are the (noisy) training labels; ``truth``
    the true labels where known (``-1`` open-set, ``-2`` unknown)."""

    def __init__(self, base: Dataset, labels: np.ndarray, truth: np.ndarray | None = None):
        self.base = base
        self.labels = np.asarray(labels, dtype=np.int64)
        self.truth = np.full(len(self.labels), UNKNOWN, np.int64) if truth is None else np.asarray(truth, np.int64)
        if len(self.labels) != len(base) or len(self.truth) != len(base):
            raise ValueError(f"Indexed: {len(base)} samples but {len(self.labels)} labels / {len(self.truth)} truths.")

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        x = self.base[i][0]
        return x, int(self.labels[i]), i


class TensorImages(Dataset):
    """Images kept in memory as one normalised float tensor ``(N, 3, H, W)``; items ``(image, label)``."""

    def __init__(self, images: torch.Tensor, labels: np.ndarray):
        self.images, self.labels = images, np.asarray(labels, np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.images[i], int(self.labels[i])


class ListDataset(Dataset):
    """``(image, label)`` from a list of ``(path, label)``; images are opened lazily as RGB."""

    def __init__(self, samples: list[tuple[str, int]], classes: list[str], transform: Callable | None = None):
        self.samples, self.classes, self.transform = samples, list(classes), transform
        self.targets = [y for _, y in samples]
        if self.targets and not 0 <= min(self.targets) <= max(self.targets) < len(self.classes):
            raise ValueError(f"labels must lie in [0, {len(self.classes)}), got [{min(self.targets)}, {max(self.targets)}].")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, label = self.samples[i]
        image = load_image(path)  # an unreadable file is a DatasetFormatError naming it
        return (self.transform(image) if self.transform else image), label


# ------------------------------------------------------------------------------ synthetic web noise


@dataclass
class DataBundle:
    train: Indexed
    val: Indexed | None
    test: Dataset
    num_classes: int
    info: dict[str, Any] = field(default_factory=dict)


def _to_tensor(images: np.ndarray, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255)
    return (x - mean) / std


def synthetic_web_noise(num_classes: int = 10, open_classes: int = 2, n_train: int = 3000, n_val: int = 500,
                        n_test: int = 2000, image_size: int = 16, domain: str = "shapes-a", close_noise: float = 0.4,
                        seed: int = 0) -> DataBundle:
    """The synthetic web-noise task (see the module docstring). ``n_train`` / ``n_val`` count all images, open-set
    ones included (an open-set share of about ``K / (C + K)``); ``close_noise`` is the exact symmetric error rate
    among the in-set images of the train+val pool."""
    if num_classes < 2 or open_classes < 0:
        raise ConfigError(f"need num_classes >= 2 and open_classes >= 0, got {num_classes}, {open_classes}; "
                          "set data.num_classes / data.open_classes")
    pool = n_train + n_val
    images, true = generate(pool, num_classes + open_classes, image_size, domain, seed)
    rng = np.random.default_rng([seed, 0x0BE7])
    labels = true.copy()
    inset = true < num_classes
    labels[~inset] = rng.integers(0, num_classes, int((~inset).sum()))  # open-set images carry an in-set tag
    labels[inset], _ = inject_label_noise(true[inset], close_noise, num_classes, "symmetric", seed=seed)
    truth = np.where(inset, true, OPEN_SET)
    tr, va, _ = train_val_test_split(pool, (n_train / pool, n_val / pool, 0.0), seed=seed)
    test_images, test_labels = generate(n_test, num_classes, image_size, domain, seed + 1_000_003)
    x = torch.from_numpy(images[tr]).permute(0, 3, 1, 2).float().div_(255)
    mean, std = x.mean(dim=(0, 2, 3), keepdim=True), x.std(dim=(0, 2, 3), keepdim=True)
    train = Indexed(TensorImages((x - mean) / std, labels[tr]), labels[tr], truth[tr])
    val = Indexed(TensorImages(_to_tensor(images[va], mean, std), labels[va]), labels[va], truth[va]) if n_val else None
    test = TensorImages(_to_tensor(test_images, mean, std), test_labels)
    info = {
        "open_share": float((truth[tr] == OPEN_SET).mean()),
        "close_noise_share": float(((truth[tr] >= 0) & (labels[tr] != truth[tr])).mean()),
        "clean_share": float((labels[tr] == truth[tr]).mean()),
    }
    info["noise_share"] = 1.0 - info["clean_share"]
    return DataBundle(train, val, test, num_classes, info)


# ------------------------------------------------------------------------------ readers


def _require(files: list[Path], dataset: str, root: Path, how: str) -> None:
    missing = [str(f) for f in files if not f.exists()]
    if missing:
        raise DatasetNotFoundError(dataset, ", ".join(missing), root, how)


def _table(path: Path, fields: int) -> list[list[str]]:
    """Whitespace-separated rows of ``fields`` columns (the last one may contain spaces)."""
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.strip().split(maxsplit=fields - 1)
        if len(parts) != fields:
            raise DatasetFormatError(f"{path}:{n}: expected {fields} fields, got {line!r}; fix or re-extract the file")
        rows.append(parts)
    return rows


def webfg_folder(root: str | os.PathLike, split: str = "train", transform: Callable | None = None) -> ListDataset:
    """A WebFG-496 split (``<root>/<split>/<class>/<image>``, torchvision ImageFolder order of the class folders)."""
    from shared.data import image_folder

    folder = image_folder(Path(root) / split)
    return ListDataset([(p, y) for p, y in folder.samples], folder.classes, transform)


CUB_HOW = "download CUB_200_2011.tgz from https://www.vision.caltech.edu/datasets/cub_200_2011/ and extract it there"


def cub200(root: str | os.PathLike, train: bool = True, transform: Callable | None = None) -> ListDataset:
    """CUB-200-2011 with the official split (``train_test_split.txt``: 1 = train); class ids 1..200 -> 0..199,
    names from ``classes.txt`` (e.g. ``001.Black_footed_Albatross``)."""
    root = Path(root)
    base = root / "CUB_200_2011" if (root / "CUB_200_2011").is_dir() else root
    files = [base / f for f in ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt")]
    _require(files, "CUB-200-2011", base, CUB_HOW)
    images = {i: p for i, p in _table(files[0], 2)}
    labels = {i: c for i, c in _table(files[1], 2)}
    split = {i: s for i, s in _table(files[2], 2)}
    names = {int(i): n for i, n in _table(files[3], 2)}
    ids = sorted(names)
    if ids != list(range(1, len(ids) + 1)):
        raise DatasetFormatError(f"{files[3]}: class ids must be 1..N, got {ids[:5]}; re-extract CUB_200_2011.tgz")
    if set(images) != set(labels) or set(images) != set(split):
        raise DatasetFormatError(f"{base}: images.txt, image_class_labels.txt and train_test_split.txt list different "
                                 "image ids; re-extract CUB_200_2011.tgz")
    want = "1" if train else "0"
    samples = []
    for i in sorted(images, key=int):
        if split[i] not in ("0", "1"):
            raise DatasetFormatError(f"{files[2]}: image {i} has split {split[i]!r}; expected 0 or 1")
        c = int(labels[i])
        if not 1 <= c <= len(ids):
            raise DatasetFormatError(f"{files[1]}: image {i} has class {c}; expected 1..{len(ids)}")
        if split[i] == want:
            samples.append((str(base / "images" / images[i]), c - 1))
    check_files_exist([p for p, _ in samples], files[0], "CUB-200-2011", CUB_HOW)
    return ListDataset(samples, [names[i] for i in ids], transform)


CARS_HOW = ("get the Stanford Cars images (cars_train/, cars_test/) and the devkit (car_devkit.tgz) plus "
            "cars_test_annos_withlabels.mat from the dataset page")


def _mat_records(path: Path, key: str, fields: tuple[str, ...]) -> list[dict[str, Any]]:
    import scipy.io

    try:
        mat = scipy.io.loadmat(str(path), squeeze_me=True, struct_as_record=False)
    except Exception as err:  # scipy raises several types on garbage
        raise DatasetFormatError(f"could not read {path}: not a valid MATLAB .mat file ({type(err).__name__}); "
                                 "re-download the Stanford Cars devkit") from err
    if key not in mat:
        raise DatasetFormatError(f"{path}: no variable {key!r} (found {sorted(k for k in mat if not k.startswith('__'))}); "
                                 "re-download the Stanford Cars devkit")
    records = np.atleast_1d(mat[key])
    out = []
    for n, rec in enumerate(records):
        missing = [f for f in fields if not hasattr(rec, f)]
        if missing:
            raise DatasetFormatError(f"{path}: record {n} of {key!r} lacks field(s) {missing}; re-download the devkit")
        out.append({f: getattr(rec, f) for f in fields})
    return out


def stanford_cars(root: str | os.PathLike, train: bool = True, transform: Callable | None = None) -> ListDataset:
    """Stanford Cars from the devkit ``.mat`` annotations: ``devkit/cars_meta.mat`` (``class_names``),
    ``devkit/cars_train_annos.mat`` / ``cars_test_annos_withlabels.mat`` (``annotations`` with ``fname`` and the
    1-based ``class``), images in ``cars_train/`` / ``cars_test/``. 196 classes -> 0..195."""
    import scipy.io

    root = Path(root)
    base = root / "stanford_cars" if (root / "stanford_cars").is_dir() else root
    meta = base / "devkit" / "cars_meta.mat"
    if train:
        annos, images = base / "devkit" / "cars_train_annos.mat", base / "cars_train"
    else:
        annos = base / "cars_test_annos_withlabels.mat"
        if not annos.is_file() and (base / "devkit" / annos.name).is_file():
            annos = base / "devkit" / annos.name
        images = base / "cars_test"
    _require([meta, annos, images], "Stanford Cars", base, CARS_HOW)
    try:
        names = [str(n) for n in np.atleast_1d(scipy.io.loadmat(str(meta), squeeze_me=True)["class_names"])]
    except KeyError as err:
        raise DatasetFormatError(f"{meta}: no variable 'class_names'; re-download the Stanford Cars devkit") from err
    except Exception as err:
        raise DatasetFormatError(f"could not read {meta}: not a valid MATLAB .mat file ({type(err).__name__}); "
                                 "re-download the Stanford Cars devkit") from err
    samples = []
    for n, rec in enumerate(_mat_records(annos, "annotations", ("fname", "class"))):
        c = int(rec["class"])
        if not 1 <= c <= len(names):
            raise DatasetFormatError(f"{annos}: annotation {n} ({rec['fname']}) has class {c}; expected 1..{len(names)}")
        samples.append((str(images / str(rec["fname"])), c - 1))
    check_files_exist([p for p, _ in samples], annos, "Stanford Cars", CARS_HOW)
    return ListDataset(samples, names, transform)


AIRCRAFT_HOW = "download fgvc-aircraft-2013b.tar.gz from https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/ and extract it"
AIRCRAFT_SPLITS = ("train", "val", "trainval", "test")


def fgvc_aircraft(root: str | os.PathLike, split: str = "test", transform: Callable | None = None) -> ListDataset:
    """FGVC-Aircraft 2013b at the variant level (100 classes in the order of ``variants.txt``); lines of
    ``images_variant_<split>.txt`` are ``<image id> <variant name>`` (names may contain spaces and slashes)."""
    if split not in AIRCRAFT_SPLITS:
        raise ConfigError(f"unknown FGVC-Aircraft split {split!r}; use one of {', '.join(AIRCRAFT_SPLITS)}")
    root = Path(root)
    base = root / "fgvc-aircraft-2013b" if (root / "fgvc-aircraft-2013b").is_dir() else root
    data = base / "data"
    variants, listing = data / "variants.txt", data / f"images_variant_{split}.txt"
    _require([variants, listing, data / "images"], "FGVC-Aircraft", base, AIRCRAFT_HOW)
    names = [line.strip() for line in variants.read_text().splitlines() if line.strip()]
    index = {name: i for i, name in enumerate(names)}
    samples = []
    for n, (image_id, name) in enumerate(_table(listing, 2), 1):
        if name not in index:
            raise DatasetFormatError(f"{listing}:{n}: variant {name!r} is not in variants.txt; re-extract the archive")
        samples.append((str(data / "images" / f"{image_id}.jpg"), index[name]))
    check_files_exist([p for p, _ in samples], listing, "FGVC-Aircraft", AIRCRAFT_HOW)
    return ListDataset(samples, names, transform)


def _norm_name(name: str) -> str:
    name = re.sub(r"^\d+[._ -]", "", name.strip().lower())  # "001.Black_footed_Albatross" -> "black_footed..."
    return re.sub(r"[^0-9a-z]+", "", name)


def align_classes(train_classes: list[str], test_classes: list[str], mode: str = "name") -> np.ndarray:
    """Map test class indices to training (web folder) class indices. ``name``: match names after normalising
    (lower case, a leading ``NNN.`` dropped, punctuation and spaces removed); ``order``: index i -> i."""
    if mode == "order":
        if len(train_classes) != len(test_classes):
            raise DatasetFormatError(f"data.class_match=order needs as many test classes ({len(test_classes)}) as "
                                     f"training class folders ({len(train_classes)}); check data.root and data.test")
        return np.arange(len(test_classes))
    if mode != "name":
        raise ConfigError(f"data.class_match={mode!r} is not a known name; use one of: name, order")
    lookup = {_norm_name(c): i for i, c in enumerate(train_classes)}
    if len(lookup) != len(train_classes):
        raise DatasetFormatError("two training class folders have the same normalised name; use data.class_match=order")
    missing = [c for c in test_classes if _norm_name(c) not in lookup]
    if missing:
        raise DatasetFormatError(f"{len(missing)} test classes have no training folder of the same name (e.g. "
                                 f"{missing[:3]}); rename the folders or use data.class_match=order (class i of both "
                                 "sets in sorted order)")
    return np.array([lookup[_norm_name(c)] for c in test_classes], dtype=np.int64)


def paper_transform(train: bool, size: int = 448) -> Callable:
    """The official transforms: Resize(size) (short side) -> [RandomHorizontalFlip -> RandomCrop(size)] or
    CenterCrop(size) -> ImageNet normalisation."""
    from torchvision import transforms as T

    ops: list[Any] = [T.Resize(size)]
    ops += [T.RandomHorizontalFlip(), T.RandomCrop(size)] if train else [T.CenterCrop(size)]
    return T.Compose([*ops, T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


TEST_READERS = {"cub": cub200, "cars": stanford_cars, "aircraft": fgvc_aircraft}


def _remapped(ds: ListDataset, mapping: np.ndarray, classes: list[str]) -> ListDataset:
    return ListDataset([(p, int(mapping[y])) for p, y in ds.samples], classes, ds.transform)


def build_data(cfg: Any, seed: int = 0) -> DataBundle:
    """The datasets of a run from ``cfg.data``: ``synthetic`` or ``webfg`` (a WebFG-496 training folder, a noisy
    validation split held out of it, and a test set in its official layout or the released ``val/`` folder)."""
    if cfg.name == "synthetic":
        data_seed = seed if cfg.get("data_seed") is None else int(cfg.data_seed)
        return synthetic_web_noise(cfg.num_classes, cfg.open_classes, cfg.n_train, cfg.n_val, cfg.n_test,
                                   cfg.image_size, cfg.domain, cfg.close_noise, data_seed)
    if cfg.name != "webfg":
        raise ConfigError(f"data.name={cfg.name!r} is not a known name; use one of: synthetic, webfg")
    web = webfg_folder(cfg.root, "train")
    n = len(web)
    tr, va, _ = train_val_test_split(n, (1 - cfg.val_fraction, cfg.val_fraction, 0.0), seed=int(cfg.split_seed))
    labels = np.asarray(web.targets, np.int64)
    train = Indexed(ListDataset([web.samples[i] for i in tr], web.classes, paper_transform(True, cfg.image_size)),
                    labels[tr])
    val = Indexed(ListDataset([web.samples[i] for i in va], web.classes, paper_transform(False, cfg.image_size)),
                  labels[va]) if len(va) else None
    if cfg.test == "folder":
        test = webfg_folder(cfg.root, "val", paper_transform(False, cfg.image_size))
        mapping = align_classes(web.classes, test.classes, cfg.class_match)
    else:
        reader = TEST_READERS[cfg.test]
        kwargs = {"split": "test"} if cfg.test == "aircraft" else {"train": False}
        test = reader(cfg.test_root, transform=paper_transform(False, cfg.image_size), **kwargs)
        mapping = align_classes(web.classes, test.classes, cfg.class_match)
    test = _remapped(test, mapping, web.classes)
    if cfg.num_classes and len(web.classes) != cfg.num_classes:
        raise DatasetFormatError(f"{cfg.root}/train has {len(web.classes)} class folders but data.num_classes="
                                 f"{cfg.num_classes}; point data.root at the right dataset or set data.num_classes")
    return DataBundle(train, val, test, len(web.classes), {"n_train": len(tr), "n_val": len(va), "n_test": len(test)})
