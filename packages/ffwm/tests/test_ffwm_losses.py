"""Loss terms, their weights and their wiring in the two training steps."""

import math

import pytest
import torch
import torch.nn.functional as F

from ffwm.losses import (
    IBUG68_PARTS,
    correctness_loss,
    crop_patches,
    facial_part_centres,
    facial_part_loss,
    identity_loss,
    illumination_preserving_loss,
    landmark_loss,
    lsgan_loss,
    masked_l1,
    perceptual_loss,
    pyramid,
)
from ffwm.model import (FFWM, FlowLossConfig, GenLossConfig, discriminator_step_loss, flow_step_loss, generator_forward,
                        generator_loss, gt_pyramid)
from ffwm.networks import LightCNN29, VGG19Features, rgb_to_gray
from ffwm.ops import base_grid, guided_filter, warp


def test_pyramid_is_area_downsampling_coarse_to_fine():
    x = torch.rand(1, 3, 16, 16)
    p = pyramid(x)
    assert [t.shape[-1] for t in p] == [4, 8, 16] and torch.equal(p[-1], x)
    assert torch.allclose(p[1][0, :, 0, 0], x[0, :, :2, :2].mean((1, 2)))


def test_masked_l1_counts_only_masked_pixels():
    x, y = torch.zeros(1, 3, 2, 2), torch.ones(1, 3, 2, 2)
    m = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    assert masked_l1(x, y, m).item() == pytest.approx(0.25)
    assert masked_l1(x, y).item() == 1.0


def test_lsgan_targets():
    p = torch.tensor([0.2, 0.9])
    assert lsgan_loss(p, True).item() == pytest.approx(((0.8 ** 2) + (0.1 ** 2)) / 2)
    assert lsgan_loss(p, False).item() == pytest.approx(((0.2 ** 2) + (0.9 ** 2)) / 2)


def test_perceptual_loss_layer_weights_and_no_target_gradient():
    torch.manual_seed(0)
    vgg = VGG19Features(width=0.0625).eval()
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    y = torch.rand(2, 3, 32, 32, requires_grad=True)
    loss = perceptual_loss(vgg, x, y)
    fx, fy = vgg(x), vgg(y)
    expect = sum(w * F.l1_loss(a, b) for w, a, b in zip((1, 0.5, 0.25, 0.25, 0.125), fx, fy))
    assert loss.item() == pytest.approx(expect.item(), rel=1e-6)
    loss.backward()
    assert x.grad is not None and y.grad is None


def test_facial_part_crops_are_centred_on_the_parts():
    img = torch.zeros(1, 1, 32, 32)
    img[0, 0, 10, 20] = 1.0  # a dot at x = 20, y = 10
    patch = crop_patches(img, torch.tensor([[[20.0, 10.0]]]), 5)
    assert patch.shape == (1, 1, 5, 5) and patch[0, 0, 2, 2] == 1.0 and patch.sum() == 1.0
    lm = torch.zeros(1, 68, 2)
    lm[0, 36:42] = torch.tensor([3.0, 4.0])
    lm[0, 48:68, 0] = torch.linspace(10.0, 20.0, 20) ** 2 / 20  # skewed: bbox centre != mean
    lm[0, 30] = torch.tensor([7.0, 9.0])
    c = facial_part_centres(lm)
    assert list(IBUG68_PARTS) == ["right_eye", "left_eye", "nose", "mouth"]
    assert torch.equal(c[0, 0], torch.tensor([3.0, 4.0])) and torch.equal(c[0, 2], torch.tensor([7.0, 9.0]))
    assert c[0, 3, 0].item() == pytest.approx((5.0 + 20.0) / 2)  # official mouth centre: (min + max) / 2


def test_facial_part_loss_weights_each_part():
    torch.manual_seed(0)
    vgg = VGG19Features(width=0.0625).eval()
    x, y = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    centres = torch.tensor([[[8.0, 8.0], [24.0, 8.0], [16.0, 16.0], [16.0, 24.0]]]).expand(2, 4, 2)
    per = [perceptual_loss(vgg, crop_patches(x, centres[:, k:k + 1], 8), crop_patches(y, centres[:, k:k + 1], 8))
           for k in range(4)]
    got = facial_part_loss(vgg, x, y, centres, 8, (2.0, 2.0, 1.0, 1.0))
    assert got.item() == pytest.approx((2 * per[0] + 2 * per[1] + per[2] + per[3]).item(), rel=1e-5)


def test_identity_loss_is_fc_plus_pooled_l1_on_gray():
    torch.manual_seed(0)
    net = LightCNN29(width=0.125, image_size=32).eval()
    x, y = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    _, fx, px = net(rgb_to_gray(x))
    _, fy, py = net(rgb_to_gray(y))
    assert identity_loss(net, x, y).item() == pytest.approx((F.l1_loss(fx, fy) + F.l1_loss(px, py)).item(), rel=1e-6)
    assert identity_loss(net, x, x).item() == 0.0


def test_illumination_preserving_loss_warps_back_with_b_and_compares_to_the_profile():
    torch.manual_seed(0)
    prof = torch.rand(2, 3, 16, 16)
    mask = (torch.rand(2, 1, 16, 16) > 0.3).float()
    mask[..., -1] = 0  # the last column has no source pixel after the shift
    out = torch.roll(prof, 1, dims=-1)  # an output = the profile moved right by one pixel
    shift = base_grid(16, 16, batch=2).clone()
    shift[..., 0] += 2 / 16  # B: profile pixel j comes from output pixel j + 1
    assert illumination_preserving_loss([out], [shift], prof, mask, [1.0]).item() < 1e-6
    assert illumination_preserving_loss([out], [base_grid(16, 16, batch=2)], prof, mask, [1.0]).item() > 0.05
    assert illumination_preserving_loss([out], [shift], torch.rand_like(prof), mask, [1.0]).item() > 0.05
    # multi-scale: the profile resized bilinearly (align_corners=True), the mask nearest, weighted per scale
    outs = pyramid(torch.rand(2, 3, 16, 16))
    grids = [base_grid(s, s, batch=2) + 0.1 * torch.randn(2, s, s, 2) for s in (4, 8, 16)]
    w = (1.5, 1.0, 1.0)
    total = illumination_preserving_loss(outs, grids, prof, mask, w)
    ps = [F.interpolate(prof, size=(s, s), mode="bilinear", align_corners=True) for s in (4, 8)] + [prof]
    ms = [F.interpolate(mask, size=(s, s), mode="nearest") for s in (4, 8)] + [mask]
    expect = sum(wi * masked_l1(warp(o, g), p, m) for wi, o, g, p, m in zip(w, outs, grids, ps, ms))
    assert total.item() == pytest.approx(expect.item())


def test_landmark_loss_is_zero_for_the_true_correspondence_and_conventions_differ():
    size = 16
    g = base_grid(size, size, batch=1).clone()
    g[..., 0] += 4 / size  # destination pixel x comes from source x + 2
    dst = torch.tensor([[[3.0, 5.0], [7.5, 2.0], [10.0, 10.0]]])
    src = dst + torch.tensor([2.0, 0.0])
    gate = torch.tensor([[True, True, True]])
    assert landmark_loss(g, dst, src, gate, size) < 1e-12
    off = landmark_loss(g, dst, src, gate, size, "official")
    assert off.item() == pytest.approx((1 / size) ** 2, rel=1e-5)  # x and y both off by 1/S
    wrong = src.clone()
    wrong[0, 2] += 3.0
    err = landmark_loss(g, dst, wrong, gate, size)
    assert err.item() == pytest.approx((3 * 2 / size) ** 2 * 2 / 6, rel=1e-5)  # mean over 3 points x 2 coords
    assert landmark_loss(g, dst, wrong, torch.tensor([[True, True, False]]), size) < 1e-12  # gated out


def test_correctness_loss_is_zero_at_the_best_match_and_positive_elsewhere():
    torch.manual_seed(0)
    f = torch.randn(1, 8, 12, 12)
    g = base_grid(12, 12)
    for sampler in ("bilinear", "gaussian"):
        ok = correctness_loss(f, f, g, sampler="bilinear")
        assert abs(ok.item()) < 1e-6
        bad = correctness_loss(f, f, g.flip(1), sampler=sampler)
        assert bad.item() > 0.1
    smooth = F.avg_pool2d(F.pad(torch.randn(1, 8, 16, 16), (2, 2, 2, 2), mode="reflect"), 5, 1)
    assert correctness_loss(smooth, smooth, base_grid(16, 16), sampler="gaussian").item() < \
        correctness_loss(smooth, smooth, base_grid(16, 16).flip(2), sampler="gaussian").item()
    mask = torch.zeros(1, 1, 12, 12)
    mask[..., :6] = 1
    half = g.clone()
    half[:, :, 6:] = g.flip(1)[:, :, 6:]  # wrong only where the mask is 0
    n = mask.sum().item()  # official masked form: (sum(m e^{-c/cmax}) - e^-1) / sum(m)
    assert correctness_loss(f, f, half, mask, sampler="bilinear").item() == pytest.approx(math.exp(-1) * (n - 1) / n, rel=1e-5)
    assert correctness_loss(f, f, g.flip(1), mask, sampler="bilinear").item() > math.exp(-1) + 0.05


# ------------------------------------------------------------------------------ step wiring


def _batch(size=32, b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    lm = torch.rand(b, 68, 2, generator=g) * (size - 8) + 4
    pts = torch.rand(b, 20, 2, generator=g) * (size - 1)
    return {"profile": torch.rand(b, 3, size, size, generator=g), "frontal": torch.rand(b, 3, size, size, generator=g),
            "mask_profile": (torch.rand(b, 1, size, size, generator=g) > 0.2).float(),
            "mask_frontal": (torch.rand(b, 1, size, size, generator=g) > 0.2).float(),
            "landmarks_frontal": lm, "pts_frontal": pts, "pts_profile": (pts + 1).clamp(max=size - 1),
            "gate": torch.rand(b, 20, generator=g) > 0.3}


def _nets(size=32):
    torch.manual_seed(0)
    model = FFWM(size, ngf=4, ndf=4, flow_ngf=2).eval()
    vgg = VGG19Features(width=0.0625).eval()
    idn = LightCNN29(width=0.125, image_size=32).eval()
    return model, vgg, idn


def _expected_generator_total(model, vgg, idn, batch, adapt):
    outs, _, _ = model.frontalize(batch["profile"])
    gts, ms = gt_pyramid(batch["frontal"], batch["mask_frontal"])
    gf = [guided_filter(o, g, max(1, round(o.shape[-1] / 4)), 1e-8) for o, g in zip(outs, gts)]
    ada = gf if adapt else outs
    w = (1.5, 1.0, 1.0)
    l1 = sum(wi * masked_l1(a, g, m) for wi, a, g, m in zip(w, ada, gts, ms))
    prc = sum(wi * perceptual_loss(vgg, a * m, g * m) for wi, a, g, m in zip(w, ada, gts, ms))
    fc = facial_part_loss(vgg, gf[-1], gts[-1], facial_part_centres(batch["landmarks_frontal"]), 8, (2, 2, 1, 1))
    iden = 0.5 * identity_loss(idn, outs[-1], batch["frontal"]) + 1.0 * identity_loss(idn, ada[-1], batch["frontal"])
    illu = illumination_preserving_loss(outs, model.flow_b(batch["profile"]), batch["profile"], batch["mask_profile"], w)
    adv = lsgan_loss(model.discriminator(gf[-1] * batch["mask_frontal"]), True)  # D always judges GF(output)
    return 5 * l1 + prc + fc + iden + 15 * illu + 0.1 * adv, gf


@pytest.mark.parametrize("seen,adapt", [(0, False), (100, True)])
def test_generator_total_is_the_official_weighted_sum_with_the_warmup(seen, adapt):
    model, vgg, idn = _nets()
    batch = _batch()
    cfg = GenLossConfig(warmup_images=100)
    with torch.no_grad():
        fwd = generator_forward(model, batch, cfg)
        total, terms = generator_loss(model, vgg, idn, batch, fwd, cfg, images_seen=seen)
        expect, gf = _expected_generator_total(model, vgg, idn, batch, adapt)
    assert terms["adapt_active"].item() == float(adapt)
    assert total.item() == pytest.approx(expect.item(), rel=1e-5)
    assert torch.allclose(fwd["fake"], gf[-1] * batch["mask_frontal"], atol=1e-6)
    assert torch.equal(fwd["real"], batch["frontal"] * batch["mask_frontal"])


def test_ipm_flags_remove_their_pathway():
    model, vgg, idn = _nets()
    batch = _batch()
    with torch.no_grad():
        full = GenLossConfig(warmup_images=0)
        fwd = generator_forward(model, batch, full)
        _, t_full = generator_loss(model, vgg, idn, batch, fwd, full, 10)
        no_pres = GenLossConfig(warmup_images=0, preserve=False)
        fwd_np = generator_forward(model, batch, no_pres)
        _, t_np = generator_loss(model, vgg, idn, batch, fwd_np, no_pres, 10)
        no_adapt = GenLossConfig(warmup_images=0, adapt=False)
        fwd_na = generator_forward(model, batch, no_adapt)
        _, t_na = generator_loss(model, vgg, idn, batch, fwd_na, no_adapt, 10)
    assert "illumination" in t_full and "illumination" not in t_np and fwd_np["back"] is None
    assert torch.allclose(fwd["fake"], fwd_np["fake"]) and not torch.allclose(fwd["fake"], fwd_na["fake"])
    assert torch.allclose(fwd_na["gf"], fwd_na["outputs"][-1])  # without adaption D judges the raw output
    assert t_na["adapt_active"].item() == 0.0


def test_generator_step_trains_g_and_both_flows_and_the_d_step_only_d():
    model, vgg, idn = _nets()
    model.train()
    batch = _batch()
    cfg = GenLossConfig(warmup_images=0)
    fwd = generator_forward(model, batch, cfg)
    d_loss = discriminator_step_loss(model.discriminator, fwd["fake"], fwd["real"])
    d_loss.backward()
    assert all(p.grad is None for p in model.generator.parameters())  # the fake is detached
    assert not [n for n, p in model.discriminator.named_parameters() if p.grad is None]
    model.zero_grad(set_to_none=True)
    model.discriminator.requires_grad_(False)
    total, _ = generator_loss(model, vgg, idn, batch, fwd, cfg, 10)
    total.backward()
    for name, p in list(model.generator.named_parameters()) + list(model.flow_f.named_parameters()):
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.flow_b.parameters())  # via the IPM
    assert all(p.grad is None for p in model.discriminator.parameters())


def test_discriminator_loss_is_half_the_sum_of_lsgan_terms():
    model, _, _ = _nets()
    fake, real = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        got = discriminator_step_loss(model.discriminator, fake, real)
        df, dr = model.discriminator(fake), model.discriminator(real)
    assert got.item() == pytest.approx(0.5 * ((df ** 2).mean() + ((dr - 1) ** 2).mean()).item(), rel=1e-6)


def test_flow_step_uses_the_right_directions_and_weights():
    model, vgg, _ = _nets()
    batch = _batch()
    cfg = FlowLossConfig()
    assert cfg.sampler == "bilinear"  # the official default
    with torch.no_grad():
        total, terms = flow_step_loss(model, vgg, batch, cfg)
        gf, gb = model.flow_f(batch["profile"]), model.flow_b(batch["profile"])
        fp, ff = vgg(batch["profile"]), vgg(batch["frontal"])
    size = 32
    lm_f = sum(w * landmark_loss(g, batch["pts_frontal"], batch["pts_profile"], batch["gate"], size)
               for g, w in zip(gf, (1500, 1000, 1000)))
    lm_b = sum(w * landmark_loss(g, batch["pts_profile"], batch["pts_frontal"], batch["gate"], size)
               for g, w in zip(gb, (1500, 1000, 1000)))
    corr_f = sum(correctness_loss(fp[k], ff[k], gf[::-1][k], batch["mask_frontal"], "bilinear") for k in range(3))
    corr_b = sum(correctness_loss(ff[k], fp[k], gb[::-1][k], batch["mask_profile"], "bilinear") for k in range(3))
    assert terms["f_landmark"].item() == pytest.approx(lm_f.item(), rel=1e-5)
    assert terms["b_landmark"].item() == pytest.approx(lm_b.item(), rel=1e-5)
    assert terms["f_correctness"].item() == pytest.approx(corr_f.item(), rel=1e-5)
    assert terms["b_correctness"].item() == pytest.approx(corr_b.item(), rel=1e-5)
    expect = sum(20 * terms[f"{d}_correctness"] + 0.01 * terms[f"{d}_affine"] + terms[f"{d}_landmark"] for d in "fb")
    assert total.item() == pytest.approx(expect.item(), rel=1e-6)
    assert terms["f_affine"].item() > 0 and not math.isclose(terms["f_landmark"].item(), terms["b_landmark"].item())
