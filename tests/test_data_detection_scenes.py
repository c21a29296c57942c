"""shared.data.detection_scenes: seeded scenes in the COCO layout, read back by the COCO reader."""

import json

import numpy as np
import pytest
import torch

from shared.data.coco import coco_evaluate, coco_split
from shared.data.detection_scenes import SHAPE_CLASSES, generate_scenes, render_scene, synthetic_detection


def test_written_in_coco_layout_and_read_back(tmp_path):
    sets = synthetic_detection(tmp_path, {"train": 12, "val": 6}, seed=3, size=128, num_classes=4)
    assert (tmp_path / "train" / "000000000001.png").is_file()
    assert (tmp_path / "annotations" / "instances_val.json").is_file()
    ds = coco_split(tmp_path, "train")
    assert len(ds) == 12 and ds.num_classes == 4 and ds.class_names == list(SHAPE_CLASSES[:4])
    img, t = ds[0]
    assert img.size == (128, 128)
    b = t["boxes"]
    assert len(b) >= 1 and (b[:, 0] >= 0).all() and (b[:, 2] <= 128).all() and (b[:, 2] > b[:, 0]).all()
    assert set(t["labels"].tolist()) <= {1, 2, 3, 4}
    # train and val are different images
    assert not np.array_equal(np.asarray(sets["train"][0][0]), np.asarray(sets["val"][0][0]))


def test_seeded_and_deterministic(tmp_path):
    generate_scenes(tmp_path / "a", "s", 5, seed=7)
    generate_scenes(tmp_path / "b", "s", 5, seed=7)
    generate_scenes(tmp_path / "c", "s", 5, seed=8)
    ja, jb, jc = (json.loads((tmp_path / r / "annotations" / "instances_s.json").read_text())["annotations"] for r in "abc")
    assert ja == jb and ja != jc
    assert (tmp_path / "a" / "s" / "000000000003.png").read_bytes() == (tmp_path / "b" / "s" / "000000000003.png").read_bytes()
    # an image does not depend on how many were generated before it
    img5, objs5 = render_scene(np.random.default_rng([1, 2, 4]))
    img5b, _ = render_scene(np.random.default_rng([1, 2, 4]))
    assert np.array_equal(img5, img5b)


def test_boxes_are_the_visible_pixels_and_occlusion_respects_min_visible():
    found_occlusion = False
    for i in range(40):
        img, objs = render_scene(np.random.default_rng([0, i]), min_visible=0.5)
        for o in objs:
            x, y, w, h = o["bbox"]
            assert o["visible"] >= 0.5 - 1e-9
            assert 0 < o["area"] <= w * h  # visible pixels lie inside the box
            found_occlusion |= o["visible"] < 0.999
    assert found_occlusion


def test_strongly_varied_scale(tmp_path):
    ds = synthetic_detection(tmp_path, {"train": 120}, seed=0, size=128)["train"]
    areas = np.array([a["area"] for a in ds.coco.anns.values()])
    small, medium, large = (areas < 32**2).mean(), ((areas >= 32**2) & (areas < 96**2)).mean(), (areas >= 96**2).mean()
    assert small > 0.3 and medium > 0.25 and large > 0  # all three COCO size bands occur
    assert np.sqrt(areas).max() / np.sqrt(areas).min() > 10


def test_evaluator_perfect_and_empty_on_synthetic(tmp_path):
    ds = synthetic_detection(tmp_path, {"val": 8}, seed=1, size=96)["val"]
    perfect = [{"image_id": t["image_id"], "boxes": t["boxes"], "labels": t["labels"], "scores": torch.ones(len(t["labels"]))}
               for t in (ds.target(i) for i in range(len(ds)))]
    assert coco_evaluate(ds.coco, perfect, ds.label_to_cat)["AP"] == pytest.approx(1.0)
    assert coco_evaluate(ds.coco, [], ds.label_to_cat)["AP"] == 0.0


def test_reuse_and_clear_errors(tmp_path):
    generate_scenes(tmp_path, "x", 3, seed=0)
    stamp = (tmp_path / "x" / "000000000001.png").stat().st_mtime_ns
    generate_scenes(tmp_path, "x", 3, seed=0)  # same arguments: reused
    assert (tmp_path / "x" / "000000000001.png").stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="other arguments"):
        generate_scenes(tmp_path, "x", 4, seed=0)
    generate_scenes(tmp_path, "x", 4, seed=0, overwrite=True)
    assert len(coco_split(tmp_path, "x")) == 4
    with pytest.raises(ValueError, match="num_classes"):
        generate_scenes(tmp_path, "y", 2, num_classes=9)
    with pytest.raises(TypeError, match="unknown scene arguments"):
        generate_scenes(tmp_path, "y", 2, colour="red")
