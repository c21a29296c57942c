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
``sum M^2 / E / S^2 - 1`` (>= 0 by Cauchy-Schwarz since ``sum E = 1``), so only two patch sums per
candidate are needed. Landmarks are processed in blocks of whole images, about ``BLOCK`` landmarks
at a time (a cache-sized block whose buffers are reused, see :class:`Workspace`; ``chunk`` images
bound the memory); the heatmaps may come in any layout (a channels-last network's output is read
as it is, in the one copy the search makes). When ``1/E`` is separable (the floor inactive: the
default) the heatmap is interpolated along x only, on the integer rows the patches touch, and the bilinear interpolation
along y is folded into three row sums (of ``X``, ``X^2 / E`` and ``X[k] X[k+1] / E``) combined with
weights ``1-b``, ``b`` and ``(1-b)^2``, ``2b(1-b)``, ``b^2``; the sums along x and along the rows
are products with banded matrices. Otherwise (floored ``E``) one ``grid_sample`` samples each heatmap on the full fine
grid ``o + m / subpixel`` and the 2-D kernel is applied. Both give the same ``S`` and ``Q`` (tested).
The prior is added and one ``argmin`` per landmark picks ``y``. The cost per landmark does not depend
on the heatmap size, only on the window and patch sizes.

All coordinates are heatmap coordinates (see :mod:`landmark_ambiguity.heatmaps`).
"""

from __future__ import annotations

from dataclasses import dataclass

import math

import torch
import torch.nn.functional as F


BLOCK = 512  # about this many landmarks (whole images) searched at once (fastest on a 2-core CPU; same results)


def _blocks(n: int, block: int) -> range:
    """Start indices of ``max(1, n // block)`` equal blocks covering ``range(n)`` (each under 2 ``block``):
    no short tail block (a chunk of 64 faces of 68 landmarks, 8 faces per block at BLOCK 512, is 8 blocks of 8
    faces, 544 landmarks each)."""
    size = max(1, -(-n // max(1, n // block)))
    return range(0, n, size)


class Workspace:
    """Buffers of the row-wise search reused from block to block (blocks have equal sizes) and, when
    passed to :func:`latent_search`, from call to call (the chunks of one search pass): the search's
    intermediates are about 1 MB each, and on a CPU a fresh buffer of that size can cost more in
    first-touch page faults than the arithmetic written into it. Holds no results between calls."""

    def __init__(self):
        self._bufs: dict[str, torch.Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], like: torch.Tensor, zero: bool = False,
            dtype: torch.dtype | None = None) -> torch.Tensor:
        """A buffer ``name`` of ``shape`` (``dtype`` or that of ``like``, on its device); contents
        undefined unless ``zero`` (zeroed when allocated only: callers keep its zero parts zero)."""
        dtype = dtype or like.dtype
        t = self._bufs.get(name)
        if t is None or t.shape != shape or t.dtype != dtype or t.device != like.device:
            t = (torch.zeros if zero else torch.empty)(shape, dtype=dtype, device=like.device)
            self._bufs[name] = t
        return t


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


def _dilated_sum(x: torch.Tensor, w, u: int, n_out: int, dim: int, out=None) -> torch.Tensor:
    """``out[t] = sum_d w[d] * x[t + u*d]`` along ``dim`` for t in range(n_out) (d = 0..2r)."""
    w = w.tolist() if torch.is_tensor(w) else w
    out = torch.mul(x.narrow(dim, 0, n_out), w[0], out=out)
    for d in range(1, len(w)):
        out.add_(x.narrow(dim, u * d, n_out), alpha=w[d])
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
        # banded matrices of the row-wise path (_patch_sums_rows): the patch sums along x on the fine axis
        lf = len(self.fine)
        self.kx1 = _band(lf, self.n_out, self.ones, u).T.contiguous()
        self.kxw = _band(lf, self.n_out, self.winv, u).T.contiguous()
        # integer parts k of phi + j/u (phi in [0, 1), |j| <= ju), and the rows k + d, k + d + 1 they touch
        self.kmin, kmax = -((self.ju + u - 1) // u), self.ju // u + 1
        self.nk = kmax - self.kmin + 1
        self.rows = self.nk + 2 * r + 1
        self.ky1 = _band(self.rows, self.nk + 1, self.ones, 1).T.contiguous()  # (nk + 1, rows): sums along y
        self.kyw = _band(self.rows, self.nk + 1, self.winv, 1).T.contiguous()
        self.lam, self.blank_cost = cfg.lam, cfg.blank_cost


def _search_chunk(heatmaps: torch.Tensor, obs: torch.Tensor, plan: _Plan, sums, ws: Workspace,
                  keep_cost: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One block: B heatmaps (..., H, W) (e.g. images x K, any layout) and observations (B, 2) ->
    searched points (B, 2) and, with ``keep_cost``, the costs (B, T, T) (else None: the cost lives in
    a reused buffer)."""
    finite = torch.isfinite(obs).all(-1)
    o = torch.where(finite[:, None], obs, torch.zeros_like(obs))
    s, q = sums(heatmaps, o, plan, ws)
    # cost = prior + lam chi, chi = Q / S^2 - 1 (>= 0), blank_cost where the patch holds no mass (in place)
    blank = torch.le(s, 1e-8, out=ws.get("blank", s.shape, s, dtype=torch.bool))
    cost = q.div_(s.clamp_min_(1e-12).square_()).sub_(1).clamp_min_(0).masked_fill_(blank, plan.blank_cost)
    cost = cost.mul_(plan.lam).add_(plan.prior)  # (B, T, T): [dy index, dx index]
    best = cost.flatten(1).argmin(-1)
    n_out = plan.n_out
    y = o + torch.stack([plan.off[best % n_out], plan.off[best // n_out]], -1)
    return torch.where(finite[:, None], y, obs), (cost.clone() if keep_cost else None)


def _band(n_in: int, n_out: int, w: torch.Tensor, step: int) -> torch.Tensor:
    """The (n_in, n_out) matrix of the dilated sum ``out[t] = sum_d w[d] x[t + step d]`` (``x @ band``)."""
    m = torch.zeros(n_in, n_out, dtype=w.dtype)
    t = torch.arange(n_out)
    for d in range(len(w)):
        m[t + step * d, t] = w[d]
    return m


def _patch_sums_rows(heatmaps: torch.Tensor, o: torch.Tensor, plan: _Plan,
                     ws: Workspace | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``S`` and ``Q`` for every candidate (B, T, T), separable ``1/E``: the heatmap is interpolated
    only along x (at the fine positions ``o_x + m/u``), on the integer rows the patches touch. Along y a
    candidate at ``k + b`` (integer row ``k``, fraction ``b``) samples ``(1-b) X[k+d] + b X[k+d+1]``,
    so ``S = (1-b) U[k] + b U[k+1]`` with ``U`` the row sums, and (squaring the interpolant)
    ``Q = (1-b)^2 T0[k] + 2b(1-b) T1[k] + b^2 T0[k+1]`` with ``T0``, ``T1`` the ``1/E``-weighted row
    sums of ``X^2`` and of ``X[k] X[k+1]``. Exact (the same bilinear samples as the fine grid), with
    intermediates about ``(2 r + 2) / (2 r u + 1)`` the fine grid's size. The samples are laid out
    (rows, B, x) so that both patch sums are plain matrix products with banded matrices: along x
    (dilated by ``u`` on the fine axis) for all rows and landmarks at once, then along the rows."""
    (h, w), b = heatmaps.shape[-2:], len(o)
    ws = ws or Workspace()
    u, r, n_out, ju = plan.u, plan.r, plan.n_out, plan.ju
    kmin, nk, rows, lf = plan.kmin, plan.nk, plan.rows, len(plan.fine)
    dt = o.dtype
    pad = 1  # a zero border: every index beyond the map is clamped onto it (reads 0, as the fine grid does)
    size_y, size_x = h + 2 * pad, w + 2 * pad
    # one copy into a zero-bordered buffer, in o's dtype, from any layout (e.g. channels-last heatmaps)
    hp = ws.get("padded", (*heatmaps.shape[:-2], size_y, size_x), o, zero=True)  # the border stays 0
    hp[..., pad:pad + h, pad:pad + w].copy_(heatmaps).clamp_min_(0)  # Phi clamps negative heatmap values to 0
    base = torch.arange(b)
    fl = o.floor()
    # the integer rows floor(o_y) + kmin - r + i (i < rows) of every landmark, laid out (rows, B, Wp)
    ri = (fl[:, 1:2] + (kmin - r + pad) + torch.arange(rows, dtype=dt)).clamp(0, size_y - 1).long()
    sel = torch.index_select(hp.view(b * size_y, size_x), 0, (ri + base[:, None] * size_y).T.flatten(),
                             out=ws.get("rows", (rows * b, size_x), hp))
    # x-fine positions o_x + m/u (|m| <= ju + u r) lie between columns c_m and c_m + 1 = c_{m+u}:
    # one gather of the columns c_m for m up to ju + u r + u
    xg = o[:, 0:1] + pad + torch.arange(-(ju + u * r), ju + u * r + u + 1, dtype=dt) / u  # (B, Lf + u)
    cg = xg.floor()
    a = xg[:, :lf] - cg[:, :lf]
    cg = cg.clamp(0, size_x - 1).long()
    g = torch.gather(sel.view(rows, b, size_x), 2, cg.expand(rows, b, lf + u),
                     out=ws.get("g", (rows, b, lf + u), hp))
    x = torch.lerp(g[..., :lf], g[..., u:], a, out=ws.get("x", (rows, b, lf), hp))  # (rows, B, Lf): along x
    # X^2 and X[k] X[k+1] (the last row of the product is never read by a used sum: zero)
    sq = ws.get("sq", (2, rows, b, lf), hp, zero=True)
    torch.mul(x, x, out=sq[0])
    torch.mul(x[:-1], x[1:], out=sq[1, :-1])
    # patch sums along x (one GEMM each), then along the rows (rows -> k = kmin..kmax+1)
    ux = torch.mm(x.view(rows * b, lf), plan.kx1.T, out=ws.get("ux", (rows * b, n_out), hp))
    us = torch.mm(plan.ky1, ux.view(rows, b * n_out), out=ws.get("us", (nk + 1, b * n_out), hp))
    tx = torch.mm(sq.view(2 * rows * b, lf), plan.kxw.T, out=ws.get("tx", (2 * rows * b, n_out), hp))
    t01 = torch.bmm(plan.kyw.expand(2, nk + 1, rows), tx.view(2, rows, b * n_out),
                    out=ws.get("t01", (2, nk + 1, b * n_out), hp))
    t0, t1 = t01
    # each candidate row o_y + j/u = floor(o_y) + k_j + b_j
    yj = (o[:, 1:2] - fl[:, 1:2]) + plan.off  # (B, T)
    kj = yj.floor()
    bj = (yj - kj)[:, :, None]
    kj = ((kj.long() - kmin).clamp(0, nk - 1) * b + base[:, None]).flatten()  # rows of the (nk + 1) B sums

    def at(name, t, k):  # the rows k of a ((nk + 1) B, T) sum, as (B, T, T)
        return torch.index_select(t.view((nk + 1) * b, n_out), 0, k,
                                  out=ws.get(name, (b * n_out, n_out), hp)).view(b, n_out, n_out)

    k1 = kj + b
    cb = 1 - bj
    s = torch.lerp(at("s0", us, kj), at("s1", us, k1), bj, out=ws.get("s", (b, n_out, n_out), hp))
    q = at("q", t0, kj).mul_(cb * cb).addcmul_(at("q1", t1, kj), 2 * bj * cb).addcmul_(at("q2", t0, k1), bj * bj)
    return s, q


def _patch_sums_fine(heatmaps: torch.Tensor, o: torch.Tensor, plan: _Plan,
                     ws: Workspace | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``S`` and ``Q`` for every candidate (B, T, T) on the full fine grid (any ``E``, floored or not)."""
    (h, w), b = heatmaps.shape[-2:], len(o)
    u, n_out = plan.u, plan.n_out
    heatmaps = heatmaps.reshape(b, h, w).to(o.dtype).clamp_min(0)  # Phi clamps negative heatmap values to 0
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
    return s, q


@torch.no_grad()
def latent_search(heatmaps: torch.Tensor, observations: torch.Tensor, cfg: SearchConfig = SearchConfig(),
                  return_cost: bool = False, impl: str = "auto", workspace: Workspace | None = None):
    """Search the latent landmarks: heatmaps (N, K, H, W), observations (N, K, 2) heatmap coords ->
    (N, K, 2). Candidates are ``o + (i, j) / subpixel`` with ``|i|, |j| <= window_radius * subpixel``
    (a square window centred exactly on the observation, so ``y = o`` is always a candidate).

    Vectorised over images and landmarks: ``cfg.chunk`` images at a time, about ``BLOCK`` landmarks per
    vectorised block (memory is bounded by the chunk, not by the set); see the module docstring for the
    two ways the patch sums ``S = sum M`` and ``Q = sum M^2 / E`` of Pearson's ``chi2 = Q / S^2 - 1``
    are computed (zero beyond the heatmap's border in both).
    A patch with no mass costs ``blank_cost`` (so on a blank heatmap, or a window entirely off the map,
    the prior keeps ``y = o``); a non-finite observation is returned unchanged.
    ``return_cost`` also returns the cost over each window's candidate grid (N, K, T, T).

    ``impl``: ``"auto"`` (default) sums the patches row-wise (:func:`_patch_sums_rows`, the faster way)
    whenever ``1/E`` is separable, else on the fine grid; ``"fine"`` always uses the fine grid (the
    reference the row-wise sums are tested against). Both give the same labels.

    ``workspace``: a :class:`Workspace` whose buffers are reused (pass one to every call of a search
    pass that runs chunk by chunk); a new one per call when None. Results do not depend on it.
    """
    if impl not in ("auto", "fine"):
        raise ValueError(f"latent_search: impl={impl!r}; use 'auto' or 'fine'.")
    if heatmaps.ndim != 4 or heatmaps.shape[:2] != observations.shape[:2] or observations.shape[-1] != 2:
        raise ValueError(f"latent_search: heatmaps {tuple(heatmaps.shape)} and observations "
                         f"{tuple(observations.shape)} disagree; expected (N, K, H, W) and (N, K, 2).")
    n, k, h, w = heatmaps.shape
    dt = heatmaps.dtype if heatmaps.is_floating_point() else torch.float32
    plan = _Plan(cfg, dt)
    sums = _patch_sums_rows if plan.separable and impl == "auto" else _patch_sums_fine
    out, costs, ws = [], [], workspace or Workspace()
    per = max(1, round(BLOCK / max(k, 1)))  # whole images per block: about BLOCK landmarks
    for i in range(0, n, cfg.chunk):
        hm = heatmaps[i:i + cfg.chunk].detach()  # any layout and dtype: the sums copy (and clamp) it
        b = len(hm)
        ob = observations[i:i + cfg.chunk].to(dt).reshape(b * k, 2)
        # blocks of whole images, about BLOCK landmarks each: the vectorised intermediates stay cache-sized
        blocks = _blocks(b, per)
        parts = [_search_chunk(hm[j:j + blocks.step], ob[j * k:(j + blocks.step) * k], plan, sums, ws, return_cost)
                 for j in blocks]
        out.append(torch.cat([p[0] for p in parts]).reshape(b, k, 2))
        if return_cost:
            costs.append(torch.cat([p[1] for p in parts]).reshape(b, k, plan.n_out, plan.n_out))
    y = torch.cat(out) if out else observations.to(dt).clone()
    if return_cost:
        return y, (torch.cat(costs) if costs else heatmaps.new_zeros(0, k, plan.n_out, plan.n_out))
    return y
