"""Training entry point: ``uv run --package depatch train [overrides]`` (or ``depatch-train``, or
``torchrun --nproc-per-node N -m depatch.train``).

``fit(cfg, out_dir)`` reads top to bottom: validate -> data -> model -> optimiser/schedule -> resume ->
epochs of ``train_one_epoch`` + ``evaluate`` -> checkpoint -> final metrics and the patch-rectangle
figure. ``task=classification`` trains PVT/DPT classifiers (synthetic default, the synthetic ``parts``
task of the mechanism check, ImageNet recipes); ``task=detection`` trains torchvision's RetinaNet on a
DPT backbone on COCO-format data and scores it with pycocotools.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import DataLoader

from shared.cli import hydra_main
from shared.data.coco import coco_evaluate, detection_collate
from shared.errors import ConfigError, check_choice, check_range, require
from shared.metrics import topk_accuracy
from shared.runtime import (
    Progress,
    barrier,
    epoch_loader,
    hydra_run_dir,
    make_generator,
    maybe_resume,
    reduce_metrics,
    save_training_state,
    seed_worker,
    start_run,
    unwrap,
)

from depatch.data import MixupCutmix, RepeatedAugSampler, coco_splits, imagenet_splits, parts_splits, synthetic_splits
from depatch.pvt import PyramidVisionTransformer, count_parameters, create_model, depatch_flags, list_models, model_config

log = logging.getLogger("depatch")

TASKS = ("classification", "detection")
DATA_KINDS = {"classification": ("synthetic", "parts", "imagenet"), "detection": ("coco",)}
SCHEDULES = ("cosine", "step")
STEP_PER = ("epoch", "iter")
NO_WEIGHTS = (None, "none", "None", "null")


# ------------------------------------------------------------------------------ validation


def weights_path(cfg: DictConfig) -> str | None:
    """The local checkpoint to start from, or None (``weights=null`` or the explicit ``weights=none``)."""
    return None if cfg.weights in NO_WEIGHTS else str(cfg.weights)


def deformable_stages(cfg: DictConfig) -> list[int]:
    """1-based stages that use DePatch: ``model.depatch_stages`` or the architecture's own."""
    arch = model_config(cfg.model.arch)
    flags = depatch_flags(cfg.model.depatch_stages, len(arch["embed_dims"])) or arch["depatch"]
    return [i + 1 for i, f in enumerate(flags) if f]


def validate(cfg: DictConfig) -> None:
    """Every registry name and value range of a run, checked before any data or model is built."""
    check_choice("task", cfg.task, TASKS)
    check_choice("model.arch", cfg.model.arch, list_models())
    check_choice("data.kind", cfg.data.kind, DATA_KINDS[cfg.task])
    check_choice("optim.name", cfg.optim.name, ("adamw",))
    check_choice("optim.schedule", cfg.optim.schedule, SCHEDULES)
    check_choice("optim.step_per", cfg.optim.step_per, STEP_PER)
    for key in ("epochs", "batch_size", "eval_batch_size"):
        check_range(key, cfg[key], 1, integer=True)
    check_range("optim.lr", cfg.optim.lr, 0, lo_inclusive=False)
    check_range("optim.weight_decay", cfg.optim.weight_decay, 0)
    check_range("optim.lr_ref_batch", cfg.optim.lr_ref_batch, 1, allow_none=True)
    check_range("optim.warmup_epochs", cfg.optim.warmup_epochs, 0, integer=True)
    check_range("optim.warmup_iters", cfg.optim.warmup_iters, 0, integer=True)
    check_range("optim.cooldown_epochs", cfg.optim.cooldown_epochs, 0, integer=True)
    check_range("optim.warmup_lr", cfg.optim.warmup_lr, 0)
    check_range("optim.min_lr", cfg.optim.min_lr, 0)
    check_range("optim.gamma", cfg.optim.gamma, 0, 1, lo_inclusive=False)
    check_range("optim.label_smoothing", cfg.optim.label_smoothing, 0, 1, hi_inclusive=False)
    check_range("optim.clip_grad", cfg.optim.clip_grad, 0, lo_inclusive=False, allow_none=True)
    check_range("model.drop_path_rate", cfg.model.drop_path_rate, 0, 1, hi_inclusive=False)
    check_range("model.drop_path_warmup_epochs", cfg.model.drop_path_warmup_epochs, 0, integer=True)
    check_range("model.num_points", cfg.model.num_points, 2, integer=True)
    check_range("model.first_patch_size", cfg.model.get("first_patch_size"), 1, integer=True, allow_none=True)
    n_stages = len(model_config(cfg.model.arch)["embed_dims"])
    if cfg.model.depatch_stages is not None:
        for s in cfg.model.depatch_stages:
            require(isinstance(s, int) and 2 <= s <= n_stages, f"model.depatch_stages={list(cfg.model.depatch_stages)} "
                    f"names stage {s!r}, but DePatch can replace the patch embedding of stages 2..{n_stages} only",
                    f"use a list of stages from 2 to {n_stages}, e.g. model.depatch_stages=[2,3,4], or [] for none")
    if cfg.model.get("freeze_boxes", False):
        require(bool(deformable_stages(cfg)) and cfg.task == "classification",
                f"model.freeze_boxes=true needs a classifier with DePatch stages ({cfg.model.arch}, task={cfg.task})",
                "use a dpt_* model with task=classification, or set model.freeze_boxes=false")
    d = cfg.data
    check_range("data.num_classes", d.num_classes, 1 if cfg.task == "detection" else 2, integer=True)
    if cfg.task == "classification":
        smallest = 8 * int(cfg.model.get("first_patch_size") or model_config(cfg.model.arch).get("first_patch_size", 4))
        check_range("data.image_size", d.image_size, smallest, integer=True)
        check_range("data.repeated_aug", d.get("repeated_aug", 0), 0, integer=True)
        for key in ("mixup", "cutmix"):
            check_range(f"data.{key}", d.get(key, 0.0), 0)
        if d.kind in ("synthetic", "parts"):
            check_range("data.n_train", d.n_train, 1, integer=True)
            check_range("data.n_test", d.n_test, 1, integer=True)
        if d.kind == "parts":
            check_choice("data.colours", d.get("colours", "random"), ("random", "fixed"))
            check_choice("data.glyph_set", d.glyph_set, ("symbols", "random"))
        if d.kind == "synthetic":
            lo, hi = d.scale_range
            require(0 < lo <= hi <= 1, f"data.scale_range={list(d.scale_range)} must satisfy 0 < low <= high <= 1",
                    "set e.g. data.scale_range=[0.15,0.9]")
            check_range("data.position_jitter", d.position_jitter, 0, 1)
        if d.kind == "imagenet":
            check_range("data.crop_pct", d.crop_pct, 0, 1, lo_inclusive=False)
        if int(cfg.figure.num_images) > 0:
            stages = deformable_stages(cfg)
            require(not stages or cfg.figure.stage in stages, f"figure.stage={cfg.figure.stage} has no DePatch in this "
                    f"model (its DePatch stages: {stages})", f"set figure.stage to one of {stages} or figure.num_images=0")
    else:
        require(len(d.anchor_sizes) == 5, f"data.anchor_sizes={list(d.anchor_sizes)} needs one base size per FPN "
                "level P3-P7", "give 5 sizes, e.g. data.anchor_sizes=[32,64,128,256,512]")
        require(len(d.min_size) >= 1, "data.min_size is empty", "give at least one short side, e.g. data.min_size=[800]")
        require(cfg.weights is not None, f"task=detection with weights=null would train the {cfg.model.arch} backbone "
                "from scratch, while the paper's box AP needs an ImageNet-trained backbone",
                f"pass weights=/path/to/{cfg.model.arch}.pth (an ImageNet checkpoint), or weights=none to train "
                "from scratch on purpose")
    w = weights_path(cfg)
    require(w is None or Path(w).expanduser().is_file(), f"weights={w!r} is not a file",
            "pass a local checkpoint path (nothing is downloaded), or weights=null")


# ------------------------------------------------------------------------------ building blocks


def build_data(cfg: DictConfig):
    """``(train_set, val_set, collate_fn)`` for the configured data."""
    kind = cfg.data.kind
    if cfg.task == "detection":
        train, val = coco_splits(cfg.data)
        return train, val, detection_collate
    splits = {"synthetic": synthetic_splits, "parts": parts_splits, "imagenet": imagenet_splits}[kind]
    train, val = splits(cfg.data)
    return train, val, None


def build_model(cfg: DictConfig) -> tuple[nn.Module, dict[str, Any]]:
    """The classifier or detector, and the ``model_args`` a checkpoint must match."""
    m = cfg.model
    arch = {"arch": m.arch, "depatch_stages": deformable_stages(cfg), "predict_size": bool(m.predict_size),
            "num_points": int(m.num_points)}
    common = dict(depatch_stages=arch["depatch_stages"], predict_size=arch["predict_size"],
                  num_points=arch["num_points"], drop_path_rate=float(m.drop_path_rate), pretrained=weights_path(cfg))
    if m.get("first_patch_size") is not None:  # stage 1's patch size (the paper: 4)
        arch["first_patch_size"] = common["first_patch_size"] = int(m.first_patch_size)
    if cfg.task == "detection":
        from depatch.detection import build_retinanet

        args = {**arch, "task": "detection", "num_classes": int(cfg.data.num_classes) + 1}
        model = build_retinanet(m.arch, num_classes=args["num_classes"], min_size=list(cfg.data.min_size),
                                max_size=int(cfg.data.max_size), anchor_sizes=list(cfg.data.anchor_sizes),
                                score_thresh=float(cfg.data.score_thresh), fpn_channels=int(cfg.data.fpn_channels),
                                detections_per_img=int(cfg.data.detections_per_img), **common)
        return model, args
    args = {**arch, "task": "classification", "num_classes": int(cfg.data.num_classes),
            "img_size": int(cfg.data.image_size)}
    model = create_model(m.arch, num_classes=args["num_classes"], img_size=args["img_size"], **common)
    if m.get("freeze_boxes", False):
        freeze_boxes(model)
    return model, args


def freeze_boxes(model: nn.Module) -> None:
    """The frozen-box ablation (``model.freeze_boxes``, not in the paper): the offset/size predictor and
    the size bias of every DePatch stop training, so every box stays where it starts (the fixed patch,
    with the zero-initialised predictor): DPT's parametrisation (predictor features, 9-point projection)
    without its deformation. The optimiser skips the frozen parameters."""
    for dep in model.depatch_modules().values():
        dep.offset_predictor.weight.requires_grad_(False)
        dep.wh_bias.requires_grad_(False)


def build_optimizer(cfg: DictConfig, model: nn.Module, world_size: int) -> torch.optim.Optimizer:
    """AdamW; biases, norm weights, the learned size bias and ``cls_token`` skip weight decay unless
    ``optim.decay_norm_and_bias`` (mmdetection's default for detection). The lr scales with the total
    batch when ``optim.lr_ref_batch`` is set (DeiT: ``lr * batch * world / 512``)."""
    o = cfg.optim
    lr = float(o.lr)
    if o.lr_ref_batch:
        lr = lr * cfg.batch_size * world_size / float(o.lr_ref_batch)
    core = unwrap(model)
    skip = core.no_weight_decay() if hasattr(core, "no_weight_decay") else set()
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


def lr_factor(step: int, o: DictConfig, steps_per_epoch: int, epochs: int, base_lr: float) -> float:
    """Multiplier of the base lr for optimiser step ``step`` (0-based) of a schedule ``epochs`` long
    (cool-down epochs after it run at ``min_lr``).

    ``step_per=iter``: linear warm-up from ``warmup_lr`` over ``warmup_iters`` iterations (or
    ``warmup_epochs`` epochs), then cosine to ``min_lr`` over the whole schedule measured from step 0
    (timm without warm-up prefix), or x ``gamma`` at each of ``milestones`` (epochs).

    ``step_per=epoch`` (the official ImageNet trainer, timm's scheduler as DeiT calls it): the lr is
    constant within an epoch, and epoch ``e`` trains at timm's value for ``t = max(e - 1, 0)``, because
    the trainer steps the scheduler with the index of the epoch that just ended: warm-up
    ``warmup_lr + t (lr - warmup_lr) / warmup_epochs`` for ``t < warmup_epochs``, then the cosine at
    ``t / epochs``, then ``min_lr``.
    """
    start = float(o.warmup_lr) / base_lr
    floor = float(o.min_lr) / base_lr
    if o.step_per == "epoch":
        t = float(max(step // steps_per_epoch - 1, 0))
        warm = float(o.warmup_epochs)
        if t < warm:
            return start + (1.0 - start) * t / warm
    else:
        t = step / steps_per_epoch
        warm_steps = int(o.warmup_iters) if o.warmup_iters else int(o.warmup_epochs) * steps_per_epoch
        if step < warm_steps:
            return start + (1.0 - start) * step / warm_steps
    if o.schedule == "step":
        return float(o.gamma) ** sum(t >= m for m in o.milestones)
    if t >= epochs:  # cool-down (timm: past the single cycle the lr is min_lr)
        return floor
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * t / epochs))


def set_drop_path(model: nn.Module, rate: float) -> None:
    for mod in unwrap(model).modules():
        if isinstance(mod, PyramidVisionTransformer):
            mod.set_drop_path(rate)


# ------------------------------------------------------------------------------ train / evaluate


def train_one_epoch(model, loader, optimizer, scheduler, ctx, cfg, epoch: int, step: int, steps_per_epoch: int,
                    total_epochs: int, max_steps: int, mixer=None) -> tuple[int, float]:
    """One pass over ``loader`` (or until ``max_steps``); returns ``(step, mean loss)``."""
    model.train()
    total, count = 0.0, 0
    progress = Progress(steps_per_epoch, desc=f"epoch {epoch + 1}/{total_epochs}", start=step - epoch * steps_per_epoch,
                        interval=float(cfg.log_interval_s), enabled=ctx.is_main)
    for batch in loader:
        if step >= max_steps:
            break
        with ctx.amp.autocast():
            if cfg.task == "detection":
                images, targets = batch
                images = [im.to(ctx.device) for im in images]
                targets = [{k: v.to(ctx.device) for k, v in t.items()} for t in targets]
                loss = sum(model(images, targets).values())
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
        ctx.amp.backward(loss)
        if cfg.optim.clip_grad:
            ctx.amp.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), float(cfg.optim.clip_grad))
        ctx.amp.step(optimizer)
        scheduler.step()
        step += 1
        total, count = total + loss.item(), count + 1
        progress.update(loss=loss.item(), lr=optimizer.param_groups[0]["lr"])
    return step, total / max(count, 1)


@torch.no_grad()
def evaluate_classification(model, loader, ctx) -> dict[str, float]:
    model.eval()
    sums = {"loss": 0.0, "acc1": 0.0, "acc5": 0.0}
    n = 0
    for images, labels in loader:
        images, labels = images.to(ctx.device), labels.to(ctx.device)
        with ctx.amp.autocast():
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
    validate(cfg)
    ctx = start_run(cfg, out_dir)
    t_start = time.perf_counter()

    # data: the loader order depends only on (seed, epoch), so a resumed run sees the same batches
    train_set, val_set, collate = build_data(cfg)
    bs, world, repeats = int(cfg.batch_size), ctx.dist.world_size, int(cfg.data.get("repeated_aug", 0) or 0)
    drop_last = cfg.task == "classification" and len(train_set) >= 2 * bs * world

    def train_loader(epoch: int, skip_batches: int = 0) -> DataLoader:
        if repeats > 1:  # the official repeated-augmentation sampler (drop_last, as the official loader)
            sampler = RepeatedAugSampler(len(train_set), world, ctx.dist.rank, repeats, seed=int(cfg.seed), epoch=epoch,
                                         skip=skip_batches * bs)
            return DataLoader(train_set, bs, sampler=sampler, drop_last=True, num_workers=int(cfg.num_workers),
                              collate_fn=collate, worker_init_fn=seed_worker, generator=make_generator(cfg.seed + epoch))
        return epoch_loader(train_set, bs, shuffle=True, seed=cfg.seed, epoch=epoch, dist=ctx.dist,
                            num_workers=int(cfg.num_workers), skip_batches=skip_batches, collate_fn=collate,
                            drop_last=drop_last)

    steps_per_epoch = len(train_loader(0))
    if steps_per_epoch == 0:
        raise ConfigError(f"{len(train_set)} training images give no full batch of batch_size={bs} per process"
                          f"{' with repeated augmentation (it keeps a multiple of 256 images)' if repeats > 1 else ''}; "
                          "lower batch_size, use more data" + (" or set data.repeated_aug=0" if repeats > 1 else ""))
    total_epochs = int(cfg.epochs) + int(cfg.optim.cooldown_epochs)
    total_steps = steps_per_epoch * total_epochs
    max_steps = min(total_steps, int(cfg.max_steps)) if cfg.max_steps is not None else total_steps

    # model
    model, model_args = build_model(cfg)
    model.to(ctx.device)
    n_params = count_parameters(model)
    log.info("model %s (%s, DePatch stages %s): %.3f M parameters | train %d / val %d samples | %d steps/epoch",
             model_args["arch"], cfg.task, model_args["depatch_stages"], n_params / 1e6, len(train_set), len(val_set),
             steps_per_epoch)

    # optimiser, schedule, mixing
    optimizer = build_optimizer(cfg, model, world)
    base_lr = optimizer.param_groups[0]["lr"]
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, cfg.optim, steps_per_epoch, int(cfg.epochs), base_lr))
    mixer = None
    if cfg.task == "classification" and cfg.data.get("mixup", 0) + cfg.data.get("cutmix", 0) > 0:
        mixer = MixupCutmix(int(cfg.data.num_classes), float(cfg.data.mixup), float(cfg.data.cutmix),
                            float(cfg.data.mix_switch_prob), float(cfg.optim.label_smoothing))

    # resume (a checkpoint of another model is a one-line error); mid-epoch: skip the consumed batches
    ckpt = maybe_resume(cfg.resume, ctx.run_dir, model, optimizer, scheduler, expect=model_args)
    step = int(ckpt["step"]) if ckpt else 0
    if ckpt:
        ctx.amp.load_state_dict(ckpt.get("amp"))
        ctx.metrics.truncate_after("step", step)
    if ctx.dist.enabled:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)

    metrics: dict[str, Any] = {}
    for epoch in range(step // steps_per_epoch, total_epochs):
        if step >= max_steps:
            break
        set_drop_path(model, 0.0 if epoch < int(cfg.model.drop_path_warmup_epochs) else float(cfg.model.drop_path_rate))
        loader = train_loader(epoch, step - epoch * steps_per_epoch)
        step, train_loss = train_one_epoch(model, loader, optimizer, scheduler, ctx, cfg, epoch, step, steps_per_epoch,
                                           total_epochs, max_steps, mixer)
        if cfg.task == "detection":
            metrics = evaluate_detection(model, val_set, ctx, cfg)
        else:
            val_loader = epoch_loader(val_set, int(cfg.eval_batch_size), shuffle=False, seed=cfg.seed, dist=ctx.dist,
                                      num_workers=int(cfg.num_workers))
            metrics = evaluate_classification(model, val_loader, ctx)
        metrics = {"train_loss": train_loss, **metrics}
        ctx.metrics.log(epoch=step / steps_per_epoch, step=step, lr=optimizer.param_groups[0]["lr"], **metrics)
        log.info("epoch %d/%d step %d | %s", epoch + 1, total_epochs, step,
                 " ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
        # the checkpoint records the epoch of the next batch; a mid-epoch stop resumes inside this epoch
        save_training_state(ctx.run_dir / "last.pt", ctx, model=model, optimizer=optimizer, scheduler=scheduler,
                            step=step, epoch=step // steps_per_epoch, cfg=cfg, model_args=model_args,
                            amp=ctx.amp.state_dict())
        if step < (epoch + 1) * steps_per_epoch:
            log.info("stopped at max_steps=%s (step %d, inside epoch %d); resume=auto continues", cfg.max_steps, step,
                     epoch + 1)

    # final metrics, box statistics and the patch-rectangle figure
    core = unwrap(model)
    if not metrics:  # resumed a finished run: evaluate it
        if cfg.task == "detection":
            metrics = evaluate_detection(model, val_set, ctx, cfg)
        else:
            metrics = evaluate_classification(model, epoch_loader(val_set, int(cfg.eval_batch_size), shuffle=False,
                                                                  seed=cfg.seed, dist=ctx.dist), ctx)
    final = {"step": step, "params_m": n_params / 1e6, "wall_s": time.perf_counter() - t_start, **metrics}
    if ctx.is_main and cfg.task == "classification" and core.depatch_modules() and int(cfg.figure.num_images) > 0:
        from depatch.viz import box_stats, plot_patch_rectangles

        n_fig = min(int(cfg.figure.num_images), len(val_set))
        images = torch.stack([val_set[i][0] for i in range(n_fig)]).to(ctx.device)
        labels = [val_set[i][1] for i in range(n_fig)]
        final.update(box_stats(core, images))
        data_name = "synthetic data" if cfg.data.kind in ("synthetic", "parts") else cfg.data.kind
        fig = plot_patch_rectangles(core, images, ctx.run_dir / "patch_rectangles.png", stage=int(cfg.figure.stage),
                                    title=f"{model_args['arch']} on {data_name}: stage {cfg.figure.stage} DePatch "
                                          f"rectangles after {step} steps", labels=labels)
        log.info("patch-rectangle figure: %s", fig)
    if ctx.is_main:
        (ctx.run_dir / "final_metrics.json").write_text(json.dumps(final, indent=2) + "\n")
        headline = (f"top-1 {final['acc1']:.2f}%" if "acc1" in final else
                    f"box AP {final['AP']:.4f}" if "AP" in final else "no evaluation")
        log.info("done: %s (%s) after %d steps in %.0f s | run dir: %s", headline,
                 "synthetic data" if cfg.data.kind in ("synthetic", "parts") else cfg.data.kind, step, final["wall_s"],
                 ctx.run_dir)
    return final


@hydra_main(config_name="train")
def main(cfg: DictConfig) -> None:
    fit(cfg, hydra_run_dir())


if __name__ == "__main__":
    main()
