"""Slow, literal re-statements of the official code's per-sample logic (written here from its description, not
copied): the test oracle for the vectorised :mod:`crssc.method`, and the baseline of the benchmark.

* :class:`QueueReference` -- the official prediction history: one Python list per sample, appended one sample at a
  time, oldest record popped beyond ``length``, the relabel recomputed by walking the records from oldest to newest
  and keeping a running best that only changes on a strictly larger running total.
* :func:`select_reference` -- the official selection: sort the losses, keep those below the mean, sort the
  high-loss certainties in descending order and keep the prefix before the first value below the clean mean.
"""

from __future__ import annotations

import math

import torch


class QueueReference:
    """Per-sample list of ``(class, probability)`` records (Python floats), as the official ``Queue``."""

    def __init__(self, num_samples: int, length: int = 5):
        self.length = length
        self.records: list[list[tuple[int, float]]] = [[] for _ in range(num_samples)]
        self.labels = [-1] * num_samples

    def update(self, indices, probs: torch.Tensor) -> None:
        maxprobs, preds = probs.max(dim=1)
        touched = []
        for i in range(len(indices)):
            k = int(indices[i])
            if len(self.records[k]) >= self.length:
                self.records[k].pop(0)
            self.records[k].append((int(preds[i]), float(maxprobs[i])))
            touched.append(k)
        for k in touched:
            totals: dict[int, float] = {}
            best_label, best = -1, 0.0
            for c, p in self.records[k]:
                totals[c] = totals.get(c, 0.0) + p
                if best < totals[c]:
                    best, best_label = totals[c], c
            self.labels[k] = best_label

    def most_prob_labels(self, indices) -> torch.Tensor:
        return torch.tensor([self.labels[int(k)] for k in indices], dtype=torch.int64)


def select_reference(losses: torch.Tensor, certainty: torch.Tensor, all_certain: str = "paper"):
    """Index lists ``(clean, reusable, dropped)`` by the official sort-and-split procedure, in plain Python."""
    values = [float(v) for v in losses]
    mean = sum(values) / len(values)
    order = sorted(range(len(values)), key=lambda i: values[i])
    n_clean = sum(v < mean for v in values)
    clean, high = order[:n_clean], order[n_clean:]
    reusable: list[int] = []
    if len(high) > 1:
        # the official threshold: a float32 mean over the clean samples, as a Python float
        threshold = float(certainty[torch.tensor(clean, dtype=torch.long)].mean()) if clean else math.nan
        ranked = sorted(high, key=lambda i: -float(certainty[i]))
        below = [j for j, i in enumerate(ranked) if float(certainty[i]) < threshold]
        if below:
            reusable = ranked[:below[0]]
        elif all_certain == "paper" and not math.isnan(threshold):
            reusable = ranked  # the released code returns None here and reuses nothing
    dropped = [i for i in high if i not in set(reusable)]
    return sorted(clean), sorted(reusable), sorted(dropped)
