"""The 15 DADA operations on batches of uint8 image tensors, with DADA's magnitude mapping.

DADA searches over the operation set of Fast AutoAugment (SamplePairing excluded). A *level*
``m`` in ``[0, 1]`` maps to the operation's value ``v = m * (high - low) + low`` with the ranges
below; the geometric operations then flip the sign of ``v`` with probability 0.5 for every image
("random mirror"). With these symmetric ranges ``m = 0.5`` is exactly the identity for Shear,
Translate, Rotate (``v = 0``) and for Contrast, Color, Brightness, Sharpness (``v = 1``).

=============  ======================  ==============================================
operation      value range             meaning of ``v``
=============  ======================  ==============================================
ShearX/Y       [-0.3, 0.3]             PIL affine ``(1, v, 0, 0, 1, 0)`` about the top-left corner
TranslateX/Y   [-0.45, 0.45] x size    shift by ``v * width`` (height) pixels
Rotate         [-30, 30] degrees       counter-clockwise about the centre
AutoContrast   --                      per-channel min/max stretch
Invert         --                      ``255 - x``
Equalize       --                      per-channel histogram equalisation
Solarize       [0, 256]                invert pixels ``>= v``
Posterize      [4, 8] bits             keep ``int(v)`` bits
Contrast       [0.1, 1.9]              blend with the mean grey level
Color          [0.1, 1.9]              blend with the grey image (saturation)
Brightness     [0.1, 1.9]              blend with black
Sharpness      [0.1, 1.9]              blend with the 3x3 smoothed image
Cutout         [0, 0.2] x width        a ``v``-pixel square of RGB (125, 123, 114)
=============  ======================  ==============================================

Every operation here is *batched*: it takes ``(N, C, H, W)`` uint8 images and one value per
image, and is equal, image by image and bit for bit, to the torchvision v2 functional op it
names (``reference_op``; tested). Geometric ops build one sampling grid per image and call a
single ``grid_sample``; the per-image affine matrices are computed with the exact formula
torchvision uses, once per distinct value (a batch holds few distinct values: one magnitude per
sub-policy slot, two signs). Nothing loops over images.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torch.nn.functional import conv2d, grid_sample
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

OPS: tuple[str, ...] = (
    "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "AutoContrast", "Invert", "Equalize",
    "Solarize", "Posterize", "Contrast", "Color", "Brightness", "Sharpness", "Cutout",
)
OP_INDEX = {name: i for i, name in enumerate(OPS)}

#: ``(low, high)`` of each operation's value (Fast AutoAugment's ``augment_list``).
RANGES: dict[str, tuple[float, float]] = {
    "ShearX": (-0.3, 0.3), "ShearY": (-0.3, 0.3), "TranslateX": (-0.45, 0.45), "TranslateY": (-0.45, 0.45),
    "Rotate": (-30.0, 30.0), "AutoContrast": (0.0, 1.0), "Invert": (0.0, 1.0), "Equalize": (0.0, 1.0),
    "Solarize": (0.0, 256.0), "Posterize": (4.0, 8.0), "Contrast": (0.1, 1.9), "Color": (0.1, 1.9),
    "Brightness": (0.1, 1.9), "Sharpness": (0.1, 1.9), "Cutout": (0.0, 0.2),
}
#: Operations whose value's sign is flipped at random per image (``random_mirror``).
MIRRORED = frozenset({"ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"})
#: Operations that ignore the magnitude.
MAGNITUDE_FREE = frozenset({"AutoContrast", "Invert", "Equalize"})
#: Operations for which level 0.5 is exactly the identity.
IDENTITY_AT_HALF = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Contrast", "Color",
                    "Brightness", "Sharpness")
CUTOUT_FILL = (125, 123, 114)


def level_to_value(op: str, level: Tensor | float) -> Tensor:
    """DADA's (Fast AutoAugment's) mapping ``v = m * (high - low) + low`` in float64. ``level`` is
    clamped to ``[0, 1]`` first, as the official code does when it applies a policy."""
    low, high = RANGES[op]
    m = torch.as_tensor(level, dtype=torch.float64).clamp(0.0, 1.0)
    return m * (high - low) + low


def sample_values(op: str, levels: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Per-image values (float64) of ``op`` at ``levels``: the mapping plus, for geometric ops,
    a random sign per image (probability 0.5 each)."""
    values = level_to_value(op, levels)
    if op in MIRRORED:
        flip = torch.rand(values.shape, generator=generator, dtype=torch.float64, device=values.device) > 0.5
        values = torch.where(flip, -values, values)
    return values


def sample_cutout_boxes(values: Tensor, height: int, width: int, generator: torch.Generator | None = None) -> Tensor:
    """``(N, 4)`` int64 boxes ``x0, y0, x1, y1`` (inclusive) of Fast AutoAugment's CutoutAbs:
    a square of side ``s = v * width`` pixels centred at a uniform random point, the corner
    truncated to an integer, the far edge at ``floor(min(size, corner + s))`` (PIL draws the
    rectangle inclusive of both edges). Like the official ``np.random.uniform(w)`` (low=w,
    high=1), the centre is uniform in ``[1, size)``. A box with ``s <= 0`` is empty (x1 < x0)."""
    n = values.shape[0]
    side = values.to(torch.float64) * width
    u = torch.rand((n, 2), generator=generator, dtype=torch.float64, device=values.device)
    cx = 1.0 + (width - 1.0) * u[:, 0]
    cy = 1.0 + (height - 1.0) * u[:, 1]
    x0 = (cx - side / 2).clamp(min=0).floor()
    y0 = (cy - side / 2).clamp(min=0).floor()
    x1 = torch.minimum(x0 + side, torch.tensor(float(width), dtype=torch.float64)).floor()
    y1 = torch.minimum(y0 + side, torch.tensor(float(height), dtype=torch.float64)).floor()
    boxes = torch.stack([x0, y0, x1, y1], dim=1).long()
    boxes[side <= 0, 2:] = -1  # `if v <= 0: return img`
    return boxes


# ------------------------------------------------------------------------- geometric ops


def _inverse_affine(angle: float, translate: tuple[float, float], shear: tuple[float, float],
                    center: tuple[float, float]) -> list[float]:
    """The inverse affine matrix torchvision's tensor ``affine`` samples with (scale 1); the same
    arithmetic in Python floats, so the float32 grid is bit-identical."""
    rot = math.radians(angle)
    sx, sy = math.radians(shear[0]), math.radians(shear[1])
    cx, cy = center
    tx, ty = translate
    cos_sy, tan_sx = math.cos(sy), math.tan(sx)
    a = math.cos(rot - sy) / cos_sy
    b = -(a * tan_sx + math.sin(rot))
    c = math.sin(rot - sy) / cos_sy
    d = math.cos(rot) - c * tan_sx
    matrix = [d, -b, 0.0, -c, a, 0.0]
    matrix[2] += cx - matrix[0] * (cx + tx) - matrix[1] * (cy + ty)
    matrix[5] += cy - matrix[3] * (cx + tx) - matrix[4] * (cy + ty)
    return matrix


def _geometric_args(op: str, value: float, height: int, width: int) -> dict:
    """torchvision ``affine``/``rotate`` arguments that reproduce the Fast AutoAugment PIL op."""
    if op == "ShearX":
        return dict(angle=0.0, translate=[0.0, 0.0], shear=[math.degrees(math.atan(value)), 0.0], center=[0.0, 0.0])
    if op == "ShearY":
        return dict(angle=0.0, translate=[0.0, 0.0], shear=[0.0, math.degrees(math.atan(value))], center=[0.0, 0.0])
    if op == "TranslateX":  # PIL (1, 0, v, 0, 1, 0) samples x + v: the content moves by -v
        return dict(angle=0.0, translate=[-value * width, 0.0], shear=[0.0, 0.0], center=None)
    if op == "TranslateY":
        return dict(angle=0.0, translate=[0.0, -value * height], shear=[0.0, 0.0], center=None)
    raise KeyError(op)


def _matrix_for(op: str, value: float, height: int, width: int) -> list[float]:
    if op == "Rotate":  # torchvision rotate: angle % 360, then the affine matrix of -angle about the centre
        return _inverse_affine(-(value % 360.0), (0.0, 0.0), (0.0, 0.0), (0.0, 0.0))
    args = _geometric_args(op, value, height, width)
    center = (0.0, 0.0) if args["center"] is None else (args["center"][0] - width * 0.5, args["center"][1] - height * 0.5)
    return _inverse_affine(args["angle"], tuple(args["translate"]), tuple(args["shear"]), center)


def _affine_grids(theta: Tensor, height: int, width: int) -> Tensor:
    """Sampling grids ``(N, H, W, 2)`` for per-image matrices ``theta (N, 2, 3)`` (torchvision's
    ``_affine_grid`` for a batch of matrices)."""
    dtype, device = theta.dtype, theta.device
    base = torch.empty(1, height, width, 3, dtype=dtype, device=device)
    base[..., 0].copy_(torch.linspace((1.0 - width) * 0.5, (width - 1.0) * 0.5, steps=width, device=device))
    base[..., 1].copy_(torch.linspace((1.0 - height) * 0.5, (height - 1.0) * 0.5, steps=height, device=device).unsqueeze_(-1))
    base[..., 2].fill_(1)
    scaled = theta.transpose(1, 2).div(torch.tensor([0.5 * width, 0.5 * height], dtype=dtype, device=device))  # (N, 3, 2)
    n = theta.shape[0]
    # one (H*W, 3) @ (3, 2N) product for all images (a batched bmm of tiny matrices is several times slower)
    grid = base.view(height * width, 3).mm(scaled.permute(1, 0, 2).reshape(3, 2 * n))
    return grid.view(height, width, n, 2).permute(2, 0, 1, 3)


GEOMETRIC = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")
GEOMETRIC_IDS = tuple(OPS.index(op) for op in GEOMETRIC)


def geometric(images: Tensor, op: str | Tensor, values: Tensor, interpolation: InterpolationMode = InterpolationMode.NEAREST,
              fill: Sequence[float] | None = None) -> Tensor:
    """Shear/Translate/Rotate with one value per image, as one ``grid_sample`` call. ``op`` is one
    operation name, or a tensor of per-image operation indices (several geometric ops in one call)."""
    n, c, h, w = images.shape
    if n == 0:
        return images
    op_ids = torch.full((n,), OP_INDEX[op]) if isinstance(op, str) else op.detach().cpu().long()
    values = values.detach().cpu().double()
    _, inverse = torch.unique(values * 0 + op_ids * 1000.0 + values, return_inverse=True)  # group (op, value) pairs
    first = torch.full((int(inverse.max()) + 1,), n).scatter_reduce(0, inverse, torch.arange(n), "amin")
    table = torch.tensor([_matrix_for(OPS[int(o)], v, h, w) for o, v in zip(op_ids[first].tolist(), values[first].tolist())],
                         dtype=torch.float32)  # exact per-pair matrices from each group's own value
    theta = table[inverse].view(n, 2, 3).to(images.device)
    grid = _affine_grids(theta, h, w)
    x = images.float()
    if fill is not None:
        x = torch.cat([x, torch.ones(n, 1, h, w, device=x.device)], dim=1)
    mode = "nearest" if interpolation == InterpolationMode.NEAREST else "bilinear"
    x = grid_sample(x, grid, mode=mode, padding_mode="zeros", align_corners=False)
    if fill is not None:
        x, mask = x[:, :-1], x[:, -1:].expand(-1, c, -1, -1)
        fill_img = torch.tensor([float(f) for f in fill], device=x.device).view(1, -1, 1, 1).expand_as(x)
        x = torch.where(mask < 0.5, fill_img, x) if mode == "nearest" else (x - fill_img) * mask + fill_img
    return x.round_().to(images.dtype)


def sample_geometric_values(op_ids: Tensor, levels: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Per-image signed values for a mix of geometric operations (same mapping and random mirror
    as :func:`sample_values`)."""
    low = torch.tensor([RANGES[op][0] for op in OPS], dtype=torch.float64)[op_ids]
    high = torch.tensor([RANGES[op][1] for op in OPS], dtype=torch.float64)[op_ids]
    values = levels.to(torch.float64).clamp(0.0, 1.0) * (high - low) + low
    flip = torch.rand(values.shape, generator=generator, dtype=torch.float64) > 0.5
    return torch.where(flip, -values, values)


# ------------------------------------------------------------------------ colour/pixel ops


def _per_image(values: Tensor, images: Tensor) -> Tensor:
    """float64 values -> float32 ``(N, 1, 1, 1)`` (torchvision receives Python floats)."""
    return values.to(torch.float64).to(torch.float32).view(-1, 1, 1, 1).to(images.device)


def _blend(image1: Tensor, image2: Tensor, ratio: Tensor) -> Tensor:
    """torchvision's ``_blend`` with one ratio per image."""
    r = _per_image(ratio, image1)
    one_minus = _per_image(1.0 - ratio.to(torch.float64), image1)
    # addcmul: the fused multiply-add of ``mul(r).add_(image2, alpha=1 - r)`` (bit-identical)
    return torch.addcmul(image1.mul(r), image2, one_minus).clamp_(0, 255).to(image1.dtype)


def _grey(images: Tensor) -> Tensor:
    r, g, b = images.unbind(dim=-3)
    return r.mul(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114).unsqueeze(-3).floor_()


def contrast(images: Tensor, factors: Tensor) -> Tensor:
    mean = torch.mean(_grey(images), dim=(-3, -2, -1), keepdim=True)
    return _blend(images, mean, factors)


def color(images: Tensor, factors: Tensor) -> Tensor:
    return _blend(images, _grey(images), factors)


def brightness(images: Tensor, factors: Tensor) -> Tensor:
    return images.mul(_per_image(factors, images)).clamp_(0, 255).to(images.dtype)


def sharpness(images: Tensor, factors: Tensor) -> Tensor:
    n, c, h, w = images.shape
    if n == 0 or h <= 2 or w <= 2:
        return images
    a, b = 1.0 / 13.0, 5.0 / 13.0
    kernel = torch.tensor([[a, a, a], [a, b, a], [a, a, a]], dtype=torch.float32, device=images.device)
    out = images.to(torch.float32, copy=True)
    blurred = conv2d(out, kernel.expand(c, 1, 3, 3), groups=c).round_()
    view = out[..., 1:-1, 1:-1]
    view.addcmul_(blurred.sub_(view), _per_image(1.0 - factors.to(torch.float64), images))
    return out.clamp_(0, 255).to(images.dtype)


def solarize(images: Tensor, thresholds: Tensor) -> Tensor:
    # integer pixels: x >= t  <=>  x >= ceil(t); comparing in int16 avoids promoting the images to float64
    thr = thresholds.to(torch.float64).ceil().clamp(0, 256).to(torch.int16).view(-1, 1, 1, 1).to(images.device)
    return torch.where(images.to(torch.int16) >= thr, 255 - images, images)


def posterize(images: Tensor, bits: Tensor) -> Tensor:
    bits = bits.to(torch.float64).floor().long().clamp(0, 8)  # Fast AutoAugment: int(v)
    masks = (((1 << bits) - 1) << (8 - bits)).to(torch.uint8).view(-1, 1, 1, 1).to(images.device)
    return images & masks


def cutout(images: Tensor, boxes: Tensor, fill: Sequence[int] = CUTOUT_FILL) -> Tensor:
    n, c, h, w = images.shape
    boxes = boxes.to(images.device)
    xs = torch.arange(w, device=images.device).view(1, 1, w)
    ys = torch.arange(h, device=images.device).view(1, h, 1)
    inside = ((xs >= boxes[:, 0, None, None]) & (xs <= boxes[:, 2, None, None])
              & (ys >= boxes[:, 1, None, None]) & (ys <= boxes[:, 3, None, None]))
    colour = torch.tensor(list(fill), dtype=images.dtype, device=images.device).view(1, c, 1, 1)
    return torch.where(inside.unsqueeze(1), colour, images)


def apply_values(images: Tensor, op: str, values: Tensor, boxes: Tensor | None = None,
                 interpolation: InterpolationMode = InterpolationMode.NEAREST,
                 fill: Sequence[float] | None = None) -> Tensor:
    """Apply ``op`` with one (already signed) value per image to uint8 ``(N, C, H, W)`` images."""
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise TypeError(f"DADA ops take uint8 (N, C, H, W) tensors, got {images.dtype} {tuple(images.shape)}")
    if op in ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"):
        return geometric(images, op, values, interpolation, fill)
    if op == "AutoContrast":
        return F.autocontrast(images)
    if op == "Invert":
        return F.invert(images)
    if op == "Equalize":
        return F.equalize(images)
    if op == "Solarize":
        return solarize(images, values)
    if op == "Posterize":
        return posterize(images, values)
    if op == "Contrast":
        return contrast(images, values)
    if op == "Color":
        return color(images, values)
    if op == "Brightness":
        return brightness(images, values)
    if op == "Sharpness":
        return sharpness(images, values)
    if op == "Cutout":
        if boxes is None:
            raise ValueError("Cutout needs boxes (sample_cutout_boxes)")
        return cutout(images, boxes)
    raise KeyError(f"unknown operation {op!r}; expected one of {OPS}")


def apply_op(images: Tensor, op: str, levels: Tensor, generator: torch.Generator | None = None,
             interpolation: InterpolationMode = InterpolationMode.NEAREST,
             fill: Sequence[float] | None = None) -> Tensor:
    """Apply ``op`` at per-image ``levels`` in [0, 1] (random signs / Cutout positions drawn from
    ``generator``)."""
    values = sample_values(op, levels.to(images.device), generator)
    boxes = sample_cutout_boxes(values, images.shape[-2], images.shape[-1], generator) if op == "Cutout" else None
    return apply_values(images, op, values, boxes, interpolation, fill)


def reference_op(image: Tensor, op: str, value: float, box: Sequence[int] | None = None,
                 interpolation: InterpolationMode = InterpolationMode.NEAREST,
                 fill: Sequence[float] | None = None) -> Tensor:
    """The same operation on ONE image with torchvision v2 functional ops (the per-image
    counterpart the batched ops are tested against)."""
    h, w = image.shape[-2:]
    if op == "Rotate":
        return F.rotate(image, value, interpolation=interpolation, fill=fill)
    if op in ("ShearX", "ShearY", "TranslateX", "TranslateY"):
        args = _geometric_args(op, value, h, w)
        return F.affine(image, angle=args["angle"], translate=args["translate"], scale=1.0, shear=args["shear"],
                        interpolation=interpolation, fill=fill, center=args["center"])
    if op == "AutoContrast":
        return F.autocontrast(image)
    if op == "Invert":
        return F.invert(image)
    if op == "Equalize":
        return F.equalize(image)
    if op == "Solarize":  # torchvision refuses thresholds above 255; PIL's (and ours) are then the identity
        return image.clone() if value > 255 else F.solarize(image, value)
    if op == "Posterize":
        return F.posterize(image, int(value))
    if op == "Contrast":
        return F.adjust_contrast(image, value)
    if op == "Color":
        return F.adjust_saturation(image, value)
    if op == "Brightness":
        return F.adjust_brightness(image, value)
    if op == "Sharpness":
        return F.adjust_sharpness(image, value)
    if op == "Cutout":
        x0, y0, x1, y1 = (int(b) for b in box)
        if x1 < x0 or y1 < y0:
            return image.clone()
        patch = torch.tensor(CUTOUT_FILL, dtype=image.dtype).view(3, 1, 1)
        return F.erase(image, y0, x0, y1 - y0 + 1, x1 - x0 + 1, patch)
    raise KeyError(op)
