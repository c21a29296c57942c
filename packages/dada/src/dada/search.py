"""DADA's differentiable policy search, readable top to bottom.

Search space (``AugmentParameters``): for each of the 105 sub-policies a weight logit
``beta_k``, and for each of its two operations an application probability ``p`` and a level
(magnitude) ``m``; plus the RELAX control variate ``c_phi`` (an MLP 315 -> 100 (tanh) -> 1).

One search step (``SearchStep.__call__``), exactly one policy draw per mini-batch:

1. **Sample** (``relax``): ``z_beta = log softmax(beta) + Gumbel(u)``, sub-policy
   ``k = argmax z_beta``; per operation ``z_p = logit(p) + logit(u')``, applied iff ``z_p > 0``.
   The whole batch is augmented with sub-policy ``k`` and that on/off pattern (the caller does
   this with :func:`dada.policy.apply_slots` before the step: ``Sample.slots``).
2. **Straight-through magnitudes** (``straight_through``): the network input is
   ``x' = x_aug + sum_applied (m_i - stopgrad(m_i))``: bit for bit the augmented image, and
   ``dL/dm_i = sum over pixels of dL/dx'``.
3. **RELAX** (``RelaxTerms``) for ``beta`` and ``p``:
   ``g = [f(b) - c(z~)] d/dtheta log p(b) + d/dtheta c(z) - d/dtheta c(z~)`` with ``z~ ~ p(z | b)``
   (the conditional resamples of REBAR), ``f(b)`` the training loss with the sampled
   augmentation; ``c_phi`` sees the temperature-``tau`` relaxations of ``z`` and is trained to
   minimise the mean of ``g**2`` (the RELAX variance objective).
4. **Bi-level update** (DARTS, second order, one step unrolled): ``w' = w - xi (dL_train/dw + wd w
   + momentum buf)``, ``v = dL_val(w')/dw'`` (validation without augmentation), and the policy
   gradient ``-xi [g(w + r v) - g(w - r v)] / (2 r)`` with ``r = 0.01 / ||v||``, where ``g`` is the
   RELAX estimate for ``beta, p`` and autograd (straight-through) for ``m``. Adam on the policy.
5. **Network step**: SGD on the same augmented batch (the gradient of step 4's first pass).

Where the official code deviates, a flag keeps its behaviour (default: the paper's):
``official_drop_xi`` (the implicit gradient without the ``xi`` factor), ``official_cv_finite_difference``
(``phi`` gets the finite difference of the variance-objective gradient at ``w +- r v`` instead of
the variance gradient), ``official_logprob_broadcast`` (the categorical log-probability is
broadcast-added to the 105x2 Bernoulli ones, so its score counts 210 times), and, in
``train.py``, ``official_fixed_val_batch`` and ``official_unseeded_shuffle``.
``estimator=gumbel_st`` is the official ``search_gumbel`` ablation (straight-through
Gumbel-softmax for ``beta`` and ``p`` instead of RELAX).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call

from .policy import SUBPOLICIES, Policy

EPS = 1e-6
ESTIMATORS = ("relax", "gumbel_st")
PARAMETRISATIONS = ("clamp", "sigmoid")


class ControlVariate(nn.Module):
    """RELAX's learned control variate ``c_phi``: ``[sigma(z_p / tau), softmax(z_beta / tau)]``
    interleaved per sub-policy (S x (K + 1) values), rescaled by ``2x - 1``, -> 100 tanh -> 1."""

    def __init__(self, num_inputs: int, hidden: int = 100):
        super().__init__()
        self.h1 = nn.Linear(num_inputs, hidden)
        self.out = nn.Linear(hidden, 1)

    def forward(self, prob_relaxed: Tensor, weight_relaxed: Tensor) -> Tensor:
        z = torch.cat([prob_relaxed, weight_relaxed.unsqueeze(-1)], dim=-1).reshape(-1)
        return self.out(torch.tanh(self.h1(z * 2.0 - 1.0))).squeeze(-1)


class AugmentParameters(nn.Module):
    """The searched policy parameters: ``weights`` (beta, S), ``probabilities`` (S, K),
    ``magnitudes`` (S, K) and the control variate.

    ``parametrisation="clamp"`` (paper/official): ``p`` and ``m`` are raw parameters initialised at
    0.5 and clamped into [0, 1] where used (saturated values get no RELAX gradient).
    ``"sigmoid"``: ``p = sigmoid(rho)``, ``m = sigmoid(mu)`` (initialised at 0.5 as well).
    """

    def __init__(self, subpolicies: Sequence[tuple[str, ...]] = SUBPOLICIES, hidden: int = 100,
                 parametrisation: str = "clamp", init_weight: float = 1e-3):
        super().__init__()
        if parametrisation not in PARAMETRISATIONS:
            raise ValueError(f"parametrisation must be one of {PARAMETRISATIONS}, got {parametrisation!r}")
        self.subpolicies = [tuple(s) for s in subpolicies]
        s, k = len(self.subpolicies), len(self.subpolicies[0])
        self.parametrisation = parametrisation
        init = 0.5 if parametrisation == "clamp" else 0.0
        self.weights = nn.Parameter(torch.full((s,), init_weight))
        self.probabilities = nn.Parameter(torch.full((s, k), init))
        self.magnitudes = nn.Parameter(torch.full((s, k), init))
        self.control = ControlVariate(s * (k + 1), hidden)

    @property
    def policy_parameters(self) -> list[nn.Parameter]:
        return [self.weights, self.probabilities, self.magnitudes]

    def prob_logits(self) -> Tensor:
        if self.parametrisation == "sigmoid":
            return self.probabilities
        p = self.probabilities.clamp(EPS, 1.0 - EPS)
        return torch.log(p) - torch.log1p(-p)

    def probs(self) -> Tensor:
        return torch.sigmoid(self.probabilities) if self.parametrisation == "sigmoid" else self.probabilities.clamp(0, 1)

    def levels(self) -> Tensor:
        """Levels in [0, 1] used to augment (the official code clamps the raw magnitudes)."""
        return torch.sigmoid(self.magnitudes) if self.parametrisation == "sigmoid" else self.magnitudes.clamp(0, 1)

    def st_levels(self) -> Tensor:
        """What the straight-through term adds (the raw magnitudes in the official code)."""
        return torch.sigmoid(self.magnitudes) if self.parametrisation == "sigmoid" else self.magnitudes

    def genotype(self, top_k: int = 25) -> Policy:
        """The found policy: the ``top_k`` sub-policies by softmax(beta), each operation with its
        probability and level in [0, 1]. The weights themselves are discarded (as officially)."""
        order = torch.argsort(self.weights.detach(), descending=True, stable=True)[:top_k].tolist()
        p, m = self.probs().detach().tolist(), self.levels().detach().tolist()
        return Policy(tuple(tuple((op, p[i][j], m[i][j]) for j, op in enumerate(self.subpolicies[i])) for i in order))

    def weight_probabilities(self) -> Tensor:
        return torch.softmax(self.weights.detach(), dim=-1)


# ------------------------------------------------------------------------------ sampling


@dataclass
class Noise:
    """The uniforms of one draw: ``u`` gives the sample, ``v`` the conditional resample."""

    u_w: Tensor
    v_w: Tensor
    u_p: Tensor
    v_p: Tensor


def draw_noise(num_subpolicies: int, num_ops: int, generator: torch.Generator | None = None,
               device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> Noise:
    def rand(*shape):
        return torch.rand(shape, generator=generator, dtype=dtype).clamp_(EPS, 1.0).to(device)

    return Noise(rand(num_subpolicies), rand(num_subpolicies), rand(num_subpolicies, num_ops), rand(num_subpolicies, num_ops))


def bernoulli_conditional(logits: Tensor, b: Tensor, v: Tensor) -> Tensor:
    """``z~ ~ p(z | b)`` for ``z = logit(theta) + logit(u)``: ``u' = v (1 - theta)`` if ``b = 0``,
    ``v theta + 1 - theta`` if ``b = 1``; ``z~ = logit(theta) + logit(u')``."""
    theta = torch.sigmoid(logits)
    v_prime = torch.where(b > 0, v * theta + 1.0 - theta, v * (1.0 - theta))
    return logits + torch.log(v_prime) - torch.log1p(-v_prime)


def categorical_conditional(log_theta: Tensor, k: Tensor | int, v: Tensor) -> Tensor:
    """``z~ ~ p(z | argmax z = k)`` for ``z = log theta + Gumbel``: ``z~_k = -log(-log v_k)``,
    ``z~_i = -log(-log v_i / theta_i - log v_k)`` for ``i != k``. ``k`` may be batched like ``v[..., 0]``."""
    theta = torch.exp(log_theta)
    idx = torch.as_tensor(k, device=v.device).long().expand(v.shape[:-1]).unsqueeze(-1)
    log_vk = torch.log(v.gather(-1, idx))
    others = -torch.log(-torch.log(v) / theta - log_vk)
    top = -torch.log(-log_vk)
    return torch.where(torch.arange(v.shape[-1], device=v.device) == idx, top, others)


@dataclass
class Relaxation:
    """One draw and its relaxations, in the autograd graph of ``beta`` and the probability logits."""

    k: int  # chosen sub-policy
    b: Tensor  # (S, K) on/off of every operation (float 0/1)
    prob_logits: Tensor
    log_w: Tensor
    sig_z: Tensor  # sigma(z_p / tau)
    soft_z: Tensor  # softmax(z_beta / tau)
    sig_zt: Tensor  # the same for the conditional resample z~
    soft_zt: Tensor

    def slots(self) -> tuple[Tensor, Tensor]:
        """``(applied (K,) bool, op indices (K,))`` of the chosen sub-policy."""
        return self.b[self.k] > 0, torch.tensor(self.k)


def relax(weights: Tensor, prob_logits: Tensor, noise: Noise, tau: float) -> Relaxation:
    log_w = torch.log_softmax(weights, dim=-1)
    z_w = log_w - torch.log(-torch.log(noise.u_w))
    k = int(torch.argmax(z_w.detach()))
    z_p = prob_logits + torch.log(noise.u_p) - torch.log1p(-noise.u_p)
    b = (z_p.detach() > 0).to(prob_logits.dtype)
    zt_p = bernoulli_conditional(prob_logits, b, noise.v_p)
    zt_w = categorical_conditional(log_w, k, noise.v_w)
    return Relaxation(k=k, b=b, prob_logits=prob_logits, log_w=log_w,
                      sig_z=torch.sigmoid(z_p / tau), soft_z=torch.softmax(z_w / tau, dim=-1),
                      sig_zt=torch.sigmoid(zt_p / tau), soft_zt=torch.softmax(zt_w / tau, dim=-1))


def log_prob(rel: Relaxation, broadcast: bool = False) -> Tensor:
    """``log p(b, k)`` = sum of the Bernoulli log-probabilities + the categorical one.
    ``broadcast=True`` reproduces the official code, where the categorical term is added to each
    of the S x K Bernoulli terms before summing (so it counts S x K times)."""
    bern = torch.distributions.Bernoulli(logits=rel.prob_logits).log_prob(rel.b)
    cat = torch.distributions.Categorical(logits=rel.log_w).log_prob(torch.tensor(rel.k, device=rel.log_w.device))
    return (bern + cat).sum() if broadcast else bern.sum() + cat


class RelaxTerms:
    """The parts of the RELAX estimate that do not depend on ``f``: the score
    ``d log p(b) / d theta``, ``c(z~)`` and ``d c(z)/d theta - d c(z~)/d theta`` (kept in the graph
    of ``phi`` so that the variance objective can be differentiated)."""

    def __init__(self, rel: Relaxation, control: nn.Module, params: Sequence[Tensor], broadcast: bool = False):
        self.params = list(params)
        c_z = control(rel.sig_z, rel.soft_z)
        self.c_zt = control(rel.sig_zt, rel.soft_zt)
        self.score = torch.autograd.grad(log_prob(rel, broadcast), self.params, retain_graph=True)
        d_cz = torch.autograd.grad(c_z, self.params, create_graph=True, retain_graph=True)
        d_czt = torch.autograd.grad(self.c_zt, self.params, create_graph=True, retain_graph=True)
        self.correction = [a - b for a, b in zip(d_cz, d_czt)]

    def estimate(self, f: Tensor | float) -> list[Tensor]:
        """RELAX: ``[f - c(z~)] score + d c(z) - d c(z~)`` (in the graph of ``phi``)."""
        return [(f - self.c_zt) * s + c for s, c in zip(self.score, self.correction)]

    @staticmethod
    def variance_loss(grads: Sequence[Tensor]) -> Tensor:
        """The RELAX variance objective: the mean squared gradient estimate over all entries."""
        return torch.cat([g.reshape(-1) for g in grads]).pow(2).mean()


def reinforce_estimate(rel: Relaxation, f: Tensor | float, params: Sequence[Tensor]) -> list[Tensor]:
    """The plain score-function estimate ``f(b) d log p(b) / d theta`` (no control variate)."""
    return [f * s for s in torch.autograd.grad(log_prob(rel), list(params), retain_graph=True)]


def straight_through(x: Tensor, st_levels: Tensor, k: int, applied: Tensor) -> Tensor:
    """``x + sum_{applied i} (m_ki - stopgrad(m_ki))``: forward value exactly ``x``;
    ``dL/dm_ki = sum of dL/dx`` over every pixel, channel and image, for applied ops only."""
    m = st_levels[k] * applied.to(st_levels.dtype)
    shift = (m - m.detach()).sum()
    return x + shift


def gumbel_st_input(x: Tensor, rel: Relaxation) -> Tensor:
    """The official ``search_gumbel`` surrogate (ablation): hard one-hot ``h`` and hard ``b`` forward,
    relaxed gradients backward (straight-through Gumbel-softmax), combined as
    ``sum_j h_j A_j`` with ``A_k = sum_sel P(sel) (x if sel is the drawn pattern else 1)`` and
    ``A_j = 1`` otherwise. The forward value is exactly ``x``; only gradients flow through it."""
    s = rel.soft_z.shape[0]
    hard_w = torch.zeros(s, device=x.device, dtype=rel.soft_z.dtype)
    hard_w[rel.k] = 1.0
    h = hard_w + (rel.soft_z - rel.soft_z.detach())
    bt = rel.b[rel.k] + (rel.sig_z[rel.k] - rel.sig_z[rel.k].detach())
    num_ops = bt.shape[0]
    drawn = int(sum(int(rel.b[rel.k, i].item()) << i for i in range(num_ops)))
    a_k = 0.0
    for sel in range(2 ** num_ops):
        prob = 1.0
        for i in range(num_ops):
            prob = prob * (bt[i] if sel & (1 << i) else 1.0 - bt[i])
        a_k = a_k + prob * (x if sel == drawn else 1.0)
    surrogate = h[rel.k] * a_k + (h.sum() - h[rel.k])
    return x + (surrogate - surrogate.detach())


# --------------------------------------------------------------------- the bi-level step


@dataclass
class SearchConfig:
    tau: float = 0.5
    momentum: float = 0.9
    weight_decay: float = 2e-4
    grad_clip: float = 5.0
    hvp_r: float = 0.01
    estimator: str = "relax"
    official_drop_xi: bool = False
    official_cv_finite_difference: bool = False
    official_logprob_broadcast: bool = False


def _flat_norm(ts: Sequence[Tensor]) -> Tensor:
    return torch.sqrt(sum((t.detach().double() ** 2).sum() for t in ts)).float()


def _grads_or_zeros(loss: Tensor, params: Sequence[Tensor], retain: bool = True) -> list[Tensor]:
    gs = torch.autograd.grad(loss, list(params), retain_graph=retain, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, gs)]


class SearchStep:
    """One DADA search step on a network ``model`` and the policy ``aug``.

    ``all_reduce`` (optional) averages a list of tensors over DDP ranks in place; it is called
    on the network gradient, the validation gradient and the policy/control-variate gradients.
    """

    def __init__(self, model: nn.Module, aug: AugmentParameters, net_optimizer: torch.optim.Optimizer,
                 arch_optimizer: torch.optim.Optimizer, cfg: SearchConfig, all_reduce=None):
        if cfg.estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {ESTIMATORS}, got {cfg.estimator!r}")
        self.model, self.aug, self.cfg = model, aug, cfg
        self.net_optimizer, self.arch_optimizer = net_optimizer, arch_optimizer
        self.all_reduce = all_reduce or (lambda ts: None)
        self.loss_fn = nn.CrossEntropyLoss()

    def relaxation(self, noise: Noise) -> Relaxation:
        return relax(self.aug.weights, self.aug.prob_logits(), noise, self.cfg.tau)

    def network_input(self, x_aug: Tensor, rel: Relaxation) -> Tensor:
        """The (straight-through) network input for the augmented batch ``x_aug``."""
        x = straight_through(x_aug, self.aug.st_levels(), rel.k, rel.b[rel.k] > 0)
        if self.cfg.estimator == "gumbel_st":
            x = gumbel_st_input(x, rel)
        return x

    def __call__(self, x_aug: Tensor, y: Tensor, x_val: Tensor, y_val: Tensor, noise: Noise, xi: float) -> dict:
        cfg, model, aug = self.cfg, self.model, self.aug
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        params = [p for _, p in model.named_parameters() if p.requires_grad]
        buffers = {n: b for n, b in model.named_buffers()}
        pol = aug.policy_parameters  # beta, p, m
        phi = list(aug.control.parameters())

        rel = self.relaxation(noise)
        x_in = self.network_input(x_aug, rel)

        # (1) training loss at w with the sampled augmentation (also the network step's gradient)
        logits = model(x_in)
        loss = self.loss_fn(logits, y)
        g_w = list(torch.autograd.grad(loss, params, retain_graph=True))
        self.all_reduce(g_w)

        # (2) one unrolled SGD step: w' = w - xi (g + wd w + momentum buf)
        with torch.no_grad():
            w_prime = []
            for p, g in zip(params, g_w):
                buf = self.net_optimizer.state.get(p, {}).get("momentum_buffer")
                moment = cfg.momentum * buf if buf is not None else torch.zeros_like(p)
                w_prime.append(p - xi * (moment + g + cfg.weight_decay * p))

        # (3) v = dL_val(w')/dw' (validation without augmentation; buffers copied, not updated)
        w_prime = [w.requires_grad_() for w in w_prime]
        val_loss = self.loss_fn(functional_call(model, ({**dict(zip(names, w_prime))},
                                                        {n: b.clone() for n, b in buffers.items()}), (x_val,)), y_val)
        v = list(torch.autograd.grad(val_loss, w_prime))
        self.all_reduce(v)

        # (4) policy gradients at w +- r v with the same draw (common random numbers)
        r = cfg.hvp_r / (_flat_norm(v) + 1e-12)
        terms = RelaxTerms(rel, aug.control, pol[:2], cfg.official_logprob_broadcast) if cfg.estimator == "relax" else None
        side = {}
        for sign in (+1, -1):
            w_shift = {n: (p + sign * r * d).detach() for n, p, d in zip(names, params, v)}
            f = self.loss_fn(functional_call(model, (w_shift, {n: b.clone() for n, b in buffers.items()}), (x_in,)), y)
            if terms is not None:
                est = terms.estimate(f.detach())
                g_m = _grads_or_zeros(f, [pol[2]])[0]
                side[sign] = {"policy": [est[0], est[1], g_m], "var": RelaxTerms.variance_loss(est)}
            else:
                side[sign] = {"policy": _grads_or_zeros(f, pol)}
        scale = 1.0 if cfg.official_drop_xi else xi
        pol_grads = [-(scale * (a.detach() - b.detach()) / (2 * r)) for a, b in zip(side[1]["policy"], side[-1]["policy"])]
        phi_grads = []
        if terms is not None:
            if cfg.official_cv_finite_difference:
                gp = torch.autograd.grad(side[1]["var"], phi, retain_graph=True)
                gn = torch.autograd.grad(side[-1]["var"], phi, retain_graph=True)
                phi_grads = [-(scale * (a - b) / (2 * r)) for a, b in zip(gp, gn)]
            else:  # the RELAX variance objective of the estimate at w
                var0 = RelaxTerms.variance_loss(terms.estimate(loss.detach()))
                phi_grads = list(torch.autograd.grad(var0, phi))
        self.all_reduce(pol_grads + phi_grads)
        self.last_grads = {"policy": pol_grads, "phi": phi_grads, "r": r, "v": v}

        # (5) Adam step on the policy (and phi)
        self.arch_optimizer.zero_grad(set_to_none=True)
        for p, g in zip(pol + (phi if phi_grads else []), pol_grads + phi_grads):
            p.grad = g.detach().clone()
        self.arch_optimizer.step()

        # (6) network step on the same augmented batch
        self.net_optimizer.zero_grad(set_to_none=True)
        for p, g in zip(params, g_w):
            p.grad = g.detach()
        gnorm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        self.net_optimizer.step()
        with torch.no_grad():
            acc = (logits.argmax(1) == y).float().mean().item() * 100
        return {"loss": loss.item(), "val_loss_unrolled": val_loss.item(), "acc": acc, "k": rel.k,
                "grad_norm": float(gnorm), "r": float(r)}


def finite_difference_hvp(grad_fn, params: Sequence[Tensor], v: Sequence[Tensor], r: float = 0.01) -> list[Tensor]:
    """``[grad_fn(w + eps v) - grad_fn(w - eps v)] / (2 eps)`` with ``eps = r / ||v||``: the
    mixed second derivative (d/dalpha)(dL/dw . v) DADA/DARTS use, by central differences.
    ``grad_fn(params)`` returns gradients w.r.t. the other variables (alpha)."""
    eps = r / (_flat_norm(v) + 1e-12)
    plus = grad_fn([p + eps * d for p, d in zip(params, v)])
    minus = grad_fn([p - eps * d for p, d in zip(params, v)])
    return [(a - b) / (2 * eps) for a, b in zip(plus, minus)]


__all__ = ["ESTIMATORS", "AugmentParameters", "ControlVariate", "Noise", "Relaxation", "RelaxTerms", "SearchConfig",
           "SearchStep", "bernoulli_conditional", "categorical_conditional", "draw_noise", "finite_difference_hvp",
           "gumbel_st_input", "log_prob", "reinforce_estimate", "relax", "straight_through", "math"]
