"""Metrics and the results writer shared by every package's ``reproduce``.

``write_results`` produces ``results.csv`` and ``results.md`` with one row per claim check and the
columns: setting, metric, ours (mean ± std), n seeds, baseline, paper value, claimed direction, holds?
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


@dataclass
class ResultRow:
    """One claim check. ``values`` are the per-seed numbers for our method; ``baseline`` the same
    for the comparison (or a single number / text). ``direction`` is what the paper claims, e.g.
    ``"higher"`` (ours > baseline), ``"lower"``, ``"comparable"``, or free text; ``holds`` is our
    verdict for this run (True/False/None when not applicable)."""

    setting: str
    metric: str
    values: Sequence[float]
    baseline: Sequence[float] | float | str | None = None
    paper: str | float | None = None
    direction: str = ""
    holds: bool | None = None
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
            "holds": {True: "yes", False: "no", None: "n/a"}[self.holds],
        }


MD_COLUMNS = [("setting", "setting"), ("metric", "metric"), ("ours", "ours (mean ± std)"),
              ("n_seeds", "n seeds"), ("baseline", "baseline"), ("paper", "paper value"),
              ("direction", "claimed direction"), ("holds", "holds?")]


def markdown_table(rows: Sequence[ResultRow]) -> str:
    lines = ["| " + " | ".join(h for _, h in MD_COLUMNS) + " |", "|" + "---|" * len(MD_COLUMNS)]
    for r in rows:
        d = r.as_dict()
        lines.append("| " + " | ".join(d[k].replace("|", "\\|") for k, _ in MD_COLUMNS) + " |")
    return "\n".join(lines)


def write_results(rows: Sequence[ResultRow], out_dir: str | Path, title: str, preamble: str = "",
                  notes: str = "") -> tuple[Path, Path]:
    """Write ``results.csv`` and ``results.md`` into ``out_dir``. ``preamble`` should state what the
    run is: data (synthetic or real), scale, seeds, hardware and wall-clock."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out / "results.csv", out / "results.md"
    dicts = [r.as_dict() for r in rows]
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(dicts[0]) if dicts else [k for k, _ in MD_COLUMNS])
        w.writeheader()
        w.writerows(dicts)
    parts = [f"# {title}", ""]
    if preamble:
        parts += [preamble.strip(), ""]
    parts += [markdown_table(rows), ""]
    if notes:
        parts += [notes.strip(), ""]
    md_path.write_text("\n".join(parts))
    return csv_path, md_path
