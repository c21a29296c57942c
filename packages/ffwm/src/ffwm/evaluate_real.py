"""The paper's real-data evaluations (need the datasets and, to compare with the paper, the released
LightCNN weights): Multi-PIE Setting 2 rank-1 per camera merged into +-15 ... +-90 degrees, and LFW
verification on frontalised images (10-fold accuracy and AUC; in the official code LFW is only
frontalised for visualisation, so this protocol is ours)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .metrics import lfw_accuracy
from .networks import rgb_to_gray
from .readers import FRONTAL_CAMERA, LFWImages, MultiPIEPairs, _load_image, merge_rank1_by_angle, parse_multipie_name


def _features(net, x: torch.Tensor) -> torch.Tensor:
    return net(rgb_to_gray(x))[1]


@torch.no_grad()
def evaluate_multipie(model, idnet, root: str | Path, image_size: int, device, batch_size: int = 32,
                      gallery_list: str | None = None) -> dict[str, Any]:
    """Rank-1 (%) of frontalised test probes against the gallery (one frontal per subject), per angle."""
    model.eval()
    test = MultiPIEPairs(root, "test", image_size)
    gal_files = test.gallery(gallery_list)
    gal_imgs = torch.stack([torch.from_numpy(_load_image(test.root / "images" / f, image_size)).permute(2, 0, 1).float() / 255
                            for f in gal_files])
    gal_ids = [parse_multipie_name(f).subject for f in gal_files]
    gal_feats = torch.cat([_features(idnet, gal_imgs[i:i + batch_size].to(device)).cpu()
                           for i in range(0, len(gal_imgs), batch_size)])
    per_camera: dict[str, list[int]] = {}
    for i in range(0, len(test), batch_size):
        idx = list(range(i, min(len(test), i + batch_size)))
        x = torch.stack([test[j]["profile"] for j in idx]).to(device)
        out = model.frontalize(x)[0][-1]
        sim = F.normalize(_features(idnet, out).cpu(), dim=1) @ F.normalize(gal_feats, dim=1).T
        for j, b in zip(idx, sim.argmax(1).tolist()):
            name = test.pairs[j][2]
            c = per_camera.setdefault(name.camera, [0, 0])
            c[0] += int(gal_ids[b] == name.subject)
            c[1] += 1
    model.train()
    return {"rank1_by_angle": merge_rank1_by_angle({k: tuple(v) for k, v in per_camera.items()}),
            "per_camera": {k: 100.0 * v[0] / v[1] for k, v in per_camera.items() if k != FRONTAL_CAMERA}}


@torch.no_grad()
def evaluate_lfw(model, idnet, root: str | Path, image_size: int, device, batch_size: int = 32) -> dict[str, float]:
    """LFW verification on frontalised images: cosine similarity of identity features, 10 folds."""
    model.eval()
    ds = LFWImages(root, image_size)
    feats = []
    for i in range(0, len(ds), batch_size):
        x = torch.stack([ds[j] for j in range(i, min(len(ds), i + batch_size))]).to(device)
        feats.append(_features(idnet, model.frontalize(x)[0][-1]).cpu())
    f = F.normalize(torch.cat(feats), dim=1)
    idx = ds.pair_indices()
    scores = (f[idx[:, 0]] * f[idx[:, 1]]).sum(1).numpy()
    model.train()
    return lfw_accuracy(scores, np.array(ds.labels), np.array(ds.folds))
