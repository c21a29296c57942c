"""DePatch invariants with exact expectations: fixed-patch equivalence at init, the sampler against a
hand-computed bilinear interpolation, the official decode bounds, gradients into the predictor."""

import math

import pytest
import torch

torch.set_num_threads(1)  # the suite shares 2 cores; tiny tensors gain nothing from threads
import torch.nn.functional as F

from depatch import DEFAULT_SIZE_BIAS, DePatchEmbed, bilinear_sample, box_points, decode_boxes, patch_anchors

# 3 sample points per axis at init sit on pixel 0, the midpoint, and pixel 1 of the 2x2 patch
_AXIS = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]], dtype=torch.float64)


def _naive_bilinear(x, px, py):
    """Hand-computed bilinear value of x (C, H, W) at normalised (px, py), zero outside the image."""
    C, H, W = x.shape
    u, v = px * W - 0.5, py * H - 0.5
    x0, y0 = math.floor(u), math.floor(v)
    out = torch.zeros(C, dtype=x.dtype)
    for yy, wy in ((y0, 1 - (v - y0)), (y0 + 1, v - y0)):
        for xx, wx in ((x0, 1 - (u - x0)), (x0 + 1, u - x0)):
            if 0 <= yy < H and 0 <= xx < W:
                out += wy * wx * x[:, yy, xx]
    return out


def _equivalent_conv(m: DePatchEmbed, x):
    """The fixed 2x2/s2 patch embedding DePatch must equal at init: kernel = W_proj . S."""
    k, C, D = m.num_points, m.in_chans, m.embed_dim
    w = m.output_proj.weight.double().reshape(D, k, k, C)  # official order: x index, y index, channel
    kernel = torch.einsum("dxyc,xb,ya->dcab", w, _AXIS, _AXIS)
    y = F.conv2d(x.double(), kernel, m.output_proj.bias.double(), stride=2)
    return F.layer_norm(y.flatten(2).transpose(1, 2), (D,), m.norm.weight.double(), m.norm.bias.double(), m.norm.eps)


@pytest.mark.parametrize("hw", [(8, 8), (6, 10), (7, 9), (5, 4)])
def test_init_equals_fixed_patch_embedding(hw):
    torch.manual_seed(0)
    m = DePatchEmbed(5, 12)
    torch.nn.init.normal_(m.output_proj.bias)
    x = torch.randn(3, 5, *hw)
    out, (h, w) = m(x)
    assert (h, w) == (hw[0] // 2, hw[1] // 2)
    ref = _equivalent_conv(m, x)
    torch.testing.assert_close(out.double(), ref, atol=2e-5, rtol=1e-5)


def test_init_boxes_are_the_pixel_centres_of_the_fixed_patch():
    m = DePatchEmbed(2, 4)
    x = torch.randn(1, 2, 6, 8)
    _, (h, w), boxes = m(x, return_boxes=True)
    # patch (i, j) covers pixels 2j, 2j+1 (x) and 2i, 2i+1 (y); centres at 2j+0.5 .. 2j+1.5 (edge coords)
    j, i = torch.meshgrid(torch.arange(w), torch.arange(h), indexing="xy")
    expect = torch.stack([(2 * j + 0.5) / 8, (2 * i + 0.5) / 6, (2 * j + 1.5) / 8, (2 * i + 1.5) / 6], -1)
    torch.testing.assert_close(boxes[0], expect.reshape(-1, 4).float(), atol=1e-6, rtol=0)
    assert math.tanh(DEFAULT_SIZE_BIAS) == pytest.approx(0.25)  # official wh_bias = log(sqrt(5/3))


def test_corner_samples_are_raw_pixels_at_init():
    m = DePatchEmbed(3, 4)
    x = torch.randn(2, 3, 4, 6)
    feat, (h, w) = m.patch_embed(x)
    codes = m.offset_predictor(m.act(feat))
    assert torch.count_nonzero(codes) == 0  # zero-initialised predictor
    anchors, stride = patch_anchors((h, w), (4, 6), 2)
    pts = box_points(decode_boxes(codes, m.wh_bias, anchors, stride), 3)  # (B, N, 9, 2)
    s = bilinear_sample(x, pts.reshape(2, -1, 2)).reshape(2, h, w, 3, 3, 3)  # (B, h, w, ix, iy, C)
    patches = x.unfold(2, 2, 2).unfold(3, 2, 2)  # (B, C, h, w, 2(y), 2(x))
    for ix, px in ((0, 0), (2, 1)):
        for iy, py in ((0, 0), (2, 1)):
            torch.testing.assert_close(s[:, :, :, ix, iy], patches[..., py, px].permute(0, 2, 3, 1), atol=1e-6, rtol=0)
    centre = patches.mean(dim=(-1, -2)).permute(0, 2, 3, 1)
    torch.testing.assert_close(s[:, :, :, 1, 1], centre, atol=1e-6, rtol=0)


def test_sampler_matches_hand_computed_bilinear_at_random_points():
    torch.manual_seed(1)
    x = torch.randn(2, 3, 5, 7, dtype=torch.float64)
    pts = torch.rand(2, 40, 2, dtype=torch.float64) * 1.2 - 0.1  # some points fall outside (zero padding)
    out = bilinear_sample(x, pts)
    for b in range(2):
        for n in range(40):
            torch.testing.assert_close(out[b, n], _naive_bilinear(x[b], float(pts[b, n, 0]), float(pts[b, n, 1])))


def test_depatch_with_random_offsets_matches_hand_computation():
    """The whole module at a random (non-zero) predictor: decode by the official formulas, sample
    by hand, project, normalise."""
    torch.manual_seed(2)
    m = DePatchEmbed(2, 6).double()
    torch.nn.init.normal_(m.offset_predictor.weight, std=2.0)
    x = torch.randn(1, 2, 6, 4, dtype=torch.float64)
    with torch.no_grad():
        out, (h, w), boxes = m(x, return_boxes=True)
        feat, _ = m.patch_embed(x)
        codes = m.offset_predictor(F.gelu(feat))[0]
    assert codes.abs().max() > 0.5  # the offsets are really non-trivial
    H, W = 6, 4
    rows = []
    for n in range(h * w):
        i, j = divmod(n, w)
        cx, cy = (2 * j + 1) / W, (2 * i + 1) / H
        sx, sy = 2 / W, 2 / H
        tx, ty, tw, th = codes[n].tolist()
        ccx, ccy = cx + math.tanh(tx) * sx, cy + math.tanh(ty) * sy
        hw_ = max(0.0, math.tanh(tw + float(m.wh_bias[0].detach()))) * sx
        hh_ = max(0.0, math.tanh(th + float(m.wh_bias[1].detach()))) * sy
        x1, y1 = min(max(ccx - hw_, 0), 1), min(max(ccy - hh_, 0), 1)
        x2, y2 = min(max(ccx + hw_, 0), 1), min(max(ccy + hh_, 0), 1)
        torch.testing.assert_close(boxes[0, n], torch.tensor([x1, y1, x2, y2], dtype=torch.float64))
        vals = [_naive_bilinear(x[0], x1 + (x2 - x1) * a / 2, y1 + (y2 - y1) * c / 2) for a in range(3) for c in range(3)]
        rows.append(torch.cat(vals))
    ref = F.layer_norm(m.output_proj(torch.stack(rows)), (6,), m.norm.weight, m.norm.bias, m.norm.eps)
    torch.testing.assert_close(out[0], ref.detach())


def test_decode_bounds_hold_for_any_prediction():
    torch.manual_seed(3)
    h, w, H, W = 5, 7, 10, 14
    anchors, stride = patch_anchors((h, w), (H, W), 2)
    codes = torch.randn(4, h * w, 4) * 10
    bias = torch.randn(2) * 3
    boxes = decode_boxes(codes, bias, anchors, stride)
    assert boxes.min() >= 0 and boxes.max() <= 1
    assert (boxes[..., 2:] >= boxes[..., :2]).all()
    # before clamping, the centre moves by at most one stride and the half-size lies in [0, 1] stride
    centre = anchors + torch.tanh(codes[..., :2]) * stride
    half = F.relu(torch.tanh(codes[..., 2:] + bias)) * stride
    assert ((centre - anchors).abs() <= stride + 1e-7).all()
    assert (half >= 0).all() and (half <= stride + 1e-7).all()
    unclamped = torch.cat([centre - half, centre + half], -1)
    inside = ((unclamped >= 0) & (unclamped <= 1)).all(-1)
    torch.testing.assert_close(boxes[inside], unclamped[inside])
    # every box stays within its own 2-stride neighbourhood of the anchor
    lo, hi = anchors - 2 * stride, anchors + 2 * stride
    assert (boxes[..., :2] >= lo - 1e-6).all() and (boxes[..., 2:] <= hi + 1e-6).all()
    pts = box_points(boxes, 3)
    assert pts.shape == (4, h * w, 9, 2)


def test_gradients_reach_the_offset_and_size_predictor_from_zero_init():
    torch.manual_seed(4)
    m = DePatchEmbed(4, 8)
    x = torch.randn(2, 4, 8, 8)
    out, _ = m(x)
    (out * torch.randn_like(out)).sum().backward()
    for name in ("offset_predictor.weight", "box_coder.wh_bias", "output_proj.weight", "output_proj.bias", "norm.weight"):
        assert m.get_parameter(name).grad.abs().min() > 0, name  # every entry moves at the first step
    # the predictor's feature layers sit behind the zero linear layer: exactly zero gradient at init ...
    assert m.patch_embed.proj.weight.grad.abs().max() == 0
    # ... and a non-zero one as soon as the predictor has moved
    with torch.no_grad():
        m.offset_predictor.weight -= 0.1 * m.offset_predictor.weight.grad
    m.zero_grad()
    out, _ = m(x)
    (out * torch.randn_like(out)).sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_depatch_runs_in_float32_under_autocast_and_rejects_bad_input():
    m = DePatchEmbed(3, 8)
    x = torch.randn(1, 3, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = m(x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, m(x)[0])
    with pytest.raises(ValueError, match=r"expects \(B, 3, H, W\)"):
        m(torch.randn(1, 4, 8, 8))
    with pytest.raises(ValueError, match="points"):
        bilinear_sample(x, torch.rand(1, 5, 3))


def test_offsets_only_keeps_the_initial_box_size_and_moves_the_centre():
    """The paper's 'offsets only' ablation: the predictor gives a shift; every box keeps the initial
    half-size tanh(b0) stride, a constant (not a learned parameter)."""
    torch.manual_seed(5)
    full, off = DePatchEmbed(3, 8), DePatchEmbed(3, 8, predict_size=False)
    assert off.offset_predictor.weight.shape == (2, 8) and not off.wh_bias.requires_grad
    assert "box_coder.wh_bias" in dict(off.named_buffers()) and off.initial_size_bias == DEFAULT_SIZE_BIAS
    shared = {k: v for k, v in full.state_dict().items() if not k.startswith(("offset_predictor", "box_coder"))}
    off.load_state_dict({**off.state_dict(), **shared})
    x = torch.randn(2, 3, 8, 10)
    torch.testing.assert_close(off(x)[0], full(x)[0])  # identical at init
    torch.nn.init.normal_(off.offset_predictor.weight, std=3.0)
    with torch.no_grad():
        _, (h, w), boxes = off(x, return_boxes=True)
        codes = off.offset_predictor(off.act(off.patch_embed(x)[0]))
    anchors, stride = patch_anchors((h, w), (8, 10), 2)
    centre = anchors + torch.tanh(codes) * stride
    half = 0.25 * stride
    expect = torch.cat([centre - half, centre + half], -1).clamp(0, 1)
    torch.testing.assert_close(boxes, expect)
    assert ((centre - anchors).abs() / stride).max() > 0.5  # the centres really moved
    with pytest.raises(ValueError, match="at least 2"):
        DePatchEmbed(3, 8, num_points=1)
    with torch.no_grad():  # only the shift is predicted: no gradient path can resize a box
        off.offset_predictor.weight.zero_()
    out, _ = off(x)
    out.sum().backward()
    assert off.offset_predictor.weight.grad.abs().sum() > 0
