"""The search: sampling and conditional resamples, straight-through magnitudes, RELAX
unbiasedness, the finite-difference Hessian-vector product, the unrolled bi-level gradient,
the network step, genotype extraction, the official-code flags."""

import copy

import pytest
import torch
from torch import nn

from dada.policy import SUBPOLICIES
from dada.search import (
    AugmentParameters,
    RelaxTerms,
    SearchConfig,
    SearchStep,
    bernoulli_conditional,
    categorical_conditional,
    draw_noise,
    finite_difference_hvp,
    gumbel_st_input,
    log_prob,
    relax,
    straight_through,
)
from dada.toy import make_control, make_toy, sample_estimates, train_control

D = torch.float64


def test_sampling_follows_the_gumbel_and_logistic_noise():
    aug = AugmentParameters().double()
    with torch.no_grad():
        aug.weights.copy_(torch.randn(105, dtype=D))
        aug.probabilities.copy_(torch.rand(105, 2, dtype=D))
    noise = draw_noise(105, 2, torch.Generator().manual_seed(0), dtype=D)
    rel = relax(aug.weights, aug.prob_logits(), noise, 0.5)
    z = torch.log_softmax(aug.weights, -1) - torch.log(-torch.log(noise.u_w))
    assert rel.k == int(z.argmax())
    p = aug.probabilities.clamp(1e-6, 1 - 1e-6)
    assert torch.equal(rel.b > 0, noise.u_p > 1 - p)  # b = 1[logit p + logit u > 0] <=> u > 1 - p
    assert torch.allclose(rel.soft_z, torch.softmax(z / 0.5, -1))


def test_conditional_resamples_are_consistent_and_have_the_right_marginal():
    g = torch.Generator().manual_seed(0)
    n = 200_000
    logits = torch.tensor([-1.2, 0.3, 2.0], dtype=D)
    u, v = torch.rand(n, 3, generator=g, dtype=D), torch.rand(n, 3, generator=g, dtype=D)
    z = logits + torch.log(u) - torch.log1p(-u)
    b = (z > 0).to(D)
    zt = bernoulli_conditional(logits, b, v)
    assert torch.equal(zt > 0, b > 0)
    for q in (0.1, 0.5, 0.9):  # z~ (with b from the model) is distributed as z
        assert torch.allclose(zt.quantile(q, 0), z.quantile(q, 0), atol=0.03)
    log_theta = torch.log_softmax(torch.tensor([0.5, -1.0, 1.5, 0.0], dtype=D), -1)
    u, v = torch.rand(n, 4, generator=g, dtype=D), torch.rand(n, 4, generator=g, dtype=D)
    z = log_theta - torch.log(-torch.log(u))
    k = z.argmax(-1)
    zt = categorical_conditional(log_theta, k, v)
    assert torch.equal(zt.argmax(-1), k)
    for q in (0.1, 0.5, 0.9):
        assert torch.allclose(zt.quantile(q, 0), z.quantile(q, 0), atol=0.03)


def test_straight_through_input_is_bit_exact_and_its_magnitude_gradient_is_the_pixel_sum():
    aug = AugmentParameters()
    x = torch.randn(6, 3, 8, 8) * 3
    applied = torch.tensor([True, False])
    st = straight_through(x, aug.st_levels(), 17, applied)
    assert torch.equal(st, x)
    w = torch.randn_like(x)
    (st * w).sum().backward()
    grad = aug.magnitudes.grad
    assert grad[17, 0].item() == pytest.approx(w.sum().item(), rel=1e-5)
    assert grad[17, 1].item() == 0.0 and grad.abs().sum().item() == pytest.approx(abs(w.sum().item()), rel=1e-5)


def test_gumbel_st_surrogate_keeps_the_forward_value():
    aug = AugmentParameters()
    rel = relax(aug.weights, aug.prob_logits(), draw_noise(105, 2, torch.Generator().manual_seed(3)), 0.5)
    x = torch.randn(2, 3, 4, 4)
    out = gumbel_st_input(x, rel)
    assert torch.equal(out, x)
    out.sum().backward()
    assert aug.weights.grad.abs().sum() > 0 and aug.probabilities.grad[rel.k].abs().sum() > 0


# ---------------------------------------------------------------------------- RELAX


@pytest.mark.parametrize("estimator,scale", [("relax", 3.0), ("relax", 0.3), ("reinforce", None)])
def test_estimators_are_unbiased_on_the_toy(estimator, scale):
    toy = make_toy(seed=1)
    exact = torch.cat([g.reshape(-1) for g in toy.exact_gradient()])
    control = make_control(toy, seed=2, scale=scale) if estimator == "relax" else None  # arbitrary, fixed
    est = sample_estimates(toy, estimator, 1500, seed=4, control=control)
    z = (est.mean(0) - exact) / (est.std(0) / len(est) ** 0.5)
    assert z.abs().max() < 4.5, z


def test_relax_control_variate_matters_per_sample_but_not_in_mean():
    toy = make_toy(seed=1)
    a = sample_estimates(toy, "relax", 200, seed=5, control=make_control(toy, seed=2, scale=3.0))
    b = sample_estimates(toy, "relax", 200, seed=5, control=make_control(toy, seed=9, scale=3.0))
    assert (a - b).abs().max() > 0.1  # the control variate enters every estimate


@pytest.mark.slow
def test_trained_control_variate_reduces_variance_below_reinforce():
    toy = make_toy(seed=0)
    control = make_control(toy, seed=0)
    losses = train_control(toy, control, steps=300)
    assert sum(losses[-30:]) < sum(losses[:30])
    relax_var = sample_estimates(toy, "relax", 1000, 7, control).var(0).sum()
    reinforce_var = sample_estimates(toy, "reinforce", 1000, 7).var(0).sum()
    assert relax_var < reinforce_var


def test_log_prob_official_broadcast_scales_the_categorical_score():
    aug = AugmentParameters()
    rel = relax(aug.weights, aug.prob_logits(), draw_noise(105, 2, torch.Generator().manual_seed(0)), 0.5)
    plain = torch.autograd.grad(log_prob(rel), [aug.weights, aug.probabilities], retain_graph=True)
    broad = torch.autograd.grad(log_prob(rel, broadcast=True), [aug.weights, aug.probabilities])
    assert torch.allclose(broad[0], 210 * plain[0]) and torch.allclose(broad[1], plain[1])
    assert plain[0][rel.k] > 0 and (plain[0].sum()).abs() < 1e-6  # d log softmax_k / d beta


# ------------------------------------------------------------------ bi-level update


def test_finite_difference_hvp_matches_the_exact_hvp_on_a_tiny_mlp():
    torch.manual_seed(0)
    x, y = torch.randn(16, 5, dtype=D), torch.randn(16, 1, dtype=D)
    w1, w2 = torch.randn(5, 7, dtype=D, requires_grad=True), torch.randn(7, 1, dtype=D, requires_grad=True)
    alpha = torch.randn(5, dtype=D, requires_grad=True)

    def loss(ws, a):
        return ((torch.tanh((x * torch.sigmoid(a)) @ ws[0]) @ ws[1] - y) ** 2).mean()

    v = [torch.randn_like(w1), torch.randn_like(w2)]
    g = torch.autograd.grad(loss([w1, w2], alpha), [w1, w2], create_graph=True)
    exact = torch.autograd.grad(sum((gi * vi).sum() for gi, vi in zip(g, v)), alpha)[0]
    fd = finite_difference_hvp(lambda ws: torch.autograd.grad(loss(ws, alpha), alpha)[0:1], [w1, w2], v)[0]
    assert torch.norm(fd - exact) / torch.norm(exact) < 1e-3


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(48, 6), nn.Tanh(), nn.Linear(6, 3))

    def forward(self, x):
        return self.net(x)


def _setup(estimator="gumbel_st", **flags):
    torch.manual_seed(0)
    model = TinyNet().double()
    aug = AugmentParameters().double()
    with torch.no_grad():
        aug.weights.copy_(0.3 * torch.randn(105, dtype=D))
        aug.probabilities.copy_(0.2 + 0.6 * torch.rand(105, 2, dtype=D))
    net_opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    x0, y0 = torch.randn(8, 3, 4, 4, dtype=D), torch.randint(0, 3, (8,))
    nn.functional.cross_entropy(model(x0), y0).backward()
    net_opt.step()  # a momentum buffer exists now
    net_opt.zero_grad()
    arch_opt = torch.optim.Adam(aug.parameters(), lr=5e-3, betas=(0.5, 0.999))
    cfg = SearchConfig(estimator=estimator, momentum=0.9, weight_decay=1e-3, grad_clip=5.0, **flags)
    step = SearchStep(model, aug, net_opt, arch_opt, cfg)
    g = torch.Generator().manual_seed(1)
    noise = None
    for _ in range(50):  # a draw with both operations of the chosen sub-policy switched on
        noise = draw_noise(105, 2, g, dtype=D)
        rel = relax(aug.weights, aug.prob_logits(), noise, 0.5)
        if rel.b[rel.k].sum() == 2:
            break
    batch = (torch.randn(8, 3, 4, 4, dtype=D), torch.randint(0, 3, (8,)), torch.randn(8, 3, 4, 4, dtype=D),
             torch.randint(0, 3, (8,)))
    return model, aug, net_opt, step, noise, batch


def _exact_unrolled_gradient(model, aug, net_opt, step, noise, batch, xi):
    """d/d(beta, p, m) of L_val(w - xi (dL_train/dw + wd w + mu buf)) by double backprop."""
    x, y, xv, yv = batch
    params = list(model.parameters())
    names = [n for n, _ in model.named_parameters()]
    rel = step.relaxation(noise)
    x_in = step.network_input(x, rel)
    g = torch.autograd.grad(nn.functional.cross_entropy(model(x_in), y), params, create_graph=True)
    w_prime = {n: p - xi * (0.9 * net_opt.state[p]["momentum_buffer"] + gi + 1e-3 * p) for n, p, gi in zip(names, params, g)}
    val = nn.functional.cross_entropy(torch.func.functional_call(model, w_prime, (xv,)), yv)
    return torch.autograd.grad(val, aug.policy_parameters, allow_unused=True)


@pytest.mark.parametrize("drop_xi", [False, True])
def test_search_step_policy_gradient_is_the_unrolled_derivative(drop_xi):
    model, aug, net_opt, step, noise, batch = _setup("gumbel_st", official_drop_xi=drop_xi)
    xi = 0.05
    exact = _exact_unrolled_gradient(model, aug, net_opt, step, noise, batch, xi)
    step(*batch, noise, xi)
    for name, got, want in zip(("beta", "p", "m"), step.last_grads["policy"], exact):
        want = want / xi if drop_xi else want
        assert torch.norm(got - want) / torch.norm(want) < 1e-4, name


def test_relax_step_gradients_and_the_control_variate_objective():
    model, aug, net_opt, step, noise, batch = _setup("relax")
    x, y, xv, yv = batch
    xi = 0.05
    exact = _exact_unrolled_gradient(model, aug, net_opt, step, noise, batch, xi)
    rel = step.relaxation(noise)
    f0 = nn.functional.cross_entropy(model(step.network_input(x, rel)), y).detach()
    terms = RelaxTerms(rel, aug.control, [aug.weights, aug.probabilities])
    want_phi = torch.autograd.grad(RelaxTerms.variance_loss(terms.estimate(f0)), list(aug.control.parameters()))
    score = terms.score
    beta_before = aug.weights.detach().clone()
    step(*batch, noise, xi)
    got_beta, got_p, got_m = step.last_grads["policy"]
    assert torch.norm(got_m - exact[2]) / torch.norm(exact[2]) < 1e-4  # magnitudes: straight-through, unrolled
    # beta and p: -xi [f(w+) - f(w-)] / (2r) * score: the control variate cancels (common random numbers)
    ratio = got_beta[score[0] != 0] / score[0][score[0] != 0]
    assert torch.allclose(ratio, ratio[0].expand_as(ratio), rtol=1e-6) and ratio[0] != 0
    assert torch.allclose(got_p[score[1] != 0] / score[1][score[1] != 0], ratio[0].expand(int((score[1] != 0).sum())), rtol=1e-6)
    for got, want in zip(step.last_grads["phi"], want_phi):  # phi: the RELAX variance objective at w
        assert torch.allclose(got, want, rtol=1e-6, atol=1e-12)
    assert not torch.equal(aug.weights.detach(), beta_before)  # the Adam step used the gradient


def test_official_cv_finite_difference_flag_changes_only_phi():
    grads = {}
    for flag in (False, True):
        model, aug, net_opt, step, noise, batch = _setup("relax", official_cv_finite_difference=flag)
        step(*batch, noise, 0.05)
        grads[flag] = step.last_grads
    for a, b in zip(grads[False]["policy"], grads[True]["policy"]):
        assert torch.allclose(a, b)
    assert not torch.allclose(grads[False]["phi"][0], grads[True]["phi"][0])


def test_network_step_is_the_plain_sgd_step_on_the_augmented_batch():
    model, aug, net_opt, step, noise, batch = _setup("relax")
    x, y, xv, yv = batch
    ref = copy.deepcopy(model)
    bufs = [net_opt.state[p]["momentum_buffer"].clone() for p in model.parameters()]
    w0 = [p.detach().clone() for p in model.parameters()]
    step(x, y, xv, yv, noise, 0.05)  # xi (unrolled lr) 0.05; the network step uses the optimiser's lr 0.1
    grads = torch.autograd.grad(nn.functional.cross_entropy(ref(x), y), list(ref.parameters()))
    for p, p0, b0, g in zip(model.parameters(), w0, bufs, grads):
        buf = 0.9 * b0 + g + 1e-3 * p0  # SGD momentum 0.9, weight decay 1e-3, on dL/dw at w (no clipping: |g| < 5)
        assert torch.allclose(net_opt.state[p]["momentum_buffer"], buf, rtol=0, atol=1e-12)
        assert torch.allclose(p, p0 - 0.1 * buf, rtol=0, atol=1e-12)


def test_genotype_is_the_top_k_by_weight_with_clamped_values():
    aug = AugmentParameters()
    with torch.no_grad():
        aug.weights.zero_()
        aug.weights[[7, 3, 50]] = torch.tensor([3.0, 2.0, 1.0])
        aug.probabilities[7] = torch.tensor([1.3, 0.2])
        aug.magnitudes[7] = torch.tensor([-0.2, 0.7])
    geno = aug.genotype(top_k=3)
    assert [tuple(op for op, _, _ in s) for s in geno.subpolicies] == [SUBPOLICIES[7], SUBPOLICIES[3], SUBPOLICIES[50]]
    assert geno.subpolicies[0][0][1:] == (1.0, 0.0) and geno.subpolicies[0][1][1:] == pytest.approx((0.2, 0.7))
    sig = AugmentParameters(parametrisation="sigmoid")
    assert sig.genotype(1).subpolicies[0][0][1:] == (0.5, 0.5)
