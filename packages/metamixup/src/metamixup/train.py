"""``fit(cfg, out_dir)``: one training run of any method, supervised or semi-supervised, top to bottom.

    uv run --package metamixup train                               # embedded default: synthetic images, MetaMixUp
    uv run --package metamixup train method=mixup method.alpha=0.2 # a baseline through the same fit()
    uv run --package metamixup train experiment=cifar10_preact_resnet18 method=metamixup
    torchrun --nproc-per-node 2 -m metamixup.train device=cpu

The run directory (``runs/metamixup/<name>``) receives config.yaml, train.log, metrics.csv, env.json,
lambda.csv (the mixing ratio of every step: the meta-learned one, or the sampled one of the baselines),
lambda_trajectory.png, last.pt (full training state for ``resume=auto``), final_metrics.json and, for
semi-supervised runs, labeled_idx.json.

Every random draw of a step (pairing, ratio, augmentation, meta and unlabelled batches) comes from a
generator seeded by ``(seed, step, rank)``, so a resumed run draws exactly what an uninterrupted one draws.
"""

from __future__ import annotations

import copy
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from shared.cli import hydra_main
from shared.errors import CheckpointError, ConfigError, check_choice, check_range, require
from shared.metrics import topk_accuracy
from shared.runtime import (
    CSVLogger,
    all_gather_objects,
    Progress,
    epoch_loader,
    hydra_run_dir,
    maybe_resume,
    reduce_metrics,
    save_training_state,
    start_run,
    to_plain,
    unwrap,
)

from .data import DATASETS, DataBundle, IndexDataset, Split, build_data, stream_indices, write_labeled_idx
from .meta import MetaConfig, MetaMixUp
from .mixing import PAIRINGS, cutmix, mix, one_hot, pair_index, sample_lam, soft_cross_entropy, torchvision_batch_mix
from .models import MixAt, create_model, list_models, num_stages
from .ssl import consistency_loss, ema_update, refine_pseudo_labels, sigmoid_rampup

log = logging.getLogger("metamixup")

SUPERVISED_METHODS = ("erm", "mixup", "manifold_mixup", "cutmix", "metamixup")
SSL_METHODS = ("pseudo_label", "ict", "pl_mixup", "metamixup_ssl")
METHODS = SUPERVISED_METHODS + SSL_METHODS
META_METHODS = ("metamixup", "metamixup_ssl")
LAM_METHODS = ("mixup", "manifold_mixup", "cutmix", "metamixup", "pl_mixup", "ict", "metamixup_ssl")
SCHEDULES = ("cosine", "multistep", "constant")


def validate(cfg: DictConfig) -> None:
    """Every registry name and value range of a run, checked before any data or model is built."""
    m = cfg.method
    check_choice("method.name", m.name, METHODS)
    check_choice("model.name", cfg.model.name, list_models())
    check_choice("data.name", cfg.data.name, DATASETS)
    check_choice("optim.schedule", cfg.optim.schedule, SCHEDULES)
    for key in ("epochs", "batch_size", "eval_batch_size", "eval_every"):
        check_range(key, cfg[key], 1, integer=True)
    check_range("optim.lr", cfg.optim.lr, 0, lo_inclusive=False)
    check_range("optim.weight_decay", cfg.optim.weight_decay, 0)
    check_range("optim.momentum", cfg.optim.momentum, 0, 1, hi_inclusive=False)
    check_range("data.meta_size", cfg.data.get("meta_size") or 0, 0, integer=True)
    check_range("data.num_labeled", cfg.data.get("num_labeled"), 1, integer=True, allow_none=True)
    if cfg.data.name in ("synthetic", "rings"):
        check_range("data.n_train", cfg.data.n_train, 2, integer=True)
        check_range("data.n_test", cfg.data.n_test, 1, integer=True)
        check_range("data.num_classes", cfg.data.num_classes, 2, integer=True)
    if "alpha" in m:
        check_range("method.alpha", m.alpha, 0)
    if m.get("fixed_lam") is not None:
        check_range("method.fixed_lam", m.fixed_lam, 0, 1)
        require(m.impl == "native", "method.fixed_lam needs the native mixup", "set method.impl=native")
    if m.name == "pseudo_label":
        check_range("method.threshold", m.threshold, 0, 1)
    if "pairing" in m:
        check_choice("method.pairing", m.pairing, PAIRINGS)
    if "impl" in m:
        check_choice("method.impl", m.impl, ("native", "torchvision"))
    if m.name == "cutmix":
        check_range("method.prob", m.prob, 0, 1)
        require(cfg.data.name != "rings", "method=cutmix pastes image boxes, but data=rings is 2-D points",
                "use an image dataset or another method")
    stages = num_stages(cfg.model.name, to_plain(cfg.model.get("kwargs", {})) or {})
    if m.name == "manifold_mixup":
        require(len(m.layers) > 0, "method.layers is empty", "list at least one layer, e.g. method.layers=[0,1,2]")
        for layer in m.layers:
            check_range("method.layers[]", layer, 0, stages - 1, integer=True)
    if m.name in SSL_METHODS:
        require(bool(cfg.data.get("num_labeled")), f"method={m.name} is semi-supervised but data.num_labeled is not set",
                "set data.num_labeled (e.g. data.num_labeled=200) or use a supervised method")
        check_range("method.weight", m.weight, 0)
        check_range("ssl.unlabeled_batch_size", cfg.ssl.unlabeled_batch_size, 1, integer=True)
        check_range("ssl.rampup_steps", cfg.ssl.rampup_steps, 0, integer=True)
        check_choice("ssl.teacher", cfg.ssl.teacher, ("ema", "model"))
        check_range("ssl.ema_decay", cfg.ssl.ema_decay, 0, 1)
        check_range("ssl.views", cfg.ssl.views, 1, integer=True)
        check_range("ssl.temperature", cfg.ssl.temperature, 0, 1, lo_inclusive=False)
        check_range("ssl.threshold", cfg.ssl.threshold, 0, 1)
        if "consistency" in m:
            check_choice("method.consistency", m.consistency, ("ce", "mse"))
    if m.name in META_METHODS:
        MetaConfig.from_dict(to_plain(m.meta)).validate()
        check_choice("method.meta_source", m.meta_source, ("holdout", "train"))
        require(not (m.name == "metamixup" and m.meta_source == "holdout" and not cfg.data.get("meta_size")),
                "method.meta_source=holdout needs a held-out meta split but data.meta_size is 0",
                "set data.meta_size > 0 or method.meta_source=train")
        check_range("method.meta_batch_size", m.meta_batch_size, 1, integer=True)
        check_range("method.mix_layer", m.mix_layer, 0, stages - 1, integer=True)
    w = cfg.get("weights")
    require(w is None or Path(str(w)).expanduser().is_file(), f"weights={w!r} is not a file",
            "pass weights=null or weights=/path/to/state_dict.pt (a state dict of this model)")


# ------------------------------------------------------------------------------ optimisation


def build_optimizer(cfg: DictConfig, model: nn.Module) -> torch.optim.Optimizer:
    o = cfg.optim
    return torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay,
                           nesterov=bool(o.get("nesterov", False)))


def build_scheduler(cfg: DictConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    """Per-step schedule: linear warm-up, then cosine to 0, step decays at epoch milestones, or constant."""
    o = cfg.optim
    total, warm = cfg.epochs * steps_per_epoch, int(o.get("warmup_epochs", 0) * steps_per_epoch)
    milestones = [int(m * steps_per_epoch) for m in o.get("milestones", [])]

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if o.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))
        if o.schedule == "multistep":
            return o.gamma ** sum(step >= m for m in milestones)
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# ------------------------------------------------------------------------------ one step per method


@dataclass
class Batch:
    x: torch.Tensor  # augmented, normalised inputs
    y: torch.Tensor
    ids: torch.Tensor  # rows of the training split
    rng: np.random.Generator  # this step's ratio / layer draws
    gen: torch.Generator  # this step's pairing / augmentation draws


def _step_rngs(seed: int, step: int, rank: int) -> tuple[np.random.Generator, torch.Generator]:
    rng = np.random.default_rng([seed, step, rank, 0x3A7])
    gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
    return rng, gen


def _recover_lam(y_mix: torch.Tensor, y: torch.Tensor, index: torch.Tensor) -> torch.Tensor | None:
    """The ratio torchvision drew, read off the mixed labels of a pair with two different classes."""
    differ = (y != y[index]).nonzero()
    return y_mix[int(differ[0]), y[int(differ[0])]].detach() if len(differ) else None


def supervised_loss(method: DictConfig, model: nn.Module, b: Batch, num_classes: int,
                    lam_fn: Callable[[Callable, Callable], torch.Tensor] | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Loss of the real update for the supervised methods, and the ratio used (None for ERM)."""
    name = method.name
    if name == "erm":
        return F.cross_entropy(model(b.x), b.y), None
    ys = one_hot(b.y, num_classes, dtype=b.x.dtype)
    if name == "cutmix":
        if b.rng.random() >= method.prob:
            return F.cross_entropy(model(b.x), b.y), torch.tensor(1.0)
        if method.impl == "torchvision":
            x_mix, y_mix = torchvision_batch_mix("cutmix", b.x, b.y, method.alpha, num_classes, int(b.rng.integers(2**62)))
            lam = _recover_lam(y_mix, b.y, pair_index(len(b.y), "roll"))
        else:
            index = pair_index(len(b.y), method.pairing, b.gen, b.x.device)
            x_mix, y_mix, lam = cutmix(b.x, ys, sample_lam(method.alpha, b.rng), index, b.rng)
            lam = torch.tensor(lam)
        return soft_cross_entropy(model(x_mix), y_mix), lam
    index = pair_index(len(b.y), method.pairing, b.gen, b.x.device)
    if name == "mixup" and method.impl == "torchvision":
        x_mix, y_mix = torchvision_batch_mix("mixup", b.x, b.y, method.alpha, num_classes, int(b.rng.integers(2**62)))
        return soft_cross_entropy(model(x_mix), y_mix), _recover_lam(y_mix, b.y, pair_index(len(b.y), "roll"))
    if name == "mixup":
        fixed = method.get("fixed_lam")
        lam = torch.tensor(sample_lam(method.alpha, b.rng) if fixed is None else float(fixed), dtype=b.x.dtype)
        layer = 0
    elif name == "manifold_mixup":
        layer = int(b.rng.choice(list(method.layers)))
        lam = torch.tensor(sample_lam(method.alpha, b.rng), dtype=b.x.dtype)
    else:  # metamixup: the ratio comes from the meta step, then the real loss uses it
        layer = int(method.mix_layer)

    def train_loss(forward, lam_):
        return soft_cross_entropy(forward(b.x, MixAt(layer, lam_, index)), mix(ys, lam_, index))

    if name == "metamixup":
        lam = lam_fn(train_loss, b)
    return train_loss(lambda x, mix=None: model(x, mix=mix), lam), lam


def meta_split(data: DataBundle, method: DictConfig) -> "Split":
    """Where meta batches come from: the held-out split (supervised, ``meta_source=holdout``), else the
    (labelled) training set."""
    return data.meta if (method.name == "metamixup" and method.meta_source == "holdout") else data.train


# ------------------------------------------------------------------------------ evaluation


@torch.no_grad()
def evaluate(model: nn.Module, data: DataBundle, ctx, batch_size: int) -> dict[str, float]:
    was = model.training
    model.eval()
    sums, count = {"loss": 0.0, "acc1": 0.0}, 0
    loader = epoch_loader(IndexDataset(len(data.test)), batch_size, shuffle=False, seed=0, dist=ctx.dist)
    for idx in loader:
        x = data.inputs(data.test.x[idx], ctx.device)
        y = data.test.y[idx].to(ctx.device)
        logits = model(x).float()
        sums["loss"] += F.cross_entropy(logits, y, reduction="sum").item()
        sums["acc1"] += topk_accuracy(logits, y, (1,))[0] * len(y)
        count += len(y)
    model.train(was)
    return reduce_metrics(sums, count, ctx.device)


# ------------------------------------------------------------------------------ fit


def fit(cfg: DictConfig, out_dir: str | Path) -> dict[str, Any]:
    validate(cfg)
    ctx = start_run(cfg, out_dir)
    method, name = cfg.method, cfg.method.name
    rank, world = ctx.dist.rank, ctx.dist.world_size

    # data -> model -> optimiser / schedule -> method state
    data = build_data(cfg.data, seed=cfg.seed)
    num_classes = data.num_classes
    model_kwargs = dict(to_plain(cfg.model.get("kwargs", {})) or {})
    if data.kind == "vector":
        model_kwargs["in_features"] = int(np.prod(data.in_shape))
    else:
        model_kwargs["in_channels"] = data.in_shape[0]
    model = create_model(cfg.model.name, num_classes, **model_kwargs)
    if cfg.weights:
        load_weights(model, cfg.weights)
    model.to(ctx.device)
    optimizer = build_optimizer(cfg, model)
    steps_per_epoch = math.ceil(len(data.train) / (cfg.batch_size * world))
    total_steps = cfg.epochs * steps_per_epoch
    scheduler = build_scheduler(cfg, optimizer, steps_per_epoch)
    augment = to_plain(cfg.data.get("augment")) or None
    n_unlab = len(data.unlabeled) if data.unlabeled is not None else 0
    controller = None
    if name in META_METHODS:
        controller = MetaMixUp(MetaConfig.from_dict(to_plain(method.meta)), num_samples=len(data.train) + n_unlab)
    teacher = None
    if name == "ict" or (name in ("pl_mixup", "metamixup_ssl") and cfg.ssl.teacher == "ema"):
        teacher = copy.deepcopy(model).requires_grad_(False)
    model_args = {"model": cfg.model.name, "num_classes": num_classes, "method": name, "kwargs": model_kwargs}

    ckpt = maybe_resume(cfg.resume, ctx.run_dir, model, optimizer, scheduler, expect=model_args,
                        map_location=ctx.device)
    if ckpt:
        ctx.amp.load_state_dict(ckpt.get("amp"))
    step = ckpt["step"] if ckpt else 0
    start_epoch = ckpt["epoch"] if ckpt else 0
    if ckpt and controller is not None:
        controller.load_state_dict(ckpt["metamixup"])
    if ckpt and teacher is not None:
        teacher.load_state_dict(ckpt["teacher"])
    skip = step - start_epoch * steps_per_epoch
    lam_log = CSVLogger(ctx.run_dir / "lambda.csv", enabled=ctx.is_main)
    if ckpt:
        ctx.metrics.truncate_after("step", step)
        lam_log.truncate_after("step", step)
    if ctx.is_main:
        write_labeled_idx(data, ctx.run_dir / "labeled_idx.json")
    core = model
    if ctx.dist.enabled:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)

    def reduce_mean(t: torch.Tensor) -> torch.Tensor:  # keeps the carried ratio identical on every rank
        if not ctx.dist.enabled:
            return t
        out = t.to(ctx.device).clone()
        torch.distributed.all_reduce(out)
        return (out / world).cpu()

    def reduce_sum(t: torch.Tensor) -> torch.Tensor:
        if not ctx.dist.enabled:
            return t
        out = t.to(ctx.device).clone()
        torch.distributed.all_reduce(out)
        return out.cpu()

    meta_set = meta_split(data, method)

    def meta_lam(train_loss, b: Batch, ids=None) -> torch.Tensor:
        """The meta step: refine this batch's ratio on a clean meta batch, return it for the real update."""
        midx = stream_indices(len(meta_set), method.meta_batch_size, step, cfg.seed * 7 + 1, rank, world)
        xm = data.inputs(meta_set.x[midx], ctx.device)
        ym = meta_set.y[midx].to(ctx.device)
        reduce = reduce_sum if (controller.cfg.granularity == "sample" and controller.cfg.init == "carry") else reduce_mean
        # the meta step runs in full precision (a second-order gradient through a virtual step is not
        # loss-scaled); the real update around it honours `amp`
        with torch.autocast(device_type=ctx.device.type, enabled=False):
            return controller.step(core, train_loss, lambda forward: F.cross_entropy(forward(xm), ym),
                                   lr=scheduler.get_last_lr()[0], step=step, batch_size=len(b.y), rng=b.rng,
                                   sample_ids=b.ids if ids is None else ids, reduce=reduce, device=ctx.device,
                                   dtype=torch.float32)

    max_steps = cfg.max_steps if cfg.max_steps is not None else total_steps
    metrics: dict[str, float] = {}
    for epoch in range(start_epoch, cfg.epochs):
        if step >= max_steps:
            break
        model.train()
        loader = epoch_loader(IndexDataset(len(data.train)), cfg.batch_size, shuffle=True, seed=cfg.seed, epoch=epoch,
                              dist=ctx.dist, num_workers=cfg.num_workers, skip_batches=skip)
        progress = Progress(steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}", start=skip,
                            interval=cfg.log_interval, enabled=ctx.is_main)
        loss_sum, seen = 0.0, 0
        for idx in loader:
            rng, gen = _step_rngs(cfg.seed, step, rank)
            b = Batch(data.inputs(data.train.x[idx], ctx.device, augment, gen), data.train.y[idx].to(ctx.device),
                      idx, rng, gen)
            with ctx.amp.autocast():
                if name in SUPERVISED_METHODS:
                    loss, lam = supervised_loss(method, model, b, num_classes, meta_lam if controller else None)
                else:
                    loss, lam = ssl_loss(cfg, model, teacher, data, b, num_classes, step, rank, world, ctx.device,
                                         augment, meta_lam if controller else None)
            optimizer.zero_grad(set_to_none=True)
            ctx.amp.backward(loss)
            ctx.amp.step(optimizer)
            scheduler.step()
            if teacher is not None:
                ema_update(teacher, core, cfg.ssl.ema_decay, step)
            step += 1
            loss_sum, seen = loss_sum + loss.item() * len(b.y), seen + len(b.y)
            if lam is not None:
                lam = lam.detach().float().cpu().reshape(-1)
                row = {"step": step, "lam_mean": float(lam.mean()), "lam_min": float(lam.min()), "lam_max": float(lam.max())}
                if controller is not None:
                    h = controller.history[-1]
                    row.update(hypergrad=h["hypergrad"], meta_loss=h["meta_loss"])
                lam_log.log(**row)
            progress.update(loss=loss.item(), lr=scheduler.get_last_lr()[0],
                            **({"lam": float(lam.mean())} if lam is not None else {}))
            if step >= max_steps:
                break
        skip = 0
        finished_epoch = step % steps_per_epoch == 0 or step >= total_steps
        epoch_done = epoch + 1 if finished_epoch else epoch
        if (finished_epoch and (epoch_done % cfg.eval_every == 0 or epoch_done == cfg.epochs)) or step >= max_steps:
            metrics = {f"test_{k}": v for k, v in evaluate(model, data, ctx, cfg.eval_batch_size).items()}
            if teacher is not None:
                metrics["test_acc1_teacher"] = evaluate(teacher, data, ctx, cfg.eval_batch_size)["acc1"]
            train_loss = reduce_metrics({"loss": loss_sum}, max(seen, 1), ctx.device)["loss"]
            extra = {"lam": controller.lam} if controller is not None and controller.cfg.init == "carry" \
                and controller.cfg.granularity == "batch" else {}
            ctx.metrics.log(epoch=epoch_done, step=step, train_loss=train_loss, lr=scheduler.get_last_lr()[0],
                            **metrics, **extra)
            log.info("epoch %d step %d: train loss %.4f, test acc@1 %.2f%%%s", epoch_done, step, train_loss,
                     metrics["test_acc1"], f", lam {extra['lam']:.3f}" if extra else "")
        state_extra = {"amp": ctx.amp.state_dict()}
        if controller is not None:
            state_extra["metamixup"] = controller.state_dict()
        if teacher is not None:
            state_extra["teacher"] = teacher.state_dict()
        save_training_state(ctx.run_dir / "last.pt", ctx, model=model, optimizer=optimizer, scheduler=scheduler,
                            step=step, epoch=epoch_done, cfg=cfg, model_args=model_args, **state_extra)

    if not metrics:  # resumed a finished run: just evaluate
        metrics = {f"test_{k}": v for k, v in evaluate(model, data, ctx, cfg.eval_batch_size).items()}
    result = {**metrics, "step": step, "method": name, "model": cfg.model.name, "dataset": data.name,
              "n_train": len(data.train), "n_meta": len(data.meta) if data.meta is not None else 0,
              "n_unlabeled": n_unlab}
    if controller is not None:
        result["final_lam"] = controller.lam if controller.cfg.granularity == "batch" else None
        if ctx.dist.enabled:  # a collective: every rank must keep the same carried ratio
            result["final_lam_ranks"] = all_gather_objects(result["final_lam"])
    if ctx.is_main:
        (ctx.run_dir / "final_metrics.json").write_text(json.dumps(result, indent=2) + "\n")
        plot = plot_lambda(ctx.run_dir)
        lam_note = f" | final lam {result['final_lam']:.3f}" if result.get("final_lam") is not None else ""
        log.info("final: test acc@1 %.2f%% (%s on %s)%s | outputs in %s%s", result["test_acc1"], name, data.name,
                 lam_note, ctx.run_dir, f" (lam trajectory: {plot.name})" if plot else "")
    return result


# ------------------------------------------------------------------------------ semi-supervised step


def ssl_loss(cfg: DictConfig, model: nn.Module, teacher: nn.Module | None, data: DataBundle, b: Batch, num_classes: int,
             step: int, rank: int, world: int, device: torch.device, augment: dict | None,
             lam_fn: Callable | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Supervised cross-entropy on the labelled batch plus ``w(t)`` times the method's unlabelled term."""
    method, s = cfg.method, cfg.ssl
    uidx = stream_indices(len(data.unlabeled), s.unlabeled_batch_size, step, cfg.seed * 7 + 2, rank, world)
    xu_raw = data.unlabeled.x[uidx]
    xu = data.inputs(xu_raw, device, augment, b.gen)
    w = method.weight * sigmoid_rampup(step, int(s.rampup_steps))
    nl = len(b.y)
    if method.name == "pseudo_label":  # Lee (2013): the model's own confident argmax as a hard label
        logits = model(torch.cat([b.x, xu]))
        lx, lu = logits[:nl], logits[nl:]
        probs = torch.softmax(lu.detach().float(), -1)
        conf, hard = probs.max(-1)
        mask = (conf >= method.threshold).to(lu.dtype)
        unsup = (F.cross_entropy(lu, hard, reduction="none") * mask).mean()
        return F.cross_entropy(lx, b.y) + w * unsup, None

    source = teacher if (teacher is not None) else model
    with torch.no_grad():
        if method.name == "ict":  # ICT: the mean teacher's prediction on the same unlabelled view
            pu = torch.softmax(source(xu).float(), -1)
            targets_u, mask_u = pu, torch.ones(len(pu), device=device)
        else:  # refined pseudo-labels: average over views, sharpen, threshold
            views = [xu] + [data.inputs(xu_raw, device, augment, b.gen) for _ in range(int(s.views) - 1)]
            probs = torch.stack([torch.softmax(source(v).float(), -1) for v in views])
            targets_u, mask_u = refine_pseudo_labels(probs, s.temperature, s.threshold, bool(s.hard))
    targets_u, mask_u = targets_u.to(b.x.dtype), mask_u.to(b.x.dtype)

    if method.name == "ict":  # mix unlabelled pairs; MSE to the mixed teacher predictions
        index = pair_index(len(xu), "randperm", b.gen, device)
        lam = torch.tensor(sample_lam(method.alpha, b.rng), dtype=b.x.dtype)
        logits_mix = model(xu, mix=MixAt(0, lam, index))
        sup = F.cross_entropy(model(b.x), b.y)
        return sup + w * consistency_loss(logits_mix, mix(targets_u, lam, index), "mse"), lam

    # pl_mixup / metamixup_ssl: mix across labelled + unlabelled with one-hot / refined pseudo-labels
    x_all = torch.cat([b.x, xu])
    t_all = torch.cat([one_hot(b.y, num_classes, dtype=b.x.dtype), targets_u])
    m_all = torch.cat([torch.ones(nl, dtype=b.x.dtype, device=device), mask_u])
    index = pair_index(len(x_all), "randperm", b.gen, device)
    kind = method.consistency

    def train_loss(forward, lam_):
        logits_mix = forward(x_all, MixAt(0, lam_, index))
        weight = None if kind == "ce" else mix(m_all, lam_, index)
        return F.cross_entropy(forward(b.x), b.y) + w * consistency_loss(logits_mix, mix(t_all, lam_, index), kind, weight)

    if method.name == "pl_mixup":
        lam = torch.tensor(sample_lam(method.alpha, b.rng), dtype=b.x.dtype)
    else:
        ids = torch.cat([b.ids, len(data.train) + uidx])
        lam = lam_fn(train_loss, b, ids)
    return train_loss(lambda x, mix=None: model(x, mix=mix), lam), lam


# ------------------------------------------------------------------------------ plots / entry point


def plot_lambda(run_dir: Path) -> Path | None:
    """``lambda_trajectory.png``: the ratio of every step (mean and min-max band) and the meta loss."""
    import csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = run_dir / "lambda.csv"
    if not path.is_file():
        return None
    rows = list(csv.DictReader(open(path)))
    if not rows:
        return None
    steps = np.array([float(r["step"]) for r in rows])
    mean = np.array([float(r["lam_mean"]) for r in rows])
    lo, hi = np.array([float(r["lam_min"]) for r in rows]), np.array([float(r["lam_max"]) for r in rows])
    has_meta = "meta_loss" in rows[0] and rows[0]["meta_loss"] not in ("", None)
    fig, axes = plt.subplots(1, 2 if has_meta else 1, figsize=(9 if has_meta else 5, 3.2), squeeze=False)
    ax = axes[0, 0]
    if (hi - lo).max() > 0:
        ax.fill_between(steps, lo, hi, alpha=0.25, label="min-max over the batch")
    ax.plot(steps, mean, lw=1, label="lam (mean over the batch)")
    ax.set(xlabel="step", ylabel="lam", ylim=(-0.02, 1.02), title="mixing ratio per step")
    ax.legend(fontsize=7)
    if has_meta:
        ml = np.array([float(r["meta_loss"]) if r["meta_loss"] not in ("", "nan") else np.nan for r in rows])
        axes[0, 1].plot(steps, ml, lw=0.8)
        axes[0, 1].set(xlabel="step", ylabel="meta loss L_meta(theta'(lam))", title="meta loss")
    fig.tight_layout()
    out = run_dir / "lambda_trajectory.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def load_weights(model: nn.Module, path: str) -> None:
    """Initialise the model from a local state dict (``weights=<file>``: a plain state dict, or a training
    checkpoint of this package whose ``model`` entry is one)."""
    from shared.runtime import load_checkpoint

    state = load_checkpoint(Path(str(path)).expanduser())
    state = state.get("model", state) if isinstance(state, dict) else state
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise CheckpointError(f"weights={path} does not fit this model ({first}); pass the state dict of a "
                              f"{type(model).__name__} with the same classes, or weights=null") from None


@hydra_main(config_name="train")
def main(cfg: DictConfig) -> None:
    fit(cfg, hydra_run_dir())


if __name__ == "__main__":
    main()
