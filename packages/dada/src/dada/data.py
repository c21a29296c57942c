"""Data for the search and the final training: readers, DADA's reduced search sets, and the
batched (on-device) pre/post-processing around the policy.

Datasets are kept as uint8 ``(N, 3, H, W)`` tensors where they fit in memory (CIFAR, SVHN, the
synthetic default), so the whole augmentation pipeline runs on batches:

    uint8 batch -> [pre: RandomCrop(32, pad 4) + HFlip] -> policy (uint8) -> float, Normalize
                -> [Cutout 16 (DARTS-style, zeros after normalisation)]

ImageNet is read per image (RandomResizedCrop 224 + HFlip + ColorJitter 0.4 in the Dataset, as
DADA's search), then the policy, Lighting(0.1) and Normalize run batched.

Reduced search sets (``StratifiedShuffleSplit(random_state=0)``, as the official code):
reduced CIFAR-10/100: 4,000 training images; reduced SVHN: 1,000 from ``train``; reduced
ImageNet: a stratified 50,000 of the training set restricted to 120 fixed classes (about 6,000
images). The search splits the reduced set 50/50 into train/validation (the first of five
stratified splits with ``test_size=0.5, random_state=0``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from .ops import OPS, apply_values, level_to_value, sample_cutout_boxes

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
IMAGENET_PCA_EIGVAL = (0.2175, 0.0188, 0.0045)
IMAGENET_PCA_EIGVEC = ((-0.5675, 0.7192, 0.4009), (-0.5808, -0.0045, -0.8140), (-0.5836, -0.6948, 0.4203))
#: The 120 ImageNet class indices (sorted-wnid order) of DADA's reduced ImageNet search set.
REDUCED_IMAGENET_CLASSES = (
    16, 23, 52, 57, 76, 93, 95, 96, 99, 121, 122, 128, 148, 172, 181, 189, 202, 210, 232, 238, 257, 258, 259, 277,
    283, 289, 295, 304, 307, 318, 322, 331, 337, 338, 345, 350, 361, 375, 376, 381, 388, 399, 401, 408, 424, 431, 432,
    440, 447, 462, 464, 472, 483, 497, 506, 512, 530, 541, 553, 554, 557, 564, 570, 584, 612, 614, 619, 626, 631, 632,
    650, 657, 658, 660, 674, 675, 680, 682, 691, 695, 699, 711, 734, 736, 741, 754, 757, 764, 769, 770, 780, 781, 787,
    797, 799, 811, 822, 829, 830, 835, 837, 842, 843, 845, 873, 883, 897, 900, 902, 905, 913, 920, 925, 937, 938, 940,
    941, 944, 949, 959)
DATASETS = ("synthetic", "cifar10", "cifar100", "svhn", "imagenet")


class ImageTensorDataset(Dataset):
    """uint8 images ``(N, 3, H, W)`` and int64 labels; items are ``(image, label)``."""

    def __init__(self, images: Tensor, labels: Tensor):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"expected uint8 (N, 3, H, W) images, got {images.dtype} {tuple(images.shape)}")
        self.images, self.labels = images, labels.long()
        self.targets = self.labels.tolist()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], self.labels[i]

    def subset(self, idx) -> ImageTensorDataset:
        idx = torch.as_tensor(np.asarray(idx), dtype=torch.long)
        return ImageTensorDataset(self.images[idx], self.labels[idx])


class TransformedFolder(Dataset):
    """An ImageFolder-style dataset with a per-image transform producing uint8 tensors (ImageNet)."""

    def __init__(self, base, indices, labels, transform):
        self.base, self.indices, self.labels, self.transform = base, list(indices), list(labels), transform
        self.targets = self.labels

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i):
        path, _ = self.base.samples[self.indices[i]]
        return self.transform(self.base.loader(path)), self.labels[i]


# ------------------------------------------------------------------------------ splits


def reduced_indices(targets, keep: int, random_state: int = 0) -> np.ndarray:
    """The official reduced subset: ``StratifiedShuffleSplit(n_splits=1, test_size=len - keep,
    random_state)`` -> its *train* indices (``keep`` of them, stratified by label)."""
    from sklearn.model_selection import StratifiedShuffleSplit

    targets = np.asarray(targets)
    if keep >= len(targets):
        return np.arange(len(targets))
    sss = StratifiedShuffleSplit(n_splits=1, test_size=len(targets) - keep, random_state=random_state)
    train_idx, _ = next(sss.split(np.zeros(len(targets)), targets))
    return train_idx


def search_split(targets, fraction: float = 0.5, random_state: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The official search split of the reduced set: the first of ``StratifiedShuffleSplit(
    n_splits=5, test_size=fraction, random_state)`` -> ``(train_idx, valid_idx)``."""
    from sklearn.model_selection import StratifiedShuffleSplit

    targets = np.asarray(targets)
    sss = StratifiedShuffleSplit(n_splits=5, test_size=fraction, random_state=random_state)
    return next(sss.split(np.zeros(len(targets)), targets))


# ------------------------------------------------------------------------------ readers


def _tensor_images(array: np.ndarray, layout: str) -> Tensor:
    t = torch.from_numpy(np.ascontiguousarray(array))
    return t.permute(0, 3, 1, 2).contiguous() if layout == "NHWC" else t


def read_cifar(root: str | Path, name: str, train: bool) -> ImageTensorDataset:
    from shared.data import cifar

    ds = cifar(root, name=name, train=train)
    return ImageTensorDataset(_tensor_images(ds.data, "NHWC"), torch.tensor(ds.targets))


def read_svhn(root: str | Path, split: str) -> ImageTensorDataset:
    from shared.data import svhn

    ds = svhn(root, split=split)
    return ImageTensorDataset(torch.from_numpy(np.ascontiguousarray(ds.data)), torch.from_numpy(ds.labels))


def imagenet_train_transform():
    from torchvision.transforms import v2

    return v2.Compose([v2.PILToTensor(), v2.RandomResizedCrop(224, scale=(0.08, 1.0), interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
                       v2.RandomHorizontalFlip(), v2.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4)])


def imagenet_test_transform():
    from torchvision.transforms import v2

    return v2.Compose([v2.PILToTensor(), v2.Resize(256, interpolation=v2.InterpolationMode.BICUBIC, antialias=True), v2.CenterCrop(224)])


# ------------------------------------------------------------------------------ bundle


@dataclass
class DataBundle:
    """What fit() needs: the search train/validation halves, the final training and test sets."""

    search_train: Dataset
    search_val: Dataset
    train: Dataset
    test: Dataset
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    pre: str  # "crop_flip" (CIFAR/SVHN/synthetic) or "none" (ImageNet: done per image)
    lighting: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)


def planted_transform(images: Tensor, op: str | None, level: float) -> Tensor:
    """The mechanism check's planted shift: ``op`` at ``level`` (positive sign) on every image."""
    if not op:
        return images
    if op not in OPS:
        from shared.errors import check_choice

        check_choice("data.planted_op", op, OPS)
    values = level_to_value(op, torch.full((len(images),), float(level), dtype=torch.float64))
    boxes = sample_cutout_boxes(values, images.shape[-2], images.shape[-1], torch.Generator().manual_seed(0)) if op == "Cutout" else None
    return apply_values(images, op, values, boxes)


def build_data(d, seed: int = 0) -> DataBundle:
    """Build the data of config group ``data`` (see ``conf/data/*.yaml``)."""
    name = d.name
    if name == "synthetic":
        from shared.data import generate

        n_search, n_train, n_test = int(d.n_search), int(d.n_train), int(d.n_test)
        total = n_search + n_train + n_test
        imgs, labels = generate(total, int(d.num_classes), int(d.image_size), d.domain, int(d.data_seed),
                                max_rotation=float(d.max_rotation))
        full = ImageTensorDataset(_tensor_images(imgs, "NHWC"), torch.from_numpy(labels))
        search = full.subset(range(n_search))
        tr, va = search_split(search.targets, 0.5, 0)
        search_train, search_val = search.subset(tr), search.subset(va)
        train = full.subset(range(n_search, n_search + n_train))
        test = full.subset(range(n_search + n_train, total))
        planted = d.get("planted_op")
        if planted:  # validation and test carry a transformation the training images never show
            level = float(d.planted_level)
            search_val = ImageTensorDataset(planted_transform(search_val.images, planted, level), search_val.labels)
            test = ImageTensorDataset(planted_transform(test.images, planted, level), test.labels)
        return DataBundle(search_train, search_val, train, test, int(d.num_classes), CIFAR_MEAN, CIFAR_STD, "crop_flip",
                          info={"data": f"synthetic ({d.domain})", "planted": planted or None})
    if name in ("cifar10", "cifar100"):
        full = read_cifar(d.root, name, train=True)
        test = read_cifar(d.root, name, train=False)
        reduced = full.subset(reduced_indices(full.targets, int(d.search_size), 0))
        tr, va = search_split(reduced.targets, 0.5, 0)
        return DataBundle(reduced.subset(tr), reduced.subset(va), full, test, 10 if name == "cifar10" else 100,
                          CIFAR_MEAN, CIFAR_STD, "crop_flip", info={"data": name})
    if name == "svhn":
        core = read_svhn(d.root, "train")
        reduced = core.subset(reduced_indices(core.targets, int(d.search_size), 0))
        tr, va = search_split(reduced.targets, 0.5, 0)
        train = core
        if d.get("use_extra", True):
            extra = read_svhn(d.root, "extra")
            train = ImageTensorDataset(torch.cat([core.images, extra.images]), torch.cat([core.labels, extra.labels]))
        return DataBundle(reduced.subset(tr), reduced.subset(va), train, read_svhn(d.root, "test"), 10, CIFAR_MEAN,
                          CIFAR_STD, "crop_flip", info={"data": "svhn"})
    if name == "imagenet":
        from shared.data import image_folder

        train_base = image_folder(Path(d.root) / "train")
        val_base = image_folder(Path(d.root) / "val")
        targets = np.asarray(train_base.targets)
        keep = reduced_indices(targets, int(d.search_pool), 0)
        classes = list(REDUCED_IMAGENET_CLASSES)[: int(d.search_classes)]
        keep = np.asarray([i for i in keep if targets[i] in set(classes)])
        relabel = {c: j for j, c in enumerate(classes)}
        search_targets = np.asarray([relabel[targets[i]] for i in keep])
        tr, va = search_split(search_targets, 0.5, 0)
        tt = imagenet_train_transform()
        s_train = TransformedFolder(train_base, keep[tr], search_targets[tr], tt)
        s_val = TransformedFolder(train_base, keep[va], search_targets[va], imagenet_test_transform())
        train = TransformedFolder(train_base, range(len(targets)), targets, tt)
        test = TransformedFolder(val_base, range(len(val_base.targets)), val_base.targets, imagenet_test_transform())
        return DataBundle(s_train, s_val, train, test, len(train_base.classes), IMAGENET_MEAN, IMAGENET_STD, "none",
                          lighting=0.1, info={"data": "imagenet", "search_classes": len(classes)})
    from shared.errors import check_choice

    check_choice("data.name", name, DATASETS)
    raise AssertionError(name)


# ------------------------------------------------------------------------ batched stages


def random_crop_flip(images: Tensor, padding: int = 4, generator: torch.Generator | None = None) -> Tensor:
    """RandomCrop(size, padding, zero fill) + RandomHorizontalFlip(0.5) per image, batched."""
    n, c, h, w = images.shape
    if n == 0:
        return images
    padded = torch.nn.functional.pad(images, (padding, padding, padding, padding))
    oy = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(images.device)
    ox = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(images.device)
    flip = (torch.rand(n, generator=generator) < 0.5).to(images.device)
    rows = oy[:, None] + torch.arange(h, device=images.device)[None]
    cols = ox[:, None] + torch.arange(w, device=images.device)[None]
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    batch = torch.arange(n, device=images.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # (N, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()


def to_normalized(images: Tensor, mean, std) -> Tensor:
    m = torch.tensor(mean, device=images.device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=images.device).view(1, -1, 1, 1)
    return (images.float() / 255.0 - m) / s


def cutout_default(x: Tensor, length: int, generator: torch.Generator | None = None) -> Tensor:
    """DARTS/Fast-AA ``CutoutDefault``: zero a ``length``-square (clipped) at a uniform random
    centre of every image, after normalisation."""
    if length <= 0:
        return x
    n, _, h, w = x.shape
    cy = torch.randint(0, h, (n,), generator=generator).to(x.device)
    cx = torch.randint(0, w, (n,), generator=generator).to(x.device)
    ys = torch.arange(h, device=x.device).view(1, h, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, w)
    half = length // 2
    inside = ((ys >= (cy - half).clamp(0, h)[:, None, None]) & (ys < (cy + half).clamp(0, h)[:, None, None])
              & (xs >= (cx - half).clamp(0, w)[:, None, None]) & (xs < (cx + half).clamp(0, w)[:, None, None]))
    return x * (~inside).unsqueeze(1).to(x.dtype)


def lighting(x: Tensor, alphastd: float, generator: torch.Generator | None = None) -> Tensor:
    """AlexNet-style PCA lighting noise on ``[0, 1]`` images, per image."""
    if alphastd <= 0:
        return x
    alpha = torch.randn(x.shape[0], 3, generator=generator).to(x.device) * alphastd
    eigval = torch.tensor(IMAGENET_PCA_EIGVAL, device=x.device)
    eigvec = torch.tensor(IMAGENET_PCA_EIGVEC, device=x.device)
    rgb = (eigvec[None] * (alpha * eigval[None])[:, None, :]).sum(-1)  # (N, 3)
    return x + rgb[:, :, None, None]
