"""Data for DPT: the synthetic varied-scale task (embedded default), ImageNet-1k with the DeiT
recipe of the paper (torchvision transforms v2), and COCO for RetinaNet (shared reader).

The embedded default is ``shared.data``'s procedural generator with objects at strongly varied
scale (``scale_range`` 0.15-0.9 of the image side) and anywhere in the image
(``position_jitter`` 1): the setting where patches that can move and resize should matter. It is
always called "synthetic".
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, Sampler

from shared.data import SyntheticImageDataset, image_folder
from shared.errors import DatasetFormatError
from shared.data.coco import coco_split

# ImageNet statistics (PVT/DeiT normalise with them)
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


class Normalized(Dataset):
    """Wrap a dataset of float images in [0, 1] and normalise them with ``mean``/``std``."""

    def __init__(self, base: Dataset, mean=MEAN, std=STD):
        self.base = base
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i):
        x, y = self.base[i]
        return (x - self.mean) / self.std, y


def synthetic_splits(d: Any, seed: int = 0) -> tuple[Dataset, Dataset]:
    """Train and test sets of the synthetic varied-scale task (``d``: the ``data`` config).

    The test set uses a different generator seed, so no image is shared; the class definitions
    depend only on the domain and are the same for both."""
    kw = dict(scale_range=tuple(d.scale_range), position_jitter=float(d.position_jitter),
              max_rotation=float(d.max_rotation))
    train = SyntheticImageDataset(int(d.n_train), int(d.num_classes), int(d.image_size), d.domain,
                                  seed=int(d.data_seed) * 2 + 1, **kw)
    test = SyntheticImageDataset(int(d.n_test), int(d.num_classes), int(d.image_size), d.domain,
                                 seed=int(d.data_seed) * 2 + 2, **kw)
    return Normalized(train), Normalized(test)


# ---------------------------------------------------------------------------------- parts (mechanism check)


#: hand-picked 3x3 glyphs with 5 cells each: the class is the arrangement, never the amount of ink
SYMBOLS = {
    "plus": "010111010", "cross": "101010101", "T": "111010010", "L": "100100111",
    "T_down": "010010111", "J": "001001111", "Z": "110010011", "S": "011010110",
}


def part_patterns(num_classes: int, cells: int = 3, on: int = 5, seed: int = 0, glyph_set: str = "random") -> torch.Tensor:
    """``num_classes`` distinct binary ``cells x cells`` glyphs with exactly ``on`` cells set, none a
    translate of another (so a glyph's look alone tells its class). ``glyph_set="symbols"``: the
    first ``num_classes`` of :data:`SYMBOLS` (plus, cross, T, L, ...); ``"random"``: drawn with a
    fixed seed from all such glyphs."""
    import itertools

    import numpy as np

    if glyph_set == "symbols":
        if num_classes > len(SYMBOLS):
            raise ValueError(f"glyph_set='symbols' has {len(SYMBOLS)} glyphs; use fewer classes or glyph_set='random'")
        return torch.tensor([[float(c) for c in g] for g in list(SYMBOLS.values())[:num_classes]]).reshape(-1, 3, 3)

    found: dict[bytes, np.ndarray] = {}
    combos = list(itertools.combinations(range(cells * cells), on))
    np.random.default_rng(seed).shuffle(combos)
    for c in combos:
        g = np.zeros(cells * cells, np.uint8)
        g[list(c)] = 1
        g = g.reshape(cells, cells)
        ys, xs = np.nonzero(g)
        key = g[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
        key = bytes(key.shape) + key.tobytes()  # the glyph up to translation
        if key not in found:
            found[key] = g
        if len(found) == num_classes:
            return torch.tensor(np.stack(list(found.values())), dtype=torch.float32)
    raise ValueError(f"only {len(found)} distinct {cells}x{cells} glyphs with {on} cells exist; use fewer classes")


def _glyph_masks(glyphs: torch.Tensor, x0: torch.Tensor, y0: torch.Tensor, scale: torch.Tensor, size: int) -> torch.Tensor:
    """Binary masks (n, size, size) of ``glyphs`` (n, c, c) drawn with ``scale`` pixels per cell at
    top-left ``(x0, y0)``."""
    n, c = glyphs.shape[0], glyphs.shape[-1]
    ii = torch.arange(size).view(1, size, 1) - y0.view(n, 1, 1)
    jj = torch.arange(size).view(1, 1, size) - x0.view(n, 1, 1)
    s = scale.view(n, 1, 1)
    inside = (ii >= 0) & (jj >= 0) & (ii < c * s) & (jj < c * s)
    cell = (ii.clamp(0) // s).clamp(max=c - 1) * c + (jj.clamp(0) // s).clamp(max=c - 1)
    return glyphs.reshape(n, c * c).gather(1, cell.reshape(n, -1)).reshape(n, size, size) * inside


def generate_parts(n: int, num_classes: int, image_size: int, seed: int, scales=(2, 3), noise: float = 0.1,
                   distractors: int = 2, on: int = 5, glyph_set: str = "random",
                   distractor_sizes=(2, 4), colours: str = "random") -> dict[str, torch.Tensor]:
    """The synthetic "parts" task of the mechanism check (always called synthetic).

    Each image is a plain background with pixel noise, ``distractors`` solid squares (side drawn from
    ``distractor_sizes``, any colour, anywhere: they say nothing about the class) and one small glyph: a 3x3 cell pattern drawn
    at ``scale`` pixels per cell (``scales``: 2 -> 6 px, 3 -> 9 px), at a uniformly random position, so
    it lands at any offset from the patch grid. The class is the glyph's pattern; all patterns have
    ``on`` cells, so the amount of foreground says nothing either. ``colours="random"``: background,
    glyph and every distractor get their own random colour per image; ``"fixed"``: white glyph and
    distractors on black (only their shape tells them apart). Returns ``images`` (n, 3, S, S)
    uint8, ``labels`` (n,), the glyph ``masks`` (n, S, S) bool (for box statistics), the glyph
    ``boxes`` (n, 4) xyxy pixels and the visible ``distractor_masks`` (n, S, S) bool.
    """
    g = torch.Generator().manual_seed(int(seed))
    glyphs = part_patterns(num_classes, on=on, glyph_set=glyph_set)
    labels = torch.arange(n) % num_classes
    labels = labels[torch.randperm(n, generator=g)]
    scale = torch.tensor(list(scales))[torch.randint(len(scales), (n,), generator=g)]
    side = 3 * scale
    x0 = (torch.rand(n, generator=g) * (image_size - side + 1)).floor().long()
    y0 = (torch.rand(n, generator=g) * (image_size - side + 1)).floor().long()
    mask = _glyph_masks(glyphs[labels], x0, y0, scale, image_size) > 0
    if colours not in ("random", "fixed"):
        raise ValueError(f"colours={colours!r}: use 'random' or 'fixed'")
    bg = torch.rand(n, 3, 1, 1, generator=g)
    fg = torch.rand(n, 3, 1, 1, generator=g)
    weak = (fg - bg).abs().sum(1, keepdim=True) < 0.6
    fg = torch.where(weak, 1.0 - bg, fg)  # keep the glyph visible
    if colours == "fixed":  # white glyph and distractors on black: only shape tells them apart
        bg, fg = torch.zeros_like(bg), torch.ones_like(fg)
    img = bg.expand(n, 3, image_size, image_size).clone()
    clutter = torch.zeros(n, image_size, image_size, dtype=torch.bool)
    for _ in range(distractors):
        ds = torch.randint(int(distractor_sizes[0]), int(distractor_sizes[1]) + 1, (n,), generator=g)
        dx = (torch.rand(n, generator=g) * (image_size - ds + 1)).floor().long()
        dy = (torch.rand(n, generator=g) * (image_size - ds + 1)).floor().long()
        dmask = _glyph_masks(torch.ones(n, 1, 1), dx, dy, ds, image_size) > 0
        dcol = torch.rand(n, 3, 1, 1, generator=g)
        if colours == "fixed":
            dcol = torch.ones_like(dcol)
        img = torch.where(dmask.unsqueeze(1), dcol, img)
        clutter |= dmask
    img = torch.where(mask.unsqueeze(1), fg, img)
    img = img + noise * torch.randn(img.shape, generator=g)
    images = (img.clamp(0, 1) * 255).round().to(torch.uint8)
    boxes = torch.stack([x0, y0, x0 + side, y0 + side], 1)
    return {"images": images, "labels": labels, "masks": mask, "boxes": boxes, "distractor_masks": clutter & ~mask}


class PartsDataset(Dataset):
    """:func:`generate_parts` as a dataset of normalised float images (``masks``/``boxes`` kept for the
    box statistics of the mechanism check)."""

    def __init__(self, n: int, num_classes: int, image_size: int, seed: int, **kw: Any):
        data = generate_parts(n, num_classes, image_size, seed, **kw)
        self.images, self.labels, self.masks, self.boxes = data["images"], data["labels"], data["masks"], data["boxes"]
        self.distractor_masks = data["distractor_masks"]
        self.mean = torch.tensor(MEAN).view(3, 1, 1)
        self.std = torch.tensor(STD).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        return (self.images[i].float() / 255 - self.mean) / self.std, int(self.labels[i])


def parts_splits(d: Any) -> tuple[Dataset, Dataset]:
    """Train and test sets of the parts task (``d``: the ``data`` config); the test set uses another
    generator seed, so no image is shared."""
    kw = dict(scales=tuple(d.scales), noise=float(d.noise), distractors=int(d.distractors), on=int(d.on_cells),
              glyph_set=str(d.glyph_set), distractor_sizes=tuple(d.distractor_sizes),
              colours=str(d.get("colours", "random")))
    train = PartsDataset(int(d.n_train), int(d.num_classes), int(d.image_size), int(d.data_seed) * 2 + 1, **kw)
    test = PartsDataset(int(d.n_test), int(d.num_classes), int(d.image_size), int(d.data_seed) * 2 + 2, **kw)
    return train, test


# ---------------------------------------------------------------------------------- ImageNet


def imagenet_transforms(d: Any):
    """DeiT/DPT training and evaluation transforms with torchvision transforms v2.

    Train: RandomResizedCrop (bicubic), horizontal flip, RandAugment (2 ops, magnitude 9; timm's
    ``rand-m9-mstd0.5-inc1`` has magnitude noise that torchvision lacks), normalise, RandomErasing
    (p 0.25, per-pixel random values). Eval: resize to ``size / crop_pct`` then centre crop."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import v2

    size = int(d.image_size)
    bicubic = InterpolationMode.BICUBIC
    train = v2.Compose([
        v2.RandomResizedCrop(size, interpolation=bicubic, antialias=True),
        v2.RandomHorizontalFlip(),
        v2.RandAugment(num_ops=2, magnitude=int(d.randaug_magnitude), interpolation=bicubic),
        v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD),
        v2.RandomErasing(p=float(d.random_erasing), value="random"),
    ])
    evaluate = v2.Compose([
        v2.Resize(int(size / float(d.crop_pct)), interpolation=bicubic, antialias=True),
        v2.CenterCrop(size),
        v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD),
    ])
    return train, evaluate


def imagenet_splits(d: Any) -> tuple[Dataset, Dataset]:
    """``<root>/train/<wnid>/*.JPEG`` and ``<root>/val/<wnid>/*.JPEG`` (the ImageFolder layout)."""
    train_tf, eval_tf = imagenet_transforms(d)
    root = Path(d.root)
    train = image_folder(root / "train", transform=train_tf)
    val = image_folder(root / "val", transform=eval_tf)
    if len(train.classes) != int(d.num_classes) or train.classes != val.classes:
        raise DatasetFormatError(f"{root}: train has {len(train.classes)} classes and val {len(val.classes)}, which must "
                                 f"be the same folders and match data.num_classes={d.num_classes}; fix the folders or "
                                 f"set data.num_classes={len(train.classes)}")
    return train, val


class RepeatedAugSampler(Sampler):
    """The repeated-augmentation sampler of the official trainer (DeiT's ``RASampler``), re-written.

    Each epoch: shuffle the indices with a generator seeded by ``seed + epoch``, repeat every index
    ``repeats`` times in a row (``[a, a, a, b, b, b, ...]``), pad to a multiple of the world size,
    deal them out round-robin (so the copies of one image go to different ranks, each augmented
    differently), and keep only the first ``floor(N // round_to * round_to / world)`` indices per
    rank: an epoch has as many samples as without repetition, of a third as many distinct images.
    ``skip`` drops the first indices (mid-epoch resume).
    """

    def __init__(self, num_samples: int, num_replicas: int = 1, rank: int = 0, repeats: int = 3, seed: int = 0,
                 epoch: int = 0, shuffle: bool = True, round_to: int = 256, skip: int = 0):
        self.n, self.num_replicas, self.rank, self.repeats = int(num_samples), int(num_replicas), int(rank), int(repeats)
        self.seed, self.epoch, self.shuffle, self.skip = int(seed), int(epoch), bool(shuffle), int(skip)
        self.per_rank = math.ceil(self.n * self.repeats / self.num_replicas)
        self.total = self.per_rank * self.num_replicas
        self.selected = int(math.floor(self.n // round_to * round_to / self.num_replicas))

    def indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.n, generator=g)
        else:
            order = torch.arange(self.n)
        rep = order.repeat_interleave(self.repeats)
        rep = torch.cat([rep, rep[: self.total - len(rep)]])
        return rep[self.rank:self.total:self.num_replicas][: self.selected].tolist()

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices()[self.skip:])

    def __len__(self) -> int:
        return max(0, self.selected - self.skip)


class MixupCutmix:
    """Batch-level mixup/cutmix (one or the other per batch, ``switch_prob`` for cutmix) with
    label smoothing, as DeiT: returns ``(images, soft targets)``. Uses torchvision's v2 ops."""

    def __init__(self, num_classes: int, mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0,
                 switch_prob: float = 0.5, label_smoothing: float = 0.1):
        from torchvision.transforms import v2

        self.num_classes, self.smoothing = num_classes, label_smoothing
        ops = []
        if mixup_alpha > 0:
            ops.append(v2.MixUp(alpha=mixup_alpha, num_classes=num_classes))
        if cutmix_alpha > 0:
            ops.append(v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes))
        if len(ops) == 2:
            self.op = v2.RandomChoice(ops, p=[1 - switch_prob, switch_prob])
        else:
            self.op = ops[0] if ops else None

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.op is None:
            soft = torch.nn.functional.one_hot(labels, self.num_classes).float()
        else:
            images, soft = self.op(images, labels)
        soft = soft * (1 - self.smoothing) + self.smoothing / self.num_classes
        return images, soft


# ---------------------------------------------------------------------------------- COCO


class DetectionTransform:
    """PIL image + target -> float tensor in [0, 1] (RetinaNet normalises and resizes itself);
    random horizontal flip for training."""

    def __init__(self, train: bool, flip_prob: float = 0.5):
        self.train, self.flip_prob = train, flip_prob

    def __call__(self, image, target):
        from torchvision.transforms.functional import pil_to_tensor

        img = pil_to_tensor(image).float().div_(255)
        if self.train and torch.rand(()) < self.flip_prob:
            img = img.flip(-1)
            w = img.shape[-1]
            boxes = target["boxes"].clone()
            boxes[:, [0, 2]] = w - target["boxes"][:, [2, 0]]
            target = dict(target, boxes=boxes)
        return img, target


def coco_splits(d: Any):
    """COCO train/val in the publisher's layout via ``shared.data.coco``."""
    train = coco_split(d.root, d.train_split, transforms=DetectionTransform(True),
                       remove_images_without_annotations=True)
    val = coco_split(d.root, d.val_split, transforms=DetectionTransform(False))
    return train, val
