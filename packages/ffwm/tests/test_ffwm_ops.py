"""Warping, flipping, the guided filter and the three CUDA-kernel replacements against slow references."""

import math

import pytest
import torch
import torch.nn.functional as F

from ffwm.ops import (
    affine_regularization,
    affine_regularization_reference,
    base_grid,
    block_extractor,
    block_extractor_reference,
    box_sum,
    box_sum_naive,
    guided_filter,
    guided_filter_naive,
    hflip,
    local_attn_reshape,
    local_attn_reshape_reference,
    norm_to_pixel,
    pixel_to_norm,
    resample2d,
    resample2d_reference,
    resize_grid,
    warp,
)


def test_identity_grid_reproduces_the_input_exactly():
    x = torch.rand(2, 3, 13, 17, dtype=torch.float64)
    g = base_grid(13, 17, batch=2, dtype=torch.float64)
    assert torch.allclose(warp(x, g), x, atol=1e-12)
    # pixel centres: (2j + 1) / W - 1 ; a half-pixel shift is visibly not the identity
    assert g[0, 0, 0, 0].item() == pytest.approx(1 / 17 - 1) and g[0, 4, 0, 1].item() == pytest.approx(9 / 13 - 1)
    assert not torch.allclose(warp(x, g + 0.5 * 2 / 17 * torch.tensor([1.0, 0.0], dtype=torch.float64)), x, atol=1e-3)


def test_warp_is_align_corners_false():
    x = torch.rand(1, 1, 8, 8)
    g = base_grid(8, 8)
    assert torch.allclose(warp(x, g), F.grid_sample(x, g, align_corners=False))
    assert not torch.allclose(warp(x, g), F.grid_sample(x, g, align_corners=True), atol=1e-3)


def test_warp_shifts_by_one_pixel():
    x = torch.rand(1, 2, 6, 9, dtype=torch.float64)
    g = base_grid(6, 9, dtype=torch.float64).clone()
    g[..., 0] += 2 / 9  # sample one pixel to the right
    out = warp(x, g)
    assert torch.allclose(out[..., :-1], x[..., 1:], atol=1e-12) and torch.all(out[..., -1] == 0)


def test_flip_twice_is_identity_and_flip_reverses_columns():
    x = torch.rand(2, 3, 5, 7)
    assert torch.equal(hflip(hflip(x)), x)
    assert torch.equal(hflip(x)[..., 0], x[..., -1]) and not torch.equal(hflip(x), x)


def test_pixel_norm_round_trip_and_convention():
    p = torch.tensor([0.0, 3.5, 63.0])
    assert torch.allclose(norm_to_pixel(pixel_to_norm(p, 64), 64), p)
    assert pixel_to_norm(torch.tensor(-0.5), 64).item() == pytest.approx(-1.0)


def test_resize_grid_keeps_the_identity():
    g = base_grid(16, 16)
    assert torch.allclose(resize_grid(g, 8), base_grid(8, 8), atol=1e-6)
    assert torch.allclose(resize_grid(g, 32)[:, 1:-1, 1:-1], base_grid(32, 32)[:, 1:-1, 1:-1], atol=1e-6)


@pytest.mark.parametrize("r", [1, 3, 6])
def test_box_sum_equals_the_naive_window_sum(r):
    x = torch.randn(2, 3, 11, 14, dtype=torch.float64)
    assert torch.allclose(box_sum(x, r), box_sum_naive(x, r), atol=1e-10)
    ones = box_sum(torch.ones(1, 1, 11, 14, dtype=torch.float64), r)
    assert ones[0, 0, 0, 0] == (r + 1) ** 2 and ones[0, 0, 5, 7] == min(2 * r + 1, 11) * min(2 * r + 1, 14)


def test_guided_filter_equals_the_naive_reference():
    torch.manual_seed(0)
    x, y = torch.rand(2, 3, 20, 20, dtype=torch.float64), torch.rand(2, 3, 20, 20, dtype=torch.float64)
    assert torch.allclose(guided_filter(x, y, 4, 1e-4), guided_filter_naive(x, y, 4, 1e-4), atol=1e-10)


def test_guided_filter_returns_the_target_under_an_affine_illumination_change():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 32, 32)
    a = torch.tensor([0.6, 1.3, 0.9]).view(1, 3, 1, 1)
    b = torch.tensor([0.2, -0.1, 0.05]).view(1, 3, 1, 1)
    y = a * x + b  # a different (global, affine) illumination of the same structure
    out = guided_filter(x, y, 8, 1e-8)
    assert torch.allclose(out, y, atol=1e-4)
    # a slowly varying gain: still close (the window sees an almost constant gain)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 32), torch.linspace(0, 1, 32), indexing="ij")
    slow = 0.7 + 0.3 * xx
    err = (guided_filter(x, slow * x, 4, 1e-8) - slow * x).abs().mean()
    assert err < 0.005
    # GF(x, x) = x, and the result follows the guide's structure, not the target's
    assert torch.allclose(guided_filter(x, x, 8, 1e-8), x, atol=1e-4)
    z = torch.rand(2, 3, 32, 32)
    assert (guided_filter(x, z, 8, 1e-8) - z).abs().mean() > 0.15


def test_guided_filter_is_differentiable_in_the_guide():
    x = torch.rand(1, 3, 16, 16, requires_grad=True)
    guided_filter(x, torch.rand(1, 3, 16, 16), 4).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_resample2d_matches_the_loop_reference():
    torch.manual_seed(0)
    src = torch.randn(2, 3, 7, 9, dtype=torch.float64)
    pos = torch.stack([torch.rand(2, 4, 5, dtype=torch.float64) * 10 - 1,
                       torch.rand(2, 4, 5, dtype=torch.float64) * 8 - 1], -1)  # some outside the image
    assert torch.allclose(resample2d(src, pos, 4, 2.0), resample2d_reference(src, pos, 4, 2.0), atol=1e-12)
    assert torch.allclose(resample2d(src, pos, 3, 1.0), resample2d_reference(src, pos, 3, 1.0), atol=1e-12)


def test_resample2d_of_a_constant_is_the_constant_and_gradient_flows():
    src = torch.full((1, 2, 6, 6), 0.7, requires_grad=True)
    pos = torch.rand(1, 3, 3, 2) * 5
    out = resample2d(src, pos)
    assert torch.allclose(out, torch.full_like(out, 0.7))
    out.sum().backward()
    assert src.grad.sum().item() == pytest.approx(2 * 9, rel=1e-5)  # weights are normalised


def test_block_extractor_matches_the_loop_reference():
    torch.manual_seed(1)
    src = torch.randn(2, 2, 6, 7, dtype=torch.float64)
    pos = torch.rand(2, 3, 4, 2, dtype=torch.float64) * 7 - 0.5
    for k in (3, 4):
        assert torch.allclose(block_extractor(src, pos, k), block_extractor_reference(src, pos, k), atol=1e-12)


def test_block_extractor_at_integer_centres_copies_blocks():
    src = torch.arange(49, dtype=torch.float64).view(1, 1, 7, 7)
    pos = torch.tensor([[[[3.0, 2.0]]]], dtype=torch.float64)  # x = 3, y = 2
    out = block_extractor(src, pos, 3)
    assert torch.equal(out[0, 0], src[0, 0, 1:4, 2:5])


def test_local_attn_reshape_matches_the_loop_reference():
    x = torch.randn(2, 9, 3, 4)
    assert torch.equal(local_attn_reshape(x, 3), local_attn_reshape_reference(x, 3))
    with pytest.raises(ValueError):
        local_attn_reshape(torch.randn(1, 8, 2, 2), 3)


@pytest.mark.parametrize("kz", [3, 5])
def test_affine_regularization_matches_least_squares(kz):
    torch.manual_seed(2)
    g = base_grid(9, 10, batch=2, dtype=torch.float64) + 0.05 * torch.randn(2, 9, 10, 2, dtype=torch.float64)
    ours = affine_regularization(g, kz, 128)
    ref = affine_regularization_reference(g, kz, 128)  # mean over windows of the x + y squared residuals
    assert ours.item() == pytest.approx(ref.item(), rel=1e-9)
    assert affine_regularization(g, kz).item() == pytest.approx(ours.item() * (10 / 128) ** 2, rel=1e-9)


def test_affine_regularization_is_zero_for_affine_flows():
    g = base_grid(12, 12, dtype=torch.float64)
    theta = torch.tensor([[0.9, 0.2, 0.1], [-0.15, 1.1, -0.05]], dtype=torch.float64)
    aff = g @ theta[:, :2].T + theta[:, 2]
    assert affine_regularization(aff, 5).item() == pytest.approx(0.0, abs=1e-10)
    assert affine_regularization(aff + 0.01 * torch.randn_like(aff), 5).item() > 1e-4


def test_backward_of_forward_warp_is_near_identity_on_an_analytic_warp():
    """Forward-warp an image by an invertible affine map, then backward-warp with the inverse map."""
    torch.manual_seed(3)
    size = 48
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size, dtype=torch.float64),
                            torch.linspace(-1, 1, size, dtype=torch.float64), indexing="ij")
    img = torch.stack([torch.sin(4 * xx + 1) * torch.cos(3 * yy), torch.cos(5 * xx * yy), xx * yy])[None]  # smooth
    a = torch.tensor([[math.cos(0.2) * 0.9, -math.sin(0.2) * 0.9], [math.sin(0.2) * 0.9, math.cos(0.2) * 0.9]],
                     dtype=torch.float64)
    t = torch.tensor([0.05, -0.04], dtype=torch.float64)
    g = base_grid(size, size, dtype=torch.float64)
    fwd = g @ a.T + t  # frontal -> profile sampling grid
    bwd = (g - t) @ torch.linalg.inv(a).T  # profile -> frontal
    warped = warp(img, fwd)
    back = warp(warped, bwd)
    inner = slice(10, size - 10)
    err = (back - img)[..., inner, inner].abs().mean()
    assert err < 0.005
    assert (warp(warped, g) - img)[..., inner, inner].abs().mean() > 5 * err  # without the backward warp: far off
