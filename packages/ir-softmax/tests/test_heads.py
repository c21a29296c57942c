"""The heads and the IR centre rules against float64 references and exact invariants."""

import math
from collections import deque

import pytest
import torch
import torch.nn.functional as F

from ir_softmax.heads import (
    CENTER_UPDATES,
    CombinedMargin,
    CosineMargin,
    MarginHead,
    SphereMargin,
    build_head,
    centre_term,
    class_centres,
    list_heads,
    register_head,
    update_centres,
)

D = torch.float64


def _data(n=40, c=5, d=6, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=dtype) * 3
    y = torch.randint(0, c, (n,), generator=g)
    y[:c] = torch.arange(c)  # every class present
    return x, y


# ------------------------------------------------------------------------------------ Eq. 3 centres


def test_class_centres_is_the_normalised_mean_of_normalised_features():
    x, y = _data(dtype=D)
    centres, counts = class_centres(x, y, 6)  # class 5 has no sample
    for j in range(5):
        xs = x[y == j]
        mean = (xs / xs.norm(dim=1, keepdim=True)).mean(0)
        assert torch.allclose(centres[j], mean / mean.norm(), atol=1e-14, rtol=0)
        assert counts[j] == (y == j).sum()
    assert torch.equal(centres[5], torch.zeros(6, dtype=D)) and counts[5] == 0


def test_class_centres_bit_identical_when_other_classes_are_added_or_removed():
    x, y = _data(n=60)
    full, _ = class_centres(x, y, 5)
    keep = (y == 2) | (torch.arange(60) % 3 == 0)  # drop two thirds of the other classes' samples
    fewer, _ = class_centres(x[keep], y[keep], 5)
    assert torch.equal(full[2], fewer[2])
    extra_x, extra_y = torch.randn(30, 6) * 5, torch.randint(0, 2, (30,))  # more samples of classes 0, 1
    more, _ = class_centres(torch.cat([extra_x, x]), torch.cat([extra_y, y]), 5)
    assert torch.equal(full[2], more[2]) and torch.equal(full[4], more[4])
    assert not torch.equal(full[0], more[0])


# -------------------------------------------------------------------------------- centre update rules


def test_grad_rule_is_one_gradient_step_on_the_centre_term_then_renormalised():
    x, y = _data(dtype=D)
    xn = F.normalize(x, dim=1)
    c0 = F.normalize(torch.randn(7, 6, dtype=D), dim=1)  # classes 5, 6 absent from the batch
    c = c0.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(centre_term(c, xn, y), c)
    for lr in (0.3, 0.5, 1.0):
        expected = F.normalize(c0 - lr * grad, dim=1)
        got = update_centres(c0, xn, y, "grad", lr)
        assert torch.allclose(got[:5], expected[:5], atol=1e-14, rtol=0)
        assert torch.equal(got[5:], c0[5:])  # absent classes untouched, bit for bit
        assert torch.allclose(got.norm(dim=1), torch.ones(7, dtype=D), atol=1e-14)
    # closed form of the gradient: c_j - mean_j
    means = torch.stack([xn[y == j].mean(0) for j in range(5)])
    assert torch.allclose(grad[:5], c0[:5] - means, atol=1e-14) and torch.equal(grad[5:], torch.zeros(2, 6, dtype=D))


def test_grad_rule_with_lr_one_is_the_batch_estimate_and_iterating_converges_to_eq3():
    x, y = _data(n=80)
    c0 = F.normalize(torch.randn(5, 6), dim=1)
    eq3, _ = class_centres(x, y, 5)
    assert torch.allclose(update_centres(c0, F.normalize(x, dim=1), y, "grad", 1.0), eq3, atol=1e-6)
    c = c0
    for _ in range(600):  # a fixed feature matrix: the centres converge to Eq. 3 (slowly when ||mean_j|| is small)
        c = update_centres(c, F.normalize(x, dim=1), y, "grad", 0.3)
    assert torch.allclose(c, eq3, atol=1e-5)


@pytest.mark.parametrize("rule", CENTER_UPDATES)
def test_every_rule_is_immune_to_other_classes_and_keeps_unit_norm(rule):
    x, y = _data(n=60)
    xn = F.normalize(x, dim=1)
    c0 = F.normalize(torch.randn(6, 6), dim=1)

    def bank():
        return {"memory": torch.zeros(6, 4, 6), "filled": torch.zeros(6, dtype=torch.long),
                "pointer": torch.zeros(6, dtype=torch.long)}

    full = update_centres(c0, xn, y, rule, 0.5, bank())
    keep = (y == 3) | (torch.arange(60) % 4 == 0)
    part = update_centres(c0, xn[keep], y[keep], rule, 0.5, bank())
    assert torch.equal(full[3], part[3])
    assert torch.equal(full[5], c0[5])  # absent class
    assert torch.allclose(full.norm(dim=1), torch.ones(6), atol=1e-6)
    assert not torch.equal(full[3], c0[3])


def test_running_sum_and_instance_rules_match_references():
    x, y = _data(dtype=D)
    xn = F.normalize(x, dim=1)
    c0 = F.normalize(torch.randn(5, 6, dtype=D), dim=1)
    got = update_centres(c0, xn, y, "running_sum")
    for j in range(5):
        ref = c0[j] + xn[y == j].sum(0)
        assert torch.allclose(got[j], ref / ref.norm(), atol=1e-14)
    got = update_centres(c0, xn, y, "instance")
    for j in range(5):
        last = int(torch.nonzero(y == j)[-1])
        assert torch.equal(got[j], xn[last])


def test_bank_rule_matches_a_per_class_window_reference_over_several_batches():
    torch.manual_seed(0)
    size, classes = 3, 4
    state = {"memory": torch.zeros(classes, size, 5, dtype=D), "filled": torch.zeros(classes, dtype=torch.long),
             "pointer": torch.zeros(classes, dtype=torch.long)}
    windows = [deque(maxlen=size) for _ in range(classes)]
    c = F.normalize(torch.randn(classes, 5, dtype=D), dim=1)
    for step in range(6):
        n = 2 + 3 * step % 7
        y = torch.randint(0, classes - 1, (n,))  # class 3 never appears
        xn = F.normalize(torch.randn(n, 5, dtype=D), dim=1)
        for i in range(n):
            windows[int(y[i])].append(xn[i])
        c_new = update_centres(c, xn, y, "bank", bank=state)
        for j in range(classes):
            if (y == j).any():
                ref = torch.stack(list(windows[j])).mean(0)
                assert torch.allclose(c_new[j], ref / ref.norm(), atol=1e-14), (step, j)
            else:
                assert torch.equal(c_new[j], c[j])
        c = c_new
    assert state["filled"].tolist() == [min(size, len(w)) if w else 0 for w in windows][:3] + [0]


# --------------------------------------------------------------------------------------- margins


@pytest.mark.parametrize("m", [1, 2, 3, 4, 5])
def test_sphereface_psi_matches_the_piecewise_definition_and_is_continuous_decreasing(m):
    psi = SphereMargin(m)
    theta = torch.linspace(0, math.pi, 20001, dtype=D)
    got = psi(torch.cos(theta))
    k = torch.floor(m * theta / math.pi).clamp(max=m - 1)
    ref = (-1) ** k * torch.cos(m * theta) - 2 * k
    assert torch.allclose(got, ref, atol=1e-9)
    assert float(psi(torch.tensor(1.0, dtype=D))) == 1.0
    assert abs(float(psi(torch.tensor(-1.0, dtype=D))) - (1 - 2 * m)) < 1e-12
    assert (got[1:] < got[:-1]).all()  # strictly decreasing on [0, pi]
    for kk in range(1, m):  # continuous at the joints k pi / m
        t = kk * math.pi / m
        left, right = psi(torch.cos(torch.tensor(t - 1e-9, dtype=D))), psi(torch.cos(torch.tensor(t + 1e-9, dtype=D)))
        assert abs(float(left - right)) < 1e-6
    if m == 1:
        assert torch.allclose(got, torch.cos(theta), atol=1e-12)


def test_sphere_margin_rejects_non_integer_m():
    with pytest.raises(ValueError, match="integer"):
        SphereMargin(2.5)


def test_combined_margin_matches_arcface_and_the_identity():
    theta = torch.linspace(0.01, 2.3, 100, dtype=D)  # m1 theta + m2 < pi
    c = torch.cos(theta)
    assert torch.allclose(CombinedMargin(1.0, 0.5, 0.0)(c), torch.cos(theta + 0.5), atol=1e-9)
    assert torch.allclose(CombinedMargin(1.2, 0.3, 0.2)(c), torch.cos(1.2 * theta + 0.3) - 0.2, atol=1e-9)
    assert torch.equal(CombinedMargin(1.0, 0.0, 0.0)(c), c)
    assert torch.allclose(CosineMargin(0.35)(c), c - 0.35)
    big = CombinedMargin(1.0, 0.5, 0.0)(torch.cos(torch.linspace(0, math.pi, 500, dtype=D)))
    assert (big[1:] <= big[:-1] + 1e-12).all()  # the clamp keeps psi non-increasing past pi - m


# ----------------------------------------------------------------------------------- heads vs refs


def _am_reference(x, w, y, s, m):
    """AM-Softmax written out by hand in float64."""
    xn = x / x.norm(dim=1, keepdim=True)
    wn = w / w.norm(dim=1, keepdim=True)
    cos = xn @ wn.t()
    onehot = F.one_hot(y, w.shape[0]).to(x.dtype)
    logits = s * (cos - m * onehot)
    return -(logits.gather(1, y[:, None]).squeeze(1) - torch.logsumexp(logits, 1)).mean()


def test_amsoftmax_equals_a_float64_reference_in_value_and_gradients():
    x, y = _data(dtype=D)
    head = build_head("amsoftmax", 5, 6, m=0.35, s=30.0).double()
    x1 = x.clone().requires_grad_(True)
    loss = head(x1, y)
    x2, w2 = x.clone().requires_grad_(True), head.weight.detach().clone().requires_grad_(True)
    ref = _am_reference(x2, w2, y, 30.0, 0.35)
    assert torch.allclose(loss, ref, atol=1e-12)
    loss.backward()
    ref.backward()
    assert torch.allclose(x1.grad, x2.grad, atol=1e-12) and torch.allclose(head.weight.grad, w2.grad, atol=1e-12)


def test_ir_amsoftmax_uses_the_centres_in_place_of_the_weights():
    x, y = _data(dtype=D)
    head = build_head("ir_amsoftmax", 5, 6, m=0.35, s=30.0).double().eval()
    ref = _am_reference(x, head.centres.clone(), y, 30.0, 0.35)
    assert torch.allclose(head(x, y), ref, atol=1e-12)


def test_scale_readings_feature_norm_and_fixed():
    x, y = _data(dtype=D)
    for name in ("amsoftmax", "ir_amsoftmax"):
        fixed = build_head(name, 5, 6, s=7.0).double()
        norm = build_head(name, 5, 6, scale="feature_norm").double()
        if name == "amsoftmax":
            norm.weight.data.copy_(fixed.weight.data)
        else:
            norm.centres.copy_(fixed.centres)
        cos = F.normalize(x, dim=1) @ fixed.class_vectors().t()
        assert torch.allclose(fixed.get_logits(x), 7.0 * cos, atol=1e-12)
        assert torch.allclose(norm.get_logits(x), x.norm(dim=1, keepdim=True) * cos, atol=1e-12)
        target = norm.margin_logits(x, y).gather(1, y[:, None]).squeeze(1)
        assert torch.allclose(target, x.norm(dim=1) * (cos.gather(1, y[:, None]).squeeze(1) - 0.35), atol=1e-12)


def test_reductions_m1_asoftmax_is_normalised_weight_softmax_and_m0_amsoftmax_is_normface():
    x, y = _data(dtype=D)
    a = build_head("asoftmax", 5, 6, m=1, blend=False).double()
    ref = F.cross_entropy(x @ F.normalize(a.weight, dim=1).t(), y)  # ||x|| cos = x . w/||w||
    assert torch.allclose(a(x, y), ref, atol=1e-12)
    am = build_head("amsoftmax", 5, 6, m=0.0, s=16.0).double()
    nf = build_head("normface", 5, 6, s=16.0).double()
    nf.weight.data.copy_(am.weight.data)
    assert torch.allclose(am(x, y), nf(x, y), atol=1e-14)
    cm = build_head("combined", 5, 6, m1=1.0, m2=0.0, m3=0.0, s=16.0).double()
    cm.weight.data.copy_(am.weight.data)
    assert torch.allclose(cm(x, y), nf(x, y), atol=1e-14)
    ref_nf = F.cross_entropy(16.0 * F.normalize(x, dim=1) @ F.normalize(nf.weight, dim=1).t(), y)
    assert torch.allclose(nf(x, y), ref_nf, atol=1e-12)


def test_asoftmax_blend_follows_the_lambda_schedule_and_counts_training_iterations():
    x, y = _data(dtype=D)
    head = build_head("asoftmax", 5, 6, m=4, blend=True, lambda_base=1000.0, lambda_gamma=0.5,
                      lambda_power=1.0, lambda_min=5.0).double()
    wn = F.normalize(head.weight.detach(), dim=1)
    cos = F.normalize(x, dim=1) @ wn.t()
    theta = torch.acos(cos.gather(1, y[:, None]))
    k = torch.floor(4 * theta / math.pi)
    psi = (-1) ** k * torch.cos(4 * theta) - 2 * k
    for it in range(4):
        lam = max(5.0, 1000.0 / (1 + 0.5 * it))
        target = (lam * torch.cos(theta) + psi) / (1 + lam)
        logits = x.norm(dim=1, keepdim=True) * cos.scatter(1, y[:, None], target)
        assert int(head.iteration) == it
        assert torch.allclose(head(x, y), F.cross_entropy(logits, y), atol=1e-12)
    head.eval()
    head(x, y)
    assert int(head.iteration) == 4  # evaluation does not advance the schedule
    head.iteration.fill_(10**6)
    assert head.current_lambda() == 5.0


# ------------------------------------------------------------------------------ IR head behaviour


@pytest.mark.parametrize("name", ["ir_asoftmax", "ir_amsoftmax", "ir_normface", "ir_arcface"])
def test_ir_head_classification_loss_gives_centres_no_gradient_and_update_follows_the_rule(name):
    x, y = _data()
    head = build_head(name, 5, 6, center_update="grad", center_lr=0.5)
    assert list(head.parameters()) == []  # nothing the classification loss could move
    before = head.centres.clone()
    emb = x.clone().requires_grad_(True)
    eval_loss = head.eval()(emb, y)
    assert torch.equal(head.centres, before)  # no update in eval mode
    loss = head.train()(emb, y)
    assert torch.equal(loss, eval_loss)  # the loss used the pre-update centres
    expected = update_centres(before, F.normalize(x, dim=1), y, "grad", 0.5)
    assert torch.equal(head.centres, expected)
    loss.backward()  # the graph survives the centre update
    assert emb.grad is not None and emb.grad.abs().sum() > 0
    assert torch.allclose(head.centres.norm(dim=1), torch.ones(5), atol=1e-6)


def test_center_feature_weight_adds_the_pull_term_to_the_feature_gradient():
    x, y = _data(dtype=D)
    plain = build_head("ir_amsoftmax", 5, 6).double().eval()
    pulled = build_head("ir_amsoftmax", 5, 6, center_feature_weight=0.7).double().eval()
    pulled.centres.copy_(plain.centres)
    x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    plain(x1, y).backward()
    pulled(x2, y).backward()
    x3 = x.clone().requires_grad_(True)
    xn = x3 / x3.norm(dim=1, keepdim=True)
    (0.7 * 0.5 * ((xn - plain.centres[y]) ** 2).sum(1).mean()).backward()
    assert torch.allclose(x2.grad, x1.grad + x3.grad, atol=1e-12)
    assert x3.grad.abs().sum() > 1e-3


def test_eq2_softmax_weight_of_an_absent_class_moves_but_an_ir_centre_does_not():
    """Term 2 of Eq. 2: one SGD step on a batch without class 4 changes w_4 (pushed away from the others);
    the IR centre of class 4 stays bit-identical."""
    torch.manual_seed(0)
    x = torch.randn(32, 6)
    y = torch.randint(0, 4, (32,))
    soft = build_head("softmax", 5, 6)
    w4 = soft.fc.weight[4].detach().clone()
    opt = torch.optim.SGD(soft.parameters(), lr=0.1)
    soft(x, y).backward()
    g4 = soft.fc.weight.grad[4].clone()
    probs = torch.softmax(soft.get_logits(x), 1)[:, 4]
    assert torch.allclose(g4, (probs[:, None] * x).mean(0), atol=1e-6)  # exactly term 2
    opt.step()
    assert not torch.allclose(soft.fc.weight[4], w4)
    ir = build_head("ir_amsoftmax", 5, 6)
    c4 = ir.centres[4].clone()
    ir(x, y)
    assert torch.equal(ir.centres[4], c4)


def test_frozen_centres_give_the_predictions_of_a_cosine_classifier_with_those_weights():
    x, y = _data(n=100)
    centres, _ = class_centres(x, y, 5)
    ir = build_head("ir_amsoftmax", 5, 6).eval()
    ir.centres.copy_(centres)
    cos_pred = (F.normalize(x, dim=1) @ F.normalize(centres, dim=1).t()).argmax(1)
    assert torch.equal(ir.predict(x), cos_pred)


@pytest.mark.parametrize("name", ["softmax", "normface", "asoftmax", "amsoftmax", "arcface", "combined"])
def test_every_trainable_head_parameter_gets_a_gradient(name):
    x, y = _data()
    head = build_head(name, 5, 6)
    head(x, y).backward()
    for n, p in head.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, n


def test_registry_lists_names_and_rejects_unknown_and_duplicate_names():
    names = list_heads()
    assert {"softmax", "asoftmax", "amsoftmax", "ir_asoftmax", "ir_amsoftmax", "arcface", "ir_combined"} <= set(names)
    with pytest.raises(ValueError, match="unknown head 'amsoftmx'"):
        build_head("amsoftmx", 3, 4)
    with pytest.raises(ValueError, match="already registered"):
        register_head("softmax")(lambda *a, **k: None)
    with pytest.raises(ValueError, match="labels must lie"):
        build_head("amsoftmax", 3, 4)(torch.randn(2, 4), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="center_update"):
        MarginHead(3, 4, classifier="centres", center_update="ema")
