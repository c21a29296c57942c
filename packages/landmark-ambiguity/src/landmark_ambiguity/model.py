"""Stacked hourglass heatmap network (Newell et al. 2016, FAN-style as used by the paper) and the
global heatmap correction unit (GHCU).

Registry: ``build_model(name, num_landmarks=68, **overrides)`` / ``list_models()``; the GHCU is
built with :func:`build_ghcu`.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from shared.errors import ConfigError
from torch import nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str):
    def deco(fn):
        if name in _MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        _MODELS[name] = fn
        return fn

    return deco


def list_models() -> list[str]:
    return sorted(_MODELS)


def build_model(name: str, **kwargs) -> nn.Module:
    if name not in _MODELS:
        raise ConfigError(f"model {name!r} is not a known name; use one of: {', '.join(list_models())}")
    return _MODELS[name](**kwargs)


def _conv(conv: nn.Conv2d, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return nn.functional.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of ``bn(conv(x))`` with ``bn`` in eval mode (running statistics) as one
    convolution. Computed without autograd and cached on ``conv`` until one of the six tensors changes
    (an optimizer step, a loaded state dict or a new device or dtype changes a version or an address)."""
    ts = (conv.weight, conv.bias, bn.weight, bn.bias, bn.running_mean, bn.running_var)
    key = tuple(None if t is None else (t.data_ptr(), t._version, t.dtype) for t in ts) + (bn.eps,)
    cached = conv.__dict__.get("_folded")
    if cached is None or cached[0] != key:
        with torch.no_grad():
            scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
            shift = -bn.running_mean if conv.bias is None else conv.bias - bn.running_mean
            cached = key, (conv.weight * scale.view(-1, 1, 1, 1), torch.addcmul(bn.bias, shift, scale))
        conv.__dict__["_folded"] = cached
    return cached[1]


class Residual(nn.Module):
    """Pre-activation bottleneck residual block (BN-ReLU-conv x3), 1x1 projection when widths differ."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        mid = max(cout // 2, 1)
        self.body = nn.Sequential(
            nn.BatchNorm2d(cin), nn.ReLU(inplace=True), nn.Conv2d(cin, mid, 1, bias=False),
            nn.BatchNorm2d(mid), nn.ReLU(inplace=True), nn.Conv2d(mid, mid, 3, padding=1, bias=False),
            nn.BatchNorm2d(mid), nn.ReLU(inplace=True), nn.Conv2d(mid, cout, 1))
        self.skip = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1)

    def forward(self, x, folded: bool = False):
        """``folded`` (inference, eval mode, no autograd): the BatchNorms that follow a convolution are
        folded into it (:func:`_fold`); the pre-activation BatchNorm of the input stays."""
        if not folded:
            return self.body(x).add_(self.skip(x))  # in place on the conv's fresh output (backward does not read it)
        b = self.body
        h = nn.functional.relu_(_conv(b[2], b[1](b[0](x)), *_fold(b[2], b[3])))
        h = nn.functional.relu_(_conv(b[5], h, *_fold(b[5], b[6])))
        return b[8](h).add_(self.skip(x))


class Hourglass(nn.Module):
    """One recursive hourglass of the given depth (each level halves the resolution)."""

    def __init__(self, depth: int, width: int):
        super().__init__()
        self.up1 = Residual(width, width)
        self.pool = nn.MaxPool2d(2)
        self.low1 = Residual(width, width)
        self.low2 = Hourglass(depth - 1, width) if depth > 1 else Residual(width, width)
        self.low3 = Residual(width, width)

    def forward(self, x, folded: bool = False):
        low = self.low3(self.low2(self.low1(self.pool(x), folded), folded), folded)
        return self.up1(x, folded).add_(nn.functional.interpolate(low, size=x.shape[-2:], mode="nearest"))


class StackedHourglass(nn.Module):
    """``num_stacks`` hourglasses with intermediate supervision; ``forward`` returns the list of
    per-stack heatmaps ``(N, K, H/stride, W/stride)`` (the last one is the prediction).

    stem: 7x7 stride-2 conv, (max-pool when ``stride == 4``), two residual blocks. (Newell's stem has
    one more residual block before the pool; we drop it to halve the CPU cost of the stem.)

    ``channels_last`` (default): the input is laid out NHWC before the stem, so every convolution,
    BatchNorm and max-pool runs on channels-last tensors (on this project's CPU: the eval forward
    pass about 1.4x and a training epoch 1.2x faster than NCHW, same values up to float rounding). The
    returned heatmaps keep the layout (shape ``(N, K, H, W)``, strides channels-last, as torchvision's
    channels-last models return theirs): the loss, the decoder, the GHCU and the search read any layout,
    and an NCHW copy per stack would cost about a tenth of the eval forward pass. It changes no weight:
    state dicts are the same.
    """

    def __init__(self, num_landmarks: int = 68, num_stacks: int = 2, width: int = 32, depth: int = 3,
                 stride: int = 4, in_channels: int = 3, channels_last: bool = True):
        super().__init__()
        if stride not in (2, 4):
            raise ConfigError(f"stride={stride} is not supported; the stem supports output strides 2 and 4")
        if num_stacks < 1 or width < 2 or depth < 1:
            raise ConfigError(f"num_stacks={num_stacks}, width={width}, depth={depth} are out of range; "
                              f"use num_stacks >= 1, width >= 2, depth >= 1")
        half = max(width // 2, 1)
        stem = [nn.Conv2d(in_channels, half, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(half),
                nn.ReLU(inplace=True)]
        if stride == 4:
            stem.append(nn.MaxPool2d(2))
        stem += [Residual(half, width), Residual(width, width)]
        self.stem = nn.Sequential(*stem)
        self.num_stacks, self.stride, self.channels_last = num_stacks, stride, bool(channels_last)
        self.hourglasses = nn.ModuleList(Hourglass(depth, width) for _ in range(num_stacks))
        self.features = nn.ModuleList(nn.Sequential(Residual(width, width), nn.Conv2d(width, width, 1, bias=False),
                                                    nn.BatchNorm2d(width), nn.ReLU(inplace=True))
                                      for _ in range(num_stacks))
        self.heads = nn.ModuleList(nn.Conv2d(width, num_landmarks, 1) for _ in range(num_stacks))
        self.merge_features = nn.ModuleList(nn.Conv2d(width, width, 1) for _ in range(num_stacks - 1))
        self.merge_heatmaps = nn.ModuleList(nn.Conv2d(num_landmarks, width, 1) for _ in range(num_stacks - 1))

    def forward(self, x, last_only: bool = False) -> list[torch.Tensor]:
        """Per-stack heatmaps; ``last_only`` (inference): only ``[last stack's heatmaps]``, the same
        function up to float rounding with the intermediate heads never evaluated. The next stack's input
        ``x + merge_features(feat) + merge_heatmaps(head(feat))`` is linear in ``feat`` through three 1x1
        convolutions, so it is one 1x1 convolution with ``W = W_f + W_m W_h``, ``b = b_f + W_m b_h + b_m``
        (width -> width instead of width -> K -> width: the K-channel heatmaps are the largest tensors of
        an eval pass). In eval mode without autograd, ``last_only`` also folds every BatchNorm that follows
        a convolution into it (:func:`_fold`; weights cached until the model changes). Training, and any
        call with autograd on, runs the modules as they are."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        # inference without autograd: BatchNorms after convolutions folded into them (same function)
        folded = last_only and not self.training and not torch.is_grad_enabled()
        x = self._stem(x) if folded else self.stem(x)
        outs = []
        for i in range(self.num_stacks):
            if folded:
                f = self.features[i]
                feat = f[0](self.hourglasses[i](x, True), True)
                feat = nn.functional.relu_(_conv(f[1], feat, *_fold(f[1], f[2])))
            else:
                feat = self.features[i](self.hourglasses[i](x))
            if i == self.num_stacks - 1 or not last_only:
                hm = self.heads[i](feat)
                outs.append(hm)
            if i < self.num_stacks - 1:
                if last_only:
                    x = nn.functional.conv2d(feat, *self._merged(i)).add_(x)
                else:
                    x = self.merge_features[i](feat).add_(x).add_(self.merge_heatmaps[i](hm))
        return outs

    def _stem(self, x):
        """The stem with its BatchNorm folded into the 7x7 convolution (inference)."""
        x = nn.functional.relu_(_conv(self.stem[0], x, *_fold(self.stem[0], self.stem[1])))
        for m in self.stem[3:]:
            x = m(x, True) if isinstance(m, Residual) else m(x)
        return x

    def _merged(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Weight and bias of merge_features[i] + merge_heatmaps[i] o heads[i] (all 1x1 convolutions)."""
        wf, wm, wh = (m.weight.flatten(1) for m in (self.merge_features[i], self.merge_heatmaps[i], self.heads[i]))
        w = torch.addmm(wf, wm, wh)
        b = self.merge_features[i].bias + self.merge_heatmaps[i].bias + wm @ self.heads[i].bias
        return w[:, :, None, None], b


@register_model("hg2_w32")
def hg2_w32(num_landmarks: int = 68, **kw) -> StackedHourglass:
    """Embedded default (ours): 2 stacks, width 32, depth 3, stride 4 (64 px in -> 16x16 heatmaps)."""
    return StackedHourglass(num_landmarks, **{"num_stacks": 2, "width": 32, "depth": 3, "stride": 4, **kw})


@register_model("hg4_w256")
def hg4_w256(num_landmarks: int = 68, **kw) -> StackedHourglass:
    """Paper size: 4 stacks, width 256, depth 4, stride 4 (256 px in -> 64x64 heatmaps)."""
    return StackedHourglass(num_landmarks, **{"num_stacks": 4, "width": 256, "depth": 4, "stride": 4, **kw})


class GHCU(nn.Module):
    """Global heatmap correction unit: all K heatmaps in, K corrected (x, y) out.

    Stride-2 3x3 conv blocks (BN, ReLU) shrink the heatmaps to at most 4x4 (hence a global receptive
    field), then a two-layer MLP regresses ``2K`` coordinates in units of the heatmap side, i.e.
    ``(x_hm + 0.5) / W`` in [0, 1]. The paper gives no layer list; this one is ours (see README).
    """

    def __init__(self, num_landmarks: int = 68, heatmap_size: int = 16, channels: tuple[int, ...] = (64, 128, 128),
                 hidden: int = 256):
        super().__init__()
        layers, cin, size = [], num_landmarks, heatmap_size
        for c in channels:
            layers += [nn.Conv2d(cin, c, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            cin, size = c, math.ceil(size / 2)
        self.convs = nn.Sequential(*layers)
        self.mlp = nn.Sequential(nn.Flatten(), nn.Linear(cin * size * size, hidden), nn.ReLU(inplace=True),
                                 nn.Linear(hidden, 2 * num_landmarks))
        self.num_landmarks = num_landmarks

    def forward(self, heatmaps: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.convs(heatmaps)).view(-1, self.num_landmarks, 2) + 0.5


def build_ghcu(num_landmarks: int, heatmap_size: int, channels=(64, 128, 128), hidden: int = 256) -> GHCU:
    return GHCU(num_landmarks, heatmap_size, tuple(channels), hidden)
