"""Semi-supervised pieces on hand-made cases, and the networks (parameter counts, mixing inside the
forward pass, gradients for every parameter)."""

import math

import pytest
import torch
import torch.nn.functional as F

from metamixup.mixing import mix
from metamixup.models import MixAt, create_model, list_models
from metamixup.ssl import consistency_loss, ema_update, refine_pseudo_labels, sharpen, sigmoid_rampup


def test_refined_pseudo_labels_on_a_hand_made_case():
    probs = torch.tensor([[[0.6, 0.3, 0.1], [0.2, 0.2, 0.6], [0.4, 0.4, 0.2]],
                          [[0.8, 0.1, 0.1], [0.4, 0.2, 0.4], [0.2, 0.6, 0.2]]], dtype=torch.float64)
    # average over the two views: [.7 .2 .1], [.3 .2 .5], [.3 .5 .2]; T = 0.5 squares and renormalises
    targets, mask = refine_pseudo_labels(probs, temperature=0.5, threshold=0.0)
    expected = torch.tensor([[0.49, 0.04, 0.01], [0.09, 0.04, 0.25], [0.09, 0.25, 0.04]], dtype=torch.float64)
    expected = expected / expected.sum(1, keepdim=True)
    torch.testing.assert_close(targets, expected)
    assert mask.tolist() == [1.0, 1.0, 1.0]
    targets, mask = refine_pseudo_labels(probs, temperature=0.5, threshold=0.6)  # confidences .7, .5, .5
    assert mask.tolist() == [1.0, 0.0, 0.0]
    torch.testing.assert_close(targets[0], expected[0])
    assert torch.equal(targets[1:], torch.zeros(2, 3, dtype=torch.float64))
    hard, _ = refine_pseudo_labels(probs, threshold=0.0, hard=True)
    assert hard.argmax(1).tolist() == [0, 2, 1] and torch.equal(hard.sum(1), torch.ones(3, dtype=torch.float64))
    one_view, _ = refine_pseudo_labels(probs[0], temperature=1.0)
    torch.testing.assert_close(one_view, probs[0])


def test_sharpen_limits():
    p = torch.tensor([[0.5, 0.3, 0.2]])
    torch.testing.assert_close(sharpen(p, 1.0), p)
    assert sharpen(p, 0.01).argmax().item() == 0 and sharpen(p, 0.01).max().item() > 0.999


def test_sigmoid_rampup_values():
    assert sigmoid_rampup(0, 100) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(50, 100) == pytest.approx(math.exp(-1.25))
    assert sigmoid_rampup(100, 100) == 1.0 and sigmoid_rampup(500, 100) == 1.0 and sigmoid_rampup(3, 0) == 1.0


def test_ema_update_formula_and_warmup():
    teacher = torch.nn.BatchNorm1d(2)
    student = torch.nn.BatchNorm1d(2)
    with torch.no_grad():
        teacher.weight.fill_(1.0)
        student.weight.fill_(3.0)
        student.running_mean.fill_(0.7)
    ema_update(teacher, student, decay=0.9)
    torch.testing.assert_close(teacher.weight, torch.full((2,), 0.9 * 1.0 + 0.1 * 3.0))
    torch.testing.assert_close(teacher.running_mean, torch.full((2,), 0.7))  # buffers copied
    ema_update(teacher, student, decay=0.99, step=0)  # warm-up: decay min(0.99, 1 - 1/1) = 0 -> copy
    torch.testing.assert_close(teacher.weight, student.weight)
    with torch.no_grad():
        teacher.weight.fill_(1.0)
    ema_update(teacher, student, decay=0.99, step=3)  # min(0.99, 0.75)
    torch.testing.assert_close(teacher.weight, torch.full((2,), 0.75 + 0.25 * 3.0))


def test_consistency_losses():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    t = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])  # second row masked out (zero target)
    ce = consistency_loss(logits, t, "ce")
    assert ce.item() == pytest.approx(F.cross_entropy(logits[:1], torch.tensor([0])).item() / 2)
    mse = consistency_loss(logits, t, "mse", weight=torch.tensor([1.0, 0.0]))
    assert mse.item() == pytest.approx(((torch.softmax(logits[0], 0) - t[0]) ** 2).mean().item() / 2)
    with pytest.raises(ValueError):
        consistency_loss(logits, t, "kl")


PARAMS = {("preact_resnet18", 10): 11_172_170, ("preact_resnet18", 100): 11_218_340,
          ("wrn28_10", 10): 36_479_194, ("wrn28_2", 10): 1_467_610}


@pytest.mark.parametrize("name,classes", list(PARAMS))
def test_parameter_counts(name, classes):
    with torch.device("meta"):
        model = create_model(name, classes)
    assert sum(p.numel() for p in model.parameters()) == PARAMS[(name, classes)]


def test_registry():
    assert list_models() == ["cnn13", "mlp", "preact_resnet18", "small_cnn", "wrn28_10", "wrn28_2"]
    with pytest.raises(ValueError, match="unknown model"):
        create_model("resnet1000", 10)


@pytest.mark.parametrize("name", ["small_cnn", "preact_resnet18", "cnn13"])
def test_mixing_inside_the_forward_pass(name):
    torch.manual_seed(0)
    kwargs = {"widths": (8, 16, 16)} if name == "small_cnn" else ({"width": 8} if name == "preact_resnet18" else {})
    model = create_model(name, 5, **kwargs).eval()
    x = torch.randn(4, 3, 16, 16) if name != "cnn13" else torch.randn(4, 3, 32, 32)
    index = torch.tensor([2, 3, 0, 1])
    lam = torch.tensor([0.2, 0.9, 0.5, 0.7])
    with torch.no_grad():
        torch.testing.assert_close(model(x, MixAt(0, lam, index)), model(mix(x, lam, index)))
        h = model.stages[0](x)
        h = mix(h, lam, index)
        for stage in model.stages[1:]:
            h = stage(h)
        torch.testing.assert_close(model(x, MixAt(1, lam, index)), model.head(h))
        torch.testing.assert_close(model(x, MixAt(2, 1.0, index)), model(x))  # lam = 1: no change
    with pytest.raises(ValueError, match="out of range"):
        model(x, MixAt(model.num_stages + 1, 0.5, index))


@pytest.mark.parametrize("name", ["small_cnn", "mlp", "wrn28_2", "cnn13", "preact_resnet18"])
def test_every_parameter_gets_a_gradient(name):
    torch.manual_seed(0)
    model = create_model(name, 4, **({"in_features": 12} if name == "mlp" else {}))
    x = torch.randn(3, 12) if name == "mlp" else torch.randn(3, 3, 32, 32)
    F.cross_entropy(model(x, MixAt(1, 0.6, torch.tensor([1, 2, 0]))), torch.tensor([0, 1, 3])).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing
    assert model.head_parameter_names() and all(n.startswith("head.") for n in model.head_parameter_names())
