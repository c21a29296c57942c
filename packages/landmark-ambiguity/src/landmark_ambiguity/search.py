"""Latent ground-truth search (the E-step of the paper's alternation).

The annotation ``o^k`` is a noisy observation of a latent, semantically consistent landmark
``y^k``. With the network ``W`` fixed, each landmark is searched independently in a window
``N(o^k)`` around the observation:

    y^k = argmin_{y in N(o^k)}  ||y - o^k||^2 / (2 sigma^2)  +  lambda * chi2( Phi(M^k, y), E )

* prior: ``p(o|y) ~ exp(-||y - o||^2 / (2 sigma^2))``;
* likelihood: ``p(y|x; W) ~ exp(-lambda chi2)`` where ``Phi(M^k, y)`` is the predicted heatmap
  channel ``k`` cropped around ``y`` (a ``(2r+1)^2`` patch, negative values clamped to 0) and
  normalised to sum 1, ``E`` the ideal Gaussian patch (std ``sigma_e``, floored at ``floor`` and
  normalised), and ``chi2(P, E) = sum (P - E)^2 / E`` (Pearson).

Vectorisation: with ``P = M / S``, ``S = sum_patch M``, Pearson's chi2 is
``sum M^2 / E / S^2 - 1`` (>= 0 by Cauchy-Schwarz since ``sum E = 1``). All landmarks of a chunk of
images are processed at once: one ``grid_sample`` samples each heatmap bilinearly on the fine grid
``o + m / subpixel`` that holds every candidate's patch, both patch sums are separable dilated sums
over it, the prior is added and one ``argmin`` per landmark picks ``y``. The cost per landmark does
not depend on the heatmap size, only on the window and patch sizes; memory is bounded by
``chunk`` images whatever the size of the set.

All coordinates are heatmap coordinates (see :mod:`landmark_ambiguity.heatmaps`).
"""

from __future__ import annotations

from dataclasses import dataclass

import math

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class SearchConfig:
    sigma_prior: float = 1.0  # prior std, heatmap px (ours: = heatmap sigma, as the notes suggest)
    lam: float = 1.0  # weight of the chi2 likelihood term
    window_radius: float = 2.0  # N(o): |y - o|_inf <= radius (paper: 17x17 on 64x64 maps; ours scaled to 1/8 side)
    sigma_e: float = 1.0  # std of the expected Gaussian E (= training heatmap sigma)
    patch_radius: int = 3  # Phi and E are (2r+1)^2 patches (ours: ~3 sigma)
    subpixel: int = 4  # candidates every 1/subpixel heatmap px
    floor: float = 1e-6  # E floor before renormalisation
    blank_cost: float = 1e4  # chi2 where the patch holds no mass (likelihood undefined)
    chunk: int = 64  # images per chunk: peak memory grows with the chunk, not with the set

    def __post_init__(self):
        if self.sigma_prior <= 0 or self.sigma_e <= 0:
            raise ValueError("search: sigma_prior and sigma_e must be > 0.")
        if self.lam < 0 or self.window_radius < 0 or self.patch_radius < 1 or self.subpixel < 1 or self.chunk < 1:
            raise ValueError("search: need lam >= 0, window_radius >= 0, patch_radius >= 1, subpixel >= 1, chunk >= 1.")


def expected_patch(sigma_e: float, radius: int, floor: float = 1e-6, dtype=torch.float32) -> torch.Tensor:
    """The ideal Gaussian patch E, (2r+1)^2, floored and normalised to sum 1."""
    r = torch.arange(-radius, radius + 1, dtype=torch.float64)
    g = torch.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * sigma_e ** 2))
    g = g / g.sum()
    g = g.clamp_min(floor)
    return (g / g.sum()).to(dtype)


def chi2_distance(p: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """Pearson chi2 between two (batches of) patches after normalising each to sum 1 (reference form)."""
    p = p.clamp_min(0)
    p = p / p.sum((-2, -1), keepdim=True)
    e = e / e.sum((-2, -1), keepdim=True)
    return ((p - e) ** 2 / e).sum((-2, -1))


def _dilated_sum(x: torch.Tensor, w: torch.Tensor, u: int, n_out: int, dim: int) -> torch.Tensor:
    """``out[t] = sum_d w[d] * x[t + u*d]`` along ``dim`` for t in range(n_out) (d = 0..2r)."""
    out = None
    for d in range(len(w)):
        term = w[d] * x.narrow(dim, u * d, n_out)
        out = term if out is None else out + term
    return out


class _Plan:
    """The constants of one search configuration: fine sampling offsets, candidate offsets, prior, 1/E."""

    def __init__(self, cfg: SearchConfig, dtype: torch.dtype):
        u, r = cfg.subpixel, cfg.patch_radius
        self.u, self.r = u, r
        self.ju = math.floor(cfg.window_radius * u + 1e-9)  # candidates o + j/u, |j| <= ju
        self.n_out = 2 * self.ju + 1
        # fine samples at o + m/u, |m| <= ju + u r: every candidate's patch points y + d, |d| <= r, are among them
        self.fine = torch.arange(-(self.ju + u * r), self.ju + u * r + 1, dtype=dtype) / u
        self.off = torch.arange(-self.ju, self.ju + 1, dtype=dtype) / u  # candidate offsets from o
        self.prior = (self.off[:, None] ** 2 + self.off[None, :] ** 2) / (2 * cfg.sigma_prior ** 2)  # [dy, dx]
        e = expected_patch(cfg.sigma_e, r, cfg.floor, torch.float64)
        g1 = e[r] / e[r, r].sqrt()  # E = g1 g1^T while the floor is inactive
        self.separable = bool(torch.allclose(torch.outer(g1, g1), e, rtol=1e-9, atol=0))
        self.winv = (1.0 / g1).to(dtype)  # separable 1/E
        self.winv2 = (1.0 / e).to(dtype)  # 2-D 1/E (floored E)
        self.ones = torch.ones(2 * r + 1, dtype=dtype)
        self.lam, self.blank_cost = cfg.lam, cfg.blank_cost


def _search_chunk(heatmaps: torch.Tensor, obs: torch.Tensor, plan: _Plan) -> tuple[torch.Tensor, torch.Tensor]:
    """One chunk: heatmaps (B, H, W) and observations (B, 2) -> searched points (B, 2) and costs (B, T, T)."""
    b, h, w = heatmaps.shape
    u, n_out = plan.u, plan.n_out
    finite = torch.isfinite(obs).all(-1)
    o = torch.where(finite[:, None], obs, torch.zeros_like(obs))
    # bilinear samples of every heatmap on its own fine grid o + m/u (zero beyond the border):
    # grid_sample with align_corners=True maps -1 / +1 to the centres of the first / last cell
    gx = (o[:, 0, None] + plan.fine) * (2.0 / max(w - 1, 1)) - 1.0  # (B, Lf)
    gy = (o[:, 1, None] + plan.fine) * (2.0 / max(h - 1, 1)) - 1.0
    lf = len(plan.fine)
    grid = torch.stack([gx[:, None, :].expand(b, lf, lf), gy[:, :, None].expand(b, lf, lf)], -1)
    fine = F.grid_sample(heatmaps[:, None], grid, mode="bilinear", padding_mode="zeros", align_corners=True)[:, 0]
    # patch sums for every candidate: S = sum_d M(y + d), Q = sum_d M(y + d)^2 / E_d (d on the integer patch)
    s = _dilated_sum(_dilated_sum(fine, plan.ones, u, n_out, -1), plan.ones, u, n_out, -2)
    sq = fine * fine
    if plan.separable:
        q = _dilated_sum(_dilated_sum(sq, plan.winv, u, n_out, -1), plan.winv, u, n_out, -2)
    else:  # floored E: the 2-D kernel, one row offset at a time
        q = sum(_dilated_sum(sq.narrow(-2, u * dy, n_out), plan.winv2[dy], u, n_out, -1)
                for dy in range(2 * plan.r + 1))
    chi = torch.where(s > 1e-8, (q / s.clamp_min(1e-12) ** 2 - 1).clamp_min(0), torch.full_like(s, plan.blank_cost))
    cost = plan.prior + plan.lam * chi  # (B, T, T): [dy index, dx index]
    best = cost.flatten(1).argmin(-1)
    y = o + torch.stack([plan.off[best % n_out], plan.off[best // n_out]], -1)
    return torch.where(finite[:, None], y, obs), cost


@torch.no_grad()
def latent_search(heatmaps: torch.Tensor, observations: torch.Tensor, cfg: SearchConfig = SearchConfig(),
                  return_cost: bool = False):
    """Search the latent landmarks: heatmaps (N, K, H, W), observations (N, K, 2) heatmap coords ->
    (N, K, 2). Candidates are ``o + (i, j) / subpixel`` with ``|i|, |j| <= window_radius * subpixel``
    (a square window centred exactly on the observation, so ``y = o`` is always a candidate).

    Vectorised over images and landmarks, ``cfg.chunk`` images at a time (memory is bounded by the chunk,
    not by the set): each landmark's heatmap is sampled bilinearly on the fine grid ``o + m / subpixel``
    that holds every candidate's patch (one ``grid_sample``; zero beyond the border), and the patch sums
    ``S = sum M`` and ``Q = sum M^2 / E`` of Pearson's ``chi2 = Q / S^2 - 1`` are separable dilated sums
    (``E``'s inverse is separable while the floor is inactive; otherwise the floored 2-D kernel is used).
    A patch with no mass costs ``blank_cost`` (so on a blank heatmap, or a window entirely off the map,
    the prior keeps ``y = o``); a non-finite observation is returned unchanged.
    ``return_cost`` also returns the cost over each window's candidate grid (N, K, T, T).
    """
    if heatmaps.ndim != 4 or heatmaps.shape[:2] != observations.shape[:2] or observations.shape[-1] != 2:
        raise ValueError(f"latent_search: heatmaps {tuple(heatmaps.shape)} and observations "
                         f"{tuple(observations.shape)} disagree; expected (N, K, H, W) and (N, K, 2).")
    n, k, h, w = heatmaps.shape
    dt = heatmaps.dtype if heatmaps.is_floating_point() else torch.float32
    plan = _Plan(cfg, dt)
    out, costs = [], []
    for i in range(0, n, cfg.chunk):
        hm = heatmaps[i:i + cfg.chunk].detach().to(dt).clamp_min(0)
        b = len(hm)
        y, cost = _search_chunk(hm.reshape(b * k, h, w), observations[i:i + cfg.chunk].to(dt).reshape(b * k, 2), plan)
        out.append(y.reshape(b, k, 2))
        if return_cost:
            costs.append(cost.reshape(b, k, plan.n_out, plan.n_out))
    y = torch.cat(out) if out else observations.to(dt).clone()
    if return_cost:
        return y, (torch.cat(costs) if costs else heatmaps.new_zeros(0, k, plan.n_out, plan.n_out))
    return y
