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
``sum M^2 / E / S^2 - 1`` (>= 0 by Cauchy-Schwarz since ``sum E = 1``). All landmarks of all images
are processed at once: crop each heatmap around its window, upsample bilinearly to the candidate grid
of step ``1/subpixel`` (two constant matrices), compute both patch sums as separable dilated sums,
add the prior, mask the window and take one ``argmin`` per landmark. The cost does not depend on the
heatmap size, only on the window and patch sizes.

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
    chunk: int = 64  # unused by the crop search; kept so configs stay valid

    def __post_init__(self):
        if self.sigma_prior <= 0 or self.sigma_e <= 0:
            raise ValueError("search: sigma_prior and sigma_e must be > 0.")
        if self.lam < 0 or self.window_radius < 0 or self.patch_radius < 1 or self.subpixel < 1:
            raise ValueError("search: need lam >= 0, window_radius >= 0, patch_radius >= 1, subpixel >= 1.")


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


def _interp_matrices(z: torch.Tensor, length: int) -> torch.Tensor:
    """Rows of linear interpolation weights: positions z (B, P) on ``length`` samples -> (B, P, length)."""
    q = z.floor().clamp(0, length - 2)
    a = z - q
    q = q.long()
    m = z.new_zeros(*z.shape, length)
    m.scatter_(-1, q[..., None], (1 - a)[..., None])
    m.scatter_add_(-1, q[..., None] + 1, a[..., None])
    return m


def _dilated_sum(x: torch.Tensor, w: torch.Tensor, u: int, n_out: int, dim: int) -> torch.Tensor:
    """``out[t] = sum_d w[d] * x[t + u*d]`` along ``dim`` for t in range(n_out) (d = 0..2r)."""
    out = None
    for d in range(len(w)):
        term = w[d] * x.narrow(dim, u * d, n_out)
        out = term if out is None else out + term
    return out


@torch.no_grad()
def latent_search(heatmaps: torch.Tensor, observations: torch.Tensor, cfg: SearchConfig = SearchConfig(),
                  return_cost: bool = False):
    """Search the latent landmarks: heatmaps (N, K, H, W), observations (N, K, 2) heatmap coords ->
    (N, K, 2). Candidates are ``o + (i, j) / subpixel`` with ``|i|, |j| <= window_radius * subpixel``
    (a square window centred exactly on the observation, so ``y = o`` is always a candidate).

    Vectorised over images and landmarks: each landmark's heatmap is cropped around its window
    (zero padding beyond the border), upsampled bilinearly to the candidate grid by two constant
    matrices, and the patch sums ``S = sum M`` and ``Q = sum M^2 / E`` of Pearson's
    ``chi2 = Q / S^2 - 1`` are separable dilated sums (``E``'s inverse is separable when the floor is
    inactive; otherwise the floored 2-D kernel is used). A landmark whose window lies entirely
    outside the padded map keeps its observation; a patch with no mass costs ``blank_cost`` (so on a
    blank heatmap the prior keeps ``y = o``).
    ``return_cost`` also returns the cost over each window's candidate grid (N, K, T, T).
    """
    if heatmaps.ndim != 4 or heatmaps.shape[:2] != observations.shape[:2] or observations.shape[-1] != 2:
        raise ValueError(f"latent_search: heatmaps {tuple(heatmaps.shape)} and observations "
                         f"{tuple(observations.shape)} disagree; expected (N, K, H, W) and (N, K, 2).")
    n, k, h, w = heatmaps.shape
    u, r, big_r = cfg.subpixel, cfg.patch_radius, cfg.window_radius
    dt = heatmaps.dtype if heatmaps.is_floating_point() else torch.float32
    obs = observations.to(dt).reshape(n * k, 2)
    cw = math.ceil(big_r)
    ju = math.floor(big_r * u + 1e-9)  # candidates o + j/u, |j| <= ju
    length = 2 * cw + 2 * r + 3  # crop side (heatmap px): window + patch + 1 for bilinear
    pad = cw + r + 2
    m = F.pad(heatmaps.detach().to(dt).clamp_min(0), (pad, pad, pad, pad)).reshape(n * k, h + 2 * pad, w + 2 * pad)
    fl = obs.floor()
    c0 = fl.long() - (cw + r + 1)  # (NK, 2) crop origin, heatmap px (x, y)
    limit = torch.tensor([w, h]) + 2 * pad - length
    ok = ((c0 + pad >= 0) & (c0 + pad <= limit)).all(-1) & torch.isfinite(obs).all(-1)
    c0p = torch.minimum((c0 + pad).clamp(min=0), limit)
    ar = torch.arange(length)
    rows, cols = c0p[:, 1, None] + ar, c0p[:, 0, None] + ar  # (NK, L)
    crop = m[torch.arange(n * k)[:, None, None], rows[:, :, None], cols[:, None, :]]  # (NK, L, L)
    # fine samples at o + mm/u, mm in [-(ju + u r), ju + u r], in crop coordinates
    mm = torch.arange(-(ju + u * r), ju + u * r + 1, dtype=dt) / u
    rel = torch.where(ok[:, None], obs - fl + (cw + r + 1), torch.full_like(obs, float(cw + r + 1)))
    ux = _interp_matrices(rel[:, 0, None] + mm, length)  # (NK, Lf, L)
    uy = _interp_matrices(rel[:, 1, None] + mm, length)
    fine = uy @ crop @ ux.transpose(1, 2)  # (NK, Lf, Lf)
    n_out = 2 * ju + 1
    e = expected_patch(cfg.sigma_e, r, cfg.floor, torch.float64)
    ones = torch.ones(2 * r + 1, dtype=dt)
    s = _dilated_sum(_dilated_sum(fine, ones, u, n_out, -1), ones, u, n_out, -2)
    g1 = e[r] / e[r, r].sqrt()  # E = g1 g1^T when the floor is inactive
    sq = fine * fine
    if torch.allclose(torch.outer(g1, g1), e, rtol=1e-9, atol=0):
        winv = (1.0 / g1).to(dt)
        q = _dilated_sum(_dilated_sum(sq, winv, u, n_out, -1), winv, u, n_out, -2)
    else:  # floored E: the 2-D kernel, one row offset at a time
        winv2 = (1.0 / e).to(dt)
        q = sum(_dilated_sum(sq.narrow(-2, u * dy, n_out), winv2[dy], u, n_out, -1) for dy in range(2 * r + 1))
    chi = torch.where(s > 1e-8, (q / s.clamp_min(1e-12) ** 2 - 1).clamp_min(0), torch.full_like(s, cfg.blank_cost))
    off = torch.arange(-ju, ju + 1, dtype=dt) / u  # candidate offsets from o
    prior = (off[:, None] ** 2 + off[None, :] ** 2) / (2 * cfg.sigma_prior ** 2)
    cost = prior + cfg.lam * chi  # (NK, T, T): [dy index, dx index]
    best = cost.flatten(1).argmin(-1)
    y = obs + torch.stack([off[best % n_out], off[best // n_out]], -1)
    out = torch.where(ok[:, None], y, obs).reshape(n, k, 2)
    return (out, cost.reshape(n, k, n_out, n_out)) if return_cost else out
