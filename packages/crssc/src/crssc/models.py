"""Backbones: the paper's bilinear CNN (VGG-16, 448 px), ResNet-18/50 and VGG-16 (the official one-step nets), and a
tiny bilinear CNN for CPU runs. A registry in the style of timm (``create_model``, ``list_models``).

B-CNN (Lin et al. 2015; the official ``net/bcnn.py``): VGG-16 conv layers up to relu5_3 (the last max-pool
removed), bilinear pooling ``X X^T / (h w)`` of the 512-channel map, element-wise square root with a small ``eps``,
L2 normalisation, one linear layer ``512^2 -> C`` (He-initialised, bias 0). The square root is the *signed*
``sign(x) sqrt(|x| + eps)`` by default; ``sqrt="official"`` is the released ``sqrt(x + eps)`` (the two agree for
``x > 0``; the official one is NaN for ``x < -eps``, e.g. on features that are not post-ReLU).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

__all__ = [
    "BilinearCNN",
    "SQRT_MODES",
    "TwoNets",
    "bilinear_pool",
    "create_model",
    "freeze_backbone",
    "head_parameters",
    "list_models",
    "register_model",
    "signed_sqrt",
]

SQRT_MODES = ("signed", "official")
_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    if fn.__name__ in _MODELS:
        raise ValueError(f"model {fn.__name__!r} is already registered.")
    _MODELS[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    return sorted(_MODELS)


def create_model(name: str, num_classes: int, **kwargs) -> nn.Module:
    """Build a registered model with a fresh ``num_classes`` head (``fc``)."""
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {list_models()}.")
    return _MODELS[name](num_classes=num_classes, **kwargs)


# ------------------------------------------------------------------------------ bilinear pooling


def signed_sqrt(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """``sign(x) * sqrt(|x| + eps)``: the gradient is finite everywhere (``eps`` keeps it at most
    ``1 / (2 sqrt(eps))``; at exactly 0 autograd gives 0 through ``sign``)."""
    return torch.sign(x) * torch.sqrt(x.abs() + eps)


def bilinear_pool(x: torch.Tensor, sqrt: str = "signed", eps: float = 1e-5) -> torch.Tensor:
    """``(N, c, h, w)`` -> ``(N, c^2)``: ``X X^T / (h w)``, square root, L2 normalisation (always in float32)."""
    n, c, h, w = x.shape
    with torch.autocast(device_type=x.device.type, enabled=False):
        feats = x.float().reshape(n, c, h * w)
        gram = torch.bmm(feats, feats.transpose(1, 2)).div(h * w).reshape(n, c * c)
        if sqrt == "signed":
            root = signed_sqrt(gram, eps)
        elif sqrt == "official":
            root = torch.sqrt(gram + eps)
        else:
            raise ValueError(f"sqrt must be one of {SQRT_MODES}, got {sqrt!r}.")
        return F.normalize(root, dim=1)


def _he_head(fc: nn.Linear) -> nn.Linear:
    nn.init.kaiming_normal_(fc.weight)
    nn.init.zeros_(fc.bias)
    return fc


class BilinearCNN(nn.Module):
    """``features`` (a conv net ending in ``channels`` maps) -> bilinear pooling -> ``fc``."""

    def __init__(self, features: nn.Module, channels: int, num_classes: int, sqrt: str = "signed",
                 eps: float = 1e-5):
        super().__init__()
        if sqrt not in SQRT_MODES:
            raise ValueError(f"sqrt must be one of {SQRT_MODES}, got {sqrt!r}.")
        self.features, self.sqrt, self.eps = features, sqrt, eps
        self.fc = _he_head(nn.Linear(channels * channels, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(bilinear_pool(self.features(x), self.sqrt, self.eps))


class PooledCNN(nn.Module):
    """``features`` -> global average pooling -> ``fc`` (the official ResNet wrapper)."""

    def __init__(self, features: nn.Module, channels: int, num_classes: int):
        super().__init__()
        self.features = features
        self.fc = _he_head(nn.Linear(channels, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


# ------------------------------------------------------------------------------ pretrained weights


def _torchvision_weights(arch: str):
    return {"vgg16": torchvision.models.VGG16_Weights.IMAGENET1K_V1,
            "resnet18": torchvision.models.ResNet18_Weights.IMAGENET1K_V1,
            "resnet50": torchvision.models.ResNet50_Weights.IMAGENET1K_V1}[arch]


def hub_weights_path(arch: str) -> Path:
    """Where torchvision keeps the ImageNet file of ``arch`` (``$TORCH_HOME/hub/checkpoints/<file>``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(_torchvision_weights(arch).url)


def _load_imagenet(model: nn.Module, arch: str, weights: str | None) -> None:
    """``weights``: None (random init), ``imagenet`` (torchvision's file from the local hub cache; never
    downloaded) or a path to a state dict of the torchvision model."""
    if not weights:
        return
    path = hub_weights_path(arch) if weights == "imagenet" else Path(weights)
    if not path.is_file():
        from shared.data import DatasetNotFoundError

        raise DatasetNotFoundError(
            f"{arch} ImageNet weights", f"the file {path.name}", path.parent,
            f"copy torchvision's {os.path.basename(_torchvision_weights(arch).url)} there (or set model.weights to a "
            "state-dict path, or model.weights=null for random init)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state)


# ------------------------------------------------------------------------------ registry


@register_model
def bcnn_vgg16(num_classes: int, weights: str | None = None, sqrt: str = "signed", eps: float = 1e-5,
               **_) -> BilinearCNN:
    """The paper's B-CNN: VGG-16 conv1_1 ... relu5_3, bilinear pooling of 512 channels, 512^2 -> C."""
    vgg = torchvision.models.vgg16()
    _load_imagenet(vgg, "vgg16", weights)
    return BilinearCNN(nn.Sequential(*list(vgg.features.children())[:-1]), 512, num_classes, sqrt, eps)


def _conv_bn(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


@register_model
def bcnn_tiny(num_classes: int, widths: tuple[int, ...] = (16, 32, 64), sqrt: str = "signed", eps: float = 1e-5,
              **_) -> BilinearCNN:
    """A CPU-sized B-CNN: 3x3 conv-BN-ReLU stages of ``widths`` (2x2 max-pool between stages), then the same
    bilinear pooling as the paper's (``widths[-1]^2`` features)."""
    layers: list[nn.Module] = []
    c = 3
    for i, w in enumerate(widths):
        layers += _conv_bn(c, w)
        c = w
        if i < len(widths) - 1:
            layers.append(nn.MaxPool2d(2))
    return BilinearCNN(nn.Sequential(*layers), c, num_classes, sqrt, eps)


@register_model
def cnn_tiny(num_classes: int, widths: tuple[int, ...] = (16, 32, 64), **_) -> PooledCNN:
    """The tiny backbone with global average pooling instead of bilinear pooling (ablation)."""
    layers: list[nn.Module] = []
    c = 3
    for i, w in enumerate(widths):
        layers += _conv_bn(c, w)
        c = w
        if i < len(widths) - 1:
            layers.append(nn.MaxPool2d(2))
    return PooledCNN(nn.Sequential(*layers), c, num_classes)


def _resnet(arch: str, num_classes: int, weights: str | None) -> PooledCNN:
    net = getattr(torchvision.models, arch)()
    _load_imagenet(net, arch, weights)
    features = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4)
    return PooledCNN(features, net.fc.in_features, num_classes)


@register_model
def resnet18(num_classes: int, weights: str | None = None, **_) -> PooledCNN:
    return _resnet("resnet18", num_classes, weights)


@register_model
def resnet50(num_classes: int, weights: str | None = None, **_) -> PooledCNN:
    return _resnet("resnet50", num_classes, weights)


class VGGClassifier(nn.Module):
    """torchvision VGG-16 (features, pooling and the first two fully connected layers) with a new ``fc``."""

    def __init__(self, net: nn.Module, num_classes: int):
        super().__init__()
        net.classifier[-1] = nn.Identity()
        self.features = nn.Sequential(net.features, net.avgpool, nn.Flatten(1), net.classifier)
        self.fc = _he_head(nn.Linear(4096, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


@register_model
def vgg16(num_classes: int, weights: str | None = None, **_) -> VGGClassifier:
    net = torchvision.models.vgg16()
    _load_imagenet(net, "vgg16", weights)
    return VGGClassifier(net, num_classes)


# ------------------------------------------------------------------------------ two-step training helpers


def head_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The classifier ``fc`` (step 1 of the two-step recipe trains only these)."""
    return list(model.fc.parameters())


def freeze_backbone(model: nn.Module, official_typo: bool = False) -> None:
    """Step 1: freeze everything but ``fc``. ``official_typo=True`` reproduces the released ResNet code, which sets
    ``params.required_grad = False`` (a misspelt, meaningless attribute): nothing is frozen, so the backbone still
    computes gradients (which the head-only optimiser then ignores)."""
    head = {id(p) for p in head_parameters(model)}
    for p in model.parameters():
        if id(p) in head:
            continue
        if official_typo:
            p.required_grad = False  # the official typo, kept on purpose behind the flag
        else:
            p.requires_grad_(False)


def unfreeze(model: nn.Module) -> None:
    for p in model.parameters():
        p.requires_grad_(True)


class TwoNets(nn.Module):
    """Two networks for co-teaching. ``forward(x)`` is network 1 (evaluation); ``forward(x, both=True)`` returns
    both logits (training). Under DDP both networks are one module, so one backward trains both."""

    def __init__(self, net1: nn.Module, net2: nn.Module):
        super().__init__()
        self.net1, self.net2 = net1, net2

    @property
    def fc(self) -> nn.Module:  # heads of both networks (two-step recipe)
        return nn.ModuleList([self.net1.fc, self.net2.fc])

    def forward(self, x: torch.Tensor, both: bool = False):
        if both:
            return self.net1(x), self.net2(x)
        return self.net1(x)
