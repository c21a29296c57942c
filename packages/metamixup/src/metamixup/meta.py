"""MetaMixUp: the mixing ratio ``lam`` learned online by a meta step (reconstructed; see the README).

One training iteration with a training batch, its partner index and a held-out meta batch:

1. virtual step   ``theta'(lam) = theta - eta * grad_theta L_train(theta, lam)``   (plain SGD, through
   ``torch.func.functional_call``: the model's weights, BatchNorm buffers and ``.grad`` are never touched,
   and the optimiser is not used at all);
2. meta loss      ``L_meta(theta'(lam))``: clean cross-entropy of the virtually updated model on the meta batch;
3. hypergradient  ``d L_meta / d lam``, either
     * ``exact``: second order, by differentiating through the virtual step (``create_graph=True``), or
     * ``finite_difference``: DARTS' approximation ``-eta * [grad_lam L_train(theta + eps v, lam) -
       grad_lam L_train(theta - eps v, lam)] / (2 eps)`` with ``v = grad_theta' L_meta(theta')`` and
       ``eps = fd_eps / ||v||`` (first-order passes only; works for a scalar or a per-sample ``lam``);
4. meta update of the ratio's parameter ``phi`` (``lam = lam_min + (lam_max - lam_min) * sigmoid(phi)``,
   or ``lam`` itself clipped to ``[lam_min, lam_max]``) by SGD or Adam;
5. the caller then trains the real model on the batch mixed with the *updated* ratio (its own optimiser).

Granularity: ``batch`` (one ratio for the batch) or ``sample`` (one per sample). Initialisation:
``carry`` (a ratio state carried from iteration to iteration: a scalar, or a table with one entry per
training example) or ``beta`` (``lam0 ~ Beta(alpha, alpha)`` drawn for every batch, then ``meta_steps``
refinement steps, Learning-to-Reweight style).
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import asdict, dataclass, fields
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from shared.errors import ConfigError

HYPERGRADS = ("exact", "finite_difference")
GRANULARITIES = ("batch", "sample")
INITS = ("carry", "beta")
PARAMS = ("sigmoid", "clip")
META_OPTIMS = ("sgd", "adam")
VIRTUAL_PARAMS = ("all", "head")
META_BN = ("train", "eval")

Forward = Callable[..., torch.Tensor]  # forward(x, mix=None) -> logits, with the weights of one point theta


@dataclass
class MetaConfig:
    hypergrad: str = "exact"
    granularity: str = "batch"
    init: str = "carry"
    lam_init: float = 0.75
    alpha: float = 1.0
    lam_min: float = 0.5
    lam_max: float = 1.0
    param: str = "sigmoid"
    meta_optim: str = "adam"
    meta_lr: float = 0.02
    meta_steps: int = 1
    virtual_lr: float | None = None
    virtual_params: str = "all"
    fd_eps: float = 0.01
    meta_bn: str = "train"
    every: int = 1

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "MetaConfig":
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown option(s) method.meta.{unknown}; use some of: {', '.join(sorted(names))}")
        return cls(**d)

    def validate(self) -> None:
        """Names and ranges (a :class:`~shared.errors.ConfigError`, one line, on the first bad value)."""
        from shared.errors import check_choice, check_range, require

        for key, value, choices in (("hypergrad", self.hypergrad, HYPERGRADS),
                                    ("granularity", self.granularity, GRANULARITIES), ("init", self.init, INITS),
                                    ("param", self.param, PARAMS), ("meta_optim", self.meta_optim, META_OPTIMS),
                                    ("virtual_params", self.virtual_params, VIRTUAL_PARAMS),
                                    ("meta_bn", self.meta_bn, META_BN)):
            check_choice(f"method.meta.{key}", value, choices)
        check_range("method.meta.lam_min", self.lam_min, 0, 1, hi_inclusive=False)
        check_range("method.meta.lam_max", self.lam_max, 0, 1, lo_inclusive=False)
        require(self.lam_min < self.lam_max, f"method.meta.lam_min={self.lam_min} is not below lam_max={self.lam_max}",
                "set 0 <= lam_min < lam_max <= 1 (e.g. 0.5 and 1.0)")
        if self.init == "carry":
            check_range("method.meta.lam_init", self.lam_init, self.lam_min, self.lam_max, lo_inclusive=False,
                        hi_inclusive=False)
        require(self.meta_optim != "adam" or (self.init == "carry" and self.granularity == "batch"),
                f"method.meta.meta_optim=adam needs init=carry and granularity=batch (got {self.init}, {self.granularity})",
                "use method.meta.meta_optim=sgd for re-drawn or per-example ratios")
        for key in ("meta_lr", "fd_eps", "alpha"):
            check_range(f"method.meta.{key}", getattr(self, key), 0, lo_inclusive=False)
        check_range("method.meta.meta_steps", self.meta_steps, 1, integer=True)
        check_range("method.meta.every", self.every, 1, integer=True)
        check_range("method.meta.virtual_lr", self.virtual_lr, 0, lo_inclusive=False, allow_none=True)


# ------------------------------------------------------------------------------ the hypergradient


@contextlib.contextmanager
def batchnorm_mode(model: nn.Module, mode: str | None) -> Iterator[None]:
    """Temporarily put every BatchNorm in ``train`` (batch statistics) or ``eval`` (running statistics)
    mode; the flags are restored afterwards. ``None`` leaves them as they are."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.training for m in bns]
    try:
        if mode is not None:
            for m in bns:
                m.training = mode == "train"
        yield
    finally:
        for m, flag in zip(bns, saved):
            m.training = flag


def _forward(model: nn.Module, weights: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor]) -> Forward:
    def forward(x: torch.Tensor, mix: Any = None) -> torch.Tensor:
        kwargs = {"mix": mix} if mix is not None else {}
        return functional_call(model, {**weights, **buffers}, (x,), kwargs)

    return forward


def virtual_names(model: nn.Module, which: str = "all") -> list[str]:
    """Parameters updated by the virtual step: every trainable one, or only the classifier head."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    if which == "head":
        head = set(model.head_parameter_names()) if hasattr(model, "head_parameter_names") else set()
        names = [n for n in names if n in head]
        if not names:
            raise ValueError("virtual_params=head: the model exposes no trainable head parameters.")
    return names


def hypergradient(model: nn.Module, train_loss: Callable[[Forward, torch.Tensor], torch.Tensor],
                  meta_loss: Callable[[Forward], torch.Tensor], lam: torch.Tensor, lr: float,
                  mode: str = "exact", virtual_params: str = "all", fd_eps: float = 0.01,
                  meta_bn: str = "train") -> tuple[torch.Tensor, float]:
    """``d L_meta(theta - lr * grad_theta L_train(theta, lam)) / d lam`` at the model's current weights.

    ``train_loss(forward, lam)`` must build the mixed batch from ``lam`` itself (so the ratio enters both
    the inputs and the targets); ``meta_loss(forward)`` evaluates the clean meta batch. Both receive a
    ``forward(x, mix=None)`` bound to a point in weight space. The model is only read: BatchNorm buffers
    are cloned for the virtual forwards, gradients are taken with ``torch.autograd.grad`` (no ``.grad``
    is written), and no optimiser is involved. Returns ``(d L_meta / d lam, L_meta(theta'(lam)))``.
    """
    if mode not in HYPERGRADS:
        raise ValueError(f"unknown hypergradient mode {mode!r}; expected one of {HYPERGRADS}.")
    params = dict(model.named_parameters())
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    names = virtual_names(model, virtual_params)
    lam = lam.detach()

    if mode == "exact":
        lam = lam.clone().requires_grad_(True)
        loss = train_loss(_forward(model, params, buffers), lam)
        grads = torch.autograd.grad(loss, [params[n] for n in names], create_graph=True)
        updated = dict(params)
        for n, g in zip(names, grads):
            updated[n] = params[n] - lr * g
        with batchnorm_mode(model, meta_bn):
            value = meta_loss(_forward(model, updated, buffers))
        (g_lam,) = torch.autograd.grad(value, lam)
        return g_lam.detach(), float(value.detach())

    # finite_difference (DARTS): first-order passes only
    fixed = {n: p.detach() for n, p in params.items()}
    loss = train_loss(_forward(model, params, buffers), lam)
    grads = torch.autograd.grad(loss, [params[n] for n in names])
    updated = dict(fixed)
    for n, g in zip(names, grads):
        updated[n] = (fixed[n] - lr * g).requires_grad_(True)
    with batchnorm_mode(model, meta_bn):
        value = meta_loss(_forward(model, updated, buffers))
    v = torch.autograd.grad(value, [updated[n] for n in names])
    norm = torch.sqrt(sum((t.double() ** 2).sum() for t in v))
    if float(norm) == 0.0:
        return torch.zeros_like(lam), float(value.detach())
    eps = fd_eps / float(norm)

    def grad_lam_at(sign: float) -> torch.Tensor:
        shifted = dict(fixed)
        for n, t in zip(names, v):
            shifted[n] = fixed[n] + sign * eps * t
        lam_var = lam.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(train_loss(_forward(model, shifted, buffers), lam_var), lam_var)
        return g

    g_lam = -lr * (grad_lam_at(+1.0) - grad_lam_at(-1.0)) / (2 * eps)
    return g_lam.detach(), float(value.detach())


# ------------------------------------------------------------------------------ the controller


class MetaMixUp:
    """Holds the ratio state, draws/reads the ratio for a batch, refines it with meta steps, and keeps
    a log of every meta step (``history``: step, lam mean/std/min/max, hypergradient, meta loss).

    ``num_samples`` is the size of the per-example table of ``granularity=sample, init=carry``.
    """

    def __init__(self, cfg: MetaConfig, num_samples: int | None = None):
        cfg.validate()
        self.cfg = cfg
        self.span = cfg.lam_max - cfg.lam_min
        phi0 = float(self.phi_from_lam(torch.tensor(cfg.lam_init, dtype=torch.float64)))
        self.phi = torch.tensor(phi0, dtype=torch.float64)  # the carried scalar state
        self.table: torch.Tensor | None = None
        if cfg.init == "carry" and cfg.granularity == "sample":
            if not num_samples:
                raise ValueError("granularity=sample with init=carry needs num_samples (the training-set size).")
            self.table = torch.full((num_samples,), phi0, dtype=torch.float64)
        self._adam: torch.optim.Adam | None = None
        if cfg.meta_optim == "adam":
            self.phi = nn.Parameter(self.phi)
            self._adam = torch.optim.Adam([self.phi], lr=cfg.meta_lr)
        self.history: list[dict[str, float]] = []

    # -- parameterisation
    def lam_from_phi(self, phi: torch.Tensor) -> torch.Tensor:
        if self.cfg.param == "sigmoid":
            return self.cfg.lam_min + self.span * torch.sigmoid(phi)
        return phi.clamp(self.cfg.lam_min, self.cfg.lam_max)

    def phi_from_lam(self, lam: torch.Tensor) -> torch.Tensor:
        if self.cfg.param == "sigmoid":
            s = ((lam - self.cfg.lam_min) / self.span).clamp(1e-6, 1 - 1e-6)
            return torch.log(s) - torch.log1p(-s)
        return lam.clamp(self.cfg.lam_min, self.cfg.lam_max)

    def dlam_dphi(self, phi: torch.Tensor) -> torch.Tensor:
        if self.cfg.param == "sigmoid":
            s = torch.sigmoid(phi)
            return self.span * s * (1 - s)
        return torch.ones_like(phi)

    @property
    def lam(self) -> float:
        """The carried scalar ratio (``granularity=batch, init=carry``)."""
        return float(self.lam_from_phi(self.phi.detach()))

    # -- per-batch ratio
    def initial_phi(self, batch_size: int, rng: np.random.Generator | None = None,
                    sample_ids: torch.Tensor | None = None) -> torch.Tensor:
        cfg = self.cfg
        if cfg.init == "carry":
            if cfg.granularity == "batch":
                return self.phi.detach().clone()
            if sample_ids is None:
                raise ValueError("granularity=sample with init=carry needs the dataset indices of the batch.")
            return self.table[sample_ids.cpu()].clone()
        rng = rng if rng is not None else np.random.default_rng()
        size = batch_size if cfg.granularity == "sample" else None
        lam0 = np.asarray(rng.beta(cfg.alpha, cfg.alpha, size=size), dtype=np.float64)
        if cfg.lam_min >= 0.5:  # the upper-half convention: fold Beta(alpha, alpha) with max(lam, 1 - lam)
            lam0 = np.maximum(lam0, 1 - lam0)
        return self.phi_from_lam(torch.as_tensor(lam0, dtype=torch.float64))  # clipped into the range

    def meta_update(self, phi: torch.Tensor, grad_lam: torch.Tensor) -> torch.Tensor:
        """One step on ``phi`` down the hypergradient (chain rule through the parameterisation); the carried
        scalar is stepped by its own optimiser (Adam or SGD), a batch's own ratio by SGD."""
        grad_phi = grad_lam.double() * self.dlam_dphi(phi)
        if self.cfg.init == "carry" and self.cfg.granularity == "batch" and self._adam is not None:
            self._adam.zero_grad(set_to_none=True)
            self.phi.grad = grad_phi.reshape(self.phi.shape).clone()
            self._adam.step()
            self.phi.grad = None
            return self.phi.detach().clone()
        return phi - self.cfg.meta_lr * grad_phi

    def step(self, model: nn.Module, train_loss: Callable[[Forward, torch.Tensor], torch.Tensor],
             meta_loss: Callable[[Forward], torch.Tensor], lr: float, *, step: int, batch_size: int,
             rng: np.random.Generator | None = None, sample_ids: torch.Tensor | None = None,
             reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
             device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Refine the ratio of this batch and return it (detached, on ``device``) for the real update.

        ``reduce`` averages the hypergradient of the carried scalar over DDP ranks (so every rank keeps
        the same ratio); for the per-example table it sums the (disjoint) updates of the ranks.
        """
        cfg = self.cfg
        phi = self.initial_phi(batch_size, rng, sample_ids)
        eta = cfg.virtual_lr if cfg.virtual_lr is not None else lr
        do_meta = step % cfg.every == 0
        g_lam, value = torch.zeros_like(phi), float("nan")
        if do_meta:
            for _ in range(cfg.meta_steps):
                lam = self.lam_from_phi(phi).to(device=device, dtype=dtype)
                g_lam, value = hypergradient(model, train_loss, meta_loss, lam, eta, cfg.hypergrad,
                                             cfg.virtual_params, cfg.fd_eps, cfg.meta_bn)
                g_lam = g_lam.detach().to("cpu", torch.float64)
                if reduce is not None and cfg.init == "carry" and cfg.granularity == "batch":
                    g_lam = reduce(g_lam)
                phi = self.meta_update(phi, g_lam)
            if cfg.init == "carry" and cfg.granularity == "sample":
                delta = torch.zeros_like(self.table)
                delta[sample_ids.cpu()] = phi - self.table[sample_ids.cpu()]
                if reduce is not None:
                    delta = reduce(delta)
                self.table += delta
                phi = self.table[sample_ids.cpu()].clone()
            elif cfg.init == "carry" and self._adam is None:
                self.phi = phi.detach().clone()
        lam = self.lam_from_phi(phi).detach()
        self.history.append({"step": step, "lam_mean": float(lam.mean()),
                             "lam_std": float(lam.std()) if lam.numel() > 1 else 0.0,
                             "lam_min": float(lam.min()), "lam_max": float(lam.max()),
                             "hypergrad": float(g_lam.mean()), "meta_loss": value})
        return lam.to(device=device, dtype=dtype)

    # -- checkpointing (plain tensors only)
    def state_dict(self) -> dict[str, Any]:
        return {"phi": self.phi.detach().clone(), "table": None if self.table is None else self.table.clone(),
                "adam": copy.deepcopy(self._adam.state_dict()) if self._adam is not None else None, "config": asdict(self.cfg)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            if isinstance(self.phi, nn.Parameter):
                self.phi.copy_(state["phi"])
            else:
                self.phi = state["phi"].clone()
        if state.get("table") is not None:
            self.table = state["table"].clone()
        if self._adam is not None and state.get("adam") is not None:
            self._adam.load_state_dict(state["adam"])

