"""Data for DPT: the synthetic varied-scale task (embedded default), ImageNet-1k with the DeiT
recipe of the paper (torchvision transforms v2), and COCO for RetinaNet (shared reader).

The embedded default is ``shared.data``'s procedural generator with objects at strongly varied
scale (``scale_range`` 0.15-0.9 of the image side) and anywhere in the image
(``position_jitter`` 1): the setting where patches that can move and resize should matter. It is
always called "synthetic".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from shared.data import SyntheticImageDataset, image_folder
from shared.data.coco import coco_split

# ImageNet statistics (PVT/DeiT normalise with them)
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


class Normalized(Dataset):
    """Wrap a dataset of float images in [0, 1] and normalise them with ``mean``/``std``."""

    def __init__(self, base: Dataset, mean=MEAN, std=STD):
        self.base = base
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i):
        x, y = self.base[i]
        return (x - self.mean) / self.std, y


def synthetic_splits(d: Any, seed: int = 0) -> tuple[Dataset, Dataset]:
    """Train and test sets of the synthetic varied-scale task (``d``: the ``data`` config).

    The test set uses a different generator seed, so no image is shared; the class definitions
    depend only on the domain and are the same for both."""
    kw = dict(scale_range=tuple(d.scale_range), position_jitter=float(d.position_jitter),
              max_rotation=float(d.max_rotation))
    train = SyntheticImageDataset(int(d.n_train), int(d.num_classes), int(d.image_size), d.domain,
                                  seed=int(d.data_seed) * 2 + 1, **kw)
    test = SyntheticImageDataset(int(d.n_test), int(d.num_classes), int(d.image_size), d.domain,
                                 seed=int(d.data_seed) * 2 + 2, **kw)
    return Normalized(train), Normalized(test)


# ---------------------------------------------------------------------------------- ImageNet


def imagenet_transforms(d: Any):
    """DeiT/DPT training and evaluation transforms with torchvision transforms v2.

    Train: RandomResizedCrop (bicubic), horizontal flip, RandAugment (2 ops, magnitude 9; timm's
    ``rand-m9-mstd0.5-inc1`` has magnitude noise that torchvision lacks), normalise, RandomErasing
    (p 0.25, per-pixel random values). Eval: resize to ``size / crop_pct`` then centre crop."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import v2

    size = int(d.image_size)
    bicubic = InterpolationMode.BICUBIC
    train = v2.Compose([
        v2.RandomResizedCrop(size, interpolation=bicubic, antialias=True),
        v2.RandomHorizontalFlip(),
        v2.RandAugment(num_ops=2, magnitude=int(d.randaug_magnitude), interpolation=bicubic),
        v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD),
        v2.RandomErasing(p=float(d.random_erasing), value="random"),
    ])
    evaluate = v2.Compose([
        v2.Resize(int(size / float(d.crop_pct)), interpolation=bicubic, antialias=True),
        v2.CenterCrop(size),
        v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD),
    ])
    return train, evaluate


def imagenet_splits(d: Any) -> tuple[Dataset, Dataset]:
    """``<root>/train/<wnid>/*.JPEG`` and ``<root>/val/<wnid>/*.JPEG`` (the ImageFolder layout)."""
    train_tf, eval_tf = imagenet_transforms(d)
    root = Path(d.root)
    train = image_folder(root / "train", transform=train_tf)
    val = image_folder(root / "val", transform=eval_tf)
    if len(train.classes) != int(d.num_classes) or train.classes != val.classes:
        raise ValueError(f"{root}: train has {len(train.classes)} classes and val {len(val.classes)} "
                         f"(must be equal and match data.num_classes={d.num_classes}).")
    return train, val


class MixupCutmix:
    """Batch-level mixup/cutmix (one or the other per batch, ``switch_prob`` for cutmix) with
    label smoothing, as DeiT: returns ``(images, soft targets)``. Uses torchvision's v2 ops."""

    def __init__(self, num_classes: int, mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0,
                 switch_prob: float = 0.5, label_smoothing: float = 0.1):
        from torchvision.transforms import v2

        self.num_classes, self.smoothing = num_classes, label_smoothing
        ops = []
        if mixup_alpha > 0:
            ops.append(v2.MixUp(alpha=mixup_alpha, num_classes=num_classes))
        if cutmix_alpha > 0:
            ops.append(v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes))
        if len(ops) == 2:
            self.op = v2.RandomChoice(ops, p=[1 - switch_prob, switch_prob])
        else:
            self.op = ops[0] if ops else None

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.op is None:
            soft = torch.nn.functional.one_hot(labels, self.num_classes).float()
        else:
            images, soft = self.op(images, labels)
        soft = soft * (1 - self.smoothing) + self.smoothing / self.num_classes
        return images, soft


# ---------------------------------------------------------------------------------- COCO


class DetectionTransform:
    """PIL image + target -> float tensor in [0, 1] (RetinaNet normalises and resizes itself);
    random horizontal flip for training."""

    def __init__(self, train: bool, flip_prob: float = 0.5):
        self.train, self.flip_prob = train, flip_prob

    def __call__(self, image, target):
        from torchvision.transforms.functional import pil_to_tensor

        img = pil_to_tensor(image).float().div_(255)
        if self.train and torch.rand(()) < self.flip_prob:
            img = img.flip(-1)
            w = img.shape[-1]
            boxes = target["boxes"].clone()
            boxes[:, [0, 2]] = w - target["boxes"][:, [2, 0]]
            target = dict(target, boxes=boxes)
        return img, target


def coco_splits(d: Any):
    """COCO train/val in the publisher's layout via ``shared.data.coco``."""
    train = coco_split(d.root, d.train_split, transforms=DetectionTransform(True),
                       remove_images_without_annotations=True)
    val = coco_split(d.root, d.val_split, transforms=DetectionTransform(False))
    return train, val
