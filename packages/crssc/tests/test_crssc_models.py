"""Backbones: bilinear pooling, the signed square root, the registry, two-step freezing (and the official typo)."""

import pytest
import torch
import torch.nn.functional as F

from crssc.models import (
    TwoNets,
    bilinear_pool,
    create_model,
    freeze_backbone,
    head_parameters,
    list_models,
    signed_sqrt,
    unfreeze,
)


def test_signed_sqrt_has_a_finite_gradient_at_zero_and_handles_negatives():
    x = torch.tensor([-4.0, -1e-9, 0.0, 1e-9, 4.0], dtype=torch.float64, requires_grad=True)
    y = signed_sqrt(x, 1e-5)
    y.sum().backward()
    assert torch.isfinite(x.grad).all()
    assert x.grad.max() <= 1 / (2 * 1e-5 ** 0.5) + 1e-6  # bounded by 1 / (2 sqrt(eps))
    assert y[0].item() == pytest.approx(-(4 + 1e-5) ** 0.5) and y[-1].item() == pytest.approx((4 + 1e-5) ** 0.5)
    assert y[2].item() == 0.0
    assert x.grad[-1].item() == pytest.approx(0.5 / (4 + 1e-5) ** 0.5)
    # a plain sqrt without eps has an infinite gradient at 0
    z = torch.zeros(1, requires_grad=True)
    torch.sqrt(z).sum().backward()
    assert not torch.isfinite(z.grad).all()


def test_bilinear_pool_equals_the_explicit_formula_in_float64():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 5, 6, generator=g).relu()
    got = bilinear_pool(x, "signed", 1e-5).double()
    xd = x.double().reshape(3, 4, 30)
    gram = torch.einsum("nci,ndi->ncd", xd, xd).reshape(3, 16) / 30  # averaged over the h*w positions
    root = torch.sign(gram) * torch.sqrt(gram.abs() + 1e-5)
    assert torch.allclose(got, root / root.norm(dim=1, keepdim=True), atol=1e-6)
    assert torch.allclose(got.norm(dim=1), torch.ones(3, dtype=torch.float64), atol=1e-6)
    official = bilinear_pool(x, "official", 1e-5).double()
    want = torch.sqrt(gram + 1e-5)
    assert torch.allclose(official, want / want.norm(dim=1, keepdim=True), atol=1e-6)
    # the two agree on positive entries; the official root is NaN for negative inputs (not post-ReLU features)
    signed_features = torch.randn(3, 4, 5, 6, generator=g)  # some channel pairs correlate negatively
    assert torch.isnan(bilinear_pool(signed_features, "official")).any()
    assert torch.isfinite(bilinear_pool(signed_features, "signed")).all()
    with pytest.raises(ValueError, match="sqrt"):
        bilinear_pool(x, "abs")


def test_registry():
    assert {"bcnn_vgg16", "bcnn_tiny", "cnn_tiny", "resnet18", "resnet50", "vgg16"} <= set(list_models())
    with pytest.raises(ValueError, match="unknown model"):
        create_model("bcnn_vgg19", 3)


def test_bcnn_vgg16_is_vgg_to_relu5_3_with_a_512_squared_head():
    model = create_model("bcnn_vgg16", 3)
    convs = [m for m in model.features if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 13 and not isinstance(model.features[-1], torch.nn.MaxPool2d)  # last pool removed
    assert isinstance(model.features[-1], torch.nn.ReLU)
    assert model.fc.in_features == 512 ** 2 and model.fc.out_features == 3
    assert torch.equal(model.fc.bias, torch.zeros(3))
    with torch.no_grad():
        out = model(torch.randn(1, 3, 32, 32))  # 32 px -> 2x2 maps after four pools
    assert out.shape == (1, 3)


@pytest.mark.parametrize("name", ["bcnn_tiny", "cnn_tiny", "resnet18"])
def test_every_parameter_gets_a_gradient(name):
    model = create_model(name, 4)
    out = model(torch.randn(2, 3, 32, 32))
    F.cross_entropy(out, torch.tensor([0, 3])).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing


def test_two_step_freezing_and_the_official_typo():
    model = create_model("bcnn_tiny", 3)
    freeze_backbone(model)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["fc.weight", "fc.bias"]
    F.cross_entropy(model(torch.randn(2, 3, 16, 16)), torch.tensor([0, 1])).backward()
    assert all(p.grad is None for n, p in model.named_parameters() if not n.startswith("fc."))
    unfreeze(model)
    assert all(p.requires_grad for p in model.parameters())

    typo = create_model("bcnn_tiny", 3)
    before = {n: p.detach().clone() for n, p in typo.named_parameters()}
    freeze_backbone(typo, official_typo=True)  # `required_grad = False`: nothing is frozen
    assert all(p.requires_grad for p in typo.parameters())
    opt = torch.optim.SGD(head_parameters(typo), lr=0.5)
    F.cross_entropy(typo(torch.randn(2, 3, 16, 16)), torch.tensor([0, 1])).backward()
    opt.step()
    conv = typo.features[0].weight
    assert conv.grad is not None and conv.grad.abs().sum() > 0  # gradients are computed (wasted) ...
    assert torch.equal(conv, before["features.0.weight"])  # ... but only the head moves
    assert not torch.equal(typo.fc.weight, before["fc.weight"])


def test_two_nets_forward():
    torch.manual_seed(0)
    pair = TwoNets(create_model("cnn_tiny", 3), create_model("cnn_tiny", 3))
    x = torch.randn(2, 3, 8, 8)
    a, b = pair(x, both=True)
    assert torch.equal(pair(x), a) and not torch.equal(a, b)
    assert len(head_parameters(pair)) == 4
