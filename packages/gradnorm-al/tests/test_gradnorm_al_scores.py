"""GradNorm scores: vectorised paths equal the per-sample loop, the paper's identities, closed forms."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradnorm_al import build_model, entropy_logit_gradient, per_sample_grad_norms
from gradnorm_al.gradnorm import ghost_unsupported, selected_parameters

torch.set_default_dtype(torch.float32)


def _warm_bn(model, x):
    """Give BatchNorm non-trivial running statistics, then switch to eval."""
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(x)
    model.eval()
    return model


class _Mixed(nn.Module):
    """Covers every ghost rule: strided/dilated/grouped conv with bias, GroupNorm, BN, LayerNorm,
    a Linear over a sequence (3-D input) and a plain Linear head."""

    def __init__(self, c=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=True)
        self.gn = nn.GroupNorm(2, 8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=4, bias=True)
        self.bn = nn.BatchNorm2d(8)
        self.seq = nn.Linear(8, 6)
        self.ln = nn.LayerNorm(6)
        self.head = nn.Linear(6, c)

    def forward(self, x):
        h = torch.relu(self.gn(self.conv1(x)))
        h = torch.relu(self.bn(self.conv2(h)))
        tokens = h.flatten(2).transpose(1, 2)  # (B, P, 8)
        t = self.ln(torch.tanh(self.seq(tokens)))
        return self.head(t.mean(1))


MODELS = {
    "small_cnn": lambda: build_model("small_cnn", 4, width=4),
    "mixed": lambda: _Mixed(4),
}


@pytest.fixture(scope="module", params=sorted(MODELS))
def model_and_data(request):
    torch.manual_seed(0)
    model = MODELS[request.param]().double()
    x = torch.randn(5, 3, 8, 8, dtype=torch.float64)
    return _warm_bn(model, torch.randn(16, 3, 8, 8, dtype=torch.float64)), x


@pytest.mark.parametrize("impl", ["vmap", "ghost"])
@pytest.mark.parametrize("loss", ["entropy", "egl"])
def test_vectorised_norms_equal_the_per_sample_loop(model_and_data, impl, loss):
    model, x = model_and_data
    assert ghost_unsupported(model, selected_parameters(model)) is None
    aggregates = ("sum_of_norms", "global_l2") if loss == "entropy" else ("sum_of_norms",)
    for aggregate in aggregates:
        ref = per_sample_grad_norms(model, x, loss, impl="loop", aggregate=aggregate)
        got = per_sample_grad_norms(model, x, loss, impl=impl, aggregate=aggregate, chunk_size=3)
        assert ref.min() > 0
        torch.testing.assert_close(got, ref, rtol=1e-8, atol=0)


@pytest.mark.parametrize("impl", ["vmap", "ghost"])
def test_per_tensor_norms_equal_the_loop_and_chunking_does_not_matter(model_and_data, impl):
    model, x = model_and_data
    _, ref = per_sample_grad_norms(model, x, "entropy", impl="loop", return_per_tensor=True)
    s1, got = per_sample_grad_norms(model, x, "entropy", impl=impl, return_per_tensor=True, chunk_size=2)
    s2 = per_sample_grad_norms(model, x, "entropy", impl=impl, chunk_size=64)
    assert set(got) == set(ref) == {n for n, p in model.named_parameters()}
    for n in ref:
        torch.testing.assert_close(got[n], ref[n], rtol=1e-8, atol=1e-300)
    torch.testing.assert_close(s1, s2, rtol=1e-12, atol=0)


@pytest.mark.slow  # ~10 s idle, much more under contention; the small models cover the same ghost rules
def test_resnet18_ghost_equals_loop_float64():
    torch.manual_seed(1)
    model = _warm_bn(build_model("resnet18_cifar", 10).double(), torch.randn(4, 3, 16, 16, dtype=torch.float64))
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    ref = per_sample_grad_norms(model, x, "entropy", impl="loop")
    got = per_sample_grad_norms(model, x, "entropy", impl="auto")  # auto -> ghost on ResNet-18
    torch.testing.assert_close(got, ref, rtol=1e-8, atol=0)


@pytest.mark.parametrize("impl", ["loop", "ghost"])
def test_expected_gradnorm_equals_entropy_gradnorm_and_detached_is_zero(model_and_data, impl):
    model, x = model_and_data
    ent = per_sample_grad_norms(model, x, "entropy", impl=impl)
    exp = per_sample_grad_norms(model, x, "expected", impl=impl)
    torch.testing.assert_close(exp, ent, rtol=1e-10, atol=0)
    detached = per_sample_grad_norms(model, x, "expected_detached", impl=impl)
    assert detached.max() < 1e-12 * ent.min()


def _linear(W, b):
    head = nn.Linear(W.shape[1], W.shape[0]).double()
    with torch.no_grad():
        head.weight.copy_(W)
        head.bias.copy_(b)
    return head


@pytest.mark.parametrize("impl", ["loop", "vmap", "ghost"])
def test_entropy_gradnorm_is_zero_for_uniform_and_one_hot_predictions(impl):
    h = torch.randn(4, 5, dtype=torch.float64)
    uniform = _linear(torch.zeros(3, 5, dtype=torch.float64), torch.zeros(3, dtype=torch.float64))
    one_hot = _linear(torch.zeros(3, 5, dtype=torch.float64), torch.tensor([60.0, 0.0, 0.0], dtype=torch.float64))
    middle = _linear(torch.zeros(3, 5, dtype=torch.float64), torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))
    assert per_sample_grad_norms(uniform, h, "entropy", impl=impl).abs().max() < 1e-14
    assert per_sample_grad_norms(one_hot, h, "entropy", impl=impl).abs().max() < 1e-20
    assert per_sample_grad_norms(middle, h, "entropy", impl=impl).min() > 0.1  # intermediate: not zero


@pytest.mark.parametrize("impl", ["loop", "ghost", "head"])
def test_last_layer_closed_forms(impl):
    """Linear head z = W h + b: dH/dz = g = -p (log p + H); official score ||g||(||h|| + 1), global
    ||g|| sqrt(||h||^2 + 1); EGL = sum_y p_y ||p - e_y|| (||h|| + 1)."""
    torch.manual_seed(3)
    W, b, h = (torch.randn(4, 6, dtype=torch.float64), torch.randn(4, dtype=torch.float64),
               torch.randn(5, 6, dtype=torch.float64))
    head = _linear(W, b)
    z = h @ W.T + b
    g = entropy_logit_gradient(z)
    hn = h.norm(dim=1)
    official = per_sample_grad_norms(head, h, "entropy", impl=impl, aggregate="sum_of_norms")
    torch.testing.assert_close(official, g.norm(dim=1) * (hn + 1), rtol=1e-10, atol=0)
    global_l2 = per_sample_grad_norms(head, h, "entropy", impl=impl, aggregate="global_l2")
    torch.testing.assert_close(global_l2, g.norm(dim=1) * (hn ** 2 + 1).sqrt(), rtol=1e-10, atol=0)
    p = F.softmax(z, 1)
    egl = sum(p[:, y] * (p - F.one_hot(torch.tensor(y), 4)).norm(dim=1) * (hn + 1) for y in range(4))
    torch.testing.assert_close(per_sample_grad_norms(head, h, "egl", impl=impl), egl, rtol=1e-10, atol=0)


def test_entropy_logit_gradient_matches_autograd():
    z = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    p = F.softmax(z, 1)
    H = -(p * p.log()).sum()
    (auto,) = torch.autograd.grad(H, z)
    torch.testing.assert_close(entropy_logit_gradient(z.detach()), auto, rtol=1e-12, atol=1e-14)


def test_sum_of_norms_and_global_l2_can_rank_differently():
    """Two tensors: sample A has its gradient spread over both, B concentrated in one. With equal
    global norms, the sum of per-tensor norms prefers A (sqrt(2) vs 1)."""
    from gradnorm_al.gradnorm import aggregate_norms

    sq = {"w": torch.tensor([0.5, 1.0], dtype=torch.float64), "b": torch.tensor([0.5, 0.0], dtype=torch.float64)}
    torch.testing.assert_close(aggregate_norms(sq, "global_l2"), torch.tensor([1.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(aggregate_norms(sq, "sum_of_norms"), torch.tensor([math.sqrt(2), 1.0], dtype=torch.float64))


def test_params_regex_restricts_the_norm_to_the_head():
    torch.manual_seed(0)
    model = _warm_bn(build_model("small_cnn", 10, width=4).double(), torch.randn(8, 3, 8, 8, dtype=torch.float64))
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    _, per = per_sample_grad_norms(model, x, "entropy", impl="loop", return_per_tensor=True)
    head = per_sample_grad_norms(model, x, "entropy", impl="ghost", params=r"^fc\.")
    torch.testing.assert_close(head, per["fc.weight"].sqrt() + per["fc.bias"].sqrt(), rtol=1e-10, atol=0)
    with pytest.raises(ValueError, match="selects no trainable parameter"):
        per_sample_grad_norms(model, x, params="^nothing$")


def test_batchnorm_in_train_mode_is_refused_by_vectorised_paths():
    model = build_model("small_cnn", 10, width=4).double().train()
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    for impl in ("vmap", "ghost"):
        with pytest.raises(ValueError, match="BatchNorm module .* uses batch statistics"):
            per_sample_grad_norms(model, x, impl=impl, eval_mode_=False)
    assert model.training  # mode restored
    per_sample_grad_norms(model, x, impl="loop", eval_mode_=False)  # the loop can (batch of one)


def test_ghost_refuses_unsupported_layers_and_auto_falls_back_to_vmap():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(2, 4, 3), nn.Flatten(), nn.Linear(4 * 6, 3)).double()
    x = torch.randn(5, 2, 8, dtype=torch.float64)
    assert "Conv1d" in ghost_unsupported(model, selected_parameters(model))
    with pytest.raises(ValueError, match="impl='vmap'"):
        per_sample_grad_norms(model, x, impl="ghost")
    torch.testing.assert_close(per_sample_grad_norms(model, x, impl="auto"),
                               per_sample_grad_norms(model, x, impl="loop"), rtol=1e-8, atol=0)


def test_bad_options_give_clear_errors():
    model = nn.Linear(3, 2)
    x = torch.randn(2, 3)
    with pytest.raises(ValueError, match="Unknown gradnorm loss"):
        per_sample_grad_norms(model, x, "entropyy")
    with pytest.raises(ValueError, match="Unknown impl"):
        per_sample_grad_norms(model, x, impl="fast")
    with pytest.raises(ValueError, match="Unknown aggregate"):
        per_sample_grad_norms(model, x, aggregate="l1")


def test_head_closed_form_equals_the_loop_without_a_backward_through_the_backbone():
    """params='^fc\\.' on a CNN: the closed form (auto -> head) equals the per-sample loop, and the backbone
    runs with autograd off (nothing back-propagates to the input)."""
    from gradnorm_al.gradnorm import resolve_impl

    torch.manual_seed(0)
    model = _warm_bn(build_model("small_cnn", 10, width=4).double(), torch.randn(8, 3, 8, 8, dtype=torch.float64))
    x = torch.randn(6, 3, 8, 8, dtype=torch.float64)
    assert resolve_impl(model, selected_parameters(model, r"^fc\."), "auto") == "head"
    assert resolve_impl(model, selected_parameters(model, r"^fc\.weight$"), "auto") == "head"
    assert resolve_impl(model, selected_parameters(model, "all"), "auto") == "ghost"
    grad_on: list[bool] = []
    model.features.register_forward_pre_hook(lambda m, a: grad_on.append(torch.is_grad_enabled()))
    for loss in ("entropy", "egl"):
        for aggregate in ("sum_of_norms", "global_l2"):
            grad_on.clear()
            head = per_sample_grad_norms(model, x, loss, params=r"^fc\.", aggregate=aggregate)
            assert grad_on and not any(grad_on), "the backbone ran with autograd on"
            ref = per_sample_grad_norms(model, x, loss, params=r"^fc\.", aggregate=aggregate, impl="loop")
            torch.testing.assert_close(head, ref, rtol=1e-10, atol=0)
    only_w = per_sample_grad_norms(model, x, "entropy", params=r"^fc\.weight$")
    _, per = per_sample_grad_norms(model, x, "entropy", impl="loop", return_per_tensor=True)
    torch.testing.assert_close(only_w, per["fc.weight"].sqrt(), rtol=1e-10, atol=0)


def test_head_refuses_a_linear_whose_output_is_not_the_logits():
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 2)

        def forward(self, x):
            return 2 * self.fc(x)

    with pytest.raises(ValueError, match="is not the model's logits"):
        per_sample_grad_norms(Scaled().double(), torch.randn(2, 3, dtype=torch.float64), impl="head")
