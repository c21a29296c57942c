"""Exact invariants of the OPANAS paths, super-net and sub-nets; parameter counts of the official neck."""

from collections import OrderedDict

import numpy as np
import pytest
import torch

from opanas import (
    OFFICIAL_ARCH,
    OPS,
    SEARCH_SPACE_SIZE,
    BottomUp,
    FusingSplitting,
    OPANASNeck,
    ScaleEqualizing,
    TopDown,
    arch_to_str,
    build_neck,
    extract_subnet,
    is_degenerate,
    parse_arch,
    random_arch,
)

torch.set_num_threads(1)
IN_CH = [8, 12, 16, 20]


def _inputs(h=32, w=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    sizes = [(h, w)]
    for _ in range(3):  # the backbone's stride-2 convs: ceil halving
        sizes.append(((sizes[-1][0] + 1) // 2, (sizes[-1][1] + 1) // 2))
    return OrderedDict((str(i), torch.randn(2, c, *s, generator=g)) for i, (c, s) in enumerate(zip(IN_CH, sizes)))


def _neck(arch=None, **kw):
    torch.manual_seed(0)
    kw.setdefault("offset_init", "xavier")  # non-zero offsets: the deformable paths really deform
    return build_neck("opanas", IN_CH, 16, arch=arch, **kw)


def _name(op):
    return OPS.index(op)


def test_all_skip_is_31_times_the_lateral_pyramid():
    neck = _neck(arch=[_name("skip_connect")] * 15)
    x = _inputs()
    out = neck(x)
    lat = neck.laterals(list(x.values()))  # after the global-context add
    for o, l in zip(list(out.values())[:4], lat):
        torch.testing.assert_close(o, 31 * l, rtol=1e-6, atol=1e-6)
    # the extra level is max-pool k1 s2 of the top output
    torch.testing.assert_close(out["pool"], (31 * lat[-1])[..., ::2, ::2])


def test_context_term_is_global_pool_conv_added_to_top():
    neck = _neck(arch=[_name("skip_connect")] + [0] * 14)
    x = _inputs()
    feats = list(x.values())
    top = neck.lateral[3](feats[3])
    expect = top + neck.context(top.mean(dim=(2, 3), keepdim=True))
    torch.testing.assert_close(neck.laterals(feats)[3], expect)
    no_ctx = _neck(arch=[_name("skip_connect")] + [0] * 14, top_context=False)
    assert no_ctx.context is None


def test_all_none_gives_zeros_and_td_on_first_edge_gives_td_of_laterals():
    x = _inputs()
    zero = _neck(arch=[0] * 15)(x)
    assert all(torch.count_nonzero(t) == 0 for t in zero.values())
    neck = _neck(arch=[_name("TD")] + [0] * 14)
    out = neck(x)
    expect = neck.edges[0]["TD"](neck.laterals(list(x.values())))
    for o, e in zip(list(out.values())[:4], expect):
        torch.testing.assert_close(o, e)


@pytest.mark.parametrize("hw", [(32, 48), (25, 38)])  # multiples of 8 and odd sizes (resize fallbacks)
@pytest.mark.parametrize("op", ["TD", "BU", "FS", "SE"])
def test_paths_keep_pyramid_shapes(op, hw):
    neck = _neck(arch=[_name(op)] + [0] * 14)
    x = _inputs(*hw)
    p = neck.laterals(list(x.values()))
    out = neck.edges[0][op](p)
    assert [t.shape for t in out] == [t.shape for t in p]
    assert all(torch.isfinite(t).all() for t in out)


def test_top_down_and_bottom_up_formulas():
    torch.manual_seed(1)
    p = [torch.randn(1, 16, s, s) for s in (16, 8, 4, 2)]
    td = TopDown(16, deformable=False)
    f3 = td.convs[3](p[3])
    f2 = td.convs[2](p[2] + torch.nn.functional.interpolate(f3, scale_factor=2, mode="nearest"))
    out = td(p)
    torch.testing.assert_close(out[3], f3)
    torch.testing.assert_close(out[2], f2)
    bu = BottomUp(16, deformable=False)
    g0 = bu.convs[0](p[0])
    g1 = bu.convs[1](p[1] + torch.nn.functional.max_pool2d(g0, 2))
    torch.testing.assert_close(bu(p)[1], g1)


def test_fusing_splitting_shared_weights_flag():
    shared, separate = FusingSplitting(16, shared_weights=True), FusingSplitting(16, shared_weights=False)
    assert len(shared.fuse) == 1 and len(separate.fuse) == 2
    assert sum(q.numel() for q in separate.parameters()) - sum(q.numel() for q in shared.parameters()) == \
        16 * 32 * 9 + 16 + 32 * 18 * 9 + 18


def test_level0_conv_is_plain_and_offsets_only_used_above():
    se = ScaleEqualizing(16, offset_init="xavier")
    x = torch.randn(1, 16, 8, 8)
    plain = torch.nn.functional.conv2d(x, se.conv_b.weight, se.conv_b.bias, padding=1)
    torch.testing.assert_close(se.conv_b(x, level=0), plain)
    assert not torch.allclose(se.conv_b(x, level=1), plain)  # random offsets deform at level >= 1


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_subnet_equals_supernet_with_same_weights(seed):
    supernet = _neck(arch=None)
    arch = random_arch(np.random.default_rng(seed))
    sub = extract_subnet(supernet, arch)
    x = _inputs(25, 38, seed)  # non-square, odd
    a, b = supernet(x, arch=arch), sub(x)
    assert list(a) == list(b) == ["0", "1", "2", "3", "pool"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    with pytest.raises(ValueError, match="cannot run"):
        sub(x, arch=random_arch(np.random.default_rng(seed + 10)))


def test_supernet_without_arch_is_a_clear_error():
    with pytest.raises(RuntimeError, match="set_arch"):
        _neck()(_inputs())


@pytest.mark.parametrize("channels, shared, expected", [(112, True, 5_033_874), (160, True, 9_617_874),
                                                        (112, False, 5_033_874 + 2 * 262_210),
                                                        (160, False, 9_617_874 + 2 * 512_818)])
def test_official_architecture_parameter_counts(channels, shared, expected):
    neck = build_neck("opanas", [256, 512, 1024, 2048], channels, arch=OFFICIAL_ARCH, fs_shared_weights=shared)
    assert sum(p.numel() for p in neck.parameters()) == expected


def test_baseline_and_supernet_parameter_counts():
    fpn = build_neck("fpn", [256, 512, 1024, 2048], 256)
    assert sum(p.numel() for p in fpn.parameters()) == 3_344_384  # mmdet FPN(256)
    sup = build_neck("opanas", [256, 512, 1024, 2048], 112, fs_shared_weights=True)
    assert sum(p.numel() for p in sup.parameters()) == 26_019_384
    assert SEARCH_SPACE_SIZE == 6 ** 15


def test_every_path_parameter_gets_a_gradient():
    neck = _neck(arch=[_name(o) for o in ["TD", "BU", "FS", "SE", "skip_connect"]] + [_name("TD")] * 10)
    out = neck(_inputs())
    sum(t.square().sum() for t in out.values()).backward()
    missing = [n for n, p in neck.named_parameters() if p.grad is None or torch.count_nonzero(p.grad) == 0]
    # offset convs of convs only ever called at level 0 are unused (official: find_unused_parameters)
    assert all("conv_offset" in n for n in missing), missing
    assert not any(n.startswith("lateral") or "weight" in n and "conv_offset" not in n for n in missing)


def test_architecture_codes_round_trip():
    rng = np.random.default_rng(0)
    for _ in range(20):
        a = random_arch(rng)
        assert parse_arch(arch_to_str(a)) == a
        assert parse_arch(list(a)) == a
        assert parse_arch(str(list(a))) == a
    assert arch_to_str(OFFICIAL_ARCH) == "TD,TD,TD,FS,none,skip_connect,BU,skip_connect,none,TD,BU,none,FS,SE,BU"
    assert parse_arch("td bu fs se skip none TD TD TD TD TD TD TD TD TD")[:6] == (2, 3, 4, 5, 1, 0)
    with pytest.raises(ValueError, match="15 edges"):
        parse_arch("TD,BU")
    with pytest.raises(ValueError, match="unknown op 'XX'"):
        parse_arch(["XX"] + ["TD"] * 14)


def test_degenerate_architectures():
    assert is_degenerate([0] * 15)
    # only edges between intermediate nodes: nothing reaches from node 0
    only_inner = [0] * 15
    only_inner[2] = _name("TD")  # node 1 -> node 2, but node 1 is zero
    assert is_degenerate(only_inner)
    assert not is_degenerate([_name("SE")] + [0] * 14)
    rng = np.random.default_rng(0)
    assert not any(is_degenerate(random_arch(rng)) for _ in range(200))
