"""Baselines trained by the same ``fit()``, and the official code's co-teaching variant of CRSSC.

* Co-teaching (Han et al., NeurIPS 2018): two networks; each keeps the ``1 - forget_rate`` fraction of the batch
  with its smallest cross-entropy and its *peer* is trained on those. ``forget_rate`` ramps linearly from 0 to
  ``tau`` over the first ``num_gradual`` epochs (the authors' ``np.linspace(0, tau ** exponent, num_gradual)``).
* Confident learning, prune by noise rate (Northcutt et al., JAIR 2021; cleanlab's default filter): per-class
  thresholds (the mean self-confidence of each given label), the calibrated confident joint, then for every pair
  (given ``i``, true ``j != i``) the ``C[i][j]`` samples labelled ``i`` with the largest margin ``p_j - p_i`` are
  label issues; training continues on the rest.
* :func:`cot_crssc_loss` -- the released ``cot_std_loss``: two networks, each one's clean set trains the other and
  each one's reusable set (found with its own certainty) trains the other with corrected labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .method import Partition, PredictionMemory, certainty_score, ls_cross_entropy

__all__ = [
    "CoTeachingStep",
    "confident_joint",
    "coteaching_loss",
    "cot_crssc_loss",
    "forget_rate_schedule",
    "prune_by_noise_rate",
]


def forget_rate_schedule(epoch: int, forget_rate: float, num_gradual: int = 10, exponent: float = 1.0) -> float:
    """Co-teaching's forget rate at ``epoch`` (0-based): ``linspace(0, tau ** c, T_k)[epoch]``, then ``tau``."""
    if epoch >= num_gradual:
        return float(forget_rate)
    if num_gradual == 1:
        return float(forget_rate ** exponent)
    return float(forget_rate ** exponent) * epoch / (num_gradual - 1)


def _small_loss_mask(losses: torch.Tensor, num_keep: int) -> torch.Tensor:
    """True for the ``num_keep`` samples with the smallest loss (ties: argsort order)."""
    ranks = torch.empty_like(losses, dtype=torch.int64)
    ranks[torch.argsort(losses.detach())] = torch.arange(losses.numel(), device=losses.device)
    return ranks < num_keep


@dataclass
class CoTeachingStep:
    loss: torch.Tensor  # loss1 + loss2 (the networks share no parameter, so one backward trains both)
    loss1: torch.Tensor
    loss2: torch.Tensor
    keep1: torch.Tensor  # samples network 1 selected (small loss for net 1), used to train network 2
    keep2: torch.Tensor


def coteaching_loss(logits1: torch.Tensor, logits2: torch.Tensor, labels: torch.Tensor,
                    forget_rate: float) -> CoTeachingStep:
    """Co-teaching with cross-entropy: ``num_keep = int((1 - forget_rate) * B)`` small-loss samples per network,
    each network trained on its peer's selection (sum of the selected losses / ``num_keep``, as the authors)."""
    l1 = F.cross_entropy(logits1.float(), labels, reduction="none")
    l2 = F.cross_entropy(logits2.float(), labels, reduction="none")
    num_keep = int((1.0 - forget_rate) * labels.numel())
    keep1, keep2 = _small_loss_mask(l1, num_keep), _small_loss_mask(l2, num_keep)
    denom = max(num_keep, 1)
    loss1 = torch.where(keep2, l1, 0.0).sum() / denom
    loss2 = torch.where(keep1, l2, 0.0).sum() / denom
    return CoTeachingStep(loss=loss1 + loss2, loss1=loss1, loss2=loss2, keep1=keep1, keep2=keep2)


# ------------------------------------------------------------------------------ confident learning


def confident_joint(labels: np.ndarray, pred_probs: np.ndarray, calibrate: bool = True) -> np.ndarray:
    """The confident joint ``C[given, true]`` of Northcutt et al.: sample ``i`` counts towards
    ``(y_i, argmax_{k : p_ik >= t_k} p_ik)`` when any class reaches its threshold ``t_k`` (the mean predicted
    probability of class ``k`` over the samples labelled ``k``). ``calibrate`` rescales each row to the number of
    samples with that label."""
    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(pred_probs, dtype=np.float64)
    n, num_classes = probs.shape
    counts = np.bincount(labels, minlength=num_classes)
    sums = np.zeros(num_classes)
    np.add.at(sums, labels, probs[np.arange(n), labels])
    thresholds = np.where(counts > 0, sums / np.maximum(counts, 1), 1.0)
    above = probs >= thresholds[None, :]
    masked = np.where(above, probs, -np.inf)
    guess = masked.argmax(axis=1)
    confident = above.any(axis=1)
    joint = np.zeros((num_classes, num_classes), dtype=np.float64)
    np.add.at(joint, (labels[confident], guess[confident]), 1.0)
    if calibrate:
        row = joint.sum(axis=1, keepdims=True)
        joint = np.where(row > 0, joint / np.maximum(row, 1) * counts[:, None], 0.0)
    return joint


def prune_by_noise_rate(labels: np.ndarray, pred_probs: np.ndarray, min_per_class: int = 1) -> np.ndarray:
    """Boolean mask of label issues (cleanlab's ``filter_by="prune_by_noise_rate"`` rule): for every off-diagonal
    cell ``(i, j)`` of the calibrated confident joint, the ``round(C[i, j])`` samples labelled ``i`` with the
    largest ``p_j - p_i``; at least ``min_per_class`` samples of every label are kept."""
    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(pred_probs, dtype=np.float64)
    n, num_classes = probs.shape
    joint = np.rint(confident_joint(labels, probs)).astype(np.int64)
    np.fill_diagonal(joint, 0)
    counts = np.bincount(labels, minlength=num_classes)
    # never flag more than (count - min_per_class) samples of a label: scale that row's removals down
    budget = np.maximum(counts - min_per_class, 0)
    over = joint.sum(axis=1) > budget
    if over.any():
        scale = budget[over] / joint[over].sum(axis=1)
        joint[over] = np.floor(joint[over] * scale[:, None]).astype(np.int64)
    margin = probs - probs[np.arange(n), labels][:, None]  # (N, C): p_j - p_given
    start = np.concatenate([[0], np.cumsum(counts)[:-1]])
    issues = np.zeros(n, dtype=bool)
    for j in range(num_classes):  # one vectorised pass per candidate true class (once per run, not per step)
        key = np.lexsort((-margin[:, j], labels))  # grouped by given label, largest margin first
        rank = np.empty(n, dtype=np.int64)
        rank[key] = np.arange(n) - np.repeat(start, counts)
        issues |= (labels != j) & (rank < joint[labels, j])
    return issues


# ------------------------------------------------------------------------------ CRSSC with co-teaching


@dataclass
class CotCRSSCStep:
    loss: torch.Tensor
    loss1: torch.Tensor
    loss2: torch.Tensor
    partition1: Partition  # network 1's clean / reusable / dropped split of the batch
    partition2: Partition
    targets1: torch.Tensor  # labels network 1 trains on (noisy on net 2's clean set, corrected on net 2's reusable)
    targets2: torch.Tensor
    warmup: bool


def _cross_partition(certainty: torch.Tensor, own_clean: torch.Tensor, peer_clean: torch.Tensor,
                     all_certain: str) -> Partition:
    """Reusable samples of one network: its high-loss samples at least as certain as its own mean certainty on
    the *peer's* clean set (``flag1`` is computed on ``logits1[ind_clean2]`` in the official code)."""
    high = ~own_clean
    threshold = torch.where(peer_clean, certainty, 0).sum() / peer_clean.sum()
    reusable = high & (certainty >= threshold) & (high.sum() > 1)
    if all_certain == "official":
        reusable &= (high & (certainty < threshold)).any()
    return Partition(clean=own_clean, reusable=reusable, dropped=high & ~reusable, threshold=threshold)


def cot_crssc_loss(logits1: torch.Tensor, logits2: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor,
                   memory1: PredictionMemory, memory2: PredictionMemory, *, epoch: int, warmup: int,
                   eps: float = 0.2, certainty: str = "std", all_certain: str = "paper") -> CotCRSSCStep:
    """The official co-teaching variant of CRSSC. Network 1 trains on network 2's clean set (noisy labels) and on
    network 2's reusable set with labels from ``memory1``; network 2 symmetrically with ``memory2``. The released
    trainer passes ``memory_pool1`` twice and updates it with both networks' predictions: pass the same memory as
    ``memory1`` and ``memory2`` (and update it twice) to reproduce that."""
    l1, l2 = ls_cross_entropy(logits1, labels, eps), ls_cross_entropy(logits2, labels, eps)
    n = labels.numel()
    if epoch < warmup:
        every = torch.ones(n, dtype=torch.bool, device=labels.device)
        part = Partition(clean=every, reusable=~every, dropped=~every, threshold=torch.tensor(float("nan")))
        return CotCRSSCStep(loss=l1.mean() + l2.mean(), loss1=l1.mean(), loss2=l2.mean(), partition1=part,
                            partition2=part, targets1=labels, targets2=labels, warmup=True)
    with torch.no_grad():
        clean1, clean2 = l1 < l1.mean(), l2 < l2.mean()
        c1 = certainty_score(F.softmax(logits1.detach().float(), 1), certainty)
        c2 = certainty_score(F.softmax(logits2.detach().float(), 1), certainty)
        part1 = _cross_partition(c1, clean1, clean2, all_certain)
        part2 = _cross_partition(c2, clean2, clean1, all_certain)
        relabel1 = memory1.most_prob_labels(indices).to(labels.device)  # for samples network 1 trains on
        relabel2 = memory2.most_prob_labels(indices).to(labels.device)
        reuse_for1 = part2.reusable & (relabel1 >= 0)
        reuse_for2 = part1.reusable & (relabel2 >= 0)
        targets1 = torch.where(reuse_for1, relabel1, labels)
        targets2 = torch.where(reuse_for2, relabel2, labels)
        keep1, keep2 = clean2 | reuse_for1, clean1 | reuse_for2
    k1 = ls_cross_entropy(logits1, targets1, eps)
    k2 = ls_cross_entropy(logits2, targets2, eps)
    loss1 = torch.where(keep1, k1, 0.0).sum() / keep1.sum().clamp(min=1)
    loss2 = torch.where(keep2, k2, 0.0).sum() / keep2.sum().clamp(min=1)
    return CotCRSSCStep(loss=loss1 + loss2, loss1=loss1, loss2=loss2, partition1=part1, partition2=part2,
                        targets1=targets1, targets2=targets2, warmup=False)
