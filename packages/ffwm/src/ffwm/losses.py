"""FFWM's loss terms (generator training) and the flow pre-training losses.

Weights (official code, see ``conf/loss/official.yaml``): masked multi-scale L1 5, perceptual 1,
facial-component 1, identity ``0.5 id(I_out) + 1.0 id(I_gf)``, illumination preserving 15, adversarial
0.1 (LSGAN); multi-scale terms weight the scales ``(S, S/2, S/4)`` by ``(1, 1, 1.5)``. Flow pre-training:
``20 * correctness + 0.01 * affine + landmark`` with landmark scale weights ``(1000, 1000, 1500)``.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from .networks import rgb_to_gray
from .ops import affine_regularization, base_grid, norm_to_pixel, resample2d, resize_grid, warp

__all__ = [
    "correctness_loss",
    "facial_part_centres",
    "facial_part_loss",
    "identity_loss",
    "illumination_preserving_loss",
    "landmark_loss",
    "lsgan_loss",
    "masked_l1",
    "multiscale_affine_loss",
    "perceptual_loss",
    "pyramid",
]

PERCEPTUAL_LAYER_WEIGHTS = (1.0, 1 / 2, 1 / 4, 1 / 4, 1 / 8)  # relu1_1 ... relu5_1 (official)
IBUG68_PARTS = {"right_eye": list(range(36, 42)), "left_eye": list(range(42, 48)), "nose": [30],
                "mouth": list(range(48, 68))}


def pyramid(x: torch.Tensor, levels: int = 3) -> list[torch.Tensor]:
    """``[x at S/4, S/2, S]`` by 2x2 average pooling (area downsampling), coarse to fine."""
    out = [x]
    for _ in range(levels - 1):
        out.insert(0, F.avg_pool2d(out[0], 2))
    return out


def masked_l1(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``mean(|x - y| * mask)`` over all elements (the official L1 on masked images)."""
    d = (x - y).abs()
    return (d * mask).mean() if mask is not None else d.mean()


def perceptual_loss(vgg, x: torch.Tensor, y: torch.Tensor, weights: Sequence[float] = PERCEPTUAL_LAYER_WEIGHTS) -> torch.Tensor:
    """``sum_l w_l * L1(phi_l(x), phi_l(y))`` over relu1_1..relu5_1; the target's features carry no gradient."""
    fx = vgg(x)
    with torch.no_grad():
        fy = vgg(y)
    return sum(w * F.l1_loss(a, b) for w, a, b in zip(weights, fx, fy))


def facial_part_centres(landmarks: torch.Tensor, parts: dict[str, list[int]] = IBUG68_PARTS) -> torch.Tensor:
    """Centres ``(B, P, 2)`` (pixels) of the facial parts: the bounding-box centre of each part's landmarks
    (the official mouth centre; a single landmark -- the official eyes and nose -- is its own centre)."""
    return torch.stack([(landmarks[:, idx].amin(1) + landmarks[:, idx].amax(1)) / 2 for idx in parts.values()], 1)


def crop_patches(img: torch.Tensor, centres: torch.Tensor, patch: int) -> torch.Tensor:
    """``(B * P, C, patch, patch)`` bilinear crops of side ``patch`` pixels centred at ``centres (B, P, 2)``."""
    b, c, h, w = img.shape
    p = centres.shape[1]
    local = base_grid(patch, patch, device=img.device, dtype=img.dtype)[0] * (patch / w)  # (patch, patch, 2)
    cx = (2 * centres[..., 0] + 1) / w - 1
    cy = (2 * centres[..., 1] + 1) / h - 1
    grid = local[None, None] + torch.stack([cx, cy], -1)[:, :, None, None, :]  # (b, p, patch, patch, 2)
    src = img[:, None].expand(b, p, c, h, w).reshape(b * p, c, h, w)
    return warp(src, grid.reshape(b * p, patch, patch, 2))


def facial_part_loss(vgg, x: torch.Tensor, y: torch.Tensor, centres: torch.Tensor, patch: int,
                     weights: Sequence[float] | None = None) -> torch.Tensor:
    """``sum_p w_p * perceptual(crop_p(x), crop_p(y))`` over ``patch``-pixel crops around the parts
    (official: eyes 2 each, nose 1, mouth 1)."""
    b, p = centres.shape[:2]
    w = list(weights) if weights is not None else [1.0] * p
    cx, cy = crop_patches(x, centres, patch), crop_patches(y, centres, patch)  # (b * p, c, patch, patch), b-major
    return sum(w[k] * perceptual_loss(vgg, cx[k::p], cy[k::p]) for k in range(p))


def identity_loss(lightcnn, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """LightCNN identity loss on grayscale: L1 of the fc features + L1 of the pooled feature maps."""
    _, fx, px = lightcnn(rgb_to_gray(x))
    with torch.no_grad():
        _, fy, py = lightcnn(rgb_to_gray(y))
    return F.l1_loss(fx, fy) + F.l1_loss(px, py)


def lsgan_loss(pred: torch.Tensor, real: bool) -> torch.Tensor:
    """Least-squares GAN: ``mean((D(x) - 1)^2)`` for real targets, ``mean(D(x)^2)`` for fake."""
    return F.mse_loss(pred, torch.full_like(pred, 1.0 if real else 0.0))


def illumination_preserving_loss(outputs: Sequence[torch.Tensor], back_grids: Sequence[torch.Tensor],
                                 profile: torch.Tensor, mask: torch.Tensor | None,
                                 scale_weights: Sequence[float]) -> torch.Tensor:
    """IPM pathway 1 (official ``MSL1Loss``): warp each synthesised frontal back into the profile view with
    the backward flow and take the masked L1 to the *input profile* resized to that scale (bilinear with
    ``align_corners=True``; the mask nearest): ``sum_s w_s L1(warp(I_out_s, B_s) M_p, I_p M_p)``.
    ``outputs``/``back_grids`` coarse-to-fine ``[S/4, S/2, S]``; ``scale_weights`` in the same order."""
    total = 0.0
    for o, g, w in zip(outputs, back_grids, scale_weights):
        hw = g.shape[1:3]
        p = F.interpolate(profile, size=hw, mode="bilinear", align_corners=True) if profile.shape[-2:] != hw else profile
        m = None
        if mask is not None:
            m = F.interpolate(mask, size=hw, mode="nearest") if mask.shape[-2:] != hw else mask
        total = total + w * masked_l1(warp(o, g), p, m)
    return total


# --------------------------------------------------------------------------- flow pre-training


def landmark_loss(grid: torch.Tensor, pts_dst: torch.Tensor, pts_src: torch.Tensor, gate: torch.Tensor,
                  size: int, convention: str = "consistent") -> torch.Tensor:
    """MSE between the grid sampled at the destination landmarks and the normalised source landmarks.

    ``grid`` maps destination pixels to source positions (F: frontal -> profile). ``pts_*`` are pixel
    coordinates of corresponding points in images of side ``size``; ``gate`` marks the valid pairs
    (the source point is visible). The grid is sampled bilinearly at the destination points (our
    points are exact floats; the official code indexes integer Face++ points). ``convention``:
    ``consistent`` normalises the target with the sampling convention (``(2x + 1) / S - 1``);
    ``official`` uses ``x / (S / 2) - 1`` as the released code does (half a pixel off). The mean runs over
    every point and coordinate with the gated ones zeroed (official ``MSELoss(flow * gate, gt * gate)``)."""
    b, m, _ = pts_dst.shape
    where = (2 * pts_dst + 1) / size - 1
    sampled = F.grid_sample(grid.permute(0, 3, 1, 2), where.view(b, 1, m, 2).to(grid.dtype), mode="bilinear",
                            padding_mode="border", align_corners=False)[:, :, 0].transpose(1, 2)  # (b, m, 2)
    if convention == "official":
        target = pts_src / (size / 2) - 1
    elif convention == "consistent":
        target = (2 * pts_src + 1) / size - 1
    else:
        raise ValueError(f"convention={convention!r}; expected consistent or official")
    g = gate.to(grid.dtype).unsqueeze(-1)
    return (((sampled - target) * g) ** 2).mean()


def multiscale_landmark_loss(grids, pts_dst, pts_src, gate, size: int, weights=(1500.0, 1000.0, 1000.0),
                             convention: str = "consistent") -> torch.Tensor:
    """:func:`landmark_loss` on every grid (coarse to fine), weighted (official 1500/1000/1000 for S/4, S/2, S)."""
    return sum(w * landmark_loss(g, pts_dst, pts_src, gate, size, convention) for g, w in zip(grids, weights))


def correctness_loss(src_feat: torch.Tensor, tgt_feat: torch.Tensor, grid: torch.Tensor,
                     mask: torch.Tensor | None = None, sampler: str = "gaussian", eps: float = 1e-8,
                     chunk: int = 1024) -> torch.Tensor:
    """GFLA's sampling-correctness loss for one feature level.

    For each target location, ``c = cos(src sampled at the grid, tgt)`` and ``c_max`` = the best cosine
    over *all* source locations; the loss is ``mean(exp(-c / c_max)) - exp(-1)`` (0 when every location
    samples its best match), masked by the target mask. ``sampler``: ``gaussian`` (GFLA's Resample2d,
    kernel 4, sigma 2, re-implemented in :func:`resample2d`) or ``bilinear`` (``grid_sample``)."""
    b, c, h, w = tgt_feat.shape
    hs, ws = src_feat.shape[-2:]
    if grid.shape[1:3] != (h, w):
        grid = resize_grid(grid, (h, w))
    if sampler == "gaussian":
        pos = torch.stack([norm_to_pixel(grid[..., 0], ws), norm_to_pixel(grid[..., 1], hs)], -1)
        sampled = resample2d(src_feat, pos)
    elif sampler == "bilinear":
        sampled = warp(src_feat, grid)
    else:
        raise ValueError(f"sampler={sampler!r}; expected gaussian or bilinear")
    with torch.no_grad():
        tn = F.normalize(tgt_feat.flatten(2), dim=1, eps=eps).transpose(1, 2)  # (b, hw, c)
        sn = F.normalize(src_feat.flatten(2), dim=1, eps=eps)  # (b, c, HW)
        cmax = torch.cat([torch.bmm(tn[:, i:i + chunk], sn).amax(-1) for i in range(0, h * w, chunk)], 1)
    cos = F.cosine_similarity(sampled.flatten(2), tgt_feat.flatten(2), dim=1, eps=eps)  # (b, hw)
    loss_map = torch.exp(-cos / (cmax + eps))
    if mask is not None:  # official: (sum(m * map) - e^-1) / (sum(m) + eps) -- e^-1 is subtracted once
        m = F.interpolate(mask.float(), size=(h, w), mode="nearest").flatten(1)
        return ((loss_map * m).sum() - math.exp(-1)) / (m.sum() + eps)
    return loss_map.mean() - math.exp(-1)


def multiscale_affine_loss(grids: Sequence[torch.Tensor], kernel_sizes: Sequence[int] = (3, 5, 7),
                           scale: float | None = None) -> torch.Tensor:
    """:func:`affine_regularization` with windows 3/5/7 at S/4, S/2, S (coarse to fine); every grid in the
    pixel units of the full image (official ``flow2grid``: ``(g + 1) / 2 * 128`` at every scale)."""
    scale = scale if scale is not None else grids[-1].shape[2]
    return sum(affine_regularization(g, k, scale) for g, k in zip(grids, kernel_sizes))
