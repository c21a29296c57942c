"""Evaluation protocols on hand-made cases with known answers."""

import math

import numpy as np
import pytest
import torch

from ir_softmax.evaluation import (
    best_threshold,
    cosine_scores,
    identification_with_distractors,
    pool_queries,
    reid_cmc_map,
    roc_curve,
    tar_at_far,
    verification_10fold,
)


def test_best_threshold_known_answers():
    thr, acc = best_threshold([0.1, 0.4, 0.35, 0.8], [False, True, False, True])
    assert thr == pytest.approx(0.375) and acc == 1.0
    thr, acc = best_threshold([0.9, 0.2, 0.5, 0.1, 0.6], [False, True, True, False, True])
    assert thr == pytest.approx(0.15) and acc == pytest.approx(0.8)
    thr, acc = best_threshold([0.5, 0.5, 0.7], [False, True, True])  # a tie: both orders of 0.5 are one candidate
    assert acc == pytest.approx(2 / 3) and thr < 0.5


def test_verification_10fold_uses_the_other_folds_threshold():
    # fold 0 is perfectly separated by the others' threshold, fold 1 half, fold 2 not at all (worked by hand)
    scores = [0.9, 0.1, 0.6, 0.4, 0.45, 0.55]
    same = [True, False, True, False, True, False]
    out = verification_10fold(scores, same, folds=[0, 0, 1, 1, 2, 2])
    assert out["fold_accuracy"] == [1.0, 0.5, 0.0]
    assert out["thresholds"] == pytest.approx([0.425, 0.275, 0.5])
    assert out["accuracy"] == pytest.approx(0.5) and out["std"] == pytest.approx(math.sqrt(1 / 6))


def test_verification_a_score_equal_to_the_threshold_is_called_different():
    out = verification_10fold([0.2, 0.6, 0.4, 0.3, 0.5], [False, True, False, False, True], folds=[0, 0, 0, 1, 1])
    assert out["thresholds"] == pytest.approx([0.4, 0.5]) and out["fold_accuracy"] == [1.0, 0.5]


def test_verification_10fold_default_folds_are_contiguous_blocks():
    rng = np.random.default_rng(0)
    same = np.tile([True] * 3 + [False] * 3, 10)
    scores = np.where(same, 0.7, 0.3) + 0.01 * rng.standard_normal(60)
    scores[0] = 0.1  # one mistake in fold 0 only
    out = verification_10fold(scores, same)
    assert out["fold_accuracy"][0] == pytest.approx(5 / 6) and all(a == 1.0 for a in out["fold_accuracy"][1:])


def test_tar_at_far_known_answers():
    neg = np.round(np.arange(1, 11) / 10, 2)
    pos = np.array([0.95, 0.85, 0.5, 0.9])  # 0.9 sits exactly on the FAR=0.1 threshold: not accepted
    s = np.concatenate([neg, pos])
    y = np.array([False] * 10 + [True] * 4)
    out = tar_at_far(s, y, [0.0, 0.1, 0.2, 1.0])
    assert out[0.1] == (pytest.approx(1 / 4), 0.9)
    assert out[0.0][0] == 0.0 and out[0.0][1] == 1.0
    assert out[0.2][0] == pytest.approx(3 / 4) and out[1.0][0] == 1.0


def test_roc_auc_is_the_mann_whitney_statistic():
    out = roc_curve([0.8, 0.6, 0.7, 0.1], [True, True, False, False])
    assert out["auc"] == pytest.approx(0.75)
    assert out["fpr"][0] == 0 and out["tpr"][-1] == 1 and out["fpr"][-1] == 1
    rng = np.random.default_rng(1)
    s = rng.integers(0, 8, 300) / 8.0  # many ties
    y = rng.random(300) < 0.4
    sp, sn = s[y][:, None], s[~y][None]
    ref = (sp > sn).mean() + 0.5 * (sp == sn).mean()
    assert roc_curve(s, y)["auc"] == pytest.approx(ref, abs=1e-12)


def _reid_case():
    # gallery:      0: id1 cam1 (same camera -> junk), 1: id -1 (junk), 2: id2 cam2, 3: id1 cam2,
    #               4: id0 cam3 (distractor: a negative), 5: id1 cam3
    g_pids, g_cams = [1, -1, 2, 1, 0, 1], [1, 1, 2, 2, 3, 3]
    # query 0 (id1 cam1) ranks the gallery in index order; query 1 (id2 cam1) ranks 2 first;
    # query 2 (id7) has no true match and is excluded
    dist = np.array([[0, 1, 2, 3, 4, 5], [5, 4, 0, 3, 2, 1], [0, 1, 2, 3, 4, 5]], dtype=float)
    return dist, [1, 2, 7], g_pids, [1, 1, 1], g_cams


def test_cmc_map_market_protocol_known_answers():
    dist, qp, gp, qc, gc = _reid_case()
    std = reid_cmc_map(dist, qp, gp, qc, gc, max_rank=3, ap="standard")
    # query 0 kept ranking: 2 (neg), 3 (hit), 4 (neg), 5 (hit) -> AP (1/2 + 2/4) / 2 = 0.5; first hit at rank 2
    # query 1 kept ranking: 2 (hit) -> AP 1
    assert std["num_valid"] == 2 and np.isnan(std["ap"][2])
    assert std["ap"][:2] == pytest.approx([0.5, 1.0]) and std["mAP"] == pytest.approx(0.75)
    assert std["cmc"] == pytest.approx([0.5, 1.0, 1.0])
    market = reid_cmc_map(dist, qp, gp, qc, gc, max_rank=3, ap="market")
    # the official kit's trapezoid: hit 1 (0 + 1/2)/2, hit 2 (1/3 + 2/4)/2, mean -> 1/3
    assert market["ap"][:2] == pytest.approx([1 / 3, 1.0]) and market["mAP"] == pytest.approx(2 / 3)


def test_cmc_map_chunking_does_not_change_the_answer():
    rng = np.random.default_rng(0)
    q, g = 37, 120
    qp, gp = rng.integers(0, 10, q), rng.integers(-1, 10, g)
    qc, gc = rng.integers(1, 4, q), rng.integers(1, 4, g)
    d = rng.random((q, g))
    a = reid_cmc_map(d, qp, gp, qc, gc, chunk=5)
    b = reid_cmc_map(d, qp, gp, qc, gc, chunk=1000)
    assert np.allclose(a["cmc"], b["cmc"]) and a["mAP"] == pytest.approx(b["mAP"])
    assert np.all(np.diff(a["cmc"]) >= 0)


def test_pool_queries_mean_and_max():
    f = torch.tensor([[1.0, 0.0], [3.0, 2.0], [5.0, -1.0]])
    pooled, pids, cams = pool_queries(f, [4, 4, 2], [1, 1, 1])
    assert pids.tolist() == [2, 4] and cams.tolist() == [1, 1]
    assert torch.allclose(pooled, torch.tensor([[5.0, -1.0], [2.0, 1.0]], dtype=torch.float64))
    pooled, _, _ = pool_queries(f, [4, 4, 2], [1, 1, 1], mode="max")
    assert torch.allclose(pooled, torch.tensor([[5.0, -1.0], [3.0, 2.0]], dtype=torch.float64))


def test_identification_with_distractors_known_answers():
    deg = lambda a: [math.cos(math.radians(a)), math.sin(math.radians(a))]  # noqa: E731
    probes = [deg(0), deg(20), deg(90), deg(130)]
    distractors = [deg(200), deg(10), deg(110)]
    out = identification_with_distractors(probes, [0, 0, 1, 1], distractors, sizes=(1, 2, 3))
    assert out == {1: 1.0, 2: 0.5, 3: 0.0}
    with pytest.raises(ValueError, match="distractors"):
        identification_with_distractors(probes, [0, 0, 1, 1], distractors, sizes=(5,))


def test_cosine_scores():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    b = torch.tensor([[3.0, 0.0], [1.0, 1.0]])
    assert torch.allclose(cosine_scores(a, b), torch.tensor([1.0, math.sqrt(0.5)], dtype=torch.float64))
