"""PVT-v1 / DPT models: exact parameter counts of the official models, the registry, any input
size, features_only maps, gradients into every parameter, official checkpoint conversion."""

import functools

import pytest
import torch

torch.set_num_threads(1)  # the suite shares 2 cores; tiny tensors gain nothing from threads

from depatch import DePatchEmbed, PatchEmbed, convert_official_state_dict, count_parameters, create_model, list_models

# official numbers: DPT README (15.2/26.4/46.1 M) and PVT-v1 (13.2/24.5/44.2/61.4 M); the exact
# counts below follow from the official code
PARAMS_M = {"pvt_tiny": 13.23, "dpt_tiny": 15.15, "pvt_small": 24.49, "dpt_small": 26.41,
            "pvt_medium": 44.21, "dpt_medium": 46.13, "pvt_large": 61.37}


def _meta(name, **kw):
    with torch.device("meta"):
        return create_model(name, **kw)


@functools.lru_cache(maxsize=None)
def _count(name):
    return count_parameters(_meta(name))


@pytest.mark.parametrize("name", sorted(PARAMS_M))
def test_parameter_counts_match_the_official_models(name):
    assert round(_count(name) / 1e6, 2) == PARAMS_M[name]


def test_depatch_overhead_is_the_official_constant():
    # 3 stages x (offset predictor 4D + wh_bias 2 + output_proj 9*C_in*D + D + LayerNorm 2D)
    expect = sum(9 * c * d + 7 * d + 2 for c, d in ((64, 128), (128, 320), (320, 512)))
    assert expect == 1_923_654
    for size in ("tiny", "small", "medium"):
        assert _count(f"dpt_{size}") - _count(f"pvt_{size}") == expect


def test_registry():
    names = list_models()
    assert {"dpt_tiny", "dpt_small", "dpt_medium", "pvt_tiny", "pvt_small", "pvt_medium", "pvt_large",
            "dpt_mini", "pvt_mini"} <= set(names)
    assert list_models("dpt_*") == [n for n in names if n.startswith("dpt_")]
    m = _meta("dpt_small")
    assert [type(getattr(m, f"patch_embed{i}")) for i in range(1, 5)] == [PatchEmbed] + [DePatchEmbed] * 3
    assert [len(getattr(m, f"block{i}")) for i in range(1, 5)] == [3, 4, 6, 3]
    with pytest.raises(KeyError, match="unknown model 'dpt_huge'"):
        create_model("dpt_huge")
    with pytest.raises(ValueError, match="stage 1 stays a fixed patch"):
        create_model("pvt_mini", depatch=(True, True, True, True))


@pytest.mark.parametrize("hw", [(64, 64), (72, 104), (61, 97), (35, 33)])
def test_any_input_size_and_features_only_shapes(hw):
    torch.manual_seed(0)
    cls = create_model("dpt_mini", num_classes=7).eval()
    feat = create_model("dpt_mini", features_only=True).eval()
    x = torch.randn(2, 3, *hw)
    assert cls(x).shape == (2, 7)
    maps = feat(x)
    h, w = hw
    sizes = []
    for _ in range(4):
        h, w = (h // 4, w // 4) if not sizes else (h // 2, w // 2)
        sizes.append((h, w))
    assert [tuple(f.shape) for f in maps] == [(2, c, *s) for c, s in zip((32, 64, 96, 128), sizes)]
    assert [fi["reduction"] for fi in feat.feature_info] == [4, 8, 16, 32]
    assert [fi["num_chs"] for fi in feat.feature_info] == [32, 64, 96, 128]


def test_full_size_features_only_strides_and_channels():
    m = create_model("dpt_tiny", features_only=True, out_indices=(1, 2, 3)).eval()
    with torch.no_grad():
        maps = m(torch.randn(1, 3, 96, 160))
    assert [tuple(f.shape[1:]) for f in maps] == [(128, 12, 20), (320, 6, 10), (512, 3, 5)]
    assert not hasattr(m, "head") and not hasattr(m, "cls_token")


def test_position_embeddings_interpolate_only_when_the_grid_differs():
    torch.manual_seed(0)
    m = create_model("pvt_mini", num_classes=3)
    assert m._pos_embed(0, 16, 16) is m.pos_embed1
    assert torch.equal(m._pos_embed(3, 2, 2), m.pos_embed4[:, 1:])  # cls slot dropped
    # a constant embedding stays constant when resized (bilinear is a partition of unity)
    with torch.no_grad():
        m.pos_embed2.fill_(0.3)
    assert torch.allclose(m._pos_embed(1, 5, 11), torch.full((1, 55, 64), 0.3))


def test_every_parameter_gets_a_gradient_after_the_predictor_moves():
    torch.manual_seed(0)
    m = create_model("dpt_mini", num_classes=5)
    for dep in m.depatch_modules().values():  # the predictor features only get gradient once it is non-zero
        torch.nn.init.normal_(dep.offset_predictor.weight, std=0.1)
    x, y = torch.randn(4, 3, 64, 64), torch.randint(0, 5, (4,))
    torch.nn.functional.cross_entropy(m(x), y).backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert missing == []


def test_return_boxes_and_dpt_equals_pvt_at_init_on_the_same_weights():
    """At init every DPT stage is a fixed patch embedding: copy a PVT's weights into the equivalent
    DePatch kernels and the two networks give the same logits."""
    torch.manual_seed(0)
    pvt = create_model("pvt_mini", num_classes=4).eval()
    dpt = create_model("dpt_mini", num_classes=4).eval()
    own = dpt.state_dict()
    own.update({k: v for k, v in pvt.state_dict().items() if k in own and own[k].shape == v.shape})
    dpt.load_state_dict(own)
    axis = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]])
    with torch.no_grad():
        for s, dep in dpt.depatch_modules().items():
            fixed = getattr(pvt, f"patch_embed{s}")
            # choose W_proj so that W_proj . S equals the PVT kernel: put the 4 pixel weights on the
            # 4 corner samples (exact pixels at init) and zero elsewhere
            wk = fixed.proj.weight  # (D, C, 2(y), 2(x))
            wp = torch.zeros(dep.embed_dim, 3, 3, dep.in_chans)
            for ix, px in ((0, 0), (2, 1)):
                for iy, py in ((0, 0), (2, 1)):
                    wp[:, ix, iy] = wk[:, :, py, px]
            dep.output_proj.weight.copy_(wp.reshape(dep.embed_dim, -1))
            dep.output_proj.bias.copy_(fixed.proj.bias)
            dep.norm.load_state_dict(fixed.norm.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        logits, boxes = dpt(x, return_boxes=True)
        torch.testing.assert_close(logits, pvt(x), atol=1e-5, rtol=1e-5)
    assert sorted(boxes) == [2, 3, 4] and boxes[2].shape == (2, 64, 4)
    assert axis.sum(1).eq(1).all()


def test_official_checkpoint_conversion_drops_constant_buffers(tmp_path):
    m = create_model("dpt_mini", num_classes=3)
    state = {"model": {**m.state_dict(), "patch_embed2.box_coder.anchor": torch.zeros(64, 2),
                       "patch_embed2.value_spatial_shapes": torch.tensor([[16, 16]]),
                       "patch_embed2.value_level_start_index": torch.tensor([0])}}
    conv = convert_official_state_dict(state)
    assert set(conv) == set(m.state_dict())
    path = tmp_path / "official.pth"
    torch.save(state, path)
    loaded = create_model("dpt_mini", num_classes=3, pretrained=str(path))
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), m.state_dict().values()))
    backbone = create_model("dpt_mini", features_only=True, pretrained=str(path))  # head/cls/norm skipped
    assert torch.equal(backbone.pos_embed3, m.pos_embed3)
