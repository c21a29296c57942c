"""The paper's qualitative figure: each patch's predicted rectangle drawn over the input image,
plus box statistics (how far patches moved, how large they became) for logs and tables."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from depatch.data import MEAN, STD
from depatch.depatch import bilinear_sample, box_points, patch_anchors
from depatch.pvt import PyramidVisionTransformer


@torch.no_grad()
def stage_boxes(model: PyramidVisionTransformer, images: torch.Tensor, stage: int = 2):
    """``stage``'s DePatch rectangles in *image pixels* (pixel-edge coordinates, 0 = left edge of the
    image): the predicted ones (B, N, 4 xyxy), the initial ones (N, 4: the box every patch starts from,
    the fixed patch shrunk to the span of its sample points, half a stride wide with the official size
    bias), the patch stride in pixels (2,) = (x, y), and the stage grid ``(h, w)``."""
    dep = model.depatch_modules()
    if stage not in dep:
        raise ValueError(f"stage {stage} of this model has no DePatch (deformable stages: {sorted(dep)}).")
    was_training = model.training
    model.eval()
    _, boxes = model(images, return_boxes=True)
    model.train(was_training)
    b = boxes[stage].cpu()
    in_stride = model.strides[stage - 2]  # stride (image pixels) of the map the DePatch reads
    H_in, W_in = images.shape[-2] // model.strides[0], images.shape[-1] // model.strides[0]
    for _ in range(stage - 2):
        H_in, W_in = H_in // 2, W_in // 2
    h, w = H_in // 2, W_in // 2
    scale = torch.tensor([W_in, H_in, W_in, H_in], dtype=b.dtype) * in_stride
    anchors, stride = patch_anchors((h, w), (H_in, W_in), 2)
    half = math.tanh(dep[stage].initial_size_bias) * stride
    initial = torch.cat([anchors - half, anchors + half], -1).clamp(0, 1)
    return b * scale, initial * scale, stride * scale[:2], (h, w)


@torch.no_grad()
def box_stats(model: PyramidVisionTransformer, images: torch.Tensor) -> dict[str, float]:
    """Per DePatch stage, over all patches of ``images``: the mean centre shift from the initial box
    (``s{k}_shift``, in patch strides; 0 at init, at most sqrt(2)) and the mean box side
    (``s{k}_size``, in strides; 0.5 at init with the official size bias)."""
    stats = {}
    for stage in model.depatch_modules():
        boxes, initial, stride, _ = stage_boxes(model, images, stage)
        centre = (boxes[..., :2] + boxes[..., 2:]) / 2
        init_c = (initial[:, :2] + initial[:, 2:]) / 2
        stats[f"s{stage}_shift"] = float(((centre - init_c) / stride).norm(dim=-1).mean())
        stats[f"s{stage}_size"] = float(((boxes[..., 2:] - boxes[..., :2]) / stride).mean())
    return stats


@torch.no_grad()
def mask_coverage(model: PyramidVisionTransformer, images: torch.Tensor, masks: torch.Tensor,
                  stage: int = 2) -> tuple[float, float]:
    """How much of ``stage``'s DePatch sampling lands on ``masks`` (B, H, W): the mean mask value
    (bilinear, like the features) over every sample point of every patch, for the learned boxes and
    for the initial ones. ``learned / initial > 1``: the boxes moved (or grew) toward the masked parts."""
    boxes, initial, _, _ = stage_boxes(model, images, stage)
    k = model.depatch_modules()[stage].num_points
    size = torch.tensor([images.shape[-1], images.shape[-2]] * 2, dtype=boxes.dtype)
    m = masks.float().unsqueeze(1).cpu()
    B = len(images)
    out = []
    for b in (boxes, initial.expand_as(boxes)):
        pts = box_points(b / size, k).reshape(B, -1, 2)
        out.append(float(bilinear_sample(m, pts).mean()))
    return out[0], out[1]


def denormalize(images: torch.Tensor) -> torch.Tensor:
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    return (images.cpu() * std + mean).clamp(0, 1)


def plot_patch_rectangles(model: PyramidVisionTransformer, images: torch.Tensor, path: str | Path,
                          stage: int = 2, title: str | None = None, labels=None, max_shift: float = 1.0) -> Path:
    """Save a figure: for each image, the initial DePatch boxes (top: where every patch starts, the
    span of its sample points at init) and the learned ones of ``stage`` (bottom), coloured by how far
    each box's centre moved from its initial centre (colour bar, in patch strides, clipped at
    ``max_shift``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.cm import ScalarMappable
    from matplotlib.collections import PatchCollection
    from matplotlib.colors import Normalize
    from matplotlib.patches import Rectangle

    boxes, initial, stride, _ = stage_boxes(model, images, stage)
    shown = denormalize(images).permute(0, 2, 3, 1).numpy()
    n = len(images)
    fig, axes = plt.subplots(2, n, figsize=(2.4 * n + 0.9, 5.2), squeeze=False)
    cmap, norm = plt.get_cmap("plasma"), Normalize(0.0, max_shift)
    init_c = (initial[:, :2] + initial[:, 2:]) / 2
    for j in range(n):
        for row, rects in enumerate((initial, boxes[j])):
            ax = axes[row, j]
            ax.imshow(shown[j], interpolation="nearest")
            shift = (((rects[:, :2] + rects[:, 2:]) / 2 - init_c) / stride).norm(dim=-1)
            # boxes are in pixel-edge coordinates; imshow puts pixel centres at integers: shift by half a pixel
            patches = [Rectangle((float(r[0]) - 0.5, float(r[1]) - 0.5), float(r[2] - r[0]), float(r[3] - r[1]))
                       for r in rects]
            ax.add_collection(PatchCollection(patches, facecolor="none", edgecolor=cmap(norm(shift.numpy())),
                                              linewidth=0.8))
            ax.set_xlim(-0.5, shown.shape[2] - 0.5)
            ax.set_ylim(shown.shape[1] - 0.5, -0.5)
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel("initial DePatch boxes" if row == 0 else f"learned, stage {stage}", fontsize=9)
            if row == 0 and labels is not None:
                ax.set_title(f"class {int(labels[j])}", fontsize=9)
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=axes.ravel().tolist(), fraction=0.02, pad=0.01,
                 label="centre shift from the initial box (patch strides)")
    fig.suptitle(title or f"DePatch rectangles, stage {stage}", fontsize=10)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
