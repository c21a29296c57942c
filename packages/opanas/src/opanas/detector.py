"""torchvision detectors (Faster R-CNN, RetinaNet) with the neck swapped in.

Backbones: ``tiny`` (ours: a small from-scratch conv net, 16-32-64-96 channels at strides 4-32,
for CPU runs on the synthetic scenes) and torchvision ResNets (``resnet18/34/50/101``). Pretrained
backbone weights come only from a local file (the runtime ``weights`` key; nothing is downloaded);
with weights a ResNet gets frozen BN and a frozen stem + layer1 (mmdet's ``frozen_stages=1`` +
``norm_eval``).

Pyramid levels: Faster R-CNN uses P2-P5 plus P6 = max-pool(P5) (anchors on five levels, RoI pooling on
P2-P5), as the official configs; RetinaNet uses P3-P7 (:class:`opanas.neck.RetinaNetLevels`). Both take
five ``anchor_sizes``, one per output level.

Image sizes: ``min_size``/``max_size`` as torchvision (a list of ``min_size`` values is drawn from per
training image); ``scale_range=[lo, hi]`` replaces that with mmdet's ``multiscale_mode='range'`` (long- and
short-edge caps drawn uniformly from [lo, hi]); ``test_min_size``/``test_max_size`` set the evaluation
size separately (mmdet's test ``img_scale``; e.g. 900/1200 for the Cascade recipe's 1200x900).
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn
from torchvision.models import resnet
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.detection import FasterRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform, _resize_image_and_masks, resize_boxes
from torchvision.ops import MultiScaleRoIAlign, misc as misc_nn_ops

from shared.errors import CheckpointError, ConfigError

from opanas.neck import NECKS, OPANASNeck, build_neck

__all__ = ["BACKBONES", "DETECTORS", "BackboneWithNeck", "DetectionTransform", "TinyBackbone", "build_backbone",
           "build_detector", "list_models", "load_backbone_weights", "supernet_of"]

DETECTORS = ("faster_rcnn", "retinanet")
BACKBONES = ("tiny", "resnet18", "resnet34", "resnet50", "resnet101")


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


def load_backbone_weights(net: nn.Module, path: str | Path) -> None:
    """Load a local state dict into a backbone (torchvision naming; a classifier ``fc.*`` is ignored).
    Every other missing or mismatched key is a one-line :class:`CheckpointError`."""
    from shared.runtime import load_checkpoint

    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"weights={str(path)!r}: no such file; put a state dict of the backbone there (e.g. "
                          "torchvision's ImageNet ResNet weights; nothing is downloaded) or set weights=null")
    state = load_checkpoint(path)
    state = state.get("model", state) if isinstance(state, dict) and "model" in state else state
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    own = net.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        what = (f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}" if unexpected
                else f"shape mismatch at {wrong[:3]}")
        raise CheckpointError(f"weights={str(path)!r} do not fit the {type(net).__name__} backbone ({what}); "
                              "pass a state dict of this backbone (torchvision naming) or weights=null")
    net.load_state_dict(state, strict=True)


class _ResNetBody(nn.Module):
    def __init__(self, name: str, weights_path: str | None):
        super().__init__()
        pretrained = bool(weights_path)
        norm = misc_nn_ops.FrozenBatchNorm2d if pretrained else nn.BatchNorm2d
        net = getattr(resnet, name)(weights=None, norm_layer=norm)
        if pretrained:
            load_backbone_weights(net, weights_path)
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
        body = TinyBackbone(channels)
        if weights_path:
            load_backbone_weights(body, weights_path)
        return body
    if name in BACKBONES:
        return _ResNetBody(name, weights_path)
    raise ValueError(f"unknown backbone {name!r}; expected one of {', '.join(BACKBONES)}.")


class BackboneWithNeck(nn.Module):
    """``body`` (C2..C5) followed by ``neck``; exposes ``out_channels`` as torchvision detectors expect."""

    def __init__(self, body: nn.Module, neck: nn.Module):
        super().__init__()
        self.body, self.neck = body, neck
        self.out_channels = neck.out_channels

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        return self.neck(self.body(x))


class DetectionTransform(GeneralizedRCNNTransform):
    """torchvision's detection transform with a separate evaluation size and mmdet's range multi-scale.

    Training: ``scale_range=(lo, hi)`` draws a long-edge cap and a short-edge cap uniformly from the integers
    in [lo, hi] per image (mmdet ``Resize(img_scale=[(lo, lo), (hi, hi)], multiscale_mode='range',
    keep_ratio=True)``); otherwise torchvision's rule (one of ``min_size``, capped by ``max_size``).
    Evaluation: ``test_min_size``/``test_max_size`` when given (mmdet ``img_scale=(test_max, test_min)``),
    otherwise torchvision's (the last ``min_size``, ``max_size``)."""

    def __init__(self, min_size, max_size, image_mean, image_std, test_min_size: int | None = None,
                 test_max_size: int | None = None, scale_range: Sequence[int] | None = None, **kwargs):
        super().__init__(min_size, max_size, image_mean, image_std, **kwargs)
        self.test_min_size, self.test_max_size = test_min_size, test_max_size
        self.scale_range = tuple(int(v) for v in scale_range) if scale_range else None

    def target_size(self) -> tuple[int, int]:
        """(size of the shorter side, cap of the longer side) for the next image."""
        if self.training and self.scale_range is not None:
            lo, hi = self.scale_range
            a, b = (int(v) for v in torch.randint(lo, hi + 1, (2,)))
            return min(a, b), max(a, b)
        if self.training:
            return int(self.torch_choice(self.min_size)), int(self.max_size)
        return int(self.test_min_size or self.min_size[-1]), int(self.test_max_size or self.max_size)

    def resize(self, image, target=None):
        h, w = image.shape[-2:]
        size, max_size = self.target_size()
        image, target = _resize_image_and_masks(image, size, max_size, target, self.fixed_size)
        if target is not None:
            target["boxes"] = resize_boxes(target["boxes"], (h, w), image.shape[-2:])
        return image, target


def build_detector(num_classes: int, detector: str = "faster_rcnn", neck: str = "opanas", arch=None,
                   neck_channels: int = 64, backbone: str = "tiny", backbone_weights: str | None = None,
                   backbone_channels=(16, 32, 64, 96), min_size: int | Sequence[int] = 128, max_size: int = 128,
                   test_min_size: int | None = None, test_max_size: int | None = None,
                   scale_range: Sequence[int] | None = None, anchor_sizes=(8, 16, 32, 64, 128),
                   representation_size: int = 256, roi_sampling_ratio: int = 2, fpn_inner_channels: int | None = None,
                   rpn: dict[str, Any] | None = None, roi: dict[str, Any] | None = None,
                   opanas: dict[str, Any] | None = None) -> nn.Module:
    """A torchvision detector with ``neck`` in {opanas, fpn, pafpn}.

    ``arch=None`` with ``neck="opanas"`` builds the super-net. ``num_classes`` excludes background.
    ``backbone_weights``: a local state dict for the backbone. ``fpn_inner_channels``: the parameter-matched
    FPN's inner width (:class:`opanas.neck.FPN`). ``rpn``/``roi`` are passed to the torchvision constructor
    (e.g. ``rpn_batch_size_per_image``, ``box_batch_size_per_image``); ``opanas`` to
    :class:`opanas.neck.OPANASNeck`.
    """
    if detector not in DETECTORS:
        raise ValueError(f"unknown detector {detector!r}; expected one of {', '.join(DETECTORS)}.")
    if neck not in NECKS:
        raise ValueError(f"unknown neck {neck!r}; expected one of {', '.join(NECKS)}.")
    if len(anchor_sizes) != 5:
        raise ValueError(f"anchor_sizes needs 5 entries, one per output level ({'P2-P6' if detector == 'faster_rcnn' else 'P3-P7'}), "
                         f"got {list(anchor_sizes)}.")
    body = build_backbone(backbone, backbone_weights, tuple(backbone_channels))
    extra = "retinanet" if detector == "retinanet" else "maxpool"
    kw = dict(opanas or {}) if neck == "opanas" else {}
    if fpn_inner_channels is not None:
        kw["inner_channels"] = int(fpn_inner_channels)
    bb = BackboneWithNeck(body, build_neck(neck, body.out_channels_list, neck_channels, arch=arch, extra_blocks=extra, **kw))
    sizes = tuple((int(s),) for s in anchor_sizes)
    min_sizes = tuple(int(s) for s in min_size) if isinstance(min_size, (list, tuple)) else (int(min_size),)
    if detector == "faster_rcnn":
        anchors = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))
        pool = MultiScaleRoIAlign(["0", "1", "2", "3"], output_size=7, sampling_ratio=roi_sampling_ratio)
        head = TwoMLPHead(neck_channels * 7 * 7, representation_size)
        model = FasterRCNN(bb, num_classes=None, min_size=min_sizes, max_size=max_size, rpn_anchor_generator=anchors,
                           box_roi_pool=pool, box_head=head,
                           box_predictor=FastRCNNPredictor(representation_size, num_classes + 1), **(rpn or {}), **(roi or {}))
    else:
        # three scales per octave (2^0, 2^(1/3), 2^(2/3)) and three ratios, as RetinaNet
        scales = tuple(tuple(int(s * 2 ** (k / 3)) for k in range(3)) for (s,) in sizes)
        anchors = AnchorGenerator(scales, ((0.5, 1.0, 2.0),) * len(scales))
        # RetinaNet has no RoI sampling; of ``roi`` only the detection cap applies
        model = RetinaNet(bb, num_classes=num_classes + 1, min_size=min_sizes, max_size=max_size, anchor_generator=anchors,
                          detections_per_img=int((roi or {}).get("box_detections_per_img", 300)))
    t = model.transform
    model.transform = DetectionTransform(t.min_size, t.max_size, t.image_mean, t.image_std, test_min_size=test_min_size,
                                         test_max_size=test_max_size, scale_range=scale_range)
    return model


def supernet_of(model: nn.Module) -> OPANASNeck | None:
    """The OPANAS neck inside a detector (or None)."""
    neck = getattr(getattr(model, "backbone", None), "neck", None)
    return neck if isinstance(neck, OPANASNeck) else None


def list_models() -> list[str]:
    """Every detector/neck combination :func:`build_detector` offers (``<detector>_<neck>``)."""
    return [f"{d}_{n}" for d in DETECTORS for n in NECKS]
