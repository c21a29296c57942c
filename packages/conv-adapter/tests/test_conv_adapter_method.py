"""Conv-Adapter invariants with exact expectations (PEFT-style, table-driven)."""

import copy

import pytest
import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from conv_adapter import (
    DEFAULT_REDUCTION,
    SCHEMES,
    adapter_modules,
    ConvAdapter,
    ConvAdapterConfig,
    adapter_config,
    adapter_state_dict,
    apply_method,
    closed_form_count,
    count_adapter_parameters,
    create_backbone,
    disable_adapters,
    inject_adapters,
    load_adapter_state_dict,
    replace_head,
    set_train_mode,
)
from conv_adapter.models import TinyResNet

torch.set_num_threads(1)


def tiny(seed=0, block=None, scheme="conv_parallel", init="official", placement="conv", method="conv_adapter"):
    torch.manual_seed(seed)
    model = TinyResNet(block=block or BasicBlock, num_classes=5)
    if method is None:
        return model
    apply_method(model, "resnet_tiny", method, image_size=16, scheme=scheme, reduction=2, init=init,
                 placement=placement)
    return model


def backbone_copy(adapted: nn.Module) -> nn.Module:
    """The same network without adapters: a fresh TinyResNet loaded with the non-adapter weights."""
    plain = TinyResNet(block=type(adapted.layer1[0]), num_classes=5)
    plain.load_state_dict({k: v for k, v in adapted.state_dict().items() if "conv_adapter" not in k})
    return plain.eval()


X = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def test_adapter_module_shape_count_and_groups():
    a = ConvAdapter(64, 128, kernel_size=3, stride=2, padding=1, reduction=4)
    assert a.down.groups == 16 and a.down.weight.shape == (16, 4, 3, 3)  # each filter sees gamma=4 channels
    assert a(torch.randn(2, 64, 8, 8)).shape == (2, 128, 4, 4)
    assert sum(p.numel() for p in a.parameters()) == 64 * 9 + 16 + 16 * 128 + 128 + 128
    assert torch.equal(a.scale, torch.ones(1, 128, 1, 1))  # official: alpha = 1
    with pytest.raises(ValueError, match="must divide"):
        ConvAdapter(64, 64, reduction=3)


def _randomise(module: nn.Module, seed: int = 0) -> nn.Module:
    """Every parameter (biases and alpha included) drawn at random, so that no term of a formula hides."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)
    return module


@pytest.mark.parametrize("act,fn", [("relu", torch.relu), ("gelu", nn.functional.gelu), ("silu", nn.functional.silu)])
def test_adapter_forward_equals_the_formula_in_float64(act, fn):
    """Delta h = alpha * W_up * act(W_down *_g h + b_down) + ..., written out with F.conv2d in float64."""
    a = _randomise(ConvAdapter(16, 24, kernel_size=3, stride=2, padding=1, reduction=4, act=act)).double()
    x = torch.randn(2, 16, 9, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    hidden = nn.functional.conv2d(x, a.down.weight, a.down.bias, stride=2, padding=1, groups=4)
    expected = a.scale * nn.functional.conv2d(fn(hidden), a.up.weight, a.up.bias)
    assert torch.allclose(a(x), expected, rtol=0, atol=1e-12)
    assert not torch.allclose(a(x), a.scale * nn.functional.conv2d(hidden, a.up.weight, a.up.bias))  # act matters


def test_cpu_adapter_runs_channels_last_with_the_same_values_and_gradients():
    """On the CPU the adapter lays its input out NHWC (its grouped convolution is several times faster so):
    same output and gradients as NCHW in float64, the convolution really sees NHWC, and an adapted block
    keeps its NCHW output."""
    a = _randomise(ConvAdapter(16, 24, kernel_size=3, padding=1, reduction=4)).double()
    seen = []
    a.down.register_forward_pre_hook(lambda mod, inp: seen.append(inp[0]))
    x = torch.randn(2, 16, 9, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(2), requires_grad=True)
    outs, grads = [], []
    for layout in (None, False):
        a.channels_last = layout
        y = a(x)
        gx, gw = torch.autograd.grad(y.square().sum(), (x, a.down.weight))
        outs.append(y), grads.append((gx, gw))
    assert seen[0].is_contiguous(memory_format=torch.channels_last) and not seen[0].is_contiguous()
    assert seen[1].is_contiguous()
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-12, atol=1e-12)
    for g0, g1 in zip(*grads):
        torch.testing.assert_close(g0, g1, rtol=1e-12, atol=1e-12)
    for placement in ("conv", "official"):
        block = Bottleneck(32, 8)
        inject_adapters(block, ConvAdapterConfig(target_modules="conv2", reduction=4, placement=placement))
        assert block.double()(torch.randn(1, 32, 8, 8, dtype=torch.float64)).is_contiguous()


def _adapted_pairs(model: nn.Module):
    """(name, adapted module) for every module that carries an adapter."""
    return [(n, m) for n, m in model.named_modules() if hasattr(m, "conv_adapter")]


@pytest.mark.parametrize("block", [BasicBlock, Bottleneck])
@pytest.mark.parametrize("scheme", SCHEMES)
def test_every_scheme_adds_its_adapter_to_the_module_output(scheme, block):
    """parallel: y = f(x) + A(x); sequential: y = f(x) + A(f(x)), for every adapted module (float64)."""
    model = tiny(block=block, scheme=scheme).double().eval()
    for i, (_, a) in enumerate(adapter_modules(model)):
        _randomise(a, seed=i)
    inputs = {}
    hooks = [m.register_forward_hook(lambda mod, args, out, n=n: inputs.__setitem__(n, args[0]))
             for n, m in _adapted_pairs(model)]
    with torch.no_grad():
        model(X.double())
    for h in hooks:
        h.remove()
    assert len(inputs) == len(_adapted_pairs(model)) > 0
    with torch.no_grad():
        for name, module in _adapted_pairs(model):
            x = inputs[name]
            adapter = module.conv_adapter
            y = module(x)
            with disable_adapters(model):
                plain = module(x)
            expected = plain + adapter(x) if scheme.endswith("_parallel") else plain + adapter(plain)
            assert torch.allclose(y, expected, rtol=1e-9, atol=1e-9), name
            assert not torch.allclose(y, plain, rtol=1e-3, atol=1e-3), name

# The exact Conv-Parallel adapter counts on ResNet-50's 16 bottleneck 3x3 convs (paper notes, 1.3)
RESNET50_COUNTS = {1: 1_302_784, 2: 672_160, 4: 356_848, 8: 199_192, 16: 120_364}


@pytest.mark.parametrize("gamma", sorted(RESNET50_COUNTS))
def test_resnet50_adapter_count_matches_closed_form(resnet50_meta, gamma):
    model = copy.deepcopy(resnet50_meta)
    inject_adapters(model, adapter_config(model, "resnet50", "conv_parallel", gamma))
    widths = [64] * 3 + [128] * 4 + [256] * 6 + [512] * 3
    expected = closed_form_count([(c, c, 3) for c in widths], gamma)
    assert count_adapter_parameters(model) == expected == RESNET50_COUNTS[gamma]


@pytest.mark.parametrize("scheme", SCHEMES)
def test_zero_init_is_exactly_the_backbone(scheme):
    model = tiny(scheme=scheme, init="zero").eval()
    with torch.no_grad():
        assert torch.equal(model(X), backbone_copy(model)(X))


@pytest.mark.parametrize("scheme", SCHEMES)
def test_official_init_changes_the_output_and_disable_restores_it(scheme):
    model = tiny(scheme=scheme).eval()
    plain = backbone_copy(model)
    with torch.no_grad():
        adapted = model(X)
        assert not torch.allclose(adapted, plain(X))  # the official init is NOT identity at step 0
        with disable_adapters(model):
            assert torch.equal(model(X), plain(X))
        assert torch.equal(model(X), adapted)  # re-enabled on exit


@pytest.mark.parametrize("arch,weight_std", [("resnet_tiny", None), ("convnext_tiny", 0.02)])
@pytest.mark.parametrize("init", ["official", "zero"])
def test_adapter_init_follows_the_backbone_and_zero_only_sets_alpha(backbones, arch, weight_std, init):
    """ResNet: Kaiming-normal fan_out; ConvNeXt: truncated normal std 0.02 (both official); ``zero`` keeps
    these weights and sets alpha = 0 (README: fidelity)."""
    torch.manual_seed(0)
    model = tiny(method=None) if arch == "resnet_tiny" else copy.deepcopy(backbones[arch])
    apply_method(model, arch, "conv_adapter", image_size=32, init=init, reduction=2 if arch == "resnet_tiny" else 8)
    adapters = [a for _, a in adapter_modules(model)]
    up = torch.cat([a.up.weight.flatten() for a in adapters])
    if weight_std is None:  # Kaiming fan_out: std sqrt(2 / (C_out * 1 * 1)) for the 1x1 up-projection
        a = adapters[-1]
        assert abs(a.up.weight.std().item() / (2 / a.up.out_channels) ** 0.5 - 1) < 0.15
    else:
        assert abs(up.std().item() - weight_std) < 0.002
    assert all(torch.count_nonzero(a.down.bias) == 0 and torch.count_nonzero(a.up.bias) == 0 for a in adapters)
    assert all(torch.all(a.scale == (0.0 if init == "zero" else 1.0)) for a in adapters)


def test_zero_init_only_alpha_gets_gradient():
    model = tiny(init="zero")
    set_train_mode(model)
    model(X).sum().backward()
    for name, p in model.named_parameters():
        if "conv_adapter" in name:
            nonzero = p.grad is not None and p.grad.abs().sum() > 0
            assert nonzero == name.endswith("scale"), name


@pytest.mark.parametrize("method", ["conv_adapter", "linear", "bitfit", "prompt", "full"])
def test_only_the_methods_parameters_train_and_all_of_them_get_gradients(method):
    model = tiny(method=method)
    set_train_mode(model)
    nn.functional.cross_entropy(model(X), torch.tensor([0, 1, 2, 3])).backward()
    for name, p in model.named_parameters():
        expected = {
            "conv_adapter": "conv_adapter" in name or name.startswith("fc."),
            "linear": name.startswith("fc."),
            "bitfit": name.endswith(".bias") or name.startswith("fc."),
            "prompt": name.startswith(("prompter.", "fc.")),
            "full": True,
        }[method]
        assert p.requires_grad == expected, name
        if expected:
            assert p.grad is not None and p.grad.abs().sum() > 0, f"{name} got no gradient"
        else:
            assert p.grad is None, name


@pytest.mark.parametrize("bn_mode,changes", [("eval", False), ("train", True)])
def test_frozen_bn_statistics_and_weights_in_a_training_step(bn_mode, changes):
    model = tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1, weight_decay=0.1)
    set_train_mode(model, bn_mode)
    nn.functional.cross_entropy(model(X), torch.tensor([0, 1, 2, 3])).backward()
    opt.step()
    after = model.state_dict()
    for k, v in before.items():
        if "conv_adapter" in k or k.startswith("fc."):
            continue
        if "running_" in k or "num_batches" in k:
            assert torch.equal(v, after[k]) != changes, k  # official train mode lets the stats drift
        else:
            assert torch.equal(v, after[k]), f"frozen parameter {k} changed"
    assert not torch.equal(before["layer1.0.conv1.conv_adapter.up.weight"], after["layer1.0.conv1.conv_adapter.up.weight"])


def _bn_stats(model):
    return {n: (m.running_mean.clone(), m.running_var.clone()) for n, m in model.named_modules()
            if isinstance(m, nn.BatchNorm2d)}


@pytest.mark.parametrize("method,pool_norm,bn_mode,drifting", [
    ("bitfit", False, "eval", "none"),        # BitFit trains the BN shift only: statistics stay (README)
    ("bitfit", False, "train", "all"),        # the official trainer: every BN drifts
    ("conv_adapter", True, "eval", "pool"),   # only the new pre-pooling BN learns statistics
    ("linear", True, "eval", "pool"),
    ("full", False, "eval", "all"),           # full fine-tuning trains every BN, statistics included
])
def test_which_batchnorm_statistics_update(method, pool_norm, bn_mode, drifting):
    torch.manual_seed(0)
    model = TinyResNet(num_classes=5)
    apply_method(model, "resnet_tiny", method, image_size=16, reduction=2, pool_norm=pool_norm)
    before = _bn_stats(model)
    set_train_mode(model, bn_mode)
    model(X)
    after = _bn_stats(model)
    changed = {n for n in before if not torch.equal(before[n][0], after[n][0])}
    expected = {"none": set(), "all": set(before), "pool": {"avgpool.norm"}}[drifting]
    assert changed == expected


def test_pool_norm_is_the_official_batchnorm_before_pooling_and_trains():
    torch.manual_seed(0)
    model = TinyResNet(num_classes=5)
    replace_head(model, "resnet_tiny", 5, dropout=0.0)
    info = apply_method(model, "resnet_tiny", "conv_adapter", image_size=16, reduction=2, pool_norm=True)
    norm = model.avgpool.norm
    assert isinstance(norm, nn.BatchNorm2d) and norm.num_features == 128
    assert norm.weight.requires_grad and norm.bias.requires_grad
    assert info.trainable == count_adapter_parameters(model) + 2 * 128 + 128 * 5 + 5
    with torch.no_grad():
        _randomise(norm)
        norm.running_mean.normal_(), norm.running_var.uniform_(0.5, 2)
        model.eval()
        feats = {}
        model.layer4.register_forward_hook(lambda m, a, out: feats.__setitem__("x", out))
        logits = model(X)
        x = feats["x"]
        z = (x - norm.running_mean[:, None, None]) / torch.sqrt(norm.running_var[:, None, None] + norm.eps)
        z = z * norm.weight[:, None, None] + norm.bias[:, None, None]
        assert torch.allclose(logits, model.fc(z.mean((2, 3))), atol=1e-5)
    with pytest.raises(ValueError, match="pool_norm"):
        apply_method(_convnext_stub(), "convnext_tiny", "linear", image_size=16, pool_norm=True)


def _convnext_stub():
    with torch.device("meta"):
        return create_backbone("convnext_tiny")


def test_trainable_percent_is_trainable_over_the_full_fine_tuning_count():
    torch.manual_seed(0)
    plain = TinyResNet(num_classes=5)
    replace_head(plain, "resnet_tiny", 7)
    full = sum(p.numel() for p in plain.parameters())  # backbone + new head, before any addition
    for method in ("linear", "bitfit", "prompt", "conv_adapter", "full"):
        model = copy.deepcopy(plain)
        info = apply_method(model, "resnet_tiny", method, image_size=16, reduction=2)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        assert info.full == full and info.trainable == trainable, method
        assert info.percent == 100.0 * trainable / full, method
    assert info.percent == 100.0  # full fine-tuning
    head = 128 * 7 + 7
    linear = apply_method(copy.deepcopy(plain), "resnet_tiny", "linear", image_size=16)
    assert linear.trainable == head and linear.percent == 100.0 * head / full


# ResNet-50 with the official Conv-Adapter trainable set (ResNet-50 recipes: placement=official, pool_norm=true):
# adapters on the 16 bottleneck 3x3 convs + BatchNorm2d(2048) before pooling + a new 100-class head (CIFAR-100
# of VTAB-1k). Full fine-tuning = the backbone without its ImageNet fc (23,508,032) + that head (204,900).
RESNET50_FULL_100 = 23_508_032 + 2048 * 100 + 100
RESNET50_OFFICIAL_TRAINABLE_100 = {g: RESNET50_COUNTS[g] + 2 * 2048 + 2048 * 100 + 100 for g in RESNET50_COUNTS}


@pytest.mark.parametrize("gamma", sorted(RESNET50_COUNTS))
def test_resnet50_official_trainable_count_and_percent(resnet50_meta, gamma):
    model = copy.deepcopy(resnet50_meta)
    replace_head(model, "resnet50", 100)
    info = apply_method(model, "resnet50", "conv_adapter", image_size=224, reduction=gamma, placement="official",
                        pool_norm=True)
    assert info.full == RESNET50_FULL_100
    assert info.trainable == RESNET50_OFFICIAL_TRAINABLE_100[gamma]
    assert info.percent == 100.0 * RESNET50_OFFICIAL_TRAINABLE_100[gamma] / RESNET50_FULL_100


def test_resnet50_at_the_default_gamma_exactly():
    """gamma = 8 (DEFAULT_REDUCTION, the official --adapt_size default): 408,188 trainable parameters =
    1.7214% of full fine-tuning with a 100-class head; the adapters alone are 199,192 = 0.8473% of the backbone."""
    assert DEFAULT_REDUCTION == 8
    assert RESNET50_OFFICIAL_TRAINABLE_100[8] == 408_188 and RESNET50_FULL_100 == 23_712_932
    assert round(100 * 408_188 / 23_712_932, 4) == 1.7214
    assert round(100 * RESNET50_COUNTS[8] / 23_508_032, 4) == 0.8473


def test_bitfit_adds_zero_biases_and_prompt_adds_a_frame():
    torch.manual_seed(0)
    plain = TinyResNet(num_classes=5).eval()
    bitfit = copy.deepcopy(plain)
    apply_method(bitfit, "resnet_tiny", "bitfit", image_size=16)
    new = [m.bias for m in bitfit.modules() if isinstance(m, nn.Conv2d)]
    assert new and all(b is not None and torch.count_nonzero(b) == 0 for b in new)
    with torch.no_grad():
        assert torch.allclose(bitfit.eval()(X), plain(X), atol=1e-6)  # zero biases: unchanged at start
    prompted = copy.deepcopy(plain)
    apply_method(prompted, "resnet_tiny", "prompt", image_size=16, prompt_size=3)
    frame = prompted.prompter.prompt()
    assert frame.shape == (1, 3, 16, 16) and torch.count_nonzero(frame[..., 3:13, 3:13]) == 0
    assert torch.equal(frame[..., :3, :], prompted.prompter.pad_up) and torch.equal(frame[..., 13:, :], prompted.prompter.pad_down)
    assert torch.equal(frame[..., 3:13, :3], prompted.prompter.pad_left)
    assert torch.equal(frame[..., 3:13, 13:], prompted.prompter.pad_right)
    with torch.no_grad():
        assert torch.equal(prompted.eval()(X), plain(X + frame))  # the frame is added to the image


def test_linear_head_is_dropout_then_uniform_linear():
    torch.manual_seed(0)
    model = TinyResNet(num_classes=5)
    replace_head(model, "resnet_tiny", 9, dropout=0.2)
    drop, fc = model.fc
    assert isinstance(drop, nn.Dropout) and drop.p == 0.2 and fc.out_features == 9
    assert torch.count_nonzero(fc.bias) == 0 and fc.weight.abs().max() <= 128 ** -0.5
    assert fc.weight.abs().max() > 0.8 * 128 ** -0.5  # uniform over the whole +-1/sqrt(fan_in) range


def test_adapter_only_state_dict_round_trip():
    model = tiny(seed=0)
    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.requires_grad:
                p.add_(0.01 * torch.randn_like(p))
    state = adapter_state_dict(model, extra_prefixes=("fc.",))
    assert all("conv_adapter." in k or k.startswith("fc.") for k in state)
    assert sum(v.numel() for v in state.values()) < 0.2 * sum(v.numel() for v in model.state_dict().values())
    other = tiny(seed=1)  # same backbone weights would come from the pretrained file: copy them
    other.load_state_dict({k: v for k, v in model.state_dict().items() if k not in state}, strict=False)
    model.eval(), other.eval()
    with torch.no_grad():
        assert not torch.equal(model(X), other(X))
        load_adapter_state_dict(other, state)
        assert torch.equal(model(X), other(X))
    with pytest.raises(KeyError, match="does not fit"):
        load_adapter_state_dict(tiny(scheme="residual_sequential"), state)


def test_official_bottleneck_placement_matches_the_released_forward():
    model = tiny(block=Bottleneck, placement="official").eval()
    block = model.layer2[0]  # stride-2 bottleneck with a downsample branch
    x = torch.randn(2, block.conv1.in_channels, 8, 8)
    with torch.no_grad():
        with disable_adapters(model):  # the hooks stay silent while we spell the forward out by hand
            h = block.relu(block.bn1(block.conv1(x)))
            out = block.relu(block.bn2(block.conv2(h))) + block.conv2.conv_adapter(h)  # after bn2 + ReLU
            out = block.relu(block.bn3(block.conv3(out)) + block.downsample(x))
        assert torch.allclose(block(x), out, atol=1e-6)
        # the paper placement adds to the conv output instead (before bn2)
        paper = tiny(block=Bottleneck, placement="conv").eval()
        paper.load_state_dict(model.state_dict())
        assert not torch.allclose(paper(X), model(X))
        with disable_adapters(model):
            assert torch.equal(model(X), backbone_copy(model)(X))
    with pytest.raises(ValueError, match="Bottleneck conv2"):
        tiny(placement="official")  # BasicBlock: the released code crashes there; we refuse clearly


def test_deepcopy_keeps_adapters_working_and_independent():
    model = tiny(block=Bottleneck, placement="official").eval()
    clone = copy.deepcopy(model)
    with torch.no_grad():
        assert torch.equal(model(X), clone(X))
        with disable_adapters(clone):
            assert not torch.equal(model(X), clone(X))
        clone.layer1[0].conv2.conv_adapter.scale.mul_(3)
        assert not torch.equal(model(X), clone(X))


def test_nothing_matched_and_wrong_module_types_are_clear_errors():
    with pytest.raises(ValueError, match="matched no module"):
        inject_adapters(tiny(method=None), ConvAdapterConfig(target_modules=r"nope\.\d+"))
    with pytest.raises(TypeError, match="adapts nn.Conv2d"):
        inject_adapters(tiny(method=None), ConvAdapterConfig(target_modules=r"layer1\.0"))
    with pytest.raises(ValueError, match="do not exist"):
        inject_adapters(tiny(method=None), ConvAdapterConfig(target_modules=["layer1.0.conv1", "layer9.conv1"]))
    with pytest.raises(ValueError, match="already has an adapter"):
        model = tiny()
        inject_adapters(model, ConvAdapterConfig(target_modules=r"layer1\.0\.conv1"))
    with pytest.raises(ValueError, match="scheme"):
        ConvAdapterConfig(target_modules="x", scheme="convpass")


# (arch, number of adapted modules for conv_* schemes, for residual_* schemes)
BACKBONES = [("resnet18", 8, 8), ("resnet50", 16, 16), ("convnext_tiny", 18 + 3, 18)]


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("arch,n_conv,n_block", BACKBONES)
def test_every_scheme_runs_forward_and_backward(backbones, arch, n_conv, n_block, scheme):
    model = copy.deepcopy(backbones[arch])
    info = apply_method(model, arch, "conv_adapter", image_size=32, scheme=scheme, reduction=4)
    assert len(info.adapted) == (n_conv if scheme.startswith("conv_") else n_block)
    set_train_mode(model)
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 3)
    out.square().sum().backward()
    grads = [p.grad for n, p in model.named_parameters() if "conv_adapter" in n]
    assert grads and all(g is not None for g in grads)
    assert all(p.grad is None for n, p in model.named_parameters() if not p.requires_grad)
    if arch == "convnext_tiny" and scheme.startswith("conv_"):  # the 2x2/s2 down-sampling convs are adapted
        assert "features.2.1" in info.adapted and "features.1.0.block.0" in info.adapted


@pytest.fixture(scope="module")
def backbones():
    """The real architectures with cheap N(0, 0.02) weights (torchvision's own init of ~50M parameters
    takes seconds; these tests are about structure and gradient flow, not values)."""
    out = {}
    torch.manual_seed(0)
    for arch, *_ in BACKBONES:
        with torch.device("meta"):
            model = create_backbone(arch)
        model.to_empty(device="cpu")
        for name, t in model.state_dict().items():
            if name.endswith("running_var") or name.endswith(".weight") and t.ndim == 1:
                t.fill_(1.0)  # norm scales and variances
            elif t.is_floating_point():
                t.normal_(0, 0.02) if t.ndim > 1 else t.zero_()
            else:
                t.zero_()
        replace_head(model, arch, 3)
        out[arch] = model
    return out


@pytest.fixture(scope="module")
def resnet50_meta():
    with torch.device("meta"):  # architecture only: no memory, no init time
        return create_backbone("resnet50")
