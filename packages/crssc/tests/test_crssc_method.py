"""The method, line by line: loss, certainty, selection, prediction history, relabelling, the batch loss."""

import math

import pytest
import torch
import torch.nn.functional as F

from crssc.method import (
    PredictionMemory,
    certainty_score,
    crssc_loss,
    ls_cross_entropy,
    select_partition,
    smoothed_targets,
)
from crssc.reference import QueueReference, select_reference


def _logits(n=12, c=5, seed=0, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, generator=g) * scale, torch.randint(0, c, (n,), generator=g)


# ------------------------------------------------------------------------------ loss


def test_ls_ce_with_eps_zero_is_cross_entropy():
    z, y = _logits()
    assert torch.allclose(ls_cross_entropy(z, y, 0.0), F.cross_entropy(z, y, reduction="none"), atol=1e-6)


@pytest.mark.parametrize("eps", [0.1, 0.2, 0.5])
def test_ls_ce_equals_the_soft_target_cross_entropy_in_float64(eps):
    z, y = _logits(n=9, c=7, seed=1)
    target = torch.full((9, 7), eps / 6, dtype=torch.float64)
    target[torch.arange(9), y] = 1 - eps
    want = -(target * F.log_softmax(z.double(), 1)).sum(1)
    assert torch.allclose(ls_cross_entropy(z, y, eps).double(), want, atol=1e-5)
    assert torch.allclose(smoothed_targets(y, 7, eps).double(), target)
    assert ls_cross_entropy(z, y, eps, "mean").item() == pytest.approx(want.mean().item(), abs=1e-5)
    assert ls_cross_entropy(z, y, eps, "sum").item() == pytest.approx(want.sum().item(), abs=1e-4)


def test_ls_ce_differs_from_torch_label_smoothing_by_the_known_amount():
    eps, c = 0.2, 6
    z, y = _logits(n=10, c=c, seed=2)
    ours = ls_cross_entropy(z, y, eps).double()
    torchs = F.cross_entropy(z.double(), y, label_smoothing=eps, reduction="none")
    logp = F.log_softmax(z.double(), 1)
    logp_y = logp.gather(1, y[:, None]).squeeze(1)
    # torch: 1 - eps + eps/C on the label, eps/C elsewhere; ours: 1 - eps and eps/(C-1)
    diff = (eps / c) * logp_y - eps / (c * (c - 1)) * (logp.sum(1) - logp_y)
    assert torch.allclose(ours - torchs, diff, atol=1e-5)
    assert (ours - torchs).abs().max() > 1e-3  # not the same loss


def test_ls_ce_needs_two_classes():
    with pytest.raises(ValueError, match="2 classes"):
        ls_cross_entropy(torch.zeros(2, 1), torch.zeros(2, dtype=torch.long))


# ------------------------------------------------------------------------------ certainty


def test_std_certainty_is_the_unbiased_std_and_ranks_like_sum_of_squares():
    z, _ = _logits(n=50, c=8, seed=3)
    p = F.softmax(z, 1)
    std = certainty_score(p, "std").double()
    pd = p.double()
    want = ((pd - pd.mean(1, keepdim=True)) ** 2).sum(1).div(7).sqrt()  # unbiased: / (C - 1)
    assert torch.allclose(std, want, atol=1e-6)
    collision = certainty_score(p, "collision").double()
    assert torch.allclose(collision, (pd * pd).sum(1), atol=1e-6)
    assert torch.allclose(std ** 2, (collision - 1 / 8) / 7, atol=1e-6)  # std^2 = (sum p^2 - 1/C) / (C - 1)
    assert torch.equal(torch.argsort(std), torch.argsort(collision))


def test_entropy_and_maxprob_certainty():
    p = torch.tensor([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0], [0.25, 0.25, 0.5]])
    assert torch.allclose(certainty_score(p, "entropy"), torch.tensor([-math.log(2), 0.0, -1.5 * math.log(2)]))
    assert torch.equal(certainty_score(p, "maxprob"), torch.tensor([0.5, 1.0, 0.5]))
    with pytest.raises(ValueError, match="certainty"):
        certainty_score(p, "margin")


# ------------------------------------------------------------------------------ selection


def _masks_to_lists(part):
    return [torch.nonzero(m).flatten().tolist() for m in (part.clean, part.reusable, part.dropped)]


@pytest.mark.parametrize("seed", range(20))
def test_partition_equals_the_official_sort_and_split_and_is_disjoint_and_covering(seed):
    z, y = _logits(n=16, c=6, seed=seed, scale=1.0 + seed % 4)
    losses = ls_cross_entropy(z, y, 0.2)
    cert = certainty_score(F.softmax(z, 1))
    part = select_partition(losses, cert)
    assert _masks_to_lists(part) == [list(v) for v in select_reference(losses, cert)]
    total = part.clean.int() + part.reusable.int() + part.dropped.int()
    assert torch.equal(total, torch.ones(16, dtype=torch.int32))


def test_partition_rules_on_hand_made_values():
    losses = torch.tensor([1.0, 2.0, 3.0, 6.0, 7.0, 8.0])  # mean 4.5: the first three are clean
    cert = torch.tensor([0.25, 0.5, 0.75, 0.5, 0.75, 0.25])  # clean mean 0.5
    part = select_partition(losses, cert)
    assert part.clean.tolist() == [True, True, True, False, False, False]
    assert part.threshold.item() == 0.5
    assert part.reusable.tolist() == [False, False, False, True, True, False]  # >= threshold (0.5 itself included)
    assert part.dropped.tolist() == [False, False, False, False, False, True]
    # a loss equal to the mean is not clean (strict <)
    part = select_partition(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.5, 0.5, 0.5]))
    assert part.clean.tolist() == [True, False, False]


def test_a_single_high_loss_sample_is_never_reused():
    part = select_partition(torch.tensor([1.0, 1.0, 1.0, 9.0]), torch.tensor([0.1, 0.1, 0.1, 0.9]))
    assert part.reusable.sum() == 0 and part.dropped.tolist() == [False, False, False, True]


def test_empty_clean_set_gives_nan_threshold_and_no_reuse():
    part = select_partition(torch.full((5,), 2.0), torch.rand(5))
    assert part.clean.sum() == 0 and math.isnan(part.threshold.item())
    assert part.reusable.sum() == 0 and part.dropped.all()


def test_all_certain_rule_paper_reuses_all_official_reuses_none():
    losses = torch.tensor([1.0, 1.0, 5.0, 5.0])
    cert = torch.tensor([0.25, 0.25, 0.5, 0.75])  # every high-loss sample is above the clean mean 0.25
    assert select_partition(losses, cert, "paper").reusable.tolist() == [False, False, True, True]
    official = select_partition(losses, cert, "official")
    assert official.reusable.sum() == 0 and official.dropped.tolist() == [False, False, True, True]
    assert _masks_to_lists(official) == [list(v) for v in select_reference(losses, cert, "official")]
    # with one sample below the threshold both rules agree
    cert2 = torch.tensor([0.25, 0.25, 0.5, 0.125])
    assert select_partition(losses, cert2, "official").reusable.tolist() == [False, False, True, False]
    with pytest.raises(ValueError, match="all_certain"):
        select_partition(losses, cert, "sometimes")


# ------------------------------------------------------------------------------ prediction history


def _onehotish(preds, probs, c):
    """Softmax-like rows whose max is exactly ``prob`` at ``pred`` (the rest spread evenly)."""
    preds, probs = torch.as_tensor(preds), torch.as_tensor(probs, dtype=torch.float32)
    rows = ((1 - probs) / (c - 1))[:, None].repeat(1, c)
    rows[torch.arange(len(preds)), preds] = probs
    return rows


def test_memory_tie_goes_to_the_class_whose_last_record_is_oldest_as_the_official_queue():
    mem, ref = PredictionMemory(1, 5), QueueReference(1, 5)
    for pred, prob in [(0, 0.25), (1, 0.5), (0, 0.25)]:  # totals: class 0 = 0.5, class 1 = 0.5 (exact tie)
        rows = _onehotish([pred], [prob], 4)
        mem.update(torch.tensor([0]), rows)
        ref.update([0], rows)
    assert ref.most_prob_labels([0]).item() == 1  # class 1 reached 0.5 first
    assert mem.most_prob_labels(torch.tensor([0])).item() == 1


def test_memory_window_drops_the_oldest_record():
    mem = PredictionMemory(1, 3)
    for pred, prob in [(2, 0.9), (2, 0.9), (0, 0.5), (0, 0.5), (1, 0.75)]:  # window: 0, 0, 1
        mem.update(torch.tensor([0]), _onehotish([pred], [prob], 3))
    assert mem.most_prob_labels(torch.tensor([0])).item() == 0
    assert mem.count.item() == 5
    mem.update(torch.tensor([0]), _onehotish([1], [0.75], 3))  # window: 0, 1, 1 -> 1 (1.5 > 0.5)
    assert mem.most_prob_labels(torch.tensor([0])).item() == 1


def test_memory_without_history_is_minus_one():
    mem = PredictionMemory(4, 5)
    mem.update(torch.tensor([2]), _onehotish([3], [0.5], 4))
    assert mem.most_prob_labels(torch.arange(4)).tolist() == [-1, -1, 3, -1]


@pytest.mark.parametrize("length", [1, 2, 5])
def test_memory_equals_the_reference_queue_with_duplicates_ties_and_wraparound(length):
    n, c = 7, 4
    g = torch.Generator().manual_seed(length)
    mem, ref = PredictionMemory(n, length), QueueReference(n, length)
    written = torch.zeros(n, dtype=torch.long)
    for step in range(40):
        b = int(torch.randint(1, 12, (1,), generator=g))
        idx = torch.randint(0, n, (b,), generator=g)  # duplicates within a batch are common here
        if step % 2:  # dyadic probabilities: exact ties between classes
            preds = torch.randint(0, c, (b,), generator=g)
            probs = torch.tensor([0.25, 0.5, 0.75])[torch.randint(0, 3, (b,), generator=g)]
            rows = _onehotish(preds, probs, c)
        else:
            rows = F.softmax(torch.randn(b, c, generator=g) * 3, 1)
        mem.update(idx, rows)
        ref.update(idx, rows)
        written.index_add_(0, idx, torch.ones_like(idx))
        everyone = torch.arange(n)
        assert torch.equal(mem.most_prob_labels(everyone), ref.most_prob_labels(everyone)), step
    assert torch.equal(mem.count, written) and (written > length).all()  # every sample wrapped around


def test_memory_count_and_state_dict_round_trip():
    mem = PredictionMemory(5, 3)
    mem.update(torch.tensor([0, 0, 4, 0]), _onehotish([1, 2, 0, 2], [0.5, 0.5, 0.75, 0.25], 3))
    assert mem.count.tolist() == [3, 0, 0, 0, 1]
    copy = PredictionMemory(5, 3)
    copy.load_state_dict(mem.state_dict())
    assert torch.equal(copy.most_prob_labels(torch.arange(5)), mem.most_prob_labels(torch.arange(5)))
    with pytest.raises(ValueError, match="does not fit"):
        PredictionMemory(6, 3).load_state_dict(mem.state_dict())
    with pytest.raises(IndexError):
        mem.update(torch.tensor([5]), _onehotish([0], [0.5], 3))


def test_memory_duplicates_more_than_the_window_keep_the_last_ones():
    mem, ref = PredictionMemory(1, 2), QueueReference(1, 2)
    rows = _onehotish([0, 0, 1, 2], [0.5, 0.5, 0.5, 0.75], 3)  # window keeps (1, 0.5), (2, 0.75)
    mem.update(torch.zeros(4, dtype=torch.long), rows)
    ref.update([0, 0, 0, 0], rows)
    assert mem.most_prob_labels(torch.tensor([0])).item() == ref.most_prob_labels([0]).item() == 2
    assert mem.count.item() == 4


# ------------------------------------------------------------------------------ the CRSSC batch loss


def _memory_with(labels_per_index, n, c, length=5):
    mem = PredictionMemory(n, length)
    idx = torch.tensor(list(labels_per_index))
    mem.update(idx, _onehotish(list(labels_per_index.values()), [0.75] * len(idx), c))
    return mem


def test_warmup_is_the_mean_over_the_whole_batch():
    z, y = _logits(n=8, c=4, seed=5)
    out = crssc_loss(z, y, torch.arange(8), None, epoch=2, warmup=3, eps=0.2)
    assert out.warmup and out.partition.clean.all()
    assert out.loss.item() == pytest.approx(ls_cross_entropy(z, y, 0.2).mean().item(), abs=1e-6)
    after = crssc_loss(z, y, torch.arange(8), PredictionMemory(8), epoch=3, warmup=3, eps=0.2)
    assert not after.warmup and not after.partition.clean.all()  # epoch == warmup already selects


def test_crssc_loss_value_and_gradient_equal_the_explicit_kept_set_computation():
    c, n, eps = 5, 16, 0.2
    z, y = _logits(n=n, c=c, seed=7, scale=2.5)
    z = z.double().requires_grad_(True)
    history = {i: (int(y[i]) + 1) % c for i in range(n)}  # corrected labels all differ from the given ones
    mem = _memory_with(history, n, c)
    out = crssc_loss(z.float(), y, torch.arange(n), mem, epoch=5, warmup=5, eps=eps)
    part = out.partition
    assert part.reusable.any() and part.dropped.any() and part.clean.any()
    corrected = torch.tensor([history[i] for i in range(n)])
    assert torch.equal(out.targets[part.reusable], corrected[part.reusable])
    assert torch.equal(out.targets[part.clean], y[part.clean])
    keep = part.clean | part.reusable
    zf = z.detach().float().requires_grad_(True)
    out = crssc_loss(zf, y, torch.arange(n), mem, epoch=5, warmup=5, eps=eps)
    out.loss.backward()
    target = smoothed_targets(out.targets, c, eps).double()
    per = -(target * F.log_softmax(z.detach(), 1)).sum(1)
    assert out.loss.item() == pytest.approx(per[keep].mean().item(), abs=1e-5)
    want_grad = (F.softmax(z.detach(), 1) - target) * keep[:, None] / keep.sum()  # dropped rows get no gradient
    assert torch.allclose(zf.grad.double(), want_grad, atol=1e-6)


def test_reusable_without_history_is_dropped_not_trained_on_minus_one():
    c, n = 4, 12
    z, y = _logits(n=n, c=c, seed=11, scale=3.0)
    ref = crssc_loss(z, y, torch.arange(n), _memory_with({i: 0 for i in range(n)}, n, c), epoch=1, warmup=1)
    assert ref.partition.reusable.any()
    out = crssc_loss(z, y, torch.arange(n), PredictionMemory(n), epoch=1, warmup=1)  # empty history
    assert out.partition.reusable.sum() == 0
    assert torch.equal(out.partition.dropped, ref.partition.dropped | ref.partition.reusable)
    assert (out.targets >= 0).all() and torch.isfinite(out.loss)


def test_nothing_kept_gives_a_finite_zero_loss_that_backpropagates():
    z = torch.zeros(4, 3, requires_grad=True)  # equal losses: empty clean set, nothing reusable
    out = crssc_loss(z, torch.tensor([0, 1, 2, 0]), torch.arange(4), PredictionMemory(4), epoch=1, warmup=1)
    assert out.partition.dropped.all() and out.loss.item() == 0.0
    out.loss.backward()
    assert torch.equal(z.grad, torch.zeros(4, 3))


def test_batch_of_one_does_not_crash():
    z = torch.randn(1, 3, requires_grad=True)
    out = crssc_loss(z, torch.tensor([1]), torch.tensor([0]), PredictionMemory(1), epoch=9, warmup=1)
    out.loss.backward()
    assert out.partition.dropped.all() and torch.isfinite(z.grad).all()


def test_crssc_loss_passes_the_all_certain_rule_on():
    # two clean samples (loss < mean) and two certain high-loss ones: every high-loss sample is above the threshold
    z = torch.tensor([[4.0, 0.0, 0.0], [4.0, 0.0, 0.0], [0.0, 6.0, 0.0], [0.0, 0.0, 6.0]])
    y = torch.tensor([0, 0, 0, 0])
    mem = _memory_with({2: 1, 3: 2}, 4, 3)
    paper = crssc_loss(z, y, torch.arange(4), mem, epoch=1, warmup=1, all_certain="paper")
    official = crssc_loss(z, y, torch.arange(4), mem, epoch=1, warmup=1, all_certain="official")
    assert paper.partition.reusable.tolist() == [False, False, True, True]
    assert official.partition.reusable.sum() == 0 and official.partition.dropped.tolist() == [False, False, True, True]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_crssc_loss_selects_like_the_official_sort_and_split_on_the_softmax_over_classes(seed):
    """The partition crssc_loss trains with equals the official procedure fed with independently computed (float64)
    label-smoothed losses and the std of each sample's softmax over the classes (not over the batch)."""
    c, n, eps = 6, 24, 0.2
    z, y = _logits(n=n, c=c, seed=seed, scale=3.0)
    out = crssc_loss(z, y, torch.arange(n), _memory_with({i: 0 for i in range(n)}, n, c), epoch=2, warmup=1, eps=eps)
    p = torch.softmax(z.double(), dim=1)
    losses = -(smoothed_targets(y, c, eps).double() * p.log()).sum(dim=1)
    clean, reusable, dropped = select_reference(losses, p.std(dim=1))
    assert reusable and dropped  # the case decides something
    got = [m.nonzero().flatten().tolist() for m in (out.partition.clean, out.partition.reusable, out.partition.dropped)]
    assert got == [clean, reusable, dropped]
