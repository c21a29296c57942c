"""Lines that define the method, each against an independent reference: the four parametric paths against
float64 formulas written from the paper's definitions, the super-net's per-step path sampling, resume's model
check, one training step of every detector, the evaluation size, the parameter-matched FPN."""

from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_module

from shared.errors import CheckpointError

from opanas import OFFICIAL_ARCH, OPS, BottomUp, FusingSplitting, ScaleEqualizing, TopDown, build_detector, list_models
from opanas.arch import NUM_EDGES, sample_arch
from opanas.neck import FPN, OPANASNeck, build_neck, fpn_inner_channels_for

torch.set_num_threads(1)
C = 6


def _pyr(seed=0, sizes=(16, 8, 4, 2)):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, C, s, s + 2 * (s // 2), generator=g, dtype=torch.float64) for s in sizes]


def _randomize(mod):
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in mod.parameters():  # SE's normal(0, 0.01) init would make its terms tiny: use O(1) weights
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))
    return mod.double()


def _conv(x, m, stride=1):
    return F.conv2d(x, m.weight, m.bias, stride=stride, padding=1)


def _up(x, ref):
    return F.interpolate(x, size=ref.shape[-2:], mode="nearest")


def _pool(x):
    return F.max_pool2d(x, 2, 2)


def test_top_down_matches_reference():
    m = _randomize(TopDown(C, deformable=False))
    p = _pyr()
    f = [None] * 4
    f[3] = _conv(p[3], m.convs[3])
    for i in (2, 1, 0):
        f[i] = _conv(p[i] + _up(f[i + 1], p[i]), m.convs[i])
    for a, b in zip(m(p), f):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_bottom_up_matches_reference():
    m = _randomize(BottomUp(C, deformable=False))
    p = _pyr(1)
    f = [_conv(p[0], m.convs[0])]
    for i in (1, 2, 3):
        f.append(_conv(p[i] + _pool(f[i - 1]), m.convs[i]))
    for a, b in zip(m(p), f):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shared", [False, True])
def test_fusing_splitting_matches_reference(shared):
    """A = P1 + pool(P0), B = up(P3) + P2; G1 = conv1(cat[A, up(B)]), G2 = conv2(cat[pool(A), B]);
    outputs [up(G1), G1, G2, pool(G2)] in this order (a swap of any two fails)."""
    m = _randomize(FusingSplitting(C, shared_weights=shared, deformable=False))
    p = _pyr(2)
    a = p[1] + _pool(p[0])
    b = _up(p[3], p[2]) + p[2]
    c1, c2 = m.fuse[0], m.fuse[-1]
    if not shared:
        assert c1 is not c2
    g1 = _conv(torch.cat([a, _up(b, a)], 1), c1)
    g2 = _conv(torch.cat([_pool(a), b], 1), c2)
    ref = [_up(g1, p[0]), g1, g2, _pool(g2)]
    out = m(p)
    assert [t.shape for t in out] == [t.shape for t in p]
    for x, y in zip(out, ref):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12)


def test_scale_equalizing_matches_reference():
    """Fi = ReLU(conv_b(Pi) + conv_c,s2(P(i-1)) + bilinear_up(conv_a(P(i+1)))) with every term's sign +."""
    m = _randomize(ScaleEqualizing(C, deformable=False))
    p = _pyr(3)
    ref = []
    for i in range(4):
        f = _conv(p[i], m.conv_b)
        if i > 0:
            f = f + _conv(p[i - 1], m.conv_c, stride=2)
        if i < 3:
            f = f + F.interpolate(_conv(p[i + 1], m.conv_a), size=f.shape[-2:], mode="bilinear", align_corners=True)
        ref.append(torch.relu(f))
    out = m(p)
    for x, y in zip(out, ref):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12)
    assert all((t > 0).float().mean() < 0.9 for t in out)  # the ReLU is active on part of the output


def test_paths_call_convs_at_their_levels():
    """Deformable at levels >= 1, plain at level 0 (SEPC part_deform): with random offsets a path differs from its
    plain twin at every level except where every conv it used ran at level 0."""
    torch.manual_seed(0)
    p = [t.float() for t in _pyr(4)]
    for cls in (TopDown, BottomUp, ScaleEqualizing):
        d = cls(C, offset_init="xavier")
        plain = cls(C, deformable=False)
        plain.load_state_dict({k: v for k, v in d.state_dict().items() if "conv_offset" not in k})
        a, b = d(p), plain(p)
        if cls is BottomUp:  # F0 = conv_0(P0) at level 0: plain
            torch.testing.assert_close(a[0], b[0])
        assert not torch.allclose(a[-1], b[-1])


def test_sample_arch_is_fresh_every_step_and_uniform():
    archs = [sample_arch(0, s) for s in range(300)]
    assert len(set(archs)) == 300
    assert sample_arch(0, 5) == sample_arch(0, 5) and sample_arch(1, 5) != sample_arch(0, 5)
    counts = Counter(a for arch in archs for a in arch)
    n = 300 * NUM_EDGES / len(OPS)  # SPOS: uniform over the six ops on each edge
    assert all(abs(counts[i] - n) < 5 * n ** 0.5 for i in range(len(OPS))), counts


TINY = ["data.train_images=8", "data.search_images=4", "data.val_images=4", "data.size=64", "data.batch_size=2",
        "model.neck_channels=8", "model.min_size=64", "model.max_size=64", "model.backbone_channels=[8,8,16,16]",
        "search.population=2", "search.generations=1", "search.topk=1", "search.num_mutation=1",
        "search.num_crossover=1", "eval.batch_size=4", "threads=1", "ckpt_every=1000"]


def _cfg(tmp_path, *extra):
    with initialize_config_module(config_module="opanas.conf", version_base="1.3"):
        return compose(config_name="train", overrides=TINY + [f"data.root={tmp_path / 'scenes'}", *extra])


def test_supernet_training_samples_one_path_per_step(tmp_path, monkeypatch):
    """Every super-net training step runs the sub-net sample_arch(seed, step): a fresh draw each step."""
    from opanas.train import fit

    seen = []
    orig = OPANASNeck.forward_pyramid

    def spy(self, feats, arch=None):
        if self.is_supernet and self.training:
            seen.append(self.active_arch)
        return orig(self, feats, arch)

    monkeypatch.setattr(OPANASNeck, "forward_pyramid", spy)
    fit(_cfg(tmp_path, "seed=3", "supernet.steps=4", "max_steps=4"), tmp_path / "run")
    assert seen == [sample_arch(3, s) for s in range(4)]


def test_resume_refuses_a_checkpoint_of_another_model(tmp_path):
    from opanas.train import fit

    fit(_cfg(tmp_path, "mode=train", "model.neck=fpn", "retrain.steps=2", "max_steps=1"), tmp_path / "run")
    with pytest.raises(CheckpointError):
        fit(_cfg(tmp_path, "mode=train", "model.neck=pafpn", "retrain.steps=2"), tmp_path / "run")
    with pytest.raises(CheckpointError):
        fit(_cfg(tmp_path, "mode=train", "model.neck=fpn", "model.neck_channels=16", "retrain.steps=2"), tmp_path / "run")
    fit(_cfg(tmp_path, "mode=train", "model.neck=opanas", "model.arch=official", "retrain.steps=2", "max_steps=1"),
        tmp_path / "run2")
    with pytest.raises(CheckpointError):
        fit(_cfg(tmp_path, "mode=train", "model.neck=opanas", "model.arch=random", "retrain.steps=2"), tmp_path / "run2")


@pytest.mark.parametrize("name", list_models())
def test_one_training_step_of_every_detector(name):
    det, neck = name.rsplit("_", 1)
    torch.manual_seed(0)
    model = build_detector(3, detector=det, neck=neck, arch=OFFICIAL_ARCH if neck == "opanas" else None,
                           neck_channels=8, backbone_channels=(8, 8, 16, 16), min_size=64, max_size=64,
                           representation_size=16, opanas={"dcn_impl": "grid_sample"})
    images = [torch.rand(3, 64, 64), torch.rand(3, 48, 64)]
    targets = [{"boxes": torch.tensor([[4.0, 4.0, 30.0, 40.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[10.0, 8.0, 50.0, 30.0], [0.0, 0.0, 12.0, 12.0]]), "labels": torch.tensor([2, 3])}]
    model.train()
    losses = model(images, targets)
    loss = sum(losses.values())
    assert torch.isfinite(loss)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.backbone.neck.parameters())
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2 and all(set(o) >= {"boxes", "scores", "labels"} for o in out)
    feats = model.backbone(torch.rand(1, 3, 64, 64))
    assert len(feats) == 5  # P2-P6 (Faster R-CNN) or P3-P7 (RetinaNet): one per anchor size
    if det == "retinanet":
        assert [f.shape[-1] for f in feats.values()] == [8, 4, 2, 1, 1]


def test_evaluation_size_and_range_multiscale():
    model = build_detector(2, neck="fpn", neck_channels=8, backbone_channels=(8, 8, 16, 16), min_size=800,
                           max_size=1333, test_min_size=90, test_max_size=120, scale_range=(40, 60))
    t = model.transform
    img = torch.rand(3, 100, 200)
    t.eval()
    assert tuple(t.resize(img)[0].shape[-2:]) == (60, 120)  # short side 90, long side capped at 120
    t.train()
    torch.manual_seed(0)
    sizes = {tuple(t.resize(img)[0].shape[-2:]) for _ in range(30)}
    assert len(sizes) > 3 and all(20 <= h <= 30 and 40 <= w <= 60 for h, w in sizes)  # long edge in [40, 60]


def test_parameter_matched_fpn():
    chans = [16, 24, 32, 48]
    neck = build_neck("opanas", chans, 16, arch=OFFICIAL_ARCH)
    target = sum(p.numel() for p in neck.parameters())
    w = fpn_inner_channels_for(target, chans, 16)
    fpn = FPN(chans, 16, inner_channels=w)
    n = sum(p.numel() for p in fpn.parameters())
    per_w = sum(chans) + 4 + 9 * 4 * 16
    assert n == w * per_w + 4 * 16 and abs(n - target) <= per_w / 2
    std = build_neck("fpn", chans, 16)
    assert sum(p.numel() for p in std.parameters()) == 16 * per_w + 64 and n > 2 * sum(p.numel() for p in std.parameters())
    # the standard width equals torchvision's FeaturePyramidNetwork exactly (same weights -> same outputs)
    from collections import OrderedDict

    from torchvision.ops import FeaturePyramidNetwork

    tv = FeaturePyramidNetwork(chans, 16)
    std_sd = {k.replace(".0.", ".", 1) if k.count(".") == 3 else k: v for k, v in tv.state_dict().items()}
    std.load_state_dict(std_sd)
    x = OrderedDict((str(i), torch.randn(1, c, 16 >> i, 16 >> i)) for i, c in enumerate(chans))
    a, b = std(x), tv(x)
    assert list(a) == [*b, "pool"]
    for k in b:
        torch.testing.assert_close(a[k], b[k])
