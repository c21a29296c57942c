"""Networks, each a stack of stages followed by a head, so any of them can mix hidden states
(manifold mixup, or MetaMixUp at a hidden layer): ``model(x, mix=MixAt(layer, lam, index))`` mixes the
input (``layer = 0``) or the output of stage ``layer`` with :func:`metamixup.mixing.mix`.

Registry (``create_model(name, num_classes, **kwargs)``, ``list_models()``):

* ``preact_resnet18``: PreAct ResNet-18 for 32x32 images (the mixup / Manifold Mixup papers' network):
  3x3 stem with 64 channels, four stages of two pre-activation basic blocks (64-128-256-512), BN-ReLU,
  global average pooling, linear. 11,171,146 parameters for 10 classes.
* ``wrn28_10`` / ``wrn28_2``: Wide ResNet (Zagoruyko & Komodakis) depth 28, widen factor 10 or 2,
  pre-activation blocks, optional dropout between the convs. 36,479,194 / 1,467,610 parameters for 10 classes.
* ``cnn13``: the 13-layer ConvNet of the Mean Teacher / ICT semi-supervised protocol (128-256-512 channels,
  LeakyReLU 0.1, max-pooling and dropout 0.5 between blocks); without the weight normalisation of those
  codes (a simplification, stated in the README).
* ``small_cnn``: three conv-BN-ReLU-maxpool blocks and a linear head, for CPU runs on small images.
* ``mlp``: fully connected ReLU stages (optional BatchNorm) for the low-dimensional mechanism-check data.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .mixing import mix as mix_tensor

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable:
    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is already registered.")
        _MODELS[name] = fn
        return fn

    return deco


def list_models() -> list[str]:
    return sorted(_MODELS)


def create_model(name: str, num_classes: int, **kwargs) -> "StagedNet":
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; expected one of {list_models()}.")
    return _MODELS[name](num_classes=num_classes, **kwargs)


def num_stages(name: str, kwargs: dict | None = None) -> int:
    """How many stages a registered model has (built on the meta device: no memory, no data needed).
    Mixing is possible after stages ``0..num_stages - 1`` (0 = the input)."""
    kwargs = dict(kwargs or {})
    if name == "mlp":
        kwargs.setdefault("in_features", 2)
    with torch.device("meta"):
        return create_model(name, 2, **kwargs).num_stages


class MixAt(NamedTuple):
    """Where and how to mix inside a forward pass: after stage ``layer`` (0 = the input)."""

    layer: int
    lam: float | torch.Tensor
    index: torch.Tensor


class StagedNet(nn.Module):
    """``stages`` then ``head``; ``forward(x, mix)`` mixes the input or a stage output."""

    stages: nn.ModuleList
    head: nn.Module

    @property
    def num_stages(self) -> int:
        return len(self.stages)

    def forward(self, x: torch.Tensor, mix: MixAt | None = None) -> torch.Tensor:
        if mix is not None and not 0 <= mix.layer <= len(self.stages):
            raise ValueError(f"mix layer {mix.layer} out of range 0..{len(self.stages)}.")
        if mix is not None and mix.layer == 0:
            x = mix_tensor(x, mix.lam, mix.index)
        for k, stage in enumerate(self.stages, 1):
            x = stage(x)
            if mix is not None and mix.layer == k:
                x = mix_tensor(x, mix.lam, mix.index)
        return self.head(x)

    def head_parameter_names(self) -> list[str]:
        """Names of the classifier's parameters (the ``virtual_params: head`` approximation updates only these)."""
        return [f"head.{n}" for n, _ in self.head.named_parameters()]


class _PoolLinear(nn.Module):
    def __init__(self, channels: int, num_classes: int, pre: nn.Module | None = None):
        super().__init__()
        self.pre = pre if pre is not None else nn.Identity()
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pre(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# ------------------------------------------------------------------------------ PreAct ResNet-18


class PreActBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet(StagedNet):
    def __init__(self, num_blocks: tuple[int, ...] = (2, 2, 2, 2), num_classes: int = 10, in_channels: int = 3,
                 width: int = 64):
        super().__init__()
        widths = [width * 2**i for i in range(len(num_blocks))]
        stem = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        stages, in_planes = [], width
        for i, (planes, n) in enumerate(zip(widths, num_blocks)):
            blocks = []
            for j in range(n):
                blocks.append(PreActBlock(in_planes, planes, stride=2 if (i > 0 and j == 0) else 1))
                in_planes = planes
            stages.append(nn.Sequential(stem, *blocks) if i == 0 else nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.head = _PoolLinear(in_planes, num_classes, pre=nn.Sequential(nn.BatchNorm2d(in_planes), nn.ReLU()))


@register_model("preact_resnet18")
def preact_resnet18(num_classes: int = 10, in_channels: int = 3, width: int = 64) -> PreActResNet:
    return PreActResNet((2, 2, 2, 2), num_classes, in_channels, width)


# ------------------------------------------------------------------------------------ Wide ResNet


class WideBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int, dropout: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(self.dropout(F.relu(self.bn2(out))))
        return out + shortcut


class WideResNet(StagedNet):
    def __init__(self, depth: int = 28, widen: int = 10, num_classes: int = 10, in_channels: int = 3,
                 dropout: float = 0.0):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"Wide ResNet depth must be 6n + 4, got {depth}.")
        n = (depth - 4) // 6
        widths = [16 * widen, 32 * widen, 64 * widen]
        stem = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        stages, in_planes = [], 16
        for i, planes in enumerate(widths):
            blocks = []
            for j in range(n):
                blocks.append(WideBlock(in_planes, planes, 2 if (i > 0 and j == 0) else 1, dropout))
                in_planes = planes
            stages.append(nn.Sequential(stem, *blocks) if i == 0 else nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.head = _PoolLinear(in_planes, num_classes, pre=nn.Sequential(nn.BatchNorm2d(in_planes), nn.ReLU()))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


@register_model("wrn28_10")
def wrn28_10(num_classes: int = 10, in_channels: int = 3, dropout: float = 0.0) -> WideResNet:
    return WideResNet(28, 10, num_classes, in_channels, dropout)


@register_model("wrn28_2")
def wrn28_2(num_classes: int = 10, in_channels: int = 3, dropout: float = 0.0) -> WideResNet:
    return WideResNet(28, 2, num_classes, in_channels, dropout)


# ----------------------------------------------------------------------------------------- CNN-13


def _conv_bn_lrelu(cin: int, cout: int, k: int, pad: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, 1, pad), nn.BatchNorm2d(cout), nn.LeakyReLU(0.1)]


class CNN13(StagedNet):
    def __init__(self, num_classes: int = 10, in_channels: int = 3, dropout: float = 0.5):
        super().__init__()
        b1 = _conv_bn_lrelu(in_channels, 128, 3, 1) + _conv_bn_lrelu(128, 128, 3, 1) + _conv_bn_lrelu(128, 128, 3, 1)
        b2 = _conv_bn_lrelu(128, 256, 3, 1) + _conv_bn_lrelu(256, 256, 3, 1) + _conv_bn_lrelu(256, 256, 3, 1)
        b3 = _conv_bn_lrelu(256, 512, 3, 0) + _conv_bn_lrelu(512, 256, 1, 0) + _conv_bn_lrelu(256, 128, 1, 0)
        self.stages = nn.ModuleList([
            nn.Sequential(*b1, nn.MaxPool2d(2, 2), nn.Dropout(dropout)),
            nn.Sequential(*b2, nn.MaxPool2d(2, 2), nn.Dropout(dropout)),
            nn.Sequential(*b3),
        ])
        self.head = _PoolLinear(128, num_classes)


@register_model("cnn13")
def cnn13(num_classes: int = 10, in_channels: int = 3, dropout: float = 0.5) -> CNN13:
    return CNN13(num_classes, in_channels, dropout)


# ------------------------------------------------------------------------------- small CPU models


class SmallCNN(StagedNet):
    def __init__(self, num_classes: int = 10, in_channels: int = 3, widths: tuple[int, ...] = (16, 32, 64)):
        super().__init__()
        stages, cin = [], in_channels
        for w in widths:
            stages.append(nn.Sequential(nn.Conv2d(cin, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(),
                                        nn.MaxPool2d(2)))
            cin = w
        self.stages = nn.ModuleList(stages)
        self.head = _PoolLinear(cin, num_classes)


@register_model("small_cnn")
def small_cnn(num_classes: int = 10, in_channels: int = 3, widths: tuple[int, ...] = (16, 32, 64)) -> SmallCNN:
    return SmallCNN(num_classes, in_channels, tuple(widths))


class MLP(StagedNet):
    def __init__(self, num_classes: int, in_features: int = 2, hidden: tuple[int, ...] = (64, 64),
                 batch_norm: bool = False):
        super().__init__()
        stages, cin = [], in_features
        for h in hidden:
            layers: list[nn.Module] = [nn.Linear(cin, h)]
            if batch_norm:
                layers.append(nn.BatchNorm1d(h))
            layers.append(nn.ReLU())
            stages.append(nn.Sequential(*layers))
            cin = h
        self.stages = nn.ModuleList(stages)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(cin, num_classes))

    def forward(self, x: torch.Tensor, mix: MixAt | None = None) -> torch.Tensor:
        return super().forward(x.flatten(1), mix)


@register_model("mlp")
def mlp(num_classes: int, in_features: int = 2, hidden: tuple[int, ...] = (64, 64), batch_norm: bool = False,
        in_channels: int | None = None) -> MLP:
    del in_channels  # the input is flattened; its size is in_features
    return MLP(num_classes, in_features, tuple(hidden), batch_norm)
