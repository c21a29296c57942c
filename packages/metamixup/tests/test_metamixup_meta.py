"""The meta step: hypergradient against an independent float64 finite difference, DARTS against exact,
no side effects, the update direction, bounds, and the carried / re-drawn / per-example ratio states."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from metamixup.meta import MetaConfig, MetaMixUp, hypergradient
from metamixup.mixing import mix, one_hot, soft_cross_entropy
from metamixup.models import MixAt, create_model

C = 3


def _problem(batch_norm=True, seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    model = create_model("mlp", C, in_features=4, hidden=(8, 8), batch_norm=batch_norm).to(dtype)
    model.train()
    x = torch.randn(6, 4, dtype=dtype)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    index = torch.tensor([3, 4, 5, 1, 2, 0])
    xv = torch.randn(5, 4, dtype=dtype)
    yv = torch.tensor([2, 0, 1, 1, 0])
    return model, x, y, index, xv, yv


def _closures(x, y, index, xv, yv, layer=0):
    ys = one_hot(y, C, dtype=x.dtype)

    def train_loss(forward, lam):
        return soft_cross_entropy(forward(x, MixAt(layer, lam, index)), mix(ys, lam, index))

    def meta_loss(forward):
        return F.cross_entropy(forward(xv), yv)

    return train_loss, meta_loss


def reference_meta_loss(model, lam, lr, x, y, index, xv, yv, head_only=False):
    """Written independently of the package: deep copy, mix by hand, one SGD step by hand, clean loss."""
    m = copy.deepcopy(model)
    lam_b = lam.reshape(-1, 1) if torch.is_tensor(lam) and lam.dim() == 1 else lam
    xm = lam_b * x + (1 - lam_b) * x[index]
    yo = F.one_hot(y, C).to(x.dtype)
    ym = lam_b * yo + (1 - lam_b) * yo[index]
    loss = -(ym * torch.log_softmax(m(xm), 1)).sum(1).mean()
    params = [p for n, p in m.named_parameters() if not head_only or n.startswith("head.")]
    grads = torch.autograd.grad(loss, params)
    with torch.no_grad():
        for p, g in zip(params, grads):
            p.sub_(lr * g)
    return F.cross_entropy(m(xv), yv)


@pytest.mark.parametrize("batch_norm", [True, False])
@pytest.mark.parametrize("virtual_params", ["all", "head"])
def test_exact_hypergradient_equals_central_difference_float64(batch_norm, virtual_params):
    model, x, y, index, xv, yv = _problem(batch_norm)
    train_loss, meta_loss = _closures(x, y, index, xv, yv)
    lam, lr, d = torch.tensor(0.63, dtype=torch.float64), 0.7, 1e-6
    g, value = hypergradient(model, train_loss, meta_loss, lam, lr, "exact", virtual_params)
    head = virtual_params == "head"
    fd = (reference_meta_loss(model, lam + d, lr, x, y, index, xv, yv, head)
          - reference_meta_loss(model, lam - d, lr, x, y, index, xv, yv, head)) / (2 * d)
    assert value == pytest.approx(reference_meta_loss(model, lam, lr, x, y, index, xv, yv, head).item(), rel=1e-12)
    assert abs(float(fd)) > 1e-4  # a real signal, not 0 == 0
    assert float(g) == pytest.approx(float(fd), rel=1e-6)


def test_exact_per_sample_hypergradient_equals_central_difference_per_component():
    model, x, y, index, xv, yv = _problem()
    train_loss, meta_loss = _closures(x, y, index, xv, yv)
    lam, lr, d = torch.tensor([0.9, 0.3, 0.55, 0.7, 0.1, 0.8], dtype=torch.float64), 0.5, 1e-6
    g, _ = hypergradient(model, train_loss, meta_loss, lam, lr, "exact")
    assert g.shape == lam.shape
    for i in range(len(lam)):
        e = torch.zeros_like(lam)
        e[i] = d
        fd = (reference_meta_loss(model, lam + e, lr, x, y, index, xv, yv)
              - reference_meta_loss(model, lam - e, lr, x, y, index, xv, yv)) / (2 * d)
        assert float(g[i]) == pytest.approx(float(fd), rel=1e-6, abs=1e-10), i


def test_manifold_hypergradient_equals_central_difference():
    model, x, y, index, xv, yv = _problem()
    train_loss, meta_loss = _closures(x, y, index, xv, yv, layer=1)
    lam, lr, d = torch.tensor(0.4, dtype=torch.float64), 0.6, 1e-6

    def ref(lam_value):
        m = copy.deepcopy(model)
        h = m.stages[0](x)
        h = lam_value * h + (1 - lam_value) * h[index]
        logits = m.head(m.stages[1](h))
        yo = F.one_hot(y, C).double()
        loss = -((lam_value * yo + (1 - lam_value) * yo[index]) * torch.log_softmax(logits, 1)).sum(1).mean()
        grads = torch.autograd.grad(loss, list(m.parameters()))
        with torch.no_grad():
            for p, gr in zip(m.parameters(), grads):
                p.sub_(lr * gr)
        return F.cross_entropy(m(xv), yv)

    g, _ = hypergradient(model, train_loss, meta_loss, lam, lr, "exact")
    fd = (ref(lam + d) - ref(lam - d)) / (2 * d)
    assert float(g) == pytest.approx(float(fd), rel=1e-6)


@pytest.mark.parametrize("per_sample", [False, True])
def test_finite_difference_hypergradient_matches_exact(per_sample):
    model, x, y, index, xv, yv = _problem()
    train_loss, meta_loss = _closures(x, y, index, xv, yv)
    lam = torch.tensor([0.9, 0.3, 0.55, 0.7, 0.1, 0.8] if per_sample else 0.63, dtype=torch.float64)
    exact, v1 = hypergradient(model, train_loss, meta_loss, lam, 0.5, "exact")
    darts, v2 = hypergradient(model, train_loss, meta_loss, lam, 0.5, "finite_difference", fd_eps=1e-4)
    assert v1 == pytest.approx(v2, rel=1e-12)
    torch.testing.assert_close(darts, exact, rtol=1e-5, atol=1e-9)
    coarse, _ = hypergradient(model, train_loss, meta_loss, lam, 0.5, "finite_difference", fd_eps=0.5)
    assert not torch.allclose(coarse, exact, rtol=1e-7, atol=0)  # it is an approximation (second order in eps)


def test_hypergradient_vanishes_linearly_with_the_virtual_lr():
    model, x, y, index, xv, yv = _problem()
    train_loss, meta_loss = _closures(x, y, index, xv, yv)
    lam = torch.tensor(0.63, dtype=torch.float64)
    g1, _ = hypergradient(model, train_loss, meta_loss, lam, 1e-4, "exact")
    g2, _ = hypergradient(model, train_loss, meta_loss, lam, 2e-4, "exact")
    g0, _ = hypergradient(model, train_loss, meta_loss, lam, 0.0, "exact")
    assert float(g0) == 0.0
    assert float(g2 / g1) == pytest.approx(2.0, rel=1e-3)


def _state(model, opt):
    return ({k: v.clone() for k, v in model.state_dict().items()},
            {n: (None if p.grad is None else p.grad.clone()) for n, p in model.named_parameters()},
            copy.deepcopy(opt.state_dict()), [m.training for m in model.modules()])


@pytest.mark.parametrize("hypergrad", ["exact", "finite_difference"])
@pytest.mark.parametrize("meta_bn", ["train", "eval"])
def test_meta_step_has_no_side_effects(hypergrad, meta_bn):
    model, x, y, index, xv, yv = _problem(dtype=torch.float32)
    model(x)  # non-trivial running statistics
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    F.cross_entropy(model(x), y).backward()
    opt.step()  # momentum buffers exist, and .grad holds a value
    before = _state(model, opt)
    ctrl = MetaMixUp(MetaConfig(hypergrad=hypergrad, meta_bn=meta_bn, meta_optim="adam"))
    train_loss, meta_loss = _closures(x, y, index, xv, yv)
    lam = ctrl.step(model, train_loss, meta_loss, lr=0.1, step=0, batch_size=6)
    assert lam.dtype == torch.float32 and ctrl.lam != pytest.approx(0.75, abs=1e-6)  # the meta step did something
    after = _state(model, opt)
    for k in before[0]:
        assert torch.equal(before[0][k], after[0][k]), k  # weights and BN running stats, num_batches_tracked
    for k in before[1]:
        assert torch.equal(before[1][k], after[1][k]), k  # .grad untouched
    s0, s1 = before[2]["state"], after[2]["state"]
    assert s0.keys() == s1.keys() and all(torch.equal(s0[i]["momentum_buffer"], s1[i]["momentum_buffer"]) for i in s0)
    assert before[2]["param_groups"] == after[2]["param_groups"]
    assert before[3] == after[3]  # train/eval flags restored


@pytest.mark.parametrize("param", ["sigmoid", "clip"])
def test_the_carried_ratio_starts_at_lam_init(param):
    ctrl = MetaMixUp(MetaConfig(lam_init=0.83, param=param, meta_optim="sgd"))
    assert ctrl.lam == pytest.approx(0.83, abs=1e-12)
    assert float(ctrl.lam_from_phi(ctrl.phi_from_lam(torch.tensor(0.61, dtype=torch.float64)))) == pytest.approx(0.61)


def test_adam_meta_step_moves_against_the_hypergradient():
    model, x, y, index, xv, yv = _problem()
    train_loss, meta_loss = _closures(x, y, index, xv, yv)
    ctrl = MetaMixUp(MetaConfig(meta_optim="adam", meta_lr=0.1, lam_init=0.7, lam_min=0.0, lam_max=1.0))
    g, _ = hypergradient(model, train_loss, meta_loss, torch.tensor(0.7, dtype=torch.float64), 0.7, "exact")
    lam1 = ctrl.step(model, train_loss, meta_loss, lr=0.7, step=0, batch_size=6, dtype=torch.float64)
    # Adam's first step moves the logit by exactly lr against the gradient's sign
    expected = torch.sigmoid(torch.logit(torch.tensor(0.7, dtype=torch.float64)) - 0.1 * torch.sign(g))
    assert float(lam1) == pytest.approx(float(expected), rel=1e-6)


def test_meta_update_lowers_the_meta_loss_and_uses_the_sign_of_the_hypergradient():
    model, x, y, index, xv, yv = _problem()
    train_loss, meta_loss = _closures(x, y, index, xv, yv)
    cfg = MetaConfig(meta_optim="sgd", meta_lr=0.5, lam_init=0.7, lam_min=0.0, lam_max=1.0)
    ctrl = MetaMixUp(cfg)
    lam0 = torch.tensor(ctrl.lam, dtype=torch.float64)
    g, _ = hypergradient(model, train_loss, meta_loss, lam0, 0.7, "exact")
    lam1 = ctrl.step(model, train_loss, meta_loss, lr=0.7, step=0, batch_size=6, dtype=torch.float64)
    assert float(torch.sign(lam1 - lam0)) == -float(torch.sign(g))  # downhill
    # exact size of the step: phi1 = phi0 - meta_lr * g * dlam/dphi, lam = sigmoid(phi)
    phi0 = torch.logit(lam0)
    expected = torch.sigmoid(phi0 - 0.5 * g * lam0 * (1 - lam0))
    assert float(lam1) == pytest.approx(float(expected), rel=1e-10)
    assert ctrl.lam == pytest.approx(float(lam1))  # carried
    before = reference_meta_loss(model, lam0, 0.7, x, y, index, xv, yv)
    after = reference_meta_loss(model, lam1, 0.7, x, y, index, xv, yv)
    assert float(after) < float(before)


@pytest.mark.parametrize("param", ["sigmoid", "clip"])
@pytest.mark.parametrize("granularity,init", [("batch", "carry"), ("batch", "beta"), ("sample", "beta"),
                                              ("sample", "carry")])
def test_lam_stays_in_bounds_under_huge_meta_steps(param, granularity, init):
    model, x, y, index, xv, yv = _problem()
    train_loss, meta_loss = _closures(x, y, index, xv, yv)
    cfg = MetaConfig(param=param, granularity=granularity, init=init, meta_optim="sgd", meta_lr=1e6,
                     lam_min=0.5, lam_max=0.95, lam_init=0.7, meta_steps=3)
    ctrl = MetaMixUp(cfg, num_samples=6)
    rng = np.random.default_rng(0)
    for step in range(4):
        lam = ctrl.step(model, train_loss, meta_loss, lr=1.0, step=step, batch_size=6, rng=rng,
                        sample_ids=torch.arange(6), dtype=torch.float64)
        assert lam.shape == ((6,) if granularity == "sample" else ())
        assert bool((lam >= 0.5).all() and (lam <= 0.95).all()), lam
    if param == "clip":  # driven to a bound, and the bound is attained, not overshot
        assert bool(((lam == 0.5) | (lam == 0.95)).any())


def test_beta_init_redraws_each_batch_and_carry_keeps_state():
    model, x, y, index, xv, yv = _problem()
    train_loss, meta_loss = _closures(x, y, index, xv, yv)
    beta = MetaMixUp(MetaConfig(init="beta", meta_optim="sgd", meta_lr=1e-9, alpha=1.0, lam_min=0.0, lam_max=1.0))
    rng = np.random.default_rng(3)
    draws = [float(beta.step(model, train_loss, meta_loss, lr=0.1, step=s, batch_size=6, rng=rng, dtype=torch.float64))
             for s in range(3)]
    expected = np.random.default_rng(3).beta(1.0, 1.0, size=3)
    np.testing.assert_allclose(draws, expected, rtol=1e-6)  # tiny meta-lr: the Beta draws themselves
    folded = MetaMixUp(MetaConfig(init="beta", meta_optim="sgd", meta_lr=1e-9, alpha=1.0))
    f = float(folded.step(model, train_loss, meta_loss, lr=0.1, step=0, batch_size=6,
                          rng=np.random.default_rng(3), dtype=torch.float64))
    assert f == pytest.approx(max(expected[0], 1 - expected[0]), rel=1e-6)  # [0.5, 1]: max(lam, 1 - lam)


def test_per_example_table_updates_only_the_batch_rows_and_round_trips():
    model, x, y, index, xv, yv = _problem()
    train_loss, meta_loss = _closures(x, y, index, xv, yv)
    ctrl = MetaMixUp(MetaConfig(granularity="sample", init="carry", meta_optim="sgd", meta_lr=50.0), num_samples=20)
    ids = torch.tensor([3, 7, 11, 12, 15, 19])
    table0 = ctrl.table.clone()
    lam = ctrl.step(model, train_loss, meta_loss, lr=0.5, step=0, batch_size=6, sample_ids=ids, dtype=torch.float64)
    changed = (ctrl.table != table0).nonzero().flatten()
    assert set(changed.tolist()) <= set(ids.tolist()) and len(changed) >= 4
    torch.testing.assert_close(lam, ctrl.lam_from_phi(ctrl.table[ids]))
    other = MetaMixUp(MetaConfig(granularity="sample", init="carry", meta_optim="sgd", meta_lr=50.0), num_samples=20)
    other.load_state_dict(ctrl.state_dict())
    assert torch.equal(other.table, ctrl.table)


def test_adam_state_round_trips_and_continues_identically():
    model, x, y, index, xv, yv = _problem()
    train_loss, meta_loss = _closures(x, y, index, xv, yv)
    a = MetaMixUp(MetaConfig(meta_optim="adam", meta_lr=0.1))
    for s in range(3):
        a.step(model, train_loss, meta_loss, lr=0.5, step=s, batch_size=6)
    b = MetaMixUp(MetaConfig(meta_optim="adam", meta_lr=0.1))
    b.load_state_dict(a.state_dict())
    la = a.step(model, train_loss, meta_loss, lr=0.5, step=3, batch_size=6)
    lb = b.step(model, train_loss, meta_loss, lr=0.5, step=3, batch_size=6)
    assert torch.equal(la, lb)


def test_every_k_skips_meta_steps_between():
    model, x, y, index, xv, yv = _problem()
    train_loss, meta_loss = _closures(x, y, index, xv, yv)
    ctrl = MetaMixUp(MetaConfig(meta_optim="sgd", meta_lr=10.0, every=2))
    lams = [ctrl.step(model, train_loss, meta_loss, lr=0.5, step=s, batch_size=6).item() for s in range(4)]
    assert lams[1] == lams[0] and lams[3] == lams[2] and lams[2] != lams[1]


@pytest.mark.parametrize("bad", [dict(hypergrad="second"), dict(lam_min=0.6, lam_max=0.5), dict(meta_lr=-1.0),
                                 dict(init="beta", meta_optim="adam"), dict(lam_init=1.0)])
def test_invalid_meta_config_is_rejected(bad):
    with pytest.raises(ValueError):
        MetaConfig(**bad).validate()
