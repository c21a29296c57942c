"""Evaluation protocols, vectorised (sorting and cumulative sums; no Python loop over pairs or queries).

Face verification (LFW, "unrestricted, labeled outside data")
    :func:`verification_10fold` -- for each of the 10 folds, the threshold that maximises accuracy on the
    other nine folds is applied to the held-out fold; the result is the mean (and std) of the ten fold
    accuracies. A pair is called "same" when its score is strictly greater than the threshold; the best
    threshold is the midpoint of the best interval between consecutive distinct scores (ties in accuracy:
    the lowest such interval). :func:`best_threshold`, :func:`tar_at_far`, :func:`roc_curve`.

Re-identification (Market-1501 protocol)
    :func:`reid_cmc_map` -- for each query the gallery is ranked by distance; gallery images with person id
    -1 ("junk") and images of the query's identity from the query's camera are removed; the remaining
    images of the query's identity are the true matches; id 0 ("distractor") counts as a negative.
    CMC rank-k and mean average precision over queries with at least one true match. ``ap="market"``
    is the official Market-1501 kit's trapezoidal AP, ``ap="standard"`` the non-interpolated mean of
    precisions at each hit (torchreid). :func:`pool_queries` builds multi-query features.

Identification with distractors (MegaFace challenge 1 style)
    :func:`identification_with_distractors` -- every ordered pair (probe, target) of distinct images of one
    identity is a trial: the target is put in a gallery with the first N distractors, and the trial is a
    rank-1 success when the target scores strictly higher than every one of them. Rank-1 against N.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = [
    "best_threshold",
    "cosine_scores",
    "identification_with_distractors",
    "pool_queries",
    "reid_cmc_map",
    "roc_curve",
    "tar_at_far",
    "verification_10fold",
]


def _t(x, dtype=torch.float64) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).to(dtype)


def cosine_scores(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine similarity of two (N, D) feature matrices."""
    a, b = torch.nn.functional.normalize(_t(a), dim=1), torch.nn.functional.normalize(_t(b), dim=1)
    return (a * b).sum(1)


# ----------------------------------------------------------------------------------- verification


def best_threshold(scores, issame) -> tuple[float, float]:
    """The threshold maximising ``accuracy = mean((score > t) == issame)`` and that accuracy.

    Exact: every interval between consecutive distinct scores is a candidate (plus below the minimum,
    where everything is "same"); the threshold returned is the interval's midpoint (``min - 1`` below)."""
    s, y = _t(scores), _t(issame, torch.bool)
    n = len(s)
    if n == 0:
        raise ValueError("best_threshold needs at least one pair.")
    order = torch.argsort(s)
    s_sorted, y_sorted = s[order], y[order]
    pos_total = int(y.sum())
    neg_upto = torch.cumsum((~y_sorted).to(torch.int64), 0)  # negatives with score <= s_(k)
    pos_upto = torch.cumsum(y_sorted.to(torch.int64), 0)
    correct = neg_upto + (pos_total - pos_upto)  # threshold t in [s_(k), s_(k+1)): scores <= s_(k) are "different"
    last_of_tie = torch.ones(n, dtype=torch.bool)
    last_of_tie[:-1] = s_sorted[1:] > s_sorted[:-1]
    correct = torch.where(last_of_tie, correct, torch.full_like(correct, -1))
    candidates = torch.cat([torch.tensor([pos_total]), correct])  # index 0: threshold below every score
    k = int(torch.argmax(candidates))  # first maximum = lowest threshold
    if k == 0:
        thr = float(s_sorted[0]) - 1.0
    else:
        i = k - 1
        thr = float(s_sorted[i] + s_sorted[i + 1]) / 2 if i + 1 < n else float(s_sorted[i]) + 1.0
    return thr, float(candidates[k]) / n


def verification_10fold(scores, issame, folds=None, num_folds: int = 10) -> dict:
    """LFW protocol: threshold from the other folds, accuracy on the held-out one.

    ``folds``: the fold index of each pair (from ``pairs.txt``); default ``num_folds`` contiguous equal
    blocks in pair order (LFW's layout). Returns ``{"accuracy": mean, "std": std over folds (population),
    "fold_accuracy": [...], "thresholds": [...]}``."""
    s, y = _t(scores), _t(issame, torch.bool)
    if folds is None:
        folds = torch.arange(len(s)) * num_folds // max(len(s), 1)
    f = _t(folds, torch.long)
    ids = torch.unique(f)
    if len(ids) < 2:
        raise ValueError("verification_10fold needs at least two folds.")
    accs, thrs = [], []
    for k in ids.tolist():  # one iteration per fold (10), everything inside is vectorised
        test = f == k
        thr, _ = best_threshold(s[~test], y[~test])
        accs.append(float(((s[test] > thr) == y[test]).double().mean()))
        thrs.append(thr)
    return {"accuracy": float(np.mean(accs)), "std": float(np.std(accs)), "fold_accuracy": accs, "thresholds": thrs}


def tar_at_far(scores, issame, far: float | Sequence[float]) -> dict:
    """True accept rate at a false accept rate: the threshold t is the smallest score value such that at
    most ``floor(far * n_negatives)`` negatives score strictly above it; TAR = mean(positive score > t).
    Returns ``{far: (tar, threshold)}``."""
    s, y = _t(scores), _t(issame, torch.bool)
    neg = torch.sort(s[~y], descending=True).values
    pos = s[y]
    if len(neg) == 0 or len(pos) == 0:
        raise ValueError("tar_at_far needs both positive and negative pairs.")
    out = {}
    for r in ([far] if np.isscalar(far) else list(far)):
        k = int(np.floor(r * len(neg) + 1e-9))
        thr = float(neg[k]) if k < len(neg) else float("-inf")
        out[float(r)] = (float((pos > thr).double().mean()), thr)
    return out


def roc_curve(scores, issame) -> dict:
    """ROC over every distinct threshold: ``fpr``, ``tpr`` (from (0, 0) to (1, 1)), ``thresholds`` (a pair is
    accepted when score >= threshold) and the trapezoidal ``auc`` (= P(s+ > s-) + P(s+ = s-)/2)."""
    s, y = _t(scores), _t(issame, torch.bool)
    order = torch.argsort(s, descending=True)
    s_sorted, y_sorted = s[order], y[order]
    tps = torch.cumsum(y_sorted.double(), 0)
    fps = torch.cumsum((~y_sorted).double(), 0)
    distinct = torch.ones(len(s), dtype=torch.bool)
    distinct[:-1] = s_sorted[1:] < s_sorted[:-1]  # keep the last index of each tie group
    tps, fps, thr = tps[distinct], fps[distinct], s_sorted[distinct]
    tpr = torch.cat([torch.zeros(1, dtype=torch.float64), tps / max(float(y.sum()), 1.0)])
    fpr = torch.cat([torch.zeros(1, dtype=torch.float64), fps / max(float((~y).sum()), 1.0)])
    thr = torch.cat([torch.tensor([float("inf")], dtype=torch.float64), thr])
    auc = float(torch.trapezoid(tpr, fpr))
    return {"fpr": fpr.numpy(), "tpr": tpr.numpy(), "thresholds": thr.numpy(), "auc": auc}


# ------------------------------------------------------------------------------------------ re-ID


def reid_cmc_map(distmat, q_pids, g_pids, q_camids, g_camids, max_rank: int = 10, ap: str = "market",
                 chunk: int = 512) -> dict:
    """CMC and mAP under the Market-1501 protocol (junk id -1 and same-identity same-camera removed).

    ``distmat`` (Q, G): smaller is more similar. Returns ``{"cmc": array(max_rank) (cmc[k-1] = rank-k),
    "mAP": float, "num_valid": int (queries with a true match), "ap": array(Q) (NaN for invalid queries)}``."""
    if ap not in ("market", "standard"):
        raise ValueError(f"ap must be 'market' or 'standard', got {ap!r}.")
    dist = _t(distmat, torch.float64)
    qp, gp, qc, gc = (_t(a, torch.long) for a in (q_pids, g_pids, q_camids, g_camids))
    num_q, num_g = dist.shape
    hits_at = torch.zeros(max_rank, dtype=torch.float64)
    aps = torch.full((num_q,), float("nan"), dtype=torch.float64)
    for lo in range(0, num_q, chunk):  # memory only: each chunk is processed as one batch
        d = dist[lo:lo + chunk]
        order = torch.argsort(d, dim=1, stable=True)
        pid, cam = gp[order], gc[order]
        same = pid == qp[lo:lo + chunk, None]
        junk = (pid == -1) | (same & (cam == qc[lo:lo + chunk, None]))
        keep = ~junk
        good = same & keep
        rank = torch.cumsum(keep.to(torch.int64), 1)  # 1-based rank among kept images (valid where keep)
        hit_no = torch.cumsum(good.to(torch.int64), 1)  # i-th true match (valid where good)
        n_good = good.sum(1)
        valid = n_good > 0
        big = torch.iinfo(torch.int64).max
        first = torch.where(good, rank, torch.full_like(rank, big)).min(1).values  # rank of the first true match
        hits_at += ((first[valid, None] <= torch.arange(1, max_rank + 1)[None]).double()).sum(0)
        prec = torch.where(good, hit_no.double() / rank.double(), torch.zeros(1, dtype=torch.float64))
        if ap == "market":  # trapezoid between the precision just before the hit and at it
            before = torch.where(rank > 1, (hit_no - 1).double() / (rank - 1).clamp_min(1).double(),
                                 torch.ones(1, dtype=torch.float64))
            prec = torch.where(good, (before + prec) / 2, prec)
        ap_chunk = prec.sum(1) / n_good.clamp_min(1).double()
        aps[lo:lo + chunk] = torch.where(valid, ap_chunk, torch.tensor(float("nan"), dtype=torch.float64))
    valid_all = ~torch.isnan(aps)
    n_valid = int(valid_all.sum())
    if n_valid == 0:
        raise ValueError("no query has a true match in the gallery (after junk / same-camera removal).")
    return {"cmc": (hits_at / n_valid).numpy(), "mAP": float(aps[valid_all].mean()), "num_valid": n_valid,
            "ap": aps.numpy()}


def pool_queries(feats, pids, camids, mode: str = "mean") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Multi-query: one feature per (identity, camera) group, the mean (or element-wise max) of its images.
    Returns ``(pooled (G, D), group pids, group camids)``, groups sorted by (pid, camera)."""
    f = _t(feats, torch.float64)
    p, c = _t(pids, torch.long), _t(camids, torch.long)
    key = torch.stack([p, c], 1)
    groups, inverse = torch.unique(key, dim=0, return_inverse=True)
    if mode == "mean":
        sums = torch.zeros(len(groups), f.shape[1], dtype=f.dtype).index_add_(0, inverse, f)
        pooled = sums / torch.bincount(inverse, minlength=len(groups)).unsqueeze(1).double()
    elif mode == "max":
        pooled = torch.full((len(groups), f.shape[1]), float("-inf"), dtype=f.dtype)
        pooled = pooled.scatter_reduce(0, inverse[:, None].expand_as(f), f, reduce="amax")
    else:
        raise ValueError(f"mode must be 'mean' or 'max', got {mode!r}.")
    return pooled, groups[:, 0], groups[:, 1]


# ---------------------------------------------------------------------- identification + distractors


def identification_with_distractors(probe_feats, probe_ids, distractor_feats,
                                    sizes: Sequence[int] = (10, 100, 1000)) -> dict[int, float]:
    """MegaFace-style rank-1 identification against the number of distractors (cosine similarity).

    Trials are all ordered pairs (p, t), p != t, of images of the same identity. With N distractors (the
    first N rows of ``distractor_feats``), a trial succeeds when ``cos(p, t) > max_{d < N} cos(p, d)``.
    Returns ``{N: rank-1 rate}`` (N larger than the distractor set is an error)."""
    f = torch.nn.functional.normalize(_t(probe_feats), dim=1)
    ids = _t(probe_ids, torch.long)
    dis = torch.nn.functional.normalize(_t(distractor_feats), dim=1)
    if max(sizes) > len(dis):
        raise ValueError(f"asked for {max(sizes)} distractors but only {len(dis)} are given.")
    sim = f @ f.t()
    trial = (ids[:, None] == ids[None]) & ~torch.eye(len(ids), dtype=torch.bool)
    if not trial.any():
        raise ValueError("no identity has two probe images: no identification trial can be formed.")
    best_distractor = torch.cummax(f @ dis.t(), dim=1).values  # (P, D): max over the first n+1 distractors
    p_idx, t_idx = torch.nonzero(trial, as_tuple=True)
    target = sim[p_idx, t_idx]
    out = {}
    for n in sizes:
        if n <= 0:
            out[int(n)] = 1.0
            continue
        out[int(n)] = float((target > best_distractor[p_idx, n - 1]).double().mean())
    return out
