"""Training entry point: ``uv run --package depatch train [overrides]`` (or ``depatch-train``, or
``torchrun --nproc-per-node N -m depatch.train``).

``fit(cfg, out_dir)`` reads top to bottom: data -> model -> optimiser/schedule -> resume -> epochs of
``train_one_epoch`` + ``evaluate`` -> checkpoint -> final metrics and the patch-rectangle figure.
``task=classification`` trains PVT/DPT classifiers (synthetic default, ImageNet recipes);
``task=detection`` trains torchvision's RetinaNet on a DPT backbone on COCO-format data and scores it
with pycocotools.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import hydra
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from shared.data.coco import coco_evaluate, detection_collate
from shared.metrics import topk_accuracy
from shared.runtime import (
    Progress,
    autocast,
    barrier,
    cleanup_distributed,
    epoch_loader,
    grad_scaler,
    hydra_run_dir,
    maybe_resume,
    reduce_metrics,
    save_training_state,
    start_run,
    unwrap,
)

from depatch.data import MixupCutmix, coco_splits, imagenet_splits, synthetic_splits
from depatch.pvt import count_parameters, create_model

log = logging.getLogger("depatch")


# ------------------------------------------------------------------------------ building blocks


def build_data(cfg: DictConfig):
    """``(train_set, val_set, collate_fn)`` for the configured data."""
    kind = cfg.data.kind
    if cfg.task == "detection":
        if kind != "coco":
            raise ValueError(f"task=detection needs COCO-format data (data=coco), got data.kind={kind!r}.")
        train, val = coco_splits(cfg.data)
        return train, val, detection_collate
    if kind == "synthetic":
        train, val = synthetic_splits(cfg.data)
    elif kind == "imagenet":
        train, val = imagenet_splits(cfg.data)
    else:
        raise ValueError(f"task=classification supports data=synthetic or data=imagenet, got data.kind={kind!r}.")
    return train, val, None


def build_model(cfg: DictConfig) -> tuple[nn.Module, dict[str, Any]]:
    """The classifier or detector, and the ``model_args`` a checkpoint must match."""
    m = cfg.model
    if cfg.task == "detection":
        from depatch.detection import build_retinanet

        args = {"arch": m.arch, "task": "detection", "num_classes": int(cfg.data.num_classes) + 1}
        model = build_retinanet(m.arch, num_classes=args["num_classes"], min_size=list(cfg.data.min_size),
                                max_size=int(cfg.data.max_size), anchor_sizes=list(cfg.data.anchor_sizes),
                                drop_path_rate=float(m.drop_path_rate), pretrained=m.pretrained,
                                score_thresh=float(cfg.data.score_thresh), fpn_channels=int(cfg.data.fpn_channels),
                                detections_per_img=int(cfg.data.detections_per_img))
        return model, args
    args = {"arch": m.arch, "task": "classification", "num_classes": int(cfg.data.num_classes),
            "img_size": int(cfg.data.image_size), "num_points": int(m.num_points)}
    model = create_model(m.arch, num_classes=args["num_classes"], img_size=args["img_size"],
                         num_points=args["num_points"], drop_path_rate=float(m.drop_path_rate), pretrained=m.pretrained)
    return model, args


def build_optimizer(cfg: DictConfig, model: nn.Module, world_size: int) -> torch.optim.Optimizer:
    """AdamW; biases, norm weights, the learned size bias and ``cls_token`` skip weight decay unless
    ``optim.decay_norm_and_bias`` (mmdetection's default for detection)."""
    o = cfg.optim
    lr = float(o.lr)
    if o.lr_ref_batch:
        lr = lr * cfg.batch_size * world_size / float(o.lr_ref_batch)
    skip = set()
    core = unwrap(model)
    if hasattr(core, "no_weight_decay"):
        skip = core.no_weight_decay()
    decay, no_decay = [], []
    for name, p in core.named_parameters():
        if not p.requires_grad:
            continue
        if not o.decay_norm_and_bias and (p.ndim <= 1 or name.endswith(".bias") or name.split(".")[-1] in skip):
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [{"params": decay, "weight_decay": float(o.weight_decay)}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(o.betas), eps=float(o.eps))


def lr_factor(step: int, o: DictConfig, steps_per_epoch: int, total_steps: int, base_lr: float) -> float:
    """Multiplier of the base lr at optimiser step ``step``: linear warm-up from ``warmup_lr``, then
    cosine to ``min_lr`` (timm-style, measured over the whole run) or steps of ``gamma`` at
    ``milestones`` (epochs)."""
    warmup = int(o.warmup_iters) if o.warmup_iters else int(o.warmup_epochs) * steps_per_epoch
    start = float(o.warmup_lr) / base_lr
    if step < warmup:
        return start + (1.0 - start) * step / warmup
    if o.schedule == "cosine":
        floor = float(o.min_lr) / base_lr
        t = min(step / max(1, total_steps), 1.0)
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * t))
    if o.schedule == "step":
        return float(o.gamma) ** sum(step >= m * steps_per_epoch for m in o.milestones)
    raise ValueError(f"optim.schedule must be 'cosine' or 'step', got {o.schedule!r}.")


# ------------------------------------------------------------------------------ train / evaluate


def train_one_epoch(model, loader, optimizer, scheduler, scaler, ctx, cfg, epoch: int, step: int,
                    steps_per_epoch: int, mixer=None) -> tuple[int, float, bool]:
    """One pass over ``loader``; returns ``(step, mean loss, stopped early at max_steps)``."""
    model.train()
    total, count = 0.0, 0
    done_in_epoch = step - epoch * steps_per_epoch
    progress = Progress(steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}", start=done_in_epoch,
                        interval=float(cfg.log_interval_s), enabled=ctx.is_main)
    for batch in loader:
        with autocast(ctx.device, enabled=cfg.amp):
            if cfg.task == "detection":
                images, targets = batch
                images = [im.to(ctx.device) for im in images]
                targets = [{k: v.to(ctx.device) for k, v in t.items()} for t in targets]
                losses = model(images, targets)
                loss = sum(losses.values())
            else:
                images, labels = (t.to(ctx.device, non_blocking=True) for t in batch)
                if mixer is not None:
                    images, soft = mixer(images, labels)
                    loss = torch.sum(-soft * F.log_softmax(model(images).float(), dim=-1), dim=-1).mean()
                else:
                    loss = F.cross_entropy(model(images).float(), labels, label_smoothing=float(cfg.optim.label_smoothing))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {loss.item()} at step {step}; lower optim.lr or disable amp.")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if cfg.optim.clip_grad:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), float(cfg.optim.clip_grad))
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        step += 1
        total, count = total + loss.item(), count + 1
        progress.update(loss=loss.item(), lr=optimizer.param_groups[0]["lr"])
        if cfg.max_steps is not None and step >= int(cfg.max_steps):
            return step, total / max(count, 1), True
    return step, total / max(count, 1), False


@torch.no_grad()
def evaluate_classification(model, loader, ctx, amp: bool = False) -> dict[str, float]:
    model.eval()
    sums = {"loss": 0.0, "acc1": 0.0, "acc5": 0.0}
    n = 0
    for images, labels in loader:
        images, labels = images.to(ctx.device), labels.to(ctx.device)
        with autocast(ctx.device, enabled=amp):
            logits = model(images).float()
        b = labels.numel()
        acc1, acc5 = topk_accuracy(logits, labels, (1, 5))
        sums["loss"] += F.cross_entropy(logits, labels, reduction="sum").item()
        sums["acc1"] += acc1 * b
        sums["acc5"] += acc5 * b
        n += b
    return reduce_metrics(sums, n, ctx.device)


def evaluate_detection(model, val_set, ctx, cfg) -> dict[str, float]:
    """COCO box AP with pycocotools (rank 0 scores the whole val set; the others wait)."""
    from depatch.detection import predict_coco

    metrics: dict[str, float] = {}
    if ctx.is_main:
        loader = epoch_loader(val_set, int(cfg.eval_batch_size), shuffle=False, seed=cfg.seed,
                              num_workers=int(cfg.num_workers), collate_fn=detection_collate)
        detections = predict_coco(unwrap(model), loader, ctx.device)
        metrics = coco_evaluate(val_set.coco, detections, val_set.label_to_cat)
        metrics["num_detections"] = float(sum(len(d["scores"]) for d in detections))
    barrier()
    return metrics


# ------------------------------------------------------------------------------ fit


def fit(cfg: DictConfig, out_dir: str | Path) -> dict[str, Any]:
    """Train and evaluate as configured, writing everything under ``out_dir``; returns the final metrics."""
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    if cfg.task not in ("classification", "detection"):
        raise ValueError(f"task must be 'classification' or 'detection', got {cfg.task!r}.")
    ctx = start_run(cfg, out_dir, device=cfg.device, seed=cfg.seed)
    t_start = time.perf_counter()

    # data
    train_set, val_set, collate = build_data(cfg)
    bs = int(cfg.batch_size)

    def train_loader(epoch: int, skip: int = 0):
        return epoch_loader(train_set, bs, shuffle=True, seed=cfg.seed, epoch=epoch, dist=ctx.dist,
                            num_workers=int(cfg.num_workers), skip_batches=skip, collate_fn=collate,
                            drop_last=cfg.task == "classification" and len(train_set) >= 2 * bs * ctx.dist.world_size)

    steps_per_epoch = len(train_loader(0))
    total_steps = steps_per_epoch * int(cfg.epochs)

    # model
    model, model_args = build_model(cfg)
    model.to(ctx.device)
    n_params = count_parameters(model)
    log.info("model %s (%s): %.3f M parameters | train %d / val %d samples | %d steps/epoch",
             model_args["arch"], cfg.task, n_params / 1e6, len(train_set), len(val_set), steps_per_epoch)
    if ctx.dist.enabled:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)

    # optimiser, schedule, mixing
    optimizer = build_optimizer(cfg, model, ctx.dist.world_size)
    base_lr = optimizer.param_groups[0]["lr"]
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, cfg.optim, steps_per_epoch, total_steps, base_lr))
    scaler = grad_scaler(ctx.device, enabled=cfg.amp)
    mixer = None
    if cfg.task == "classification" and cfg.data.get("mixup", 0) + cfg.data.get("cutmix", 0) > 0:
        mixer = MixupCutmix(int(cfg.data.num_classes), float(cfg.data.mixup), float(cfg.data.cutmix),
                            float(cfg.data.mix_switch_prob), float(cfg.optim.label_smoothing))

    # resume (mid-epoch: skip the batches this epoch already consumed)
    ckpt = maybe_resume(cfg.resume, ctx.run_dir, model, optimizer, scheduler, expect=model_args)
    step, start_epoch = (int(ckpt["step"]), int(ckpt["epoch"])) if ckpt else (0, 0)
    if ckpt is not None:
        ctx.metrics.truncate_after("step", step)

    metrics: dict[str, Any] = {}
    stopped = False
    for epoch in range(start_epoch, int(cfg.epochs)):
        skip = step - epoch * steps_per_epoch
        loader = train_loader(epoch, skip)
        step, train_loss, stopped = train_one_epoch(model, loader, optimizer, scheduler, scaler, ctx, cfg, epoch,
                                                    step, steps_per_epoch, mixer)
        if stopped and step - epoch * steps_per_epoch < steps_per_epoch:
            # mid-epoch stop: checkpoint this epoch as unfinished, so a resume skips what was consumed
            save_training_state(ctx.run_dir / "last.pt", ctx, model=model, optimizer=optimizer, scheduler=scheduler,
                                step=step, epoch=epoch, cfg=cfg, model_args=model_args)
            log.info("stopped at max_steps=%s (step %d, epoch %d); resume=auto continues", cfg.max_steps, step, epoch + 1)
        if cfg.task == "detection":
            metrics = evaluate_detection(model, val_set, ctx, cfg)
        else:
            val_loader = epoch_loader(val_set, int(cfg.eval_batch_size), shuffle=False, seed=cfg.seed,
                                      dist=ctx.dist, num_workers=int(cfg.num_workers))
            metrics = evaluate_classification(model, val_loader, ctx, cfg.amp)
        metrics = {"train_loss": train_loss, **metrics}
        ctx.metrics.log(epoch=epoch + 1, step=step, lr=optimizer.param_groups[0]["lr"], **metrics)
        log.info("epoch %d/%d step %d | %s", epoch + 1, cfg.epochs, step,
                 " ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
        if stopped and step - epoch * steps_per_epoch < steps_per_epoch:
            break
        save_training_state(ctx.run_dir / "last.pt", ctx, model=model, optimizer=optimizer, scheduler=scheduler,
                            step=step, epoch=epoch + 1, cfg=cfg, model_args=model_args)
        if stopped:
            break

    # final metrics, box statistics and the patch-rectangle figure
    final = {"step": step, "params_m": n_params / 1e6, "wall_s": time.perf_counter() - t_start, **metrics}
    core = unwrap(model)
    if ctx.is_main and cfg.task == "classification" and core.depatch_modules() and int(cfg.figure.num_images) > 0:
        from depatch.viz import box_stats, plot_patch_rectangles

        n_fig = min(int(cfg.figure.num_images), len(val_set))
        images = torch.stack([val_set[i][0] for i in range(n_fig)]).to(ctx.device)
        labels = [val_set[i][1] for i in range(n_fig)]
        final.update(box_stats(core, images))
        fig = plot_patch_rectangles(core, images, ctx.run_dir / "patch_rectangles.png", stage=int(cfg.figure.stage),
                                    title=f"{model_args['arch']} on synthetic data: stage {cfg.figure.stage} DePatch "
                                          f"rectangles after {step} steps" if cfg.data.kind == "synthetic" else None,
                                    labels=labels)
        log.info("patch-rectangle figure: %s", fig)
    if ctx.is_main:
        (ctx.run_dir / "final_metrics.json").write_text(json.dumps(final, indent=2) + "\n")
        headline = (f"top-1 {final['acc1']:.2f}%" if "acc1" in final else
                    f"box AP {final['AP']:.4f}" if "AP" in final else "no evaluation")
        log.info("done: %s (%s) after %d steps in %.0f s | run dir: %s", headline,
                 "synthetic data" if cfg.data.kind == "synthetic" else cfg.data.kind, step, final["wall_s"], ctx.run_dir)
    return final


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    try:
        fit(cfg, hydra_run_dir())
    finally:
        cleanup_distributed()


if __name__ == "__main__":
    main()
