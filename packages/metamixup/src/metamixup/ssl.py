"""Semi-supervised pieces: refined pseudo-labels, the mean teacher, ramp-ups and consistency losses.

MetaMixUp-SSL (reconstructed; the paper says only "pseudo-label based SSL with a refined pseudo-labelling
strategy", so the refinement is a named, configurable choice): unlabelled images get soft pseudo-labels
from the predictions of ``views`` augmented copies (from the EMA teacher or the model itself), averaged,
sharpened with temperature ``T`` and masked below a confidence ``threshold``; labelled images keep their
one-hot labels; the labelled and unlabelled batches are concatenated and mixed with the meta-learned ratio.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def sharpen(p: torch.Tensor, temperature: float) -> torch.Tensor:
    """``p^(1/T) / sum(p^(1/T))`` row-wise (MixMatch); ``T = 1`` is the identity, ``T -> 0`` the argmax."""
    if temperature == 1.0:
        return p
    logp = torch.log(p.clamp_min(1e-12)) / temperature
    return torch.softmax(logp, dim=-1)


def refine_pseudo_labels(probs: torch.Tensor, temperature: float = 0.5, threshold: float = 0.0,
                         hard: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Pseudo-labels from ``probs`` of shape ``(V, B, C)`` (V augmented views of each unlabelled image):
    the average over views, sharpened (or one-hot with ``hard=True``), with a mask of the images whose
    averaged confidence reaches ``threshold``. Masked-out rows of the returned targets are zero, so a
    cross-entropy with a mixed target simply drops their share. Returns ``(targets (B, C), mask (B,))``."""
    if probs.dim() == 2:
        probs = probs.unsqueeze(0)
    p = probs.mean(0)
    conf, arg = p.max(dim=-1)
    mask = (conf >= threshold).to(p.dtype)
    targets = F.one_hot(arg, p.shape[-1]).to(p.dtype) if hard else sharpen(p, temperature)
    return targets * mask[:, None], mask


def sigmoid_rampup(step: int, length: int) -> float:
    """``exp(-5 (1 - t)^2)`` with ``t = step / length`` clipped to [0, 1] (Laine & Aila; Mean Teacher; ICT)."""
    if length <= 0:
        return 1.0
    t = min(max(step, 0), length) / length
    return float(math.exp(-5.0 * (1.0 - t) ** 2))


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, decay: float, step: int | None = None) -> None:
    """Mean Teacher: ``teacher = d * teacher + (1 - d) * student`` for parameters, with
    ``d = min(decay, 1 - 1 / (step + 1))`` when ``step`` is given (the Mean Teacher warm-up); buffers
    (BatchNorm statistics) are copied from the student."""
    if step is not None:
        decay = min(decay, 1.0 - 1.0 / (step + 1))
    for t, s in zip(teacher.parameters(), student.parameters()):
        t.mul_(decay).add_(s.detach(), alpha=1.0 - decay)
    for t, s in zip(teacher.buffers(), student.buffers()):
        t.copy_(s)


def consistency_loss(logits: torch.Tensor, target: torch.Tensor, kind: str = "ce",
                     weight: torch.Tensor | None = None) -> torch.Tensor:
    """Soft-target loss of the mixed (or unlabelled) samples: ``ce`` = ``-sum target * log softmax``
    (linear in the target: a zeroed target row contributes nothing), ``mse`` = mean over classes of
    ``(softmax - target)^2`` (ICT / Mean Teacher), each row weighted by ``weight`` when given."""
    if kind == "ce":
        per = -(target * F.log_softmax(logits, dim=-1)).sum(-1)
    elif kind == "mse":
        per = ((torch.softmax(logits, dim=-1) - target) ** 2).mean(-1)
    else:
        raise ValueError(f"unknown consistency loss {kind!r}; expected ce or mse.")
    if weight is not None:
        per = per * weight
    return per.mean()
