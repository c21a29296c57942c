"""Datasets of the paper's protocols, read from disk in their publishers' (or the VPT/NOAH repos')
layouts, plus the synthetic transfer task of the embedded default. Nothing is downloaded.

Layouts (``root`` = ``${REPRO_DATA}/<dataset>``)::

    VTAB-1k (VPT/NOAH)  root/<task>/{train800.txt, val200.txt, train800val200.txt, test.txt}
                        each line "<path relative to root/<task>> <label>"
    CUB-200-2011        root/{images.txt, image_class_labels.txt, train_test_split.txt, images/...}
                        (``root`` may also be the folder holding CUB_200_2011/)
    NABirds             root/{images.txt, image_class_labels.txt, train_test_split.txt, images/...}
    Oxford Flowers-102  root/{imagelabels.mat, setid.mat, jpg/image_00001.jpg ...}
    Stanford Dogs       root/{train_list.mat, test_list.mat, Images/<synset>/<file>.jpg}
    Stanford Cars       torchvision layout: root/stanford_cars/{devkit/cars_meta.mat,
                        devkit/cars_train_annos.mat, cars_test_annos_withlabels.mat, cars_train/, cars_test/}
    few-shot (NOAH)     root/<dataset>/annotations/{train_meta.list.num_shot_<k>.seed_<s>,
                        val_meta.list, test_meta.list}, lines "<path> <label>", images under
                        root/<dataset>/data/images/ (Stanford Cars: relative to root/<dataset>)

Every reader returns a :class:`ListDataset` (``samples`` = list of ``(path, label)``, ``targets``,
``num_classes``). It raises :class:`shared.errors.DatasetNotFoundError` when a list file or any image it
lists is missing (checked when the dataset is built), and :class:`shared.errors.DatasetFormatError` naming
the file (and line) when one is malformed; an unreadable image is named when it is read
(:func:`shared.data.readers.load_image`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import Dataset, Subset
from torchvision import transforms as T

from shared.data import DOMAIN_PRESETS, DatasetNotFoundError, SyntheticDomain, SyntheticImageDataset, k_shot_indices
from shared.data.readers import check_files_exist, load_image
from shared.errors import ConfigError, DatasetFormatError

VTAB_CLASSES = {
    "cifar100": 100, "caltech101": 102, "dtd": 47, "oxford_flowers102": 102, "oxford_pet": 37, "svhn": 10,
    "sun397": 397, "patch_camelyon": 2, "eurosat": 10, "resisc45": 45, "diabetic_retinopathy": 5,
    "clevr_count": 8, "clevr_dist": 6, "dmlab": 6, "kitti": 4, "dsprites_loc": 16, "dsprites_ori": 16,
    "smallnorb_azi": 18, "smallnorb_ele": 9,
}
VTAB_SPLITS = ("train800", "val200", "train800val200", "test")
FGVC_CLASSES = {"cub": 200, "nabirds": 555, "oxford_flowers": 102, "stanford_dogs": 120, "stanford_cars": 196}
FEWSHOT_CLASSES = {"fgvc_aircraft": 100, "oxford_flowers102": 102, "food101": 101, "stanford_cars": 196,
                   "oxford_pets": 37}
FEWSHOT_SHOTS = (1, 2, 4, 8, 16)  # the k of the released NOAH/CoOp lists
# the official VTAB transforms: no horizontal flip for tasks where left/right carries the label ...
VTAB_NO_FLIP = {"clevr_dist", "clevr_count", "dsprites_loc", "dsprites_ori", "dmlab", "smallnorb_azi"}
# ... and resize + random crop instead of RandomResizedCrop where scale carries it. The official list
# spells "clever_dist", so clevr_dist silently keeps RandomResizedCrop there; we include it (the intent).
VTAB_RESIZE_CROP = {"clevr_count", "clevr_dist", "dmlab", "kitti", "smallnorb_azi"}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class ListDataset(Dataset):
    """``(image, label)`` pairs from a list of ``(path, label)``; images are opened lazily as RGB."""

    def __init__(self, samples: list[tuple[str, int]], num_classes: int, transform: Callable | None = None,
                 source: str | os.PathLike | None = None, dataset: str = "dataset", how_to_get: str = ""):
        self.samples, self.num_classes, self.transform = samples, num_classes, transform
        self.targets = [y for _, y in samples]
        if self.targets and not 0 <= min(self.targets) <= max(self.targets) < num_classes:
            raise DatasetFormatError(f"{source or dataset}: labels must lie in [0, {num_classes}), got "
                                     f"[{min(self.targets)}, {max(self.targets)}]; fix the label column of the list")
        if source is not None:  # every listed image must exist, checked now rather than mid-epoch
            check_files_exist([p for p, _ in samples], source, dataset, how_to_get or "restore the missing files")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        path, label = self.samples[i]
        image = load_image(path)
        return (self.transform(image) if self.transform else image), label


def _require(files: list[Path], dataset: str, root: Path, how: str) -> None:
    missing = [str(f.relative_to(root)) if f.is_relative_to(root) else str(f) for f in files if not f.exists()]
    if missing:
        raise DatasetNotFoundError(dataset, f"{', '.join(missing)}", root, how)


def _mat(path: Path, key: str):
    """One variable of a MATLAB file; a missing variable or an unreadable file is a format error naming both."""
    from scipy.io import loadmat

    try:
        data = loadmat(path, squeeze_me=True)
    except (ValueError, OSError, TypeError) as e:
        raise DatasetFormatError(f"{path} is not a readable .mat file ({e}); restore it from the dataset release") from e
    if key not in data:
        raise DatasetFormatError(f"{path} has no variable {key!r}; restore it from the dataset release")
    return data[key]


def read_list_file(path: Path, base: Path) -> list[tuple[str, int]]:
    """Lines ``<relative path> <label>`` (the path may contain spaces; the label is the last field)."""
    samples = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise DatasetFormatError(f"{path}:{n}: expected '<image path> <integer label>', got {line!r}; "
                                     "fix the line (format of the VPT/NOAH split lists)")
        samples.append((str(base / parts[0]), int(parts[1])))
    return samples


# -------------------------------------------------------------------------------- VTAB-1k


def vtab1k(root: str | os.PathLike, task: str, split: str, transform: Callable | None = None) -> ListDataset:
    """One VTAB-1k task in the VPT/NOAH split-list format. Splits: ``train800``, ``val200`` (tuning),
    ``train800val200`` (final training) and ``test``."""
    if task not in VTAB_CLASSES:
        raise ConfigError(f"unknown VTAB-1k task {task!r}; use one of {', '.join(sorted(VTAB_CLASSES))}")
    if split not in VTAB_SPLITS:
        raise ConfigError(f"unknown VTAB-1k split {split!r}; use one of {', '.join(VTAB_SPLITS)}")
    root = Path(root)
    folder = root / task
    how = ("prepare VTAB-1k with the VPT/NOAH scripts (github.com/ZhangYuanhan-AI/NOAH, 'Data Preparation') "
           "and point REPRO_DATA at the folder holding vtab-1k/")
    _require([folder / f"{split}.txt"], f"VTAB-1k {task}", root, how)
    return ListDataset(read_list_file(folder / f"{split}.txt", folder), VTAB_CLASSES[task], transform,
                       source=folder / f"{split}.txt", dataset=f"VTAB-1k {task}", how_to_get=how)


# ----------------------------------------------------------------------------------- FGVC


def _cub_style(root: Path, train: bool, name: str, url: str) -> tuple[list[tuple[str, int]], int]:
    files = [root / "images.txt", root / "image_class_labels.txt", root / "train_test_split.txt"]
    _require(files, name, root, f"download and extract it from {url}")

    def table(path: Path) -> dict[str, str]:
        out = {}
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip():
                parts = line.split(maxsplit=1)
                if len(parts) != 2:
                    raise DatasetFormatError(f"{path}:{n}: expected '<image id> <value>', got {line!r}; "
                                             f"restore the file from the {name} release")
                out[parts[0]] = parts[1].strip()
        return out

    images, labels, split = (table(f) for f in files)
    if not (images.keys() == labels.keys() == split.keys()):
        raise DatasetFormatError(f"{root}: images.txt, image_class_labels.txt and train_test_split.txt list "
                                 f"different image ids; restore the three files from the {name} release")
    # class ids are 1-based (CUB) or sparse (NABirds): map the ids present to 0..C-1 in sorted order
    class_ids = sorted({int(v) for v in labels.values()})
    index = {c: i for i, c in enumerate(class_ids)}
    want = "1" if train else "0"
    samples = [(str(root / "images" / images[i]), index[int(labels[i])])
               for i in sorted(images, key=int) if split[i] == want]
    return samples, len(class_ids)


def cub(root: str | os.PathLike, train: bool = True, transform: Callable | None = None) -> ListDataset:
    """CUB-200-2011 (official split from ``train_test_split.txt``; 200 classes)."""
    root = Path(root)
    if (root / "CUB_200_2011").is_dir():
        root = root / "CUB_200_2011"
    url = "https://www.vision.caltech.edu/datasets/cub_200_2011/"
    samples, num_classes = _cub_style(root, train, "CUB-200-2011", url)
    return ListDataset(samples, num_classes, transform, source=root / "images.txt", dataset="CUB-200-2011",
                       how_to_get=f"download and extract it from {url}")


def nabirds(root: str | os.PathLike, train: bool = True, transform: Callable | None = None) -> ListDataset:
    """NABirds; the sparse class ids present in ``image_class_labels.txt`` (555 leaf classes in the
    release) become 0..C-1. The official code sets ``nb_classes=700``, more than the labels use."""
    root = Path(root)
    url = "https://dl.allaboutbirds.org/nabirds"
    samples, num_classes = _cub_style(root, train, "NABirds", url)
    return ListDataset(samples, num_classes, transform, source=root / "images.txt", dataset="NABirds",
                       how_to_get=f"download and extract it from {url}")


def oxford_flowers(root: str | os.PathLike, split: str = "train", transform: Callable | None = None) -> ListDataset:
    """Oxford Flowers-102 from ``imagelabels.mat`` + ``setid.mat`` (splits train/val/test = trnid/valid/tstid)."""
    root = Path(root)
    if (root / "flowers-102").is_dir():
        root = root / "flowers-102"
    _require([root / "imagelabels.mat", root / "setid.mat", root / "jpg"], "Oxford Flowers-102", root,
             "download 102flowers.tgz, imagelabels.mat and setid.mat from "
             "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/ and extract them there")
    key = {"train": "trnid", "val": "valid", "test": "tstid"}.get(split)
    if key is None:
        raise ConfigError(f"unknown Flowers-102 split {split!r}; use train, val or test")
    labels = np.asarray(_mat(root / "imagelabels.mat", "labels")).reshape(-1)
    ids = np.asarray(_mat(root / "setid.mat", key)).reshape(-1)
    if ids.size and (ids.min() < 1 or ids.max() > labels.size):
        raise DatasetFormatError(f"{root / 'setid.mat'}: image ids outside 1..{labels.size}; restore setid.mat and "
                                 "imagelabels.mat from the same Flowers-102 release")
    return ListDataset([(str(root / "jpg" / f"image_{i:05d}.jpg"), int(labels[i - 1]) - 1) for i in ids], 102, transform,
                       source=root / "setid.mat", dataset="Oxford Flowers-102",
                       how_to_get="extract 102flowers.tgz (jpg/) from https://www.robots.ox.ac.uk/~vgg/data/flowers/102/")


def stanford_dogs(root: str | os.PathLike, train: bool = True, transform: Callable | None = None) -> ListDataset:
    """Stanford Dogs from ``train_list.mat`` / ``test_list.mat`` (``file_list`` relative to Images/, 1-based ``labels``)."""
    root = Path(root)
    name = "train_list.mat" if train else "test_list.mat"
    _require([root / name, root / "Images"], "Stanford Dogs", root,
             "download images.tar and lists.tar from http://vision.stanford.edu/aditya86/ImageNetDogs/ and extract them there")
    files = [str(f) for f in np.atleast_1d(_mat(root / name, "file_list"))]
    labels = np.atleast_1d(_mat(root / name, "labels")).astype(np.int64) - 1
    if len(files) != len(labels):
        raise DatasetFormatError(f"{root / name}: {len(files)} files but {len(labels)} labels; restore the file "
                                 "from lists.tar")
    return ListDataset([(str(root / "Images" / f), int(y)) for f, y in zip(files, labels)], 120, transform,
                       source=root / name, dataset="Stanford Dogs", how_to_get="extract images.tar into Images/")


def stanford_cars(root: str | os.PathLike, train: bool = True, transform: Callable | None = None) -> ListDataset:
    """Stanford Cars through torchvision's reader (``download=False``); 196 classes, labels 0..195 (the
    official code's ``nb_classes=197`` is one too many)."""
    from torchvision.datasets import StanfordCars

    root = Path(root)
    try:
        ds = StanfordCars(str(root), split="train" if train else "test", download=False)
    except RuntimeError as e:
        raise DatasetNotFoundError("Stanford Cars", "stanford_cars/{devkit/, cars_train/, cars_test/, "
                                   "cars_test_annos_withlabels.mat}", root,
                                   "get the devkit and images (e.g. from Kaggle 'stanford-cars-dataset') in "
                                   "torchvision's StanfordCars layout") from e
    return ListDataset([(str(p), int(y)) for p, y in ds._samples], 196, transform, source=root / "stanford_cars",
                       dataset="Stanford Cars", how_to_get="restore cars_train/ and cars_test/ from the release")


def fgvc(name: str, root: str | os.PathLike, train: bool, transform: Callable | None = None) -> ListDataset:
    readers = {"cub": cub, "nabirds": nabirds, "stanford_dogs": stanford_dogs, "stanford_cars": stanford_cars}
    if name == "oxford_flowers":
        return oxford_flowers(root, "train" if train else "test", transform)
    if name not in readers:
        raise ConfigError(f"unknown FGVC dataset {name!r}; use one of {', '.join(sorted(FGVC_CLASSES))}")
    return readers[name](root, train, transform)


# ------------------------------------------------------------------------------- few-shot


def fewshot(root: str | os.PathLike, dataset: str, split: str, shots: int = 16, seed: int = 1,
            transform: Callable | None = None) -> ListDataset:
    """NOAH/CoOp-style few-shot lists. ``split='train'`` reads ``train_meta.list.num_shot_<k>.seed_<s>`` and
    checks that every class has exactly ``k`` images; ``val``/``test`` read ``<split>_meta.list``."""
    if dataset not in FEWSHOT_CLASSES:
        raise ConfigError(f"unknown few-shot dataset {dataset!r}; use one of {', '.join(sorted(FEWSHOT_CLASSES))}")
    folder = Path(root) / dataset
    name = f"train_meta.list.num_shot_{shots}.seed_{seed}" if split == "train" else f"{split}_meta.list"
    path = folder / "annotations" / name
    how = "prepare the few-shot lists as in the NOAH repo (github.com/ZhangYuanhan-AI/NOAH) / CoOp"
    _require([path], f"few-shot {dataset}", Path(root), how)
    base = folder if dataset == "stanford_cars" else folder / "data" / "images"
    samples = read_list_file(path, base)
    num_classes = FEWSHOT_CLASSES[dataset]
    if split == "train":
        counts = np.bincount([y for _, y in samples], minlength=num_classes)
        bad = {c: int(n) for c, n in enumerate(counts) if n != shots}
        if bad:
            raise DatasetFormatError(f"{path}: expected exactly {shots} images per class, but class: count is "
                                     f"{dict(list(bad.items())[:8])}; regenerate the {shots}-shot list")
    return ListDataset(samples, num_classes, transform, source=path, dataset=f"few-shot {dataset}", how_to_get=how)


# ----------------------------------------------------------------------------- transforms


def paper_transform(train: bool, size: int = 224, task: str | None = None) -> Callable:
    """The official pipeline: train = RandomResizedCrop(bicubic) + horizontal flip (VTAB exceptions
    above; FGVC scale (0.22, 1)); eval = resize 256 + centre-crop 224 (``dsprites_loc``: resize only)."""
    bicubic = T.InterpolationMode.BICUBIC
    norm = [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    if task == "dsprites_loc":
        return T.Compose([T.Resize((size, size), interpolation=bicubic), *norm])
    if not train:
        return T.Compose([T.Resize((int(size / 0.875),) * 2, interpolation=bicubic), T.CenterCrop(size), *norm])
    if task in VTAB_RESIZE_CROP:
        crop = [T.Resize((int(size / 0.875),) * 2, interpolation=bicubic), T.RandomCrop(size)]
    else:
        scale = (0.08, 1.0) if task in VTAB_CLASSES else (0.22, 1.0)
        crop = [T.RandomResizedCrop(size, scale=scale, interpolation=bicubic)]
    flip = [] if task in VTAB_NO_FLIP else [T.RandomHorizontalFlip()]
    return T.Compose([*crop, *flip, *norm])


# ------------------------------------------------------------------------ synthetic domains

#: Synthetic domains of this package, beside shared's presets (``shapes-a``, ``shapes-b``, ``shapes-c``).
#: ``shapes-a-related`` is the target of the mechanism check: the *same visual vocabulary* as the source
#: ``shapes-a`` (palette, polygons, striped fills: what the pre-trained filters detect) but a background
#: texture the source never showed (checkerboard instead of smooth noise) and *other classes* (another
#: class seed picks other combinations of lobes / aspect / hole / fill frequency, angle and duty).
PACKAGE_DOMAINS: dict[str, SyntheticDomain] = {
    "shapes-a-related": SyntheticDomain(
        name="shapes-a-related", palette=DOMAIN_PRESETS["shapes-a"].palette, background="checker",
        shape_family="polygons", fill="stripes", class_seed=7),
}


def list_synthetic_domains() -> list[str]:
    return sorted({**DOMAIN_PRESETS, **PACKAGE_DOMAINS})


def synthetic_domain(name: str) -> SyntheticDomain:
    """A synthetic domain by name: shared's presets or :data:`PACKAGE_DOMAINS`."""
    domains = {**DOMAIN_PRESETS, **PACKAGE_DOMAINS}
    if name not in domains:
        raise ConfigError(f"unknown synthetic domain {name!r}; use one of {', '.join(sorted(domains))}")
    return domains[name]


# ------------------------------------------------------------------------------ building


def synthetic_split(domain: str, num_classes: int, n: int, image_size: int, seed: int) -> SyntheticImageDataset:
    """A synthetic split (images as float tensors in [0, 1])."""
    return SyntheticImageDataset(n, num_classes, image_size, domain=synthetic_domain(domain), seed=seed)


def build_datasets(cfg: Any, seed: int = 0) -> tuple[Dataset, Dataset, int]:
    """``(train, eval, num_classes)`` for the data config ``cfg`` (``cfg.name`` picks the protocol).
    ``cfg.tuning`` evaluates on a validation split instead of the test split (hyper-parameter selection, as
    the official ``--is_tuning``). ``cfg.shots`` (synthetic only) keeps exactly k training images per class,
    chosen with ``seed``."""
    name = cfg.name
    if name == "synthetic":  # train: data_seed; test: data_seed + 1; validation (tuning=true): data_seed + 2
        train = synthetic_split(cfg.domain, cfg.num_classes, cfg.n_train, cfg.image_size, cfg.data_seed)
        if cfg.get("tuning"):
            test = synthetic_split(cfg.domain, cfg.num_classes, cfg.n_val, cfg.image_size, cfg.data_seed + 2)
        else:
            test = synthetic_split(cfg.domain, cfg.num_classes, cfg.n_test, cfg.image_size, cfg.data_seed + 1)
        if cfg.get("shots"):
            train = Subset(train, k_shot_indices(train.labels, int(cfg.shots), seed=seed).tolist())
        return train, test, cfg.num_classes
    root = Path(os.path.expanduser(str(cfg.root)))
    size = cfg.image_size
    if name == "vtab1k":
        train_split, eval_split = ("train800", "val200") if cfg.tuning else ("train800val200", "test")
        tr = vtab1k(root, cfg.task, train_split, paper_transform(True, size, cfg.task))
        ev = vtab1k(root, cfg.task, eval_split, paper_transform(False, size, cfg.task))
        return tr, ev, VTAB_CLASSES[cfg.task]
    if name == "fgvc":
        tr = fgvc(cfg.task, root, True, paper_transform(True, size))
        ev = fgvc(cfg.task, root, False, paper_transform(False, size))
        num_classes = tr.num_classes
        if cfg.tuning:  # the official tuning mode: a 90/10 split of train
            perm = torch.randperm(len(tr), generator=torch.Generator().manual_seed(42)).tolist()
            cut = int(0.9 * len(tr))
            ev = Subset(fgvc(cfg.task, root, True, paper_transform(False, size)), perm[cut:])
            tr = Subset(tr, perm[:cut])
        return tr, ev, num_classes
    if name == "fewshot":
        tr = fewshot(root, cfg.task, "train", cfg.shots, cfg.list_seed, paper_transform(True, size))
        ev = fewshot(root, cfg.task, "val" if cfg.tuning else "test", transform=paper_transform(False, size))
        return tr, ev, FEWSHOT_CLASSES[cfg.task]
    raise ConfigError(f"unknown data.name {name!r}; use synthetic, vtab1k, fgvc or fewshot")
