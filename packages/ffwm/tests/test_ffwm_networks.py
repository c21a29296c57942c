"""Shapes, ranges, the WAM wiring, identity-flow pass-through and gradients of every network."""

import pytest
import torch
from torch import nn

from ffwm.model import FFWM
from ffwm.networks import (
    FFWMGenerator,
    FlowNet,
    LightCNN29,
    MSDiscriminator,
    VGG19Features,
    WarpAttentionModule,
    rgb_to_gray,
)
from ffwm.ops import base_grid, hflip


def test_flownet_outputs_absolute_grids_at_three_scales():
    net = FlowNet(64, ngf=4)
    grids = net(torch.rand(2, 3, 64, 64))
    assert [tuple(g.shape) for g in grids] == [(2, 16, 16, 2), (2, 32, 32, 2), (2, 64, 64, 2)]
    assert all(g.abs().max() < 1 for g in grids)  # tanh heads
    assert net.enc_widths[-1] == 4 * 16 and len(net.down) == 5  # 64 -> 2x2 at 16 ngf


def test_flownet_128_has_the_official_layout():
    net = FlowNet(128, ngf=8)
    assert len(net.down) == 6 and net.enc_widths == [8, 16, 16, 32, 64, 64, 128]
    # decoder widths ngf/4, ngf/2, ngf at S, S/2, S/4; encoder skips only below S/4
    assert [net.inter[str(k)][0].out_channels for k in range(6)] == [2, 4, 8, 16, 32, 64]
    assert net.inter["2"][0].in_channels == 8 + 2 and net.inter["3"][0].in_channels == 32 + 16 + 2


def test_generator_shapes_and_ranges():
    g = FFWMGenerator(64, ngf=8)
    grids = [base_grid(s, s, batch=2) for s in (16, 32, 64)]
    imgs, att = g(torch.rand(2, 3, 64, 64), grids)
    assert [tuple(i.shape) for i in imgs] == [(2, 3, 16, 16), (2, 3, 32, 32), (2, 3, 64, 64)]
    assert all(0 <= i.min() and i.max() <= 1 for i in imgs)
    assert [tuple(a.shape) for a in att] == [(2, 32, 16, 16), (2, 16, 32, 32), (2, 16, 64, 64)]
    # the official decoder widths: 2 ngf + 4 ngf at S/4, then ngf + 2 ngf + 3 (previous image) at S/2 and S
    assert [r[0].body[0].in_channels for r in g.dres] == [16 + 32, 8 + 16 + 3, 8 + 16 + 3]


def test_generator_needs_flows_unless_plain_skips():
    with pytest.raises(ValueError, match="flows"):
        FFWMGenerator(32, ngf=4)(torch.rand(1, 3, 32, 32))
    for skip in ("unet", "none"):
        imgs, att = FFWMGenerator(32, ngf=4, skip=skip)(torch.rand(1, 3, 32, 32))
        assert imgs[-1].shape == (1, 3, 32, 32) and att is None
    with pytest.raises(ValueError, match="skip"):
        FFWMGenerator(32, ngf=4, skip="wrong")


def test_wam_with_identity_flow_and_unit_attention_passes_features_through():
    wam = WarpAttentionModule(5, flip=True, attention=False)
    f = torch.randn(2, 5, 8, 8)
    out, att = wam(f, base_grid(8, 8, batch=2))
    assert att is None and torch.allclose(out[:, :5], f, atol=1e-6) and torch.allclose(out[:, 5:], hflip(f), atol=1e-6)


def test_wam_warps_with_the_flow_and_gates_with_sigmoid_attention():
    torch.manual_seed(0)
    wam = WarpAttentionModule(3, flip=True, attention=True).eval()
    f = torch.randn(1, 3, 8, 8)
    g = base_grid(8, 8).clone()
    g[..., 0] = -g[..., 0]  # a mirror flow: warped = flip(f)
    out, att = wam(f, g)
    warped = torch.cat([hflip(f), f], 1)
    assert torch.allclose(out, warped * att, atol=1e-5)
    assert att.shape == warped.shape and 0 < att.min() and att.max() < 1


def test_wam_of_a_symmetric_feature_equals_its_flip():
    f = torch.randn(1, 4, 6, 3)
    f = torch.cat([f, hflip(f)], -1)  # left-right symmetric
    out, _ = WarpAttentionModule(4, flip=True, attention=False)(f, base_grid(6, 6))
    assert torch.allclose(out[:, :4], out[:, 4:], atol=1e-6)


def test_noflip_wam_has_half_the_channels():
    g = FFWMGenerator(32, ngf=4, skip="noflip")
    assert g.wams[0].out_channels == 8 and FFWMGenerator(32, ngf=4).wams[0].out_channels == 16


def test_generator_uses_the_flows():
    torch.manual_seed(0)
    g = FFWMGenerator(32, ngf=4).eval()
    x = torch.rand(1, 3, 32, 32)
    ident = [base_grid(s, s) for s in (8, 16, 32)]
    shifted = [gg.flip(2) for gg in ident]
    assert not torch.allclose(g(x, ident)[0][-1], g(x, shifted)[0][-1])


def test_spectral_norm_keeps_sigma_near_one():
    torch.manual_seed(0)
    d = MSDiscriminator(32, ndf=8)
    d.train()
    for _ in range(30):
        d(torch.rand(2, 3, 32, 32))
    conv = d.nets[0][0][0][0]
    w = conv.weight.detach().reshape(conv.weight.shape[0], -1)
    assert torch.linalg.matrix_norm(w, ord=2).item() == pytest.approx(1.0, abs=0.05)


def test_discriminator_scales_and_output():
    d = MSDiscriminator(64, ndf=4)
    assert d.num_scales == 2  # official: ceil(log2(64 / 16)) = 2 -> 64, 32
    assert d(torch.rand(2, 3, 64, 64)).shape == (2, 1, 8, 8)
    assert MSDiscriminator(128, ndf=4).num_scales == 3
    assert d.nets[0][0][0][0].kernel_size == (3, 3) and not hasattr(d.nets[0][1], "parametrizations")


def test_vgg19_layout_matches_torchvision_indices():
    import torchvision

    ours = VGG19Features(width=1.0)
    ref = torchvision.models.vgg19(weights=None).features[:30]
    assert [type(m) for m in ours.features] == [type(m) for m in ref]
    ours.features.load_state_dict(ref.state_dict())
    x = torch.rand(1, 3, 32, 32)
    feats = ours(x)
    h = x  # the official perceptual loss feeds [0, 1] images, not ImageNet-normalised ones
    for i, layer in enumerate(ref):
        h = layer(h)
        if i == 29:
            assert torch.allclose(feats[-1], h, atol=1e-5)
    assert [f.shape[1] for f in feats] == [64, 128, 256, 512, 512]


def test_lightcnn29_shapes_and_gray():
    net = LightCNN29(width=0.25, image_size=32, num_classes=7)
    logits, fc, pooled = net(torch.rand(3, 1, 64, 64))
    assert logits.shape == (3, 7) and fc.shape == (3, 64) and pooled.shape == (3, 32, 2, 2)
    full = LightCNN29()
    assert full.fc.filter.in_features == 8 * 8 * 128 and full.fc_dim == 256
    x = torch.rand(2, 3, 4, 4)
    assert torch.allclose(rgb_to_gray(x)[:, 0], (x[:, 0] + x[:, 1] + x[:, 2]) / 3)  # official: channel mean


def _grad_check(module: nn.Module, loss: torch.Tensor):
    loss.backward()
    missing = [n for n, p in module.named_parameters() if p.requires_grad and (p.grad is None or p.grad.abs().sum() == 0)]
    assert not missing, missing


@pytest.mark.parametrize("skip", ["wam", "noflip", "noatt", "unet", "none"])
def test_every_generator_parameter_gets_a_gradient(skip):
    torch.manual_seed(0)
    g = FFWMGenerator(32, ngf=4, skip=skip)
    grids = [base_grid(s, s, batch=2) + 0.01 * torch.randn(2, s, s, 2) for s in (8, 16, 32)]
    imgs, _ = g(torch.rand(2, 3, 32, 32), grids)
    _grad_check(g, sum(i.mean() for i in imgs))


def test_every_flownet_and_discriminator_parameter_gets_a_gradient():
    torch.manual_seed(0)
    f = FlowNet(32, ngf=2)
    _grad_check(f, sum((g ** 2).mean() for g in f(torch.rand(2, 3, 32, 32))))
    d = MSDiscriminator(32, ndf=4)
    _grad_check(d, d(torch.rand(2, 3, 32, 32)).mean())


def test_ffwm_container_parameter_groups():
    m = FFWM(32, ngf=4, ndf=4, flow_ngf=2)
    n_all = sum(p.numel() for p in m.parameters())
    n_groups = sum(p.numel() for p in m.generator_parameters() + m.flow_parameters()) + \
        sum(p.numel() for p in m.discriminator.parameters())
    assert n_all == n_groups
