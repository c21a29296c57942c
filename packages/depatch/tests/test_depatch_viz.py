"""Box statistics and the patch-rectangle figure: exact values at init, coverage of masked parts."""

import math

import pytest
import torch

torch.set_num_threads(1)

from depatch import create_model
from depatch.viz import box_stats, mask_coverage, plot_patch_rectangles, stage_boxes


def test_initial_boxes_are_the_half_stride_span_of_the_sample_points():
    m = create_model("dpt_mini", num_classes=3).eval()
    x = torch.randn(2, 3, 64, 64)
    boxes, initial, stride, (h, w) = stage_boxes(m, x, 2)
    assert (h, w) == (8, 8) and stride.tolist() == [8.0, 8.0]  # stage 2 patches are 8 image pixels
    # patch (0, 0) reads stage-1 pixels 0 and 1 (centres at 2 and 6 image px): its box spans 2..6
    assert initial[0].tolist() == [2.0, 2.0, 6.0, 6.0] and initial[9].tolist() == [10.0, 10.0, 14.0, 14.0]
    torch.testing.assert_close(boxes[0], initial)  # zero predictor: every box is its initial box
    assert box_stats(m, x) == pytest.approx({"s2_shift": 0.0, "s2_size": 0.5, "s3_shift": 0.0, "s3_size": 0.5,
                                             "s4_shift": 0.0, "s4_size": 0.5}, abs=1e-6)


GELU1 = 0.5 * (1 + math.erf(1 / math.sqrt(2)))  # GELU(1): the predictor input when its LayerNorm outputs 1


def _constant_codes(dep, tx=0.0, ty=0.0):
    """Make a DePatch predict the same codes (tx, ty, 0, 0) for every patch."""
    with torch.no_grad():
        dep.patch_embed.norm.weight.zero_()
        dep.patch_embed.norm.bias.fill_(1.0)
        dep.offset_predictor.weight.zero_()
        dep.offset_predictor.weight[0].fill_(tx / (dep.embed_dim * GELU1))
        dep.offset_predictor.weight[1].fill_(ty / (dep.embed_dim * GELU1))


def test_box_stats_measure_shift_and_size_in_strides():
    m = create_model("dpt_mini", num_classes=3).eval()
    _constant_codes(m.depatch_modules()[3], tx=0.2, ty=-0.1)
    with torch.no_grad():
        m.depatch_modules()[4].box_coder.wh_bias.fill_(math.atanh(0.4))  # stage-4 boxes 0.8 stride wide
    s = box_stats(m, torch.randn(1, 3, 64, 64))
    assert abs(s["s3_shift"] - math.hypot(math.tanh(0.2), math.tanh(0.1))) < 1e-6 and abs(s["s3_size"] - 0.5) < 1e-6
    assert s["s4_shift"] == pytest.approx(0.0, abs=1e-6) and abs(s["s4_size"] - 0.8) < 1e-6


def test_mask_coverage_counts_sample_points_on_the_mask():
    m = create_model("dpt_mini", num_classes=3).eval()
    x = torch.randn(1, 3, 64, 64)
    full = torch.ones(1, 64, 64, dtype=torch.bool)
    assert mask_coverage(m, x, full) == pytest.approx((1.0, 1.0), abs=1e-6)
    left = torch.zeros(1, 64, 64, dtype=torch.bool)
    left[:, :, :32] = True
    learned, initial = mask_coverage(m, x, left)
    assert learned == pytest.approx(0.5, abs=1e-6) and initial == pytest.approx(0.5, abs=1e-6)  # symmetric tiling
    _constant_codes(m.depatch_modules()[2], tx=-1.0)  # every stage-2 box moves left by tanh(1) stride
    learned, initial = mask_coverage(m, x, left)
    assert initial == pytest.approx(0.5, abs=1e-6) and learned > initial + 0.03


def test_patch_rectangle_figure_is_written(tmp_path):
    m = create_model("dpt_mini", num_classes=3).eval()
    path = plot_patch_rectangles(m, torch.randn(2, 3, 64, 64), tmp_path / "f.png", stage=2, labels=[0, 1])
    assert path.is_file() and path.stat().st_size > 10_000
