"""Tests of the procedural synthetic image generator (shared.data.synthetic)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from PIL import Image

from shared.data import (
    DOMAIN_PRESETS,
    MAX_CLASSES,
    SyntheticDomain,
    SyntheticImageDataset,
    class_attributes,
    domain_from_seed,
    generate,
    get_domain,
    list_domains,
    mask_boxes,
)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


# ----------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("domain", ["shapes-a", "shapes-b", "shapes-c"])
def test_same_arguments_give_bit_identical_output(size, domain):
    first = generate(300, 10, size, domain, seed=3, return_masks=True)
    second = generate(300, 10, size, domain, seed=3, return_masks=True)
    for a, b in zip(first, second):
        assert a.dtype == b.dtype and np.array_equal(a, b)


def test_different_seeds_differ():
    img0, lab0 = generate(200, 10, 32, "shapes-a", seed=0)
    img1, lab1 = generate(200, 10, 32, "shapes-a", seed=1)
    assert not np.array_equal(lab0, lab1)
    assert (img0 != img1).mean() > 0.5
    # same label multiset (balanced) despite different order
    assert np.array_equal(np.bincount(lab0), np.bincount(lab1))


# ----------------------------------------------------------------------------- format


@pytest.mark.parametrize("size, shape", [(32, (32, 32)), (64, (64, 64)), ((24, 40), (24, 40))])
def test_shapes_and_dtypes(size, shape):
    images, labels = generate(37, 5, size, "shapes-b", seed=0)
    assert images.shape == (37, *shape, 3) and images.dtype == np.uint8
    assert labels.shape == (37,) and labels.dtype == np.int64
    assert labels.min() >= 0 and labels.max() < 5
    assert images.std() > 10  # not a blank image


@pytest.mark.parametrize("n, num_classes", [(100, 10), (103, 10), (7, 3), (2000, 100)])
def test_labels_are_balanced_and_shuffled(n, num_classes):
    _, labels = generate(n, num_classes, 16, "shapes-a", seed=5)
    counts = np.bincount(labels, minlength=num_classes)
    expected = np.full(num_classes, n // num_classes)
    expected[: n % num_classes] += 1
    assert np.array_equal(counts, expected)
    if n > 2 * num_classes:
        assert not np.all(np.diff(labels) >= 0)  # not sorted: shuffled


def test_invalid_arguments_raise():
    with pytest.raises(ValueError, match="num_classes"):
        generate(10, MAX_CLASSES + 1, 32, "shapes-a", seed=0)
    with pytest.raises(ValueError, match="scale_range"):
        generate(10, 10, 32, "shapes-a", seed=0, scale_range=(0.5, 0.2))
    with pytest.raises(ValueError, match="position_jitter"):
        generate(10, 10, 32, "shapes-a", seed=0, position_jitter=1.5)
    with pytest.raises(KeyError, match="shapes-a"):  # the message lists the presets
        generate(10, 10, 32, "cifar10", seed=0)


# ----------------------------------------------------------------------------- pose


def test_object_scale_spans_the_configured_range():
    size, (lo, hi) = 64, (0.3, 0.9)
    _, _, masks = generate(400, 10, size, "shapes-a", seed=0, scale_range=(lo, hi), return_masks=True)
    boxes = mask_boxes(masks)
    assert (boxes >= 0).all(), "every image has a visible object"
    extent = (np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) + 1) / size
    # the scale is the circumscribed diameter: the longest box side lies in [~0.7, 1] of it
    assert extent.max() <= hi + 2 / size
    assert extent.min() >= 0.65 * lo - 1 / size
    assert extent.min() < lo + 0.1 and extent.max() > hi - 0.1  # the range is actually used
    # a fixed scale gives (almost) fixed sizes
    _, _, fixed = generate(200, 10, size, "shapes-a", seed=0, scale_range=(0.5, 0.5), return_masks=True)
    b = mask_boxes(fixed)
    fixed_extent = (np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]) + 1) / size
    assert fixed_extent.max() <= 0.5 + 2 / size and fixed_extent.min() >= 0.65 * 0.5 - 1 / size


def test_position_jitter_moves_objects_and_keeps_them_inside():
    size = 64

    def centres(jitter: float) -> np.ndarray:
        _, _, masks = generate(300, 10, size, "shapes-c", seed=1, position_jitter=jitter,
                               scale_range=(0.3, 0.5), return_masks=True)
        ys, xs = np.nonzero(masks.any(axis=0))
        assert xs.min() >= 0 and xs.max() < size and ys.min() >= 0 and ys.max() < size
        boxes = mask_boxes(masks)
        return np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], axis=1)

    still, moving = centres(0.0), centres(1.0)
    assert np.abs(still - size / 2).max() < 0.25 * 0.5 * size / 2 + 1  # only shape asymmetry
    assert moving.std(axis=0).min() > 3 * still.std(axis=0).max()
    assert moving.min() < size * 0.3 and moving.max() > size * 0.7


def test_mask_boxes():
    masks = np.zeros((3, 8, 10), dtype=bool)
    masks[0, 2:5, 3:9] = True
    masks[1, 7, 0] = True
    boxes = mask_boxes(masks)
    assert boxes.tolist() == [[3, 2, 8, 4], [0, 7, 0, 7], [-1, -1, -1, -1]]


# ----------------------------------------------------------------------------- classes and domains


def fixed_pose_masks(domain, num_classes: int, size: int = 48) -> np.ndarray:
    """One mask per class, all drawn at the same pose (centred, scale 0.8, no rotation)."""
    _, labels, masks = generate(2 * num_classes, num_classes, size, domain, seed=0, scale_range=(0.8, 0.8),
                                position_jitter=0.0, max_rotation=0.0, return_masks=True)
    per_class = []
    for c in range(num_classes):
        first, second = masks[labels == c]
        assert np.array_equal(first, second), "at a fixed pose the shape is a function of the class"
        per_class.append(first)
    return np.stack(per_class)


def test_classes_have_distinct_shapes_within_each_domain():
    for name in list_domains():
        masks = fixed_pose_masks(name, 10)
        for i, j in itertools.combinations(range(10), 2):
            assert iou(masks[i], masks[j]) < 0.97, (name, i, j)


def test_domains_define_different_classes():
    a, b = fixed_pose_masks("shapes-a", 10), fixed_pose_masks("shapes-b", 10)
    assert all(iou(a[k], b[k]) < 0.97 for k in range(10))
    attrs = {name: class_attributes(name, 10) for name in list_domains()}
    for x, y in itertools.combinations(list_domains(), 2):
        rows_x = np.stack(list(attrs[x].values()), 1)
        rows_y = np.stack(list(attrs[y].values()), 1)
        assert not np.array_equal(rows_x, rows_y)


@pytest.mark.parametrize("num_classes", [2, 10, 100, MAX_CLASSES])
def test_class_attributes_are_distinct_and_stable(num_classes):
    attrs = class_attributes("shapes-b", num_classes)
    rows = np.stack(list(attrs.values()), axis=1)
    assert rows.shape == (num_classes, 6)
    assert len(np.unique(rows, axis=0)) == num_classes
    # asking for more classes keeps the first ones (class k means the same thing)
    if num_classes > 2:
        fewer = np.stack(list(class_attributes("shapes-b", 2).values()), axis=1)
        assert np.array_equal(rows[:2], fewer)


def test_few_classes_differ_in_geometry():
    attrs = class_attributes("shapes-a", 10)
    geometry = np.stack([attrs["lobes"], attrs["shape_param"], attrs["hole"]], axis=1)
    assert len(np.unique(geometry, axis=0)) == 10


def test_domains_differ_in_appearance():
    stats = {}
    for name in list_domains():
        images, _, masks = generate(300, 10, 32, name, seed=0, return_masks=True)
        x = images.astype(np.float64)
        # texture: horizontal gradient between 4x4-block means (blocks average the grain away)
        # over blocks that hold background only
        blocks = x.mean(-1).reshape(-1, 8, 4, 8, 4).mean(axis=(2, 4))
        clean = (~masks).reshape(-1, 8, 4, 8, 4).all(axis=(2, 4))
        grad = np.abs(blocks[:, :, 1:] - blocks[:, :, :-1])[clean[:, :, 1:] & clean[:, :, :-1]]
        stats[name] = (x.mean(axis=(0, 1, 2)), grad.mean())
    for a, b in itertools.combinations(stats, 2):
        assert np.linalg.norm(stats[a][0] - stats[b][0]) > 20, (a, b)  # mean colour
    # smooth-noise background (shapes-a) vs. stripes (shapes-b) and checkerboard (shapes-c)
    assert stats["shapes-b"][1] > 2 * stats["shapes-a"][1]
    assert stats["shapes-c"][1] > 2 * stats["shapes-a"][1]


def test_colour_alone_does_not_predict_the_label():
    images, labels, masks = generate(2000, 10, 32, "shapes-a", seed=0, return_masks=True)
    area = masks.sum(axis=(1, 2))[:, None]
    colour = (images * masks[..., None]).sum(axis=(1, 2)) / area  # mean object colour
    train, test = slice(0, 1000), slice(1000, 2000)
    means = np.stack([colour[train][labels[train] == c].mean(0) for c in range(10)])
    pred = np.argmin(((colour[test, None, :] - means[None]) ** 2).sum(-1), axis=1)
    assert (pred == labels[test]).mean() < 0.3  # chance is 0.1
    # and each class appears in clearly different colours
    for c in range(10):
        assert colour[labels == c].std(axis=0).mean() > 25


def test_domain_from_seed_is_deterministic_and_varied():
    assert domain_from_seed(11) == domain_from_seed(11)
    domains = [domain_from_seed(s) for s in range(12)]
    assert len({d.palette for d in domains}) == 12
    assert len({(d.background, d.shape_family, d.fill) for d in domains}) > 3
    images, labels = generate(50, 4, 32, domains[0], seed=0)
    assert images.shape == (50, 32, 32, 3) and np.array_equal(np.bincount(labels), [13, 13, 12, 12])
    assert np.array_equal(images, generate(50, 4, 32, domain_from_seed(0), seed=0)[0])


def test_domain_presets_and_validation():
    assert set(list_domains()) >= {"shapes-a", "shapes-b", "shapes-c"}
    assert get_domain("shapes-b") is DOMAIN_PRESETS["shapes-b"]
    custom = SyntheticDomain("mine", [(0, 0, 0), (255, 255, 255), (255, 0, 0)], "gradient", "crosses",
                             "stripes", class_seed=9)
    assert get_domain(custom) is custom and isinstance(custom.palette, tuple)
    assert generate(20, 3, 32, custom, seed=0)[0].shape == (20, 32, 32, 3)
    with pytest.raises(ValueError, match="palette"):
        SyntheticDomain("bad", [(0, 0, 0), (1, 1, 1)], "noise", "stars", "stripes", 0)
    with pytest.raises(ValueError, match="background"):
        SyntheticDomain("bad", custom.palette, "plaid", "stars", "stripes", 0)
    with pytest.raises(ValueError, match="shape_family"):
        SyntheticDomain("bad", custom.palette, "noise", "blobs", "stripes", 0)


# ----------------------------------------------------------------------------- torch dataset


def test_dataset_items_match_generate():
    ds = SyntheticImageDataset(40, 4, 32, "shapes-c", seed=2)
    images, labels = generate(40, 4, 32, "shapes-c", seed=2)
    assert len(ds) == 40 and ds.targets == labels.tolist() and len(ds.classes) == 4
    x, y = ds[7]
    assert isinstance(x, torch.Tensor) and x.dtype == torch.float32 and x.shape == (3, 32, 32)
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert torch.equal(x, torch.from_numpy(images[7]).permute(2, 0, 1).float() / 255)
    assert isinstance(y, int) and y == labels[7]


def test_dataset_transform_receives_pil_and_kwargs_pass_through():
    seen = []

    def transform(img):
        seen.append(img)
        return np.asarray(img)

    ds = SyntheticImageDataset(10, 2, 64, "shapes-a", seed=0, transform=transform,
                               target_transform=lambda y: y + 100, scale_range=(0.5, 0.6))
    x, y = ds[3]
    assert isinstance(seen[0], Image.Image) and seen[0].size == (64, 64)
    assert np.array_equal(x, ds.images[3]) and y == int(ds.labels[3]) + 100
    loader = torch.utils.data.DataLoader(SyntheticImageDataset(10, 2, 32, seed=0), batch_size=4)
    xb, yb = next(iter(loader))
    assert xb.shape == (4, 3, 32, 32) and yb.dtype == torch.int64
