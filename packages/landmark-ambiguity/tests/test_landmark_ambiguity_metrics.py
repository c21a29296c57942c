"""NME (both normalisations) on a hand-computed case, AUC/FR/CED, the ambiguity simulator."""

import numpy as np
import pytest
import torch

from landmark_ambiguity import metrics as M
from landmark_ambiguity.ambiguity import AmbiguityConfig, simulate_annotations, tangents, weak_mask
from shared.data.faces import generate_faces


def _shape():
    gt = torch.zeros(1, 68, 2, dtype=torch.float64)
    gt[0, 36:42] = torch.tensor([0.0, 10.0])  # right eye: every point at (0, 10) -> centre (0, 10)
    gt[0, 42:48] = torch.tensor([40.0, 10.0])
    gt[0, 36] = torch.tensor([-10.0, 10.0])  # outer corners 60 apart; eye centres (-10/6, 10) and (50/6, 10)
    gt[0, 45] = torch.tensor([50.0, 10.0])
    return gt


def test_nme_hand_computed():
    gt = _shape()
    pred = gt.clone()
    pred[0, :34, 0] += 3.0  # 34 points off by 3 px, 34 exact -> mean error 1.5 px
    pred[0, 34:, 1] += 0.0
    assert M.nme(pred, gt, "inter_ocular").item() == pytest.approx(1.5 / 60)
    pupil = abs(50 / 6 + 40 * 5 / 6 - (-10 / 6))  # centres: (40*5 + 50)/6 and (0*5 - 10)/6
    assert M.nme(pred, gt, "inter_pupil").item() == pytest.approx(1.5 / pupil)
    boxes = torch.tensor([[0.0, 0.0, 20.0, 80.0]])
    assert M.nme(pred, gt, "box", boxes).item() == pytest.approx(1.5 / 40)
    mask = torch.zeros(1, 68, dtype=torch.bool)
    mask[0, :34] = True
    assert M.nme(pred, gt, "inter_ocular", mask=mask).item() == pytest.approx(3 / 60)
    with pytest.raises(ValueError, match="unknown NME"):
        M.nme(pred, gt, "iod")
    with pytest.raises(ValueError, match="68-point"):
        M.nme(pred[:, :19], gt[:, :19], "inter_ocular")


def test_auc_failure_rate_and_ced():
    e = np.array([0.0, 0.02, 0.04, 0.1])
    assert M.failure_rate(e, 0.08) == 0.25
    # area under the step CED on [0, 0.08] / 0.08 = mean(max(0, 0.08 - e)) / 0.08
    assert M.auc(e, 0.08) == pytest.approx((0.08 + 0.06 + 0.04 + 0) / 4 / 0.08)
    t, f = M.ced(e, 0.08, 5)
    np.testing.assert_allclose(t, [0, 0.02, 0.04, 0.06, 0.08])
    np.testing.assert_allclose(f, [0.25, 0.5, 0.75, 0.75, 0.75])
    # numerical integral of the CED agrees with the closed form
    t, f = M.ced(e, 0.08, 80001)
    assert np.trapezoid(f, t) / 0.08 == pytest.approx(M.auc(e, 0.08), abs=1e-4)


def test_simulator_slides_weak_points_along_the_tangent_with_annotator_bias():
    b = generate_faces(64, 64, seed=0)
    cfg = AmbiguityConfig(normal_std=0.0, strong_std=0.0, tangent_std=0.0, bias_std=0.1, num_annotators=3)
    noisy, ann = simulate_annotations(b.landmarks, cfg, seed=1)
    off = noisy - b.landmarks
    weak = weak_mask(cfg.weak_groups)
    assert np.abs(off[:, ~weak]).max() == 0
    tan = tangents(b.landmarks)
    normal_part = np.abs(off[..., 0] * tan[..., 1] - off[..., 1] * tan[..., 0])
    assert normal_part[:, weak].max() < 1e-4  # purely tangential
    # same annotator, same landmark -> the same slide in units of the inter-ocular distance
    iod = np.linalg.norm(b.landmarks[:, 36] - b.landmarks[:, 45], axis=-1)
    slide = (off * tan).sum(-1) / iod[:, None]
    for a in range(3):
        rows = slide[ann == a][:, weak]
        assert np.allclose(rows, rows[0], atol=1e-4)
    assert not np.allclose(slide[ann == 0][0, weak], slide[ann == 1][0, weak])


def test_ced_axis_comes_from_the_data(tmp_path):
    rng = np.random.default_rng(0)
    good = rng.uniform(0, 0.05, 100)
    bad = rng.uniform(0.05, 0.3, 100)  # most images fail at 0.08
    assert M.ced_axis_limit({"a": good}, 0.08) == 0.08  # never below the threshold
    lim = M.ced_axis_limit({"a": good, "b": bad}, 0.08)
    assert np.quantile(bad, 0.99) <= lim < np.quantile(bad, 0.99) + 0.02 + 1e-12
    assert lim == pytest.approx(round(lim / 0.02) * 0.02)
    path = M.plot_ced({"a": good, "b": bad}, tmp_path / "ced.png", 0.08)
    assert path.is_file() and path.stat().st_size > 1000


def test_nme_counts_only_masked_points_and_box_norm():
    gt = torch.zeros(2, 4, 2, dtype=torch.float64)
    pred = gt.clone()
    pred[:, 0, 0] = 2.0  # point 0 off by 2 px in both images
    mask = torch.tensor([[True, True, False, False], [False, True, True, True]])
    boxes = torch.tensor([[0.0, 0.0, 4.0, 16.0], [0.0, 0.0, 10.0, 10.0]])
    np.testing.assert_allclose(M.nme(pred, gt, "box", boxes, mask).numpy(), [1.0 / 8, 0.0])
