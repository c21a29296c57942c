"""The grid_sample deformable conv equals torchvision's (forward and gradients); zero offsets = plain conv."""

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import deform_conv2d as tv_deform_conv2d

from opanas import DeformConv, deform_conv2d, deform_conv2d_grid_sample


@pytest.mark.parametrize("stride, padding, dilation, hw", [(1, 1, 1, (7, 9)), (2, 1, 1, (8, 7)), (1, 2, 2, (6, 6))])
def test_grid_sample_equals_torchvision_forward_and_grads(stride, padding, dilation, hw):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, *hw, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, generator=g, dtype=torch.float64, requires_grad=True)
    ho = (hw[0] + 2 * padding - dilation * 2 - 1) // stride + 1
    wo = (hw[1] + 2 * padding - dilation * 2 - 1) // stride + 1
    off = (2 * torch.randn(2, 18, ho, wo, generator=g, dtype=torch.float64)).requires_grad_()  # reaches past borders
    ours = deform_conv2d_grid_sample(x, off, w, b, stride, padding, dilation)
    ref = tv_deform_conv2d(x, off, w, b, stride=stride, padding=padding, dilation=dilation)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)
    go = torch.autograd.grad((ours * ours.detach().sin()).sum(), [x, off, w, b])
    gr = torch.autograd.grad((ref * ref.detach().sin()).sum(), [x, off, w, b])
    for a, r in zip(go, gr):
        torch.testing.assert_close(a, r, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("impl", ["grid_sample", "torchvision", "auto"])
def test_zero_offsets_equal_plain_conv(impl):
    g = torch.Generator().manual_seed(1)
    x, w, b = torch.randn(2, 5, 9, 11, generator=g), torch.randn(6, 5, 3, 3, generator=g), torch.randn(6, generator=g)
    for stride in (1, 2):
        plain = F.conv2d(x, w, b, stride=stride, padding=1)
        off = torch.zeros(2, 18, *plain.shape[-2:])
        torch.testing.assert_close(deform_conv2d(x, off, w, b, stride=stride, padding=1, impl=impl), plain,
                                   rtol=1e-5, atol=1e-5)


def test_module_with_zero_offset_init_starts_as_plain_conv():
    m = DeformConv(4, 6, stride=2)
    x = torch.randn(1, 4, 10, 10)
    torch.testing.assert_close(m(x, level=2), F.conv2d(x, m.weight, m.bias, stride=2, padding=1), rtol=1e-5, atol=1e-5)


def test_bad_offset_shape_is_a_clear_error():
    with pytest.raises(ValueError, match="offset must have shape"):
        deform_conv2d_grid_sample(torch.randn(1, 2, 5, 5), torch.zeros(1, 18, 4, 4), torch.randn(3, 2, 3, 3), padding=1)
    with pytest.raises(ValueError, match="impl must be"):
        deform_conv2d(torch.randn(1, 2, 5, 5), torch.zeros(1, 18, 5, 5), torch.randn(3, 2, 3, 3), padding=1, impl="cuda")
