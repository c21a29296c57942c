"""RetinaNet on a DPT/PVT backbone with torchvision (the paper's COCO detection setting).

The official configs (mmdetection) use an FPN on stages 2-4 (``in_channels [128, 320, 512]``
after ``start_level=1``), 256 output channels and two extra levels computed from the last
backbone map (``add_extra_convs='on_input'``): P3-P7 at strides 8-128. torchvision's
:class:`~torchvision.ops.FeaturePyramidNetwork` with :class:`LastLevelP6P7` (512 -> 256 channels, so
P6 is computed from C5) builds exactly that; :class:`~torchvision.models.detection.RetinaNet`
supplies the heads, anchors, focal loss and post-processing.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torchvision.models.detection import RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from depatch.data import MEAN, STD
from depatch.pvt import create_model


class BackboneWithFPN(nn.Module):
    """A ``features_only`` PVT/DPT + FPN returning ``OrderedDict`` of maps with ``out_channels``
    (what torchvision's detection models expect)."""

    def __init__(self, body: nn.Module, out_channels: int = 256):
        super().__init__()
        self.body = body
        in_channels = [body.embed_dims[i] for i in body.out_indices]
        self.fpn = FeaturePyramidNetwork(in_channels, out_channels, extra_blocks=LastLevelP6P7(in_channels[-1], out_channels))
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        feats = self.body(x)
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(feats)))


def build_retinanet(arch: str = "dpt_tiny", num_classes: int = 81, min_size: int | Sequence[int] = 800,
                    max_size: int = 1333, anchor_sizes: Sequence[int] = (32, 64, 128, 256, 512),
                    drop_path_rate: float = 0.1, pretrained: str | None = None, fpn_channels: int = 256,
                    depatch_stages: Sequence[int] | None = None, predict_size: bool = True, num_points: int = 3,
                    first_patch_size: int = 4, **retina_kwargs: Any) -> RetinaNet:
    """RetinaNet + FPN (P3-P7) on ``arch``. ``num_classes`` counts the background slot 0, so COCO's
    80 classes with contiguous labels 1..80 need 81. ``min_size`` may be a tuple (multi-scale training:
    torchvision draws one per image, as mmdetection's ``multiscale_mode='value'`` of the official 3x
    configs). ``anchor_sizes``: the base anchor of each of the 5 levels (3 scales x 3 ratios per
    location, as mmdetection's RetinaNet). ``pretrained``: a local ImageNet checkpoint of ``arch``
    (its classifier keys are skipped, anything else must fit)."""
    body = create_model(arch, features_only=True, out_indices=(1, 2, 3), drop_path_rate=drop_path_rate,
                        pretrained=pretrained, num_classes=0, depatch_stages=depatch_stages,
                        predict_size=predict_size, num_points=num_points, first_patch_size=first_patch_size)
    backbone = BackboneWithFPN(body, fpn_channels)
    if len(anchor_sizes) != 5:
        raise ValueError(f"anchor_sizes needs one base size per FPN level P3-P7 (5), got {list(anchor_sizes)}.")
    anchors = AnchorGenerator(tuple((s, int(s * 2 ** (1 / 3)), int(s * 2 ** (2 / 3))) for s in anchor_sizes),
                              ((0.5, 1.0, 2.0),) * 5)
    min_size = tuple(min_size) if isinstance(min_size, (list, tuple)) else int(min_size)
    return RetinaNet(backbone, num_classes=num_classes, min_size=min_size, max_size=max_size,
                     image_mean=list(MEAN), image_std=list(STD), anchor_generator=anchors, **retina_kwargs)


@torch.no_grad()
def predict_coco(model: RetinaNet, loader, device: torch.device) -> list[dict[str, Any]]:
    """Run the detector over ``loader`` (batches of ``(images, targets)`` lists); detections in
    original-image pixels, on the CPU, with their ``image_id``. torchvision's RetinaNet scores the
    background slot 0 like any class; it is never a real category, so its boxes are dropped."""
    model.eval()
    out = []
    for images, targets in loader:
        dets = model([im.to(device) for im in images])
        for det, t in zip(dets, targets):
            keep = det["labels"] > 0
            out.append({"image_id": int(t["image_id"]), **{k: v[keep].cpu() for k, v in det.items()}})
    return out
