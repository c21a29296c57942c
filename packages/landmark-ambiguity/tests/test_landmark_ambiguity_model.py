"""Hourglass and GHCU: gradients reach every parameter; GHCU repairs a blanked landmark from the face shape."""

import math

import pytest
import torch
import torch.nn.functional as F

from landmark_ambiguity.heatmaps import decode, gaussian_heatmaps, to_heatmap
from landmark_ambiguity.model import build_ghcu, build_model, list_models
from shared.data.faces import project_landmarks, sample_params


def test_registry_and_every_parameter_gets_a_gradient():
    assert {"hg2_w32", "hg4_w256"} <= set(list_models())
    m = build_model("hg2_w32", num_landmarks=5, width=8, depth=2)
    outs = m(torch.randn(2, 3, 32, 32))
    assert len(outs) == 2 and outs[-1].shape == (2, 5, 8, 8)
    sum(o.square().mean() for o in outs).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())
    g = build_ghcu(5, 8, (8, 8), 16)
    g(torch.randn(3, 5, 8, 8)).sum().backward()
    assert all(p.grad is not None for p in g.parameters())


def test_ghcu_repairs_a_landmark_whose_heatmap_is_blanked():
    torch.manual_seed(0)
    size, stride, hm = 32, 4, 8
    lm, _ = project_landmarks(sample_params(2000, seed=0, num_identities=500), size)
    pts = to_heatmap(torch.from_numpy(lm), stride)
    maps = gaussian_heatmaps(pts, (hm, hm), 1.0)
    target = (pts + 0.5) / hm
    ghcu = build_ghcu(68, hm, (32,), 64)
    opt = torch.optim.Adam(ghcu.parameters(), 3e-3)
    gen = torch.Generator().manual_seed(0)
    for step in range(200):
        idx = torch.randint(0, 1600, (32,), generator=gen)
        drop = torch.rand(32, 68, generator=gen) < 0.15
        loss = F.mse_loss(ghcu(maps[idx] * (~drop)[..., None, None]), target[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    ghcu.eval()
    test = maps[1600:].clone()
    k = 8  # chin
    test[:, k] = 0
    with torch.no_grad():
        fixed = ghcu(test) * hm - 0.5
    err_ghcu = (fixed[:, k] - pts[1600:, k]).norm(dim=-1).mean()
    err_argmax = (decode(test)[:, k] - pts[1600:, k]).norm(dim=-1).mean()
    assert err_argmax > 3  # a blank heatmap decodes to its corner
    assert err_ghcu < 1.0, err_ghcu  # the face shape pins the chin to within a heatmap pixel


def test_coordinate_conventions_have_exact_known_values():
    from landmark_ambiguity.heatmaps import from_unit, to_image, to_unit

    # stride 4: the centre of heatmap cell 0 covers image pixels 0..3, whose centre is x = 1.5
    pts = torch.tensor([[[1.5, 5.5], [-0.5, 63.5]]], dtype=torch.float64)
    torch.testing.assert_close(to_heatmap(pts, 4), torch.tensor([[[0.0, 1.0], [-0.5, 15.5]]], dtype=torch.float64))  # image edges -> map edges
    torch.testing.assert_close(to_heatmap(pts, 2), torch.tensor([[[0.5, 2.5], [-0.5, 31.5]]], dtype=torch.float64))
    torch.testing.assert_close(to_image(to_heatmap(pts, 4), 4), pts)
    # GHCU units: (x_hm + 0.5) / W, (y_hm + 0.5) / H; cell 0's centre is 0.5 / W, the map's bottom edge is 1
    hm = torch.tensor([[[0.0, 7.5], [-0.5, 7.0]]], dtype=torch.float64)  # (x, y) on an 8 x 16 map
    torch.testing.assert_close(to_unit(hm, (8, 16)), torch.tensor([[[1 / 32, 1.0], [0.0, 7.5 / 8]]], dtype=torch.float64))
    torch.testing.assert_close(from_unit(to_unit(hm, (8, 16)), (8, 16)), hm)


def test_ghcu_predict_decodes_its_units_exactly():
    """A GHCU that outputs the unit coordinates of known points must give those points back in image px."""
    from landmark_ambiguity.heatmaps import to_unit
    from landmark_ambiguity.train import ghcu_predict

    pts = torch.tensor([[[10.0, 20.0], [33.5, 2.25]]])
    unit = to_unit(to_heatmap(pts, 4), (16, 16))

    class Fixed(torch.nn.Module):
        def forward(self, x):
            return unit.expand(len(x), -1, -1)

    torch.testing.assert_close(ghcu_predict(Fixed(), torch.zeros(3, 2, 16, 16), 4, "cpu"), pts.expand(3, -1, -1))


def test_ghcu_output_is_centred_on_the_heatmap():
    """With zero weights in its last layer the GHCU predicts the heatmap centre (the +0.5 offset)."""
    g = build_ghcu(3, 8, (8,), 16)
    torch.nn.init.zeros_(g.mlp[-1].weight)
    torch.nn.init.zeros_(g.mlp[-1].bias)
    torch.testing.assert_close(g(torch.rand(2, 3, 8, 8)), torch.full((2, 3, 2), 0.5))


def test_heatmap_target_peaks_exactly_at_the_label():
    pts = torch.tensor([[[3.0, 5.0], [2.25, 4.5]]], dtype=torch.float64)
    hm = gaussian_heatmaps(pts, (8, 8), 1.5)
    assert hm[0, 0, 5, 3] == 1.0 and hm[0, 0].argmax() == 5 * 8 + 3
    # separable Gaussian with the given sigma: value one cell away along x
    assert hm[0, 0, 5, 4].item() == pytest.approx(math.exp(-1 / (2 * 1.5 ** 2)))
    assert hm[0, 1, 4, 2].item() == pytest.approx(math.exp(-(0.25 ** 2 + 0.5 ** 2) / (2 * 1.5 ** 2)))


def test_decode_quarter_pixel_shift_toward_the_higher_neighbour():
    hm = torch.zeros(1, 3, 5, 5)
    hm[0, 0, 2, 2], hm[0, 0, 2, 3], hm[0, 0, 1, 2] = 1.0, 0.5, 0.2  # right and up are higher
    hm[0, 1, 2, 2], hm[0, 1, 2, 1], hm[0, 1, 3, 2] = 1.0, 0.5, 0.2  # left and down
    hm[0, 2, 0, 4] = 1.0  # on the border: no shift
    torch.testing.assert_close(decode(hm), torch.tensor([[[2.25, 1.75], [1.75, 2.25], [4.0, 0.0]]]))


def test_hourglass_supervises_every_stack_and_feeds_heatmaps_forward():
    """Intermediate supervision: one output per stack; stack 2 sees stack 1's heatmaps (changing the first
    head changes the second output), and stack 1 does not see stack 2."""
    torch.manual_seed(0)
    m = build_model("hg2_w32", num_landmarks=4, width=8, depth=2).eval()
    x = torch.randn(2, 3, 32, 32)
    a = m(x)
    with torch.no_grad():
        m.heads[0].bias += 1.0
    b = m(x)
    assert len(a) == 2 and not torch.allclose(a[1], b[1])
    torch.testing.assert_close(a[0] + 1.0, b[0])


def _randomise_batchnorms(m):
    """Non-trivial BatchNorm statistics and affine parameters (a fresh BN is the identity in eval mode)."""
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.5, 0.5), mod.running_var.uniform_(0.5, 2.0)
                mod.weight.uniform_(0.5, 1.5), mod.bias.uniform_(-0.3, 0.3)


def _reference_hourglass(m, x):
    """A functional stacked hourglass (eval mode) written from Newell et al.'s description, reading the
    module's parameters by name: stem, recursive hourglasses of pre-activation bottlenecks, per-stack
    heads, and the next stack's input ``x + merge_features(feat) + merge_heatmaps(heatmaps)``."""
    p = dict(m.named_parameters()) | dict(m.named_buffers())

    def conv(name, t, stride=1):
        w = p[name + ".weight"]
        return F.conv2d(t, w, p.get(name + ".bias"), stride, w.shape[-1] // 2)

    def bn(name, t):
        return F.batch_norm(t, p[name + ".running_mean"], p[name + ".running_var"], p[name + ".weight"],
                            p[name + ".bias"], False, 0.0, 1e-5)

    def residual(name, t):
        h = conv(f"{name}.body.2", F.relu(bn(f"{name}.body.0", t)))
        h = conv(f"{name}.body.5", F.relu(bn(f"{name}.body.3", h)))
        h = conv(f"{name}.body.8", F.relu(bn(f"{name}.body.6", h)))
        return h + (conv(f"{name}.skip", t) if f"{name}.skip.weight" in p else t)

    def hourglass(name, t, depth):
        low = residual(f"{name}.low1", F.max_pool2d(t, 2))
        low = hourglass(f"{name}.low2", low, depth - 1) if depth > 1 else residual(f"{name}.low2", low)
        low = residual(f"{name}.low3", low)
        return residual(f"{name}.up1", t) + low.repeat_interleave(2, -2).repeat_interleave(2, -1)

    t = F.max_pool2d(F.relu(bn("stem.1", conv("stem.0", x, 2))), 2)
    t = residual("stem.5", residual("stem.4", t))
    outs = []
    for i in range(m.num_stacks):
        feat = F.relu(bn(f"features.{i}.2", conv(f"features.{i}.1", residual(f"features.{i}.0",
                                                                            hourglass(f"hourglasses.{i}", t, 2)))))
        hm = conv(f"heads.{i}", feat)
        outs.append(hm)
        if i < m.num_stacks - 1:
            t = t + conv(f"merge_features.{i}", feat) + conv(f"merge_heatmaps.{i}", hm)
    return outs


def test_hourglass_equals_an_independent_functional_reference():
    torch.manual_seed(3)
    m = build_model("hg2_w32", num_landmarks=5, width=8, depth=2, channels_last=False).double()
    _randomise_batchnorms(m)
    m.eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        ref = _reference_hourglass(m, x)
        for cl in (False, True):
            m.channels_last = cl
            for a, b in zip(m(x), ref, strict=True):
                torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("stacks", [1, 2, 3])
@pytest.mark.parametrize("channels_last", [False, True])
def test_last_only_inference_equals_the_last_stack_of_the_full_forward(stacks, channels_last):
    """``last_only`` in eval mode without autograd folds each intermediate head into the next stack's merge
    (one 1x1 convolution) and every BatchNorm that follows a convolution into it: the same last-stack heatmaps
    as the full forward pass (float64; every bias and BatchNorm non-trivial), and only those."""
    torch.manual_seed(stacks)
    m = build_model("hg2_w32", num_landmarks=5, width=8, depth=2, num_stacks=stacks,
                    channels_last=channels_last).double().eval()
    _randomise_batchnorms(m)
    with torch.no_grad():
        for mod in [*m.heads, *m.merge_features, *m.merge_heatmaps]:
            mod.bias.uniform_(-1, 1)
        x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
        full, last = m(x), m(x, last_only=True)
    assert len(full) == stacks and len(last) == 1
    torch.testing.assert_close(last[0], full[-1], rtol=1e-10, atol=1e-10)
    assert full[-1].abs().amax() > 0.1


def test_fold_of_a_biased_convolution_and_which_batchnorms_run_in_folded_inference():
    """_fold: conv (with a bias) then eval BatchNorm as one convolution; and in ``last_only`` inference only the
    pre-activation BatchNorms (on a block's input, not after a convolution) still run as modules."""
    from landmark_ambiguity.model import _fold

    torch.manual_seed(8)
    conv, bn = torch.nn.Conv2d(3, 4, 3, padding=1).double(), torch.nn.BatchNorm2d(4).double()
    m = torch.nn.Sequential(conv, bn)
    _randomise_batchnorms(m)
    m.eval()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    w, b = _fold(conv, bn)
    torch.testing.assert_close(F.conv2d(x, w, b, padding=1), m(x).detach(), rtol=1e-12, atol=1e-12)
    model = build_model("hg2_w32", num_landmarks=5, width=8, depth=2).eval()
    ran = []
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.register_forward_hook(lambda mod, i, o, name=name: ran.append(name))
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32), last_only=True)
    assert ran and all(name.endswith("body.0") for name in ran)
    ran.clear()
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    assert any(name.endswith("body.3") for name in ran) and "stem.1" in ran


def test_folded_batchnorms_follow_every_update_of_the_model():
    """The folded weights are cached: after an optimizer step (weights and BatchNorm statistics change in
    place) and after loading another state dict, ``last_only`` inference still equals the full forward pass;
    with autograd on, ``last_only`` runs the unfolded modules and gradients reach the BatchNorms."""
    torch.manual_seed(7)
    m = build_model("hg2_w32", num_landmarks=5, width=8, depth=2).double()
    _randomise_batchnorms(m)
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)

    def check():
        m.eval()
        with torch.no_grad():
            torch.testing.assert_close(m(x, last_only=True)[0], m(x)[-1], rtol=1e-10, atol=1e-10)

    check()
    m.train()
    sum(y.square().mean() for y in m(x)).backward()  # train mode: BN statistics move too
    opt.step()
    check()
    other = build_model("hg2_w32", num_landmarks=5, width=8, depth=2).double()
    _randomise_batchnorms(other)
    m.load_state_dict(other.state_dict())
    check()
    m.eval()
    m.zero_grad()
    m(x, last_only=True)[0].square().sum().backward()
    assert m.stem[1].weight.grad is not None and m.stem[1].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("train", [False, True])
def test_channels_last_is_a_layout_only(train):
    """model.channels_last changes the memory layout, not the function: same state dict, same heatmaps (eval)
    and same gradients (train mode) as NCHW up to float rounding; the convolutions really see NHWC inputs and
    the returned heatmaps keep the channels-last layout (no NCHW copy)."""
    torch.manual_seed(0)
    nchw = build_model("hg2_w32", num_landmarks=5, width=8, depth=2, channels_last=False)
    nhwc = build_model("hg2_w32", num_landmarks=5, width=8, depth=2)
    nhwc.load_state_dict(nchw.state_dict())
    nchw.train(train), nhwc.train(train)
    seen = []
    nhwc.stem[0].register_forward_pre_hook(lambda mod, inp: seen.append(inp[0]))
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    nchw.double(), nhwc.double()
    a, b = nchw(x), nhwc(x)
    assert seen[0].is_contiguous(memory_format=torch.channels_last) and not seen[0].is_contiguous()
    for ya, yb in zip(a, b):
        assert ya.is_contiguous() and yb.is_contiguous(memory_format=torch.channels_last) and not yb.is_contiguous()
        torch.testing.assert_close(ya, yb, rtol=1e-10, atol=1e-10)
    if train:
        sum(y.square().sum() for y in a).backward()
        sum(y.square().sum() for y in b).backward()
        for (name, p), q in zip(nchw.named_parameters(), nhwc.parameters()):
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-8, atol=1e-10, msg=name)
