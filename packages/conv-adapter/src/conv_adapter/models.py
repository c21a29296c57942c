"""Backbones (torchvision definitions), their weights, classification heads, and where Conv-Adapter
goes on each of them.

* A dict registry (:func:`register_model`, :func:`list_models`, :func:`create_backbone`), timm-style.
* ``resnet_tiny``: a torchvision ``ResNet`` of ``BasicBlock`` s ``[1, 1, 1, 1]`` with widths
  16-32-64-128 and a 3x3 stride-1 stem (CIFAR style) for 32x32 synthetic images: the embedded
  default's backbone, pre-trained on a synthetic domain by :mod:`conv_adapter.pretrain`.
* Weights: ``weights=imagenet`` reads torchvision's file from the torch hub cache
  (``$TORCH_HOME/hub/checkpoints``), ``weights=/path/to.pth`` a local file; nothing is downloaded.
* :func:`default_targets`: the official placement per backbone and scheme -- ResNet Bottleneck
  ``conv2`` (the 3x3), BasicBlock ``conv1`` (the official BasicBlock path crashes; its intent was
  conv1), ConvNeXt 7x7 depth-wise convs *and* the three 2x2/s2 down-sampling convs.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Callable

import torch
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from shared.errors import CheckpointError, ConfigError

from .adapter import ConvAdapterConfig

_MODELS: dict[str, Callable[..., nn.Module]] = {}
# torchvision weight files looked for in the hub cache (the official code uses ResNet-50 IMAGENET1K_V2)
_HUB_FILES = {
    "resnet18": ["resnet18-f37072fd.pth"],
    "resnet50": ["resnet50-11ad3fa6.pth", "resnet50-0676ba61.pth"],
    "convnext_tiny": ["convnext_tiny-983f1562.pth"],
}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    if fn.__name__ in _MODELS:
        raise ValueError(f"model {fn.__name__!r} is already registered")
    _MODELS[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    return sorted(_MODELS)


def family(arch: str) -> str:
    """``resnet`` or ``convnext``: decides the head location, adapter activation and init."""
    if arch.startswith("resnet"):
        return "resnet"
    if arch.startswith("convnext"):
        return "convnext"
    raise ValueError(f"unknown architecture family for {arch!r}; known models: {list_models()}")


class TinyResNet(ResNet):
    """torchvision ``ResNet`` with configurable widths and a CIFAR-style stem (3x3, stride 1, no
    max-pool). ``forward`` and all module names are torchvision's (``conv1``, ``layer1.0.conv1``, ``fc``)."""

    def __init__(self, block=BasicBlock, layers=(1, 1, 1, 1), widths=(16, 32, 64, 128), num_classes: int = 10):
        nn.Module.__init__(self)
        self._norm_layer = nn.BatchNorm2d
        self.inplanes, self.dilation, self.groups, self.base_width = widths[0], 1, 1, 64
        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity()
        self.layer1 = self._make_layer(block, widths[0], layers[0])
        self.layer2 = self._make_layer(block, widths[1], layers[1], stride=2)
        self.layer3 = self._make_layer(block, widths[2], layers[2], stride=2)
        self.layer4 = self._make_layer(block, widths[3], layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(widths[3] * block.expansion, num_classes)
        for m in self.modules():  # torchvision's ResNet initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


@register_model
def resnet_tiny(num_classes: int = 10) -> nn.Module:
    return TinyResNet(num_classes=num_classes)


@register_model
def resnet18(num_classes: int = 1000) -> nn.Module:
    return torchvision.models.resnet18(num_classes=num_classes)


@register_model
def resnet50(num_classes: int = 1000) -> nn.Module:
    return torchvision.models.resnet50(num_classes=num_classes)


@register_model
def convnext_tiny(num_classes: int = 1000) -> nn.Module:
    return torchvision.models.convnext_tiny(num_classes=num_classes)


def create_backbone(arch: str, num_classes: int = 1000) -> nn.Module:
    if arch not in _MODELS:
        raise ValueError(f"unknown model {arch!r}; available: {list_models()}")
    return _MODELS[arch](num_classes=num_classes)


# -------------------------------------------------------------------------------- weights


def hub_weights_path(arch: str) -> Path:
    """The torchvision ImageNet weight file of ``arch`` in the torch hub cache, or a clear error."""
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    for name in _HUB_FILES.get(arch, []):
        if (hub / name).is_file():
            return hub / name
    found = sorted(glob.glob(str(hub / f"{arch}-*.pth")))
    if found:
        return Path(found[0])
    raise ConfigError(
        f"weights=imagenet: ImageNet weights for {arch} not found: expected one of "
        f"{_HUB_FILES.get(arch, [f'{arch}-*.pth'])} in {hub} (the torch hub cache, $TORCH_HOME/hub/checkpoints; "
        f"nothing is downloaded at run time); copy the torchvision weight file there (on a machine with internet: "
        f"`python -c \"import torchvision; torchvision.models.{arch}(weights='DEFAULT')\"`), or pass "
        f"weights=/path/to/{arch}.pth")


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A plain state dict from a ``.pth`` file (``{"model"|"state_dict": sd}`` and DDP ``module.`` prefixes
    are unwrapped). Loaded with ``weights_only=True``."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"weights={str(path)!r}: no such file; pass a torchvision-format state dict "
                          f"(.pth), 'imagenet' (torch hub cache), 'synthetic' or null")
    sd = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("model", "state_dict"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    return {k.removeprefix("module."): v for k, v in sd.items()}


def load_backbone_weights(model: nn.Module, state: dict[str, torch.Tensor], arch: str) -> None:
    """Load everything except the classifier (the head is replaced for the target task)."""
    head = head_prefix(arch)
    state = {k: v for k, v in state.items() if not k.startswith(head)}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(head)]
    if missing or unexpected:
        raise CheckpointError(f"weights do not fit {arch}: missing {missing[:5]}, unexpected {unexpected[:5]} "
                              f"({len(missing)} / {len(unexpected)} keys); pass weights of a {arch}")


# ---------------------------------------------------------------------------------- heads


def head_prefix(arch: str) -> str:
    """State-dict prefix of the classifier: ``fc.`` (ResNet) or ``classifier.2.`` (ConvNeXt)."""
    return {"resnet": "fc.", "convnext": "classifier.2."}[family(arch)]


class LinearHead(nn.Sequential):
    """The official ``LinearHead``: dropout, then a linear layer with uniform(+-1/sqrt(fan_in)) weights, bias 0."""

    def __init__(self, in_features: int, num_classes: int, dropout: float = 0.2):
        super().__init__(nn.Dropout(dropout), nn.Linear(in_features, num_classes))
        bound = in_features ** -0.5
        nn.init.uniform_(self[1].weight, -bound, bound)
        nn.init.zeros_(self[1].bias)


def replace_head(model: nn.Module, arch: str, num_classes: int, dropout: float = 0.2) -> None:
    if family(arch) == "resnet":
        model.fc = LinearHead(model.fc.in_features, num_classes, dropout)
    else:
        model.classifier[2] = LinearHead(model.classifier[2].in_features, num_classes, dropout)


# ------------------------------------------------------------------------ adapter placement


def default_targets(model: nn.Module, arch: str, scheme: str) -> str:
    """The regex of the modules the official code adapts, for ``scheme`` on ``arch``."""
    if family(arch) == "convnext":
        if scheme.startswith("conv_"):  # 7x7 depth-wise convs and the 2x2/s2 down-sampling convs
            return r"features\.(\d+\.\d+\.block\.0|[246]\.1)"
        return r"features\.[1357]\.\d+"
    if scheme.startswith("residual_"):
        return r"layer\d\.\d+"
    block = model.layer1[0]
    return r"layer\d\.\d+\.conv2" if isinstance(block, Bottleneck) else r"layer\d\.\d+\.conv1"


def adapter_config(model: nn.Module, arch: str, scheme: str = "conv_parallel", reduction: float = 8,
                   init: str = "official", placement: str = "conv", target_modules: str | None = None,
                   kernel_size: int | None = None) -> ConvAdapterConfig:
    """A :class:`ConvAdapterConfig` with the official per-backbone choices: ReLU + Kaiming init + 3x3 for
    ResNet, GELU + truncated-normal init + 7x7 for ConvNeXt. ``init='zero'`` is the identity-at-start
    deviation."""
    fam = family(arch)
    official_init = "kaiming" if fam == "resnet" else "trunc_normal"
    return ConvAdapterConfig(
        target_modules=target_modules or default_targets(model, arch, scheme),
        scheme=scheme,
        reduction=reduction,
        kernel_size=kernel_size or (3 if fam == "resnet" else 7),
        act="relu" if fam == "resnet" else "gelu",
        init=official_init if init == "official" else init,
        placement=placement,
    )
