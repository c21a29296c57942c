"""Gaussian heatmap targets and their decoding.

Coordinates: image pixel ``(row i, col j)`` has centre ``(x=j, y=i)``; a heatmap of stride ``s``
has cell centres at image coordinates ``s * x_hm + (s - 1) / 2``, i.e.
``x_hm = (x + 0.5) / s - 0.5``.
"""

from __future__ import annotations

import torch


def to_heatmap(points: torch.Tensor, stride: int) -> torch.Tensor:
    return (points + 0.5) / stride - 0.5


def to_image(points: torch.Tensor, stride: int) -> torch.Tensor:
    return (points + 0.5) * stride - 0.5


def gaussian_heatmaps(points: torch.Tensor, size: tuple[int, int], sigma: float) -> torch.Tensor:
    """Unnormalised Gaussians (peak 1) at ``points`` (N, K, 2) heatmap coordinates -> (N, K, H, W).

    Sub-pixel centres are kept exactly (no rounding), so targets carry sub-pixel information.
    """
    h, w = size
    ys = torch.arange(h, dtype=points.dtype, device=points.device)
    xs = torch.arange(w, dtype=points.dtype, device=points.device)
    gx = torch.exp(-((xs - points[..., 0, None]) ** 2) / (2 * sigma ** 2))  # (N, K, W)
    gy = torch.exp(-((ys - points[..., 1, None]) ** 2) / (2 * sigma ** 2))  # (N, K, H)
    return gy[..., :, None] * gx[..., None, :]


def decode(heatmaps: torch.Tensor) -> torch.Tensor:
    """Argmax with the standard quarter-pixel shift toward the higher neighbour -> (N, K, 2)
    heatmap coordinates (Newell et al.; the same decoder at train and test time)."""
    n, k, h, w = heatmaps.shape
    flat = heatmaps.reshape(n, k, -1)
    idx = flat.argmax(-1)
    x, y = (idx % w), (idx // w)
    hm = heatmaps.reshape(n * k, h, w)
    xi, yi, b = x.reshape(-1), y.reshape(-1), torch.arange(n * k, device=heatmaps.device)
    right = hm[b, yi, (xi + 1).clamp(max=w - 1)]
    left = hm[b, yi, (xi - 1).clamp(min=0)]
    down = hm[b, (yi + 1).clamp(max=h - 1), xi]
    up = hm[b, (yi - 1).clamp(min=0), xi]
    dx = 0.25 * torch.sign(right - left) * ((xi > 0) & (xi < w - 1))
    dy = 0.25 * torch.sign(down - up) * ((yi > 0) & (yi < h - 1))
    return torch.stack([x.float() + dx.view(n, k), y.float() + dy.view(n, k)], -1)
