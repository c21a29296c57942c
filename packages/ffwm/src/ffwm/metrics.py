"""Image, illumination and identity metrics for frontalisation.

* :func:`ssim` (Gaussian window 11, sigma 1.5, data range 1; Wang et al. 2004) and :func:`psnr`, both
  optionally restricted to a mask.
* :func:`illumination_tracking`: where the output's illumination lies between the input's (the
  illumination-consistent target C) and the ground truth's (G). With ``LP`` a masked local mean (the
  low-frequency part, where shading lives), ``d = LP(out) - LP(C)`` and ``D = LP(G) - LP(C)``, the
  index is ``tau = <d, D> / <D, D>`` pooled over the set: 0 = the output keeps the input's
  illumination, 1 = it copies the ground truth's. Also the fraction of pairs whose output is closer
  (in LP) to C than to G.
* :func:`rank1`: identification accuracy of probes against a gallery by cosine similarity.
* :func:`lfw_accuracy`: LFW-protocol verification accuracy (10 folds, threshold chosen on 9) and AUC.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .ops import box_sum

__all__ = ["illumination_tracking", "lfw_accuracy", "psnr", "rank1", "roc_auc", "ssim", "ssim_map"]


def _gauss_window(size: int = 11, sigma: float = 1.5, dtype=torch.float32, device=None) -> torch.Tensor:
    x = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-x * x / (2 * sigma * sigma))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim_map(x: torch.Tensor, y: torch.Tensor, window: int = 11, sigma: float = 1.5, data_range: float = 1.0):
    """Per-pixel SSIM ``(B, C, H, W)`` (valid-padded by reflection so the map keeps the image size)."""
    c = x.shape[1]
    w = _gauss_window(window, sigma, x.dtype, x.device).expand(c, 1, window, window)
    pad = window // 2

    def filt(t):
        return F.conv2d(F.pad(t, (pad,) * 4, mode="reflect"), w, groups=c)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mx, my = filt(x), filt(y)
    sxx, syy, sxy = filt(x * x) - mx * mx, filt(y * y) - my * my, filt(x * y) - mx * my
    return ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))


def ssim(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean SSIM per image ``(B,)`` (over the mask's pixels when given)."""
    m = ssim_map(x, y)
    if mask is None:
        return m.mean((1, 2, 3))
    mk = mask.expand_as(m).to(m.dtype)
    return (m * mk).sum((1, 2, 3)) / mk.sum((1, 2, 3)).clamp(min=1)


def psnr(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None, data_range: float = 1.0) -> torch.Tensor:
    """PSNR per image ``(B,)`` in dB (mean squared error over the mask's pixels when given)."""
    d = (x - y) ** 2
    if mask is None:
        mse = d.mean((1, 2, 3))
    else:
        mk = mask.expand_as(d).to(d.dtype)
        mse = (d * mk).sum((1, 2, 3)) / mk.sum((1, 2, 3)).clamp(min=1)
    return 10 * torch.log10(data_range ** 2 / mse.clamp(min=1e-12))


def masked_mean_filter(x: torch.Tensor, mask: torch.Tensor, r: int) -> torch.Tensor:
    """Local mean of ``x`` over the masked pixels of each ``(2r+1)^2`` window."""
    m = mask.to(x.dtype)
    return box_sum(x * m, r) / box_sum(m, r).clamp(min=1e-6)


def illumination_tracking(out: torch.Tensor, consistent: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor,
                          r: int | None = None) -> dict[str, torch.Tensor]:
    """Per-pair sums for the tracking index (pool them over a set with :func:`pool_tracking`):
    ``dot = <d, D>``, ``norm = <D, D>``, ``d_in = |d|_1``, ``d_gt = |LP(out) - LP(G)|_1`` (means over the mask)."""
    r = r if r is not None else max(1, out.shape[-1] // 8)
    lo, lc, lg = (masked_mean_filter(t, mask, r) for t in (out, consistent, gt))
    mk = mask.expand_as(out).to(out.dtype)
    cnt = mk.sum((1, 2, 3)).clamp(min=1)
    d, big = (lo - lc) * mk, (lg - lc) * mk
    return {"dot": (d * big).sum((1, 2, 3)), "norm": (big * big).sum((1, 2, 3)),
            "d_in": d.abs().sum((1, 2, 3)) / cnt, "d_gt": ((lo - lg) * mk).abs().sum((1, 2, 3)) / cnt}


def pool_tracking(parts: dict[str, torch.Tensor]) -> dict[str, float]:
    """``tau`` (pooled ratio), the fraction of pairs closer to the input's illumination, mean distances."""
    return {"illum_tau": float(parts["dot"].sum() / parts["norm"].sum().clamp(min=1e-12)),
            "illum_closer_to_input": float((parts["d_in"] < parts["d_gt"]).float().mean()),
            "illum_dist_input": float(parts["d_in"].mean()), "illum_dist_gt": float(parts["d_gt"].mean())}


def rank1(probe_feats: torch.Tensor, probe_ids: torch.Tensor, gallery_feats: torch.Tensor,
          gallery_ids: torch.Tensor) -> torch.Tensor:
    """Per-probe correctness ``(N,)`` bool: the most cosine-similar gallery entry has the probe's identity."""
    sim = F.normalize(probe_feats, dim=1) @ F.normalize(gallery_feats, dim=1).T
    return gallery_ids[sim.argmax(1)] == probe_ids


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney statistic with ties counted half)."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels).astype(bool)
    pos, neg = scores[labels], scores[~labels]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    ranks = np.empty(len(order))
    allv = np.concatenate([pos, neg])[order]
    i = 0
    while i < len(allv):  # average ranks of ties
        j = i
        while j + 1 < len(allv) and allv[j + 1] == allv[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def lfw_accuracy(scores: np.ndarray, labels: np.ndarray, folds: np.ndarray) -> dict[str, float]:
    """LFW protocol: for each fold, the threshold (a midpoint between sorted scores) that maximises accuracy
    on the other folds is applied to it; returns mean and std of the fold accuracies (%) and the AUC over all pairs."""
    scores, labels, folds = np.asarray(scores, np.float64), np.asarray(labels).astype(bool), np.asarray(folds)
    accs = []
    for f in np.unique(folds):
        tr, te = folds != f, folds == f
        u = np.unique(scores[tr])
        cand = np.concatenate([[u[0] - 1e-6], (u[1:] + u[:-1]) / 2, [u[-1] + 1e-6]]) if len(u) else np.zeros(1)
        acc_tr = [((scores[tr] >= t) == labels[tr]).mean() for t in cand]
        thr = cand[int(np.argmax(acc_tr))] if len(cand) else 0.0
        accs.append(((scores[te] >= thr) == labels[te]).mean() * 100)
    return {"acc": float(np.mean(accs)), "acc_std": float(np.std(accs)), "auc": roc_auc(scores, labels) * 100,
            "folds": len(accs)}


def mean_ci(values) -> tuple[float, float]:
    v = np.asarray(list(values), np.float64)
    return float(v.mean()), float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else 0.0
