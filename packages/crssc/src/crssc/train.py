"""``fit(cfg, out_dir)``: one training run of CRSSC or a baseline, readable top to bottom.

    uv run --package crssc train                                  # embedded default (synthetic web noise, CPU minutes)
    uv run --package crssc train method=ce                        # a baseline through the same fit()
    uv run --package crssc train method=coteaching data.close_noise=0.2
    uv run --package crssc train experiment=web_bird_bcnn         # the paper's recipe (needs the data + weights)
    torchrun --nproc-per-node 2 -m crssc.train device=cpu

Methods (``method=``): ``crssc`` (the paper), ``ce``, ``ls_ce`` (the paper's label smoothing, no selection),
``coteaching`` (Han et al. 2018), ``cl_prune`` (confident learning, prune by noise rate, then CE),
``crssc_cot`` (the official code's co-teaching variant of CRSSC).

The run directory (``runs/crssc/<name>``) receives config.yaml, train.log, metrics.csv (per epoch: losses,
noisy-validation and test accuracy, selection diagnostics), env.json, last.pt (full state, prediction history
included, for ``resume=auto``), best.pt (weights of the epoch with the best *noisy validation* accuracy),
final_metrics.json and curves.png.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from shared.cli import hydra_main
from shared.errors import ConfigError, check_choice, check_range, require
from shared.runtime import (
    Progress,
    all_reduce_sum,
    epoch_loader,
    find_resume,
    hydra_run_dir,
    load_checkpoint,
    reduce_metrics,
    restore_rng,
    save_checkpoint,
    save_training_state,
    start_run,
    to_plain,
    unwrap,
)

from .baselines import coteaching_loss, cot_crssc_loss, forget_rate_schedule, prune_by_noise_rate
from .data import OPEN_SET, build_data
from .method import ALL_CERTAIN_RULES, CERTAINTY_MEASURES, PredictionMemory, crssc_loss, ls_cross_entropy
from .models import SQRT_MODES, TwoNets, create_model, freeze_backbone, head_parameters, list_models, unfreeze

log = logging.getLogger("crssc")

METHODS = ("crssc", "ce", "ls_ce", "coteaching", "cl_prune", "crssc_cot")
TWO_NETS = ("coteaching", "crssc_cot")
SELECTING = ("crssc", "crssc_cot", "coteaching", "cl_prune")


# ------------------------------------------------------------------------------ set-up


def validate(cfg: DictConfig) -> None:
    """Every registry name and value range, before any data or model is built (one-line ConfigError)."""
    check_choice("method.name", cfg.method.name, METHODS)
    check_choice("model.name", cfg.model.name, list_models())
    if "sqrt" in cfg.model:
        check_choice("model.sqrt", cfg.model.sqrt, SQRT_MODES)
    check_choice("optim.name", cfg.optim.name, ("sgd", "adam"))
    check_choice("data.name", cfg.data.name, ("synthetic", "webfg"))
    check_choice("recipe", cfg.recipe, ("one_step", "two_step"))
    check_choice("select_on", cfg.select_on, ("val", "test"))
    for key in ("epochs", "batch_size", "eval_batch_size"):
        check_range(key, cfg[key], 1, integer=True)
    check_range("optim.lr", cfg.optim.lr, 0, lo_inclusive=False)
    check_range("optim.weight_decay", cfg.optim.weight_decay, 0)
    m = cfg.method
    if m.name in ("crssc", "crssc_cot"):
        check_choice("method.certainty", m.certainty, CERTAINTY_MEASURES)
        check_choice("method.all_certain", m.all_certain, ALL_CERTAIN_RULES)
        check_range("method.warmup", m.warmup, 1, integer=True)  # relabelling needs one recorded epoch
        check_range("method.memory_length", m.memory_length, 1, integer=True)
    if m.name in ("crssc", "crssc_cot", "ls_ce"):
        check_range("method.eps", m.eps, 0, 1, hi_inclusive=False)
    if m.name == "crssc_cot":
        check_choice("method.history", m.history, ("separate", "shared_official"))
    if m.name == "coteaching":
        check_range("method.forget_rate", m.forget_rate, 0, 1, hi_inclusive=False, allow_none=True)
        check_range("method.num_gradual", m.num_gradual, 1, integer=True)
        check_range("method.exponent", m.exponent, 0, lo_inclusive=False)
    if m.name == "cl_prune":
        check_range("method.prune_epoch", m.prune_epoch, 0, integer=True)
    if cfg.recipe == "two_step":
        check_range("step1.epochs", cfg.step1.epochs, 1, integer=True)
        check_range("step1.lr", cfg.step1.lr, 0, lo_inclusive=False)
        check_choice("step1.select", cfg.step1.select, ("val_best", "last"))
    w = cfg.weights
    require(w in (None, "imagenet") or Path(str(w)).expanduser().is_file(),
            f"weights={w!r} is neither null, imagenet nor an existing file",
            "pass weights=null (random init), weights=imagenet (torchvision's file in the hub cache) or a path")
    if cfg.data.name == "synthetic":
        d = cfg.data
        check_range("data.close_noise", d.close_noise, 0, 1)
        check_range("data.num_classes", d.num_classes, 2, integer=True)
        check_range("data.open_classes", d.open_classes, 0, integer=True)
        for key in ("n_train", "n_test", "image_size"):
            check_range(f"data.{key}", d[key], 1, integer=True)
        check_range("data.n_val", d.n_val, 0, integer=True)
        require(cfg.select_on != "val" or d.n_val > 0, "select_on=val needs a validation split",
                "set data.n_val > 0, or select_on=test")
    else:
        check_range("data.val_fraction", cfg.data.val_fraction, 0, 1, hi_inclusive=False)
        check_choice("data.test", cfg.data.test, ("cub", "cars", "aircraft", "folder"))
        check_choice("data.class_match", cfg.data.class_match, ("name", "order"))


def build_model(cfg: DictConfig, num_classes: int) -> nn.Module:
    kwargs = {k: v for k, v in cfg.model.items() if k not in ("name", "freeze_typo")}
    kwargs["weights"] = cfg.weights
    if "widths" in kwargs:
        kwargs["widths"] = tuple(kwargs["widths"])
    model = create_model(cfg.model.name, num_classes, **kwargs)
    if cfg.method.name in TWO_NETS:  # a second, differently initialised network
        model = TwoNets(model, create_model(cfg.model.name, num_classes, **kwargs))
    return model


def build_optimizer(optim_cfg: Any, params: list[nn.Parameter], lr: float, weight_decay: float) -> torch.optim.Optimizer:
    if optim_cfg.name == "sgd":  # the official make_optimizer: momentum 0.9, Nesterov
        return torch.optim.SGD(params, lr=lr, momentum=optim_cfg.momentum, nesterov=optim_cfg.nesterov,
                               weight_decay=weight_decay)
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


def phase_plan(cfg: DictConfig) -> list[tuple[str, int]]:
    """``[(kind, epochs)]``: ``head`` (two-step, step 1: only ``fc`` trains, plain warm-up loss) then ``all``."""
    if cfg.recipe == "two_step":
        return [("head", int(cfg.step1.epochs)), ("all", int(cfg.epochs))]
    return [("all", int(cfg.epochs))]


# ------------------------------------------------------------------------------ evaluation


@torch.no_grad()
def evaluate(model: nn.Module, dataset, ctx, batch_size: int, num_workers: int = 0) -> dict[str, float]:
    """Accuracy (%) and CE of network 1 against the dataset's labels (noisy for the validation split)."""
    model.eval()
    sums, count = {"loss": 0.0, "acc": 0.0}, 0
    loader = epoch_loader(dataset, batch_size, shuffle=False, seed=0, dist=ctx.dist, num_workers=num_workers)
    for batch in loader:
        x, y = batch[0].to(ctx.device), batch[1].to(ctx.device)
        logits = model(x).float()
        sums["loss"] += F.cross_entropy(logits, y, reduction="sum").item()
        sums["acc"] += 100.0 * (logits.argmax(1) == y).sum().item()
        count += len(y)
    return reduce_metrics(sums, count, ctx.device)


@torch.no_grad()
def predict_train(model: nn.Module, dataset, ctx, batch_size: int) -> torch.Tensor:
    """Softmax of network 1 on every training sample (evaluation mode), ``(N, C)`` on every rank."""
    model.eval()
    n = len(dataset)
    probs, seen = None, torch.zeros(n, device=ctx.device)
    loader = epoch_loader(dataset, batch_size, shuffle=False, seed=0, dist=ctx.dist)
    for x, _, idx in loader:
        p = F.softmax(model(x.to(ctx.device)).float(), dim=1)
        if probs is None:
            probs = torch.zeros(n, p.shape[1], device=ctx.device)
        idx = idx.to(ctx.device)
        probs.index_add_(0, idx, p)
        seen.index_add_(0, idx, torch.ones_like(idx, dtype=seen.dtype))
    probs, seen = all_reduce_sum(probs), all_reduce_sum(seen)  # padded duplicates are averaged
    return probs / seen[:, None]


def _gather(t: torch.Tensor, ctx) -> torch.Tensor:
    """Concatenate a per-rank tensor over ranks (rank order); identity without DDP."""
    if not ctx.dist.enabled:
        return t
    parts = [torch.empty_like(t) for _ in range(ctx.dist.world_size)]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


# ------------------------------------------------------------------------------ selection diagnostics

DIAG_KEYS = ("n", "clean", "reusable", "dropped", "known", "clean_known", "correct", "clean_correct", "open", "open_reusable", "open_dropped",
             "closenoisy", "closenoisy_reusable", "closenoisy_fixed", "reusable_inset", "reusable_relabel_correct",
             "reusable_label_correct")


def selection_counts(clean: torch.Tensor, reusable: torch.Tensor, dropped: torch.Tensor, labels: torch.Tensor,
                     targets: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Counts (float64, in :data:`DIAG_KEYS` order) of one batch's partition against the true labels
    (``-1`` open-set; ``-2`` unknown: those samples only count in ``n`` / ``clean`` / ``reusable`` / ``dropped``)."""
    known = truth != -2
    open_ = truth == OPEN_SET
    correct = labels == truth
    closenoisy = known & ~open_ & ~correct
    inset_reuse = reusable & known & ~open_
    vals = [torch.ones_like(clean), clean, reusable, dropped, known, clean & known, correct, clean & correct, open_, open_ & reusable,
            open_ & dropped, closenoisy, closenoisy & reusable, closenoisy & reusable & (targets == truth),
            inset_reuse, inset_reuse & (targets == truth), inset_reuse & correct]
    return torch.stack([v.sum() for v in vals]).double()


DIAG_RATES = ("clean_frac", "reusable_frac", "dropped_frac", "noise_free_share", "clean_precision",
              "open_share_dropped", "open_share_reusable", "open_dropped_vs_reused", "relabel_acc",
              "reusable_label_acc", "closenoisy_fixed_share")


def diagnostics(c: dict[str, float]) -> dict[str, float]:
    """Rates of an epoch's summed counts (NaN where undefined)."""
    def ratio(a: float, b: float) -> float:
        return a / b if b else float("nan")

    return {
        "clean_frac": ratio(c["clean"], c["n"]), "reusable_frac": ratio(c["reusable"], c["n"]),
        "dropped_frac": ratio(c["dropped"], c["n"]),
        "noise_free_share": ratio(c["correct"], c["known"]),  # share of correctly labelled samples (base rate)
        "clean_precision": ratio(c["clean_correct"], c["clean_known"]),  # correctly labelled share of the clean set
        "open_share_dropped": ratio(c["open_dropped"], c["dropped"]),
        "open_share_reusable": ratio(c["open_reusable"], c["reusable"]),
        "open_dropped_vs_reused": ratio(c["open_dropped"], c["open_dropped"] + c["open_reusable"]),
        "relabel_acc": ratio(c["reusable_relabel_correct"], c["reusable_inset"]),  # corrected label == truth
        "reusable_label_acc": ratio(c["reusable_label_correct"], c["reusable_inset"]),  # given label == truth
        "closenoisy_fixed_share": ratio(c["closenoisy_fixed"], c["closenoisy"]),
    }


# ------------------------------------------------------------------------------ fit


def fit(cfg: DictConfig, out_dir: str | Path) -> dict[str, Any]:
    validate(cfg)
    ctx = start_run(cfg, out_dir)  # threads, device, seed + rank, amp (the loss and selection stay float32)
    m = cfg.method

    # data -> model -> history
    data = build_data(cfg.data, seed=cfg.seed)
    train_set, num_classes = data.train, data.num_classes
    n_train = len(train_set)
    truth = torch.as_tensor(train_set.truth, device=ctx.device)
    model = build_model(cfg, num_classes).to(ctx.device)
    arch = {k: v for k, v in to_plain(cfg.model).items() if k != "freeze_typo"}
    model_args = {"model": arch, "method": m.name, "num_classes": num_classes, "n_train": n_train,
                  "memory_length": int(m.get("memory_length", 1))}
    mem_len = int(m.get("memory_length", 1))
    memories = [PredictionMemory(n_train, mem_len, ctx.device)]
    if m.name == "crssc_cot" and m.history == "separate":
        memories.append(PredictionMemory(n_train, mem_len, ctx.device))
    cl_keep = torch.ones(n_train, dtype=torch.bool, device=ctx.device)
    forget_rate = None
    if m.name == "coteaching":
        forget_rate = m.forget_rate if m.forget_rate is not None else data.info.get("noise_share")
        if forget_rate is None:
            raise ConfigError("method.forget_rate=null needs data with a known noise share (synthetic); "
                              "set method.forget_rate to the expected noise rate")
    log.info("data %s: %d train / %s val / %d test, %d classes %s", cfg.data.name, n_train,
             len(data.val) if data.val is not None else 0, len(data.test), num_classes, data.info)

    phases = phase_plan(cfg)
    starts = [sum(e for _, e in phases[:i]) for i in range(len(phases))]
    total_epochs = sum(e for _, e in phases)
    world = ctx.dist.world_size
    steps_per_epoch = math.ceil(n_train / (cfg.batch_size * world))

    def phase_of(epoch: int) -> int:
        return max(i for i, s in enumerate(starts) if epoch >= s)

    def setup_phase(p: int):
        """Freeze / unfreeze, and a fresh optimiser and per-epoch cosine schedule for phase ``p``."""
        kind, epochs = phases[p]
        if kind == "head":
            freeze_backbone(model, official_typo=bool(cfg.model.get("freeze_typo", False)))
            opt = build_optimizer(cfg.optim, head_parameters(model), cfg.step1.lr, cfg.step1.weight_decay)
        else:
            unfreeze(model)
            opt = build_optimizer(cfg.optim, list(model.parameters()), cfg.optim.lr, cfg.optim.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs, eta_min=0.0)
        return opt, sched

    # resume (the phase decides which parameters the saved optimiser state belongs to)
    ckpt_path = find_resume(cfg.resume, ctx.run_dir)
    ckpt = load_checkpoint(ckpt_path, expect=to_plain(model_args)) if ckpt_path else None
    phase = ckpt["phase"] if ckpt else 0
    optimizer, scheduler = setup_phase(phase)
    sel = {"best_val": -1.0, "best_epoch": 0, "test_at_best": float("nan"), "best_test": -1.0, "best_test_epoch": 0}
    if ckpt:
        unwrap(model).load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        for mem, state in zip(memories, ckpt["memories"]):
            mem.load_state_dict(state)
        cl_keep = ckpt["cl_keep"].to(ctx.device)
        sel = dict(ckpt["selection"])
        ctx.amp.load_state_dict(ckpt.get("amp"))
        restore_rng(ckpt)  # this rank's own stream
        ctx.metrics.truncate_after("step", ckpt["step"])
        log.info("resumed from %s at epoch %d, step %d (phase %d)", ckpt_path, ckpt["epoch"], ckpt["step"], phase)
    step = ckpt["step"] if ckpt else 0
    start_epoch = ckpt["epoch"] if ckpt else 0
    skip = step - start_epoch * steps_per_epoch  # batches of start_epoch already consumed

    def wrap():
        if ctx.dist.enabled:
            ids = [ctx.device.index] if ctx.device.type == "cuda" else None
            return nn.parallel.DistributedDataParallel(unwrap(model), device_ids=ids)
        return model

    model_ddp = wrap()
    max_steps = cfg.max_steps if cfg.max_steps is not None else total_epochs * steps_per_epoch
    metrics: dict[str, float] = {}
    history: list[dict[str, float]] = []

    for epoch in range(start_epoch, total_epochs):
        if step >= max_steps:
            break
        if phase_of(epoch) != phase:  # two-step: step 1 -> step 2
            phase = phase_of(epoch)
            if cfg.step1.select == "val_best" and (ctx.run_dir / "step1_best.pt").is_file():
                best = load_checkpoint(ctx.run_dir / "step1_best.pt", map_location=ctx.device)
                unwrap(model).load_state_dict(best["model"])
            optimizer, scheduler = setup_phase(phase)
            memories = [PredictionMemory(n_train, mem_len, ctx.device) for _ in memories]  # a fresh history
            sel = {"best_val": -1.0, "best_epoch": 0, "test_at_best": float("nan"), "best_test": -1.0, "best_test_epoch": 0}
            model_ddp = wrap()
            log.info("two-step recipe: step 2 (all layers) starts from the step-1 weights (%s)", cfg.step1.select)
        kind, _ = phases[phase]
        pe = epoch - starts[phase]  # epoch within the phase: the warm-up and schedules count from here
        warmup = math.inf if kind == "head" else m.get("warmup", 0)  # step 1: T_k = epochs (plain loss)

        if m.name == "cl_prune" and kind == "all" and pe == m.prune_epoch and skip == 0:
            probs = predict_train(model, train_set, ctx, cfg.eval_batch_size)
            issues = prune_by_noise_rate(train_set.labels, probs.cpu().numpy())
            cl_keep = torch.as_tensor(~issues, device=ctx.device)
            log.info("confident learning: %d of %d training labels flagged and pruned", int(issues.sum()), n_train)

        model_ddp.train()
        loader = epoch_loader(train_set, cfg.batch_size, shuffle=True, seed=cfg.seed, epoch=epoch, dist=ctx.dist,
                              num_workers=cfg.num_workers, skip_batches=skip)
        progress = Progress(steps_per_epoch, desc=f"epoch {epoch + 1}/{total_epochs}", start=skip,
                            interval=cfg.log_interval_s, enabled=ctx.is_main)
        counts = torch.zeros(len(DIAG_KEYS), dtype=torch.float64, device=ctx.device)
        loss_sum, seen = 0.0, 0
        for x, y, idx in loader:
            x, y, idx = x.to(ctx.device), y.to(ctx.device), idx.to(ctx.device)
            with ctx.amp.autocast():
                out = model_ddp(x, both=True) if m.name in TWO_NETS else model_ddp(x)
            part = None
            if m.name == "crssc":
                res = crssc_loss(out, y, idx, memories[0], epoch=pe, warmup=warmup, eps=m.eps,
                                 certainty=m.certainty, all_certain=m.all_certain)
                loss, part, targets = res.loss, res.partition, res.targets
                record = [(memories[0], out)]
            elif m.name == "crssc_cot":
                mem2 = memories[-1]
                res = cot_crssc_loss(out[0], out[1], y, idx, memories[0], mem2, epoch=pe, warmup=warmup, eps=m.eps,
                                     certainty=m.certainty, all_certain=m.all_certain)
                loss, part, targets = res.loss, res.partition1, res.targets2
                record = [(memories[0], out[0]), (mem2, out[1])]  # shared_official: both into one memory
            elif m.name == "coteaching":
                rate = 0.0 if kind == "head" else forget_rate_schedule(pe, forget_rate, m.num_gradual, m.exponent)
                res = coteaching_loss(out[0], out[1], y, rate)
                loss, targets, record = res.loss, y, []
                part = _as_partition(res.keep1)
            elif m.name == "cl_prune":
                keep = cl_keep[idx]
                losses = F.cross_entropy(out.float(), y, reduction="none")
                loss = torch.where(keep, losses, 0.0).sum() / keep.sum().clamp(min=1)
                targets, record = y, []
                part = _as_partition(keep)
            elif m.name == "ls_ce":
                loss, targets, record = ls_cross_entropy(out, y, m.eps, "mean"), y, []
            else:
                loss, targets, record = F.cross_entropy(out.float(), y), y, []
            optimizer.zero_grad(set_to_none=True)
            ctx.amp.backward(loss)
            ctx.amp.step(optimizer)
            # history: after the loss (the current prediction never relabels itself), gathered over ranks
            gidx = _gather(idx, ctx)
            for mem, logits in record:
                mem.update(gidx, F.softmax(_gather(logits.detach().float(), ctx), dim=1))
            if part is not None and not (m.name in ("crssc", "crssc_cot") and pe < warmup):
                counts += selection_counts(part.clean, part.reusable, part.dropped, y, targets, truth[idx])
            step += 1
            loss_sum, seen = loss_sum + loss.item() * len(y), seen + len(y)
            progress.update(loss=loss.item())
            if step >= max_steps:
                break
        skip = 0
        finished = step % steps_per_epoch == 0 or step >= total_epochs * steps_per_epoch
        epoch_done = epoch + 1 if finished else epoch
        if finished:
            scheduler.step()

        # evaluate: noisy validation (model selection) and clean test (reported, never selected on)
        val = evaluate(model, data.val, ctx, cfg.eval_batch_size) if data.val is not None else {"acc": float("nan")}
        test = evaluate(model, data.test, ctx, cfg.eval_batch_size)
        train_loss = reduce_metrics({"loss": loss_sum}, seen, ctx.device)["loss"]
        c = dict(zip(DIAG_KEYS, all_reduce_sum(counts).tolist()))
        diag = diagnostics(c) if c["n"] else {}
        crit = val["acc"] if cfg.select_on == "val" else test["acc"]
        if crit > sel["best_val"]:
            sel.update(best_val=crit, best_epoch=epoch_done, test_at_best=test["acc"])
            if ctx.is_main:
                save_checkpoint({"model": unwrap(model).state_dict(), "epoch": epoch_done, "model_args": model_args},
                                ctx.run_dir / ("step1_best.pt" if kind == "head" else "best.pt"))
        if test["acc"] > sel["best_test"]:
            sel.update(best_test=test["acc"], best_test_epoch=epoch_done)
        metrics = {"epoch": epoch_done, "step": step, "phase": kind, "train_loss": train_loss,
                   "lr": optimizer.param_groups[0]["lr"], "val_acc": val["acc"], "test_acc": test["acc"], **diag}
        history.append(metrics)
        ctx.metrics.log(**metrics)
        log.info("epoch %d (%s) step %d: loss %.4f | noisy-val acc %.2f%% | test acc %.2f%%%s", epoch_done, kind, step,
                 train_loss, val["acc"], test["acc"],
                 "" if not diag else " | clean %.2f reusable %.2f dropped %.2f, clean precision %.3f (base %.3f)" % (
                     diag["clean_frac"], diag["reusable_frac"], diag["dropped_frac"], diag["clean_precision"],
                     diag["noise_free_share"]))
        save_training_state(ctx.run_dir / "last.pt", ctx, model=model, optimizer=optimizer, scheduler=scheduler,
                            step=step, epoch=epoch_done, cfg=cfg, model_args=model_args, phase=phase,
                            memories=[mem.state_dict() for mem in memories], cl_keep=cl_keep.cpu(), selection=sel,
                            amp=ctx.amp.state_dict())

    if not metrics:  # resumed a finished run: evaluate what is there
        test = evaluate(model, data.test, ctx, cfg.eval_batch_size)
        metrics = {"test_acc": test["acc"]}
    result = {
        "method": m.name, "model": cfg.model.name, "step": step, "epochs": total_epochs,
        "test_acc_last": metrics["test_acc"],
        "test_acc_selected": sel["test_at_best"], "selected_epoch": sel["best_epoch"],
        "selected_on": cfg.select_on, "val_acc_selected": sel["best_val"],
        "test_acc_oracle": sel["best_test"], "oracle_epoch": sel["best_test_epoch"],
        "data": data.info,
        "selection_last_epoch": {k: v for k, v in metrics.items() if k in DIAG_RATES},
    }
    if ctx.is_main:
        (ctx.run_dir / "final_metrics.json").write_text(json.dumps(result, indent=2) + "\n")
        _plot_curves(ctx.run_dir)
        log.info("final: test acc %.2f%% (last epoch) | %.2f%% at epoch %d (best noisy-val) | oracle %.2f%% at epoch %d "
                 "(best test: the official protocol, for reference only) | run dir %s", result["test_acc_last"],
                 result["test_acc_selected"], result["selected_epoch"], result["test_acc_oracle"],
                 result["oracle_epoch"], ctx.run_dir)
    result["curve"] = history  # this call's epochs (not in final_metrics.json: metrics.csv holds every epoch)
    return result


def _as_partition(keep: torch.Tensor):
    """A kept-samples mask as a partition (kept = clean, the rest dropped) for the diagnostics."""
    from .method import Partition

    return Partition(clean=keep, reusable=torch.zeros_like(keep), dropped=~keep, threshold=torch.tensor(float("nan")))


def _plot_curves(run_dir: Path) -> None:
    import csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = run_dir / "metrics.csv"
    if not path.is_file():
        return
    rows = list(csv.DictReader(open(path)))
    if not rows:
        return

    def col(key):
        return [float(r[key]) if r.get(key) not in (None, "") else float("nan") for r in rows]

    epochs = col("epoch")
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))
    ax[0].plot(epochs, col("test_acc"), marker="o", ms=3, label="test (clean)")
    ax[0].plot(epochs, col("val_acc"), marker="o", ms=3, label="validation (noisy labels)")
    ax[0].set(xlabel="epoch", ylabel="accuracy (%)")
    ax[0].legend(fontsize=7)
    keys = [k for k in ("clean_precision", "noise_free_share", "relabel_acc", "open_dropped_vs_reused") if k in rows[0]]
    for key in keys:
        ax[1].plot(epochs, col(key), marker=".", label=key)
    ax[1].set(xlabel="epoch", ylabel="rate (selection diagnostics)", ylim=(0, 1.02))
    if keys:
        ax[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(run_dir / "curves.png", dpi=100)
    plt.close(fig)


@hydra_main(config_name="train")
def main(cfg: DictConfig) -> None:
    fit(cfg, hydra_run_dir())


if __name__ == "__main__":
    main()
