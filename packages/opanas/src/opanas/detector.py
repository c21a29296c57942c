"""torchvision detectors (Faster R-CNN, RetinaNet) with the neck swapped in.

Backbones: ``tiny`` (ours: a small from-scratch conv net, 16-32-64-96 channels at strides 4-32,
for CPU runs on the synthetic scenes) and torchvision ResNets (``resnet18``/``resnet50``; weights
only from a local file, never downloaded; with weights: frozen BN and frozen stem + layer1, i.e.
mmdet's ``frozen_stages=1`` + ``norm_eval``).
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models import resnet
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.detection import FasterRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.ops import MultiScaleRoIAlign, misc as misc_nn_ops
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from opanas.neck import OPANASNeck, build_neck

__all__ = ["BackboneWithNeck", "TinyBackbone", "build_backbone", "build_detector", "list_models", "supernet_of"]


def _conv_bn(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class TinyBackbone(nn.Module):
    """Ours (not from the paper): C2..C5 at strides 4, 8, 16, 32 with ``channels`` (default 16-32-64-96).
    Stem conv/2, then per stage a stride-2 conv and a stride-1 conv (BN + ReLU)."""

    def __init__(self, channels=(16, 32, 64, 96)):
        super().__init__()
        self.out_channels_list = list(channels)
        c0 = channels[0]
        self.stem = _conv_bn(3, c0, 2)
        stages, cin = [], c0
        for cout in channels:
            stages.append(nn.Sequential(_conv_bn(cin, cout, 2), _conv_bn(cout, cout, 1)))
            cin = cout
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        x = self.stem(x)
        out = OrderedDict()
        for i, stage in enumerate(self.stages):
            x = stage(x)
            out[str(i)] = x
        return out


class _ResNetBody(nn.Module):
    def __init__(self, name: str, weights_path: str | None):
        super().__init__()
        pretrained = bool(weights_path)
        norm = misc_nn_ops.FrozenBatchNorm2d if pretrained else nn.BatchNorm2d
        net = getattr(resnet, name)(weights=None, norm_layer=norm)
        if pretrained:
            path = Path(weights_path)
            if not path.is_file():
                raise FileNotFoundError(f"backbone weights {path} not found. Put an ImageNet state dict of torchvision's "
                                        f"{name} there (nothing is downloaded), or set model.backbone_weights=null.")
            net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            for mod in (net.conv1, net.bn1, net.layer1):  # frozen_stages=1
                for p in mod.parameters():
                    p.requires_grad_(False)
        self.body = IntermediateLayerGetter(net, {f"layer{i}": str(i - 1) for i in range(1, 5)})
        width = 64 if name in ("resnet18", "resnet34") else 256
        self.out_channels_list = [width * 2**i for i in range(4)]

    def forward(self, x):
        return self.body(x)


def build_backbone(name: str = "tiny", weights_path: str | None = None, channels=(16, 32, 64, 96)) -> nn.Module:
    if name == "tiny":
        return TinyBackbone(channels)
    if name in ("resnet18", "resnet34", "resnet50", "resnet101"):
        return _ResNetBody(name, weights_path)
    raise ValueError(f"unknown backbone {name!r}; expected tiny, resnet18, resnet34, resnet50 or resnet101.")


class BackboneWithNeck(nn.Module):
    """``body`` (C2..C5) followed by ``neck``; exposes ``out_channels`` as torchvision detectors expect."""

    def __init__(self, body: nn.Module, neck: nn.Module):
        super().__init__()
        self.body, self.neck = body, neck
        self.out_channels = neck.out_channels

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        return self.neck(self.body(x))


def build_detector(num_classes: int, detector: str = "faster_rcnn", neck: str = "opanas", arch=None,
                   neck_channels: int = 64, backbone: str = "tiny", backbone_weights: str | None = None,
                   backbone_channels=(16, 32, 64, 96), min_size: int = 128, max_size: int = 128,
                   anchor_sizes=(8, 16, 32, 64, 128), representation_size: int = 256, roi_sampling_ratio: int = 2,
                   rpn: dict[str, Any] | None = None, roi: dict[str, Any] | None = None,
                   opanas: dict[str, Any] | None = None) -> nn.Module:
    """A torchvision detector with ``neck`` in {opanas, fpn, pafpn}.

    ``arch=None`` with ``neck="opanas"`` builds the super-net. ``num_classes`` excludes background.
    ``rpn``/``roi`` are passed to the torchvision constructor (e.g. ``rpn_batch_size_per_image``,
    ``box_batch_size_per_image``); ``opanas`` to :class:`opanas.neck.OPANASNeck`.
    """
    body = build_backbone(backbone, backbone_weights, tuple(backbone_channels))
    extra = LastLevelP6P7(neck_channels, neck_channels) if detector == "retinanet" else "maxpool"
    n = build_neck(neck, body.out_channels_list, neck_channels, arch=arch, extra_blocks=extra,
                   **(dict(opanas or {}) if neck == "opanas" else {}))
    bb = BackboneWithNeck(body, n)
    sizes = tuple((int(s),) for s in anchor_sizes)
    if len(sizes) != 5:
        raise ValueError(f"anchor_sizes needs 5 entries (P2..P5 + the extra level), got {anchor_sizes}.")
    if detector == "faster_rcnn":
        anchors = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))
        pool = MultiScaleRoIAlign(["0", "1", "2", "3"], output_size=7, sampling_ratio=roi_sampling_ratio)
        head = TwoMLPHead(neck_channels * 7 * 7, representation_size)
        return FasterRCNN(bb, num_classes=None, min_size=min_size, max_size=max_size, rpn_anchor_generator=anchors,
                          box_roi_pool=pool, box_head=head, box_predictor=FastRCNNPredictor(representation_size, num_classes + 1),
                          **(rpn or {}), **(roi or {}))
    if detector == "retinanet":
        scales = tuple(tuple(int(s * 2 ** (k / 3)) for k in range(3)) for (s,) in sizes)
        anchors = AnchorGenerator(scales, ((0.5, 1.0, 2.0),) * len(scales))
        # RetinaNet has no RoI sampling; of ``roi`` only the detection cap applies
        return RetinaNet(bb, num_classes=num_classes + 1, min_size=min_size, max_size=max_size, anchor_generator=anchors,
                         detections_per_img=int((roi or {}).get("box_detections_per_img", 300)))
    raise ValueError(f"unknown detector {detector!r}; expected faster_rcnn or retinanet.")


def supernet_of(model: nn.Module) -> OPANASNeck | None:
    """The OPANAS neck inside a detector (or None)."""
    neck = getattr(getattr(model, "backbone", None), "neck", None)
    return neck if isinstance(neck, OPANASNeck) else None


def list_models() -> list[str]:
    return [f"{d}_{n}" for d in ("faster_rcnn", "retinanet") for n in ("opanas", "fpn", "pafpn")]
