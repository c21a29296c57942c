"""Latent-GT search: closed form on synthetic heatmaps, window, limits in lambda, brute-force equivalence."""

import math

import pytest
import torch

from landmark_ambiguity.heatmaps import decode, gaussian_heatmaps
from landmark_ambiguity import search as search_mod
from landmark_ambiguity.search import SearchConfig, chi2_distance, expected_patch, latent_search


def _gauss(p, size=33, sigma=1.5):
    return gaussian_heatmaps(torch.tensor(p, dtype=torch.float64).view(1, -1, 2), (size, size), sigma)


def test_chi2_is_zero_on_itself_nonnegative_and_scale_invariant():
    e = expected_patch(1.0, 3)
    assert chi2_distance(e, e).item() == pytest.approx(0, abs=1e-7)
    p = torch.rand(5, 7, 7)
    assert (chi2_distance(p, e) >= 0).all()
    torch.testing.assert_close(chi2_distance(3.7 * p, e), chi2_distance(p, e))


def test_exact_gaussian_at_the_observation_returns_it_for_any_lambda():
    hm = _gauss([[16.0, 16.0]])
    for lam in (0.0, 0.1, 1.0, 100.0):
        y = latent_search(hm, torch.tensor([[[16.0, 16.0]]]), SearchConfig(sigma_e=1.5, lam=lam, subpixel=2))
        torch.testing.assert_close(y, torch.tensor([[[16.0, 16.0]]], dtype=torch.float64))


def test_search_matches_the_closed_form_on_a_gaussian_heatmap():
    # heatmap = Gaussian (std s) at p; E has the same std. Untruncated, chi2(Phi(M, y), E) = exp(|y-p|^2/s^2) - 1,
    # so the search must return the grid argmin of |y-o|^2/(2 sp^2) + lam (exp(|y-p|^2/s^2) - 1).
    s, sp, p, o = 1.5, 1.0, torch.tensor([17.0, 15.0]), torch.tensor([15.0, 16.0])
    hm = _gauss([p.tolist()], sigma=s)
    for lam in (0.05, 0.3, 1.0, 5.0):
        cfg = SearchConfig(sigma_prior=sp, lam=lam, window_radius=3, sigma_e=s, patch_radius=8, subpixel=1, floor=1e-30)
        y, cost = latent_search(hm, o.view(1, 1, 2).double(), cfg, return_cost=True)
        g = torch.arange(33.0)
        yy, xx = torch.meshgrid(g, g, indexing="ij")
        d2o, d2p = (xx - o[0]) ** 2 + (yy - o[1]) ** 2, (xx - p[0]) ** 2 + (yy - p[1]) ** 2
        f = d2o / (2 * sp ** 2) + lam * (torch.exp(d2p / s ** 2) - 1)
        f[((xx - o[0]).abs() > 3) | ((yy - o[1]).abs() > 3)] = float("inf")
        i = int(f.argmin())
        assert y[0, 0].tolist() == [float(i % 33), float(i // 33)], lam
        # and the cost at the chosen point equals the closed form there
        assert cost.min().item() == pytest.approx(f.min().item(), rel=2e-3)


def test_lambda_limits_and_monotone_path():
    p, o = [19.0, 14.0], torch.tensor([[[16.0, 16.0]]])
    hm = _gauss([p])
    cfg = dict(window_radius=4, sigma_e=1.5, patch_radius=6, subpixel=2)
    assert latent_search(hm, o, SearchConfig(lam=0.0, **cfg))[0, 0].tolist() == [16.0, 16.0]
    assert latent_search(hm, o, SearchConfig(lam=1e4, **cfg))[0, 0].tolist() == p
    dist = [float((latent_search(hm, o, SearchConfig(lam=lam, **cfg))[0, 0] - o[0, 0]).norm())
            for lam in (0.01, 0.1, 0.3, 1, 3, 10, 100)]
    assert all(a <= b + 1e-9 for a, b in zip(dist, dist[1:])) and dist[0] < dist[-1]


def test_search_never_leaves_its_window_and_handles_borders():
    torch.manual_seed(0)
    hm = torch.rand(6, 68, 16, 16) ** 4
    obs = torch.rand(6, 68, 2) * 20 - 2  # some observations off the map
    obs[0, 0] = torch.tensor([100.0, 100.0])  # far outside: keeps its observation
    for r in (0.5, 1.0, 2.0, 3.0):
        y = latent_search(hm, obs, SearchConfig(window_radius=r, lam=50.0))
        assert ((y - obs).abs() <= r + 1e-5).all()
        assert torch.isfinite(y).all()
    assert latent_search(hm, obs, SearchConfig())[0, 0].tolist() == [100.0, 100.0]


def test_blank_heatmap_keeps_the_observation():
    obs = torch.tensor([[[5.3, 7.9]]])
    y = latent_search(torch.zeros(1, 1, 16, 16), obs, SearchConfig(subpixel=4))
    torch.testing.assert_close(y, obs)


def _brute_force(hm, obs, cfg):
    """Reference: explicit candidates, bilinear patch sampling and Pearson chi2, one landmark at a time."""
    h, w = hm.shape[-2:]
    e = expected_patch(cfg.sigma_e, cfg.patch_radius, cfg.floor, torch.float64)
    r = cfg.patch_radius
    out = torch.empty_like(obs)
    m = hm.double().clamp_min(0)

    def sample(ch, x, y):
        x0, y0 = math.floor(x), math.floor(y)
        ax, ay = x - x0, y - y0
        v = 0.0
        for dx, dy, wgt in ((0, 0, (1 - ax) * (1 - ay)), (1, 0, ax * (1 - ay)), (0, 1, (1 - ax) * ay), (1, 1, ax * ay)):
            xi, yi = x0 + dx, y0 + dy
            if wgt and 0 <= xi < w and 0 <= yi < h:
                v += wgt * ch[yi, xi].item()
        return v

    for i in range(obs.shape[0]):
        for k in range(obs.shape[1]):
            o = obs[i, k].double()
            best, arg = float("inf"), None
            u = cfg.subpixel
            ju = math.floor(cfg.window_radius * u + 1e-9)
            for ty in range(-ju, ju + 1):
                for tx in range(-ju, ju + 1):
                    x, y = float(o[0]) + tx / u, float(o[1]) + ty / u
                    patch = torch.tensor([[sample(m[i, k], x + dx, y + dy) for dx in range(-r, r + 1)]
                                          for dy in range(-r, r + 1)], dtype=torch.float64)
                    if patch.sum() > 1e-8:
                        chi = float(((patch / patch.sum() - e) ** 2 / e).sum())
                    else:
                        chi = cfg.blank_cost
                    c = ((x - o[0]) ** 2 + (y - o[1]) ** 2) / (2 * cfg.sigma_prior ** 2) + cfg.lam * chi
                    if c < best - 1e-9:
                        best, arg = c, (x, y)
            out[i, k] = torch.tensor(arg)
    return out


def test_vectorised_search_equals_the_brute_force_reference():
    torch.manual_seed(1)
    pts = torch.rand(2, 3, 2) * 10 + 3
    hm = gaussian_heatmaps(pts, (16, 16), 1.3) * (0.5 + torch.rand(2, 3, 1, 1)) + 0.05 * torch.rand(2, 3, 16, 16)
    obs = pts + torch.randn(2, 3, 2) * 1.2
    cfg = SearchConfig(sigma_prior=1.0, lam=0.7, window_radius=1.5, sigma_e=1.0, patch_radius=2, subpixel=2)
    torch.testing.assert_close(latent_search(hm.double(), obs.double(), cfg), _brute_force(hm, obs.double(), cfg))


@pytest.mark.parametrize("impl", ["auto", "fine"])
def test_negative_heatmap_values_are_clamped_to_zero(impl):
    """Phi clamps negative heatmap values (a network's output has them) before the patch is normalised:
    both ways of summing the patches give the brute-force labels and the costs of the clamped heatmaps."""
    torch.manual_seed(21)
    pts = torch.rand(2, 3, 2) * 10 + 3
    hm = (gaussian_heatmaps(pts, (16, 16), 1.3) + 0.15 * torch.randn(2, 3, 16, 16)).double()
    assert (hm < 0).float().mean() > 0.3
    obs = pts.double() + torch.randn(2, 3, 2).double()
    cfg = SearchConfig(sigma_prior=1.0, lam=0.7, window_radius=1.5, patch_radius=2, subpixel=2)
    y, cost = latent_search(hm, obs, cfg, return_cost=True, impl=impl)
    y0, cost0 = latent_search(hm.clamp_min(0), obs, cfg, return_cost=True, impl=impl)
    torch.testing.assert_close(cost, cost0, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(y, _brute_force(hm, obs, cfg))


def test_floored_expected_patch_uses_the_2d_kernel_and_equals_the_reference():
    """A large floor makes E non-separable: the fine-grid path with the 2-D 1/E kernel must still agree."""
    torch.manual_seed(11)
    pts = torch.rand(2, 3, 2) * 10 + 3
    hm = gaussian_heatmaps(pts, (16, 16), 1.3) + 0.05 * torch.rand(2, 3, 16, 16)
    obs = pts + torch.randn(2, 3, 2)
    cfg = SearchConfig(sigma_prior=1.0, lam=0.7, window_radius=1.5, patch_radius=2, subpixel=2, floor=2e-2)
    assert not search_mod._Plan(cfg, torch.float64).separable
    torch.testing.assert_close(latent_search(hm.double(), obs.double(), cfg), _brute_force(hm, obs.double(), cfg))


@pytest.mark.parametrize("size,cfg", [
    (16, SearchConfig()),  # the default: 17x17 candidates at 1/4 px, 7x7 patches
    (16, SearchConfig(window_radius=1.5, subpixel=2, patch_radius=2, sigma_e=1.3)),
    (16, SearchConfig(window_radius=2.3, subpixel=3)),  # window not a multiple of a heatmap px
    (16, SearchConfig(window_radius=0.0)),
    (64, SearchConfig(window_radius=8, subpixel=1, sigma_prior=3.0)),  # the paper's window on 64x64 maps
])
def test_row_wise_patch_sums_equal_the_fine_grid_ones(size, cfg):
    """The fast path (x interpolated on integer rows, y folded into (1-b)^2 / 2b(1-b) / b^2 row sums, banded
    matrix products) gives the same S and Q for every candidate as sampling every patch point bilinearly
    on the fine grid, including windows that reach over the border or lie entirely off the map."""
    torch.manual_seed(12)
    n = 60
    hm = torch.rand(n, size, size, dtype=torch.float64) ** 3
    o = torch.rand(n, 2, dtype=torch.float64) * (size + 8) - 4
    o[0] = torch.tensor([-30.0, 5.0])
    o[1] = torch.tensor([size + 40.0, size + 40.0])
    o[2] = torch.tensor([3.0, 7.0])  # on the integer grid
    plan = search_mod._Plan(cfg, torch.float64)
    assert plan.separable
    s_rows, q_rows = search_mod._patch_sums_rows(hm, o, plan)
    s_fine, q_fine = search_mod._patch_sums_fine(hm, o, plan)
    torch.testing.assert_close(s_rows, s_fine, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(q_rows, q_fine, rtol=1e-10, atol=1e-12)
    assert s_fine[2:].abs().amax() > 1  # not a vacuous comparison of empty patches
    obs = o.view(3, 20, 2)
    torch.testing.assert_close(latent_search(hm.view(3, 20, size, size), obs, cfg),
                               latent_search(hm.view(3, 20, size, size), obs, cfg, impl="fine"))


def test_decode_encode_round_trip_below_half_a_pixel():
    torch.manual_seed(2)
    pts = torch.rand(4, 68, 2) * 13 + 1
    assert ((decode(gaussian_heatmaps(pts, (16, 16), 1.0)) - pts).abs() <= 0.5).all()


def test_bad_shapes_are_a_clear_error():
    with pytest.raises(ValueError, match="disagree"):
        latent_search(torch.zeros(1, 2, 8, 8), torch.zeros(1, 3, 2))
    with pytest.raises(ValueError, match="lam"):
        SearchConfig(lam=-1)


def test_blocks_are_equal_and_cover_every_landmark_once():
    """max(1, n // block) blocks of equal size (the last one possibly shorter), each under 2 block."""
    for n, block in ((4352, 512), (54400, 512), (10, 512), (1023, 512), (1024, 512), (7, 3), (5, 1)):
        starts = search_mod._blocks(n, block)
        assert len(starts) == max(1, n // block)
        sizes = [min(starts.step, n - j) for j in starts]
        assert sum(sizes) == n and max(sizes) < 2 * block and max(sizes) - min(sizes) < len(starts)
    assert list(search_mod._blocks(4352, 512)) == list(range(0, 4352, 544))


def test_chunks_and_blocks_give_the_same_labels_as_one_pass(monkeypatch):
    torch.manual_seed(3)
    hm = torch.rand(7, 5, 16, 16) ** 3
    obs = torch.rand(7, 5, 2) * 14
    whole = latent_search(hm, obs, SearchConfig(chunk=100), return_cost=True)
    for chunk, block in ((1, 512), (3, 512), (100, 7), (3, 1)):
        monkeypatch.setattr(search_mod, "BLOCK", block)
        part = latent_search(hm, obs, SearchConfig(chunk=chunk), return_cost=True)
        torch.testing.assert_close(part[0], whole[0], rtol=0, atol=0)
        # the costs agree to float32 rounding (matrix products of another width may sum in another order)
        torch.testing.assert_close(part[1], whole[1], rtol=1e-6, atol=1e-5)


def test_reused_buffers_carry_nothing_from_block_to_block(monkeypatch):
    """The row-wise path reuses its buffers from block to block: with every fresh buffer filled with
    NaN (what an uninitialised buffer may hold) and blocks of several sizes (reallocation at the short
    last chunk), labels and costs still equal the fine-grid path's, which keeps no buffers; windows
    reach over the border (the padded copy's zero border) and heatmaps have negative values."""
    empty = torch.empty

    def nan_empty(*args, **kwargs):
        t = empty(*args, **kwargs)
        return t.fill_(float("nan") if t.is_floating_point() else 1)

    torch.manual_seed(13)
    hm = (torch.rand(7, 5, 16, 16, dtype=torch.float64) ** 3 - 0.1)
    obs = torch.rand(7, 5, 2, dtype=torch.float64) * 22 - 3
    cfg = SearchConfig(chunk=3)
    ref = latent_search(hm, obs, cfg, return_cost=True, impl="fine")
    monkeypatch.setattr(torch, "empty", nan_empty)
    for block in (4, 7, 512):
        monkeypatch.setattr(search_mod, "BLOCK", block)
        y, cost = latent_search(hm, obs, cfg, return_cost=True)
        torch.testing.assert_close(cost, ref[1], rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(y, ref[0], rtol=0, atol=0)


@pytest.mark.parametrize("impl", ["auto", "fine"])
def test_channels_last_and_float32_heatmaps_are_read_as_they_are(impl):
    """A channels-last network returns (N, K, H, W) heatmaps with NHWC strides, and the search may run in
    float64 on float32 maps: the one copy the search makes reads any layout and dtype, same labels and costs."""
    torch.manual_seed(14)
    hm = torch.rand(6, 5, 16, 16) ** 3
    obs = torch.rand(6, 5, 2, dtype=torch.float64) * 14
    nhwc = hm.contiguous(memory_format=torch.channels_last)
    assert not nhwc.is_contiguous()
    cfg = SearchConfig(chunk=4)
    y, cost = latent_search(hm.double(), obs, cfg, return_cost=True, impl=impl)
    y1, cost1 = latent_search(nhwc.double(), obs, cfg, return_cost=True, impl=impl)
    torch.testing.assert_close(y1, y, rtol=0, atol=0)
    torch.testing.assert_close(cost1, cost, rtol=0, atol=0)
    torch.testing.assert_close(latent_search(nhwc, obs.float(), cfg, impl=impl),
                               latent_search(hm, obs.float(), cfg, impl=impl), rtol=0, atol=0)


def test_paper_size_window_on_64x64_maps_equals_the_reference():
    """The paper's 17x17 window (radius 8) on 64x64 heatmaps, including a landmark near the border."""
    torch.manual_seed(4)
    pts = torch.tensor([[[30.0, 20.0], [2.0, 61.0]]])
    hm = gaussian_heatmaps(pts, (64, 64), 1.0) + 0.02 * torch.rand(1, 2, 64, 64)
    obs = pts + torch.tensor([[[5.0, -3.0], [-4.0, 2.0]]])
    cfg = SearchConfig(sigma_prior=3.0, lam=1.0, window_radius=8, sigma_e=1.0, patch_radius=3, subpixel=1)
    y = latent_search(hm.double(), obs.double(), cfg)
    torch.testing.assert_close(y, _brute_force(hm, obs.double(), cfg))
    assert (y - obs).abs().amax() > 2  # the likelihood pulled the labels toward the peaks


def _peak_mib(fn) -> float:
    """Peak resident memory (MiB) that ``fn`` adds to this process (Linux VmHWM after a reset)."""
    import gc
    from pathlib import Path

    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")
    base = int(Path("/proc/self/statm").read_text().split()[1]) * 4096
    fn()
    hwm = next(int(ln.split()[1]) * 1024 for ln in Path("/proc/self/status").read_text().splitlines()
               if ln.startswith("VmHWM:"))
    return (hwm - base) / 2 ** 20


def test_peak_memory_is_bounded_by_the_block_not_the_set(monkeypatch):
    import os

    if not os.path.exists("/proc/self/clear_refs") or not os.access("/proc/self/clear_refs", os.W_OK):
        pytest.skip("needs Linux /proc/self/clear_refs to reset the peak RSS")
    torch.manual_seed(5)
    small, large = torch.rand(32, 16, 16, 16), torch.rand(256, 16, 16, 16)
    obs_s, obs_l = torch.rand(32, 16, 2) * 15, torch.rand(256, 16, 2) * 15
    cfg = SearchConfig(chunk=16)
    latent_search(small, obs_s, cfg)  # warm-up (lazy initialisation, allocator)
    p_small = _peak_mib(lambda: latent_search(small, obs_s, cfg))
    p_large = _peak_mib(lambda: latent_search(large, obs_l, cfg))
    huge, obs_h = torch.cat([large, large]), torch.cat([obs_l, obs_l])
    monkeypatch.setattr(search_mod, "BLOCK", 10 ** 9)
    p_whole = _peak_mib(lambda: latent_search(huge, obs_h, SearchConfig(chunk=512)))
    assert p_whole > 40, p_whole  # without blocks the intermediates grow with the set (16x the images: ~75 MiB)...
    assert p_large < 1.5 * p_small + 4, (p_small, p_large)  # ... with them they do not
    assert p_whole > 3 * p_large, (p_large, p_whole)
