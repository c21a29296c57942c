"""A toy with a known gradient for the policy-gradient estimators DADA can use.

``S`` sub-policies (categorical over ``softmax(beta)``), each with ``K`` operations switched on
with probability ``p``; the "loss" of a draw is a fixed table ``f(k, b_1..b_K)``. The exact
gradient of ``E[f]`` w.r.t. ``beta`` and ``p`` follows by enumerating all ``S * 2^K`` outcomes.
Each estimator uses the package's own sampling code (:func:`dada.search.relax`) so the toy tests
exactly what the search runs:

* ``relax``: :class:`dada.search.RelaxTerms` with a control variate ``c_phi`` (fixed or trained
  on the RELAX variance objective);
* ``reinforce``: ``f(b) d log p(b)``;
* ``gumbel_st``: straight-through Gumbel-softmax: hard sample forward, ``softmax(z / tau)`` and
  ``sigmoid(z_p / tau)`` backward, through the multilinear extension of ``f``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import Tensor

from .search import ControlVariate, RelaxTerms, draw_noise, reinforce_estimate, relax

ESTIMATORS = ("relax", "reinforce", "gumbel_st")


@dataclass
class Toy:
    table: Tensor  # (S, 2, ..., 2) float64
    beta: Tensor  # (S,) float64, requires grad
    p: Tensor  # (S, K) float64 raw probabilities in (0, 1), requires grad
    tau: float = 0.5

    @property
    def shape(self) -> tuple[int, int]:
        return self.p.shape[0], self.p.shape[1]

    def prob_logits(self) -> Tensor:
        return torch.log(self.p) - torch.log1p(-self.p)

    def f(self, k: int, b: Tensor) -> Tensor:
        return self.table[(k, *[int(v) for v in b[k].tolist()])]

    def expectation(self) -> Tensor:
        s, k = self.shape
        w = torch.softmax(self.beta, -1)
        total = 0.0
        for bits in itertools.product((0, 1), repeat=k):
            pb = torch.prod(torch.stack([self.p[:, i] if bit else 1 - self.p[:, i] for i, bit in enumerate(bits)]), 0)
            total = total + (w * pb * self.table[(slice(None), *bits)]).sum()
        return total

    def exact_gradient(self) -> list[Tensor]:
        return list(torch.autograd.grad(self.expectation(), [self.beta, self.p]))


def make_toy(num_subpolicies: int = 4, num_ops: int = 2, seed: int = 0, tau: float = 0.5) -> Toy:
    g = torch.Generator().manual_seed(seed)
    table = torch.rand((num_subpolicies,) + (2,) * num_ops, generator=g, dtype=torch.float64)
    beta = (torch.randn(num_subpolicies, generator=g, dtype=torch.float64) * 0.5).requires_grad_()
    p = (0.2 + 0.6 * torch.rand(num_subpolicies, num_ops, generator=g, dtype=torch.float64)).requires_grad_()
    return Toy(table, beta, p, tau)


def make_control(toy: Toy, seed: int = 0, scale: float = 1.0, hidden: int = 32) -> ControlVariate:
    s, k = toy.shape
    torch.manual_seed(seed)
    c = ControlVariate(s * (k + 1), hidden).double()
    with torch.no_grad():
        for prm in c.parameters():
            prm.mul_(scale)
    return c


def estimate(toy: Toy, estimator: str, noise, control: ControlVariate | None = None, create_graph: bool = False):
    """One gradient estimate ``[d/dbeta, d/dp]`` (and the RELAX terms when ``estimator='relax'``)."""
    params = [toy.beta, toy.p]
    rel = relax(toy.beta, toy.prob_logits(), noise, toy.tau)
    f = toy.f(rel.k, rel.b)
    if estimator == "relax":
        terms = RelaxTerms(rel, control, params)
        est = terms.estimate(f)
        return (est if create_graph else [e.detach() for e in est]), terms
    if estimator == "reinforce":
        return [e.detach() for e in reinforce_estimate(rel, f, params)], None
    if estimator == "gumbel_st":
        s, k = toy.shape
        hard = torch.zeros(s, dtype=toy.beta.dtype)
        hard[rel.k] = 1.0
        h = hard + (rel.soft_z - rel.soft_z.detach())
        bt = rel.b + (rel.sig_z - rel.sig_z.detach())
        surrogate = 0.0
        for bits in itertools.product((0, 1), repeat=k):
            pb = torch.prod(torch.stack([bt[:, i] if bit else 1 - bt[:, i] for i, bit in enumerate(bits)]), 0)
            surrogate = surrogate + (h * pb * toy.table[(slice(None), *bits)]).sum()
        return [g.detach() for g in torch.autograd.grad(surrogate, params)], None
    raise ValueError(f"unknown estimator {estimator!r}; expected one of {ESTIMATORS}")


def sample_estimates(toy: Toy, estimator: str, n: int, seed: int, control: ControlVariate | None = None) -> Tensor:
    """``(n, S + S*K)`` flattened estimates with the noise of ``seed``."""
    s, k = toy.shape
    g = torch.Generator().manual_seed(seed)
    out = torch.empty(n, s + s * k, dtype=torch.float64)
    for i in range(n):
        est, _ = estimate(toy, estimator, draw_noise(s, k, g, dtype=torch.float64), control)
        out[i] = torch.cat([e.reshape(-1) for e in est])
    return out


def train_control(toy: Toy, control: ControlVariate, steps: int = 300, lr: float = 1e-2, seed: int = 1) -> list[float]:
    """Fit ``c_phi`` on the RELAX variance objective (mean squared estimate) with Adam."""
    s, k = toy.shape
    opt = torch.optim.Adam(control.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        est, _ = estimate(toy, "relax", draw_noise(s, k, g, dtype=torch.float64), control, create_graph=True)
        loss = RelaxTerms.variance_loss(est)
        opt.zero_grad()
        loss.backward(inputs=list(control.parameters()))
        opt.step()
        losses.append(loss.item())
    return losses
