"""Networks for the search and the final trainings (a registry, timm-style).

* ``small_cnn``: a 3-stage CNN for the CPU-sized embedded default and the reproduce checks.
* ``wrn_40_2``, ``wrn_28_10``: Wide ResNets (Zagoruyko & Komodakis), pre-activation basic blocks.
* ``shake_shake_26_2x32d`` / ``2x96d`` / ``2x112d``: Shake-Shake (Gastaldi), forward/backward
  per-sample random mixing of two residual branches, 0.5/0.5 at evaluation.
* ``pyramidnet_272_a200_shakedrop``: PyramidNet with bottleneck blocks, additive widening
  (alpha = 200) and ShakeDrop (linear decay to p_L = 0.5).
* ``resnet50``: torchvision's ResNet-50 (ImageNet recipe).

All are written here (no external model code); parameter counts are tested against the
numbers the source papers report.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    if fn.__name__ in _REGISTRY:
        raise ValueError(f"model {fn.__name__!r} registered twice")
    _REGISTRY[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def create_model(name: str, num_classes: int = 10) -> nn.Module:
    if name not in _REGISTRY:
        raise KeyError(f"unknown model {name!r}; expected one of {list_models()}")
    return _REGISTRY[name](num_classes=num_classes)


# ---------------------------------------------------------------------------- small CNN


class SmallCNN(nn.Module):
    def __init__(self, num_classes: int = 10, widths: tuple[int, int, int] = (32, 64, 128)):
        super().__init__()
        layers, c_in = [], 3
        for i, c in enumerate(widths):
            layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            c_in = c
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


@register_model
def small_cnn(num_classes: int = 10) -> nn.Module:
    return SmallCNN(num_classes)


# ------------------------------------------------------------------------- Wide ResNet


class _WideBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(c_in), nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(c_out), nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.shortcut = None if (c_in == c_out and stride == 1) else nn.Conv2d(c_in, c_out, 1, stride, bias=False)

    def forward(self, x):
        o = F.relu(self.bn1(x))
        y = self.conv1(o)
        y = self.conv2(F.relu(self.bn2(y)))
        return y + (x if self.shortcut is None else self.shortcut(o))


class WideResNet(nn.Module):
    def __init__(self, depth: int, widen: int, num_classes: int = 10):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError("WRN depth must be 6n + 4")
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        blocks, c = [], widths[0]
        for stage, w in enumerate(widths[1:]):
            for i in range(n):
                blocks.append(_WideBlock(c, w, (1 if stage == 0 else 2) if i == 0 else 1))
                c = w
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(c)
        self.fc = nn.Linear(c, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x):
        x = F.relu(self.bn(self.blocks(self.conv(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


@register_model
def wrn_40_2(num_classes: int = 10) -> nn.Module:
    return WideResNet(40, 2, num_classes)


@register_model
def wrn_28_10(num_classes: int = 10) -> nn.Module:
    return WideResNet(28, 10, num_classes)


# -------------------------------------------------------------------------- Shake-Shake


class _ShakeMix(torch.autograd.Function):
    """``a * x1 + (1 - a) * x2`` forward, gradient split with an independent ``b`` backward
    (per sample, uniform in [0, 1])."""

    @staticmethod
    def forward(ctx, x1, x2, alpha, beta):
        ctx.save_for_backward(beta)
        return alpha * x1 + (1 - alpha) * x2

    @staticmethod
    def backward(ctx, grad):
        (beta,) = ctx.saved_tensors
        return beta * grad, (1 - beta) * grad, None, None


class _ShakeBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.branches = nn.ModuleList([nn.Sequential(
            nn.ReLU(inplace=False), nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True), nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out))
            for _ in range(2)])
        self.down = None
        if c_in != c_out or stride != 1:  # two shifted avg-pool + 1x1 paths, half the channels each
            self.down1 = nn.Conv2d(c_in, c_out // 2, 1, bias=False)
            self.down2 = nn.Conv2d(c_in, c_out - c_out // 2, 1, bias=False)
            self.down_bn = nn.BatchNorm2d(c_out)
            self.down, self.stride = True, stride

    def shortcut(self, x):
        if self.down is None:
            return x
        h = F.relu(x)
        a = F.avg_pool2d(h, 1, self.stride)
        b = F.avg_pool2d(F.pad(h[:, :, 1:, 1:], (0, 1, 0, 1)), 1, self.stride)
        return self.down_bn(torch.cat([self.down1(a), self.down2(b)], 1))

    def forward(self, x):
        y1, y2 = self.branches[0](x), self.branches[1](x)
        if self.training:
            shape = (x.shape[0], 1, 1, 1)
            y = _ShakeMix.apply(y1, y2, torch.rand(shape, device=x.device, dtype=y1.dtype),
                                torch.rand(shape, device=x.device, dtype=y1.dtype))
        else:
            y = 0.5 * (y1 + y2)
        return self.shortcut(x) + y


class ShakeShake(nn.Module):
    def __init__(self, depth: int, width: int, num_classes: int = 10):
        super().__init__()
        n = (depth - 2) // 6
        self.conv = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        blocks, c = [], 16
        for stage, w in enumerate([width, 2 * width, 4 * width]):
            for i in range(n):
                blocks.append(_ShakeBlock(c, w, (1 if stage == 0 else 2) if i == 0 else 1))
                c = w
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x):
        x = F.relu(self.blocks(self.bn(self.conv(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


@register_model
def shake_shake_26_2x32d(num_classes: int = 10) -> nn.Module:
    return ShakeShake(26, 32, num_classes)


@register_model
def shake_shake_26_2x96d(num_classes: int = 10) -> nn.Module:
    return ShakeShake(26, 96, num_classes)


@register_model
def shake_shake_26_2x112d(num_classes: int = 10) -> nn.Module:
    return ShakeShake(26, 112, num_classes)


# ---------------------------------------------------------------- PyramidNet + ShakeDrop


class _ShakeDrop(torch.autograd.Function):
    """Forward ``(b + alpha - b alpha) x``, backward ``(b + beta - b beta) grad`` with
    ``b ~ Bernoulli(1 - p_drop)``, ``alpha ~ U(-1, 1)``, ``beta ~ U(0, 1)`` per sample."""

    @staticmethod
    def forward(ctx, x, b, alpha, beta):
        ctx.save_for_backward(b, beta)
        return (b + alpha - b * alpha) * x

    @staticmethod
    def backward(ctx, grad):
        b, beta = ctx.saved_tensors
        return (b + beta - b * beta) * grad, None, None, None


class _PyramidBottleneck(nn.Module):
    def __init__(self, c_in: int, c_mid: int, stride: int, p_drop: float):
        super().__init__()
        c_out = c_mid * 4
        self.body = nn.Sequential(
            nn.BatchNorm2d(c_in), nn.Conv2d(c_in, c_mid, 1, bias=False), nn.BatchNorm2d(c_mid), nn.ReLU(inplace=True),
            nn.Conv2d(c_mid, c_mid, 3, stride, 1, bias=False), nn.BatchNorm2d(c_mid), nn.ReLU(inplace=True),
            nn.Conv2d(c_mid, c_out, 1, bias=False), nn.BatchNorm2d(c_out))
        self.stride, self.c_in, self.c_out, self.p_drop = stride, c_in, c_out, p_drop

    def forward(self, x):
        y = self.body(x)
        n = x.shape[0]
        if self.training:
            shape = (n, 1, 1, 1)
            b = (torch.rand(shape, device=x.device) >= self.p_drop).to(y.dtype)
            y = _ShakeDrop.apply(y, b, torch.empty(shape, device=x.device, dtype=y.dtype).uniform_(-1, 1),
                                 torch.rand(shape, device=x.device, dtype=y.dtype))
        else:
            y = (1 - self.p_drop) * y
        s = F.avg_pool2d(x, 2) if self.stride != 1 else x
        if self.c_out != self.c_in:  # zero-padded identity shortcut
            s = F.pad(s, (0, 0, 0, 0, 0, self.c_out - self.c_in))
        return y + s


class PyramidNetShakeDrop(nn.Module):
    def __init__(self, depth: int = 272, alpha: int = 200, num_classes: int = 10, p_last: float = 0.5):
        super().__init__()
        n = (depth - 2) // 9
        total = 3 * n
        self.conv = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn0 = nn.BatchNorm2d(16)
        blocks, c_in, width = [], 16, 16.0
        for i in range(total):
            width += alpha / total
            stride = 2 if i in (n, 2 * n) else 1
            c_mid = int(round(width))
            blocks.append(_PyramidBottleneck(c_in, c_mid, stride, p_drop=p_last * (i + 1) / total))
            c_in = c_mid * 4
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(c_in)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x):
        x = F.relu(self.bn(self.blocks(self.bn0(self.conv(x)))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


@register_model
def pyramidnet_272_a200_shakedrop(num_classes: int = 10) -> nn.Module:
    return PyramidNetShakeDrop(272, 200, num_classes)


# ---------------------------------------------------------------------------- ResNet-50


@register_model
def resnet50(num_classes: int = 1000) -> nn.Module:
    from torchvision.models import resnet50 as tv_resnet50

    return tv_resnet50(weights=None, num_classes=num_classes)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["count_parameters", "create_model", "list_models", "register_model", "math"]
