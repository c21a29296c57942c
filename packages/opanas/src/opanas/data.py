"""Detection data for OPANAS: the synthetic scenes (embedded default) or real COCO 2017, both read
with ``shared.data.coco`` (pycocotools), plus the held-out split the search scores candidates on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Subset
from torchvision.transforms.functional import pil_to_tensor

from shared.data.coco import COCO_HOW_TO_GET, CocoDetection, coco_split
from shared.data.detection_scenes import synthetic_detection
from shared.errors import DatasetNotFoundError
from shared.runtime import barrier, to_plain

__all__ = ["DATA_KINDS", "DetectionData", "build_data", "check_data", "hflip_batch", "to_tensor"]

DATA_KINDS = ("synthetic", "coco")


def to_tensor(image, target):
    return pil_to_tensor(image).float().div_(255), target


class DetectionData:
    """``train`` (what the detector learns on), ``search`` (held-out images the evolutionary search
    scores candidates on; never val), ``val`` (the final report). Each is a ``CocoDetection`` or a
    ``Subset`` of one; ``coco_of(ds)`` gives the pycocotools object to evaluate against."""

    def __init__(self, train, search, val, num_classes: int, name: str):
        self.train, self.search, self.val, self.num_classes, self.name = train, search, val, num_classes, name

    @staticmethod
    def base(ds) -> CocoDetection:
        return ds.dataset if isinstance(ds, Subset) else ds


def check_data(d: Any) -> None:
    """Cheap check that a real dataset is where the config says, before anything is built (one-line error)."""
    if d.kind != "coco":
        return
    root = Path(str(d.root))
    for split in (d.train_split, d.val_split):
        ann = root / "annotations" / f"instances_{split}.json"
        if not ann.is_file() or not (root / split).is_dir():
            raise DatasetNotFoundError("COCO 2017", f"{split}/ and annotations/instances_{split}.json "
                                       "(data.train_split / data.val_split)", root, COCO_HOW_TO_GET)


def synthetic_splits(cfg: Any, run_dir: Path) -> tuple[Path, dict[str, int], dict[str, Any]]:
    d = cfg.data
    root = Path(d.root) if d.get("root") else Path(run_dir) / "scenes"
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in (to_plain(d.get("scene")) or {}).items()}
    kwargs.update(seed=int(d.data_seed), size=int(d.size), num_classes=int(d.num_classes))
    return root, {"train": int(d.train_images), "search": int(d.search_images), "val": int(d.val_images)}, kwargs


def build_data(cfg: Any, run_dir: Path, is_main: bool = True) -> DetectionData:
    """The three splits. Synthetic scenes are rendered by the main process (the others wait at a barrier
    under torchrun, then read the same files)."""
    d = cfg.data
    if d.kind == "synthetic":
        root, splits, kwargs = synthetic_splits(cfg, run_dir)
        if is_main:
            synthetic_detection(root, splits, **kwargs)
        barrier()
        sets = synthetic_detection(root, splits, transforms=to_tensor, **kwargs)
        return DetectionData(sets["train"], sets["search"], sets["val"], int(d.num_classes), "synthetic")
    if d.kind == "coco":
        train_full = coco_split(d.root, d.train_split, transforms=to_tensor, remove_images_without_annotations=True)
        val = coco_split(d.root, d.val_split, transforms=to_tensor)
        # held-out search split: a seeded subset of train2017, removed from the training images (ours)
        n = len(train_full)
        k = min(int(d.search_images), n // 2)
        perm = np.random.default_rng(int(d.data_seed)).permutation(n)
        search, train = Subset(train_full, sorted(perm[:k].tolist())), Subset(train_full, sorted(perm[k:].tolist()))
        return DetectionData(train, search, val, train_full.num_classes, "COCO 2017")
    raise ValueError(f"data.kind must be one of {DATA_KINDS}, got {d.kind!r}.")


def hflip_batch(images: list[torch.Tensor], targets: list[dict], prob: float, gen: torch.Generator):
    """Flip each image (and its boxes) horizontally with probability ``prob`` (seeded generator)."""
    if prob <= 0:
        return images, targets
    flips = (torch.rand(len(images), generator=gen) < prob).tolist()
    out_i, out_t = [], []
    for img, t, f in zip(images, targets, flips):
        if f:
            w = img.shape[-1]
            b = t["boxes"].clone()
            b[:, [0, 2]] = w - t["boxes"][:, [2, 0]]
            img, t = img.flip(-1), dict(t, boxes=b)
        out_i.append(img)
        out_t.append(t)
    return out_i, out_t
