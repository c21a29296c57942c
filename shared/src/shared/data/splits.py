"""Seeded, numpy-based split helpers: every function returns index arrays (or label arrays)
and is deterministic for a given seed.

* :func:`train_val_test_split` -- disjoint, covering train/val/test indices.
* :func:`k_shot_indices` -- exactly ``k`` examples per class (few-shot / linear-probe subsets).
* :func:`long_tail_counts`, :func:`long_tail_indices` -- the long-tailed subsampling protocol
  of Cao et al. 2019 (LDAM-DRW) used for CIFAR-10-LT / CIFAR-100-LT ("exp" and "step").
* :func:`inject_label_noise` -- symmetric, pair-flip and asymmetric (class-map) label noise
  with an *exact* realised noise rate.

Index arrays are ``int64`` and sorted in increasing order, ready for ``torch.utils.data.Subset``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from shared.errors import ConfigError

__all__ = [
    "CIFAR10_ASYMMETRIC_MAP",
    "NOISE_KINDS",
    "inject_label_noise",
    "k_shot_indices",
    "long_tail_counts",
    "long_tail_indices",
    "train_val_test_split",
]

NOISE_KINDS = ("symmetric", "pairflip", "asymmetric-map")

#: The CIFAR-10 asymmetric noise of Patrini et al. 2017: truck -> automobile, bird -> airplane,
#: deer -> horse, cat <-> dog (class indices of the official CIFAR-10 label order).
CIFAR10_ASYMMETRIC_MAP: dict[int, int] = {9: 1, 2: 0, 4: 7, 3: 5, 5: 3}


def _as_labels(labels: Sequence[int] | np.ndarray) -> np.ndarray:
    array = np.asarray(labels)
    if array.ndim != 1:
        raise ConfigError(f"labels must be one-dimensional, got shape {array.shape}.")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ConfigError(f"labels must be integers, got dtype {array.dtype}.")
    if array.size and array.min() < 0:
        raise ConfigError(f"labels must be non-negative, got minimum {array.min()}.")
    return array.astype(np.int64, copy=False)


def train_val_test_split(
    n: int, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split ``range(n)`` at random into disjoint train/val/test index arrays that cover it.

    Sizes are ``fractions * n`` rounded by the largest-remainder method, so they always sum to
    ``n`` (e.g. ``n=10, (0.8, 0.1, 0.1)`` gives 8/1/1). A fraction may be 0.

    Args:
        n: number of examples.
        fractions: (train, val, test) fractions, non-negative and summing to 1.
        seed: seed of the permutation.

    Returns:
        ``(train_idx, val_idx, test_idx)``, each sorted ``int64``.
    """
    if n < 0:
        raise ConfigError(f"n must be non-negative, got {n}.")
    frac = np.asarray(fractions, dtype=np.float64)
    if frac.shape != (3,) or (frac < 0).any() or not np.isclose(frac.sum(), 1.0):
        raise ConfigError(f"fractions must be three non-negative numbers summing to 1, got {fractions}.")
    exact = frac * n
    sizes = np.floor(exact).astype(np.int64)
    # hand the leftover examples to the largest remainders (ties: earlier split first)
    order = np.argsort(-(exact - sizes), kind="stable")
    sizes[order[: n - sizes.sum()]] += 1
    perm = np.random.default_rng(seed).permutation(n)
    cut1, cut2 = sizes[0], sizes[0] + sizes[1]
    return np.sort(perm[:cut1]), np.sort(perm[cut1:cut2]), np.sort(perm[cut2:])


def k_shot_indices(labels: Sequence[int] | np.ndarray, k: int, seed: int = 0,
                   num_classes: int | None = None) -> np.ndarray:
    """Pick exactly ``k`` examples of every class, uniformly at random without replacement.

    Args:
        labels: integer class label of each example.
        k: examples per class (``k >= 1``).
        seed: seed of the choice.
        num_classes: if given, every class ``0..num_classes-1`` must have ``k`` examples
            (a class absent from ``labels`` is an error); otherwise the classes are those
            present in ``labels``.

    Returns:
        Sorted ``int64`` indices, ``k`` per class (``k * num_classes`` in total).

    Raises:
        ValueError: a class has fewer than ``k`` examples (the message lists them).
    """
    labels = _as_labels(labels)
    if k < 1:
        raise ConfigError(f"k must be >= 1, got {k}.")
    classes = np.arange(num_classes) if num_classes is not None else np.unique(labels)
    if num_classes is not None and labels.size and labels.max() >= num_classes:
        raise ConfigError(f"labels contain class {labels.max()} but num_classes={num_classes}.")
    counts = np.bincount(labels, minlength=int(classes.max()) + 1 if classes.size else 0)
    short = {int(c): int(counts[c]) for c in classes if counts[c] < k}
    if short:
        raise ConfigError(f"k_shot_indices: {len(short)} class(es) have fewer than k={k} examples "
                         f"(class: count) {dict(list(short.items())[:10])}.")
    rng = np.random.default_rng(seed)
    chosen = [rng.choice(np.flatnonzero(labels == c), size=k, replace=False) for c in classes]
    return np.sort(np.concatenate(chosen)) if chosen else np.empty(0, dtype=np.int64)


def long_tail_counts(num_classes: int, max_per_class: int, imbalance_ratio: float,
                     profile: str = "exp") -> np.ndarray:
    """Per-class example counts of a long-tailed dataset (Cao et al. 2019, LDAM-DRW protocol).

    * ``"exp"``: ``n_i = floor(max_per_class * imbalance_ratio ** (-i / (C - 1)))`` for
      ``i = 0..C-1`` (class 0 is the head, class C-1 has ``max / ratio``). CIFAR-10 with
      ``max=5000, ratio=100`` gives 5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50.
    * ``"step"``: the first ``C // 2`` classes get ``max_per_class``, the remaining ones
      ``floor(max_per_class / imbalance_ratio)``.

    Counts are floored (as ``int()`` in the reference code, with a 1e-9 guard against
    floating-point round-down of exact values) and clamped to at least 1.

    Returns:
        ``int64`` array of length ``num_classes``.
    """
    if num_classes < 1 or max_per_class < 1:
        raise ConfigError(f"num_classes and max_per_class must be >= 1, got {num_classes}, {max_per_class}.")
    if imbalance_ratio < 1:
        raise ConfigError(f"imbalance_ratio must be >= 1 (max/min class size), got {imbalance_ratio}.")
    i = np.arange(num_classes, dtype=np.float64)
    if profile == "exp":
        exponent = i / (num_classes - 1) if num_classes > 1 else np.zeros(1)
        counts = max_per_class * float(imbalance_ratio) ** (-exponent)
    elif profile == "step":
        counts = np.where(i < num_classes // 2, float(max_per_class), max_per_class / float(imbalance_ratio))
    else:
        raise ConfigError(f"Unknown long-tail profile {profile!r}; expected 'exp' or 'step'.")
    return np.maximum(np.floor(counts + 1e-9), 1).astype(np.int64)


def long_tail_indices(labels: Sequence[int] | np.ndarray, imbalance_ratio: float, profile: str = "exp",
                      seed: int = 0, max_per_class: int | None = None,
                      num_classes: int | None = None) -> np.ndarray:
    """Subsample a (balanced) labelled set into a long-tailed one.

    Class ``c`` keeps ``long_tail_counts(C, max_per_class, imbalance_ratio, profile)[c]``
    examples chosen at random, so class 0 is the head and class ``C-1`` the tail.

    Args:
        labels: integer class label of each example.
        imbalance_ratio: head-to-tail size ratio (e.g. 100 for CIFAR-10-LT).
        profile: ``"exp"`` or ``"step"``.
        seed: seed of the choice.
        max_per_class: head-class size; default the size of the smallest class (5000 for
            the CIFAR training sets).
        num_classes: number of classes; default ``labels.max() + 1``.

    Returns:
        Sorted ``int64`` indices.

    Raises:
        ValueError: a class has fewer examples than its long-tail count.
    """
    labels = _as_labels(labels)
    if labels.size == 0:
        raise ConfigError("long_tail_indices needs at least one label.")
    num_classes = int(labels.max()) + 1 if num_classes is None else num_classes
    available = np.bincount(labels, minlength=num_classes)
    if len(available) > num_classes:
        raise ConfigError(f"labels contain class {labels.max()} but num_classes={num_classes}.")
    if max_per_class is None:
        max_per_class = int(available.min())
    counts = long_tail_counts(num_classes, max_per_class, imbalance_ratio, profile)
    short = np.flatnonzero(available < counts)
    if short.size:
        raise ConfigError(f"long_tail_indices: class(es) {short[:10].tolist()} have fewer examples "
                         f"({available[short[:10]].tolist()}) than required ({counts[short[:10]].tolist()}).")
    rng = np.random.default_rng(seed)
    chosen = [rng.choice(np.flatnonzero(labels == c), size=int(counts[c]), replace=False)
              for c in range(num_classes)]
    return np.sort(np.concatenate(chosen))


def inject_label_noise(labels: Sequence[int] | np.ndarray, rate: float, num_classes: int,
                       kind: str = "symmetric", seed: int = 0,
                       mapping: Mapping[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Corrupt labels with an exact noise rate.

    * ``"symmetric"``: exactly ``round(rate * n)`` examples, chosen uniformly at random, get a
      label drawn uniformly from the ``C - 1`` *other* classes.
    * ``"pairflip"``: exactly ``round(rate * n)`` random examples flip ``c -> (c + 1) % C``.
    * ``"asymmetric-map"``: class-dependent noise following ``mapping`` (source -> target
      class, e.g. :data:`CIFAR10_ASYMMETRIC_MAP`); within every source class ``c`` exactly
      ``round(rate * n_c)`` random examples flip to ``mapping[c]`` (the protocol of
      Patrini et al. 2017), other classes stay clean. The realised rate is therefore
      ``rate`` within each mapped class.

    Args:
        labels: clean integer labels in ``[0, num_classes)``.
        rate: fraction of examples to corrupt, in ``[0, 1]``.
        num_classes: number of classes ``C`` (``>= 2``).
        kind: one of ``"symmetric"``, ``"pairflip"``, ``"asymmetric-map"``.
        seed: seed of the corruption.
        mapping: source -> target class map, required for ``"asymmetric-map"``.

    Returns:
        ``(noisy_labels, noise_mask)``: ``int64`` labels and a boolean mask with
        ``noise_mask[i] == (noisy_labels[i] != labels[i])``.
    """
    clean = _as_labels(labels)
    if not 0.0 <= rate <= 1.0:
        raise ConfigError(f"rate must lie in [0, 1], got {rate}.")
    if num_classes < 2:
        raise ConfigError(f"label noise needs num_classes >= 2, got {num_classes}.")
    if clean.size and clean.max() >= num_classes:
        raise ConfigError(f"labels contain class {clean.max()} but num_classes={num_classes}.")
    rng = np.random.default_rng(seed)
    noisy = clean.copy()
    n = clean.size
    if kind in ("symmetric", "pairflip"):
        if mapping is not None:
            raise ConfigError(f"mapping is only used by kind='asymmetric-map', not {kind!r}.")
        flip = rng.choice(n, size=int(round(rate * n)), replace=False)
        if kind == "symmetric":
            offset = rng.integers(1, num_classes, size=flip.size)  # never 0 -> always another class
        else:
            offset = np.ones(flip.size, dtype=np.int64)
        noisy[flip] = (clean[flip] + offset) % num_classes
    elif kind == "asymmetric-map":
        if not mapping:
            raise ConfigError("kind='asymmetric-map' needs a non-empty mapping {source_class: target_class}.")
        for source, target in sorted(mapping.items()):
            if not (0 <= source < num_classes and 0 <= target < num_classes) or source == target:
                raise ConfigError(f"invalid mapping entry {source} -> {target} for num_classes={num_classes}.")
            members = np.flatnonzero(clean == source)
            flip = rng.choice(members, size=int(round(rate * members.size)), replace=False)
            noisy[flip] = target
    else:
        raise ConfigError(f"Unknown noise kind {kind!r}; expected one of {NOISE_KINDS}.")
    return noisy, noisy != clean
