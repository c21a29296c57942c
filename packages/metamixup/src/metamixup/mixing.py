"""Mixup primitives: pairing, interpolation with a scalar or per-sample ratio, soft targets, the two
equivalent mixup losses, CutMix, and torchvision v2's batch transforms behind one seeded call.

Conventions (used everywhere in the package):

* ``lam`` is the weight of the *first* sample of a pair: ``mix(t, lam, index) = lam * t + (1 - lam) * t[index]``.
  So ``lam = 1`` returns the batch unchanged and ``lam = 0`` returns the partner batch ``t[index]``.
* ``lam`` is a Python float, a 0-d tensor (one ratio for the batch) or a ``(B,)`` tensor (one per sample);
  a ``(B,)`` ratio is broadcast over the trailing dimensions (``(B, 1, 1, 1)`` for images, ``(B, 1)`` for
  soft labels), so the same call mixes inputs, hidden feature maps and targets.
* Pairs come from a permutation ``index`` of the batch: ``randperm`` (the original mixup code),
  ``flip`` (timm, ``index = B-1..0``) or ``roll`` (torchvision v2, ``index[i] = i - 1``).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

PAIRINGS = ("randperm", "flip", "roll")


def one_hot(y: torch.Tensor, num_classes: int, smoothing: float = 0.0, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``(B,)`` integer labels -> ``(B, C)`` probabilities; ``smoothing`` as in torch's ``label_smoothing``
    (``1 - eps + eps / C`` on the label, ``eps / C`` elsewhere)."""
    out = F.one_hot(y.long(), num_classes).to(dtype or torch.get_default_dtype())
    if smoothing:
        out = out * (1.0 - smoothing) + smoothing / num_classes
    return out


def pair_index(batch_size: int, mode: str = "randperm", generator: torch.Generator | None = None,
               device: torch.device | str | None = None) -> torch.Tensor:
    """Partner index of every sample of the batch (a permutation of ``range(batch_size)``)."""
    if mode == "randperm":
        index = torch.randperm(batch_size, generator=generator)
    elif mode == "flip":
        index = torch.arange(batch_size - 1, -1, -1)
    elif mode == "roll":
        index = (torch.arange(batch_size) - 1) % batch_size  # x.roll(1, 0)[i] == x[i - 1]
    else:
        raise ValueError(f"unknown pairing {mode!r}; expected one of {PAIRINGS}.")
    return index.to(device) if device is not None else index


def broadcast_lam(lam: float | torch.Tensor, like: torch.Tensor) -> float | torch.Tensor:
    """A ratio shaped to multiply ``like`` (``(B,)`` -> ``(B, 1, ..., 1)``; scalars pass through)."""
    if isinstance(lam, torch.Tensor) and lam.dim() == 1:
        if lam.shape[0] != like.shape[0]:
            raise ValueError(f"per-sample lam has {lam.shape[0]} entries for a batch of {like.shape[0]}.")
        return lam.reshape(-1, *([1] * (like.dim() - 1))).to(like.dtype)
    if isinstance(lam, torch.Tensor):
        return lam.to(like.dtype)
    return lam


def mix(t: torch.Tensor, lam: float | torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``lam * t + (1 - lam) * t[index]`` with a scalar or per-sample ``lam`` (differentiable in ``lam``)."""
    w = broadcast_lam(lam, t)
    return w * t + (1 - w) * t[index]


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy with probability targets, ``-sum_c target_c log softmax(logits)_c`` (linear in ``target``)."""
    loss = -(target * F.log_softmax(logits, dim=-1)).sum(-1)
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def mixed_cross_entropy(logits: torch.Tensor, y: torch.Tensor, lam: float | torch.Tensor, index: torch.Tensor,
                        reduction: str = "mean") -> torch.Tensor:
    """The mixup-code form ``lam CE(z, y_i) + (1 - lam) CE(z, y_j)`` for integer labels; equals
    :func:`soft_cross_entropy` on the mixed one-hot target because cross-entropy is linear in its target."""
    ce_i = F.cross_entropy(logits, y, reduction="none")
    ce_j = F.cross_entropy(logits, y[index], reduction="none")
    loss = lam * ce_i + (1 - lam) * ce_j
    if reduction == "mean":
        return loss.mean()
    return loss


def sample_lam(alpha: float, rng: np.random.Generator, size: int | None = None, symmetric: bool = False) -> float | np.ndarray:
    """``lam ~ Beta(alpha, alpha)``; ``alpha <= 0`` gives ``lam = 1`` (no mixing), as the original code.
    ``symmetric=True`` folds it onto ``[0.5, 1]`` with ``max(lam, 1 - lam)`` (same pairs, same distribution
    of mixed samples under a random pairing, as several implementations do)."""
    if alpha <= 0:
        lam = np.ones(size) if size is not None else 1.0
    else:
        lam = rng.beta(alpha, alpha, size=size)
    if symmetric:
        lam = np.maximum(lam, 1 - lam)
    return lam if size is not None else float(lam)


# ------------------------------------------------------------------------------------------ CutMix


def cutmix_box(height: int, width: int, lam: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """The CutMix box ``(y1, y2, x1, x2)``: area ratio ``1 - lam``, centre uniform over the image, clipped to it."""
    cut = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * cut), int(width * cut)
    cy, cx = int(rng.integers(height)), int(rng.integers(width))
    y1, y2 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
    x1, x2 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
    return y1, y2, x1, x2


def cutmix(x: torch.Tensor, y_soft: torch.Tensor, lam: float, index: torch.Tensor,
           rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Paste the box of the partner image into each image; the label ratio is corrected to the pasted
    area after clipping (``lam_adj = 1 - box area / image area``). Returns ``(x_mix, y_mix, lam_adj)``."""
    h, w = x.shape[-2:]
    y1, y2, x1, x2 = cutmix_box(h, w, lam, rng)
    out = x.clone()
    out[..., y1:y2, x1:x2] = x[index][..., y1:y2, x1:x2]
    lam_adj = 1.0 - (y2 - y1) * (x2 - x1) / (h * w)
    return out, mix(y_soft, lam_adj, index), lam_adj


def torchvision_batch_mix(kind: str, x: torch.Tensor, y: torch.Tensor, alpha: float, num_classes: int,
                          seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """torchvision v2 ``MixUp`` / ``CutMix`` on a batch with its own RNG stream (``seed``), so a resumed run
    draws what an uninterrupted one draws. Pairs are ``roll(1)`` neighbours (:func:`pair_index` ``"roll"``)."""
    from torchvision.transforms import v2

    transform = {"mixup": v2.MixUp, "cutmix": v2.CutMix}[kind](alpha=alpha, num_classes=num_classes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        x_mix, y_mix = transform(x, y)
    return x_mix, y_mix
