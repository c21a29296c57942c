"""CRSSC, top to bottom: the loss, the per-batch selection, the prediction history, the relabelling.

Per mini-batch B with noisy labels y, logits z and p = softmax(z) (after a warm-up of ``warmup`` epochs):

1. ``l_i`` = label-smoothed cross-entropy with target weight ``1 - eps`` on ``y_i`` and ``eps / (C - 1)`` on every
   other class (:func:`ls_cross_entropy`; *not* PyTorch's ``label_smoothing``, which puts ``1 - eps + eps / C`` on
   the target and ``eps / C`` elsewhere).
2. clean set ``C_E = {i : l_i < mean_B l}``; the rest is the high-loss set ``F``.
3. certainty ``c_i`` = standard deviation of ``p_i`` over the classes (unbiased). ``t`` = mean of ``c`` over the
   clean set. If ``|F| > 1``: reusable ``R = {i in F : c_i >= t}``; the others are dropped (``D = F \\ R``).
4. reusable samples are relabelled with the class of largest accumulated top-1 probability over the last ``L``
   recorded predictions of that sample (:class:`PredictionMemory`), recorded on earlier visits only: the memory is
   updated *after* the loss of the batch.
5. loss = mean of the label-smoothed CE over ``C_E`` (noisy labels) and ``R`` (corrected labels).

During the warm-up the loss is the mean over the whole batch, and the memory is still updated.

Everything is batched tensor code: no Python loop over samples or classes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = [
    "ALL_CERTAIN_RULES",
    "CERTAINTY_MEASURES",
    "CRSSCStep",
    "Partition",
    "PredictionMemory",
    "certainty_score",
    "crssc_loss",
    "ls_cross_entropy",
    "select_partition",
    "smoothed_targets",
]

#: certainty measures: ``std`` (the paper / official code), ``collision`` (sum of squared probabilities, the same
#: ranking as ``std``), ``entropy`` (negative entropy) and ``maxprob`` (the CLAR-CRSSC follow-up's options).
CERTAINTY_MEASURES = ("std", "collision", "entropy", "maxprob")
#: what happens when *every* high-loss sample is at least as certain as the clean mean: ``paper`` reuses them all;
#: ``official`` reproduces the released ``split_set``, which returns None in that case, so none is reused.
ALL_CERTAIN_RULES = ("paper", "official")


def smoothed_targets(labels: torch.Tensor, num_classes: int, eps: float) -> torch.Tensor:
    """The soft target of :func:`ls_cross_entropy`: ``1 - eps`` on the label, ``eps / (C - 1)`` elsewhere."""
    if num_classes < 2:
        raise ValueError(f"label smoothing over eps / (C - 1) needs at least 2 classes, got {num_classes}.")
    target = torch.full((labels.numel(), num_classes), eps / (num_classes - 1), dtype=torch.float32,
                        device=labels.device)
    return target.scatter_(1, labels.view(-1, 1).long(), 1.0 - eps)


def _ls_from_logp(logp: torch.Tensor, labels: torch.Tensor, eps: float) -> torch.Tensor:
    """Per-sample label-smoothed CE from log-probabilities ``(N, C)``."""
    num_classes = logp.shape[1]
    off = eps / (num_classes - 1)
    on = 1.0 - eps
    return -(off * logp.sum(dim=1) + (on - off) * logp.gather(1, labels.view(-1, 1).long()).squeeze(1))


def ls_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, eps: float = 0.2,
                     reduction: str = "none") -> torch.Tensor:
    """Label-smoothed cross-entropy of CRSSC, computed in float32 (also under autocast).

    ``l_i = -(1 - eps) log p_{i,y_i} - eps / (C - 1) * sum_{k != y_i} log p_{i,k}``

    ``eps = 0`` is exactly ``F.cross_entropy``. Written without building the ``(N, C)`` target:
    ``l = -(eps / (C - 1)) * sum_k log p_k - (1 - eps - eps / (C - 1)) * log p_y``.
    """
    if logits.shape[1] < 2:
        raise ValueError(f"label smoothing over eps / (C - 1) needs at least 2 classes, got {logits.shape[1]}.")
    losses = _ls_from_logp(F.log_softmax(logits.float(), dim=1), labels, eps)
    if reduction == "none":
        return losses
    if reduction == "mean":
        return losses.mean()
    if reduction == "sum":
        return losses.sum()
    raise ValueError(f"reduction must be none, mean or sum, got {reduction!r}.")


def certainty_score(probs: torch.Tensor, measure: str = "std") -> torch.Tensor:
    """Per-sample certainty of a softmax distribution (higher = more certain).

    ``std``: unbiased standard deviation over the classes (official). Because the probabilities sum to 1,
    ``std^2 = (sum_k p_k^2 - 1/C) / (C - 1)``, so ``collision`` (``sum_k p_k^2``) ranks samples identically.
    ``entropy``: ``sum_k p_k log p_k`` (negative entropy). ``maxprob``: the top-1 probability.
    """
    if measure == "std":
        return probs.std(dim=1)
    if measure == "collision":
        return (probs * probs).sum(dim=1)
    if measure == "entropy":
        return torch.special.xlogy(probs, probs).sum(dim=1)
    if measure == "maxprob":
        return probs.max(dim=1).values
    raise ValueError(f"unknown certainty measure {measure!r}; expected one of {CERTAINTY_MEASURES}.")


@dataclass
class Partition:
    """Boolean masks over a batch (disjoint, covering it) and the certainty threshold used."""

    clean: torch.Tensor
    reusable: torch.Tensor
    dropped: torch.Tensor
    threshold: torch.Tensor  # mean certainty of the clean set (NaN when the clean set is empty)


@torch.no_grad()
def select_partition(losses: torch.Tensor, certainty: torch.Tensor, all_certain: str = "paper") -> Partition:
    """CRSSC's per-batch selection.

    clean: ``loss < mean(loss)``; high-loss: the rest; threshold ``t`` = mean certainty over the clean set;
    reusable: high-loss with ``certainty >= t``, only when there are at least 2 high-loss samples (as in the
    official code); dropped: the other high-loss samples. An empty clean set gives ``t = NaN``, so nothing is
    reusable. The official code sorts the high-loss certainties and takes the prefix before the first one below
    ``t``; that is the same set as ``certainty >= t`` (no sort needed), except when no high-loss sample is below
    ``t``: then the released ``split_set`` returns None and reuses nothing (``all_certain="official"``) whereas the
    paper's rule reuses them all (``"paper"``, the default).
    """
    if all_certain not in ALL_CERTAIN_RULES:
        raise ValueError(f"all_certain must be one of {ALL_CERTAIN_RULES}, got {all_certain!r}.")
    losses, certainty = losses.detach(), certainty.detach()
    clean = losses < losses.mean()
    high = ~clean
    n_clean = clean.sum()
    threshold = torch.where(clean, certainty, 0).sum() / n_clean  # 0 / 0 = NaN: no clean sample, no reuse
    reusable = high & (certainty >= threshold) & (high.sum() > 1)
    if all_certain == "official":
        reusable &= (high & (certainty < threshold)).any()
    return Partition(clean=clean, reusable=reusable, dropped=high & ~reusable, threshold=threshold)


class PredictionMemory:
    """Per-sample history of the last ``length`` (top-1 class, top-1 probability) predictions, as tensors.

    A ring buffer: ``pred[N, L]``, ``prob[N, L]`` and ``count[N]`` (records ever written; the next write goes to
    slot ``count % L``). It is equal to the official per-sample ``Queue`` (a list of dicts updated one sample at a
    time), including its tie rule: the official code walks a sample's records from oldest to newest, accumulating
    the probability per class, and switches its answer only when a running total becomes *strictly* larger than
    the best so far. So among the classes with the largest total, the one whose last record is oldest wins.
    Totals are summed in float64 from float32 probabilities, which is exact (so ties are exact) for ``L`` up to
    ``2**20`` and any top-1 probability (it is at least ``1 / C``).

    Duplicate indices within one :meth:`update` are written in order, as the official sequential loop would.
    """

    def __init__(self, num_samples: int, length: int = 5, device: torch.device | str = "cpu"):
        if num_samples < 1 or length < 1:
            raise ValueError(f"PredictionMemory needs num_samples >= 1 and length >= 1, got {num_samples}, {length}.")
        self.num_samples, self.length = int(num_samples), int(length)
        self.pred = torch.zeros(num_samples, length, dtype=torch.int64, device=device)
        self.prob = torch.zeros(num_samples, length, dtype=torch.float32, device=device)
        self.count = torch.zeros(num_samples, dtype=torch.int64, device=device)

    @property
    def device(self) -> torch.device:
        return self.count.device

    def to(self, device: torch.device | str) -> "PredictionMemory":
        self.pred, self.prob, self.count = self.pred.to(device), self.prob.to(device), self.count.to(device)
        return self

    @torch.no_grad()
    def update(self, indices: torch.Tensor, probs: torch.Tensor | None = None, *, preds: torch.Tensor | None = None,
               maxprobs: torch.Tensor | None = None) -> None:
        """Record one prediction per entry of ``indices``: from softmax ``probs`` (``(B, C)``; its argmax and max)
        or given directly as ``preds`` / ``maxprobs``."""
        if probs is not None:
            maxprobs, preds = probs.detach().float().max(dim=1)
        if preds is None or maxprobs is None:
            raise ValueError("update() needs probs, or preds and maxprobs.")
        idx = indices.to(self.device).long().view(-1)
        n = idx.numel()
        if n == 0:
            return
        if not ((idx >= 0) & (idx < self.num_samples)).all():
            raise IndexError(f"sample index out of range [0, {self.num_samples}): got [{idx.min()}, {idx.max()}].")
        preds, maxprobs = preds.to(self.device).long().view(-1), maxprobs.to(self.device).float().view(-1)
        sorted_idx, order = torch.sort(idx, stable=True)
        starts = torch.ones(n, dtype=torch.bool, device=self.device)
        starts[1:] = sorted_idx[1:] != sorted_idx[:-1]
        count = self.count[idx]
        if bool(starts.all()):  # no index twice in this batch (the usual case): one write each
            slot = count % self.length
            self.pred[idx, slot] = preds
            self.prob[idx, slot] = maxprobs
            self.count[idx] = count + 1
            return
        # duplicates are written in batch order, as the official sequential loop: rank within the same index
        pos = torch.arange(n, device=self.device)
        group_start = torch.cummax(torch.where(starts, pos, 0), dim=0).values
        rank = torch.empty_like(pos)
        rank[order] = pos - group_start
        sizes = torch.diff(torch.cat([pos[starts], pos.new_tensor([n])]))
        group_size = torch.empty_like(pos)
        group_size[order] = torch.repeat_interleave(sizes, sizes)
        keep = rank >= group_size - self.length  # earlier duplicates would be overwritten anyway
        slot = (count + rank) % self.length
        self.pred[idx[keep], slot[keep]] = preds[keep]
        self.prob[idx[keep], slot[keep]] = maxprobs[keep]
        self.count.index_add_(0, idx, torch.ones_like(idx))

    @torch.no_grad()
    def most_prob_labels(self, indices: torch.Tensor) -> torch.Tensor:
        """The relabel of each sample: the class with the largest summed top-1 probability over its last ``L``
        records (official tie rule, see the class docstring); ``-1`` for a sample without any record."""
        idx = indices.to(self.device).long().view(-1)
        L = self.length
        count = self.count[idx]
        steps = torch.arange(L, device=self.device)
        start = torch.where(count >= L, count % L, 0)  # oldest slot
        flat = idx[:, None] * L + (start[:, None] + steps) % L  # slots from oldest to newest
        pred = self.pred.view(-1)[flat]
        valid = steps < count.clamp(max=L)[:, None]
        prob = torch.where(valid, self.prob.view(-1)[flat].double(), 0.0)
        same = (pred[:, :, None] == pred[:, None, :]) & valid[:, None, :]  # (B, L, L): slot m holds slot j's class
        total = torch.bmm(same.double(), prob[:, :, None]).squeeze(2)  # total of the class recorded at slot j
        later = steps[:, None] < steps[None, :]  # m after j
        is_last = valid & ~(same & later).any(dim=2)  # the class's last record in the window
        best = torch.where(is_last, total, -1.0).max(dim=1, keepdim=True).values
        winner = (is_last & (total == best)).int().argmax(dim=1)  # earliest such slot
        label = pred.gather(1, winner[:, None]).squeeze(1)
        return torch.where(count > 0, label, -1)

    def state_dict(self) -> dict:
        return {"pred": self.pred.cpu(), "prob": self.prob.cpu(), "count": self.count.cpu(), "length": self.length}

    def load_state_dict(self, state: dict) -> None:
        if int(state["length"]) != self.length or state["pred"].shape[0] != self.num_samples:
            raise ValueError(f"prediction memory of {state['pred'].shape[0]} samples x {state['length']} records "
                             f"does not fit this run ({self.num_samples} x {self.length}).")
        self.pred = state["pred"].to(self.device, torch.int64)
        self.prob = state["prob"].to(self.device, torch.float32)
        self.count = state["count"].to(self.device, torch.int64)


@dataclass
class CRSSCStep:
    """What :func:`crssc_loss` computed for a batch."""

    loss: torch.Tensor  # scalar to back-propagate
    losses: torch.Tensor  # per-sample label-smoothed CE with the noisy labels (selection criterion)
    targets: torch.Tensor  # the labels trained on: noisy (clean), corrected (reusable), noisy (dropped; unused)
    partition: Partition
    warmup: bool


def crssc_loss(logits: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor, memory: PredictionMemory | None,
               *, epoch: int, warmup: int, eps: float = 0.2, certainty: str = "std",
               all_certain: str = "paper") -> CRSSCStep:
    """The CRSSC loss of one batch (see the module docstring). Does not update ``memory``: call
    ``memory.update(indices, softmax(logits))`` after it, as the official trainer does.

    A reusable sample whose history is still empty (possible only with ``warmup = 0``, or under DDP padding) has no
    corrected label; it is dropped instead of being trained on label ``-1``. If nothing is kept (an empty clean set
    and no reusable sample) the loss is an exact zero that still back-propagates (the official code takes the mean
    of an empty tensor: NaN).
    """
    if logits.shape[1] < 2:
        raise ValueError(f"label smoothing over eps / (C - 1) needs at least 2 classes, got {logits.shape[1]}.")
    logp = F.log_softmax(logits.float(), dim=1)  # shared by the selection loss and the training loss
    losses = _ls_from_logp(logp, labels, eps)
    n = labels.numel()
    if epoch < warmup:
        everything = torch.ones(n, dtype=torch.bool, device=logits.device)
        part = Partition(clean=everything, reusable=~everything, dropped=~everything,
                         threshold=torch.tensor(float("nan"), device=logits.device))
        return CRSSCStep(loss=losses.mean(), losses=losses, targets=labels, partition=part, warmup=True)
    with torch.no_grad():
        probs = F.softmax(logits.detach().float(), dim=1)  # as the official code (not exp(logp))
        part = select_partition(losses, certainty_score(probs, certainty), all_certain)
        if memory is None:
            relabels = torch.full_like(labels, -1)
        else:
            relabels = memory.most_prob_labels(indices).to(labels.device)
        no_history = part.reusable & (relabels < 0)
        part.reusable = part.reusable & ~no_history
        part.dropped = part.dropped | no_history
        targets = torch.where(part.reusable, relabels, labels)
        keep = part.clean | part.reusable
    kept = _ls_from_logp(logp, targets, eps)
    loss = torch.where(keep, kept, 0.0).sum() / keep.sum().clamp(min=1)
    return CRSSCStep(loss=loss, losses=losses, targets=targets, partition=part, warmup=False)
