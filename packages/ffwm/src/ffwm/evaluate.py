"""Evaluation on synthetic pairs: image quality against the illumination-consistent target and the
ground truth, illumination tracking, the self-occluded side, identity, flow accuracy; plus the
profile / output / ground-truth grid."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .metrics import illumination_tracking, pool_tracking, psnr, rank1, ssim
from .networks import rgb_to_gray
from .ops import norm_to_pixel

LARGE_YAW = 60  # |yaw| >= this counts as "large pose" for the self-occlusion readout


def _batches(arrays: dict[str, np.ndarray], bs: int):
    n = len(arrays["profile"])
    img = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2).float() / 255  # noqa: E731
    for i in range(0, n, bs):
        sl = slice(i, min(n, i + bs))
        yield {"profile": img(arrays["profile"][sl]), "frontal": img(arrays["frontal"][sl]),
               "consistent": img(arrays["consistent"][sl]),
               "mask": torch.from_numpy(arrays["mask_frontal"][sl]).unsqueeze(1).float(),
               "occluded": torch.from_numpy(arrays["occluded"][sl]).unsqueeze(1).float(),
               "yaw": torch.from_numpy(arrays["yaw"][sl]), "identity": torch.from_numpy(arrays["identity"][sl]),
               "true_grid": torch.from_numpy(arrays["true_grid"][sl].astype(np.float32)) if "true_grid" in arrays else None}


def _id_features(net, x: torch.Tensor) -> torch.Tensor:
    return net(rgb_to_gray(x))[1]


@torch.no_grad()
def evaluate_pairs(model, evalnet, arrays: dict[str, np.ndarray], device, batch_size: int = 32) -> dict[str, Any]:
    """Metrics of ``model`` (an :class:`ffwm.model.FFWM`) on a synthetic test set from ``make_pairs(extras=True)``.

    Returns scalar metrics and ``per_sample`` arrays (for seed-paired analyses in ``reproduce``)."""
    model.eval()
    evalnet = evalnet.to(device)
    acc: dict[str, list] = {k: [] for k in ("l1_c", "l1_gt", "ssim_c", "ssim_gt", "psnr_c", "psnr_gt", "occ_l1",
                                            "vis_l1", "occ_px", "id_sim", "id_sim_input", "yaw", "epe", "dot",
                                            "norm", "d_in", "d_gt")}
    feats, feats_in, ids = [], [], []
    for b in _batches(arrays, batch_size):
        x = b["profile"].to(device)
        out = model.frontalize(x)[0][-1].float().cpu()
        c, g, m = b["consistent"], b["frontal"], b["mask"]
        cnt = m.sum((1, 2, 3)).clamp(min=1) * 3
        acc["l1_c"].append(((out - c).abs() * m).sum((1, 2, 3)) / cnt)
        acc["l1_gt"].append(((out - g).abs() * m).sum((1, 2, 3)) / cnt)
        acc["ssim_c"].append(ssim(out, c, m))
        acc["ssim_gt"].append(ssim(out, g, m))
        acc["psnr_c"].append(psnr(out, c, m))
        acc["psnr_gt"].append(psnr(out, g, m))
        occ, vis = b["occluded"], m * (1 - b["occluded"])
        err = (out - c).abs().mean(1, keepdim=True)
        acc["occ_l1"].append((err * occ).sum((1, 2, 3)) / occ.sum((1, 2, 3)).clamp(min=1))
        acc["vis_l1"].append((err * vis).sum((1, 2, 3)) / vis.sum((1, 2, 3)).clamp(min=1))
        acc["occ_px"].append(occ.sum((1, 2, 3)))
        t = illumination_tracking(out, c, g, m)
        for k in ("dot", "norm", "d_in", "d_gt"):
            acc[k].append(t[k])
        fo, fc, fi = (_id_features(evalnet, z.to(device)).cpu() for z in (out, c, b["profile"]))
        acc["id_sim"].append(F.cosine_similarity(fo, fc, dim=1))
        acc["id_sim_input"].append(F.cosine_similarity(fi, fc, dim=1))
        feats.append(fo)
        feats_in.append(fi)
        ids.append(b["identity"])
        acc["yaw"].append(b["yaw"])
        if b["true_grid"] is not None:
            grid = model.flow_f(x)[-1].float().cpu()
            size = grid.shape[1]
            dpx = norm_to_pixel(grid, size) - norm_to_pixel(b["true_grid"], size)
            valid = m[:, 0] * (1 - b["occluded"][:, 0])  # face pixels the profile shows
            acc["epe"].append((dpx.norm(dim=-1) * valid).sum((1, 2)) / valid.sum((1, 2)).clamp(min=1))
    per = {k: torch.cat(v).numpy() for k, v in acc.items() if v}
    gal = torch.from_numpy(arrays["gallery"]).permute(0, 3, 1, 2).float() / 255
    gal_feats = torch.cat([_id_features(evalnet, gal[i:i + batch_size].to(device)).cpu()
                           for i in range(0, len(gal), batch_size)])
    gal_ids = torch.from_numpy(arrays["gallery_ids"])
    probe_ids = torch.cat(ids)
    per["rank1"] = rank1(torch.cat(feats), probe_ids, gal_feats, gal_ids).numpy()
    per["rank1_input"] = rank1(torch.cat(feats_in), probe_ids, gal_feats, gal_ids).numpy()
    tracking = pool_tracking({k: torch.from_numpy(per[k]) for k in ("dot", "norm", "d_in", "d_gt")})
    large = np.abs(per["yaw"]) >= LARGE_YAW
    has_occ = large & (per["occ_px"] > 0)
    metrics = {
        "l1_consistent": float(per["l1_c"].mean()), "l1_gt": float(per["l1_gt"].mean()),
        "ssim_consistent": float(per["ssim_c"].mean()), "ssim_gt": float(per["ssim_gt"].mean()),
        "psnr_consistent": float(per["psnr_c"].mean()), "psnr_gt": float(per["psnr_gt"].mean()),
        **tracking,
        "occluded_l1_large_yaw": float(per["occ_l1"][has_occ].mean()) if has_occ.any() else float("nan"),
        "visible_l1_large_yaw": float(per["vis_l1"][large].mean()) if large.any() else float("nan"),
        "id_similarity": float(per["id_sim"].mean()), "id_similarity_input": float(per["id_sim_input"].mean()),
        "rank1": float(per["rank1"].mean() * 100), "rank1_input": float(per["rank1_input"].mean() * 100),
    }
    if "epe" in per:
        metrics["flow_epe_px"] = float(per["epe"].mean())
    for a in sorted({int(abs(y)) for y in per["yaw"]}):
        sel = np.abs(per["yaw"]) == a
        metrics[f"rank1_yaw{a}"] = float(per["rank1"][sel].mean() * 100)
        metrics[f"l1_consistent_yaw{a}"] = float(per["l1_c"][sel].mean())
    model.train()
    return {"metrics": metrics, "per_sample": per}


@torch.no_grad()
def save_grid(model, arrays: dict[str, np.ndarray], path: str | Path, device, n: int = 8, title: str = "") -> None:
    """Rows: profile (input) / output / ground truth (inconsistent light) / illumination-consistent target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model.eval()
    n = min(n, len(arrays["profile"]))
    order = np.argsort(np.abs(arrays["yaw"][:n * 4]), kind="stable")[np.linspace(0, min(len(arrays["yaw"]), n * 4) - 1, n).astype(int)]
    x = torch.from_numpy(arrays["profile"][order]).permute(0, 3, 1, 2).float().to(device) / 255
    out = model.frontalize(x)[0][-1].clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
    rows = [("profile (input)", arrays["profile"][order] / 255), ("output", out),
            ("ground truth", arrays["frontal"][order] / 255)]
    if "consistent" in arrays:
        rows.append(("illumination-consistent target", arrays["consistent"][order] / 255))
    fig, ax = plt.subplots(len(rows), n, figsize=(1.6 * n, 1.7 * len(rows)))
    for r, (name, imgs) in enumerate(rows):
        for j in range(n):
            ax[r, j].imshow(np.clip(imgs[j], 0, 1))
            ax[r, j].set_xticks([])
            ax[r, j].set_yticks([])
            if r == 0:
                ax[r, j].set_title(f"yaw {arrays['yaw'][order[j]]:+.0f}", fontsize=8)
        ax[r, 0].set_ylabel(name, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    model.train()
