"""Classification heads for deep embedding learning, and IR-Softmax (Zhu et al., ACCV 2020).

Every head is an ``nn.Module`` used like pytorch-metric-learning's losses::

    head = build_head("ir_amsoftmax", num_classes=10, embedding_size=64)
    loss = head(embeddings, labels)        # scalar loss; in train mode an IR head also updates its centres
    logits = head.get_logits(embeddings)   # inference logits, no margin
    head.class_vectors()                   # (C, D) the classifier's class directions (weights or centres)

Margin heads (everything except ``softmax``)
    The logit of class j for a feature x is ``scale(x) * cos(theta_j)`` for j != y and
    ``scale(x) * psi(theta_y)`` for the label y, where theta_j is the angle between x and the unit class
    vector of class j and psi is the margin function:

    * ``normface``  psi = cos(theta)                           (NormFace / cosine softmax)
    * ``asoftmax``  psi = (-1)^k cos(m theta) - 2k, theta in [k pi/m, (k+1) pi/m]   (SphereFace, integer m),
      optionally blended with cos(theta) as in the official SphereFace code: (lambda cos + psi) / (1 + lambda)
      with lambda = max(lambda_min, lambda_base (1 + lambda_gamma * iteration)^-lambda_power)
    * ``amsoftmax`` psi = cos(theta) - m                       (AM-Softmax / CosFace)
    * ``arcface``, ``combined``  psi = cos(m1 theta + m2) - m3 (ArcFace is (1, m2, 0); the angle is clamped to
      [0, pi] so psi stays non-increasing; the paper's Eq. 8 writes cos(m1 theta - m2) - m3: set m2 < 0 for it)

    ``scale="feature_norm"`` uses ``||x||`` (A-Softmax, and the literal reading of IR-Softmax's Eqs. 4-5);
    ``scale="fixed"`` normalises the feature and uses a constant ``s`` (NormFace, AM-Softmax, ArcFace).

IR-Softmax (``ir_*`` heads)
    The class vectors are not learnt weights but the class centres of L2-normalised features (Eq. 3):
    ``c_j = normalize(mean_{i: y_i = j} x_i / ||x_i||)``. They are buffers, so the classification loss
    cannot move them (the paper: "rather than Eq. 4"); after the logits are computed, each training
    forward updates them with one of four rules (``center_update``), each using only class-j samples for c_j:

    * ``grad`` (the paper's selected rule iii): one gradient step, learning rate ``center_lr`` (alpha), on the
      unit-sphere centre term ``L_c = sum_i ||c_{y_i} - x_i/||x_i|| ||^2 / (2 n_{y_i})`` (n_j = class-j samples
      in the batch), then renormalise: ``c_j <- normalize(c_j - alpha (c_j - mean_j))``. alpha = 1 gives the
      normalised mini-batch class mean (what the official README calls its "oldest version").
    * ``instance`` (rule i, DocFace-like): c_j <- the normalised feature of the last class-j sample in the batch.
    * ``bank`` (rule ii): c_j <- normalised mean of the last ``bank_size`` class-j features (a per-class window).
    * ``running_sum`` (the official code ``guliloss.py``): c_j <- normalize(c_j + sum_{y_i=j} x_i/||x_i||).

    ``center_feature_weight`` > 0 also pulls the features toward their (detached) centres with
    ``weight * mean_i ||x_i/||x_i|| - c_{y_i}||^2 / 2`` (the paper leaves open whether the centre term reaches
    the features; default 0: centres only). Under DDP the update uses the features of every rank
    (all-gathered), so the centres stay identical on all ranks.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "CENTER_UPDATES",
    "CombinedMargin",
    "CosineMargin",
    "Head",
    "MarginHead",
    "NoMargin",
    "SoftmaxHead",
    "SphereMargin",
    "build_head",
    "centre_term",
    "class_centres",
    "list_heads",
    "register_head",
    "update_centres",
]

CENTER_UPDATES = ("grad", "instance", "bank", "running_sum")
SCALES = ("feature_norm", "fixed")


# ----------------------------------------------------------------------------- class centres (Eq. 3)


def class_centres(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 3: ``c_j = c'_j / ||c'_j||`` with ``c'_j`` the mean of ``x_i / ||x_i||`` over class j.

    Returns ``(centres (C, D), counts (C,))``; a class with no sample gets a zero row. Row j is computed
    from class-j rows only (an ``index_add`` in sample order), so adding or removing samples of other
    classes leaves it bit-identical.
    """
    xn = F.normalize(features, dim=1)
    sums = torch.zeros(num_classes, features.shape[1], dtype=xn.dtype, device=xn.device).index_add_(0, labels, xn)
    counts = torch.bincount(labels, minlength=num_classes)
    mean = sums / counts.clamp_min(1).unsqueeze(1).to(xn.dtype)
    return F.normalize(mean, dim=1), counts


def centre_term(centres: torch.Tensor, xn: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The unit-sphere centre term of update rule iii, reduced per class:
    ``sum_i ||c_{y_i} - xn_i||^2 / (2 n_{y_i})``. Its gradient w.r.t. ``c_j`` is ``c_j - mean_j`` (the rule
    :func:`update_centres` ``"grad"`` applies in closed form; the tests check it against autograd)."""
    counts = torch.bincount(labels, minlength=centres.shape[0]).to(xn.dtype)
    return (0.5 * ((centres[labels] - xn) ** 2).sum(1) / counts[labels]).sum()


def _rank_within_class(labels: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """For each sample, how many earlier samples of the batch share its label (0, 1, 2, ...)."""
    order = torch.sort(labels, stable=True).indices
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(labels)
    rank[order] = torch.arange(len(labels), device=labels.device) - starts[labels[order]]
    return rank


def update_centres(centres: torch.Tensor, xn: torch.Tensor, labels: torch.Tensor, rule: str, lr: float = 0.5,
                   bank: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """One IR centre update (functional: returns new centres; ``bank`` tensors are updated in place).

    ``xn`` are L2-normalised features (B, D), ``centres`` unit rows (C, D). Classes absent from the batch keep
    their row bit-identical; every updated row has unit norm. No Python loop over classes or samples.
    """
    num_classes = centres.shape[0]
    counts = torch.bincount(labels, minlength=num_classes)
    present = (counts > 0).unsqueeze(1)
    if rule == "grad":
        sums = torch.zeros_like(centres).index_add_(0, labels, xn)
        grad = centres - sums / counts.clamp_min(1).unsqueeze(1).to(xn.dtype)  # d centre_term / d c_j
        new = F.normalize(centres - lr * grad, dim=1)
    elif rule == "running_sum":
        sums = torch.zeros_like(centres).index_add_(0, labels, xn)
        new = F.normalize(centres + sums, dim=1)
    elif rule == "instance":
        position = torch.arange(len(labels), device=labels.device)
        last = torch.zeros(num_classes, dtype=torch.long, device=labels.device)
        last = last.scatter_reduce(0, labels, position, reduce="amax", include_self=False)
        new = xn[last]
    elif rule == "bank":
        if bank is None:
            raise ValueError("center_update='bank' needs the bank state (memory, filled, pointer).")
        memory, filled, pointer = bank["memory"], bank["filled"], bank["pointer"]
        size = memory.shape[1]
        rank = _rank_within_class(labels, counts)
        first_kept = (counts[labels] - size).clamp_min(0)  # only the last `size` samples of a class are kept
        keep = rank >= first_kept
        slot = (pointer[labels] + rank - first_kept) % size
        memory[labels[keep], slot[keep]] = xn[keep]
        written = counts.clamp_max(size)
        pointer.copy_((pointer + written) % size)
        filled.copy_((filled + written).clamp_max(size))
        new = F.normalize(memory.sum(1) / filled.clamp_min(1).unsqueeze(1).to(memory.dtype), dim=1)
    else:
        raise ValueError(f"unknown center_update {rule!r}; expected one of {CENTER_UPDATES}.")
    return torch.where(present, new, centres)


# ------------------------------------------------------------------------------------------ margins


class NoMargin:
    """psi(theta) = cos(theta)."""

    def __call__(self, cos: torch.Tensor) -> torch.Tensor:
        return cos

    def __repr__(self) -> str:
        return "NoMargin()"


class SphereMargin:
    """A-Softmax: psi(theta) = (-1)^k cos(m theta) - 2k for theta in [k pi/m, (k+1) pi/m], integer m >= 1.

    cos(m theta) is the Chebyshev polynomial T_m(cos theta) (no arccos in the gradient); k is a
    piecewise-constant integer computed without gradient. psi(0) = 1, psi(pi) = 1 - 2m, continuous and
    decreasing on [0, pi]; m = 1 gives psi = cos.
    """

    def __init__(self, m: int):
        if int(m) != m or m < 1:
            raise ValueError(f"A-Softmax margin m must be an integer >= 1, got {m}.")
        self.m = int(m)

    def __call__(self, cos: torch.Tensor) -> torch.Tensor:
        c = cos.clamp(-1.0, 1.0)
        t_prev, t = torch.ones_like(c), c  # T_0, T_1
        for _ in range(self.m - 1):
            t_prev, t = t, 2 * c * t - t_prev
        with torch.no_grad():
            k = torch.floor(self.m * torch.acos(c) / math.pi).clamp(0, self.m - 1)
        sign = 1.0 - 2.0 * torch.remainder(k, 2)
        return sign * t - 2.0 * k

    def __repr__(self) -> str:
        return f"SphereMargin(m={self.m})"


class CosineMargin:
    """AM-Softmax / CosFace: psi(theta) = cos(theta) - m."""

    def __init__(self, m: float):
        self.m = float(m)

    def __call__(self, cos: torch.Tensor) -> torch.Tensor:
        return cos - self.m

    def __repr__(self) -> str:
        return f"CosineMargin(m={self.m})"


class CombinedMargin:
    """psi(theta) = cos(clamp(m1 theta + m2, 0, pi)) - m3 (InsightFace's combined margin; ArcFace = (1, m, 0))."""

    def __init__(self, m1: float = 1.0, m2: float = 0.0, m3: float = 0.0):
        self.m1, self.m2, self.m3 = float(m1), float(m2), float(m3)

    def __call__(self, cos: torch.Tensor) -> torch.Tensor:
        if self.m1 == 1.0 and self.m2 == 0.0:
            return cos - self.m3
        eps = 1e-6 if cos.dtype == torch.float32 else 1e-12  # arccos has an infinite slope at +-1
        theta = torch.acos(cos.clamp(-1 + eps, 1 - eps))
        return torch.cos((self.m1 * theta + self.m2).clamp(0.0, math.pi)) - self.m3

    def __repr__(self) -> str:
        return f"CombinedMargin(m1={self.m1}, m2={self.m2}, m3={self.m3})"


# -------------------------------------------------------------------------------------------- heads


class Head(nn.Module):
    """Common interface: ``forward(embeddings, labels) -> loss``, ``get_logits``, ``class_vectors``, ``predict``."""

    num_classes: int
    embedding_size: int

    def get_logits(self, embeddings: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def class_vectors(self) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    @torch.no_grad()
    def predict(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.get_logits(embeddings).argmax(1)

    def _check(self, embeddings: torch.Tensor, labels: torch.Tensor) -> None:
        if embeddings.ndim != 2 or embeddings.shape[1] != self.embedding_size:
            raise ValueError(f"embeddings must be (batch, {self.embedding_size}), got {tuple(embeddings.shape)}.")
        if labels.shape != embeddings.shape[:1]:
            raise ValueError(f"labels must be ({embeddings.shape[0]},), got {tuple(labels.shape)}.")
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ValueError(f"labels must lie in [0, {self.num_classes}), got [{int(labels.min())}, {int(labels.max())}].")


class SoftmaxHead(Head):
    """Plain softmax: logits ``W x + b`` (the setting of the paper's Eq. 2)."""

    def __init__(self, num_classes: int, embedding_size: int, bias: bool = True):
        super().__init__()
        self.num_classes, self.embedding_size = num_classes, embedding_size
        self.fc = nn.Linear(embedding_size, num_classes, bias=bias)

    def get_logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        with _full_precision(embeddings):
            return self.fc(embeddings.to(self.fc.weight.dtype))

    def class_vectors(self) -> torch.Tensor:
        return self.fc.weight

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self._check(embeddings, labels)
        with _full_precision(embeddings):
            return F.cross_entropy(self.get_logits(embeddings), labels)


class MarginHead(Head):
    """Normalised-classifier softmax with a target margin; ``classifier="centres"`` makes it IR-Softmax."""

    def __init__(self, num_classes: int, embedding_size: int, *, margin: Callable | None = None,
                 scale: str = "fixed", s: float = 30.0, classifier: str = "weights", center_update: str = "grad",
                 center_lr: float = 0.5, center_feature_weight: float = 0.0, bank_size: int = 8,
                 blend: bool = False, lambda_base: float = 1000.0, lambda_gamma: float = 0.12,
                 lambda_power: float = 1.0, lambda_min: float = 5.0):
        super().__init__()
        if scale not in SCALES:
            raise ValueError(f"unknown scale {scale!r}; expected one of {SCALES}.")
        if classifier not in ("weights", "centres"):
            raise ValueError(f"unknown classifier {classifier!r}; expected 'weights' or 'centres'.")
        if center_update not in CENTER_UPDATES:
            raise ValueError(f"unknown center_update {center_update!r}; expected one of {CENTER_UPDATES}.")
        if not 0 < center_lr <= 1:
            raise ValueError(f"center_lr must lie in (0, 1], got {center_lr}.")
        self.num_classes, self.embedding_size = num_classes, embedding_size
        self.margin = margin if margin is not None else NoMargin()
        self.scale, self.s, self.classifier = scale, float(s), classifier
        self.center_update, self.center_lr = center_update, float(center_lr)
        self.center_feature_weight = float(center_feature_weight)
        self.blend = bool(blend)
        self.lambda_base, self.lambda_gamma = float(lambda_base), float(lambda_gamma)
        self.lambda_power, self.lambda_min = float(lambda_power), float(lambda_min)
        self.register_buffer("iteration", torch.zeros((), dtype=torch.long))
        init = F.normalize(torch.randn(num_classes, embedding_size), dim=1)
        if classifier == "weights":
            self.weight = nn.Parameter(init)
        else:
            self.register_buffer("centres", init)
            if center_update == "bank":
                self.register_buffer("bank_memory", torch.zeros(num_classes, int(bank_size), embedding_size))
                self.register_buffer("bank_filled", torch.zeros(num_classes, dtype=torch.long))
                self.register_buffer("bank_pointer", torch.zeros(num_classes, dtype=torch.long))

    # --- the classifier
    @property
    def is_ir(self) -> bool:
        return self.classifier == "centres"

    def class_vectors(self) -> torch.Tensor:
        """Unit class vectors (C, D): normalised weights, or the IR centres (no gradient)."""
        return self.centres if self.is_ir else F.normalize(self.weight, dim=1)

    def current_lambda(self) -> float:
        it = float(self.iteration)
        return max(self.lambda_min, self.lambda_base * (1.0 + self.lambda_gamma * it) ** (-self.lambda_power))

    def _scale(self, x: torch.Tensor) -> torch.Tensor | float:
        return x.norm(dim=1, keepdim=True) if self.scale == "feature_norm" else self.s

    def _cast(self, embeddings: torch.Tensor) -> torch.Tensor:
        return embeddings.to(self.class_vectors().dtype)

    def cosines(self, embeddings: torch.Tensor) -> torch.Tensor:
        return (F.normalize(self._cast(embeddings), dim=1) @ self.class_vectors().t()).clamp(-1.0, 1.0)

    def get_logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        with _full_precision(embeddings):
            return self._scale(self._cast(embeddings)) * self.cosines(embeddings)

    def margin_logits(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Training logits: the label's cosine replaced by psi (blended with cos when ``blend``)."""
        x = self._cast(embeddings)
        cos = self.cosines(x)
        target = cos.gather(1, labels.unsqueeze(1))
        psi = self.margin(target)
        if self.blend:
            lam = self.current_lambda()
            psi = (lam * target + psi) / (1.0 + lam)
        return self._scale(x) * cos.scatter(1, labels.unsqueeze(1), psi)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self._check(embeddings, labels)
        with _full_precision(embeddings):
            loss = F.cross_entropy(self.margin_logits(embeddings, labels), labels)
            if self.is_ir and self.center_feature_weight > 0:
                xn = F.normalize(self._cast(embeddings), dim=1)
                loss = loss + self.center_feature_weight * 0.5 * ((xn - self.centres[labels]) ** 2).sum(1).mean()
        if self.training:
            if self.is_ir:
                self.update_centres(embeddings, labels)
            self.iteration += 1
        return loss

    @torch.no_grad()
    def update_centres(self, embeddings: torch.Tensor, labels: torch.Tensor) -> None:
        """Apply ``center_update`` with this batch (all ranks' samples under DDP). Replaces the buffer
        (never in place), so logits computed before the update keep their autograd graph valid."""
        xn, labels = _gather_all(F.normalize(self._cast(embeddings.detach()), dim=1), labels)
        bank = None
        if self.center_update == "bank":
            bank = {"memory": self.bank_memory, "filled": self.bank_filled, "pointer": self.bank_pointer}
        self.centres = update_centres(self.centres, xn, labels, self.center_update, self.center_lr, bank)

    def extra_repr(self) -> str:
        text = f"classes={self.num_classes}, dim={self.embedding_size}, margin={self.margin!r}, scale={self.scale}"
        text += f", s={self.s}" if self.scale == "fixed" else ""
        if self.is_ir:
            text += f", centres updated by {self.center_update!r} (lr {self.center_lr})"
        return text


def _full_precision(x: torch.Tensor):
    """Heads compute in their own dtype (float32) even inside an autocast region (AMP)."""
    return torch.autocast(device_type=x.device.type, enabled=False)


def _gather_all(xn: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate every rank's (features, labels) in rank order (identity outside DDP)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return xn, labels
    world = dist.get_world_size()
    n = torch.tensor([len(labels)], device=labels.device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    most = int(max(int(s) for s in sizes))
    pad_x = torch.zeros(most, xn.shape[1], dtype=xn.dtype, device=xn.device)
    pad_y = torch.zeros(most, dtype=labels.dtype, device=labels.device)
    pad_x[: len(labels)], pad_y[: len(labels)] = xn, labels
    xs = [torch.zeros_like(pad_x) for _ in range(world)]
    ys = [torch.zeros_like(pad_y) for _ in range(world)]
    dist.all_gather(xs, pad_x)
    dist.all_gather(ys, pad_y)
    return (torch.cat([x[: int(s)] for x, s in zip(xs, sizes)]), torch.cat([y[: int(s)] for y, s in zip(ys, sizes)]))


# ----------------------------------------------------------------------------------------- registry

_HEADS: dict[str, Callable[..., Head]] = {}


def register_head(name: str):
    def wrap(fn):
        if name in _HEADS:
            raise ValueError(f"head {name!r} is already registered.")
        _HEADS[name] = fn
        return fn

    return wrap


def list_heads() -> list[str]:
    return sorted(_HEADS)


def build_head(name: str, num_classes: int, embedding_size: int, **kwargs) -> Head:
    """Build a registered head. ``kwargs``: ``m`` (asoftmax/amsoftmax/arcface), ``m1, m2, m3`` (combined),
    and every :class:`MarginHead` option (scale, s, blend, lambda_*, center_update, center_lr, ...)."""
    if name not in _HEADS:
        raise ValueError(f"unknown head {name!r}; choose from {', '.join(list_heads())}.")
    return _HEADS[name](num_classes, embedding_size, **kwargs)


@register_head("softmax")
def _softmax(num_classes: int, embedding_size: int, bias: bool = True, **unused) -> Head:
    return SoftmaxHead(num_classes, embedding_size, bias=bias)


def _margin_factory(kind: str, classifier: str):
    def make(num_classes: int, embedding_size: int, m: float | None = None, m1: float = 1.0, m2: float = 0.0,
             m3: float = 0.0, scale: str | None = None, **kw) -> Head:
        if kind == "normface":
            margin, default_scale = NoMargin(), "fixed"
        elif kind == "asoftmax":
            margin, default_scale = SphereMargin(4 if m is None else m), "feature_norm"
        elif kind == "amsoftmax":
            margin, default_scale = CosineMargin(0.35 if m is None else m), "fixed"
        elif kind == "arcface":
            margin, default_scale = CombinedMargin(1.0, 0.5 if m is None else m, 0.0), "fixed"
        else:  # combined
            margin, default_scale = CombinedMargin(m1, m2, m3), "fixed"
        kw.pop("bias", None)
        return MarginHead(num_classes, embedding_size, margin=margin, scale=scale or default_scale,
                          classifier=classifier, **kw)

    return make


for _kind in ("normface", "asoftmax", "amsoftmax", "arcface", "combined"):
    register_head(_kind)(_margin_factory(_kind, "weights"))
    register_head(f"ir_{_kind}")(_margin_factory(_kind, "centres"))
