"""Data for the AL loop: whole datasets as uint8 tensors in memory, plus batched augmentation.

The pools here are small (CIFAR: 50k x 3 x 32 x 32 bytes = 150 MB), so every dataset is held as one
uint8 tensor; a training batch is gathered by index and augmented on the batch (random crop with
zero padding + horizontal flip, the official CIFAR recipe) without a per-sample Python loop.
Real data comes from :mod:`shared.data` readers in the publishers' formats; the embedded default is
the procedural synthetic generator (called "synthetic" everywhere, never a real dataset's name).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

# official normalisation (aitom al_gradnorm main.py, CIFAR-10)
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
# not in the official code (only CIFAR-10 is released): the datasets' usual channel statistics
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
SVHN_MEAN, SVHN_STD = (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)
SYNTHETIC_MEAN, SYNTHETIC_STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
DATASETS = ("synthetic", "cifar10", "cifar100", "svhn")


@dataclass
class ArrayData:
    """Images (N, 3, H, W) uint8 and labels (N,) int64, with the normalisation to apply."""

    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    name: str = ""
    redundant: torch.Tensor | None = None  # synthetic redundant pools: True where an image is a duplicate

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.dim() != 4 or self.images.shape[1] != 3:
            raise ValueError(f"images must be uint8 (N, 3, H, W), got {self.images.dtype} {tuple(self.images.shape)}.")
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels.")

    def __len__(self) -> int:
        return len(self.labels)

    def normalise(self, x_uint8_or_float: torch.Tensor) -> torch.Tensor:
        x = x_uint8_or_float
        if x.dtype == torch.uint8:
            x = x.float().div_(255)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def inputs(self, idx=None, device=None) -> torch.Tensor:
        """Normalised float inputs (test transform: no augmentation) for rows ``idx``."""
        imgs = self.images if idx is None else self.images[torch.as_tensor(idx, dtype=torch.long)]
        return self.normalise(imgs.to(device) if device is not None else imgs)


def augment(images: torch.Tensor, generator: torch.Generator, padding: int = 4, hflip: bool = True) -> torch.Tensor:
    """RandomCrop(size, padding, zero fill) + RandomHorizontalFlip on a uint8/float batch (B, C, H, W).

    Draws from ``generator`` (CPU), so a run is reproducible from its seeds."""
    B, C, H, W = images.shape
    out = images
    if padding > 0:
        padded = torch.nn.functional.pad(images, (padding, padding, padding, padding))
        oy = torch.randint(0, 2 * padding + 1, (B,), generator=generator).to(images.device)
        ox = torch.randint(0, 2 * padding + 1, (B,), generator=generator).to(images.device)
        rows = (oy[:, None] + torch.arange(H, device=images.device)[None])  # (B, H)
        cols = (ox[:, None] + torch.arange(W, device=images.device)[None])  # (B, W)
        b = torch.arange(B, device=images.device)[:, None, None, None]
        c = torch.arange(C, device=images.device)[None, :, None, None]
        out = padded[b, c, rows[:, None, :, None], cols[:, None, None, :]]
    if hflip:
        flip = (torch.rand(B, generator=generator) < 0.5).to(images.device)
        out = torch.where(flip[:, None, None, None], out.flip(3), out)
    return out


def _from_hwc(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.asarray(array, dtype=np.uint8).transpose(0, 3, 1, 2)))


def redundant_pool(n: int, num_classes: int, size: int, seed: int, kw: dict, fraction: float = 0.8,
                   prototypes_per_class: int = 2, noise: int = 8) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A pool where selection matters (ours; the mechanism check): ``fraction`` of it are near-duplicates of a
    few easy prototypes (``prototypes_per_class`` per class: large, centred, upright objects, each copy with
    +-``noise`` grey levels of uniform pixel noise), the rest diverse draws like the test set. Returns images
    (N, H, W, 3) uint8 in shuffled order, labels, and a mask that is True where an image is a duplicate."""
    from shared.data import generate

    if not 0 < fraction < 1:
        from shared.errors import ConfigError

        raise ConfigError(f"data.redundant.fraction={fraction} must lie in (0, 1); use 0.8, or 0 for a plain pool")
    n_red = int(round(fraction * n))
    xd, yd = generate(n - n_red, num_classes, size, seed=seed, **kw)
    n_proto = prototypes_per_class * num_classes
    xp, yp = generate(n_proto, num_classes, size, domain=kw["domain"], seed=seed + 20_000,
                      scale_range=(0.8, 0.9), position_jitter=0.0, max_rotation=0.0)
    rng = np.random.default_rng([seed, 0xD0])
    which = np.arange(n_red) % n_proto
    jitter = rng.integers(-noise, noise + 1, size=(n_red, *xp.shape[1:]))
    xr = np.clip(xp[which].astype(np.int16) + jitter, 0, 255).astype(np.uint8)
    x = np.concatenate([xd, xr])
    y = np.concatenate([np.asarray(yd), np.asarray(yp)[which]])
    redundant = np.concatenate([np.zeros(n - n_red, bool), np.ones(n_red, bool)])
    order = rng.permutation(n)
    return x[order], y[order], redundant[order]


def load_dataset(cfg) -> tuple[ArrayData, ArrayData]:
    """``(train pool, test set)`` for ``cfg.name`` in synthetic | cifar10 | cifar100 | svhn."""
    name = cfg.name
    if name == "synthetic":
        from shared.data import generate

        kw = dict(domain=cfg.domain, scale_range=tuple(cfg.get("scale_range", (0.3, 0.9))))
        red = dict(cfg.get("redundant") or {})
        flags = None
        if red.get("fraction", 0.0) > 0:
            xtr, ytr, flags = redundant_pool(cfg.n_train, cfg.num_classes, cfg.image_size, cfg.seed, kw, **red)
        else:
            xtr, ytr = generate(cfg.n_train, cfg.num_classes, cfg.image_size, seed=cfg.seed, **kw)
        xte, yte = generate(cfg.n_test, cfg.num_classes, cfg.image_size, seed=cfg.seed + 10_000, **kw)
        mk = lambda x, y: ArrayData(_from_hwc(x), torch.from_numpy(np.asarray(y, dtype=np.int64)), cfg.num_classes,
                                    SYNTHETIC_MEAN, SYNTHETIC_STD, f"synthetic/{cfg.domain}")
        train = mk(xtr, ytr)
        train.redundant = None if flags is None else torch.from_numpy(flags)
        return train, mk(xte, yte)
    if name in ("cifar10", "cifar100"):
        from shared.data import cifar

        mean, std = (CIFAR10_MEAN, CIFAR10_STD) if name == "cifar10" else (CIFAR100_MEAN, CIFAR100_STD)
        out = []
        for train in (True, False):
            ds = cifar(Path(cfg.root), name=name, train=train)
            out.append(ArrayData(_from_hwc(ds.data), torch.tensor(ds.targets, dtype=torch.long), len(ds.classes),
                                 mean, std, name))
        return out[0], out[1]
    if name == "svhn":
        from shared.data import svhn

        out = []
        for split in ("train", "test"):
            ds = svhn(Path(cfg.root), split=split)
            out.append(ArrayData(torch.from_numpy(np.ascontiguousarray(ds.data, dtype=np.uint8)),
                                 torch.as_tensor(np.asarray(ds.labels), dtype=torch.long), 10, SVHN_MEAN, SVHN_STD,
                                 "svhn"))
        return out[0], out[1]
    from shared.errors import check_choice

    check_choice("data.name", name, DATASETS)
    raise AssertionError("unreachable")
