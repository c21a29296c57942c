"""RetinaNet on a DPT backbone: FPN levels and strides, and an end-to-end fit + pycocotools
evaluation on a tiny COCO fixture written in the real format."""

from collections import OrderedDict

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from PIL import Image

from shared.data.coco import write_coco_json

from depatch.detection import BackboneWithFPN, build_retinanet
from depatch.pvt import create_model
from depatch.train import fit


@pytest.fixture()
def coco_root(tmp_path):
    """4 train + 2 val images (64x64 jpg) with red squares (category 3) and blue bars (category 7)."""
    root = tmp_path / "coco"
    rng = np.random.default_rng(0)
    for split, n in (("train2017", 4), ("val2017", 2)):
        (root / split).mkdir(parents=True)
        images, anns = [], []
        for k in range(n):
            img_id = 100 * (split == "val2017") + k + 1
            arr = np.full((64, 64, 3), 200, np.uint8)
            x, y = rng.integers(2, 30, 2)
            arr[y:y + 20, x:x + 20] = (220, 30, 30)
            arr[50:58, 4:60] = (30, 30, 220)
            name = f"{img_id:012d}.jpg"
            Image.fromarray(arr).save(root / split / name)
            images.append({"id": img_id, "file_name": name, "width": 64, "height": 64})
            anns += [{"image_id": img_id, "category_id": 3, "bbox": [int(x), int(y), 20, 20]},
                     {"image_id": img_id, "category_id": 7, "bbox": [4, 50, 56, 8]}]
        write_coco_json(root / "annotations" / f"instances_{split}.json", images, anns,
                        [{"id": 3, "name": "square"}, {"id": 7, "name": "bar"}])
    return root


def test_fpn_levels_and_strides_match_the_official_retinanet_neck():
    body = create_model("dpt_mini", features_only=True, out_indices=(1, 2, 3))
    neck = BackboneWithFPN(body, 32).eval()
    with torch.no_grad():
        out = neck(torch.randn(1, 3, 128, 96))
    assert isinstance(out, OrderedDict) and list(out) == ["0", "1", "2", "p6", "p7"]
    # P3-P5 from stages 2-4 (strides 8/16/32), P6/P7 from C5 by stride-2 convs ('on_input')
    assert [tuple(v.shape) for v in out.values()] == [(1, 32, 16, 12), (1, 32, 8, 6), (1, 32, 4, 3), (1, 32, 2, 2), (1, 32, 1, 1)]
    assert neck.fpn.extra_blocks.p6.in_channels == 128  # computed from the backbone map, not P5
    det = build_retinanet("dpt_tiny", num_classes=81)
    assert det.head.classification_head.num_classes == 81
    assert det.anchor_generator.num_anchors_per_location() == [9] * 5


def test_detection_fit_and_coco_evaluation_on_fixture(coco_root, tmp_path):
    overrides = ["task=detection", "data=coco", f"data.root={coco_root}", "data.num_classes=2", "data.min_size=[64]",
                 "data.max_size=64", "data.anchor_sizes=[8,16,32,64,128]", "data.score_thresh=0.0", "data.fpn_channels=32",
                 "optim=detection_1x", "optim.warmup_iters=1", "model=dpt_mini", "batch_size=2", "eval_batch_size=2",
                 "epochs=1", "max_steps=2", "device=cpu", "log_interval_s=1000", "threads=1", "weights=none"]
    with initialize_config_module(config_module="depatch.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    out = fit(cfg, tmp_path / "run")
    assert out["step"] == 2  # 4 images / batch 2 = 2 steps = one full epoch
    assert set(out) >= {"AP", "AP50", "AP75", "APs", "APm", "APl", "num_detections", "train_loss"}
    assert 0 < out["num_detections"] <= 2 * 100  # score_thresh 0: up to detections_per_img boxes per image
    assert 0.0 <= out["AP"] <= out["AP50"] <= 1.0
    assert np.isfinite(out["train_loss"])
    ck = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert ck["model_args"] == {"arch": "dpt_mini", "task": "detection", "num_classes": 3, "depatch_stages": [2, 3, 4],
                                "predict_size": True, "num_points": 3} and ck["epoch"] == 1
    # detections come back in original-image pixels
    from depatch.data import coco_splits
    from depatch.detection import predict_coco
    from shared.data.coco import detection_collate

    model = build_retinanet("dpt_mini", num_classes=3, min_size=64, max_size=64, anchor_sizes=(8, 16, 32, 64, 128),
                            score_thresh=0.0, fpn_channels=32)
    model.load_state_dict(ck["model"])
    _, val = coco_splits(cfg.data)
    dets = predict_coco(model, torch.utils.data.DataLoader(val, batch_size=2, collate_fn=detection_collate), torch.device("cpu"))
    assert sorted(d["image_id"] for d in dets) == [101, 102]
    boxes = torch.cat([d["boxes"] for d in dets])
    assert boxes.min() >= 0 and boxes.max() <= 64
    assert all((d["labels"] >= 1).all() and (d["labels"] <= 2).all() for d in dets)  # background slot dropped


def test_missing_coco_is_a_clear_error(tmp_path):
    from shared.errors import ConfigError, DatasetNotFoundError

    with initialize_config_module(config_module="depatch.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=["task=detection", "data=coco", f"data.root={tmp_path}/nope",
                                                      "device=cpu", "weights=none"])
    with pytest.raises(DatasetNotFoundError, match="COCO not found"):
        fit(cfg, tmp_path / "run")
    with initialize_config_module(config_module="depatch.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=["task=detection", "device=cpu", "weights=none"])
    with pytest.raises(ConfigError, match="data.kind='synthetic' is not a known name.*use one of: coco"):
        fit(cfg, tmp_path / "run2")
    assert not (tmp_path / "run2").exists()  # refused before the run started


def test_detector_backbone_loads_an_imagenet_classifier_checkpoint(tmp_path):
    """The COCO recipes start from an ImageNet classifier: its head, cls token and final norm are skipped,
    every backbone parameter is loaded."""
    torch.manual_seed(0)
    cls = create_model("dpt_mini", num_classes=1000)
    torch.save({"model": cls.state_dict()}, tmp_path / "dpt_mini_in1k.pth")
    det = build_retinanet("dpt_mini", num_classes=3, min_size=64, max_size=64, fpn_channels=32,
                          pretrained=str(tmp_path / "dpt_mini_in1k.pth"))
    body = det.backbone.body.state_dict()
    assert set(body) == set(cls.state_dict()) - {"head.weight", "head.bias", "cls_token", "norm.weight", "norm.bias"}
    assert all(torch.equal(v, cls.state_dict()[k]) for k, v in body.items())
