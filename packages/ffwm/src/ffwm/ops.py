"""Sampling grids, warping, flipping, the guided filter, and pure-PyTorch replacements of the three
CUDA kernels that the official flow pre-training borrows from Global-Flow-Local-Attention.

Conventions (fixed everywhere in this package)
    * A *flow* is an **absolute sampling grid** ``(B, h, w, 2)`` holding normalised ``(x, y)`` in
      ``[-1, 1]`` that goes straight into :func:`torch.nn.functional.grid_sample` -- not a displacement.
    * ``align_corners=False``: normalised ``-1`` is the *outer edge* of the first pixel, so pixel
      ``j`` (centre at pixel coordinate ``x = j``) sits at ``(2 j + 1) / W - 1``. The identity flow is
      :func:`base_grid`, not zeros.
    * Pixel coordinates put pixel ``(row i, col j)``'s centre at ``(x=j, y=i)`` (the synthetic face
      renderer's convention), so ``pixel = ((g + 1) W - 1) / 2``.

The three CUDA kernels, re-written with ``gather``/``grid_sample``/``pixel_shuffle`` (every one is
tested against a slow loop reference and benchmarked in ``benchmarks/ffwm``):

* :func:`resample2d` -- Gaussian-weighted sampling of a ``k x k`` integer neighbourhood around
  each sampling position (GFLA's ``Resample2d(kernel_size=4, sigma=2)``), used by the sampling
  correctness loss.
* :func:`block_extractor` -- for every output location, the bilinearly sampled ``k x k`` block of
  the source around a sampling position, tiled into a ``(h k, w k)`` image.
* :func:`local_attn_reshape` -- ``(B, k*k, h, w) -> (B, 1, h k, w k)`` (it is ``pixel_shuffle``).

:func:`affine_regularization` composes the last two exactly as GFLA's affine regulariser does.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "GuidedFilter",
    "affine_regularization",
    "affine_regularization_reference",
    "base_grid",
    "block_extractor",
    "block_extractor_reference",
    "box_sum",
    "box_sum_naive",
    "guided_filter",
    "guided_filter_naive",
    "hflip",
    "local_attn_reshape",
    "local_attn_reshape_reference",
    "norm_to_pixel",
    "pixel_to_norm",
    "resample2d",
    "resample2d_reference",
    "resize_grid",
    "warp",
]


# ------------------------------------------------------------------------------ grids and warping


def base_grid(h: int, w: int, batch: int = 1, device=None, dtype=None) -> torch.Tensor:
    """The identity sampling grid ``(batch, h, w, 2)`` (pixel centres, ``align_corners=False``)."""
    ys = (2 * torch.arange(h, device=device, dtype=dtype or torch.float32) + 1) / h - 1
    xs = (2 * torch.arange(w, device=device, dtype=dtype or torch.float32) + 1) / w - 1
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx, gy], -1).unsqueeze(0).expand(batch, h, w, 2)


def warp(x: torch.Tensor, grid: torch.Tensor, mode: str = "bilinear", padding_mode: str = "zeros") -> torch.Tensor:
    """``out[:, :, i, j] = x`` sampled at ``grid[:, i, j]`` (absolute, normalised, ``align_corners=False``).

    The output has the grid's spatial size. Bilinear with zero padding, as the official code's default
    ``F.grid_sample`` call on torch >= 1.3."""
    if grid.shape[-1] != 2 or grid.dim() != 4:
        raise ValueError(f"grid must be (B, h, w, 2); got {tuple(grid.shape)}")
    return F.grid_sample(x, grid.to(x.dtype), mode=mode, padding_mode=padding_mode, align_corners=False)


def hflip(x: torch.Tensor) -> torch.Tensor:
    """Horizontal flip of an image/feature map ``(..., H, W)``."""
    return x.flip(-1)


def resize_grid(grid: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Resample an absolute grid to another resolution (area-consistent bilinear; still absolute)."""
    hw = (size, size) if isinstance(size, int) else tuple(size)
    g = F.interpolate(grid.permute(0, 3, 1, 2), size=hw, mode="bilinear", align_corners=False)
    return g.permute(0, 2, 3, 1)


def norm_to_pixel(g: torch.Tensor, size: int) -> torch.Tensor:
    """Normalised coordinate (``align_corners=False``) -> pixel coordinate (centres at integers)."""
    return ((g + 1) * size - 1) / 2


def pixel_to_norm(p: torch.Tensor, size: int) -> torch.Tensor:
    """Pixel coordinate (centres at integers) -> normalised coordinate (``align_corners=False``)."""
    return (2 * p + 1) / size - 1


# ------------------------------------------------------------------------------ guided filter


def _window_sum_1d(x: torch.Tensor, r: int, dim: int) -> torch.Tensor:
    """Sum over the clipped window ``[i - r, i + r]`` along ``dim`` (cumulative sums, O(1) per entry)."""
    n = x.shape[dim]
    c = torch.cumsum(x, dim)
    c = torch.cat([torch.zeros_like(x.narrow(dim, 0, 1)), c], dim)  # c[k] = sum of the first k entries
    idx = torch.arange(n, device=x.device)
    hi = (idx + r).clamp(max=n - 1) + 1
    lo = (idx - r).clamp(min=0)
    return c.index_select(dim, hi) - c.index_select(dim, lo)


def box_sum(x: torch.Tensor, r: int) -> torch.Tensor:
    """Sum of ``x`` over the ``(2r+1) x (2r+1)`` window around each pixel, clipped at the borders."""
    return _window_sum_1d(_window_sum_1d(x, r, -2), r, -1)


def box_sum_naive(x: torch.Tensor, r: int) -> torch.Tensor:
    """Slow reference of :func:`box_sum`: an explicit sum over window offsets with zero padding."""
    h, w = x.shape[-2:]
    pad = F.pad(x, (r, r, r, r))
    out = torch.zeros_like(x)
    for dy in range(2 * r + 1):
        for dx in range(2 * r + 1):
            out = out + pad[..., dy:dy + h, dx:dx + w]
    return out


def _guided_filter(x: torch.Tensor, y: torch.Tensor, r: int, eps: float, box) -> torch.Tensor:
    n = box(torch.ones_like(x[..., :1, :, :]), r)  # the number of pixels in each clipped window
    mean_x, mean_y = box(x, r) / n, box(y, r) / n
    cov_xy = box(x * y, r) / n - mean_x * mean_y
    var_x = box(x * x, r) / n - mean_x * mean_x
    a = cov_xy / (var_x + eps)
    b = mean_y - a * mean_x
    return (box(a, r) / n) * x + box(b, r) / n


def guided_filter(x: torch.Tensor, y: torch.Tensor, r: int, eps: float = 1e-8) -> torch.Tensor:
    """He et al.'s guided filter, channel-wise: fit ``y ~ a x + b`` in every ``(2r+1)^2`` window, average
    the coefficients over the windows covering each pixel, return ``mean(a) * x + mean(b)``.

    ``x`` is the guide (the generator's output in FFWM), ``y`` the target (the ground truth): the result
    keeps the guide's structure and takes the target's low-frequency intensity (its illumination).
    Differentiable in ``x``."""
    if x.shape != y.shape:
        raise ValueError(f"guide {tuple(x.shape)} and target {tuple(y.shape)} must have the same shape")
    with torch.autocast(x.device.type, enabled=False):  # window variances need float32 (eps = 1e-8)
        dtype = torch.promote_types(x.dtype, torch.float32)
        return _guided_filter(x.to(dtype), y.to(dtype), r, eps, box_sum)


def guided_filter_naive(x: torch.Tensor, y: torch.Tensor, r: int, eps: float = 1e-8) -> torch.Tensor:
    """:func:`guided_filter` built on the naive window sum (the slow reference for tests)."""
    return _guided_filter(x, y, r, eps, box_sum_naive)


class GuidedFilter(nn.Module):
    """``GuidedFilter(r, eps)(guide, target)`` -- module form of :func:`guided_filter`."""

    def __init__(self, r: int, eps: float = 1e-8):
        super().__init__()
        self.r, self.eps = int(r), float(eps)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return guided_filter(x, y, self.r, self.eps)

    def extra_repr(self) -> str:
        return f"r={self.r}, eps={self.eps:g}"


# --------------------------------------------------------------- the three CUDA kernels, in PyTorch


def _neighbour_offsets(kernel_size: int, device) -> torch.Tensor:
    # integer neighbours floor(p) + k - kernel_size // 2 + 1, k = 0..kernel_size-1 (4 -> -1, 0, 1, 2)
    return torch.arange(kernel_size, device=device) - kernel_size // 2 + 1


def resample2d(src: torch.Tensor, pos: torch.Tensor, kernel_size: int = 4, sigma: float = 2.0) -> torch.Tensor:
    """Gaussian-weighted sampling: ``out[b, :, i, j] = sum_q w_q src[b, :, q] / sum_q w_q`` over the
    ``kernel_size^2`` integer pixels ``q = floor(p) + (kx, ky) - kernel_size // 2 + 1`` (clamped to the
    image) around ``p = pos[b, i, j]`` (pixel coordinates, ``(x, y)``), with
    ``w_q = exp(-|p - q|^2 / (2 sigma^2))``. Replaces GFLA's ``resample2d`` CUDA kernel."""
    b, c, h, w = src.shape
    ho, wo = pos.shape[1:3]
    px, py = pos[..., 0], pos[..., 1]
    fx, fy = torch.floor(px), torch.floor(py)
    offs = _neighbour_offsets(kernel_size, src.device).to(pos.dtype)
    qx = (fx[..., None, None] + offs[None, :]).clamp(0, w - 1)  # (b, ho, wo, 1, k) -> broadcast with ky
    qy = (fy[..., None, None] + offs[:, None]).clamp(0, h - 1)  # (b, ho, wo, k, 1)
    qx, qy = torch.broadcast_tensors(qx, qy)  # (b, ho, wo, k, k)
    d2 = (qx - px[..., None, None]) ** 2 + (qy - py[..., None, None]) ** 2
    wgt = torch.exp(-d2 / (2 * sigma * sigma))
    wgt = wgt / wgt.sum((-1, -2), keepdim=True)
    index = (qy.long() * w + qx.long()).reshape(b, 1, -1).expand(b, c, -1)
    vals = torch.gather(src.reshape(b, c, h * w), 2, index).reshape(b, c, ho, wo, kernel_size, kernel_size)
    return (vals * wgt.unsqueeze(1).to(src.dtype)).sum((-1, -2))


def resample2d_reference(src: torch.Tensor, pos: torch.Tensor, kernel_size: int = 4, sigma: float = 2.0) -> torch.Tensor:
    """Slow per-pixel loop reference of :func:`resample2d`."""
    b, c, h, w = src.shape
    ho, wo = pos.shape[1:3]
    out = torch.zeros(b, c, ho, wo, dtype=src.dtype)
    for n in range(b):
        for i in range(ho):
            for j in range(wo):
                x, y = float(pos[n, i, j, 0]), float(pos[n, i, j, 1])
                acc, tot = torch.zeros(c, dtype=src.dtype), 0.0
                for ky in range(kernel_size):
                    for kx in range(kernel_size):
                        qx = min(max(math.floor(x) + kx - kernel_size // 2 + 1, 0), w - 1)
                        qy = min(max(math.floor(y) + ky - kernel_size // 2 + 1, 0), h - 1)
                        g = math.exp(-((qx - x) ** 2 + (qy - y) ** 2) / (2 * sigma * sigma))
                        acc += g * src[n, :, qy, qx]
                        tot += g
                out[n, :, i, j] = acc / tot
    return out


def block_extractor(src: torch.Tensor, pos: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """``out[b, :, i k + ky, j k + kx]`` = ``src`` bilinearly sampled (zero outside) at
    ``pos[b, i, j] + (kx - k // 2, ky - k // 2)`` (pixel coordinates): the ``k x k`` block around each
    sampling position, tiled. Replaces GFLA's ``block_extractor`` CUDA kernel."""
    b, c, h, w = src.shape
    ho, wo = pos.shape[1:3]
    k = kernel_size
    off = torch.arange(k, device=src.device, dtype=pos.dtype) - k // 2
    px = pos[..., 0][:, :, None, :, None] + off[None, None, None, None, :]  # (b, ho, 1, wo, k)
    py = pos[..., 1][:, :, None, :, None] + off[None, None, :, None, None]  # (b, ho, k, wo, 1)
    px, py = torch.broadcast_tensors(px, py)  # (b, ho, k, wo, k) -> row i*k+ky, column j*k+kx
    grid = torch.stack([pixel_to_norm(px, w), pixel_to_norm(py, h)], -1).reshape(b, ho * k, wo * k, 2)
    return warp(src, grid)


def _bilinear_zero(img: torch.Tensor, x: float, y: float) -> torch.Tensor:
    c, h, w = img.shape
    x0, y0 = math.floor(x), math.floor(y)
    out = torch.zeros(c, dtype=img.dtype)
    for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
        for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
            if 0 <= xx < w and 0 <= yy < h:
                out += wx * wy * img[:, yy, xx]
    return out


def block_extractor_reference(src: torch.Tensor, pos: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Slow loop reference of :func:`block_extractor`."""
    b, c, h, w = src.shape
    ho, wo = pos.shape[1:3]
    k = kernel_size
    out = torch.zeros(b, c, ho * k, wo * k, dtype=src.dtype)
    for n in range(b):
        for i in range(ho):
            for j in range(wo):
                for ky in range(k):
                    for kx in range(k):
                        x = float(pos[n, i, j, 0]) + kx - k // 2
                        y = float(pos[n, i, j, 1]) + ky - k // 2
                        out[n, :, i * k + ky, j * k + kx] = _bilinear_zero(src[n], x, y)
    return out


def local_attn_reshape(x: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """``(B, k*k, h, w) -> (B, 1, h k, w k)`` with ``out[b, 0, i k + ky, j k + kx] = x[b, ky k + kx, i, j]``.
    Replaces GFLA's ``local_attn_reshape`` CUDA kernel (it is exactly ``pixel_shuffle``)."""
    if x.shape[1] != kernel_size * kernel_size:
        raise ValueError(f"expected {kernel_size * kernel_size} channels, got {x.shape[1]}")
    return F.pixel_shuffle(x, kernel_size)


def local_attn_reshape_reference(x: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Slow loop reference of :func:`local_attn_reshape`."""
    b, _, h, w = x.shape
    k = kernel_size
    out = torch.zeros(b, 1, h * k, w * k, dtype=x.dtype)
    for i in range(h):
        for j in range(w):
            for ky in range(k):
                for kx in range(k):
                    out[:, 0, i * k + ky, j * k + kx] = x[:, ky * k + kx, i, j]
    return out


def _affine_residual_operator(kz: int, dtype=torch.float64) -> torch.Tensor:
    """``K^T K`` with ``K = A (A^T A)^-1 A^T - I``: ``g^T K^T K g`` is the squared residual of the best
    affine fit ``g ~ a x + b y + c`` of the ``kz^2`` values of a window."""
    yy, xx = torch.meshgrid(torch.arange(kz, dtype=dtype), torch.arange(kz, dtype=dtype), indexing="ij")
    a = torch.stack([xx.reshape(-1), yy.reshape(-1), torch.ones(kz * kz, dtype=dtype)], 1)
    k = a @ torch.linalg.inv(a.T @ a) @ a.T - torch.eye(kz * kz, dtype=dtype)
    return k.T @ k


def affine_regularization(grid: torch.Tensor, kz: int, scale: float | None = None) -> torch.Tensor:
    """GFLA's affine regulariser of a flow: the mean over all ``kz x kz`` windows (valid positions)
    of the squared residual of the best local affine fit of the sampling positions, summed over x and y.
    Positions are ``(g + 1) / 2 * scale`` (official: scale 128 = the image side, at every flow scale;
    default: the grid's own width). Built from :func:`local_attn_reshape` and :func:`block_extractor`
    like the original."""
    b, h, w, _ = grid.shape
    scale = float(scale if scale is not None else w)
    pix = ((grid + 1) / 2 * scale).permute(0, 3, 1, 2)  # (b, 2, h, w)
    weights = _affine_residual_operator(kz).to(grid.dtype).reshape(kz * kz, 1, kz, kz)
    ho, wo = h - kz + 1, w - kz + 1
    ii, jj = torch.meshgrid(torch.arange(ho, device=grid.device, dtype=grid.dtype),
                            torch.arange(wo, device=grid.device, dtype=grid.dtype), indexing="ij")
    centres = torch.stack([jj + kz // 2, ii + kz // 2], -1).unsqueeze(0).expand(b, ho, wo, 2)
    total = grid.new_zeros(())
    for ch in range(2):
        g = pix[:, ch:ch + 1]
        kernels = local_attn_reshape(F.conv2d(g, weights.to(g.device)), kz)  # (b, 1, ho kz, wo kz): K^T K g
        blocks = block_extractor(g, centres, kz)  # (b, 1, ho kz, wo kz): g
        total = total + F.avg_pool2d(blocks * kernels, kz, kz).mean() * kz * kz
    return total


def affine_regularization_reference(grid: torch.Tensor, kz: int, scale: float | None = None) -> torch.Tensor:
    """Float64 least-squares reference of :func:`affine_regularization` (explicit fit per window)."""
    g = grid.detach().double()
    b, h, w, _ = g.shape
    pix = (g + 1) / 2 * float(scale if scale is not None else w)
    yy, xx = torch.meshgrid(torch.arange(kz, dtype=torch.float64), torch.arange(kz, dtype=torch.float64), indexing="ij")
    a = torch.stack([xx.reshape(-1), yy.reshape(-1), torch.ones(kz * kz, dtype=torch.float64)], 1)
    tot, cnt = 0.0, 0
    for n in range(b):
        for i in range(h - kz + 1):
            for j in range(w - kz + 1):
                win = pix[n, i:i + kz, j:j + kz].reshape(-1, 2)
                coef = torch.linalg.lstsq(a, win).solution
                tot += float(((a @ coef - win) ** 2).sum())
                cnt += 1
    return torch.tensor(tot / cnt, dtype=torch.float64)
