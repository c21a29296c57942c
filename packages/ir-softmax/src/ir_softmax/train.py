"""``fit(cfg, out_dir)``: train an embedding network with one head, then evaluate it, readable top to bottom.

    uv run --package ir-softmax train                          # embedded default: IR-Softmax(AM), synthetic faces
    uv run --package ir-softmax train head=amsoftmax           # its plain counterpart on the same data
    uv run --package ir-softmax train experiment=casia_sphereface20_ir_asoftmax   # a paper recipe (real data)
    torchrun --nproc-per-node 2 -m ir_softmax.train device=cpu

Evaluation (whatever the data provides): closed-set per-class recall on a balanced test set (minority recall =
mean recall of the minority classes), the angle between each class vector (weight or IR centre) and the
Eq. 3 centre of that class's training features, LFW-protocol 10-fold verification on pairs of unseen
identities (plus TAR@FAR and ROC AUC), or Market-1501 CMC/mAP.

The run directory (``runs/ir-softmax/<name>``) receives config.yaml, train.log, metrics.csv, env.json, last.pt
(full training state, for ``resume=auto``), final_metrics.json and features.png (the feature plot).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn

from shared.cli import hydra_main
from shared.errors import ConfigError, check_choice, check_range, require
from shared.runtime import (
    Progress,
    epoch_loader,
    hydra_run_dir,
    maybe_resume,
    save_training_state,
    start_run,
    to_plain,
    unwrap,
)

from .data import DATASETS, DataBundle, build_data, to_input
from .evaluation import reid_cmc_map, roc_curve, tar_at_far, verification_10fold
from .heads import CENTER_UPDATES, SCALES, Head, build_head, class_centres, list_heads
from .models import create_backbone, list_backbones

log = logging.getLogger("ir_softmax")

SPHEREFACE_ITERATIONS = 28_000  # the SphereFace schedule our lambda annealing is stretched from


class EmbeddingModel(nn.Module):
    """Backbone (image -> FC1 feature) + head (loss). ``forward(x)`` gives embeddings, ``forward(x, y)`` the
    loss and the embeddings (so DDP sees the head's weights used inside its forward)."""

    def __init__(self, backbone: nn.Module, head: Head, head_name: str = ""):
        super().__init__()
        self.backbone, self.head, self.head_name = backbone, head, head_name

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None):
        emb = self.backbone(x)
        return emb if labels is None else (self.head(emb, labels), emb)


def validate(cfg: DictConfig) -> None:
    """Every registry name and value range of a run, checked before any data or model is built."""
    check_choice("model.name", cfg.model.name, list_backbones())
    check_choice("head.name", cfg.head.name, list_heads())
    check_choice("data.name", cfg.data.name, DATASETS)
    check_choice("optim.name", cfg.optim.name, ("sgd",))
    check_choice("init_class_vectors", cfg.init_class_vectors, ("random", "centres"))
    h = cfg.head
    if "center_update" in h:
        check_choice("head.center_update", h.center_update, CENTER_UPDATES)
        check_range("head.center_lr", h.center_lr, 0, 1, lo_inclusive=False)
        check_range("head.center_feature_weight", h.center_feature_weight, 0)
        check_range("head.bank_size", h.bank_size, 1, integer=True)
    if "scale" in h:
        check_choice("head.scale", h.scale, SCALES)
    if "s" in h:
        check_range("head.s", h.s, 0, lo_inclusive=False)
    if h.name in ("asoftmax", "ir_asoftmax"):
        check_range("head.m", h.m, 1, integer=True)
    elif "m" in h:
        check_range("head.m", h.m, 0)
    if h.get("blend"):
        check_range("head.lambda_min", h.lambda_min, 0)
        check_range("head.lambda_gamma", h.get("lambda_gamma"), 0, allow_none=True)
    check_range("iterations", cfg.iterations, 1, integer=True, allow_none=True)
    for key in ("epochs", "batch_size", "eval_batch_size", "eval_train_limit"):
        check_range(key, cfg[key], 1, integer=True)
    for key in ("eval_every", "center_refresh"):
        check_range(key, cfg[key], 0, integer=True)
    o = cfg.optim
    check_range("optim.lr", o.lr, 0, lo_inclusive=False)
    check_range("optim.momentum", o.momentum, 0, 1, hi_inclusive=False)
    check_range("optim.weight_decay", o.weight_decay, 0)
    check_range("optim.gamma", o.gamma, 0, 1, lo_inclusive=False)
    for f in o.milestones:
        check_range("optim.milestones[]", f, 0, 1, lo_inclusive=False)
    d = cfg.data
    for key in ("num_classes", "max_per_class", "test_per_class", "image_size", "dim"):
        if key in d and not OmegaConf.is_list(d[key]):
            check_range(f"data.{key}", d[key], 2 if key == "num_classes" else 1, integer=True)
    if "imbalance_ratio" in d:
        check_range("data.imbalance_ratio", d.imbalance_ratio, 1)
    w = cfg.weights
    require(w is None or Path(str(w)).expanduser().is_file(), f"weights={w!r} is not a file",
            "pass weights=null or the path of a checkpoint (an ir-softmax last.pt) or a backbone state dict")
    require(cfg.init_class_vectors == "random" or cfg.head.name != "softmax",
            "init_class_vectors=centres needs a normalised-weight head, not softmax",
            "use head=normface/asoftmax/amsoftmax/... or init_class_vectors=random")


def head_options(hcfg: dict, total_steps: int) -> dict:
    """Head kwargs from the config; ``lambda_gamma: null`` stretches SphereFace's annealing (gamma 0.12 over
    28k iterations) to this run's length, so lambda reaches its minimum at the same fraction of training."""
    opts = {k: v for k, v in hcfg.items() if k != "name" and v is not None}
    if hcfg.get("blend") and hcfg.get("lambda_gamma") is None:
        opts["lambda_gamma"] = 0.12 * SPHEREFACE_ITERATIONS / max(1, total_steps)
    return opts


def build_model(cfg: DictConfig, data: DataBundle, total_steps: int) -> tuple[EmbeddingModel, dict]:
    mcfg = {k: v for k, v in to_plain(cfg.model).items() if k != "name"}
    extra = {"in_features": int(data.train[0][0].numel())} if data.kind == "vector" else {"in_channels": data.in_channels}
    backbone = create_backbone(cfg.model.name, **mcfg, **extra)
    hcfg = to_plain(cfg.head)
    head = build_head(hcfg["name"], data.num_classes, backbone.embedding_size, **head_options(hcfg, total_steps))
    model_args = {"backbone": cfg.model.name, "embedding_size": backbone.embedding_size, "head": hcfg["name"],
                  "num_classes": data.num_classes, "center_update": hcfg.get("center_update"), **extra}
    return EmbeddingModel(backbone, head, hcfg["name"]), model_args


def load_weights(model: EmbeddingModel, path: str) -> None:
    """Initialise from a file: one of our checkpoints (``last.pt``: its backbone only, so another head can be
    fine-tuned from it, as the paper fine-tunes Light CNN-9 from its softmax baseline) or a plain backbone
    state dict."""
    from shared.runtime import load_checkpoint

    p = Path(path).expanduser()
    ckpt = load_checkpoint(p)
    state = ckpt.get("model", ckpt)
    backbone = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")} or state
    model.backbone.load_state_dict(backbone)
    head = {k[len("head."):]: v for k, v in state.items() if k.startswith("head.")}
    same_head = ckpt.get("model_args", {}).get("head") == getattr(model, "head_name", None)
    if head and same_head:  # the same head continues (e.g. softmax fine-tuned from the softmax baseline)
        model.head.load_state_dict(head)
        if "iteration" in head:
            model.head.iteration.zero_()
    log.info("initialised the backbone%s from %s", " and the head" if head and same_head else "", p)


@torch.no_grad()
def init_class_vectors(model: EmbeddingModel, data: DataBundle, ctx, cfg: DictConfig) -> None:
    """Set every class vector (margin-head weights or IR centres) to the Eq. 3 centre of that class's training
    features under the current backbone: the controlled start of the mechanism check, where plain and IR heads
    begin at the same place and differ only in how the class vectors move afterwards."""
    head = model.head
    if not hasattr(head, "is_ir"):
        raise ConfigError(f"init_class_vectors=centres needs a normalised-weight head, not {cfg.head.name!r}; "
                          "use init_class_vectors=random")
    feats, labels = embed(model, data.train, ctx, cfg.eval_batch_size)
    centres, counts = class_centres(feats.double(), labels, data.num_classes)
    target = head.centres if head.is_ir else head.weight.data
    new = torch.where((counts > 0).unsqueeze(1), centres, target.double().cpu()).to(target)
    if head.is_ir:
        head.centres = new
    else:
        head.weight.data.copy_(new)
    model.train()


def build_optimizer(cfg: DictConfig, model: nn.Module, total_steps: int):
    """SGD with momentum and weight decay, learning rate / 10 at fractions of the run (SphereFace: 16k and
    24k of 28k iterations)."""
    o = cfg.optim
    optimizer = torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    milestones = sorted({max(1, int(round(f * total_steps))) for f in o.milestones})
    return optimizer, torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=o.gamma)


def flip_batch(x: torch.Tensor) -> torch.Tensor:
    """Horizontal flip of a random half (torch's global RNG, restored on resume)."""
    mask = torch.rand(len(x), device=x.device) < 0.5
    return torch.where(mask[:, None, None, None], x.flip(-1), x)


@torch.no_grad()
def embed(model: nn.Module, dataset, ctx, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings and labels of a whole dataset (every rank computes all of it; eval mode)."""
    model.eval()
    feats, labels = [], []
    for x, y in epoch_loader(dataset, batch_size, shuffle=False, seed=0):
        feats.append(unwrap(model).backbone(to_input(x).to(ctx.device)).float().cpu())
        labels.append(y)
    return torch.cat(feats), torch.cat(labels)


@torch.no_grad()
def refresh_centres(model: nn.Module, data: DataBundle, ctx, cfg: DictConfig) -> None:
    """The slow exact reference (not the paper's rule): set every IR centre to Eq. 3 over the whole training
    set, embedded by the current network in eval mode (flips off). For ablations only."""
    head = unwrap(model).head
    feats, labels = embed(model, data.train, ctx, cfg.eval_batch_size)
    centres, counts = class_centres(feats.to(head.centres.dtype), labels, data.num_classes)
    head.centres = torch.where((counts > 0).unsqueeze(1).to(ctx.device), centres.to(ctx.device), head.centres)
    model.train()


def _angles(head: Head, feats: torch.Tensor, labels: torch.Tensor, num_classes: int) -> np.ndarray:
    """Degrees between each class vector and the Eq. 3 centre of its features (NaN for an absent class)."""
    centres, counts = class_centres(feats.double(), labels, num_classes)
    w = F.normalize(head.class_vectors().detach().double().cpu(), dim=1)
    cos = (w * centres).sum(1).clamp(-1, 1)
    deg = torch.rad2deg(torch.acos(cos)).numpy()
    return np.where(counts.numpy() > 0, deg, np.nan)


@torch.no_grad()
def evaluate(model: nn.Module, data: DataBundle, ctx, cfg: DictConfig) -> tuple[dict[str, float], dict]:
    """Metrics (floats) and the arrays behind the feature plot."""
    head = unwrap(model).head
    out: dict[str, float] = {}
    arrays: dict[str, Any] = {}
    if data.test is not None:
        feats, labels = embed(model, data.test, ctx, cfg.eval_batch_size)
        pred = head.predict(feats.to(ctx.device)).cpu()
        n = torch.bincount(labels, minlength=data.num_classes).double()
        hit = torch.bincount(labels[pred == labels], minlength=data.num_classes).double()
        recall = (hit / n.clamp_min(1)).numpy()
        out["test_accuracy"] = float((pred == labels).double().mean())
        out["minority_recall"] = float(recall[data.minority].mean()) if data.minority.any() else float("nan")
        out["majority_recall"] = float(recall[~data.minority].mean()) if (~data.minority).any() else float("nan")
        arrays.update(test_feats=feats, test_labels=labels, recall=recall)
    if cfg.eval_train_angles:
        subset = data.train
        if cfg.eval_train_limit and len(subset) > cfg.eval_train_limit:
            idx = np.random.default_rng(0).choice(len(subset), cfg.eval_train_limit, replace=False)
            subset = torch.utils.data.Subset(subset, np.sort(idx).tolist())
        tf, tl = embed(model, subset, ctx, cfg.eval_batch_size)
        ang = _angles(head, tf, tl, data.num_classes)
        train_pred = head.predict(tf.to(ctx.device)).cpu()
        n = torch.bincount(tl, minlength=data.num_classes).double()
        train_recall = (torch.bincount(tl[train_pred == tl], minlength=data.num_classes).double() / n.clamp_min(1)).numpy()
        if data.minority.any():
            out["train_minority_recall"] = float(train_recall[data.minority & (n.numpy() > 0)].mean())
        out["minority_angle"] = float(np.nanmean(ang[data.minority])) if data.minority.any() else float("nan")
        out["majority_angle"] = float(np.nanmean(ang[~data.minority])) if (~data.minority).any() else float("nan")
        arrays["angles"] = ang
    if data.verification is not None:
        v = data.verification
        feats, _ = embed(model, v["images"], ctx, cfg.eval_batch_size)
        f = F.normalize(feats.double(), dim=1)
        scores = (f[v["index"][:, 0]] * f[v["index"][:, 1]]).sum(1)
        ten = verification_10fold(scores, v["same"], v["fold"])
        out["verification_accuracy"], out["verification_std"] = ten["accuracy"], ten["std"]
        out["verification_auc"] = roc_curve(scores, v["same"])["auc"]
        out["tar_at_far_1e-2"] = tar_at_far(scores, v["same"], 1e-2)[1e-2][0]
    if data.reid is not None:
        r = data.reid
        q, _ = embed(model, r["query"], ctx, cfg.eval_batch_size)
        g, _ = embed(model, r["gallery"], ctx, cfg.eval_batch_size)
        dist = 1 - F.normalize(q, dim=1) @ F.normalize(g, dim=1).t()
        res = reid_cmc_map(dist, r["q_pids"], r["g_pids"], r["q_camids"], r["g_camids"])
        out.update(rank1=float(res["cmc"][0]), rank5=float(res["cmc"][4]), rank10=float(res["cmc"][9]), mAP=res["mAP"])
    model.train()
    return out, arrays


def fit(cfg: DictConfig, out_dir: str | Path) -> dict[str, Any]:
    validate(cfg)
    ctx = start_run(cfg, out_dir)  # threads, device, seed + rank, amp (the heads compute in float32 inside it)

    # data -> model -> optimiser / schedule
    data = build_data(to_plain(cfg.data), cfg.cache_dir)
    world = ctx.dist.world_size
    steps_per_epoch = math.ceil(len(data.train) / (cfg.batch_size * world))
    total_steps = int(cfg.iterations) if cfg.iterations else cfg.epochs * steps_per_epoch
    epochs = math.ceil(total_steps / steps_per_epoch)
    # start_run seeded torch with seed + rank just above: within a seed every head starts from the same backbone
    model, model_args = build_model(cfg, data, total_steps)
    if cfg.weights:
        load_weights(model, cfg.weights)
    model.to(ctx.device)
    optimizer, scheduler = build_optimizer(cfg, model, total_steps)
    log.info("%s + %s: %d classes (%d train samples, counts %d..%d), %d steps (%d epochs)", cfg.model.name,
             unwrap(model).head, data.num_classes, len(data.train), data.counts.min(), data.counts.max(),
             total_steps, epochs)

    ckpt = maybe_resume(cfg.resume, ctx.run_dir, model, optimizer, scheduler, expect=model_args)
    if ckpt:
        ctx.amp.load_state_dict(ckpt.get("amp"))
    if not ckpt and cfg.init_class_vectors == "centres":
        init_class_vectors(model, data, ctx, cfg)
    step = ckpt["step"] if ckpt else 0
    start_epoch = ckpt["epoch"] if ckpt else 0
    skip = step - start_epoch * steps_per_epoch  # batches of start_epoch already consumed
    if ckpt:
        ctx.metrics.truncate_after("step", step)
    if ctx.dist.enabled:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)

    max_steps = min(total_steps, cfg.max_steps) if cfg.max_steps is not None else total_steps
    metrics: dict[str, float] = {}
    for epoch in range(start_epoch, epochs):
        if step >= max_steps:
            break
        model.train()
        loader = epoch_loader(data.train, cfg.batch_size, shuffle=True, seed=cfg.seed, epoch=epoch, dist=ctx.dist,
                              num_workers=cfg.num_workers, skip_batches=skip)
        progress = Progress(min(steps_per_epoch, total_steps - epoch * steps_per_epoch), desc=f"epoch {epoch + 1}/{epochs}",
                            start=skip, interval=cfg.log_interval, enabled=ctx.is_main)
        loss_sum, seen = 0.0, 0
        for x, y in loader:
            x, y = to_input(x).to(ctx.device), y.to(ctx.device)
            if cfg.flip and data.kind == "image":
                x = flip_batch(x)
            with ctx.amp.autocast():
                loss, _ = model(x, y)
            optimizer.zero_grad(set_to_none=True)
            ctx.amp.backward(loss)
            ctx.amp.step(optimizer)
            scheduler.step()
            step += 1
            if cfg.center_refresh and getattr(unwrap(model).head, "is_ir", False) and step % cfg.center_refresh == 0:
                refresh_centres(model, data, ctx, cfg)
            loss_sum, seen = loss_sum + loss.item() * len(y), seen + len(y)
            progress.update(loss=loss.item(), lr=scheduler.get_last_lr()[0])
            if step >= max_steps:
                break
        skip = 0
        finished_epoch = step % steps_per_epoch == 0 or step >= total_steps
        epoch_done = epoch + 1 if finished_epoch else epoch
        last = step >= max_steps
        if last or (cfg.eval_every and finished_epoch and epoch_done % cfg.eval_every == 0):
            metrics, arrays = evaluate(model, data, ctx, cfg)
            ctx.metrics.log(epoch=epoch_done, step=step, train_loss=loss_sum / max(seen, 1),
                            lr=scheduler.get_last_lr()[0], **metrics)
            log.info("epoch %d step %d: train loss %.4f | %s", epoch_done, step, loss_sum / max(seen, 1),
                     " ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        save_training_state(ctx.run_dir / "last.pt", ctx, model=model, optimizer=optimizer, scheduler=scheduler,
                            step=step, epoch=epoch_done, cfg=cfg, model_args=model_args, amp=ctx.amp.state_dict())

    if not metrics:  # resumed a finished run: just evaluate
        metrics, arrays = evaluate(model, data, ctx, cfg)
    result = {**metrics, "step": step, "head": model_args["head"], "backbone": model_args["backbone"],
              "num_classes": data.num_classes, "imbalance": float(data.counts.max() / max(1, data.counts.min()))}
    if ctx.is_main:
        (ctx.run_dir / "final_metrics.json").write_text(json.dumps(result, indent=2) + "\n")
        if cfg.plot:
            plot_features(arrays, unwrap(model).head, data, ctx.run_dir / "features.png")
            if "test_feats" in arrays:  # the numbers behind the plot, for figures across runs
                np.savez_compressed(ctx.run_dir / "features.npz", feats=arrays["test_feats"].numpy(),
                                    labels=arrays["test_labels"].numpy(), counts=data.counts, minority=data.minority,
                                    class_vectors=unwrap(model).head.class_vectors().detach().cpu().numpy(),
                                    angles=arrays.get("angles", np.full(data.num_classes, np.nan)))
        log.info("final: %s", " | ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        log.info("outputs in %s (final_metrics.json, metrics.csv, last.pt%s)", ctx.run_dir,
                 ", features.png" if cfg.plot else "")
    return result


def plot_features(arrays: dict, head: Head, data: DataBundle, path: Path) -> None:
    """Left: test features (2-D directly; else the first two principal components of the normalised features)
    with each class vector drawn as a ray, minority classes outlined. Right: angle between class vector and
    feature centre per class against the class's training count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if "test_feats" not in arrays:
        return
    f, y = arrays["test_feats"].double(), arrays["test_labels"].numpy()
    w = head.class_vectors().detach().double().cpu()
    if f.shape[1] == 2:
        pts, rays, title = f.numpy(), F.normalize(w, dim=1).numpy(), "features (2-D) and class vectors"
    else:
        fn = F.normalize(f, dim=1)
        mean = fn.mean(0)
        _, _, v = torch.linalg.svd(fn - mean, full_matrices=False)
        pts = ((fn - mean) @ v[:2].t()).numpy()
        rays = F.normalize((F.normalize(w, dim=1) - mean) @ v[:2].t(), dim=1).numpy()
        title = "normalised features, first two PCs"
    fig, ax = plt.subplots(1, 2, figsize=(10, 4.5))
    cmap = plt.get_cmap("tab10" if data.num_classes <= 10 else "tab20")
    scale = np.abs(pts).max()
    for k in range(data.num_classes):
        sel = y == k
        color = cmap(k % cmap.N)
        ax[0].scatter(pts[sel, 0], pts[sel, 1], s=4, color=color, alpha=0.5)
        ax[0].plot([0, rays[k, 0] * scale], [0, rays[k, 1] * scale], color=color, lw=2.5 if data.minority[k] else 1,
                   ls="--" if data.minority[k] else "-")
    ax[0].set(title=f"{title}\n(dashed: minority-class vectors)", aspect="equal")
    if "angles" in arrays:
        ax[1].scatter(data.counts, arrays["angles"], c=np.where(data.minority, "tab:red", "tab:blue"))
        ax[1].set(xlabel="training samples of the class",
                  ylabel="angle(class vector, feature centre) [deg]", title="red: minority classes")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


@hydra_main(config_name="train")
def main(cfg: DictConfig) -> None:
    fit(cfg, hydra_run_dir())


if __name__ == "__main__":
    main()
