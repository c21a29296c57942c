"""``fit(cfg, out_dir)``: one training run of any tuning method, readable top to bottom.

    uv run --package conv-adapter train                         # embedded default (synthetic, CPU minutes)
    uv run --package conv-adapter train method=linear           # a baseline, same fit()
    uv run --package conv-adapter train experiment=vtab1k_resnet50_conv_adapter data.task=dtd
    torchrun --nproc-per-node 2 -m conv_adapter.train device=cpu

The run directory (``runs/conv-adapter/<name>``) receives config.yaml, train.log, metrics.csv, env.json,
last.pt (full training state, for ``resume=auto``), adapter.pt (adapter + head tensors only, for the
``conv_adapter`` method), final_metrics.json and curves.png.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from shared.cli import hydra_main
from shared.errors import check_choice, check_range, require
from shared.metrics import topk_accuracy
from shared.runtime import (
    Progress,
    epoch_loader,
    hydra_run_dir,
    maybe_resume,
    reduce_metrics,
    save_checkpoint,
    save_training_state,
    start_run,
    to_plain,
    unwrap,
    versions,
)

from .adapter import INITS, SCHEMES, adapter_state_dict
from .data import build_datasets
from .models import (create_backbone, head_prefix, hub_weights_path, list_models, load_backbone_weights,
                     load_state_dict_file, replace_head)
from .pretrain import pretrained_state
from .tuning import BN_MODES, METHODS, TuningInfo, apply_method, set_train_mode

OPTIMIZERS = ("adamw", "sgd")
DATASETS = ("synthetic", "vtab1k", "fgvc", "fewshot")

log = logging.getLogger("conv_adapter")


def validate(cfg: DictConfig) -> None:
    """Every registry name and value range of a run, checked before any data or model is built."""
    check_choice("model.arch", cfg.model.arch, list_models())
    check_choice("method.name", cfg.method.name, METHODS)
    check_choice("method.scheme", cfg.method.scheme, SCHEMES)
    check_choice("method.init", cfg.method.init, ("official", *INITS))
    check_choice("method.placement", cfg.method.placement, ("conv", "official"))
    check_choice("optim.name", cfg.optim.name, OPTIMIZERS)
    check_choice("bn_mode", cfg.bn_mode, BN_MODES)
    check_choice("data.name", cfg.data.name, DATASETS)
    check_range("method.reduction", cfg.method.reduction, 0, lo_inclusive=False)
    for key in ("epochs", "batch_size", "eval_batch_size", "eval_every"):
        check_range(key, cfg[key], 1, integer=True)
    check_range("optim.lr", cfg.optim.lr, 0, lo_inclusive=False)
    check_range("optim.weight_decay", cfg.optim.weight_decay, 0)
    check_range("label_smoothing", cfg.label_smoothing, 0, 1, hi_inclusive=False)
    check_range("data.image_size", cfg.data.image_size, 8, integer=True)
    w = cfg.weights
    require(w in (None, "synthetic", "imagenet") or Path(str(w)).expanduser().is_file(),
            f"weights={w!r} is neither null, synthetic, imagenet nor an existing file",
            "pass weights=null, weights=synthetic, weights=imagenet or weights=/path/to/state_dict.pth")


def build_model(cfg: DictConfig, num_classes: int) -> tuple[nn.Module, TuningInfo, dict]:
    """Backbone -> weights -> new head -> tuning method. Returns the model, what the method did, and the
    source-domain metrics of a synthetic pre-training (empty otherwise)."""
    arch, weights = cfg.model.arch, cfg.weights
    extra: dict = {}
    model = create_backbone(arch)  # the classifier is replaced below, so its size does not matter
    if weights == "synthetic":
        pcfg = {"arch": arch, **to_plain(cfg.model.pretrain)}
        state, extra = pretrained_state(pcfg, cfg.cache_dir)
        load_backbone_weights(model, state, arch)
    elif weights == "imagenet":
        load_backbone_weights(model, load_state_dict_file(hub_weights_path(arch)), arch)
    elif weights:
        load_backbone_weights(model, load_state_dict_file(weights), arch)
    replace_head(model, arch, num_classes, cfg.model.head_dropout)
    m = cfg.method
    info = apply_method(model, arch, m.name, image_size=cfg.data.image_size, scheme=m.scheme,
                        reduction=m.reduction, init=m.init, placement=m.placement,
                        target_modules=m.target_modules, prompt_size=m.prompt_size, train_norms=m.train_norms)
    return model, info, extra


def build_optimizer(cfg: DictConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    o = cfg.optim
    if o.name == "adamw":
        return torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay)
    if o.name == "sgd":
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    check_choice("optim.name", o.name, OPTIMIZERS)
    raise AssertionError("unreachable")


def cosine_schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int, min_lr: float):
    """Per-step linear warm-up then cosine decay to ``min_lr`` (the official trainer's schedule)."""
    base = optimizer.param_groups[0]["lr"]
    floor = min_lr / base if base else 0.0

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@torch.no_grad()
def evaluate(model: nn.Module, dataset, ctx, batch_size: int, num_workers: int = 0) -> dict[str, float]:
    model.eval()
    sums, count = {"loss": 0.0, "acc1": 0.0, "acc5": 0.0}, 0
    loader = epoch_loader(dataset, batch_size, shuffle=False, seed=0, dist=ctx.dist, num_workers=num_workers)
    for x, y in loader:
        x, y = x.to(ctx.device), y.to(ctx.device)
        logits = model(x)
        n = len(y)
        acc1, acc5 = topk_accuracy(logits, y, (1, 5))
        sums["loss"] += nn.functional.cross_entropy(logits, y, reduction="sum").item()
        sums["acc1"] += acc1 * n
        sums["acc5"] += acc5 * n
        count += n
    return reduce_metrics(sums, count, ctx.device)


def fit(cfg: DictConfig, out_dir: str | Path) -> dict[str, Any]:
    validate(cfg)
    ctx = start_run(cfg, out_dir)

    # data -> model -> optimiser / schedule
    train_set, eval_set, num_classes = build_datasets(cfg.data, seed=cfg.seed)
    model, info, source_metrics = build_model(cfg, num_classes)
    model.to(ctx.device)
    log.info("method %s on %s: %d trainable parameters = %.3f%% of full fine-tuning (%d); adapted %d modules",
             info.method, info.arch, info.trainable, info.percent, info.full, len(info.adapted))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(cfg, params)
    world = ctx.dist.world_size
    steps_per_epoch = math.ceil(len(train_set) / (cfg.batch_size * world))
    total_steps = cfg.epochs * steps_per_epoch
    scheduler = cosine_schedule(optimizer, total_steps, cfg.optim.warmup_epochs * steps_per_epoch, cfg.optim.min_lr)
    model_args = {"arch": info.arch, "method": info.method, "num_classes": num_classes,
                  "adapter_config": info.adapter_config}

    ckpt = maybe_resume(cfg.resume, ctx.run_dir, model, optimizer, scheduler, expect=model_args)
    if ckpt:
        ctx.amp.load_state_dict(ckpt.get("amp"))
    step = ckpt["step"] if ckpt else 0
    start_epoch = ckpt["epoch"] if ckpt else 0
    skip = step - start_epoch * steps_per_epoch  # batches of start_epoch already consumed
    if ctx.dist.enabled:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
    if ckpt:
        ctx.metrics.truncate_after("step", step)

    max_steps = cfg.max_steps if cfg.max_steps is not None else total_steps
    metrics: dict[str, float] = {}
    for epoch in range(start_epoch, cfg.epochs):
        if step >= max_steps:
            break
        set_train_mode(model, cfg.bn_mode)
        loader = epoch_loader(train_set, cfg.batch_size, shuffle=True, seed=cfg.seed, epoch=epoch, dist=ctx.dist,
                              num_workers=cfg.num_workers, skip_batches=skip)
        progress = Progress(steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}", start=skip,
                            interval=cfg.log_interval, enabled=ctx.is_main)
        loss_sum, seen = 0.0, 0
        for x, y in loader:
            x, y = x.to(ctx.device), y.to(ctx.device)
            with ctx.amp.autocast():
                loss = nn.functional.cross_entropy(model(x), y, label_smoothing=cfg.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            ctx.amp.backward(loss)
            ctx.amp.step(optimizer)
            scheduler.step()
            step += 1
            loss_sum, seen = loss_sum + loss.item() * len(y), seen + len(y)
            progress.update(loss=loss.item(), lr=scheduler.get_last_lr()[0])
            if step >= max_steps:
                break
        skip = 0
        finished_epoch = step % steps_per_epoch == 0 or step >= total_steps
        epoch_done = epoch + 1 if finished_epoch else epoch
        if (finished_epoch and (epoch_done % cfg.eval_every == 0 or epoch_done == cfg.epochs)) or step >= max_steps:
            metrics = {f"test_{k}": v for k, v in evaluate(model, eval_set, ctx, cfg.eval_batch_size, cfg.num_workers).items()}
            train_loss = reduce_metrics({"loss": loss_sum}, seen, ctx.device)["loss"]
            ctx.metrics.log(epoch=epoch_done, step=step, train_loss=train_loss, lr=scheduler.get_last_lr()[0], **metrics)
            log.info("epoch %d step %d: train loss %.4f, test acc@1 %.2f%%", epoch_done, step, train_loss, metrics["test_acc1"])
        save_training_state(ctx.run_dir / "last.pt", ctx, model=model, optimizer=optimizer, scheduler=scheduler,
                            step=step, epoch=epoch_done, cfg=cfg, model_args=model_args, amp=ctx.amp.state_dict())

    if not metrics:  # resumed a finished run: just evaluate
        metrics = {f"test_{k}": v for k, v in evaluate(model, eval_set, ctx, cfg.eval_batch_size, cfg.num_workers).items()}
    result = {**metrics, "step": step, "trainable_params": info.trainable, "full_params": info.full,
              "trainable_percent": info.percent, "method": info.method, "arch": info.arch,
              "scheme": info.adapter_config["scheme"] if info.adapter_config else None,
              **{f"source_{k}": v for k, v in source_metrics.items() if k != "seconds"}}
    if ctx.is_main:
        if info.method == "conv_adapter":
            save_checkpoint({"adapter": adapter_state_dict(unwrap(model), extra_prefixes=(head_prefix(info.arch),)),
                             "model_args": model_args, "config": to_plain(cfg),
                             "versions": versions()}, ctx.run_dir / "adapter.pt")
        (ctx.run_dir / "final_metrics.json").write_text(json.dumps(result, indent=2) + "\n")
        _plot_curves(ctx.run_dir)
        log.info("final: test acc@1 %.2f%% | trainable %d params = %.3f%% of full fine-tuning | run dir %s",
                 result["test_acc1"], info.trainable, info.percent, ctx.run_dir)
    return result


def _plot_curves(run_dir: Path) -> None:
    import csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = run_dir / "metrics.csv"
    if not path.is_file():
        return
    rows = [r for r in csv.DictReader(open(path)) if r.get("test_acc1")]
    if not rows:
        return
    steps = [float(r["step"]) for r in rows]
    fig, ax = plt.subplots(1, 2, figsize=(8, 3))
    ax[0].plot(steps, [float(r["train_loss"]) for r in rows], marker="o")
    ax[0].set(xlabel="step", ylabel="train loss")
    ax[1].plot(steps, [float(r["test_acc1"]) for r in rows], marker="o")
    ax[1].set(xlabel="step", ylabel="test acc@1 (%)")
    fig.tight_layout()
    fig.savefig(run_dir / "curves.png", dpi=100)
    plt.close(fig)


@hydra_main(config_name="train")
def main(cfg: DictConfig) -> None:
    fit(cfg, hydra_run_dir())


if __name__ == "__main__":
    main()
