"""Hourglass and GHCU: gradients reach every parameter; GHCU repairs a blanked landmark from the face shape."""

import torch
import torch.nn.functional as F

from landmark_ambiguity.heatmaps import decode, gaussian_heatmaps, to_heatmap
from landmark_ambiguity.model import build_ghcu, build_model, list_models
from shared.data.faces import project_landmarks, sample_params


def test_registry_and_every_parameter_gets_a_gradient():
    assert {"hg2_w32", "hg4_w256"} <= set(list_models())
    m = build_model("hg2_w32", num_landmarks=5, width=8, depth=2)
    outs = m(torch.randn(2, 3, 32, 32))
    assert len(outs) == 2 and outs[-1].shape == (2, 5, 8, 8)
    sum(o.square().mean() for o in outs).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())
    g = build_ghcu(5, 8, (8, 8), 16)
    g(torch.randn(3, 5, 8, 8)).sum().backward()
    assert all(p.grad is not None for p in g.parameters())


def test_ghcu_repairs_a_landmark_whose_heatmap_is_blanked():
    torch.manual_seed(0)
    size, stride, hm = 32, 4, 8
    lm, _ = project_landmarks(sample_params(2000, seed=0, num_identities=500), size)
    pts = to_heatmap(torch.from_numpy(lm), stride)
    maps = gaussian_heatmaps(pts, (hm, hm), 1.0)
    target = (pts + 0.5) / hm
    ghcu = build_ghcu(68, hm, (32,), 64)
    opt = torch.optim.Adam(ghcu.parameters(), 3e-3)
    gen = torch.Generator().manual_seed(0)
    for step in range(200):
        idx = torch.randint(0, 1600, (32,), generator=gen)
        drop = torch.rand(32, 68, generator=gen) < 0.15
        loss = F.mse_loss(ghcu(maps[idx] * (~drop)[..., None, None]), target[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    ghcu.eval()
    test = maps[1600:].clone()
    k = 8  # chin
    test[:, k] = 0
    with torch.no_grad():
        fixed = ghcu(test) * hm - 0.5
    err_ghcu = (fixed[:, k] - pts[1600:, k]).norm(dim=-1).mean()
    err_argmax = (decode(test)[:, k] - pts[1600:, k]).norm(dim=-1).mean()
    assert err_argmax > 3  # a blank heatmap decodes to its corner
    assert err_ghcu < 1.0, err_ghcu  # the face shape pins the chin to within a heatmap pixel
