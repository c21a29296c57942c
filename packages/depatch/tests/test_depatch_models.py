"""PVT-v1 / DPT models: exact parameter counts of the official models, the registry, any input
size, features_only maps, gradients into every parameter, official checkpoint conversion."""

import functools

import pytest
import torch

torch.set_num_threads(1)  # the suite shares 2 cores; tiny tensors gain nothing from threads

from depatch import (DePatchEmbed, PatchEmbed, convert_official_state_dict, count_parameters, create_model, list_models,
                     load_pretrained)

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
            "dpt_mini", "pvt_mini", "pvt_mini_wide"} <= set(names)
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
    assert torch.equal(backbone.pos_embed3, m.pos_embed3) and torch.equal(backbone.block4[0].mlp.fc2.weight,
                                                                           m.block4[0].mlp.fc2.weight)


def test_pretrained_head_of_another_class_count_is_dropped_with_a_warning(tmp_path):
    src = create_model("dpt_mini", num_classes=1000)
    torch.save(src.state_dict(), tmp_path / "in1k.pth")
    torch.manual_seed(3)
    fresh_head = create_model("dpt_mini", num_classes=7).head.weight.clone()
    torch.manual_seed(3)
    with pytest.warns(UserWarning, match="dropped the checkpoint's classification head \\(1000 classes\\)"):
        m = create_model("dpt_mini", num_classes=7, pretrained=str(tmp_path / "in1k.pth"))
    assert torch.equal(m.head.weight, fresh_head)  # the new head keeps its own initialisation
    own = m.state_dict()
    for k, v in src.state_dict().items():
        if not k.startswith("head."):
            assert torch.equal(own[k], v), k
    report = load_pretrained(create_model("dpt_mini", num_classes=1000), str(tmp_path / "in1k.pth"))
    assert report == {"dropped": [], "resized": [], "skipped": []}  # same class count: nothing dropped


def test_pretrained_position_embeddings_are_resized_to_a_new_image_size(tmp_path):
    src = create_model("pvt_mini", num_classes=4, img_size=64)  # grids 16/8/4/2
    torch.save(src.state_dict(), tmp_path / "w.pth")
    m = create_model("pvt_mini", num_classes=4, img_size=128)  # grids 32/16/8/4
    report = load_pretrained(m, str(tmp_path / "w.pth"))
    assert report["resized"] == ["pos_embed1", "pos_embed2", "pos_embed3", "pos_embed4"]
    assert m.pos_embed1.shape == (1, 32 * 32, 32) and m.pos_embed4.shape == (1, 1 + 4 * 4, 128)
    assert torch.equal(m.pos_embed4[:, :1], src.pos_embed4[:, :1])  # the cls slot is kept as it is
    expect = torch.nn.functional.interpolate(src.pos_embed2.reshape(1, 8, 8, 64).permute(0, 3, 1, 2), size=(16, 16),
                                             mode="bilinear", align_corners=False).flatten(2).transpose(1, 2)
    torch.testing.assert_close(m.pos_embed2, expect)
    # a constant grid stays constant (bilinear resizing is a partition of unity)
    with torch.no_grad():
        src.pos_embed3.fill_(0.25)
    torch.save(src.state_dict(), tmp_path / "w.pth")
    load_pretrained(m, str(tmp_path / "w.pth"))
    torch.testing.assert_close(m.pos_embed3, torch.full((1, 64, 96), 0.25))


def test_pretrained_with_missing_or_foreign_keys_is_a_one_line_error(tmp_path):
    from shared.errors import CheckpointError

    dpt = create_model("dpt_mini", num_classes=4)
    state = dpt.state_dict()
    del state["block2.0.attn.q.weight"]
    torch.save(state, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match=r"1 parameter\(s\) of this model are missing \(block2.0.attn.q.weight\)"):
        create_model("dpt_mini", num_classes=4, pretrained=str(tmp_path / "missing.pth"))
    with pytest.raises(CheckpointError, match="missing"):  # also for a detection backbone
        create_model("dpt_mini", features_only=True, pretrained=str(tmp_path / "missing.pth"))
    torch.save(dpt.state_dict(), tmp_path / "dpt.pth")
    with pytest.raises(CheckpointError, match=r"unexpected key\(s\) \(patch_embed2\."):
        create_model("pvt_mini", num_classes=4, pretrained=str(tmp_path / "dpt.pth"))
    with pytest.raises(CheckpointError, match="shapes differ"):
        create_model("pvt_mini_wide", num_classes=4, pretrained=str(tmp_path / "dpt.pth"), depatch_stages=[2, 3, 4])


def test_depatch_stage_and_offsets_only_ablations():
    base, full = _count("pvt_mini"), _count("dpt_mini")
    overhead = {s: sum(p.numel() for p in dep.parameters()) for s, dep in _meta("dpt_mini").depatch_modules().items()}
    stage4 = _meta("dpt_mini", depatch_stages=[4])
    assert [type(getattr(stage4, f"patch_embed{i}")).__name__ for i in range(1, 5)] == [
        "PatchEmbed", "PatchEmbed", "PatchEmbed", "DePatchEmbed"]
    fixed4 = sum(p.numel() for p in _meta("pvt_mini").patch_embed4.parameters())
    assert count_parameters(stage4) == base - fixed4 + overhead[4]
    assert sum(overhead.values()) - sum(p.numel() for i in (2, 3, 4) for p in getattr(_meta("pvt_mini"), f"patch_embed{i}").parameters()) == full - base
    assert _meta("pvt_mini", depatch_stages=[2, 3, 4]).depatch == [False, True, True, True]
    offsets = _meta("dpt_mini", predict_size=False)
    # offsets only: a Linear(D, 2) predictor and no learned size bias in each of the three stages
    assert count_parameters(offsets) == full - sum(2 * d + 2 for d in (64, 96, 128))
    assert all(dep.offset_predictor.out_features == 2 and "box_coder.wh_bias" not in dict(dep.named_parameters())
               for dep in offsets.depatch_modules().values())
    with pytest.raises(ValueError, match="stage 1 is not one of 2..4"):
        create_model("dpt_mini", depatch_stages=[1, 2])


def test_parameter_matched_pvt_has_the_parameters_of_dpt_mini():
    for size, classes in ((32, 8), (64, 10)):  # the mechanism check and the paper-setting check
        dpt, wide = (count_parameters(create_model(n, num_classes=classes, img_size=size)) for n in ("dpt_mini", "pvt_mini_wide"))
        assert abs(wide - dpt) / dpt < 0.005, (size, classes, dpt, wide)
    assert count_parameters(create_model("pvt_mini", num_classes=10)) / count_parameters(
        create_model("dpt_mini", num_classes=10)) < 0.75


def test_set_drop_path_follows_the_linear_rule_and_switches_stochastic_depth():
    m = create_model("pvt_mini", num_classes=3, drop_path_rate=0.3)
    probs = [blk.drop_path.p for i in range(1, 5) for blk in getattr(m, f"block{i}")]
    assert probs == pytest.approx([0.0, 0.1, 0.2, 0.3])
    x = torch.randn(4, 3, 64, 64)
    m.set_drop_path(0.0)
    m.train()
    torch.manual_seed(0)
    a = m(x)
    m.eval()
    torch.testing.assert_close(a, m(x))  # no drop path: train mode equals eval (no dropout either)
    m.set_drop_path(0.9)
    assert [blk.drop_path.p for i in range(1, 5) for blk in getattr(m, f"block{i}")] == pytest.approx([0, 0.3, 0.6, 0.9])
    m.train()
    torch.manual_seed(0)
    assert not torch.allclose(m(x), a)
