"""COCO-format detection data: the reader used for real COCO 2017 *and* for the synthetic scenes
written in the same format, plus a writer for small COCO JSON files (fixtures, synthetic data).

Layout of real COCO 2017 under ``$REPRO_DATA/coco``::

    coco/train2017/*.jpg   coco/val2017/*.jpg
    coco/annotations/instances_train2017.json   coco/annotations/instances_val2017.json

Targets follow torchvision's detection API: ``boxes`` (float xyxy, absolute pixels), ``labels``
(int64, contiguous 1..K; 0 is background), ``image_id`` (the COCO id), ``area``, ``iscrowd``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image

from shared.data.root import DatasetNotFoundError
from shared.errors import DatasetFormatError


COCO_HOW_TO_GET = ("download train2017/val2017 images and annotations_trainval2017.zip from "
                   "https://cocodataset.org/#download and extract them into $REPRO_DATA/coco")


COCO_REQUIRED_KEYS = ("images", "annotations", "categories")


def _load_instances(annotation_file: Path):
    """pycocotools ``COCO`` for a validated instances file: valid JSON with the three required lists, every
    annotation naming a known image and category. A file that is not fails here, naming the file and the key,
    instead of loading as an empty dataset that scores AP 0.0 (or a raw ``KeyError`` from pycocotools)."""
    from pycocotools.coco import COCO

    try:
        doc = json.loads(Path(annotation_file).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetFormatError(f"{annotation_file} is not a valid COCO instances file (not JSON: {e}); "
                                 f"re-extract the annotations ({COCO_HOW_TO_GET})") from e
    if not isinstance(doc, dict):
        raise DatasetFormatError(f"{annotation_file} is not a COCO instances file (top level is a "
                                 f"{type(doc).__name__}, not an object); point the reader at instances_<split>.json")
    for key in COCO_REQUIRED_KEYS:
        if not isinstance(doc.get(key), list):
            problem = "missing" if key not in doc else f"not a list ({type(doc[key]).__name__})"
            raise DatasetFormatError(f"{annotation_file}: the key '{key}' is {problem}; a COCO instances file "
                                     f"needs the lists {', '.join(COCO_REQUIRED_KEYS)}")
    if not doc["images"]:
        raise DatasetFormatError(f"{annotation_file}: the list 'images' is empty; the file describes no images, "
                                 "so there is nothing to train or evaluate on")
    image_ids = {im.get("id") for im in doc["images"]}
    cat_ids = {c.get("id") for c in doc["categories"]}
    for a in doc["annotations"]:
        for key, known in (("image_id", image_ids), ("category_id", cat_ids)):
            if a.get(key) not in known:
                raise DatasetFormatError(f"{annotation_file}: annotation {a.get('id')!r} has {key}={a.get(key)!r}, "
                                         f"which is not in '{'images' if key == 'image_id' else 'categories'}'; "
                                         "fix or regenerate the annotation file")
        if not (isinstance(a.get("bbox"), list) and len(a["bbox"]) == 4):
            raise DatasetFormatError(f"{annotation_file}: annotation {a.get('id')!r} has no 'bbox' [x, y, w, h]; "
                                     "fix or regenerate the annotation file")
    coco = COCO()
    coco.dataset = doc
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


class CocoDetection(torch.utils.data.Dataset):
    """Images + instance boxes from a COCO-format annotation file (pycocotools).

    Crowd boxes are kept with ``iscrowd=1`` (pycocotools ignores them when scoring) unless
    ``skip_crowd``; degenerate boxes (w or h < 1 px) are dropped. ``transforms(image, target)``
    receives a PIL image and the target dict.
    """

    def __init__(self, image_dir: str | os.PathLike, annotation_file: str | os.PathLike,
                 transforms: Callable | None = None, skip_crowd: bool = True,
                 remove_images_without_annotations: bool = False):
        image_dir, annotation_file = Path(image_dir), Path(annotation_file)
        if not annotation_file.is_file():
            raise DatasetNotFoundError("COCO annotations", f"the annotation file {annotation_file.name}",
                                       annotation_file.parent, COCO_HOW_TO_GET)
        if not image_dir.is_dir():
            raise DatasetNotFoundError("COCO images", f"the image folder {image_dir.name}/ named by "
                                       f"{annotation_file.name}", image_dir.parent, COCO_HOW_TO_GET)
        self.coco = _load_instances(annotation_file)
        self.image_dir = image_dir
        self.transforms = transforms
        self.skip_crowd = skip_crowd
        self.cat_ids = sorted(self.coco.getCatIds())
        self.cat_to_label = {c: i + 1 for i, c in enumerate(self.cat_ids)}
        self.label_to_cat = {v: k for k, v in self.cat_to_label.items()}
        self.class_names = [self.coco.cats[c]["name"] for c in self.cat_ids]
        ids = sorted(self.coco.imgs)
        if remove_images_without_annotations:
            ids = [i for i in ids if any(not a.get("iscrowd", 0) for a in self.coco.imgToAnns.get(i, []))]
        self.ids = ids

    @property
    def num_classes(self) -> int:
        """Number of object classes (excluding background)."""
        return len(self.cat_ids)

    def __len__(self) -> int:
        return len(self.ids)

    def target(self, index: int) -> dict[str, torch.Tensor]:
        img_id = self.ids[index]
        anns = self.coco.imgToAnns.get(img_id, [])
        if self.skip_crowd:
            anns = [a for a in anns if not a.get("iscrowd", 0)]
        boxes = np.array([a["bbox"] for a in anns], dtype=np.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]  # xywh -> xyxy
        keep = (boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)
        anns = [a for a, k in zip(anns, keep) if k]
        return {
            "boxes": torch.from_numpy(boxes[keep]),
            "labels": torch.tensor([self.cat_to_label[a["category_id"]] for a in anns], dtype=torch.int64),
            "image_id": torch.tensor(img_id, dtype=torch.int64),
            "area": torch.tensor([float(a.get("area", a["bbox"][2] * a["bbox"][3])) for a in anns], dtype=torch.float32),
            "iscrowd": torch.tensor([int(a.get("iscrowd", 0)) for a in anns], dtype=torch.int64),
        }

    def __getitem__(self, index: int):
        info = self.coco.imgs[self.ids[index]]
        path = self.image_dir / info["file_name"]
        try:
            image = Image.open(path).convert("RGB")
        except FileNotFoundError as e:
            raise DatasetNotFoundError("COCO image", f"{path.name} (listed in the annotations)", path.parent,
                                       COCO_HOW_TO_GET) from e
        except OSError as e:
            raise DatasetFormatError(f"image {path} is corrupt or not an image ({e}).") from e
        target = self.target(index)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target


def coco_split(root: str | os.PathLike, split: str = "val2017", **kwargs: Any) -> CocoDetection:
    """``CocoDetection`` for ``<root>/<split>`` + ``<root>/annotations/instances_<split>.json``."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetNotFoundError("COCO", f"{split}/*.jpg and annotations/instances_{split}.json", root,
                                   COCO_HOW_TO_GET)
    return CocoDetection(root / split, root / "annotations" / f"instances_{split}.json", **kwargs)


def write_coco_json(path: str | os.PathLike, images: Sequence[dict], annotations: Sequence[dict],
                    categories: Sequence[dict], info: dict | None = None) -> Path:
    """Write a COCO instances file. ``images``: {id, file_name, width, height}; ``annotations``:
    {image_id, category_id, bbox [x, y, w, h]} (id, area and iscrowd are filled in when absent)."""
    anns = []
    for i, a in enumerate(annotations, start=1):
        a = dict(a)
        a.setdefault("id", i)
        a.setdefault("area", float(a["bbox"][2] * a["bbox"][3]))
        a.setdefault("iscrowd", 0)
        anns.append(a)
    doc = {"info": info or {"description": "written by shared.data.coco"}, "images": list(images),
           "annotations": anns, "categories": list(categories)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return path


def detection_collate(batch):
    """Keep images and targets as lists (torchvision detection models take lists)."""
    return tuple(zip(*batch))


def coco_evaluate(coco_gt, detections: Sequence[dict], label_to_cat: dict[int, int] | None = None) -> dict[str, float]:
    """COCO box mAP with pycocotools.

    ``detections``: one dict per image with ``image_id`` and torchvision outputs ``boxes`` (xyxy),
    ``scores``, ``labels`` (contiguous; mapped back with ``label_to_cat``). Returns AP (=mAP@[.5:.95]),
    AP50, AP75, APs, APm, APl in [0, 1]; all zeros when there are no detections at all.
    """
    from pycocotools.cocoeval import COCOeval

    results = []
    for det in detections:
        boxes = torch.as_tensor(det["boxes"], dtype=torch.float32).reshape(-1, 4).tolist()
        scores = torch.as_tensor(det["scores"]).reshape(-1).tolist()
        labels = torch.as_tensor(det["labels"]).reshape(-1).tolist()
        for (x1, y1, x2, y2), s, l in zip(boxes, scores, labels):
            cat = label_to_cat[int(l)] if label_to_cat else int(l)
            results.append({"image_id": int(det["image_id"]), "category_id": cat,
                            "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(s)})
    keys = ["AP", "AP50", "AP75", "APs", "APm", "APl"]
    if not results:
        return {k: 0.0 for k in keys}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(results)
        ev = COCOeval(coco_gt, coco_dt, iouType="bbox")
        ev.params.imgIds = sorted({r["image_id"] for r in results} | set(coco_gt.getImgIds()))
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    # pycocotools reports -1 where a size range has no ground truth; keep it visible as nan
    return {k: (float(v) if v >= 0 else float("nan")) for k, v in zip(keys, ev.stats[:6])}
