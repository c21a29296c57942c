"""Backbones: the CIFAR ResNet-18 of the official code (torchvision's resnet18 with a 3x3 stride-1
stem and no max-pool) and a small CNN for the CPU-sized synthetic runs. A dict registry, like
torchvision's ``register_model``."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str):
    def deco(fn):
        if name in _MODELS:
            raise ValueError(f"model {name!r} is already registered")
        _MODELS[name] = fn
        return fn

    return deco


def list_models() -> list[str]:
    return sorted(_MODELS)


def build_model(name: str, num_classes: int, **kwargs) -> nn.Module:
    from shared.errors import check_choice

    check_choice("model.name", name, list_models())
    return _MODELS[name](num_classes=num_classes, **kwargs)


@register_model("resnet18_cifar")
def resnet18_cifar(num_classes: int = 10, dropout: float = 0.0, width: int = 64) -> nn.Module:
    """CIFAR ResNet-18 (11.2M parameters at width 64): conv3x3(3->64, stride 1) stem, no max-pool,
    global average pool (= avg_pool2d(4) at 32x32), linear head. ``dropout`` > 0 inserts dropout
    before the head (needed only for BALD's MC dropout; the official model has none)."""
    from torchvision.models.resnet import BasicBlock, ResNet

    model = ResNet(BasicBlock, [2, 2, 2, 2], num_classes=num_classes, width_per_group=64)
    if width != 64:
        from shared.errors import ConfigError

        raise ConfigError(f"model.width={width}: resnet18_cifar supports width=64 only (torchvision's BasicBlock "
                          "fixes the widths); remove the model.width override")
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    if dropout > 0:
        model.fc = nn.Sequential(nn.Dropout(dropout), nn.Linear(512, num_classes))
    return model


class SmallCNN(nn.Module):
    """Three conv-BN-ReLU stages (widths w, 2w, 4w; max-pool between), global average pool,
    dropout, linear head. About 0.1M parameters at w=16: trains in seconds on a CPU."""

    def __init__(self, num_classes: int = 10, width: int = 16, dropout: float = 0.25, in_channels: int = 3):
        super().__init__()
        w = width

        def stage(cin, cout):
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

        self.features = nn.Sequential(
            *stage(in_channels, w), nn.MaxPool2d(2),
            *stage(w, 2 * w), nn.MaxPool2d(2),
            *stage(2 * w, 4 * w), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(4 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.features(x)))


@register_model("small_cnn")
def small_cnn(num_classes: int = 10, width: int = 16, dropout: float = 0.25) -> nn.Module:
    return SmallCNN(num_classes=num_classes, width=width, dropout=dropout)
