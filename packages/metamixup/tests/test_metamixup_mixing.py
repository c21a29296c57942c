"""Mixing primitives: the originals at lam = 1 / 0, symmetry, per-sample broadcasting, the linearity of
soft-label cross-entropy, CutMix's area correction, and torchvision v2's MixUp/CutMix against ours."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from metamixup.mixing import (
    cutmix,
    mix,
    mixed_cross_entropy,
    one_hot,
    pair_index,
    sample_lam,
    soft_cross_entropy,
    torchvision_batch_mix,
)


def _batch(b=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, 4, 4, generator=g), torch.randint(0, 4, (b,), generator=g)


def test_lam_one_and_zero_give_the_two_originals():
    x, y = _batch()
    ys = one_hot(y, 4)
    index = pair_index(5, "randperm", torch.Generator().manual_seed(1))
    assert torch.equal(mix(x, 1.0, index), x) and torch.equal(mix(ys, 1.0, index), ys)
    assert torch.equal(mix(x, 0.0, index), x[index]) and torch.equal(mix(ys, 0.0, index), ys[index])
    ones, zeros = torch.ones(5), torch.zeros(5)
    assert torch.equal(mix(x, ones, index), x) and torch.equal(mix(x, zeros, index), x[index])


def test_mix_values_symmetry_and_per_sample_broadcast():
    x, y = _batch()
    index = torch.tensor([2, 0, 4, 1, 3])
    torch.testing.assert_close(mix(x, 0.3, index)[1], 0.3 * x[1] + 0.7 * x[0])
    inverse = torch.argsort(index)
    # (i, j, lam) == (j, i, 1 - lam): sample index[i] mixed with i at 1 - lam
    torch.testing.assert_close(mix(x, 0.3, index), mix(x, 0.7, inverse)[index])
    lam = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5])
    out = mix(x, lam, index)
    for i in range(5):
        torch.testing.assert_close(out[i], lam[i] * x[i] + (1 - lam[i]) * x[index[i]])
    ys = one_hot(y, 4)
    torch.testing.assert_close(mix(ys, lam, index)[3], lam[3] * ys[3] + (1 - lam[3]) * ys[index[3]])
    with pytest.raises(ValueError, match="per-sample"):
        mix(x, torch.ones(4), index)


def test_pairings():
    assert pair_index(4, "flip").tolist() == [3, 2, 1, 0]
    assert pair_index(4, "roll").tolist() == [3, 0, 1, 2]
    x = torch.arange(4.0)
    assert torch.equal(x[pair_index(4, "roll")], x.roll(1, 0))
    p = pair_index(50, "randperm", torch.Generator().manual_seed(0))
    assert sorted(p.tolist()) == list(range(50)) and p.tolist() != list(range(50))
    with pytest.raises(ValueError):
        pair_index(4, "shuffle")


def test_soft_label_cross_entropy_is_linear_in_the_mixed_target():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 5, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    index = torch.tensor([5, 4, 3, 2, 1, 0])
    yi, yj = one_hot(y, 5, dtype=torch.float64), one_hot(y[index], 5, dtype=torch.float64)
    for lam in (0.0, 0.23, 0.5, 1.0):
        mixed = soft_cross_entropy(logits, lam * yi + (1 - lam) * yj)
        linear = lam * soft_cross_entropy(logits, yi) + (1 - lam) * soft_cross_entropy(logits, yj)
        torch.testing.assert_close(mixed, linear)
        torch.testing.assert_close(mixed, mixed_cross_entropy(logits, y, lam, index))
        torch.testing.assert_close(mixed, F.cross_entropy(logits, lam * yi + (1 - lam) * yj))  # torch's prob targets
    lam = torch.tensor([0.1, 0.9, 0.4, 0.6, 0.5, 0.3], dtype=torch.float64)
    torch.testing.assert_close(soft_cross_entropy(logits, mix(yi, lam, index)),
                               mixed_cross_entropy(logits, y, lam, index))
    # hard labels: equals torch's cross_entropy; smoothing as torch's label_smoothing
    torch.testing.assert_close(soft_cross_entropy(logits, yi), F.cross_entropy(logits, y))
    torch.testing.assert_close(soft_cross_entropy(logits, one_hot(y, 5, 0.1, torch.float64)),
                               F.cross_entropy(logits, y, label_smoothing=0.1))


def test_sample_lam():
    rng = np.random.default_rng(0)
    assert sample_lam(0.0, rng) == 1.0
    draws = sample_lam(0.2, np.random.default_rng(1), size=2000)
    np.testing.assert_allclose(draws, np.random.default_rng(1).beta(0.2, 0.2, 2000))
    folded = sample_lam(1.0, np.random.default_rng(1), size=100, symmetric=True)
    assert folded.min() >= 0.5


def test_cutmix_box_area_matches_the_label_ratio():
    x = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    ys = one_hot(torch.arange(6) % 4, 4)
    index = torch.tensor([1, 2, 3, 4, 5, 0])
    for seed in range(20):
        out, ymix, lam_adj = cutmix(x, ys, 0.6, index, np.random.default_rng(seed))
        pasted = (out != x).any(1)  # (B, H, W): pixels that came from the partner
        frac = pasted[0].float().mean().item()
        assert 1 - lam_adj == pytest.approx(frac, abs=1e-6)
        assert torch.equal(out[pasted.unsqueeze(1).expand_as(out)], x[index][pasted.unsqueeze(1).expand_as(out)])
        torch.testing.assert_close(ymix, lam_adj * ys + (1 - lam_adj) * ys[index])


@pytest.mark.parametrize("kind", ["mixup", "cutmix"])
def test_torchvision_v2_batch_transforms_equal_our_mix_with_roll_pairing(kind):
    x, y = _batch(8)
    x_tv, y_tv = torchvision_batch_mix(kind, x, y, 1.0, 4, seed=123)
    index = pair_index(8, "roll")
    ys = one_hot(y, 4)
    # recover the ratio from the soft labels (sample 0 and its partner have different classes in this batch)
    i = int(next(k for k in range(8) if y[k] != y[index[k]]))
    lam = float(y_tv[i, y[i]])
    torch.testing.assert_close(y_tv, mix(ys, lam, index))
    if kind == "mixup":
        torch.testing.assert_close(x_tv, mix(x, lam, index))
    else:
        pasted = (x_tv != x).any(1)
        assert pasted[0].float().mean().item() == pytest.approx(1 - lam, abs=1e-6)
    again = torchvision_batch_mix(kind, x, y, 1.0, 4, seed=123)
    assert torch.equal(again[0], x_tv)  # seeded: a resumed run draws the same
    rng = torch.get_rng_state()
    torchvision_batch_mix(kind, x, y, 1.0, 4, seed=5)
    assert torch.equal(torch.get_rng_state(), rng)  # the global stream is untouched
