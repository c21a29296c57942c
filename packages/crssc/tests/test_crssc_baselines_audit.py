"""Baselines (co-teaching, confident learning, the official co-teaching CRSSC) and the label-audit API."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from crssc import audit_labels, find_label_issues
from crssc.audit import grouped_partition
from crssc.baselines import (
    confident_joint,
    coteaching_loss,
    cot_crssc_loss,
    forget_rate_schedule,
    prune_by_noise_rate,
)
from crssc.method import PredictionMemory, certainty_score, ls_cross_entropy, select_partition, smoothed_targets

# ------------------------------------------------------------------------------ co-teaching


def test_forget_rate_schedule_is_the_authors_linspace_then_constant():
    tau = 0.4
    want = np.linspace(0, tau, 10)
    assert [forget_rate_schedule(e, tau, 10) for e in range(10)] == pytest.approx(list(want))
    assert forget_rate_schedule(10, tau, 10) == forget_rate_schedule(50, tau, 10) == tau
    assert forget_rate_schedule(9, 0.5, 10, exponent=2) == pytest.approx(0.25)  # linspace(0, tau ** c)


def test_coteaching_each_network_trains_on_its_peers_small_loss_samples():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(10, 4, generator=g), torch.randn(10, 4, generator=g)
    y = torch.randint(0, 4, (10,), generator=g)
    out = coteaching_loss(z1, z2, y, forget_rate=0.35)  # keep int(0.65 * 10) = 6
    l1, l2 = F.cross_entropy(z1, y, reduction="none"), F.cross_entropy(z2, y, reduction="none")
    small1, small2 = torch.argsort(l1)[:6], torch.argsort(l2)[:6]
    assert sorted(torch.nonzero(out.keep1).flatten().tolist()) == sorted(small1.tolist())
    assert out.loss1.item() == pytest.approx(l1[small2].sum().item() / 6, abs=1e-6)  # net 1 on net 2's picks
    assert out.loss2.item() == pytest.approx(l2[small1].sum().item() / 6, abs=1e-6)
    assert out.loss.item() == pytest.approx(out.loss1.item() + out.loss2.item())
    full = coteaching_loss(z1, z2, y, forget_rate=0.0)
    assert full.loss1.item() == pytest.approx(l1.mean().item(), abs=1e-6)


# ------------------------------------------------------------------------------ confident learning


def _brute_confident_joint(labels, probs):
    n, c = probs.shape
    t = [probs[labels == k, k].mean() for k in range(c)]
    joint = np.zeros((c, c))
    for i in range(n):
        best, best_p = None, -1.0
        for k in range(c):
            if probs[i, k] >= t[k] and probs[i, k] > best_p:
                best, best_p = k, probs[i, k]
        if best is not None:
            joint[labels[i], best] += 1
    counts = np.bincount(labels, minlength=c)
    return joint / joint.sum(1, keepdims=True) * counts[:, None]


def _planted(seed=0, n=300, c=4, flip=0.3):
    rng = np.random.default_rng(seed)
    true = rng.integers(0, c, n)
    labels = true.copy()
    flipped = rng.random(n) < flip
    labels[flipped] = (true[flipped] + rng.integers(1, c, flipped.sum())) % c
    logits = rng.normal(size=(n, c)) + 3.0 * np.eye(c)[true]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return labels, probs, flipped


def test_confident_joint_equals_a_brute_force_loop():
    labels, probs, _ = _planted()
    assert np.allclose(confident_joint(labels, probs), _brute_confident_joint(labels, probs))


def test_confident_joint_counts_a_probability_equal_to_its_threshold():
    labels = np.array([0, 0, 1, 1])
    probs = np.array([[0.5, 0.5], [0.5, 0.5], [0.25, 0.75], [0.25, 0.75]])  # t = (0.5, 0.75): ties at the threshold
    joint = confident_joint(labels, probs, calibrate=False)
    assert joint.tolist() == [[2.0, 0.0], [0.0, 2.0]]  # p >= t (argmax among the classes at or above threshold)


def test_prune_by_noise_rate_equals_a_per_cell_loop_and_finds_planted_flips():
    labels, probs, flipped = _planted(seed=1)
    issues = prune_by_noise_rate(labels, probs)
    joint = np.rint(confident_joint(labels, probs)).astype(int)
    want = np.zeros(len(labels), bool)
    for i in range(probs.shape[1]):
        members = np.flatnonzero(labels == i)
        for j in range(probs.shape[1]):
            if i != j and joint[i, j]:
                margin = probs[members, j] - probs[members, i]
                want[members[np.argsort(-margin, kind="stable")[: joint[i, j]]]] = True
    assert np.array_equal(issues, want)
    precision = (issues & flipped).sum() / issues.sum()
    recall = (issues & flipped).sum() / flipped.sum()
    assert precision > 0.8 and recall > 0.6, (precision, recall)


# ------------------------------------------------------------------------------ the official co-teaching CRSSC


def _memory(n, c, labels):
    mem = PredictionMemory(n, 5)
    rows = torch.full((n, c), 0.1 / (c - 1))
    rows[torch.arange(n), torch.as_tensor(labels)] = 0.9
    mem.update(torch.arange(n), rows)
    return mem


def test_cot_crssc_cross_updates_with_the_peer_threshold_and_each_networks_history():
    g = torch.Generator().manual_seed(3)
    n, c, eps = 16, 5, 0.2
    z1, z2 = torch.randn(n, c, generator=g) * 3, torch.randn(n, c, generator=g) * 3
    y = torch.randint(0, c, (n,), generator=g)
    mem1, mem2 = _memory(n, c, (y + 1) % c), _memory(n, c, (y + 2) % c)
    out = cot_crssc_loss(z1, z2, y, torch.arange(n), mem1, mem2, epoch=3, warmup=3, eps=eps)
    l1, l2 = ls_cross_entropy(z1, y, eps), ls_cross_entropy(z2, y, eps)
    clean1, clean2 = l1 < l1.mean(), l2 < l2.mean()
    c1 = certainty_score(F.softmax(z1, 1))
    t1 = c1[clean2].mean()  # network 1's certainty threshold is taken on network 2's clean set
    assert out.partition1.threshold.item() == pytest.approx(t1.item(), rel=1e-6)
    assert torch.equal(out.partition1.reusable, ~clean1 & (c1 >= out.partition1.threshold))
    assert out.partition1.reusable.any() and out.partition2.reusable.any()
    # network 2 trains on clean1 (given labels) and network 1's reusable set with memory 2's labels
    keep2 = clean1 | out.partition1.reusable
    t2 = torch.where(out.partition1.reusable, (y + 2) % c, y)
    assert torch.equal(out.targets2[keep2], t2[keep2])
    per2 = -(smoothed_targets(t2, c, eps) * F.log_softmax(z2, 1)).sum(1)
    assert out.loss2.item() == pytest.approx(per2[keep2].mean().item(), abs=1e-5)
    keep1 = clean2 | out.partition2.reusable
    t1_labels = torch.where(out.partition2.reusable, (y + 1) % c, y)
    per1 = -(smoothed_targets(t1_labels, c, eps) * F.log_softmax(z1, 1)).sum(1)
    assert out.loss1.item() == pytest.approx(per1[keep1].mean().item(), abs=1e-5)
    # the released trainer's mix-up: one memory for both networks
    shared = cot_crssc_loss(z1, z2, y, torch.arange(n), mem1, mem1, epoch=3, warmup=3, eps=eps)
    assert torch.equal(shared.targets2[out.partition1.reusable], ((y + 1) % c)[out.partition1.reusable])
    warm = cot_crssc_loss(z1, z2, y, torch.arange(n), mem1, mem2, epoch=2, warmup=3, eps=eps)
    assert warm.warmup and warm.loss1.item() == pytest.approx(l1.mean().item(), abs=1e-6)


# ------------------------------------------------------------------------------ audit API


def _probs(n=40, c=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    p = F.softmax(torch.randn(n, c, generator=g) * 2.5, 1)
    return p, torch.randint(0, c, (n,), generator=g)


def test_audit_one_batch_equals_the_training_selection():
    p, y = _probs()
    report = audit_labels(y.numpy(), p.numpy())
    losses = ls_cross_entropy(torch.log(p), y, 0.2)  # log-probabilities are valid logits
    part = select_partition(losses, certainty_score(p))
    assert np.array_equal(report.clean, part.clean.numpy())
    assert np.array_equal(report.reusable, part.reusable.numpy())
    assert np.array_equal(report.dropped, part.dropped.numpy())
    assert (report.clean.astype(int) + report.reusable + report.dropped == 1).all()
    assert np.array_equal(report.corrected_labels[report.reusable], p.argmax(1).numpy()[report.reusable])
    assert np.array_equal(report.corrected_labels[report.clean], y.numpy()[report.clean])
    assert (report.corrected_labels[report.dropped] == -1).all()
    assert np.array_equal(find_label_issues(y, p), ~report.clean)


def test_audit_per_batch_equals_separate_calls_and_uses_the_history():
    p, y = _probs(n=50, seed=1)
    report = audit_labels(y, p, batch_size=16)
    for start in range(0, 50, 16):
        sl = slice(start, start + 16)
        part = select_partition(ls_cross_entropy(torch.log(p[sl]), y[sl], 0.2), certainty_score(p[sl]))
        assert np.array_equal(report.clean[sl], part.clean.numpy())
        assert np.array_equal(report.reusable[sl], part.reusable.numpy())
    history = torch.stack([_probs(n=50, seed=s)[0] for s in (7, 8, 9)])
    with_history = audit_labels(y, p, pred_probs_history=history, batch_size=16)
    mem = PredictionMemory(50, 3)
    for past in history:
        mem.update(torch.arange(50), past)
    want = mem.most_prob_labels(torch.arange(50)).numpy()
    r = with_history.reusable
    assert r.any() and np.array_equal(with_history.corrected_labels[r], want[r])


def test_grouped_partition_with_one_group_and_official_rule():
    losses = torch.tensor([1.0, 1.0, 5.0, 5.0], dtype=torch.float64)
    cert = torch.tensor([0.25, 0.25, 0.5, 0.75], dtype=torch.float64)
    group = torch.zeros(4, dtype=torch.long)
    _, reusable, dropped, _ = grouped_partition(losses, cert, group, 1, "official")
    assert reusable.sum() == 0 and dropped.sum() == 2
    _, reusable, _, _ = grouped_partition(losses, cert, group, 1, "paper")
    assert reusable.tolist() == [False, False, True, True]


def test_find_label_issues_ranking_and_shuffled_batches():
    p, y = _probs(n=60, seed=2)
    ranked = find_label_issues(y, p, return_indices_ranked_by="loss")
    report = audit_labels(y, p)
    assert set(ranked.tolist()) == set(np.flatnonzero(~report.clean).tolist())
    assert (np.diff(report.loss[ranked]) <= 0).all()
    by_cert = find_label_issues(y, p, return_indices_ranked_by="certainty")
    assert (np.diff(report.certainty[by_cert]) >= 0).all()
    a = audit_labels(y, p, batch_size=20, shuffle_seed=5)
    b = audit_labels(y, p, batch_size=20, shuffle_seed=6)
    assert not np.array_equal(a.clean, b.clean)  # the shuffle changes the batches
    assert a.summary()["n"] == 60


@pytest.mark.parametrize("bad, match", [
    (dict(labels=[0, 1, 7]), r"labels must lie in \[0, 3\)"),
    (dict(pred_probs=[[0.5, 0.6, 0.0]] * 3), "sum to 1"),
    (dict(labels=[0, 1]), "labels must have shape"),
    (dict(batch_size=0), "batch_size"),
    (dict(certainty="margin"), "certainty"),
])
def test_audit_rejects_bad_input_with_one_clear_message(bad, match):
    args = dict(labels=[0, 1, 2], pred_probs=[[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4]])
    args.update(bad)
    labels, probs = args.pop("labels"), args.pop("pred_probs")
    with pytest.raises(ValueError, match=match):
        audit_labels(labels, probs, **args)
