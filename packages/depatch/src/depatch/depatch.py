"""DePatch: the deformable patch embedding of DPT (Chen et al., ACM MM 2021).

A fixed patch embedding cuts the feature map into a regular grid of ``p x p`` patches. DePatch lets
every patch move and resize itself: from the patch's own features it predicts a centre shift
``(dx, dy)`` and a half-size ``(hw, hh)``, samples ``k x k`` points evenly inside the predicted
rectangle with bilinear interpolation, and projects the ``k*k*C`` sampled values to the embedding.

Read top to bottom:

1. :func:`bilinear_sample` -- the sampler. The official code calls Deformable-DETR's CUDA
   ``MSDeformAttn`` op with one level, one head, one point and all-ones attention weights, i.e. a
   plain bilinear sampler (``grid = 2 * loc - 1``, ``align_corners=False``, zero padding). We call
   :func:`torch.nn.functional.grid_sample`, which runs on any device.
2. :func:`patch_anchors` / :func:`decode_boxes` -- the official ``pointwhCoder``: centre shift
   ``tanh(t) * stride`` (at most one patch stride), half-size ``relu(tanh(t + b)) * stride``
   (in ``[0, 1]`` stride), box clamped to the image, all in normalised ``[0, 1]`` coordinates.
3. :func:`box_points` -- ``k`` points per axis from box edge to box edge (x-major order, as the
   official ``meshgrid``), so official checkpoints keep their ``output_proj`` layout.
4. :class:`DePatchEmbed` -- predictor (``conv p x p / s p -> LayerNorm -> GELU -> Linear(D, 4)``,
   zero-initialised) + decode + sample + ``Linear(k*k*C, D)`` + LayerNorm.

With the zero-initialised predictor and the official size bias ``b = atanh(0.25)`` the box of every
patch is exactly the fixed ``2 x 2`` patch shrunk to its pixel centres, and DePatch *is* a fixed
``2 x 2 / s2`` linear patch embedding (tested exactly in ``tests/test_depatch_method.py``).

Unlike the classification code of the paper, anchors are computed from the runtime input size
(vectorised), so any ``H x W`` works; the anchor of patch ``j`` is the centre of the pixels that a
``p x p / s p`` convolution reads, which for even sizes equals the official ``(j + 0.5) / w``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "DEFAULT_SIZE_BIAS",
    "DePatchEmbed",
    "PatchEmbed",
    "bilinear_sample",
    "box_points",
    "decode_boxes",
    "patch_anchors",
]

#: The official ``wh_bias`` initial value ``log(sqrt(5/3)) = atanh(0.25)``: the initial half-size is
#: a quarter of the patch stride, which puts the 3 x 3 sample points on the 2 x 2 pixel centres.
DEFAULT_SIZE_BIAS = math.log(math.sqrt(5.0 / 3.0))


def bilinear_sample(x: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Sample ``x`` (B, C, H, W) bilinearly at ``points`` (B, N, 2) given as normalised ``(x, y)``
    in ``[0, 1]`` (0 = left/top edge of the first pixel, 1 = right/bottom edge of the last).

    Pixel ``(i, j)`` has its centre at ``((j + 0.5) / W, (i + 0.5) / H)``. Neighbours outside the
    image count as zero (Deformable-DETR's semantics). Returns (B, N, C).
    """
    if x.dim() != 4 or points.dim() != 3 or points.shape[-1] != 2 or points.shape[0] != x.shape[0]:
        raise ValueError(f"bilinear_sample expects x (B, C, H, W) and points (B, N, 2); got {tuple(x.shape)} "
                         f"and {tuple(points.shape)}.")
    grid = (2.0 * points - 1.0).unsqueeze(2).to(x.dtype)  # (B, N, 1, 2)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)  # (B, C, N, 1)
    return out.squeeze(3).transpose(1, 2)


def patch_anchors(out_hw: tuple[int, int], in_hw: tuple[int, int], patch_size: int,
                  device=None, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Centres (N, 2) of the fixed ``p x p / s p`` patches and the patch stride (2,) in normalised
    coordinates. ``N = h * w`` in row-major order (the token order of the transformer)."""
    (h, w), (H, W) = out_hw, in_hw
    cy = (torch.arange(h, device=device, dtype=dtype) * patch_size + patch_size / 2) / H
    cx = (torch.arange(w, device=device, dtype=dtype) * patch_size + patch_size / 2) / W
    centres = torch.stack(torch.meshgrid(cx, cy, indexing="xy"), dim=-1).reshape(h * w, 2)
    stride = torch.tensor([patch_size / W, patch_size / H], device=device, dtype=dtype)
    return centres, stride


def decode_boxes(codes: torch.Tensor, size_bias: torch.Tensor, anchors: torch.Tensor,
                 stride: torch.Tensor) -> torch.Tensor:
    """The official ``pointwhCoder.decode``: codes (B, N, 4) = ``(t_x, t_y, t_w, t_h)`` -> boxes
    (B, N, 4) as normalised ``x1, y1, x2, y2``.

    ``centre = anchor + tanh(t_xy) * stride`` (shift at most one stride) and
    ``half = relu(tanh(t_wh + size_bias)) * stride`` (half-size in ``[0, 1]`` stride; may collapse to
    a point, as in the official code); the box is clamped to ``[0, 1]``.
    """
    centre = anchors + torch.tanh(codes[..., :2]) * stride
    half = F.relu(torch.tanh(codes[..., 2:] + size_bias)) * stride
    return torch.cat([centre - half, centre + half], dim=-1).clamp(0.0, 1.0)


def box_points(boxes: torch.Tensor, k: int) -> torch.Tensor:
    """``k x k`` points evenly spaced from edge to edge of each box (B, N, 4) -> (B, N, k*k, 2).

    Point ``a * k + c`` is the ``a``-th point along x and ``c``-th along y (x-major, like the
    official ``meshgrid``)."""
    t = torch.linspace(0.0, 1.0, k, device=boxes.device, dtype=boxes.dtype)
    xs = boxes[..., 0:1] + (boxes[..., 2:3] - boxes[..., 0:1]) * t  # (B, N, k)
    ys = boxes[..., 1:2] + (boxes[..., 3:4] - boxes[..., 1:2]) * t
    grid = torch.stack([xs.unsqueeze(-1).expand(*xs.shape, k), ys.unsqueeze(-2).expand(*ys.shape[:-1], k, k)], -1)
    return grid.reshape(*boxes.shape[:-1], k * k, 2)


class PatchEmbed(nn.Module):
    """The fixed patch embedding of PVT: ``Conv2d(p x p, stride p)`` + LayerNorm. Returns the tokens
    (B, h*w, D) and the grid size ``(h, w)``. Any input size works (the conv floors)."""

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int, norm_eps: float = 1e-5):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        if x.shape[-2] < self.patch_size or x.shape[-1] < self.patch_size:
            raise ValueError(f"input {tuple(x.shape[-2:])} is smaller than the {self.patch_size}x{self.patch_size} "
                             "patch; use a larger image (at least 32 px for a 4-stage PVT).")
        x = self.proj(x)
        h, w = x.shape[-2:]
        return self.norm(x.flatten(2).transpose(1, 2)), (h, w)


class DePatchEmbed(nn.Module):
    """Deformable patch embedding (the official ``Simple_DePatch`` with ``another_linear``,
    ``use_GE`` and ``with_norm``; parameter names match the official checkpoints).

    Args:
        in_chans: channels ``C`` of the input feature map.
        embed_dim: output embedding ``D``.
        patch_size: stride/size ``p`` of the fixed patch this replaces (2 in PVT stages 2-4).
        num_points: ``k`` sample points per axis (official 3, i.e. 9 per patch); at least 2.
        size_bias: initial value of the learned size bias ``wh_bias`` (official ``atanh(0.25)``).
        predict_size: ``True`` (the paper): the predictor gives a shift and a size per patch.
            ``False`` (the paper's "offsets only" ablation): it gives the shift only
            (``Linear(D, 2)``) and every box keeps the initial half-size ``tanh(size_bias)``
            stride (``wh_bias`` becomes a constant buffer).
    """

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int = 2, num_points: int = 3,
                 size_bias: float = DEFAULT_SIZE_BIAS, predict_size: bool = True):
        super().__init__()
        if num_points < 2:
            raise ValueError(f"num_points={num_points}: DePatch samples k x k points from box edge to box edge, "
                             "so k must be at least 2 (the paper uses 3).")
        self.in_chans, self.embed_dim = in_chans, embed_dim
        self.patch_size, self.num_points, self.predict_size = patch_size, num_points, bool(predict_size)
        self.patch_embed = PatchEmbed(in_chans, embed_dim, patch_size)  # predictor features
        self.act = nn.GELU()
        self.offset_predictor = nn.Linear(embed_dim, 4 if self.predict_size else 2, bias=False)
        self.box_coder = nn.Module()
        self.initial_size_bias = float(size_bias)  # the box half-size at init is tanh(this) stride
        bias = torch.full((2,), float(size_bias))
        if self.predict_size:
            self.box_coder.wh_bias = nn.Parameter(bias)
        else:
            self.box_coder.register_buffer("wh_bias", bias)
        self.output_proj = nn.Linear(in_chans * num_points * num_points, embed_dim)
        self.norm = nn.LayerNorm(embed_dim)
        self.reset_offset()

    @property
    def wh_bias(self) -> nn.Parameter:
        return self.box_coder.wh_bias

    def reset_offset(self) -> None:
        """Zero the offset/size predictor: every box starts as the fixed patch."""
        nn.init.zeros_(self.offset_predictor.weight)

    def forward(self, x: torch.Tensor, return_boxes: bool = False):
        """x (B, C, H, W) -> tokens (B, h*w, D), grid ``(h, w)`` [, boxes (B, h*w, 4) normalised xyxy].

        Runs in float32 even under autocast (as the official code), since sample positions are
        sub-pixel quantities."""
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"DePatchEmbed expects (B, {self.in_chans}, H, W), got {tuple(x.shape)}.")
        with torch.autocast(device_type=x.device.type, enabled=False):
            if x.dtype in (torch.float16, torch.bfloat16):
                x = x.float()
            B, C, H, W = x.shape
            feat, (h, w) = self.patch_embed(x)
            codes = self.offset_predictor(self.act(feat))  # (B, N, 4) = shift x, y, size w, h
            if not self.predict_size:  # offsets only: size codes 0, i.e. half-size tanh(wh_bias) stride
                codes = torch.cat([codes, torch.zeros_like(codes)], dim=-1)
            anchors, stride = patch_anchors((h, w), (H, W), self.patch_size, device=x.device, dtype=x.dtype)
            boxes = decode_boxes(codes, self.wh_bias, anchors, stride)
            points = box_points(boxes, self.num_points)  # (B, N, k*k, 2)
            k2 = self.num_points * self.num_points
            samples = bilinear_sample(x, points.reshape(B, h * w * k2, 2))  # (B, N*k*k, C)
            out = self.norm(self.output_proj(samples.reshape(B, h * w, k2 * C)))
        return (out, (h, w), boxes) if return_boxes else (out, (h, w))
