"""``fit(cfg, out_dir)``: a DADA policy search followed by a training run with the found policy,
readable top to bottom.

    uv run --package dada train                              # embedded default (synthetic, a few CPU minutes)
    uv run --package dada train policy=dada_cifar10 search.enabled=false   # a published policy, no search
    uv run --package dada train experiment=search_reduced_cifar10_wrn_40_2
    torchrun --nproc-per-node 2 -m dada.train device=cpu

Phase 1 (``search.enabled``): the bi-level search (:mod:`dada.search`) on the search train half,
validated on the other half; writes ``policy.json`` (the top-k genotype) and ``search.csv``.
Phase 2 (``train.epochs > 0``): trains ``model`` from scratch on the training set with ``policy``
(``searched`` = phase 1's result, or a preset / baseline) and evaluates on the test set.

The run directory receives config.yaml, train.log, metrics.csv, env.json, last.pt (resumable in
either phase), policy.json, final_metrics.json.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn
from torchvision.transforms import v2

from shared.cli import hydra_main
from shared.errors import CheckpointError, ConfigError, check_choice, check_range, require
from shared.metrics import topk_accuracy
from shared.runtime import Progress, epoch_loader, hydra_run_dir, reduce_metrics, save_training_state, start_run
from shared.runtime.checkpoint import find_resume, load_checkpoint
from shared.runtime.run import restore_rng

from .data import DataBundle, build_data, cutout_default, lighting, random_crop_flip
from .models import create_model, list_models
from .policy import SUBPOLICIES, Policy, apply_policy, apply_slots, preset, random_policy
from .search import ESTIMATORS, PARAMETRISATIONS, AugmentParameters, SearchConfig, SearchStep, draw_noise

log = logging.getLogger("dada")

BASELINE_POLICIES = ("none", "searched", "random", "dada_cifar10", "dada_cifar100", "dada_svhn", "dada_imagenet",
                     "autoaugment_cifar10", "autoaugment_svhn", "autoaugment_imagenet", "randaugment", "trivialaugment")


def step_generator(seed: int, phase: int, step: int, rank: int = 0) -> torch.Generator:
    """All augmentation randomness of one step comes from a generator keyed by (seed, phase,
    step, rank), so a resumed run draws exactly what an uninterrupted one would."""
    return torch.Generator().manual_seed(((seed * 1_000_003 + phase) * 1_000_033 + step) * 101 + rank)


def postprocess(x: torch.Tensor, data: DataBundle, cutout: int, gen: torch.Generator, train: bool = True) -> torch.Tensor:
    """uint8 -> [0, 1] -> (training on ImageNet: PCA lighting) -> Normalize -> Cutout (after normalisation)."""
    x = x.float().div_(255.0)
    if train:
        x = lighting(x, data.lighting, gen)
    mean = torch.tensor(data.mean, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(data.std, device=x.device).view(1, -1, 1, 1)
    return cutout_default((x - mean) / std, cutout, gen)


def preprocess(x: torch.Tensor, data: DataBundle, gen: torch.Generator) -> torch.Tensor:
    return random_crop_flip(x, 4, gen) if data.pre == "crop_flip" else x


# ------------------------------------------------------------------------------ policies


def resolve_policy(name: str, searched: Policy | None, seed: int, run_dir: str | Path = "."):
    """A :class:`Policy` (batched) or a torchvision transform (per image) or None."""
    if name == "none":
        return None
    if name == "searched":
        if searched is None and os.path.isfile(os.path.join(run_dir, "policy.json")):
            return Policy.load(os.path.join(run_dir, "policy.json"))
        if searched is None:
            raise ConfigError("policy=searched needs a search (search.enabled=false was set); set search.enabled=true, "
                              "or policy=<a policy .json> / a preset such as dada_cifar10")
        return searched
    if name == "random":
        return random_policy(25, torch.Generator().manual_seed(seed + 7919))
    if name.startswith("dada_"):
        return preset(name[len("dada_"):])
    if name.startswith("autoaugment_"):
        which = {"cifar10": v2.AutoAugmentPolicy.CIFAR10, "svhn": v2.AutoAugmentPolicy.SVHN,
                 "imagenet": v2.AutoAugmentPolicy.IMAGENET}[name[len("autoaugment_"):]]
        return v2.AutoAugment(which)
    if name == "randaugment":
        return v2.RandAugment(num_ops=2, magnitude=9)
    if name == "trivialaugment":
        return v2.TrivialAugmentWide()
    if os.path.isfile(name):
        return Policy.load(name)
    raise ConfigError(f"unknown policy {name!r}; use one of {', '.join(BASELINE_POLICIES)} or a policy .json file")


def augment(x: torch.Tensor, policy, gen: torch.Generator) -> torch.Tensor:
    if policy is None:
        return x
    if isinstance(policy, Policy):
        return apply_policy(x, policy, gen)
    # a torchvision per-image transform (the baseline DADA's batched policy is compared against)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(2**62, (1,), generator=gen)))
        return torch.stack([policy(img) for img in x.cpu()]).to(x.device)


# -------------------------------------------------------------------------- optimisation


def warmup_cosine(optimizer, total_steps: int, warmup_steps: int, multiplier: float, schedule: str,
                  steps_per_epoch: int, min_factor: float = 0.0):
    """Fast AutoAugment's schedule: GradualWarmup (linear to ``multiplier`` x base over
    ``warmup_steps``) then cosine to ``min_factor`` x base (or the "resnet" step schedule:
    /10 at 30/60/80 of 90 epochs, scaled to the run length)."""

    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return 1.0 + (multiplier - 1.0) * step / warmup_steps
        t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        if schedule == "cosine":
            return min_factor + (multiplier - min_factor) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
        if schedule == "resnet":
            return multiplier * 0.1 ** sum(t >= b for b in (1 / 3, 2 / 3, 8 / 9))
        raise ValueError(f"unknown schedule {schedule!r}; expected cosine or resnet")

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@torch.no_grad()
def evaluate(model: nn.Module, dataset, data: DataBundle, ctx, batch_size: int, num_workers: int = 0) -> dict[str, float]:
    model.eval()
    sums, count = {"loss": 0.0, "acc1": 0.0, "acc5": 0.0}, 0
    for x, y in epoch_loader(dataset, batch_size, shuffle=False, seed=0, dist=ctx.dist, num_workers=num_workers):
        x, y = x.to(ctx.device), y.to(ctx.device)
        logits = model(postprocess(x, data, 0, torch.Generator(), train=False))
        acc1, acc5 = topk_accuracy(logits, y, (1, 5))
        sums["loss"] += nn.functional.cross_entropy(logits, y, reduction="sum").item()
        sums["acc1"] += acc1 * len(y)
        sums["acc5"] += acc5 * len(y)
        count += len(y)
    return reduce_metrics(sums, count, ctx.device)


def _all_reduce_mean(ctx):
    if not ctx.dist.enabled:
        return None
    import torch.distributed as dist

    def reduce(tensors):
        for t in tensors:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
            t.div_(ctx.dist.world_size)
    return reduce


def validate_config(cfg: DictConfig) -> None:
    """Registry names and value ranges, before any data or model is built (one-line ConfigErrors)."""
    s = cfg.search
    check_choice("model.name", cfg.model.name, list_models())
    check_choice("search.model", s.model, list_models())
    check_choice("search.estimator", s.estimator, list(ESTIMATORS))
    check_choice("search.parametrisation", s.parametrisation, list(PARAMETRISATIONS))
    check_choice("train.schedule", cfg.train.schedule, ["cosine", "resnet"])
    from .data import DATASETS

    check_choice("data.name", cfg.data.name, list(DATASETS))
    if str(cfg.policy) not in BASELINE_POLICIES and not os.path.isfile(str(cfg.policy)):
        check_choice("policy", str(cfg.policy), list(BASELINE_POLICIES) + ["<a policy .json file>"])
    check_range("search.tau", s.tau, 0.0, lo_inclusive=False)
    check_range("search.epochs", s.epochs, 0, integer=True)
    check_range("train.epochs", cfg.train.epochs, 0, integer=True)
    check_range("search.batch_size", s.batch_size, 1, integer=True)
    check_range("train.batch_size", cfg.train.batch_size, 1, integer=True)
    check_range("search.top_k", s.top_k, 1, len(SUBPOLICIES), integer=True)
    check_range("search.lr", s.lr, 0.0)
    check_range("search.arch_lr", s.arch_lr, 0.0)
    check_range("train.lr", cfg.train.lr, 0.0)
    check_range("search.hvp_r", s.hvp_r, 0.0, lo_inclusive=False)


# ------------------------------------------------------------------------------------ fit


def fit(cfg: DictConfig, out_dir: str | Path) -> dict[str, Any]:
    validate_config(cfg)
    amp_ok = True if not cfg.search.enabled else "the DADA search runs in float32 (finite-difference second-order step)"
    ctx = start_run(cfg, out_dir, amp_supported=amp_ok)
    t_start = time.perf_counter()
    data = build_data(cfg.data, seed=cfg.seed)
    log.info("data %s: search %d/%d (train/val), train %d, test %d, %d classes", data.info.get("data"),
             len(data.search_train), len(data.search_val), len(data.train), len(data.test), data.num_classes)

    path = find_resume(cfg.resume, ctx.run_dir)
    ckpt = load_checkpoint(path, map_location="cpu") if path else None
    result: dict[str, Any] = {}
    step_budget = [cfg.max_steps if cfg.max_steps is not None else math.inf]

    searched: Policy | None = None
    policy_path = ctx.run_dir / "policy.json"
    if cfg.search.enabled:
        if ckpt is not None and ckpt.get("phase") == "train" and policy_path.is_file():
            searched = Policy.load(policy_path)
            result["search_steps"] = ckpt["search_steps"]
        else:
            searched, search_metrics = run_search(cfg, ctx, data, ckpt, step_budget)
            result.update(search_metrics)
            if searched is None:  # stopped by max_steps inside the search
                return {**result, "phase": "search"}
            ckpt = None
        step_budget[0] -= result.get("search_steps", 0)  # max_steps counts search + training steps
    train_ckpt = ckpt if (ckpt and ckpt.get("phase") == "train") else None
    search_steps = train_ckpt["search_steps"] if train_ckpt else result.get("search_steps", 0)
    train_metrics = run_training(cfg, ctx, data, searched, train_ckpt, step_budget, search_steps)
    result.update(train_metrics)
    result["wall_seconds"] = time.perf_counter() - t_start
    if ctx.is_main:
        (ctx.run_dir / "final_metrics.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
        log.info("final: %s | run dir %s", {k: (round(v, 3) if isinstance(v, float) else v) for k, v in result.items()
                                             if k.startswith(("test_", "search_")) and k != "search_weights"}, ctx.run_dir)
        print(f"outputs in {ctx.run_dir} (policy.json, metrics.csv, final_metrics.json, train.log)")
    return result


def run_search(cfg, ctx, data: DataBundle, ckpt, step_budget) -> tuple[Policy | None, dict]:
    s = cfg.search
    subpolicies = list(SUBPOLICIES)
    if s.official_unseeded_shuffle:  # official train_search_paper.py: random.sample(...) before seeding
        perm = torch.randperm(len(subpolicies), generator=torch.Generator().manual_seed(int.from_bytes(os.urandom(8), "little") % 2**63))
        subpolicies = [subpolicies[i] for i in perm.tolist()]
    if ckpt is not None and ckpt.get("subpolicies"):
        subpolicies = [tuple(sp) for sp in ckpt["subpolicies"]]
    model = seeded_model(s.model, data.num_classes, cfg.seed, 1).to(ctx.device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed * 7 + 5)
        aug = AugmentParameters(subpolicies, parametrisation=s.parametrisation).to(ctx.device)
    net_opt = torch.optim.SGD(model.parameters(), lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay)
    arch_opt = torch.optim.Adam(aug.parameters(), lr=s.arch_lr, betas=tuple(s.arch_betas), weight_decay=s.arch_weight_decay)
    world = ctx.dist.world_size
    steps_per_epoch = math.ceil(len(data.search_train) / (s.batch_size * world))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(net_opt, T_max=max(1, s.epochs * steps_per_epoch), eta_min=s.lr_min)
    scfg = SearchConfig(tau=s.tau, momentum=s.momentum, weight_decay=s.weight_decay, grad_clip=s.grad_clip, hvp_r=s.hvp_r,
                        estimator=s.estimator, official_drop_xi=s.official_drop_xi,
                        official_cv_finite_difference=s.official_cv_finite_difference,
                        official_logprob_broadcast=s.official_logprob_broadcast)
    stepper = SearchStep(model, aug, net_opt, arch_opt, scfg, all_reduce=_all_reduce_mean(ctx))
    model_args = {"phase": "search", "arch": s.model, "num_classes": data.num_classes}
    step, start_epoch = 0, 0
    if ckpt is not None and ckpt.get("phase") == "search":
        if ckpt["model_args"].get("arch") != s.model:
            raise CheckpointError(f"resume: the checkpoint in {ctx.run_dir} searched with {ckpt['model_args'].get('arch')!r} but this "
                                  f"run with {s.model!r}; use another run directory (name=...) or resume=null")
        model.load_state_dict(ckpt["model"])
        aug.load_state_dict(ckpt["aug"])
        net_opt.load_state_dict(ckpt["optimizer"])
        arch_opt.load_state_dict(ckpt["arch_optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        step, start_epoch = ckpt["step"], ckpt["epoch"]
        restore_rng(ckpt)
        log.info("resumed from %s (search phase) at epoch %d, step %d", ctx.run_dir / "last.pt", start_epoch, step)
    skip = step - start_epoch * steps_per_epoch
    val = data.search_val
    last_loss = float("nan")
    total = s.epochs * steps_per_epoch
    for epoch in range(start_epoch, s.epochs):
        model.train()
        loader = epoch_loader(data.search_train, s.batch_size, shuffle=True, seed=cfg.seed, epoch=epoch, dist=ctx.dist,
                              num_workers=cfg.num_workers, skip_batches=skip)
        progress = Progress(steps_per_epoch, desc=f"search {epoch + 1}/{s.epochs}", start=skip,
                            interval=cfg.log_interval, enabled=ctx.is_main)
        for x, y in loader:
            if step >= step_budget[0]:
                break
            gen = step_generator(cfg.seed, 1, step, ctx.dist.rank)
            noise = draw_noise(len(subpolicies), 2, step_generator(cfg.seed, 2, step), ctx.device)
            rel = stepper.relaxation(noise)
            x, y = x.to(ctx.device), y.to(ctx.device)
            x_aug = postprocess(search_augment(preprocess(x, data, gen), rel, aug, subpolicies, gen), data, s.cutout, gen)
            vg = step_generator(cfg.seed, 3, 0 if s.official_fixed_val_batch else step, ctx.dist.rank)
            vidx = (torch.arange(min(s.batch_size, len(val))) if s.official_fixed_val_batch
                    else torch.randint(len(val), (min(s.batch_size, len(val)),), generator=vg))
            xv, yv = gather(val, vidx)
            xv = postprocess(xv.to(ctx.device), data, 0, vg, train=False)
            xi = sched.get_last_lr()[0]
            stats = stepper(x_aug, y, xv, yv.to(ctx.device), noise, xi)
            sched.step()
            step += 1
            progress.update(loss=stats["loss"], k=stats["k"], lr=xi)
            last_loss = stats["loss"]
        skip = 0
        done = step >= (epoch + 1) * steps_per_epoch or step >= total
        epoch_done = epoch + 1 if done else epoch
        save_training_state(ctx.run_dir / "last.pt", ctx, model=model, optimizer=net_opt, scheduler=sched, step=step,
                            epoch=epoch_done, cfg=cfg, model_args=model_args, phase="search",
                            aug=aug.state_dict(), arch_optimizer=arch_opt.state_dict(),
                            subpolicies=[list(sp) for sp in subpolicies])
        if ctx.is_main:
            w = aug.weight_probabilities()
            ctx.metrics.log(phase="search", epoch=epoch_done, step=step, search_loss=last_loss,
                            weight_entropy=float(-(w * w.log()).sum()), top_weight=float(w.max()))
        if step >= step_budget[0] and step < total:
            return None, {"search_steps": step}
    policy = aug.genotype(s.top_k)
    if ctx.is_main:
        policy.save(ctx.run_dir / "policy.json")
        log.info("found policy (top %d of %d sub-policies by softmax(beta)):\n%s", s.top_k, len(subpolicies), policy.describe())
    search_val_metrics = evaluate(model, data.search_val, data, ctx, cfg.train.eval_batch_size, cfg.num_workers)
    position = {tuple(sp): i for i, sp in enumerate(subpolicies)}
    weights = aug.weights.detach().cpu().tolist()
    return policy, {"search_steps": step, "search_val_acc1": search_val_metrics["acc1"],
                    "search_top_weight": float(aug.weight_probabilities().max()),
                    "search_weights": [weights[position[sp]] for sp in SUBPOLICIES]}  # canonical sub-policy order


def search_augment(x: torch.Tensor, rel, aug: AugmentParameters, subpolicies, gen: torch.Generator) -> torch.Tensor:
    """The search batch: the drawn sub-policy ``rel.k`` with the drawn on/off pattern ``rel.b[k]`` on every
    image (one draw per mini-batch), at levels ``clamp(m_k)`` (per-image signs and Cutout boxes)."""
    n = len(x)
    op_ids = torch.tensor([[aug_index(op) for op in subpolicies[rel.k]]] * n)
    applied = (rel.b[rel.k] > 0).cpu().expand(n, -1)
    levels = aug.levels()[rel.k].detach().double().cpu().expand(n, -1)
    return apply_slots(x, op_ids, applied, levels, gen)


def seeded_model(name: str, num_classes: int, seed: int, phase: int) -> nn.Module:
    """The network's initialisation depends only on (seed, phase), not on what ran before it
    (so the search and the training start from the same weights after a resume)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed * 1009 + phase)
        return create_model(name, num_classes)


def gather(dataset, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch by index: tensor indexing for in-memory sets, per-item loading for image folders."""
    if hasattr(dataset, "images"):
        return dataset.images[idx], dataset.labels[idx]
    items = [dataset[i] for i in idx.tolist()]
    return torch.stack([x for x, _ in items]), torch.tensor([int(y) for _, y in items])


def aug_index(op: str) -> int:
    from .ops import OP_INDEX

    return OP_INDEX[op]


def run_training(cfg, ctx, data: DataBundle, searched: Policy | None, ckpt, step_budget, search_steps: int = 0) -> dict:
    t = cfg.train
    if t.epochs == 0:
        return {}
    policy = resolve_policy(str(cfg.policy), searched, cfg.seed, ctx.run_dir)
    model = seeded_model(cfg.model.name, data.num_classes, cfg.seed, 2).to(ctx.device)
    optimizer = torch.optim.SGD(model.parameters(), lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay,
                                nesterov=t.nesterov)
    world = ctx.dist.world_size
    steps_per_epoch = math.ceil(len(data.train) / (t.batch_size * world))
    total = t.epochs * steps_per_epoch
    scheduler = warmup_cosine(optimizer, total, t.warmup_epochs * steps_per_epoch, t.warmup_multiplier, t.schedule,
                              steps_per_epoch)
    model_args = {"phase": "train", "arch": cfg.model.name, "num_classes": data.num_classes, "policy": str(cfg.policy)}
    step, start_epoch = 0, 0
    if ckpt is not None:
        for key in ("arch", "num_classes", "policy"):
            if ckpt["model_args"].get(key) != model_args[key]:
                raise CheckpointError(f"resume: the checkpoint in {ctx.run_dir} has {key}={ckpt['model_args'].get(key)!r} but this "
                                      f"run has {key}={model_args[key]!r}; use another run directory (name=...) or resume=null")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        step, start_epoch = ckpt["step"], ckpt["epoch"]
        restore_rng(ckpt)
        log.info("resumed from %s (training phase) at epoch %d, step %d", ctx.run_dir / "last.pt", start_epoch, step)
    skip = step - start_epoch * steps_per_epoch
    ddp_model = model
    if ctx.dist.enabled:
        ddp_model = nn.parallel.DistributedDataParallel(model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
    metrics: dict[str, float] = {}
    for epoch in range(start_epoch, t.epochs):
        if step >= step_budget[0]:
            break
        ddp_model.train()
        loader = epoch_loader(data.train, t.batch_size, shuffle=True, seed=cfg.seed, epoch=epoch, dist=ctx.dist,
                              num_workers=cfg.num_workers, skip_batches=skip)
        progress = Progress(steps_per_epoch, desc=f"train {epoch + 1}/{t.epochs}", start=skip, interval=cfg.log_interval,
                            enabled=ctx.is_main)
        loss_sum, seen = 0.0, 0
        for x, y in loader:
            gen = step_generator(cfg.seed, 4, step, ctx.dist.rank)
            x, y = x.to(ctx.device), y.to(ctx.device)
            x = postprocess(augment(preprocess(x, data, gen), policy, gen), data, t.cutout, gen)
            with ctx.amp.autocast():
                loss = nn.functional.cross_entropy(ddp_model(x), y, label_smoothing=t.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            ctx.amp.backward(loss)
            if t.grad_clip:
                ctx.amp.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
            ctx.amp.step(optimizer)
            scheduler.step()
            step += 1
            loss_sum, seen = loss_sum + loss.item() * len(y), seen + len(y)
            progress.update(loss=loss.item(), lr=scheduler.get_last_lr()[0])
            if step >= step_budget[0]:
                break
        skip = 0
        finished = step % steps_per_epoch == 0 or step >= total
        epoch_done = epoch + 1 if finished else epoch
        if (finished and (epoch_done % t.eval_every == 0 or epoch_done == t.epochs)) or step >= step_budget[0]:
            metrics = {f"test_{k}": v for k, v in evaluate(model, data.test, data, ctx, t.eval_batch_size, cfg.num_workers).items()}
            train_loss = reduce_metrics({"loss": loss_sum}, max(seen, 1), ctx.device)["loss"]
            ctx.metrics.log(phase="train", epoch=epoch_done, step=step, train_loss=train_loss, **metrics)
            log.info("epoch %d step %d: train loss %.4f, test acc@1 %.2f%%", epoch_done, step, train_loss, metrics["test_acc1"])
        save_training_state(ctx.run_dir / "last.pt", ctx, model=model, optimizer=optimizer, scheduler=scheduler, step=step,
                            epoch=epoch_done, cfg=cfg, model_args=model_args, phase="train", search_steps=search_steps)
    if not metrics:
        metrics = {f"test_{k}": v for k, v in evaluate(model, data.test, data, ctx, t.eval_batch_size, cfg.num_workers).items()}
    return {**metrics, "train_steps": step, "policy": str(cfg.policy)}


@hydra_main(config_name="train")
def main(cfg: DictConfig) -> None:
    fit(cfg, hydra_run_dir())


if __name__ == "__main__":
    main()
