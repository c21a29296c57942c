"""Tests of the seeded split helpers (shared.data.splits)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from shared.data import (
    CIFAR10_ASYMMETRIC_MAP,
    inject_label_noise,
    k_shot_indices,
    long_tail_counts,
    long_tail_indices,
    train_val_test_split,
)


def balanced_labels(num_classes: int, per_class: int, seed: int = 0) -> np.ndarray:
    labels = np.repeat(np.arange(num_classes), per_class)
    return np.random.default_rng(seed).permutation(labels)


# ----------------------------------------------------------------------------- train/val/test


@pytest.mark.parametrize("n, fractions, sizes", [
    (100, (0.8, 0.1, 0.1), (80, 10, 10)),
    (10, (0.8, 0.1, 0.1), (8, 1, 1)),
    (7, (0.5, 0.25, 0.25), (3, 2, 2)),  # largest remainders: 3.5, 1.75, 1.75
    (1001, (0.6, 0.2, 0.2), (601, 200, 200)),
    (50, (0.9, 0.1, 0.0), (45, 5, 0)),
])
def test_train_val_test_split_sizes_disjoint_covering(n, fractions, sizes):
    parts = train_val_test_split(n, fractions, seed=3)
    assert tuple(len(p) for p in parts) == sizes
    merged = np.concatenate(parts)
    assert np.array_equal(np.sort(merged), np.arange(n))  # disjoint and covering
    assert all(p.dtype == np.int64 and np.all(np.diff(p) > 0) for p in parts)


def test_train_val_test_split_is_seeded():
    a = train_val_test_split(200, seed=1)
    b = train_val_test_split(200, seed=1)
    c = train_val_test_split(200, seed=2)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], c[0])


def test_train_val_test_split_rejects_bad_fractions():
    with pytest.raises(ValueError, match="summing to 1"):
        train_val_test_split(10, (0.5, 0.2, 0.2))
    with pytest.raises(ValueError, match="non-negative"):
        train_val_test_split(10, (1.2, -0.1, -0.1))


# ----------------------------------------------------------------------------- k-shot


@pytest.mark.parametrize("k", [1, 5, 16])
def test_k_shot_exactly_k_per_class(k):
    labels = np.concatenate([np.full(20 + 3 * c, c) for c in range(7)])
    idx = k_shot_indices(labels, k, seed=0)
    assert len(np.unique(idx)) == len(idx) == 7 * k
    assert np.array_equal(np.bincount(labels[idx], minlength=7), np.full(7, k))
    assert np.array_equal(idx, k_shot_indices(labels, k, seed=0))
    assert not np.array_equal(idx, k_shot_indices(labels, k, seed=1))


def test_k_shot_errors_on_small_or_absent_classes():
    labels = np.array([0] * 5 + [1] * 2 + [2] * 5)
    with pytest.raises(ValueError, match=r"fewer than k=3.*\{1: 2\}"):
        k_shot_indices(labels, 3, seed=0)
    with pytest.raises(ValueError, match=r"\{3: 0\}"):
        k_shot_indices(np.array([0, 0, 1, 1, 2, 2]), 2, seed=0, num_classes=4)
    assert len(k_shot_indices(labels, 2, seed=0, num_classes=3)) == 6


# ----------------------------------------------------------------------------- long tail


def test_long_tail_counts_known_cifar_lt_values():
    cifar10_lt = long_tail_counts(10, 5000, 100, "exp")
    assert cifar10_lt.tolist() == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    assert long_tail_counts(100, 500, 100, "exp").sum() == 10847  # CIFAR-100-LT, ratio 100
    assert long_tail_counts(10, 5000, 10, "step").tolist() == [5000] * 5 + [500] * 5


@pytest.mark.parametrize("num_classes, max_per_class, ratio", [(10, 5000, 50), (100, 500, 10), (7, 300, 3.5)])
def test_long_tail_counts_match_closed_form(num_classes, max_per_class, ratio):
    counts = long_tail_counts(num_classes, max_per_class, ratio, "exp")
    closed = [max(1, math.floor(max_per_class * ratio ** (-i / (num_classes - 1)) + 1e-9))
              for i in range(num_classes)]
    assert counts.tolist() == closed
    assert counts[0] == max_per_class and counts[-1] == math.floor(max_per_class / ratio + 1e-9)
    assert np.all(np.diff(counts) <= 0)
    step = long_tail_counts(num_classes, max_per_class, ratio, "step")
    head = num_classes // 2
    assert step.tolist() == [max_per_class] * head + [int(max_per_class / ratio)] * (num_classes - head)


def test_long_tail_counts_validation():
    with pytest.raises(ValueError, match="profile"):
        long_tail_counts(10, 100, 10, "linear")
    with pytest.raises(ValueError, match="imbalance_ratio"):
        long_tail_counts(10, 100, 0.5)
    assert long_tail_counts(1, 100, 10).tolist() == [100]


@pytest.mark.parametrize("profile", ["exp", "step"])
def test_long_tail_indices_follow_the_counts(profile):
    labels = balanced_labels(10, 200)
    idx = long_tail_indices(labels, 20, profile, seed=4)
    counts = np.bincount(labels[idx], minlength=10)
    assert np.array_equal(counts, long_tail_counts(10, 200, 20, profile))
    assert len(np.unique(idx)) == len(idx)
    assert np.array_equal(idx, long_tail_indices(labels, 20, profile, seed=4))
    assert not np.array_equal(idx, long_tail_indices(labels, 20, profile, seed=5))
    with pytest.raises(ValueError, match="fewer examples"):
        long_tail_indices(labels, 20, profile, seed=0, max_per_class=300)


# ----------------------------------------------------------------------------- label noise


@pytest.mark.parametrize("kind", ["symmetric", "pairflip"])
@pytest.mark.parametrize("rate", [0.0, 0.2, 0.45, 0.8, 1.0])
def test_noise_rate_is_exact_and_mask_is_correct(kind, rate):
    clean = balanced_labels(10, 101)  # n = 1010
    noisy, mask = inject_label_noise(clean, rate, 10, kind, seed=0)
    assert noisy.dtype == np.int64 and mask.dtype == bool
    assert np.array_equal(mask, noisy != clean)
    assert mask.sum() == round(rate * len(clean))
    assert noisy.min() >= 0 and noisy.max() < 10
    if kind == "pairflip":
        assert np.array_equal(noisy[mask], (clean[mask] + 1) % 10)


def test_symmetric_noise_spreads_over_all_other_classes():
    clean = np.zeros(20000, dtype=np.int64)
    noisy, mask = inject_label_noise(clean, 0.9, 5, "symmetric", seed=1)
    counts = np.bincount(noisy[mask], minlength=5)
    assert counts[0] == 0  # never flipped to the true class
    assert counts[1:].min() > 0.9 * counts[1:].mean()  # uniform over the others


def test_noise_is_seeded():
    clean = balanced_labels(10, 50)
    a = inject_label_noise(clean, 0.3, 10, "symmetric", seed=7)
    b = inject_label_noise(clean, 0.3, 10, "symmetric", seed=7)
    c = inject_label_noise(clean, 0.3, 10, "symmetric", seed=8)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


def test_asymmetric_map_noise_per_source_class():
    clean = balanced_labels(10, 33)
    noisy, mask = inject_label_noise(clean, 0.4, 10, "asymmetric-map", seed=0, mapping=CIFAR10_ASYMMETRIC_MAP)
    assert np.array_equal(mask, noisy != clean)
    for c in range(10):
        flipped = mask[clean == c]
        if c in CIFAR10_ASYMMETRIC_MAP:
            assert flipped.sum() == round(0.4 * 33)
            assert np.all(noisy[(clean == c) & mask] == CIFAR10_ASYMMETRIC_MAP[c])
        else:
            assert flipped.sum() == 0


def test_noise_argument_errors():
    clean = balanced_labels(3, 4)
    with pytest.raises(ValueError, match="mapping"):
        inject_label_noise(clean, 0.2, 3, "asymmetric-map", seed=0)
    with pytest.raises(ValueError, match="Unknown noise kind"):
        inject_label_noise(clean, 0.2, 3, "open-set", seed=0)
    with pytest.raises(ValueError, match="rate"):
        inject_label_noise(clean, 1.5, 3, seed=0)
    with pytest.raises(ValueError, match="num_classes"):
        inject_label_noise(clean, 0.2, 2, seed=0)
