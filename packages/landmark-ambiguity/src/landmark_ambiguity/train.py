"""Training: stacked hourglass on (ambiguous) labels, alternating with the latent-GT search, then
the GHCU on the frozen network's heatmaps.

    uv run --package landmark-ambiguity train                      # embedded default (synthetic)
    uv run --package landmark-ambiguity train search.enabled=false # baseline on the ambiguous labels
    uv run --package landmark-ambiguity train experiment=300w_hg4_sa_ghcu    # paper recipe (needs 300W)
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import hydra
import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from shared.runtime import (Progress, epoch_loader, hydra_run_dir, maybe_resume, save_checkpoint,
                            save_training_state, start_run, unwrap)
from torch.utils.data import Dataset

from . import metrics as M
from .ambiguity import weak_mask
from .data import real_splits, synthetic_splits
from .heatmaps import decode, gaussian_heatmaps, to_heatmap, to_image
from .model import build_ghcu, build_model
from .search import SearchConfig, latent_search

log = logging.getLogger("landmark_ambiguity")


class _Indices(Dataset):
    """Batches of indices: images and (searched) labels live in memory and are gathered per batch."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return i


def build_data(cfg) -> dict[str, dict[str, torch.Tensor]]:
    return synthetic_splits(cfg.data) if cfg.data.name == "synthetic" else real_splits(cfg.data)


def model_args(cfg, num_landmarks: int) -> dict:
    m = cfg.model
    return {"name": m.name, "num_landmarks": num_landmarks, "num_stacks": m.num_stacks, "width": m.width,
            "depth": m.depth, "stride": m.stride}


def _images(x: torch.Tensor, device) -> torch.Tensor:
    return x.to(device, non_blocking=True).float().div_(255.0)


@torch.no_grad()
def predict_heatmaps(model, images: torch.Tensor, device, batch_size: int = 64) -> torch.Tensor:
    """Last-stack heatmaps of ``images`` (uint8, N x 3 x H x W) in eval mode, on the CPU."""
    was = model.training
    model.eval()
    out = [model(_images(images[i:i + batch_size], device))[-1].float().cpu() for i in range(0, len(images), batch_size)]
    model.train(was)
    return torch.cat(out)


def search_labels(model, images, labels, scfg: SearchConfig, stride: int, device, batch_size: int = 64):
    """One latent-GT search pass over a set: labels (image px) -> searched labels (image px)."""
    hm = predict_heatmaps(model, images, device, batch_size)
    y = latent_search(hm, to_heatmap(labels, stride), scfg)
    return to_image(y, stride)


def landmark_errors(pred, gt, cfg, boxes=None, prefix="", mask=None) -> dict[str, float]:
    """NME summary (``eval.norm``) plus both 68-point normalisations and weak/strong-point NME."""
    out = {}
    errs = M.nme(pred, gt, cfg.eval.norm, boxes, mask)
    out.update(M.summary(errs.numpy(), cfg.eval.threshold, prefix))
    if gt.shape[1] == 68:
        out[f"{prefix}nme_io"] = float(M.nme(pred, gt, "inter_ocular", mask=mask).mean())
        out[f"{prefix}nme_ip"] = float(M.nme(pred, gt, "inter_pupil", mask=mask).mean())
        weak = torch.from_numpy(weak_mask(tuple(cfg.data.ambiguity.weak_groups) if "ambiguity" in cfg.data else
                                          ("jaw", "right_brow", "left_brow", "nose_bridge")))
        wm = weak.expand(len(gt), -1) if mask is None else weak & mask
        sm = (~weak).expand(len(gt), -1) if mask is None else ~weak & mask
        out[f"{prefix}nme_weak"] = float(M.nme(pred, gt, cfg.eval.norm, boxes, wm).mean())
        out[f"{prefix}nme_strong"] = float(M.nme(pred, gt, cfg.eval.norm, boxes, sm).mean())
    return out


def label_error(labels, exact, cfg) -> dict[str, float]:
    """Distance of the current training labels to the exact landmarks (synthetic only)."""
    e = landmark_errors(labels, exact, cfg, prefix="label_")
    return {k: v for k, v in e.items() if k in ("label_nme", "label_nme_weak", "label_nme_strong")}


def train_ghcu(hg, train, labels, cfg, device, stride: int, seed: int) -> torch.nn.Module:
    """Fit the GHCU on the frozen hourglass's training heatmaps (channel dropout as augmentation),
    supervised by the current (searched) labels."""
    hm = predict_heatmaps(hg, train["images"], device)
    n, k, h, w = hm.shape
    target = (to_heatmap(labels, stride) + 0.5) / torch.tensor([w, h])
    g = cfg.ghcu
    ghcu = build_ghcu(k, h, g.channels, g.hidden).to(device)
    opt = torch.optim.Adam(ghcu.parameters(), lr=g.lr)
    steps = g.epochs * math.ceil(n / g.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
    gen = torch.Generator().manual_seed(seed + 7)
    ghcu.train()
    for epoch in range(g.epochs):
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n, g.batch_size):
            idx = perm[i:i + g.batch_size]
            x = hm[idx]
            drop = (torch.rand(len(idx), 1, generator=gen) < g.drop_prob) & (torch.rand(len(idx), k, generator=gen) < g.channel_dropout)
            x = x * (~drop)[..., None, None]
            loss = F.mse_loss(ghcu(x.to(device)), target[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    ghcu.eval()
    return ghcu


@torch.no_grad()
def ghcu_predict(ghcu, heatmaps: torch.Tensor, stride: int, device) -> torch.Tensor:
    n, k, h, w = heatmaps.shape
    out = torch.cat([ghcu(heatmaps[i:i + 256].to(device)).cpu() for i in range(0, n, 256)])
    return to_image(out * torch.tensor([w, h]) - 0.5, stride)


def save_overlays(images, preds: dict[str, torch.Tensor], gt, path: Path, n: int = 16) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(n, len(images))
    cols = int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2 * cols, 2 * rows))
    colours = ["red", "cyan", "yellow"]
    for i, ax in enumerate(np.atleast_1d(axes).flat):
        ax.axis("off")
        if i >= n:
            continue
        ax.imshow(images[i].permute(1, 2, 0).numpy())
        ax.scatter(gt[i, :, 0], gt[i, :, 1], s=3, c="lime", label="exact")
        for c, (name, p) in zip(colours, preds.items()):
            ax.scatter(p[i, :, 0], p[i, :, 1], s=3, c=c, marker="x", linewidths=0.6, label=name)
    np.atleast_1d(axes).flat[0].legend(fontsize=5, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def fit(cfg: DictConfig, out_dir: str | Path) -> dict[str, float]:
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    ctx = start_run(cfg, out_dir, device=cfg.device, seed=cfg.seed)
    device = ctx.device

    # data (in memory): train images + labels (ambiguous for synthetic), exact test labels
    data = build_data(cfg)
    train, test = data["train"], data["test"]
    n, k = train["labels"].shape[:2]
    stride, size = cfg.model.stride, cfg.data.image_size
    hm_size = (size // stride, size // stride)
    exact = train["landmarks"] if cfg.data.name == "synthetic" else None

    # model, optimiser, schedule
    margs = model_args(cfg, k)
    model = build_model(margs["name"], **{key: v for key, v in margs.items() if key != "name"}).to(device)
    opt_cls = {"adam": torch.optim.Adam, "rmsprop": torch.optim.RMSprop}[cfg.optim.name]
    optimizer = opt_cls(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total_steps = cfg.epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(total_steps, 1))
    if ctx.dist.enabled:
        model = torch.nn.parallel.DistributedDataParallel(model)
    scfg = SearchConfig(**{key: v for key, v in cfg.search.items() if key not in ("enabled", "start_epoch", "every")})

    labels = train["labels"].clone()
    searched: list[int] = []
    ckpt = maybe_resume(cfg.resume, ctx.run_dir, model, optimizer, scheduler, expect=margs)
    start_epoch, step = 0, 0
    if ckpt is not None:
        start_epoch, step = ckpt["epoch"], ckpt["step"]
        labels, searched = ckpt["labels"], list(ckpt["searched"])
    if exact is not None and ckpt is None:
        ctx.metrics.log(epoch=0, step=0, **label_error(labels, exact, cfg))

    metrics: dict[str, float] = {}
    stopped = False
    epoch = start_epoch - 1  # a resumed, already finished run skips the loop
    for epoch in range(start_epoch, cfg.epochs):
        s = cfg.search
        if s.enabled and epoch >= s.start_epoch and (epoch - s.start_epoch) % s.every == 0 and epoch not in searched:
            labels = search_labels(unwrap(model), train["images"], labels, scfg, stride, device)
            searched.append(epoch)
            info = label_error(labels, exact, cfg) if exact is not None else {}
            log.info("epoch %d: latent-GT search pass %d %s", epoch, len(searched), info)
            ctx.metrics.log(epoch=epoch, step=step, search_pass=len(searched), **info)
        skip = step - epoch * steps_per_epoch
        loader = epoch_loader(_Indices(n), cfg.batch_size, shuffle=True, seed=cfg.seed, epoch=epoch,
                              dist=ctx.dist, skip_batches=skip)
        model.train()
        progress = Progress(steps_per_epoch, f"epoch {epoch + 1}/{cfg.epochs}", enabled=ctx.is_main, start=skip)
        loss_sum, seen = 0.0, 0
        for idx in loader:
            x = _images(train["images"][idx], device)
            target = gaussian_heatmaps(to_heatmap(labels[idx], stride), hm_size, cfg.heatmap.sigma).to(device)
            outs = model(x)
            loss = sum(F.mse_loss(o, target, reduction="sum") / len(idx) for o in outs)  # intermediate supervision
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            loss_sum, seen = loss_sum + loss.item(), seen + 1
            progress.update(loss=loss.item())
            if cfg.max_steps is not None and step >= cfg.max_steps:
                stopped = True
                break
        if stopped:
            save_training_state(ctx.run_dir / "last.pt", ctx, model=model, optimizer=optimizer, scheduler=scheduler,
                                step=step, epoch=epoch, cfg=cfg, model_args=margs, labels=labels, searched=searched)
            log.info("stopped at max_steps=%d (epoch %d); resume continues from here", cfg.max_steps, epoch)
            break
        metrics = evaluate(unwrap(model), test, cfg, device, stride)
        metrics["train_loss"] = loss_sum / max(seen, 1)
        ctx.metrics.log(epoch=epoch + 1, step=step, **metrics)
        log.info("epoch %d: %s", epoch + 1, {key: round(v, 4) for key, v in metrics.items()})
        save_training_state(ctx.run_dir / "last.pt", ctx, model=model, optimizer=optimizer, scheduler=scheduler,
                            step=step, epoch=epoch + 1, cfg=cfg, model_args=margs, labels=labels, searched=searched)

    result = {"step": step, "epoch": epoch + 1 if not stopped else epoch, "search_passes": len(searched), **metrics}
    if stopped or not ctx.is_main:
        return result
    hg = unwrap(model)
    test_pred = to_image(decode(predict_heatmaps(hg, test["images"], device)), stride)
    preds = {"HG": test_pred}
    if exact is not None:
        result.update(label_error(labels, exact, cfg))
    if cfg.ghcu.enabled:
        ghcu = train_ghcu(hg, train, labels, cfg, device, stride, cfg.seed)
        save_checkpoint({"model": ghcu.state_dict(), "model_args": {"num_landmarks": k, "heatmap_size": hm_size[0],
                                                                     "channels": list(cfg.ghcu.channels),
                                                                     "hidden": cfg.ghcu.hidden}},
                        ctx.run_dir / "ghcu.pt")
        preds["GHCU"] = ghcu_predict(ghcu, predict_heatmaps(hg, test["images"], device), stride, device)
        result.update(landmark_errors(preds["GHCU"], test["landmarks"], cfg, test["boxes"], prefix="ghcu_"))
        if "test_occluded" in data:
            occ = data["test_occluded"]
            hm = predict_heatmaps(hg, occ["images"], device)
            p_hg, p_gh = to_image(decode(hm), stride), ghcu_predict(ghcu, hm, stride, device)
            mask = ~occ["visible"]
            result.update(landmark_errors(p_hg, occ["landmarks"], cfg, occ["boxes"], prefix="occ_hg_"))
            result.update(landmark_errors(p_gh, occ["landmarks"], cfg, occ["boxes"], prefix="occ_ghcu_"))
            result["occ_hg_nme_hidden"] = float(M.nme(p_hg, occ["landmarks"], cfg.eval.norm, occ["boxes"], mask).mean())
            result["occ_ghcu_nme_hidden"] = float(M.nme(p_gh, occ["landmarks"], cfg.eval.norm, occ["boxes"], mask).mean())
            save_overlays(occ["images"], {"HG": p_hg, "GHCU": p_gh}, occ["landmarks"],
                          ctx.run_dir / "overlays_occluded.png", cfg.eval.overlays)
    save_overlays(test["images"], preds, test["landmarks"], ctx.run_dir / "overlays.png", cfg.eval.overlays)
    np.savez(ctx.run_dir / "test_errors.npz", **{name: M.nme(p, test["landmarks"], cfg.eval.norm, test["boxes"]).numpy()
                                                 for name, p in preds.items()})
    M.plot_ced({name: M.nme(p, test["landmarks"], cfg.eval.norm, test["boxes"]).numpy() for name, p in preds.items()},
               ctx.run_dir / "ced.png", cfg.eval.threshold, f"CED ({cfg.data.name}, NME / {cfg.eval.norm})")
    (ctx.run_dir / "final_metrics.json").write_text(json.dumps(result, indent=2))
    log.info("final (%s test, NME / %s): %s", cfg.data.name, cfg.eval.norm,
             {key: round(v, 4) if isinstance(v, float) else v for key, v in result.items()})
    log.info("run dir: %s", ctx.run_dir)
    return result


def evaluate(model, test, cfg, device, stride) -> dict[str, float]:
    pred = to_image(decode(predict_heatmaps(model, test["images"], device)), stride)
    return landmark_errors(pred, test["landmarks"], cfg, test["boxes"], prefix="test_")


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    fit(cfg, hydra_run_dir())


if __name__ == "__main__":
    main()
