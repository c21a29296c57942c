"""Gaussian heatmap targets, their decoding, the heatmap loss and the GHCU's coordinate units.

Coordinates: image pixel ``(row i, col j)`` has centre ``(x=j, y=i)``; a heatmap of stride ``s``
has cell centres at image coordinates ``s * x_hm + (s - 1) / 2``, i.e.
``x_hm = (x + 0.5) / s - 0.5``. The GHCU regresses ``(x_hm + 0.5) / W`` (0 and 1 are the outer
edges of the heatmap, the centre of cell 0 is ``0.5 / W``).
"""

from __future__ import annotations

import torch


def to_heatmap(points: torch.Tensor, stride: int) -> torch.Tensor:
    """Image pixel coordinates -> heatmap coordinates (pixel centres map to cell centres)."""
    return (points + 0.5) / stride - 0.5


def to_image(points: torch.Tensor, stride: int) -> torch.Tensor:
    """Heatmap coordinates -> image pixel coordinates (the inverse of :func:`to_heatmap`)."""
    return (points + 0.5) * stride - 0.5


def to_unit(points: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Heatmap coordinates -> the GHCU's unit coordinates ``(x + 0.5) / W``, ``(y + 0.5) / H``."""
    h, w = size
    return (points + 0.5) / points.new_tensor([w, h])


def from_unit(points: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The GHCU's unit coordinates -> heatmap coordinates (the inverse of :func:`to_unit`)."""
    h, w = size
    return points * points.new_tensor([w, h]) - 0.5


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


def heatmap_loss(outputs: list[torch.Tensor], target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Intermediate supervision: for every stack, the squared error summed over points and cells and
    averaged over images; summed over stacks. Points with ``mask`` False (no annotation, e.g. AFLW's
    invisible points) contribute nothing."""
    w = None if mask is None else mask.to(target.dtype)[..., None, None]
    total = target.new_zeros(())
    for out in outputs:
        se = (out.float() - target) ** 2
        total = total + (se if w is None else se * w).sum() / len(target)
    return total


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
