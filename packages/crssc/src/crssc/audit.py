"""Audit labels with CRSSC's rule on your own model outputs, in the shape of cleanlab's ``find_label_issues``.

    from crssc import audit_labels, find_label_issues

    issues = find_label_issues(labels, pred_probs)             # bool mask, True = not in the clean set
    report = audit_labels(labels, pred_probs, pred_probs_history=history, batch_size=64)
    report.clean, report.reusable, report.dropped               # disjoint bool masks covering the data
    report.corrected_labels                                     # label (clean), correction (reusable), -1 (dropped)

``pred_probs`` are softmax outputs ``(N, C)``; ``pred_probs_history`` (optional) the outputs of earlier epochs,
``(L, N, C)`` oldest first, from which reusable samples get their corrected label (the class of largest summed
top-1 probability, the same rule and tie-breaking as training); without a history the corrected label is the
argmax of ``pred_probs``. CRSSC partitions per mini-batch; ``batch_size=None`` treats the whole set as one batch,
an integer splits it into consecutive chunks (after a seeded shuffle when ``shuffle_seed`` is given).
cleanlab asks for out-of-sample probabilities (cross-validation); CRSSC uses the in-training predictions, and
either works here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .method import ALL_CERTAIN_RULES, CERTAINTY_MEASURES, PredictionMemory, certainty_score

__all__ = ["LabelAudit", "audit_labels", "find_label_issues", "grouped_partition", "ls_cross_entropy_from_probs"]


@dataclass
class LabelAudit:
    """The CRSSC partition of a labelled set (numpy arrays of length N)."""

    clean: np.ndarray
    reusable: np.ndarray
    dropped: np.ndarray
    corrected_labels: np.ndarray  # given label (clean), corrected label (reusable), -1 (dropped)
    loss: np.ndarray  # label-smoothed CE of the given label
    certainty: np.ndarray
    threshold: np.ndarray  # certainty threshold of each sample's batch (NaN: empty clean set)

    @property
    def label_issues(self) -> np.ndarray:
        return ~self.clean

    def summary(self) -> dict[str, float]:
        n = len(self.clean)
        return {"n": n, "clean": int(self.clean.sum()), "reusable": int(self.reusable.sum()),
                "dropped": int(self.dropped.sum()),
                "relabelled": int((self.reusable & (self.corrected_labels != -1)).sum())}


def _as_tensor(x, dtype) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).to(dtype)


def ls_cross_entropy_from_probs(probs: torch.Tensor, labels: torch.Tensor, eps: float) -> torch.Tensor:
    """:func:`crssc.method.ls_cross_entropy` from probabilities (``log p`` clamped at the smallest normal)."""
    num_classes = probs.shape[1]
    logp = torch.log(probs.clamp(min=torch.finfo(probs.dtype).tiny))
    off = eps / (num_classes - 1)
    return -(off * logp.sum(1) + (1 - eps - off) * logp.gather(1, labels.view(-1, 1)).squeeze(1))


def grouped_partition(losses: torch.Tensor, certainty: torch.Tensor, group: torch.Tensor, num_groups: int,
                      all_certain: str = "paper") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`crssc.method.select_partition` applied independently inside each group (mini-batch), vectorised
    over the groups. Returns ``(clean, reusable, dropped, threshold_per_sample)``."""
    ones = torch.ones_like(losses)
    size = torch.zeros(num_groups, dtype=losses.dtype).index_add_(0, group, ones)
    mean = torch.zeros(num_groups, dtype=losses.dtype).index_add_(0, group, losses) / size
    clean = losses < mean[group]
    high = ~clean
    n_clean = torch.zeros(num_groups, dtype=losses.dtype).index_add_(0, group, clean.to(losses.dtype))
    cert_sum = torch.zeros(num_groups, dtype=certainty.dtype).index_add_(0, group, torch.where(clean, certainty, 0))
    threshold = (cert_sum / n_clean.to(certainty.dtype))[group]
    n_high = (size - n_clean)[group]
    reusable = high & (certainty >= threshold) & (n_high > 1)
    if all_certain == "official":
        below = torch.zeros(num_groups, dtype=losses.dtype).index_add_(
            0, group, (high & (certainty < threshold)).to(losses.dtype))
        reusable &= below[group] > 0
    return clean, reusable, high & ~reusable, threshold


def audit_labels(labels, pred_probs, *, pred_probs_history=None, batch_size: int | None = None,
                 shuffle_seed: int | None = None, eps: float = 0.2, certainty: str = "std",
                 all_certain: str = "paper") -> LabelAudit:
    """The CRSSC clean / reusable / dropped partition and corrected labels of ``(labels, pred_probs)``.

    Args:
        labels: given (noisy) integer labels ``(N,)`` in ``[0, C)``.
        pred_probs: predicted probabilities ``(N, C)``, rows summing to 1.
        pred_probs_history: earlier predicted probabilities ``(L, N, C)``, oldest first (default: ``pred_probs``).
        batch_size: partition within consecutive chunks of this size (CRSSC's per-batch rule); None = one batch.
        shuffle_seed: shuffle before chunking (chunks of a random order, as a shuffling DataLoader gives).
        eps: label smoothing of the loss that ranks samples (``eps / (C - 1)`` off the label).
        certainty: one of ``std`` (paper), ``collision``, ``entropy``, ``maxprob``.
        all_certain: ``paper`` or ``official`` (see :func:`crssc.method.select_partition`).
    """
    probs = _as_tensor(pred_probs, torch.float64)
    y = _as_tensor(labels, torch.int64)
    if probs.ndim != 2 or probs.shape[1] < 2:
        raise ValueError(f"pred_probs must be (N, C) with C >= 2, got shape {tuple(probs.shape)}.")
    n, num_classes = probs.shape
    if y.shape != (n,):
        raise ValueError(f"labels must have shape ({n},) to match pred_probs, got {tuple(y.shape)}.")
    if n and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got [{int(y.min())}, {int(y.max())}].")
    if not torch.isfinite(probs).all() or (probs < 0).any() or not torch.allclose(probs.sum(1), torch.ones(n, dtype=probs.dtype), atol=1e-3):
        raise ValueError("pred_probs must be finite, non-negative, and each row must sum to 1 (pass softmax outputs).")
    if certainty not in CERTAINTY_MEASURES:
        raise ValueError(f"unknown certainty measure {certainty!r}; expected one of {CERTAINTY_MEASURES}.")
    if all_certain not in ALL_CERTAIN_RULES:
        raise ValueError(f"all_certain must be one of {ALL_CERTAIN_RULES}, got {all_certain!r}.")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer or None, got {batch_size}.")

    losses = ls_cross_entropy_from_probs(probs, y, eps)
    cert = certainty_score(probs.float(), certainty).double()  # float32 certainty, as in training
    order = torch.arange(n)
    if shuffle_seed is not None:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(int(shuffle_seed)))
    group = torch.empty(n, dtype=torch.int64)
    bs = n if batch_size is None else batch_size
    group[order] = torch.arange(n) // max(bs, 1)
    num_groups = int(group.max()) + 1 if n else 0
    clean, reusable, dropped, threshold = grouped_partition(losses, cert, group, num_groups, all_certain)

    history = probs[None] if pred_probs_history is None else _as_tensor(pred_probs_history, torch.float32)
    if history.ndim != 3 or history.shape[1:] != probs.shape:
        raise ValueError(f"pred_probs_history must be (L, N, C) = (L, {n}, {num_classes}), got {tuple(history.shape)}.")
    memory = PredictionMemory(max(n, 1), length=history.shape[0])
    all_idx = torch.arange(n)
    for past in history.float():  # one record per epoch (L is small)
        memory.update(all_idx, past)
    corrected = torch.where(clean, y, torch.where(reusable, memory.most_prob_labels(all_idx), -1))
    return LabelAudit(clean=clean.numpy(), reusable=reusable.numpy(), dropped=dropped.numpy(),
                      corrected_labels=corrected.numpy(), loss=losses.numpy(), certainty=cert.numpy(),
                      threshold=threshold.numpy())


def find_label_issues(labels, pred_probs, *, return_indices_ranked_by: str | None = None, **kwargs) -> np.ndarray:
    """cleanlab-style: a boolean mask of likely label issues (every sample outside CRSSC's clean set: reusable
    ones are mislabelled, dropped ones irrelevant), or with ``return_indices_ranked_by`` in ``{"loss",
    "certainty"}`` the issue indices, worst first (highest loss / lowest certainty). ``kwargs`` go to
    :func:`audit_labels`."""
    report = audit_labels(labels, pred_probs, **kwargs)
    issues = report.label_issues
    if return_indices_ranked_by is None:
        return issues
    idx = np.flatnonzero(issues)
    if return_indices_ranked_by == "loss":
        return idx[np.argsort(-report.loss[idx], kind="stable")]
    if return_indices_ranked_by == "certainty":
        return idx[np.argsort(report.certainty[idx], kind="stable")]
    raise ValueError(f"return_indices_ranked_by must be None, 'loss' or 'certainty', got {return_indices_ranked_by!r}.")
