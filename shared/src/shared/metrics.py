"""Metrics, the one verdict rule, and the results writer shared by every package's ``reproduce``.

``write_results`` produces ``results.json``, ``results.csv``, ``provenance.json`` and the rendered
``results.md`` (see :mod:`shared.report`) with one row per claim check and the columns: setting, metric,
ours (mean ± std), n seeds, baseline, paper value, claimed direction, holds?

The verdict rule (:func:`paired_verdict`), used by every package: a claim *holds* only when the paired
difference (ours minus baseline, per seed) clears a one-sided paired t-test at the 5 % level in the
claimed direction (mean > t(0.95, n-1) x sd / sqrt(n)); *does not hold* when the same test is passed in the
opposite direction; otherwise it is *inconclusive*. A "comparable within m" claim holds when both one-sided
tests against +-m pass (TOST), does not hold when the difference is significantly outside +-m. With fewer
than 3 paired seeds no verdict is given (inconclusive).
"""

from __future__ import annotations

import csv
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import torch


@torch.no_grad()
def topk_accuracy(logits: torch.Tensor, target: torch.Tensor, topk: Sequence[int] = (1,)) -> list[float]:
    """Top-k accuracy in percent for each k (a sample counts if its label is among the k largest logits)."""
    maxk = min(max(topk), logits.shape[1])
    pred = logits.topk(maxk, dim=1).indices  # (N, maxk)
    correct = pred.eq(target.view(-1, 1))
    n = target.numel()
    return [100.0 * correct[:, : min(k, maxk)].any(dim=1).sum().item() / n if n else float("nan") for k in topk]


@torch.no_grad()
def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``cm[t, p]`` = number of samples of true class t predicted as p (int64, num_classes x num_classes)."""
    pred, target = pred.reshape(-1).long(), target.reshape(-1).long()
    if pred.numel() and (pred.min() < 0 or pred.max() >= num_classes or target.min() < 0 or target.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}); got pred in [{pred.min()}, {pred.max()}], "
                         f"target in [{target.min()}, {target.max()}]")
    idx = target * num_classes + pred
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0.0 for a single value) over seeds."""
    vals = [float(v) for v in values]
    if not vals:
        return float("nan"), float("nan")
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def format_mean_std(values: Iterable[float], digits: int = 2) -> str:
    m, s = mean_std(values)
    return f"{m:.{digits}f} ± {s:.{digits}f}"


VERDICTS = ("holds", "does not hold", "inconclusive")


def t_critical(n: int, confidence: float = 0.95) -> float:
    """One-sided Student-t critical value with ``n - 1`` degrees of freedom."""
    from scipy.stats import t

    return float(t.ppf(confidence, n - 1))


@dataclass(frozen=True)
class Verdict:
    """The outcome of :func:`paired_verdict`: ``verdict`` in ``VERDICTS``, the paired mean and std, the number
    of seeds whose difference has the claimed sign, and the threshold the mean had to clear."""

    verdict: str
    mean: float
    std: float
    n: int
    n_claimed_sign: int
    threshold: float

    def summary(self, digits: int = 2) -> str:
        return (f"{self.mean:+.{digits}f} ± {self.std:.{digits}f} (paired, n = {self.n}; claimed sign in "
                f"{self.n_claimed_sign}/{self.n}; needed |mean| > {self.threshold:.{digits}f}) -> {self.verdict}")


def paired_verdict(diffs: Iterable[float], claim: str = "higher", margin: float = 0.0,
                   confidence: float = 0.95) -> Verdict:
    """The project's single rule for "the claim holds" (module docstring): ``diffs`` are per-seed paired
    differences ours - baseline; ``claim`` is ``higher`` (ours > baseline + margin), ``lower`` (ours <
    baseline - margin) or ``comparable`` (|ours - baseline| < margin, TOST)."""
    d = [float(x) for x in diffs]
    n = len(d)
    mean, std = mean_std(d)
    if claim not in ("higher", "lower", "comparable"):
        raise ValueError(f"claim must be higher, lower or comparable, got {claim!r}")
    if claim == "comparable":
        n_sign = sum(abs(x) < margin for x in d)
    else:
        n_sign = sum((x > 0) if claim == "higher" else (x < 0) for x in d)
    if n < 3 or not math.isfinite(mean):
        return Verdict("inconclusive", mean, std, n, n_sign, float("nan"))
    se = std / math.sqrt(n)
    thr = t_critical(n, confidence) * se
    if claim == "comparable":
        if mean - thr > -margin and mean + thr < margin:
            v = "holds"
        elif mean - thr > margin or mean + thr < -margin:
            v = "does not hold"
        else:
            v = "inconclusive"
        return Verdict(v, mean, std, n, n_sign, thr)
    signed = mean if claim == "higher" else -mean
    if signed - margin > thr:
        v = "holds"
    elif signed - margin < -thr:
        v = "does not hold"
    else:
        v = "inconclusive"
    return Verdict(v, mean, std, n, n_sign, thr + margin)


@dataclass
class ResultRow:
    """One claim check. ``values`` are the per-seed numbers for our method; ``baseline`` the same
    for the comparison (or a single number / text). ``direction`` is what the paper claims, e.g.
    ``"higher"`` (ours > baseline), ``"lower"``, ``"comparable"``, or free text; ``holds`` is our
    verdict for this run: one of :data:`VERDICTS` (from :func:`paired_verdict`), True/False for an exact
    check (a count, an identity), or None when not applicable."""

    setting: str
    metric: str
    values: Sequence[float]
    baseline: Sequence[float] | float | str | None = None
    paper: str | float | None = None
    direction: str = ""
    holds: bool | str | None = None
    digits: int = 2

    def ours_str(self) -> str:
        return format_mean_std(self.values, self.digits) if len(self.values) else "n/a"

    def baseline_str(self) -> str:
        b = self.baseline
        if b is None:
            return ""
        if isinstance(b, str):
            return b
        if isinstance(b, (int, float)):
            return f"{b:.{self.digits}f}"
        return format_mean_std(b, self.digits)

    def as_dict(self) -> dict[str, str]:
        mean, std = mean_std(self.values) if len(self.values) else (math.nan, math.nan)
        return {
            "setting": self.setting,
            "metric": self.metric,
            "ours": self.ours_str(),
            "ours_mean": f"{mean:.6g}",
            "ours_std": f"{std:.6g}",
            "n_seeds": str(len(self.values)),
            "baseline": self.baseline_str(),
            "paper": "" if self.paper is None else str(self.paper),
            "direction": self.direction,
            "holds": self.holds if isinstance(self.holds, str) else {True: "yes", False: "no", None: "n/a"}[self.holds],
        }


MD_COLUMNS = [("setting", "setting"), ("metric", "metric"), ("ours", "ours (mean ± std)"),
              ("n_seeds", "n seeds"), ("baseline", "baseline"), ("paper", "paper value"),
              ("direction", "claimed direction"), ("holds", "holds?")]


def markdown_table(rows: Sequence[ResultRow]) -> str:
    from shared.report import _claims_table

    return _claims_table(rows)


def write_results(rows: Sequence[ResultRow], out_dir: str | Path, title: str, preamble: str = "",
                  notes: str = "", provenance=None, sections=None) -> tuple[Path, Path]:
    """Write ``results.json``, ``results.csv``, ``provenance.json`` and the rendered ``results.md`` into
    ``out_dir``. ``preamble`` states what the run is (data: synthetic or real, scale, seeds); ``provenance``
    (a :class:`shared.provenance.Provenance`) adds how it was made. ``sections`` (a list of
    :class:`shared.report.Section`) come before the main claim table of ``rows``, e.g. the mechanism check."""
    from shared.report import Section, write_report

    parts = list(sections or [])
    if rows:
        parts.append(Section("Claim checks", rows=list(rows)))
    md = write_report(out_dir, title, parts, intro=preamble, notes=notes, provenance=provenance)
    return Path(out_dir) / "results.csv", md
