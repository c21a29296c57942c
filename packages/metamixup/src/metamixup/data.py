"""Data: whole datasets held as tensors, index loaders, batched augmentation, and the splits the method
needs (a held-out meta split; labelled / unlabelled for semi-supervised learning).

Datasets (``data.name``):

* ``synthetic``: the shared procedural image generator (``shared.data.generate``): "synthetic" everywhere,
  never a real dataset's name.
* ``rings``: the mechanism-check task. Points in 2-D on ``num_classes`` concentric rings (class k has
  radius ``k + 1`` plus radial noise). Mixing two points of an outer ring lands *inside* it, i.e. on an
  inner class's ring, while keeping the outer label: manifold intrusion by construction (see
  :func:`intrusion_rate`).
* ``cifar10`` / ``cifar100`` / ``svhn``: read from disk in the publishers' formats with the shared readers
  (``cifar-10-batches-py/``, ``cifar-100-python/``, ``{train,test}_32x32.mat``); nothing is downloaded.

Images are kept as uint8 ``(N, 3, H, W)`` and normalised per batch; training batches get random crop
(zero padding) and horizontal flip on the whole batch, drawn from a seeded generator.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

DATASETS = ("synthetic", "rings", "cifar10", "cifar100", "svhn")
STATS = {  # channel mean / std of the training sets (the usual values)
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "svhn": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    "synthetic": ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
}


@dataclass
class Split:
    x: torch.Tensor  # uint8 images (N, 3, H, W) or float vectors (N, D)
    y: torch.Tensor  # int64 (N,)
    ids: torch.Tensor | None = None  # indices into the original training set (for records)

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, idx: np.ndarray | torch.Tensor) -> "Split":
        idx = torch.as_tensor(np.asarray(idx), dtype=torch.long)
        ids = self.ids[idx] if self.ids is not None else idx
        return Split(self.x[idx], self.y[idx], ids)


@dataclass
class DataBundle:
    train: Split
    test: Split
    num_classes: int
    kind: str  # "image" | "vector"
    meta: Split | None = None
    unlabeled: Split | None = None
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    name: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def in_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])

    def inputs(self, x: torch.Tensor, device: torch.device | str, augment: dict | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Raw rows -> normalised float inputs on ``device`` (augmented when ``augment`` is given)."""
        x = x.to(device)
        if self.kind == "vector":
            x = x.float()
            if augment and augment.get("noise", 0) > 0:
                x = x + augment["noise"] * torch.randn(x.shape, generator=generator).to(device)
            return x
        if augment:
            x = augment_images(x, generator, augment.get("crop_pad", 0), augment.get("flip", False))
        x = x.float().div_(255)
        mean = torch.tensor(self.mean, device=device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=device).view(1, -1, 1, 1)
        return (x - mean) / std


class IndexDataset(Dataset):
    """Yields row indices; batches are gathered from the in-memory tensors (no per-sample Python work)."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


def augment_images(x: torch.Tensor, generator: torch.Generator | None, pad: int, flip: bool) -> torch.Tensor:
    """Random crop of the zero-padded image (the CIFAR recipe) and horizontal flip, for a whole batch."""
    b, c, h, w = x.shape
    dev = x.device
    if pad > 0:
        padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
        oy = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(dev)
        ox = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(dev)
        rows = (oy[:, None] + torch.arange(h, device=dev))[:, None, :, None]
        cols = (ox[:, None] + torch.arange(w, device=dev))[:, None, None, :]
        x = padded[torch.arange(b, device=dev)[:, None, None, None], torch.arange(c, device=dev)[None, :, None, None],
                   rows, cols]
    if flip:
        f = (torch.rand(b, generator=generator) < 0.5).to(dev)
        x = torch.where(f[:, None, None, None], x.flip(3), x)
    return x


def stream_indices(n: int, batch_size: int, step: int, seed: int, rank: int = 0, world: int = 1) -> torch.Tensor:
    """Indices of batch ``step`` of an endless stream of seeded permutations of ``range(n)``, sharded over
    ``world`` ranks. It depends only on its arguments, so a resumed run draws the batches an uninterrupted
    one draws (used for the meta batches and the unlabelled batches)."""
    per_step = batch_size * world
    start = step * per_step
    out = []
    while len(out) < per_step:
        epoch, offset = divmod(start + len(out), n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        out.extend(perm[offset:offset + per_step - len(out)].tolist())
    return torch.tensor(out[rank::world], dtype=torch.long)


# ------------------------------------------------------------------------------------- generators


def make_rings(n: int, num_classes: int = 3, noise: float = 0.12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points on ``num_classes`` concentric rings (radius ``k + 1``, Gaussian radial noise), balanced."""
    rng = np.random.default_rng([seed, 0x121])
    y = np.arange(n) % num_classes
    y = y[rng.permutation(n)]
    radius = y + 1 + noise * rng.standard_normal(n)
    angle = rng.uniform(0, 2 * np.pi, n)
    x = np.stack([radius * np.cos(angle), radius * np.sin(angle)], 1).astype(np.float32)
    return x, y.astype(np.int64)


def ring_class(points: np.ndarray | torch.Tensor, num_classes: int) -> np.ndarray:
    """The class whose ring is nearest to each point (the Bayes rule of the rings task for small noise)."""
    r = np.linalg.norm(np.asarray(points, dtype=np.float64), axis=-1)
    return np.clip(np.rint(r - 1), 0, num_classes - 1).astype(np.int64)


def intrusion_rate(lams: np.ndarray, num_classes: int = 3, noise: float = 0.12, n_pairs: int = 20000,
                   seed: int = 0) -> np.ndarray:
    """Fraction of random training pairs whose mixture at ratio ``lam`` lands on the ring of a class that
    is neither of the two mixed classes (manifold intrusion), for each ``lam``. Symmetric in lam <-> 1-lam."""
    x, y = make_rings(2 * n_pairs, num_classes, noise, seed)
    a, b = slice(0, n_pairs), slice(n_pairs, 2 * n_pairs)
    out = []
    for lam in np.atleast_1d(lams):
        c = ring_class(lam * x[a] + (1 - lam) * x[b], num_classes)
        out.append(float(np.mean((c != y[a]) & (c != y[b]))))
    return np.asarray(out)


# ----------------------------------------------------------------------------------------- loading


def _load(cfg: Any, seed: int) -> tuple[Split, Split, int, str, tuple, tuple]:
    name = cfg.name
    if name == "rings":
        xtr, ytr = make_rings(cfg.n_train, cfg.num_classes, cfg.noise, seed=1000 + seed)
        xte, yte = make_rings(cfg.n_test, cfg.num_classes, cfg.noise, seed=2000 + seed)
        return (Split(torch.from_numpy(xtr), torch.from_numpy(ytr)), Split(torch.from_numpy(xte), torch.from_numpy(yte)),
                cfg.num_classes, "vector", (0.0,), (1.0,))
    if name == "synthetic":
        from shared.data import generate

        xtr, ytr = generate(cfg.n_train, cfg.num_classes, cfg.image_size, cfg.domain, seed=1000 + seed)
        xte, yte = generate(cfg.n_test, cfg.num_classes, cfg.image_size, cfg.domain, seed=2000 + seed)
        tr = Split(torch.from_numpy(xtr).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(ytr))
        te = Split(torch.from_numpy(xte).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(yte))
        return (tr, te, cfg.num_classes, "image", *STATS["synthetic"])
    if name in ("cifar10", "cifar100"):
        from shared.data import cifar

        tr, te = cifar(cfg.root, name, train=True), cifar(cfg.root, name, train=False)
        def to_split(d):
            return Split(torch.from_numpy(np.ascontiguousarray(d.data.transpose(0, 3, 1, 2))),
                         torch.as_tensor(d.targets, dtype=torch.long))
        return to_split(tr), to_split(te), len(tr.classes), "image", *STATS[name]
    if name == "svhn":
        from shared.data import svhn

        tr, te = svhn(cfg.root, "train"), svhn(cfg.root, "test")
        def to_split(d):
            return Split(torch.from_numpy(d.data), torch.as_tensor(d.labels, dtype=torch.long))
        return to_split(tr), to_split(te), 10, "image", *STATS["svhn"]
    raise ValueError(f"unknown dataset {name!r}; expected one of {DATASETS}.")


def _balanced_pick(labels: np.ndarray, total: int, num_classes: int, seed: int) -> np.ndarray:
    """``total`` indices, as class-balanced as the counts allow (``total // C`` per class, the remainder to
    the first classes), chosen at random."""
    from shared.data import k_shot_indices

    per, extra = divmod(total, num_classes)
    rng = np.random.default_rng(seed)
    chosen = k_shot_indices(labels, per, seed=seed, num_classes=num_classes) if per else np.empty(0, np.int64)
    if extra:
        rest = np.setdiff1d(np.arange(len(labels)), chosen)
        firsts = [rng.choice(rest[labels[rest] == c]) for c in range(extra)]
        chosen = np.concatenate([chosen, np.asarray(firsts, dtype=np.int64)])
    return np.sort(chosen)


def build_data(cfg: Any, seed: int = 0, split_seed: int | None = None) -> DataBundle:
    """Load ``cfg.name`` and carve out the meta split (``cfg.meta_size`` examples, class-balanced) and, when
    ``cfg.num_labeled`` is set, the labelled subset (class-balanced; the rest is unlabelled). Every method
    trains on the same remaining set, so the comparison is fair: the meta split is not folded back in.

    ``seed`` seeds the synthetic generators; ``split_seed`` (default ``seed``) the splits.
    """
    split_seed = seed if split_seed is None else split_seed
    train, test, num_classes, kind, mean, std = _load(cfg, seed)
    train.ids = torch.arange(len(train))
    labels = train.y.numpy()
    info: dict[str, Any] = {}
    meta = None
    rest = np.arange(len(train))
    if cfg.get("meta_size"):
        meta_idx = _balanced_pick(labels, int(cfg.meta_size), num_classes, seed=split_seed + 17)
        meta = train.subset(meta_idx)
        rest = np.setdiff1d(rest, meta_idx)
    unlabeled = None
    if cfg.get("num_labeled"):
        lab_local = _balanced_pick(labels[rest], int(cfg.num_labeled), num_classes, seed=split_seed + 29)
        labeled_idx = rest[lab_local]
        unlabeled = train.subset(np.setdiff1d(rest, labeled_idx))
        rest = labeled_idx
        info["labeled_idx"] = labeled_idx.tolist()
    bundle = DataBundle(train.subset(rest), test, num_classes, kind, meta, unlabeled, mean, std, cfg.name, info)
    return bundle


def write_labeled_idx(bundle: DataBundle, path: Path) -> None:
    if "labeled_idx" in bundle.info:
        path.write_text(json.dumps({"dataset": bundle.name, "labeled_idx": bundle.info["labeled_idx"]}) + "\n")
