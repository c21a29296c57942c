"""Data: readers for the paper's datasets in their published layouts, and the synthetic identities of the
embedded default.

Readers (nothing is ever downloaded; a missing or malformed dataset raises one clear error)::

    casia_webface(root, exclude=...)   root/<identity>/<image>.jpg (ImageFolder), minus an identity list
    read_lfw_pairs(pairs.txt)           LFW's pairs.txt: "10 300" then 300 matched + 300 mismatched per fold
    lfw_pairs(root, pairs.txt)          the pairs' images root/<Name>/<Name>_<%04d>.jpg
    market1501(root)                    bounding_box_train / query / bounding_box_test, ids from file names
    parse_reid_name(name)               Market-1501 "0002_c1s1_000451_03.jpg" and DukeMTMC "0001_c2_f0046182.jpg"
    read_idx(path), mnist(root)         MNIST idx (optionally .gz) files; imbalanced_indices() for the 20:1 setup

Synthetic identities (``synthetic_identities``): faces rendered by ``shared.data.faces`` (a parametric face
model: identity = head shape and appearance; nuisance = pose, expression, illumination, position, noise).
Training identities get a long-tailed number of images; a balanced closed-set test set of the same
identities measures per-class (minority) recall; unseen identities are written as an LFW-style folder with
a ``pairs.txt`` (10 identity-disjoint folds) and read back with the LFW reader for open-set verification.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import re
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from shared.errors import ConfigError, DatasetFormatError, DatasetNotFoundError

log = logging.getLogger("ir_softmax")

__all__ = [
    "DatasetFormatError",
    "LFWPair",
    "ReIDItem",
    "SyntheticIdentities",
    "casia_webface",
    "imbalanced_indices",
    "lfw_pairs",
    "load_image",
    "market1501",
    "mnist",
    "parse_reid_name",
    "read_idx",
    "read_lfw_pairs",
    "synthetic_identities",
    "write_lfw_layout",
]


DATASETS = ("synthetic_faces", "gaussian", "mnist", "casia_webface", "market1501")


def load_image(path: str | os.PathLike, mode: str = "RGB") -> np.ndarray:
    """An image file as an array (an unreadable file is a one-line DatasetFormatError naming it)."""
    from shared.data.readers import load_image as shared_load

    return np.asarray(shared_load(path, mode))


# ------------------------------------------------------------------------------------ CASIA-WebFace


#: The 59 CASIA-WebFace identities that overlap LFW (17) and MegaFace's FaceScrub (42), as AM-Softmax removed them.
BUILTIN_OVERLAP = Path(__file__).resolve().parent / "lists" / "casia_webface_overlap.txt"


def read_identity_list(path: str | os.PathLike) -> list[str]:
    """One identity (folder name) per line; blank lines and ``#`` comments ignored."""
    p = Path(path)
    if not p.is_file():
        raise DatasetNotFoundError("CASIA-WebFace exclusion list", "a text file with one identity folder name per line",
                                   p, "write the identities to remove (those overlapping your test sets) one per line, "
                                   "or set data.exclude=null to keep every identity.")
    names = [line.split("#", 1)[0].strip() for line in p.read_text().splitlines()]
    return [n for n in names if n]


def casia_webface(root: str | os.PathLike, exclude: str | os.PathLike | list[str] | None = None, transform=None):
    """CASIA-WebFace as an ImageFolder (``root/<identity id>/<nnn>.jpg``) without the ``exclude`` identities.

    The paper trains on 10,516 of the 10,575 identities after removing the 59 that overlap its test sets
    (following AM-Softmax): ``exclude="builtin"`` removes AM-Softmax's published list (shipped in
    ``ir_softmax/lists``); a file path or a list of names removes others. Labels are contiguous over the
    kept identities, in sorted folder order."""
    from torchvision.datasets import ImageFolder

    from shared.data import image_folder

    image_folder(root)  # validates the layout (one clear error if missing / empty)
    if exclude == "builtin":
        exclude = BUILTIN_OVERLAP
    drop = set(read_identity_list(exclude) if isinstance(exclude, (str, os.PathLike)) else (exclude or []))

    class _Filtered(ImageFolder):
        def find_classes(self, directory):
            classes = sorted(e.name for e in os.scandir(directory) if e.is_dir() and e.name not in drop)
            return classes, {c: i for i, c in enumerate(classes)}

    ds = _Filtered(str(root), transform=transform)
    present = {e.name for e in os.scandir(root) if e.is_dir()}
    missing = sorted(drop - present)
    if missing:
        log.warning("CASIA-WebFace: %d excluded identities are not in %s (e.g. %s)", len(missing), root, missing[:3])
    return ds


# ---------------------------------------------------------------------------------------------- LFW


@dataclass(frozen=True)
class LFWPair:
    name1: str
    index1: int
    name2: str
    index2: int
    same: bool
    fold: int


def read_lfw_pairs(path: str | os.PathLike) -> list[LFWPair]:
    """Parse LFW's ``pairs.txt``: a header ``<folds> <n>`` (or ``<n>`` for the one-fold View 1 files), then per
    fold ``n`` matched lines ``name i j`` followed by ``n`` mismatched lines ``name1 i name2 j``."""
    p = Path(path)
    if not p.is_file():
        raise DatasetNotFoundError("LFW pairs", "the pairs.txt file of LFW's View 2 (10 folds x 600 pairs)", p,
                                   "download pairs.txt from the LFW website into the LFW root.")
    lines = [ln.split() for ln in p.read_text().splitlines() if ln.strip()]
    if not lines:
        raise DatasetFormatError(f"{p} is empty; expected a header line '10 300' followed by the pairs")
    head = lines[0]
    try:
        folds, per = (1, int(head[0])) if len(head) == 1 else (int(head[0]), int(head[1]))
    except ValueError:
        raise DatasetFormatError(f"{p} line 1 is {' '.join(head)!r}; expected '<folds> <pairs per half-fold>' "
                                 "such as '10 300'.") from None
    body = lines[1:]
    if len(body) != 2 * folds * per:
        raise DatasetFormatError(f"{p}: the header promises {folds} folds x 2 x {per} = {2 * folds * per} pairs, "
                                 f"found {len(body)} lines; is the file truncated?")
    pairs = []
    for k, tok in enumerate(body):
        fold, within = divmod(k, 2 * per)
        same = within < per
        try:
            if same and len(tok) == 3:
                pairs.append(LFWPair(tok[0], int(tok[1]), tok[0], int(tok[2]), True, fold))
            elif not same and len(tok) == 4:
                pairs.append(LFWPair(tok[0], int(tok[1]), tok[2], int(tok[3]), False, fold))
            else:
                kind = "matched 'name i j'" if same else "mismatched 'name1 i name2 j'"
                raise DatasetFormatError(f"{p} line {k + 2}: {' '.join(tok)!r} should be a {kind} pair "
                                         f"(fold {fold + 1}: {per} matched lines then {per} mismatched); "
                                         "use LFW's original pairs.txt or fix that line")
        except ValueError as e:
            if isinstance(e, DatasetFormatError):
                raise
            raise DatasetFormatError(f"{p} line {k + 2}: image numbers must be integers in {' '.join(tok)!r}; "
                                     "use LFW's original pairs.txt or fix that line") from None
    return pairs


def lfw_image_path(root: str | os.PathLike, name: str, index: int, ext: str = ".jpg") -> Path:
    return Path(root) / name / f"{name}_{index:04d}{ext}"


def lfw_pairs(root: str | os.PathLike, pairs_file: str | os.PathLike | None = None, ext: str = ".jpg"
              ) -> tuple[list[Path], np.ndarray, np.ndarray, np.ndarray]:
    """The images of LFW's pairs: ``(unique image paths, pair index (P, 2) into them, same (P,), fold (P,))``.
    Images are ``root/<Name>/<Name>_<%04d><ext>`` (aligned images, as the paper uses)."""
    root = Path(root)
    pairs = read_lfw_pairs(pairs_file if pairs_file is not None else root / "pairs.txt")
    keys = sorted({(p.name1, p.index1) for p in pairs} | {(p.name2, p.index2) for p in pairs})
    paths = [lfw_image_path(root, n, i, ext) for n, i in keys]
    missing = [str(q) for q in paths if not q.is_file()]
    if missing:
        raise DatasetNotFoundError("LFW", f"the aligned images root/<Name>/<Name>_<nnnn>{ext} named by pairs.txt "
                                   f"({len(missing)} of {len(paths)} missing, e.g. {missing[0]})", root,
                                   "put the aligned LFW images (one folder per person) next to pairs.txt.")
    where = {k: i for i, k in enumerate(keys)}
    index = np.array([[where[(p.name1, p.index1)], where[(p.name2, p.index2)]] for p in pairs], dtype=np.int64)
    return paths, index, np.array([p.same for p in pairs]), np.array([p.fold for p in pairs], dtype=np.int64)


def write_lfw_layout(root: str | os.PathLike, images: np.ndarray, identities: np.ndarray, pairs: np.ndarray,
                     same: np.ndarray, folds: int, ext: str = ".jpg") -> Path:
    """Write images (N, H, W, 3) uint8 as ``root/<Name>/<Name>_<%04d><ext>`` and ``root/pairs.txt`` (LFW's
    format: pairs (P, 2) image indices, ``folds`` equal folds of matched-then-mismatched lines).
    Names are ``Synthetic_<id>``; image numbers count from 1 within an identity, in array order."""
    from PIL import Image

    root = Path(root)
    identities = np.asarray(identities)
    names = np.array([f"Synthetic_{int(i):05d}" for i in identities])
    number = np.zeros(len(identities), dtype=np.int64)
    for ident in np.unique(identities):  # number the images of each identity 1, 2, ...
        idx = np.flatnonzero(identities == ident)
        number[idx] = np.arange(1, len(idx) + 1)
    for i in range(len(images)):
        d = root / names[i]
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i]).save(d / f"{names[i]}_{number[i]:04d}{ext}", quality=95)
    per_fold = len(pairs) // folds
    half = per_fold // 2
    lines = [f"{folds} {half}"]
    for k in range(folds):
        block = np.arange(k * per_fold, (k + 1) * per_fold)
        matched, mismatched = block[same[block]], block[~same[block]]
        if len(matched) != half or len(mismatched) != half:
            raise ValueError(f"fold {k} needs {half} matched and {half} mismatched pairs.")
        lines += [f"{names[pairs[j, 0]]}\t{number[pairs[j, 0]]}\t{number[pairs[j, 1]]}" for j in matched]
        lines += [f"{names[pairs[j, 0]]}\t{number[pairs[j, 0]]}\t{names[pairs[j, 1]]}\t{number[pairs[j, 1]]}"
                  for j in mismatched]
    (root / "pairs.txt").write_text("\n".join(lines) + "\n")
    return root / "pairs.txt"


# -------------------------------------------------------------------------------------- Market-1501

_MARKET = re.compile(r"^(-?\d+)_c(\d+)s(\d+)_(\d+)_(\d+)")
_DUKE = re.compile(r"^(-?\d+)_c(\d+)_f(\d+)")


@dataclass(frozen=True)
class ReIDItem:
    path: str
    pid: int
    camid: int


def parse_reid_name(name: str) -> tuple[int, int]:
    """(person id, camera id) from a Market-1501 (``0002_c1s1_000451_03.jpg``; id -1 junk, 0 distractor) or
    DukeMTMC-reID (``0001_c2_f0046182.jpg``) file name."""
    base = Path(name).name
    m = _MARKET.match(base) or _DUKE.match(base)
    if not m:
        raise DatasetFormatError(f"{base!r} is not a Market-1501 'PPPP_cCsS_FFFFFF_BB.jpg' or DukeMTMC "
                                 "'PPPP_cC_fFFFFFFF.jpg' file name; keep the dataset's original file names.")
    return int(m.group(1)), int(m.group(2))


def _reid_dir(root: Path, sub: str) -> list[ReIDItem]:
    d = root / sub
    if not d.is_dir():
        raise DatasetNotFoundError("Market-1501", "the folders bounding_box_train/, query/ and bounding_box_test/",
                                   root, "unpack Market-1501-v15.09.15 so that these folders are directly under the root.")
    files = sorted(p for p in d.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    return [ReIDItem(str(p), *parse_reid_name(p.name)) for p in files]


def market1501(root: str | os.PathLike) -> dict[str, Any]:
    """Market-1501 (or DukeMTMC-reID, same layout) split lists.

    ``train``: items with contiguous labels (junk id -1 and distractors 0 dropped, ids relabelled in sorted
    order); ``query`` and ``gallery``: items with their original ids (gallery keeps -1 junk and 0
    distractors for the protocol). Returns ``{"train", "train_labels", "num_train_ids", "query", "gallery"}``."""
    root = Path(root)
    train = [it for it in _reid_dir(root, "bounding_box_train") if it.pid > 0]
    ids = sorted({it.pid for it in train})
    relabel = {p: i for i, p in enumerate(ids)}
    return {"train": train, "train_labels": np.array([relabel[it.pid] for it in train], dtype=np.int64),
            "num_train_ids": len(ids), "query": _reid_dir(root, "query"), "gallery": _reid_dir(root, "bounding_box_test")}


# -------------------------------------------------------------------------------------------- MNIST

_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an idx file (MNIST's format: magic 0x0000 <type> <ndim>, big-endian int32 sizes, data), raw or .gz."""
    p = Path(path)
    opener = gzip.open if p.suffix == ".gz" else open
    with opener(p, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise DatasetFormatError(f"{p} is not an idx file (bad magic number {raw[:4].hex()}); expected MNIST's "
                                 "train-images-idx3-ubyte / train-labels-idx1-ubyte files.")
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    data = np.frombuffer(raw, dtype=dtype, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise DatasetFormatError(f"{p}: header says {dims} = {int(np.prod(dims))} values, file holds {data.size}; "
                                 "the file is truncated.")
    return data.reshape(dims)


def _find(root: Path, stem: str) -> Path | None:
    for d in (root, root / "raw", root / "MNIST" / "raw"):
        for name in (stem, stem + ".gz"):
            if (d / name).is_file():
                return d / name
    return None


def mnist(root: str | os.PathLike, train: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """MNIST images (N, 28, 28) uint8 and labels (N,) from the idx files under ``root`` (also ``root/raw`` and
    torchvision's ``root/MNIST/raw``)."""
    root = Path(root)
    split = "train" if train else "t10k"
    img, lab = _find(root, f"{split}-images-idx3-ubyte"), _find(root, f"{split}-labels-idx1-ubyte")
    if img is None or lab is None:
        raise DatasetNotFoundError("MNIST", f"{split}-images-idx3-ubyte and {split}-labels-idx1-ubyte (optionally .gz)",
                                   root, "copy the four MNIST idx files into the root (or root/MNIST/raw).")
    images, labels = read_idx(img), read_idx(lab)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DatasetFormatError(f"{img} / {lab}: expected (N, 28, 28) images and (N,) labels, got "
                                 f"{images.shape} and {labels.shape}; use the original MNIST idx files")
    return images, labels.astype(np.int64)


def imbalanced_indices(labels: np.ndarray, minority: int | list[int] = 3, ratio: float = 20.0, seed: int = 0) -> np.ndarray:
    """Keep every sample of the other classes and ``round(n_c / ratio)`` (at least 1) random samples of each
    minority class ``c`` (the paper's MNIST setup: class 3 at 1/20). Sorted int64 indices."""
    labels = np.asarray(labels)
    minority = [minority] if np.isscalar(minority) else list(minority)
    rng = np.random.default_rng(seed)
    keep = [np.flatnonzero(~np.isin(labels, minority))]
    for c in minority:
        idx = np.flatnonzero(labels == c)
        keep.append(rng.choice(idx, size=max(1, int(round(len(idx) / ratio))), replace=False))
    return np.sort(np.concatenate(keep)).astype(np.int64)


# --------------------------------------------------------------------------------------- synthetic


class ImageTensorDataset(Dataset):
    """(uint8 image (C, H, W), label) pairs held in memory."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.images[i], self.labels[i]


@dataclass
class SyntheticIdentities:
    train: ImageTensorDataset
    test: ImageTensorDataset  # balanced, the training identities (closed set)
    counts: np.ndarray  # training images per class
    minority: np.ndarray  # bool per class: the tail half (classes C//2..C-1, the small ones when imbalanced)
    verification_root: Path  # LFW layout: <Name>/<Name>_<nnnn>.jpg + pairs.txt (unseen identities)
    num_classes: int


_RENDER_KEYS = ("yaw", "pitch", "roll", "expression_strength", "identity_seed", "noise")


def _render(ids: np.ndarray, seed: int, size: int, cfg: dict, cache_dir: str | os.PathLike | None = None) -> np.ndarray:
    """Render faces of the given identities (cached on disk by everything that defines them)."""
    from shared.data.faces import render, sample_params

    path = None
    if cache_dir is not None:
        spec = {"ids": hashlib.sha1(np.ascontiguousarray(ids, dtype=np.int64).tobytes()).hexdigest(), "seed": seed,
                "size": size, **{k: cfg[k] for k in _RENDER_KEYS}}
        path = Path(os.path.expanduser(str(cache_dir))) / "ir-softmax" / "faces" / f"{_cache_key(spec)}.npy"
        if path.is_file():
            return np.load(path)
    params = sample_params(len(ids), seed, identities=ids, yaw=tuple(cfg["yaw"]), pitch=tuple(cfg["pitch"]),
                           roll=tuple(cfg["roll"]), expression_strength=cfg["expression_strength"])
    images = render(params, size, identity_seed=cfg["identity_seed"], noise=cfg["noise"]).images
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(tmp, images)
        os.replace(tmp, path)
    return images


def _pairs(ids: np.ndarray, folds: int, per_half: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """LFW-like pairs in identity-disjoint folds: per fold ``per_half`` matched then ``per_half`` mismatched."""
    uniq = rng.permutation(np.unique(ids))
    groups = np.array_split(uniq, folds)
    pairs, same = [], []
    for g in groups:
        if len(g) < 2:
            raise ConfigError(f"{len(uniq)} verification identities are too few for {folds} folds; "
                              f"set data.verification_ids to at least {2 * folds}")
        members = [np.flatnonzero(ids == i) for i in g]
        for _ in range(per_half):  # matched: two distinct images of one identity
            m = members[rng.integers(len(g))]
            a, b = rng.choice(m, 2, replace=False)
            pairs.append((a, b))
            same.append(True)
        for _ in range(per_half):  # mismatched: images of two identities
            i, j = rng.choice(len(g), 2, replace=False)
            pairs.append((rng.choice(members[i]), rng.choice(members[j])))
            same.append(False)
    return np.array(pairs, dtype=np.int64), np.array(same)


def _cache_key(cfg: dict) -> str:
    return hashlib.sha1(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:16]


def synthetic_identities(cfg: dict, cache_dir: str | os.PathLike) -> SyntheticIdentities:
    """Render the embedded default's data (deterministic in ``cfg``; see the module docstring).

    ``cfg`` keys: num_classes, max_per_class, imbalance_ratio, profile (step|exp), test_per_class,
    verification_ids, verification_per_id, pairs_per_half, folds, image_size, data_seed, identity_seed,
    yaw, pitch, roll, expression_strength, noise. Identities 0..C-1 train; C..C+V-1 are unseen."""
    from shared.data.splits import long_tail_counts

    c, size, seed = int(cfg["num_classes"]), int(cfg["image_size"]), int(cfg["data_seed"])
    counts = long_tail_counts(c, int(cfg["max_per_class"]), float(cfg["imbalance_ratio"]), cfg["profile"])
    minority = np.arange(c) >= c // 2  # the tail half (fixed, so every ratio reports the same classes)
    train_ids = np.repeat(np.arange(c), counts)
    # the balanced pool is rendered once per data seed and subsampled, so every ratio sees the same faces
    pool_ids = np.repeat(np.arange(c), int(cfg["max_per_class"]))
    first = np.searchsorted(pool_ids, np.arange(c))
    take = np.concatenate([first[k] + np.arange(counts[k]) for k in range(c)])
    pool = _render(pool_ids, seed, size, cfg, cache_dir)
    train_images = pool[take]
    test_ids = np.repeat(np.arange(c), int(cfg["test_per_class"]))
    test_images = _render(test_ids, seed + 1, size, cfg, cache_dir)

    def tensors(images, labels):
        return ImageTensorDataset(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labels))

    ver_keys = ("num_classes", "verification_ids", "verification_per_id", "pairs_per_half", "folds", "image_size",
                "data_seed", *_RENDER_KEYS)  # what defines the verification set (not the training imbalance)
    ver_cfg = {k: cfg[k] for k in ver_keys}
    verification_root = Path(os.path.expanduser(str(cache_dir))) / "ir-softmax" / f"synthetic-lfw-{_cache_key(ver_cfg)}"
    if not (verification_root / "pairs.txt").is_file():
        ver_ids = np.repeat(np.arange(c, c + int(cfg["verification_ids"])), int(cfg["verification_per_id"]))
        ver_images = _render(ver_ids, seed + 2, size, cfg)
        pairs, same = _pairs(ver_ids, int(cfg["folds"]), int(cfg["pairs_per_half"]), np.random.default_rng(seed + 3))
        verification_root.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=verification_root.parent, prefix=".tmp-"))
        write_lfw_layout(tmp, ver_images, ver_ids, pairs, same, int(cfg["folds"]))
        (tmp / "config.json").write_text(json.dumps(ver_cfg, sort_keys=True, indent=1) + "\n")
        try:
            os.rename(tmp, verification_root)  # atomic; another process may have won the race
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    return SyntheticIdentities(tensors(train_images, train_ids), tensors(test_images, test_ids), counts, minority,
                               verification_root, c)


# ------------------------------------------------------------------------------ Gaussian classes


def gaussian_classes(counts: np.ndarray, dim: int, radius: float, noise: float, seed: int, split_seed: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Class ``k`` draws ``counts[k]`` vectors from N(mu_k, noise^2 I) in R^dim; the means mu_k = radius * u_k
    with u_k random unit vectors fixed by ``seed`` (the same classes for every ``split_seed``)."""
    mu = np.random.default_rng([seed, 0]).standard_normal((len(counts), dim))
    mu = radius * mu / np.linalg.norm(mu, axis=1, keepdims=True)
    labels = np.repeat(np.arange(len(counts)), counts)
    x = mu[labels] + noise * np.random.default_rng([seed, 1, split_seed]).standard_normal((len(labels), dim))
    return x.astype(np.float32), labels.astype(np.int64)


# ------------------------------------------------------------------------------------ build_data


class PathDataset(Dataset):
    """(transformed image, label) from image files."""

    def __init__(self, paths: list, labels, transform, mode: str = "RGB"):
        self.paths, self.labels, self.transform, self.mode = list(paths), torch.as_tensor(np.asarray(labels)), transform, mode

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        return self.transform(_open(self.paths[i], self.mode)), self.labels[i]


@dataclass
class DataBundle:
    """Everything fit() trains and evaluates on. Images come as uint8 (C, H, W) tensors (synthetic, MNIST)
    or already-normalised float tensors (file readers); :func:`to_input` makes both network inputs."""

    train: Dataset
    num_classes: int
    in_channels: int
    counts: np.ndarray  # training samples per class
    minority: np.ndarray  # bool per class
    test: Dataset | None = None  # closed-set, for per-class recall
    verification: dict | None = None  # {"images": Dataset, "index": (P, 2), "same": (P,), "fold": (P,)}
    reid: dict | None = None  # {"query": Dataset, "gallery": Dataset, "q_pids", "g_pids", "q_camids", "g_camids"}
    kind: str = "image"  # "image" or "vector"


def to_input(x: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float in [-1, 1]; float tensors pass through."""
    return (x.float() - 127.5) / 127.5 if x.dtype == torch.uint8 else x.float()


def _image_transform(size, channels: int, train: bool, crop=None):
    from torchvision import transforms as T

    ops = [T.Resize(tuple(size))]
    if crop is not None:
        ops.append(T.RandomCrop(tuple(crop)) if train else T.CenterCrop(tuple(crop)))
    ops += [T.ToTensor(), T.Normalize([0.5] * channels, [0.5] * channels)]
    return T.Compose(ops)


def build_data(cfg: dict, cache_dir: str | os.PathLike) -> DataBundle:
    """The data of one run from its ``data`` config (``name``: synthetic_faces | gaussian | mnist |
    casia_webface | market1501)."""
    from shared.data import data_root

    name = cfg["name"]
    if name == "synthetic_faces":
        d = synthetic_identities(cfg, cache_dir)
        paths, index, same, fold = lfw_pairs(d.verification_root)
        ver_images = torch.from_numpy(np.stack([load_image(p) for p in paths])).permute(0, 3, 1, 2).contiguous()
        return DataBundle(d.train, d.num_classes, 3, d.counts, d.minority, d.test,
                          {"images": ImageTensorDataset(ver_images, torch.zeros(len(paths), dtype=torch.long)),
                           "index": index, "same": same, "fold": fold})
    if name == "gaussian":
        c = int(cfg["num_classes"])
        named = cfg.get("minority")
        minority = np.arange(c) >= c // 2 if named is None else np.isin(np.arange(c), list(named))
        low = max(1, int(np.floor(int(cfg["max_per_class"]) / float(cfg["imbalance_ratio"]) + 1e-9)))
        counts = np.where(minority, low, int(cfg["max_per_class"])).astype(np.int64)
        x, y = gaussian_classes(counts, int(cfg["dim"]), float(cfg["radius"]), float(cfg["noise"]),
                                int(cfg["data_seed"]), 0)
        xt, yt = gaussian_classes(np.full(c, int(cfg["test_per_class"])), int(cfg["dim"]), float(cfg["radius"]),
                                  float(cfg["noise"]), int(cfg["data_seed"]), 1)
        return DataBundle(ImageTensorDataset(torch.from_numpy(x), torch.from_numpy(y)), c, 1, counts, minority,
                          ImageTensorDataset(torch.from_numpy(xt), torch.from_numpy(yt)), kind="vector")
    root = Path(os.path.expanduser(str(cfg.get("root") or data_root(cfg["name"]))))
    if name == "mnist":
        x, y = mnist(root, train=True)
        keep = imbalanced_indices(y, cfg["minority"], float(cfg["imbalance_ratio"]), int(cfg["data_seed"]))
        xt, yt = mnist(root, train=False)
        counts = np.bincount(y[keep], minlength=10)
        minority = np.isin(np.arange(10), np.atleast_1d(cfg["minority"]))
        return DataBundle(ImageTensorDataset(torch.from_numpy(x[keep]).unsqueeze(1), torch.from_numpy(y[keep])), 10, 1,
                          counts, minority, ImageTensorDataset(torch.from_numpy(xt).unsqueeze(1), torch.from_numpy(yt)))
    channels = int(cfg.get("channels", 3))
    mode = "L" if channels == 1 else "RGB"
    if name == "casia_webface":
        tf = _image_transform(cfg["image_size"], channels, True)
        ds = casia_webface(root, cfg.get("exclude"), transform=tf)
        ds.loader = lambda p: _open(p, mode)
        labels = np.array([t for _, t in ds.samples])
        counts = np.bincount(labels, minlength=len(ds.classes))
        minority = counts < np.median(counts)
        ver = None
        if cfg.get("lfw_root"):
            lroot = Path(os.path.expanduser(str(cfg["lfw_root"])))
            paths, index, same, fold = lfw_pairs(lroot, cfg.get("lfw_pairs"), cfg.get("lfw_ext", ".jpg"))
            ver = {"images": PathDataset(paths, np.zeros(len(paths)), _image_transform(cfg["image_size"], channels, False), mode),
                   "index": index, "same": same, "fold": fold}
        return DataBundle(ds, len(ds.classes), channels, counts, minority, None, ver)
    if name == "market1501":
        s = market1501(root)
        size, crop = cfg["resize"], cfg["crop"]
        train = PathDataset([it.path for it in s["train"]], s["train_labels"], _image_transform(size, channels, True, crop), mode)
        test_tf = _image_transform(size, channels, False, crop)
        q, g = s["query"], s["gallery"]
        counts = np.bincount(s["train_labels"], minlength=s["num_train_ids"])
        reid = {"query": PathDataset([it.path for it in q], np.zeros(len(q)), test_tf, mode),
                "gallery": PathDataset([it.path for it in g], np.zeros(len(g)), test_tf, mode),
                "q_pids": np.array([it.pid for it in q]), "q_camids": np.array([it.camid for it in q]),
                "g_pids": np.array([it.pid for it in g]), "g_camids": np.array([it.camid for it in g])}
        return DataBundle(train, s["num_train_ids"], channels, counts, counts < np.median(counts), None, None, reid)
    raise ConfigError(f"data.name={name!r} is not a known dataset; use one of: {', '.join(DATASETS)}")


def _open(path, mode):
    from shared.data.readers import load_image as shared_load

    return shared_load(path, mode)
