"""DePatch / DPT: deformable patch embedding for PVT vision transformers.

Public API::

    from depatch import create_model, list_models, DePatchEmbed
    model = create_model("dpt_tiny", num_classes=1000)             # DPT-T, 15.15 M parameters
    ablation = create_model("dpt_tiny", depatch_stages=[4], predict_size=False)  # the paper's ablations
    backbone = create_model("dpt_small", features_only=True)        # NCHW maps at strides 4/8/16/32
    logits, boxes = model(images, return_boxes=True)                # DePatch rectangles per stage
    detector = build_retinanet("dpt_tiny", num_classes=81)          # torchvision RetinaNet + FPN
"""

from depatch.depatch import (
    DEFAULT_SIZE_BIAS,
    DePatchEmbed,
    PatchEmbed,
    bilinear_sample,
    box_points,
    decode_boxes,
    patch_anchors,
)
from depatch.pvt import (
    PyramidVisionTransformer,
    convert_official_state_dict,
    count_parameters,
    create_model,
    depatch_flags,
    list_models,
    load_pretrained,
    model_config,
    register_model,
    resize_pos_embed,
)


def build_retinanet(*args, **kwargs):
    """torchvision RetinaNet on a DPT/PVT backbone with FPN (see :func:`depatch.detection.build_retinanet`)."""
    from depatch.detection import build_retinanet as _build

    return _build(*args, **kwargs)


__all__ = [
    "DEFAULT_SIZE_BIAS",
    "DePatchEmbed",
    "PatchEmbed",
    "PyramidVisionTransformer",
    "bilinear_sample",
    "box_points",
    "build_retinanet",
    "convert_official_state_dict",
    "count_parameters",
    "create_model",
    "decode_boxes",
    "depatch_flags",
    "list_models",
    "load_pretrained",
    "model_config",
    "patch_anchors",
    "register_model",
    "resize_pos_embed",
]
