"""COCO reader and pycocotools evaluator on a hand-made fixture in the real COCO layout."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from shared.data.coco import coco_evaluate, coco_split, detection_collate, write_coco_json
from shared.data.root import DatasetNotFoundError


@pytest.fixture()
def coco_root(tmp_path):
    root = tmp_path / "coco"
    (root / "val2017").mkdir(parents=True)
    images, anns = [], []
    boxes = {1: [(10, 10, 20, 30, 7)], 2: [(5, 5, 40, 40, 3), (50, 20, 10, 10, 7)], 3: []}
    for img_id, bs in boxes.items():
        name = f"{img_id:012d}.jpg"
        Image.fromarray(np.full((64, 80, 3), 40 * img_id, np.uint8)).save(root / "val2017" / name)
        images.append({"id": img_id, "file_name": name, "width": 80, "height": 64})
        anns += [{"image_id": img_id, "category_id": c, "bbox": [x, y, w, h]} for x, y, w, h, c in bs]
    anns.append({"image_id": 3, "category_id": 3, "bbox": [1, 1, 5, 5], "iscrowd": 1})
    write_coco_json(root / "annotations" / "instances_val2017.json", images, anns,
                    [{"id": 3, "name": "circle"}, {"id": 7, "name": "square"}])
    return root


def test_reader_targets(coco_root):
    ds = coco_split(coco_root, "val2017")
    assert len(ds) == 3 and ds.num_classes == 2 and ds.class_names == ["circle", "square"]
    img, t = ds[1]
    assert img.size == (80, 64)
    assert t["boxes"].tolist() == [[5, 5, 45, 45], [50, 20, 60, 30]]
    assert t["labels"].tolist() == [1, 2]  # category 3 -> 1, 7 -> 2 (contiguous, 0 = background)
    assert ds[2][1]["boxes"].shape == (0, 4)  # the crowd box is skipped
    imgs, targets = detection_collate([ds[0], ds[1]])
    assert len(imgs) == 2 and targets[0]["image_id"].item() == 1


def _perfect(ds):
    dets = []
    for i in range(len(ds)):
        t = ds.target(i)
        dets.append({"image_id": t["image_id"], "boxes": t["boxes"], "labels": t["labels"],
                     "scores": torch.ones(len(t["labels"]))})
    return dets


def test_evaluator_known_values(coco_root):
    ds = coco_split(coco_root, "val2017")
    perfect = coco_evaluate(ds.coco, _perfect(ds), ds.label_to_cat)
    assert perfect["AP"] == pytest.approx(1.0) and perfect["AP50"] == pytest.approx(1.0)
    assert coco_evaluate(ds.coco, [], ds.label_to_cat)["AP"] == 0.0
    # wrong class on every box -> AP 0
    wrong = [dict(d, labels=3 - d["labels"]) for d in _perfect(ds)]
    assert coco_evaluate(ds.coco, wrong, ds.label_to_cat)["AP"] == pytest.approx(0.0)
    # half the boxes shifted off target: AP strictly between 0 and 1
    dets = _perfect(ds)
    dets[1] = dict(dets[1], boxes=dets[1]["boxes"] + torch.tensor([30.0, 0, 30, 0]))
    ap = coco_evaluate(ds.coco, dets, ds.label_to_cat)["AP"]
    assert 0.0 < ap < 1.0


def test_clear_errors(tmp_path, coco_root):
    with pytest.raises(DatasetNotFoundError, match="COCO not found: expected val2017"):
        coco_split(tmp_path / "nowhere")
    with pytest.raises(DatasetNotFoundError, match="instances_train2017.json"):
        coco_split(coco_root, "train2017")
    (coco_root / "annotations" / "instances_val2017.json").write_text(json.dumps({"images": "oops"}))
    with pytest.raises((ValueError, TypeError)):
        coco_split(coco_root, "val2017")
