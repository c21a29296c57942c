"""Embedding backbones (image -> FC1 feature, the layer the heads and the cosine evaluation use).

* ``mlp``            vectors -> embedding (the mechanism check's controlled setting).
* ``small_cnn``      a 4-stage conv net for the synthetic faces of the embedded default (any input size).
* ``sphereface20``   the paper's "ResNet-20": SphereFace-20, 112x96 RGB, 20 conv layers with PReLU, FC1 512.
* ``lightcnn9``      Light CNN-9 (Wu et al.), 128x128 grayscale, max-feature-map (MFM) activations, FC1 256.
* ``reid_light``     a light residual net for re-ID crops (224x112), trained from scratch as in the paper
                     (the paper names only "a Lighten CNN based on the ResNet architecture": widths are ours).

``create_backbone(name, embedding_size=..., ...)``; every backbone exposes ``embedding_size`` and
``input_size`` (the (H, W) it was designed for; ``small_cnn``/``mlp`` accept what they are given).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

__all__ = ["LightCNN9", "MFM", "MLPEmbed", "ReIDLight", "SmallCNN", "SphereFace20", "create_backbone", "list_backbones"]

_BACKBONES: dict[str, Callable[..., nn.Module]] = {}


def register_backbone(name: str):
    def wrap(fn):
        if name in _BACKBONES:
            raise ValueError(f"backbone {name!r} is already registered.")
        _BACKBONES[name] = fn
        return fn

    return wrap


def list_backbones() -> list[str]:
    return sorted(_BACKBONES)


def create_backbone(name: str, **kwargs) -> nn.Module:
    if name not in _BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose from {', '.join(list_backbones())}.")
    return _BACKBONES[name](**kwargs)


# ----------------------------------------------------------------------------------------- MLP


class MLPEmbed(nn.Module):
    """Linear-BN-ReLU x depth, then a linear FC1 to the embedding."""

    def __init__(self, in_features: int, embedding_size: int = 2, hidden: int = 128, depth: int = 2):
        super().__init__()
        layers, width = [], in_features
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True)]
            width = hidden
        self.body = nn.Sequential(*layers)
        self.fc1 = nn.Linear(width, embedding_size)
        self.embedding_size, self.input_size = embedding_size, None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc1(self.body(x.flatten(1)))


@register_backbone("mlp")
def _mlp(in_features: int = 32, embedding_size: int = 2, hidden: int = 128, depth: int = 2, **unused) -> nn.Module:
    return MLPEmbed(in_features, embedding_size, hidden, depth)


# ------------------------------------------------------------------------------------ small CNN


def _conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.PReLU(cout))


class SmallCNN(nn.Module):
    """conv-BN-PReLU stages, each halving the resolution (the first stage by a strided conv), an adaptive
    4x4 average pool, and FC1 to the embedding (no activation after FC1, as in SphereFace)."""

    def __init__(self, in_channels: int = 3, embedding_size: int = 64, widths: tuple[int, ...] = (32, 64, 128)):
        super().__init__()
        layers, c = [], in_channels
        for i, w in enumerate(widths):
            layers += [_conv_bn(c, w, stride=2), _conv_bn(w, w)] if i else [_conv_bn(c, w, stride=2)]
            c = w
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.fc1 = nn.Linear(c * 16, embedding_size)
        self.embedding_size, self.input_size = embedding_size, None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc1(self.pool(self.features(x)).flatten(1))


@register_backbone("small_cnn")
def _small_cnn(in_channels: int = 3, embedding_size: int = 64, widths=(32, 64, 128), **unused) -> nn.Module:
    return SmallCNN(in_channels, embedding_size, tuple(widths))


# --------------------------------------------------------------------------------- SphereFace-20


class _SphereUnit(nn.Module):
    """x + PReLU(conv(PReLU(conv(x)))) -- SphereFace's residual unit (no BatchNorm)."""

    def __init__(self, c: int):
        super().__init__()
        self.conv1, self.act1 = nn.Conv2d(c, c, 3, 1, 1), nn.PReLU(c)
        self.conv2, self.act2 = nn.Conv2d(c, c, 3, 1, 1), nn.PReLU(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.act2(self.conv2(self.act1(self.conv1(x))))


class SphereFace20(nn.Module):
    """SphereFace-20 (the paper's "ResNet-20"): four stages of a stride-2 3x3 conv + PReLU followed by
    1, 2, 4, 1 residual units (64, 128, 256, 512 channels): 4 + 2 * 8 = 20 conv layers; FC1 to 512.
    Input 112x96 RGB -> 7x6 x 512 before FC1."""

    def __init__(self, in_channels: int = 3, embedding_size: int = 512, input_size: tuple[int, int] = (112, 96)):
        super().__init__()
        stages, c = [], in_channels
        for width, units in zip((64, 128, 256, 512), (1, 2, 4, 1)):
            stages += [nn.Conv2d(c, width, 3, 2, 1), nn.PReLU(width)]
            stages += [_SphereUnit(width) for _ in range(units)]
            c = width
        self.features = nn.Sequential(*stages)
        h, w = (input_size[0] + 15) // 16, (input_size[1] + 15) // 16
        self.fc1 = nn.Linear(512 * h * w, embedding_size)
        self.embedding_size, self.input_size = embedding_size, tuple(input_size)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc1(self.features(x).flatten(1))


@register_backbone("sphereface20")
def _sphereface20(in_channels: int = 3, embedding_size: int = 512, input_size=(112, 96), **unused) -> nn.Module:
    return SphereFace20(in_channels, embedding_size, tuple(input_size))


# ---------------------------------------------------------------------------------- Light CNN-9


class MFM(nn.Module):
    """Max-feature-map: a conv (or linear) with 2k outputs, then the element-wise max of the two halves."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, padding: int = 1, linear: bool = False):
        super().__init__()
        self.out_channels = cout
        self.layer = nn.Linear(cin, 2 * cout) if linear else nn.Conv2d(cin, 2 * cout, kernel, stride, padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = torch.split(self.layer(x), self.out_channels, dim=1)
        return torch.maximum(a, b)


class _MFMGroup(nn.Module):
    """1x1 MFM then 3x3 MFM (Light CNN's "group")."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.a = MFM(cin, cin, 1, 1, 0)
        self.b = MFM(cin, cout, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x))


class LightCNN9(nn.Module):
    """Light CNN-9: conv1 5x5 MFM 48, then MFM groups to 96, 192, 128, 128 with 2x2 max pools after
    conv1, group 2, group 3 and group 5; FC1 is an MFM linear 8x8x128 -> 256. Input 128x128 grayscale."""

    def __init__(self, in_channels: int = 1, embedding_size: int = 256, input_size: tuple[int, int] = (128, 128)):
        super().__init__()
        pool = lambda: nn.MaxPool2d(2, 2, ceil_mode=True)  # noqa: E731
        self.features = nn.Sequential(
            MFM(in_channels, 48, 5, 1, 2), pool(),
            _MFMGroup(48, 96), pool(),
            _MFMGroup(96, 192), pool(),
            _MFMGroup(192, 128),
            _MFMGroup(128, 128), pool(),
        )
        h, w = -(-input_size[0] // 16), -(-input_size[1] // 16)
        self.fc1 = MFM(128 * h * w, embedding_size, linear=True)
        self.embedding_size, self.input_size = embedding_size, tuple(input_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc1(self.features(x).flatten(1))


@register_backbone("lightcnn9")
def _lightcnn9(in_channels: int = 1, embedding_size: int = 256, input_size=(128, 128), **unused) -> nn.Module:
    return LightCNN9(in_channels, embedding_size, tuple(input_size))


# ---------------------------------------------------------------------------------- re-ID light


class _Basic(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                                  nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.skip = (nn.Identity() if stride == 1 and cin == cout else
                     nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.skip(x))


class ReIDLight(nn.Module):
    """A light ResNet for person crops: a stride-2 stem + max pool, four stages of two basic blocks
    (widths 32, 64, 128, 256), global average pooling, FC1 + BatchNorm to the embedding."""

    def __init__(self, in_channels: int = 3, embedding_size: int = 256, widths: tuple[int, ...] = (32, 64, 128, 256),
                 input_size: tuple[int, int] = (224, 112)):
        super().__init__()
        layers = [nn.Conv2d(in_channels, widths[0], 7, 2, 3, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True),
                  nn.MaxPool2d(3, 2, 1)]
        c = widths[0]
        for i, w in enumerate(widths):
            layers += [_Basic(c, w, 1 if i == 0 else 2), _Basic(w, w, 1)]
            c = w
        self.features = nn.Sequential(*layers)
        self.fc1 = nn.Linear(c, embedding_size)
        self.bn = nn.BatchNorm1d(embedding_size)
        self.embedding_size, self.input_size = embedding_size, tuple(input_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.fc1(self.features(x).mean((2, 3))))


@register_backbone("reid_light")
def _reid_light(in_channels: int = 3, embedding_size: int = 256, widths=(32, 64, 128, 256), input_size=(224, 112),
                **unused) -> nn.Module:
    return ReIDLight(in_channels, embedding_size, tuple(widths), tuple(input_size))
