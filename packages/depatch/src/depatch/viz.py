"""The paper's qualitative figure: each patch's predicted rectangle drawn over the input image,
plus box statistics (how far patches moved, how large they became) for logs and tables."""

from __future__ import annotations

from pathlib import Path

import torch

from depatch.data import MEAN, STD
from depatch.depatch import patch_anchors
from depatch.pvt import PyramidVisionTransformer


@torch.no_grad()
def stage_boxes(model: PyramidVisionTransformer, images: torch.Tensor, stage: int = 2):
    """Predicted rectangles of ``stage``'s DePatch in *image pixels* (B, N, 4 xyxy), the fixed
    patch rectangles (N, 4) they replace, and the stage grid ``(h, w)``."""
    dep = model.depatch_modules()
    if stage not in dep:
        raise ValueError(f"stage {stage} of this model has no DePatch (deformable stages: {sorted(dep)}).")
    was_training = model.training
    model.eval()
    _, boxes = model(images, return_boxes=True)
    model.train(was_training)
    b = boxes[stage]
    in_stride = model.strides[stage - 2]  # stride of the map the DePatch reads
    H_in, W_in = images.shape[-2] // model.strides[0], images.shape[-1] // model.strides[0]
    for _ in range(stage - 2):
        H_in, W_in = H_in // 2, W_in // 2
    h, w = H_in // 2, W_in // 2
    scale = torch.tensor([W_in, H_in, W_in, H_in], dtype=b.dtype) * in_stride
    anchors, stride = patch_anchors((h, w), (H_in, W_in), 2)
    fixed = torch.cat([anchors - stride / 2, anchors + stride / 2], -1)
    return b.cpu() * scale, fixed * scale, (h, w)


@torch.no_grad()
def box_stats(model: PyramidVisionTransformer, images: torch.Tensor) -> dict[str, float]:
    """Per DePatch stage: mean centre shift and mean box side, both in units of the patch stride
    (fixed patches: shift 0, side 0.5 -- the 3x3 points span half a stride at init)."""
    stats = {}
    for stage in model.depatch_modules():
        boxes, fixed, _ = stage_boxes(model, images, stage)
        side = fixed[:, 2] - fixed[:, 0]  # one stride in pixels
        centre = (boxes[..., :2] + boxes[..., 2:]) / 2
        fixed_c = (fixed[:, :2] + fixed[:, 2:]) / 2
        stats[f"s{stage}_shift"] = float(((centre - fixed_c).norm(dim=-1) / side.unsqueeze(0)).mean())
        stats[f"s{stage}_size"] = float(((boxes[..., 2:] - boxes[..., :2]).mean(-1) / side.unsqueeze(0)).mean())
    return stats


def denormalize(images: torch.Tensor) -> torch.Tensor:
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    return (images.cpu() * std + mean).clamp(0, 1)


def plot_patch_rectangles(model: PyramidVisionTransformer, images: torch.Tensor, path: str | Path,
                          stage: int = 2, title: str | None = None, labels=None) -> Path:
    """Save a figure: for each image, the fixed patch grid (left) and the predicted DePatch
    rectangles of ``stage`` (right), coloured by how far each patch moved."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Rectangle

    boxes, fixed, _ = stage_boxes(model, images, stage)
    shown = denormalize(images).permute(0, 2, 3, 1).numpy()
    n = len(images)
    fig, axes = plt.subplots(2, n, figsize=(2.6 * n, 5.4), squeeze=False)
    side = float(fixed[0, 2] - fixed[0, 0])
    cmap = plt.get_cmap("plasma")
    for j in range(n):
        for row, rects in enumerate((fixed.expand_as(boxes[j]), boxes[j])):
            ax = axes[row, j]
            ax.imshow(shown[j], interpolation="nearest")
            shift = ((rects[:, :2] + rects[:, 2:]) / 2 - (fixed[:, :2] + fixed[:, 2:]) / 2).norm(dim=-1) / side
            # boxes are in pixel-edge coordinates (0 = left edge of the image); imshow puts pixel
            # centres at integers, so shift by half a pixel
            patches = [Rectangle((float(r[0]) - 0.5, float(r[1]) - 0.5), float(r[2] - r[0]), float(r[3] - r[1]))
                       for r in rects]
            colours = [cmap(min(float(s), 1.0)) for s in shift]
            ax.add_collection(PatchCollection(patches, facecolor="none", edgecolor=colours, linewidth=0.8))
            ax.set_xlim(-0.5, shown.shape[2] - 0.5)
            ax.set_ylim(shown.shape[1] - 0.5, -0.5)
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel("fixed patches" if row == 0 else f"DePatch stage {stage}")
            if row == 0 and labels is not None:
                ax.set_title(f"class {int(labels[j])}", fontsize=9)
    fig.suptitle(title or f"DePatch rectangles, stage {stage} (colour: centre shift, 0 to 1 stride)", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
