"""Real-data pipelines on fixtures in the publishers' formats: every test split the paper reports is
evaluated (300W common/challenging/full), AFLW's missing points are masked in the loss, the search,
the GHCU and the NME."""

import json

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module

import landmark_ambiguity.data as data_mod
from landmark_ambiguity.heatmaps import gaussian_heatmaps, heatmap_loss
from landmark_ambiguity.search import SearchConfig
from landmark_ambiguity.train import fit, landmark_errors, search_labels

SMALL = ["data.image_size=32", "model.width=8", "model.depth=2", "epochs=2", "batch_size=2", "search.start_epoch=1",
         "ghcu.epochs=1", "ghcu.channels=[8]", "ghcu.hidden=16", "eval.overlays=2", "threads=1", "device=cpu"]


def _cfg(overrides):
    with initialize_config_module("landmark_ambiguity.conf", version_base="1.3"):
        return compose("train", overrides=overrides)


def test_300w_reports_common_challenging_and_full(w300_root, tmp_path):
    cfg = _cfg(["experiment=300w_hg4_sa_ghcu", "model=hg2_w32", f"data.root={w300_root}", *SMALL,
                "search.window_radius=2", "eval.norm=inter_pupil"])
    r = fit(cfg, tmp_path / "run")
    for split in ("common", "challenging", "full"):
        for tag in ("", "ghcu_"):
            assert np.isfinite(r[f"test_{split}_{tag}nme"]), (split, tag)
    # full = common + challenging: its mean NME is the image-weighted mean of the two (3 and 2 images)
    for tag in ("", "ghcu_"):
        want = (3 * r[f"test_common_{tag}nme"] + 2 * r[f"test_challenging_{tag}nme"]) / 5
        assert r[f"test_full_{tag}nme"] == pytest.approx(want, rel=1e-6)  # float32 NME
    saved = json.loads((tmp_path / "run" / "final_metrics.json").read_text())
    assert saved["test_full_nme"] == r["test_full_nme"] and r["search_passes"] == 1
    errors = np.load(tmp_path / "run" / "test_errors.npz")
    assert sorted(errors.files) == sorted(f"{s}/{m}" for s in ("common", "challenging", "full") for m in ("HG", "GHCU"))


def _aflw_cfg(root):
    return _cfg(["experiment=aflw_hg4_sa_ghcu", "model=hg2_w32", f"data.root={root}", *SMALL, "search.window_radius=2"])


def test_aflw_missing_points_do_not_count(aflw_root, tmp_path, monkeypatch):
    """Moving the coordinates AFLW does not annotate (stored as 0) changes nothing: not the weights (loss),
    not the searched labels, not the GHCU, not the NME."""
    r1 = fit(_aflw_cfg(aflw_root), tmp_path / "a")
    assert {"test_full_test_nme", "test_frontal_test_nme", "test_full_test_ghcu_nme"} <= set(r1)
    read = data_mod.read_aflw

    def moved(root, split=None):
        out = read(root, split)
        for s in out:
            s.landmarks[~s.visible] = 17.0
        return out

    monkeypatch.setattr(data_mod, "read_aflw", moved)
    r2 = fit(_aflw_cfg(aflw_root), tmp_path / "b")
    wa = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    wb = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    for k in wa["model"]:
        torch.testing.assert_close(wa["model"][k], wb["model"][k], rtol=0, atol=0)
    train, _ = data_mod.build_data(_aflw_cfg(aflw_root).data)
    mask = train["annotated"]
    assert (~mask).sum() == 1  # face 3 misses one point (face 5, with two missing, is a test face)
    torch.testing.assert_close(wa["labels"][mask], wb["labels"][mask], rtol=0, atol=0)
    for key in ("test_full_test_nme", "test_frontal_test_nme", "test_full_test_ghcu_nme"):
        assert r1[key] == pytest.approx(r2[key], rel=1e-6), key


def test_masks_in_loss_search_and_nme():
    torch.manual_seed(0)
    pts = torch.rand(2, 3, 2) * 10 + 3
    target = gaussian_heatmaps(pts, (16, 16), 1.0)
    out = [torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)]
    mask = torch.tensor([[True, False, True], [True, True, True]])
    other = target.clone()
    other[0, 1] = gaussian_heatmaps(pts[:1, 1:2] + 4, (16, 16), 1.0)[0, 0]
    assert heatmap_loss(out, target, mask) == heatmap_loss(out, other, mask)
    assert heatmap_loss(out, target) != heatmap_loss(out, other)
    manual = sum(((o - target) ** 2 * mask[..., None, None]).sum() / 2 for o in out)
    torch.testing.assert_close(heatmap_loss(out, target, mask), manual)
    # NME: a wrong prediction on an unannotated point does not count
    gt = torch.rand(2, 68, 2) * 40
    pred = gt + 1.0
    m68 = torch.ones(2, 68, dtype=torch.bool)
    m68[0, 5] = False
    worse = pred.clone()
    worse[0, 5] += 30
    cfg = _cfg([])
    assert landmark_errors(worse, gt, cfg, mask=m68) == landmark_errors(pred, gt, cfg, mask=m68)
    assert landmark_errors(worse, gt, cfg)["nme"] > landmark_errors(pred, gt, cfg)["nme"]


def test_search_leaves_unannotated_points_alone():
    from landmark_ambiguity.model import build_model

    torch.manual_seed(0)
    model = build_model("hg2_w32", num_landmarks=5, width=8, depth=2)
    images = torch.randint(0, 255, (3, 3, 32, 32), dtype=torch.uint8)
    labels = torch.rand(3, 5, 2) * 20 + 6
    ann = torch.ones(3, 5, dtype=torch.bool)
    ann[1, 2] = False
    y = search_labels(model, images, labels, SearchConfig(lam=100.0, window_radius=2), 4, "cpu", ann)
    assert torch.equal(y[1, 2], labels[1, 2]) and not torch.equal(y[ann], labels[ann])
