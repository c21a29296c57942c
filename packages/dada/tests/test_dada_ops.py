"""The 15 operations: batched == per-image torchvision, DADA's level mapping, m = 0.5 identities,
fidelity to the Fast AutoAugment PIL operations, and the batched policy kernels."""

import math

import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageOps
import pytest
import torch

from dada import ops
from dada.policy import SUBPOLICIES, DADAAugment, DADAPolicy, Policy, apply_policy, apply_slots, preset, random_policy


def images(n=24, seed=0, size=32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    x[: n // 2, :, 8:20, 6:26] = 40  # some structure (flat regions, edges) besides noise
    return x


@pytest.mark.parametrize("op", ops.OPS)
@pytest.mark.parametrize("fill", [None, [10, 200, 30]])
def test_batched_op_equals_per_image_torchvision(op, fill):
    x = images(24, seed=ops.OP_INDEX[op])
    g = torch.Generator().manual_seed(1)
    levels = torch.rand(24, generator=g, dtype=torch.float64)
    values = ops.sample_values(op, levels, g)
    boxes = ops.sample_cutout_boxes(values, 32, 32, g) if op == "Cutout" else None
    out = ops.apply_values(x, op, values, boxes, fill=fill)
    ref = torch.stack([ops.reference_op(x[i], op, float(values[i]), None if boxes is None else boxes[i], fill=fill)
                       for i in range(24)])
    assert out.dtype == torch.uint8 and torch.equal(out, ref)
    if op not in ops.MAGNITUDE_FREE:  # the per-image values really differ inside the batch
        assert len(torch.unique(values)) > 10


def test_level_mapping_and_ranges():
    for op, (low, high) in ops.RANGES.items():
        assert ops.level_to_value(op, 0.0).item() == pytest.approx(low)
        assert ops.level_to_value(op, 1.0).item() == pytest.approx(high)
        assert ops.level_to_value(op, 0.25).item() == pytest.approx(low + 0.25 * (high - low))
        assert ops.level_to_value(op, 1.7).item() == pytest.approx(high)  # levels are clamped to [0, 1]
    assert ops.RANGES["Solarize"] == (0.0, 256.0) and ops.RANGES["Posterize"] == (4.0, 8.0)
    assert ops.RANGES["TranslateX"] == (-0.45, 0.45) and ops.RANGES["Cutout"] == (0.0, 0.2)
    assert len(ops.OPS) == 15 and "SamplePairing" not in ops.OPS


@pytest.mark.parametrize("op", ops.IDENTITY_AT_HALF)
def test_level_one_half_is_the_identity(op):
    x = images(16)
    out = ops.apply_op(x, op, torch.full((16,), 0.5, dtype=torch.float64), torch.Generator().manual_seed(0))
    assert torch.equal(out, x)
    moved = ops.apply_op(x, op, torch.full((16,), 0.9, dtype=torch.float64), torch.Generator().manual_seed(0))
    assert not torch.equal(moved, x)


def test_posterize_bits_and_solarize_threshold():
    x = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16).expand(4, 3, 16, 16).contiguous()
    for m in (0.0, 0.3, 0.49, 0.5, 0.99, 1.0):
        bits = math.floor(4 + 4 * m)
        out = ops.apply_op(x, "Posterize", torch.full((4,), m, dtype=torch.float64))
        assert torch.equal(out, x & (((1 << bits) - 1) << (8 - bits)))
    out = ops.apply_op(x, "Solarize", torch.full((4,), 0.5, dtype=torch.float64))  # threshold 128
    assert torch.equal(out, torch.where(x >= 128, 255 - x, x))


def test_random_mirror_flips_about_half_the_signs():
    v = ops.sample_values("Rotate", torch.full((4000,), 1.0, dtype=torch.float64), torch.Generator().manual_seed(0))
    assert set(v.tolist()) == {30.0, -30.0} and abs((v > 0).double().mean().item() - 0.5) < 0.03
    v = ops.sample_values("Solarize", torch.full((100,), 1.0, dtype=torch.float64), torch.Generator().manual_seed(0))
    assert (v == 256.0).all()  # no mirror for colour ops


# ------------------------------------------------------------- fidelity to the PIL ops


def _pil(x):
    return PIL.Image.fromarray(x.permute(1, 2, 0).numpy())


def _np(img):
    return torch.from_numpy(np.array(img)).permute(2, 0, 1)


@pytest.mark.parametrize("op,value,pil_fn,min_equal", [
    ("ShearX", 0.21, lambda im, v: im.transform(im.size, PIL.Image.AFFINE, (1, v, 0, 0, 1, 0)), 0.97),
    ("ShearY", -0.17, lambda im, v: im.transform(im.size, PIL.Image.AFFINE, (1, 0, 0, v, 1, 0)), 0.97),
    ("TranslateX", 0.25, lambda im, v: im.transform(im.size, PIL.Image.AFFINE, (1, 0, v * im.size[0], 0, 1, 0)), 0.97),
    ("TranslateY", -0.3, lambda im, v: im.transform(im.size, PIL.Image.AFFINE, (1, 0, 0, 0, 1, v * im.size[1])), 0.97),
    ("Rotate", 23.0, lambda im, v: im.rotate(v), 0.95),
    ("AutoContrast", 0.0, lambda im, v: PIL.ImageOps.autocontrast(im), 0.97),
    ("Invert", 0.0, lambda im, v: PIL.ImageOps.invert(im), 1.0),
    ("Equalize", 0.0, lambda im, v: PIL.ImageOps.equalize(im), 0.9),
    ("Solarize", 97.0, lambda im, v: PIL.ImageOps.solarize(im, v), 1.0),
    ("Posterize", 5.0, lambda im, v: PIL.ImageOps.posterize(im, int(v)), 1.0),
])
def test_ops_match_the_fast_autoaugment_pil_operations(op, value, pil_fn, min_equal):
    x = images(4, seed=3)
    x[:, :, :, :] = (x.float() * 0.6 + 40).to(torch.uint8)  # not already full-range (AutoContrast)
    out = ops.apply_values(x, op, torch.full((4,), value, dtype=torch.float64))
    ref = torch.stack([_np(pil_fn(_pil(x[i]), value)) for i in range(4)])
    close = ((out.int() - ref.int()).abs() <= 1).float().mean().item()
    assert close >= min_equal, close


def test_cutout_box_matches_pil_rectangle():
    x = images(50, seed=5)
    g = torch.Generator().manual_seed(2)
    values = torch.rand(50, generator=g, dtype=torch.float64) * 0.2
    boxes = ops.sample_cutout_boxes(values, 32, 32, g)
    out = ops.apply_values(x, "Cutout", values, boxes)
    for i in range(50):
        img = _pil(x[i])
        x0, y0, x1, y1 = boxes[i].tolist()
        if x1 >= x0:
            side = float(values[i]) * 32  # the official corner/extent arithmetic, drawn by PIL
            PIL.ImageDraw.Draw(img).rectangle((x0, y0, min(32, x0 + side), min(32, y0 + side)), (125, 123, 114))
        assert torch.equal(out[i], _np(img)), i


# ---------------------------------------------------------------------- policies


def test_subpolicies_are_the_105_unordered_pairs():
    assert len(SUBPOLICIES) == 105 == math.comb(15, 2)
    assert len(set(frozenset(s) for s in SUBPOLICIES)) == 105 and all(a != b for a, b in SUBPOLICIES)
    assert SUBPOLICIES[0] == ("ShearX", "ShearY") and SUBPOLICIES[-1] == ("Sharpness", "Cutout")
    for a, b in SUBPOLICIES:
        assert ops.OP_INDEX[a] < ops.OP_INDEX[b]


def test_apply_slots_runs_each_images_own_ops_in_order():
    x = images(12, seed=7)
    op_ids = torch.tensor([[ops.OP_INDEX["Solarize"], ops.OP_INDEX["Invert"]],
                           [ops.OP_INDEX["Invert"], ops.OP_INDEX["Solarize"]],
                           [ops.OP_INDEX["Posterize"], ops.OP_INDEX["Contrast"]]] * 4)
    apply = torch.tensor([[True, True], [True, True], [True, False]] * 4)
    levels = torch.tensor([[0.3, 0.0], [0.0, 0.3], [0.2, 0.9]] * 4, dtype=torch.float64)
    out = apply_slots(x, op_ids, apply, levels)
    for i in range(12):
        y = x[i]
        for j in range(2):
            if apply[i, j]:
                name = ops.OPS[op_ids[i, j]]
                y = ops.reference_op(y, name, float(ops.level_to_value(name, levels[i, j])))
        assert torch.equal(out[i], y), i
    assert not torch.equal(out[0], out[1])  # order matters: Solarize->Invert != Invert->Solarize


def test_apply_policy_chooses_subpolicies_uniformly_and_honours_probabilities():
    x = torch.full((4000, 3, 4, 4), 10, dtype=torch.uint8)
    pol = Policy(((("Invert", 1.0, 0.5), ("Solarize", 0.0, 0.0)), (("Posterize", 0.0, 0.0), ("Brightness", 0.0, 0.5))))
    out = apply_policy(x, pol, torch.Generator().manual_seed(0))
    inverted = (out[:, 0, 0, 0] == 245).double().mean().item()
    assert abs(inverted - 0.5) < 0.03 and set(out[:, 0, 0, 0].tolist()) == {10, 245}
    half = Policy(((("Invert", 0.3, 0.5), ("Invert", 0.0, 0.5)),))
    out = apply_policy(x, half, torch.Generator().manual_seed(1))
    assert abs((out[:, 0, 0, 0] == 245).double().mean().item() - 0.3) < 0.03


def test_presets_and_the_v2_transform():
    for p in DADAPolicy:
        pol = preset(p)
        assert len(pol) == 25 and all(len(s) == 2 for s in pol.subpolicies)
    c10 = preset("cifar10")
    assert c10.subpolicies[0][0][0] == "TranslateX" and c10.subpolicies[0][0][1] == pytest.approx(0.5183464288711548)
    assert preset("imagenet").subpolicies[-1][0] == ("Posterize", pytest.approx(0.1463455855846405), pytest.approx(0.3278478980064392))
    t = DADAAugment(DADAPolicy.SVHN)
    x = images(8)
    torch.manual_seed(0)
    out = t(x)
    assert out.shape == x.shape and out.dtype == torch.uint8 and not torch.equal(out, x)
    assert isinstance(t(_pil(x[0])), PIL.Image.Image) and t(x[0]).shape == x[0].shape
    with pytest.raises(KeyError, match="unknown DADA preset"):
        preset("cifar11")
    with pytest.raises(ValueError, match="unknown operation"):
        Policy(((("Rotat", 0.5, 0.5), ("Invert", 0.5, 0.5)),))


def test_random_policy_is_in_the_search_space():
    pol = random_policy(25, torch.Generator().manual_seed(0))
    assert len(pol) == 25 and len({tuple(op for op, _, _ in s) for s in pol.subpolicies}) == 25
    assert all(tuple(op for op, _, _ in s) in SUBPOLICIES and all(p == 0.5 for _, p, _ in s) for s in pol.subpolicies)


@pytest.mark.parametrize("name,index,rounded", [
    ("cifar10", 17, [("TranslateX", 0.53, 0.51), ("Cutout", 0.69, 0.49)]),
    ("cifar100", 13, [("Posterize", 0.31, 0.04), ("Contrast", 1.00, 0.08)]),
    ("svhn", 20, [("TranslateY", 0.27, 0.50), ("Invert", 0.56, 0.29)]),
    ("imagenet", 12, [("TranslateX", 0.31, 0.46), ("AutoContrast", 0.40, 0.00)]),
])
def test_presets_match_the_official_readme_tables(name, index, rounded):
    sub = preset(name).subpolicies[index]
    assert [(op, round(p, 2), round(m, 2)) for op, p, m in sub] == rounded
