"""Landmark metrics: NME (normalisation always named), cumulative error distribution (CED), AUC and
failure rate at a threshold (0.08 by default).

Normalisations (0-based indices, 68-point iBUG order):
* ``inter_ocular``: distance between the outer eye corners 36 and 45;
* ``inter_pupil``: distance between the eye centres (means of 36-41 and 42-47);
* ``box``: sqrt(w * h) of the given face boxes (AFLW 19-point protocol).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

NORMS = ("inter_ocular", "inter_pupil", "box")


def normaliser(gt: torch.Tensor, norm: str, boxes: torch.Tensor | None = None) -> torch.Tensor:
    if norm == "inter_ocular":
        _need68(gt, norm)
        return (gt[:, 36] - gt[:, 45]).norm(dim=-1)
    if norm == "inter_pupil":
        _need68(gt, norm)
        return (gt[:, 36:42].mean(1) - gt[:, 42:48].mean(1)).norm(dim=-1)
    if norm == "box":
        if boxes is None:
            raise ValueError("norm='box' needs boxes (N, 4) as x0, y0, x1, y1")
        return ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).clamp_min(0).sqrt()
    raise ValueError(f"unknown NME normalisation {norm!r}; choose one of {NORMS}.")


def _need68(gt, norm):
    if gt.shape[1] != 68:
        raise ValueError(f"norm={norm!r} is defined for 68-point shapes, got {gt.shape[1]} points; use norm='box'.")


def nme(pred: torch.Tensor, gt: torch.Tensor, norm: str = "inter_ocular", boxes: torch.Tensor | None = None,
        mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-image NME: mean point-to-point error over the (masked) points / normaliser. (N,)"""
    pred, gt = torch.as_tensor(pred, dtype=torch.float64), torch.as_tensor(gt, dtype=torch.float64)
    if pred.shape != gt.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and gt {tuple(gt.shape)} differ in shape.")
    err = (pred - gt).norm(dim=-1)
    if mask is None:
        mean = err.mean(1)
    else:
        mask = torch.as_tensor(mask).to(err.dtype)
        mean = (err * mask).sum(1) / mask.sum(1).clamp_min(1)
    return mean / normaliser(gt, norm, None if boxes is None else torch.as_tensor(boxes, dtype=torch.float64))


def ced(errors, max_error: float = 0.08, steps: int = 161) -> tuple[np.ndarray, np.ndarray]:
    """Thresholds in [0, max_error] and the fraction of images with error <= each threshold."""
    e = np.sort(np.asarray(errors, dtype=np.float64))
    thr = np.linspace(0, max_error, steps)
    return thr, np.searchsorted(e, thr, side="right") / max(len(e), 1)


def auc(errors, threshold: float = 0.08) -> float:
    """Area under the CED on [0, threshold], divided by threshold (exact for the step function)."""
    e = np.asarray(errors, dtype=np.float64)
    if len(e) == 0:
        return float("nan")
    return float(np.clip(threshold - e, 0, None).sum() / (threshold * len(e)))


def failure_rate(errors, threshold: float = 0.08) -> float:
    e = np.asarray(errors, dtype=np.float64)
    return float((e > threshold).mean()) if len(e) else float("nan")


def summary(errors, threshold: float = 0.08, prefix: str = "") -> dict[str, float]:
    e = np.asarray(errors, dtype=np.float64)
    return {f"{prefix}nme": float(e.mean()), f"{prefix}auc{threshold:g}": auc(e, threshold),
            f"{prefix}fr{threshold:g}": failure_rate(e, threshold)}


def ced_axis_limit(curves: dict[str, np.ndarray], threshold: float = 0.08, coverage: float = 0.99) -> float:
    """The CED plot's x-axis end, chosen from the data: at least ``threshold``, and far enough to show
    ``coverage`` of every curve's images (rounded up to a step of threshold / 4)."""
    errs = [np.asarray(e, dtype=np.float64) for e in curves.values() if len(e)]
    top = max([threshold] + [float(np.quantile(e[np.isfinite(e)], coverage)) for e in errs if np.isfinite(e).any()])
    step = threshold / 4
    return float(math.ceil(top / step - 1e-9) * step)


def plot_ced(curves: dict[str, np.ndarray], path: str | Path, threshold: float = 0.08, title: str = "",
             max_error: float | None = None) -> Path:
    """CED curves; the x-axis ends at ``max_error`` or, by default, where the data needs it
    (:func:`ced_axis_limit`); the legend's AUC and the dotted line are at ``threshold``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    limit = ced_axis_limit(curves, threshold) if max_error is None else max_error
    fig, ax = plt.subplots(figsize=(5, 4))
    for name, errors in curves.items():
        t, f = ced(errors, limit, 401)
        ax.plot(t, f, label=f"{name} (AUC@{threshold:g} {auc(errors, threshold):.3f})")
    ax.axvline(threshold, color="k", lw=0.7, ls=":")
    ax.set_xlabel("NME")
    ax.set_ylabel("fraction of images")
    ax.set_xlim(0, limit)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
