"""Deformable convolution v1 (Dai et al., 2017) that takes the fastest correct path per device.

``deform_conv2d`` has the signature and semantics of :func:`torchvision.ops.deform_conv2d`
(offsets ``(N, 2*kh*kw, H_out, W_out)`` ordered ``(dy, dx)`` per kernel tap, taps row-major;
bilinear sampling with zeros outside the image). Two implementations:

* ``"torchvision"``: :func:`torchvision.ops.deform_conv2d` (CUDA kernel on GPU; its CPU kernel is
  slow: measured about 45x a plain conv for forward+backward at 8x64x16x16, 3x3).
* ``"grid_sample"``: each of the kh*kw taps is one bilinear :func:`torch.nn.functional.grid_sample`
  of the input at the offset positions (all taps in one call), followed by one matmul with the
  weights (im2col with learned sampling positions). On CPU it was about 8x faster than
  torchvision's kernel and equal to it to ~5e-7 relative, gradients included (tested).

``impl="auto"`` picks ``grid_sample`` on CPU and torchvision elsewhere (MPS/CUDA). Modulated
(v2) masks and ``offset_groups > 1`` always go to torchvision.

:class:`DeformConv` is the DCN-v1 module used by every OPANAS path conv: a 3x3 conv whose
sampling offsets come from a 3x3 offset conv (C_in -> 18) on the same input, with SEPC's
``part_deform`` rule: at pyramid level 0 it runs as a plain conv with the same weights.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import deform_conv2d as tv_deform_conv2d

__all__ = ["IMPLS", "DeformConv", "deform_conv2d", "deform_conv2d_grid_sample"]

#: deformable-conv implementations (``impl``)
IMPLS = ("auto", "grid_sample", "torchvision")


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def deform_conv2d_grid_sample(x: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                              stride=1, padding=0, dilation=1) -> torch.Tensor:
    """DCN-v1 via ``grid_sample`` (one bilinear sample per kernel tap) + one matmul.

    Same semantics as ``torchvision.ops.deform_conv2d`` with one offset group and conv groups = 1.
    """
    n, c_in, h, w = x.shape
    c_out, c_w, kh, kw = weight.shape
    if c_w != c_in:
        raise ValueError(f"grouped deformable conv is not supported here: weight expects {c_w} input channels, "
                         f"x has {c_in}. Use impl='torchvision'.")
    sh, sw = _pair(stride)
    ph, pw = _pair(padding)
    dh, dw = _pair(dilation)
    h_out = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    w_out = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    k = kh * kw
    if offset.shape != (n, 2 * k, h_out, w_out):
        raise ValueError(f"offset must have shape {(n, 2 * k, h_out, w_out)} (N, 2*kh*kw, H_out, W_out), "
                         f"got {tuple(offset.shape)}.")
    dtype, dev = x.dtype, x.device
    # base sampling positions (pixel units) of every tap at every output location
    base_y = (torch.arange(h_out, device=dev, dtype=dtype) * sh - ph).view(1, h_out, 1)
    base_x = (torch.arange(w_out, device=dev, dtype=dtype) * sw - pw).view(1, 1, w_out)
    tap_y = (torch.arange(kh, device=dev, dtype=dtype) * dh).repeat_interleave(kw).view(k, 1, 1)
    tap_x = (torch.arange(kw, device=dev, dtype=dtype) * dw).repeat(kh).view(k, 1, 1)
    off = offset.view(n, k, 2, h_out, w_out)
    py = base_y + tap_y + off[:, :, 0]  # (N, K, H_out, W_out)
    px = base_x + tap_x + off[:, :, 1]
    # grid_sample with align_corners=False maps pixel centre i to (2i + 1) / size - 1; zeros padding
    # gives torchvision's rule (corners outside the image contribute zero)
    grid = torch.stack(((2 * px + 1) / w - 1, (2 * py + 1) / h - 1), dim=-1)  # (N, K, H_out, W_out, 2)
    cols = F.grid_sample(x, grid.view(n, k * h_out, w_out, 2), mode="bilinear", padding_mode="zeros",
                         align_corners=False)  # (N, C_in, K*H_out, W_out)
    cols = cols.view(n, c_in * k, h_out * w_out)
    out = torch.matmul(weight.reshape(c_out, c_in * k), cols)  # (N, C_out, H_out*W_out)
    if bias is not None:
        out = out + bias.view(1, c_out, 1)
    return out.view(n, c_out, h_out, w_out)


def deform_conv2d(x: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                  stride=1, padding=0, dilation=1, mask: torch.Tensor | None = None, impl: str = "auto") -> torch.Tensor:
    """Deformable conv with torchvision's semantics; ``impl`` = ``auto`` | ``grid_sample`` | ``torchvision``."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be 'auto', 'grid_sample' or 'torchvision', got {impl!r}.")
    k = weight.shape[2] * weight.shape[3]
    simple = mask is None and offset.shape[1] == 2 * k and weight.shape[1] == x.shape[1]
    if impl == "grid_sample" or (impl == "auto" and x.device.type == "cpu" and simple):
        if not simple:
            raise ValueError("the grid_sample path supports DCN-v1 only (no mask, one offset group, groups=1); "
                             "use impl='torchvision'.")
        return deform_conv2d_grid_sample(x, offset, weight, bias, stride, padding, dilation)
    return tv_deform_conv2d(x, offset, weight, bias, stride=_pair(stride), padding=_pair(padding),
                            dilation=_pair(dilation), mask=mask)


class DeformConv(nn.Module):
    """3x3 DCN-v1 with its own offset conv; plain conv at pyramid level 0 (SEPC ``part_deform``).

    Args:
        in_channels, out_channels, stride: as for ``nn.Conv2d`` (kernel 3, padding 1, bias).
        deformable: ``False`` turns every level into a plain conv (ours: a cheaper ablation; the
            official neck is deformable).
        offset_init: ``"zero"`` (the DCN constructor's intent: starts as a plain conv) or
            ``"xavier"`` (what the official OPANAS code effectively does, because the neck's
            ``init_weights`` re-initialises every ``nn.Conv2d``, offset convs included).
        impl: deformable-conv implementation, see :func:`deform_conv2d`.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, deformable: bool = True,
                 offset_init: str = "zero", impl: str = "auto"):
        super().__init__()
        self.stride, self.deformable, self.impl = stride, deformable, impl
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, 3, 3))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        # mmcv DeformConv2d's reset_parameters: uniform(-1/sqrt(fan_in), 1/sqrt(fan_in))
        bound = 1.0 / math.sqrt(in_channels * 9)
        nn.init.uniform_(self.weight, -bound, bound)
        self.conv_offset = nn.Conv2d(in_channels, 18, 3, stride=stride, padding=1) if deformable else None
        if self.conv_offset is not None:
            if offset_init == "zero":
                nn.init.zeros_(self.conv_offset.weight)
                nn.init.zeros_(self.conv_offset.bias)
            elif offset_init == "xavier":
                nn.init.xavier_uniform_(self.conv_offset.weight)
                nn.init.zeros_(self.conv_offset.bias)
            else:
                raise ValueError(f"offset_init must be 'zero' or 'xavier', got {offset_init!r}.")

    def forward(self, x: torch.Tensor, level: int = 1) -> torch.Tensor:
        if not self.deformable or level == 0:
            return F.conv2d(x, self.weight, self.bias, stride=self.stride, padding=1)
        offset = self.conv_offset(x)
        return deform_conv2d(x, offset, self.weight, self.bias, stride=self.stride, padding=1, impl=self.impl)

    def extra_repr(self) -> str:
        return (f"{self.weight.shape[1]}, {self.weight.shape[0]}, kernel_size=3, stride={self.stride}, "
                f"deformable={self.deformable}")
