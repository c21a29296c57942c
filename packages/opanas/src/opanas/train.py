"""``fit(cfg, out_dir)``: the OPANAS pipeline, readable top to bottom.

``mode=search`` (the embedded default):
  1. super-net training: a detector whose neck holds all six paths on every edge; each step samples
     one path per edge uniformly (SPOS) and trains that sub-net's weights;
  2. evolutionary search: fitness = COCO box mAP (pycocotools) on the held-out ``search`` split,
     each candidate evaluated with the super-net's weights (no retraining, no BN recalibration:
     the neck has no BN and the backbone's BN does not depend on the architecture);
  3. retraining: the best architecture's detector is trained from scratch (no super-net weights)
     and evaluated on ``val``.
``mode=train``: step 3 only, for ``model.neck`` in {fpn, pafpn, opanas} and ``model.arch`` in
{an architecture code, ``official``, ``random``}.

One global optimiser-step counter spans both training phases, so ``max_steps`` and resume work
across them; ``last.pt`` records the phase, the search result lives in ``search.json``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig

from shared.data.coco import coco_evaluate, detection_collate
from shared.runtime import (
    Progress,
    epoch_loader,
    find_resume,
    hydra_run_dir,
    load_checkpoint,
    save_training_state,
    set_rng_state,
    start_run,
    to_plain,
    unwrap,
)

from opanas.arch import OFFICIAL_ARCH, arch_to_str, parse_arch, random_arch
from opanas.data import DetectionData, build_data, hflip_batch
from opanas.detector import build_detector, supernet_of
from opanas.search import EvolutionConfig, evolution_search

log = logging.getLogger("repro")


# ----------------------------------------------------------------------------- building blocks


def resolve_arch(spec: Any, seed: int) -> tuple[int, ...] | None:
    """``null`` -> None (super-net / non-OPANAS neck); ``official``; ``random`` (seeded, non-degenerate); a code."""
    if spec is None:
        return None
    if isinstance(spec, str) and spec == "official":
        return OFFICIAL_ARCH
    if isinstance(spec, str) and spec == "random":
        return random_arch(np.random.default_rng([int(seed), 424242]))
    return parse_arch(list(spec) if not isinstance(spec, str) else spec)


def model_kwargs(cfg: Any, num_classes: int, arch: tuple[int, ...] | None, neck: str | None = None) -> dict[str, Any]:
    m = cfg.model
    return dict(num_classes=num_classes, detector=m.detector, neck=neck or m.neck, arch=arch,
                neck_channels=int(m.neck_channels), backbone=m.backbone, backbone_weights=m.get("backbone_weights"),
                backbone_channels=list(m.backbone_channels), min_size=to_plain(m.min_size), max_size=int(m.max_size),
                anchor_sizes=list(m.anchor_sizes), representation_size=int(m.representation_size),
                roi_sampling_ratio=int(m.roi_sampling_ratio), rpn=to_plain(m.rpn), roi=to_plain(m.roi),
                opanas=to_plain(m.opanas))


def make_model(kwargs: dict[str, Any]) -> torch.nn.Module:
    kw = dict(kwargs)
    if isinstance(kw["min_size"], list):
        kw["min_size"] = tuple(kw["min_size"])
    return build_detector(**kw)


def make_optimizer(model: torch.nn.Module, o: Any, total_steps: int):
    params = [p for p in model.parameters() if p.requires_grad]
    if o.name == "sgd":
        opt = torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    elif o.name == "adamw":
        opt = torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay)
    else:
        raise ValueError(f"optim.name must be sgd or adamw, got {o.name!r}.")
    warm, ratio = int(o.warmup_steps), float(o.warmup_ratio)
    milestones = [int(f * total_steps) for f in (o.get("milestones") or [])]

    def factor(step: int) -> float:
        w = ratio + (1 - ratio) * step / warm if step < warm else 1.0
        if o.schedule == "cosine":
            return w * 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))
        if o.schedule == "step":
            return w * 0.1 ** sum(step >= m for m in milestones)
        return w

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


@torch.no_grad()
def evaluate(model: torch.nn.Module, dataset, batch_size: int, device: torch.device, arch=None) -> dict[str, float]:
    """COCO box mAP of ``model`` on ``dataset`` (pycocotools). ``arch`` sets the super-net's path choice."""
    was_training = model.training
    model.eval()
    net = supernet_of(unwrap(model))
    if arch is not None and net is not None and net.is_supernet:
        net.set_arch(arch)
    base = DetectionData.base(dataset)
    dets = []
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=detection_collate)
    for images, targets in loader:
        outs = unwrap(model)([im.to(device) for im in images])
        dets += [{"image_id": t["image_id"], **{k: v.cpu() for k, v in o.items()}} for o, t in zip(outs, targets)]
    model.train(was_training)
    ids = {int(d["image_id"]) for d in dets}
    coco = base.coco
    if len(ids) < len(base.coco.imgs):  # a Subset: score only its images
        from pycocotools.coco import COCO

        coco = COCO()
        coco.dataset = {"images": [base.coco.imgs[i] for i in sorted(ids)], "categories": list(base.coco.cats.values()),
                        "annotations": [a for i in sorted(ids) for a in base.coco.imgToAnns.get(i, [])]}
        _quiet(coco.createIndex)
    return coco_evaluate(coco, dets, base.label_to_cat)


def _quiet(fn):
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        return fn()


def step_generator(seed: int, phase: str, step: int) -> torch.Generator:
    """Per-step randomness (path sampling, flips) that depends only on (seed, phase, step): a resumed
    run draws exactly what an uninterrupted run would, on every rank."""
    g = torch.Generator()
    g.manual_seed(int(seed) * 1_000_003 + {"supernet": 1, "retrain": 2}[phase] * 100_003 + int(step))
    return g


def train_phase(phase: str, model, optimizer, scheduler, data: DetectionData, cfg, ctx, *, start: int, end: int,
                global_offset: int, model_args: dict, extra: dict) -> tuple[int, bool]:
    """Train steps ``start..end`` of one phase. Returns (steps done in this phase, stopped early by max_steps)."""
    bs = int(cfg.data.batch_size)
    spe = max(len(data.train) // bs, 1)
    net = supernet_of(unwrap(model))
    sample = net is not None and net.is_supernet
    model.train()
    step = start
    prog = Progress(end, desc=phase, interval=float(cfg.log_interval_s), enabled=ctx.is_main, start=start)
    t0 = time.perf_counter()
    while step < end:
        epoch, skip = divmod(step, spe)
        loader = epoch_loader(data.train, bs, shuffle=True, seed=cfg.seed, epoch=epoch, dist=ctx.dist,
                              skip_batches=skip, collate_fn=detection_collate, drop_last=True)
        for images, targets in loader:
            g = step_generator(cfg.seed, phase, step)
            if sample:  # SPOS: one path per edge, uniformly, non-degenerate
                net.set_arch(random_arch(np.random.default_rng(int(torch.randint(2**31, (1,), generator=g)))))
            images, targets = hflip_batch(list(images), list(targets), float(cfg.data.hflip), g)
            images = [im.to(ctx.device) for im in images]
            targets = [{k: v.to(ctx.device) for k, v in t.items()} for t in targets]
            losses = model(images, targets)
            loss = sum(losses.values())
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{phase} step {step}: loss is {loss.item()} ({ {k: v.item() for k, v in losses.items()} }). "
                                         f"Lower optim.lr or set optim.clip_grad.")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.optim.get("clip_grad"):
                torch.nn.utils.clip_grad_norm_(model.parameters(), float(cfg.optim.clip_grad))
            optimizer.step()
            scheduler.step()
            step += 1
            prog.update(1, loss=f"{loss.item():.3f}")
            if step % int(cfg.log_every) == 0 or step == end:
                ctx.metrics.log(phase=phase, step=global_offset + step, loss=loss.item(),
                                lr=optimizer.param_groups[0]["lr"], **{k: v.item() for k, v in losses.items()})
            stop = cfg.max_steps is not None and global_offset + step >= int(cfg.max_steps)
            if stop or step == end or step % int(cfg.ckpt_every) == 0:
                save_training_state(ctx.run_dir / "last.pt", ctx, model=model, optimizer=optimizer, scheduler=scheduler,
                                    step=global_offset + step, epoch=step // spe, cfg=cfg, model_args=model_args,
                                    phase=phase, phase_step=step, **extra)
            if stop:
                return step, True
            if step >= end:
                break
    log.info("%s: %d steps in %.1fs", phase, end - start, time.perf_counter() - t0)
    return step, False


# ----------------------------------------------------------------------------- fit


def fit(cfg: DictConfig, out_dir: str | Path) -> dict[str, Any]:
    if cfg.get("num_threads"):
        torch.set_num_threads(int(cfg.num_threads))
    ctx = start_run(cfg, out_dir, device=cfg.device, seed=cfg.seed)
    run_dir = ctx.run_dir
    t_start = time.perf_counter()
    data = build_data(cfg, run_dir)
    log.info("data %s: %d train / %d search / %d val images, %d classes", data.name, len(data.train), len(data.search),
             len(data.val), data.num_classes)
    search_mode = cfg.mode == "search"
    if cfg.mode not in ("search", "train"):
        raise ValueError(f"mode must be 'search' or 'train', got {cfg.mode!r}.")
    s1 = int(cfg.supernet.steps) if search_mode else 0
    s2 = int(cfg.retrain.steps)
    ckpt_path = find_resume(cfg.resume, run_dir)
    ckpt = load_checkpoint(ckpt_path) if ckpt_path is not None else None
    phase0 = ckpt.get("phase") if ckpt else None
    result: dict[str, Any] = {"data": data.name}

    def resume_into(model, optimizer, scheduler, phase):
        if ckpt is None or ckpt.get("phase") != phase:
            return 0
        unwrap(model).load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        set_rng_state(ckpt["rng"])
        log.info("resumed %s at phase step %d (global step %d)", phase, ckpt["phase_step"], ckpt["step"])
        return int(ckpt["phase_step"])

    def wrap(model):
        model.to(ctx.device)
        if ctx.dist.enabled:  # unused paths/offset convs -> find_unused_parameters (as the official code)
            return torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None, find_unused_parameters=True)
        return model

    # ---- 1. super-net training
    if search_mode:
        if cfg.model.neck != "opanas":
            raise ValueError("mode=search needs model.neck=opanas (the super-net); use mode=train for fpn/pafpn.")
        sargs = model_kwargs(cfg, data.num_classes, None)
        supernet = wrap(make_model(sargs))
        opt, sched = make_optimizer(supernet, cfg.optim, s1)
        start = resume_into(supernet, opt, sched, "supernet") if phase0 in (None, "supernet") else s1
        if phase0 == "retrain":
            start = s1
        t0, c0 = time.perf_counter(), time.process_time()
        if start < s1:
            done, stopped = train_phase("supernet", supernet, opt, sched, data, cfg, ctx, start=start, end=s1,
                                        global_offset=0, model_args={"phase": "supernet", "neck": "opanas"}, extra={})
            if stopped:
                return {"stopped_at_step": done, "phase": "supernet"}
        result["supernet_seconds"] = time.perf_counter() - t0
        result["supernet_cpu_seconds"] = time.process_time() - c0  # this process's CPU time (all threads)

        # ---- 2. evolutionary search on the held-out split
        search_file = run_dir / "search.json"
        if search_file.is_file():
            found = json.loads(search_file.read_text())
            best = parse_arch(found["best"])
        else:
            if phase0 == "retrain":
                raise RuntimeError(f"{run_dir} has a retrain checkpoint but no search.json; start a fresh run directory.")
            s = cfg.search
            ecfg = EvolutionConfig(population=int(s.population), topk=int(s.topk), generations=int(s.generations),
                                   num_mutation=int(s.num_mutation), num_crossover=int(s.num_crossover),
                                   mutate_prob=float(s.mutate_prob))
            constraint = None
            if s.get("max_neck_params"):
                from opanas.neck import OPANASNeck

                limit = int(s.max_neck_params)
                neck = supernet_of(unwrap(supernet))
                constraint = lambda a: sum(p.numel() for p in OPANASNeck(
                    [m.in_channels for m in neck.lateral], neck.out_channels, arch=a, **neck._build_kwargs).parameters()) <= limit
            t0, c0 = time.perf_counter(), time.process_time()
            prog = Progress(ecfg.population * ecfg.generations, desc="search", interval=float(cfg.log_interval_s),
                            enabled=ctx.is_main)
            fitness = lambda a: evaluate(supernet, data.search, int(cfg.eval.batch_size), ctx.device, arch=a)["AP"]
            res = evolution_search(fitness, ecfg, seed=int(cfg.seed), constraint=constraint,
                                   on_evaluated=lambda r: prog.update(1, best=f"{r['fitness']:.3f}"))
            best = res.best
            found = {"best": arch_to_str(best), "best_fitness": res.best_fitness, "num_evaluated": res.num_evaluated,
                     "seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0,
                     "best_per_generation": res.best_per_generation,
                     "top": [{k: v for k, v in r.items() if k != "arch"} for r in res.top(10)],
                     "fitness": "COCO box AP on the held-out search split, super-net weights"}
            if ctx.is_main:
                search_file.write_text(json.dumps(found, indent=1))
            log.info("search: best %s (search AP %.4f) after %d candidates in %.1fs", found["best"],
                     found["best_fitness"], found["num_evaluated"], found["seconds"])
        result.update(searched_arch=found["best"], search_fitness=found["best_fitness"],
                      search_candidates=found["num_evaluated"], search_seconds=found["seconds"],
                      search_cpu_seconds=found["cpu_seconds"])
        del supernet, opt, sched
        arch = best
    else:
        arch = resolve_arch(cfg.model.arch, cfg.seed) if cfg.model.neck == "opanas" else None
        if cfg.model.neck == "opanas" and arch is None:
            raise ValueError("mode=train with model.neck=opanas needs model.arch (a code, 'official' or 'random').")

    # ---- 3. (re)train the chosen detector from scratch
    torch.manual_seed(int(cfg.seed) + 1)  # the retrained detector's init does not depend on the search
    rargs = model_kwargs(cfg, data.num_classes, arch)
    model = wrap(make_model(rargs))
    opt, sched = make_optimizer(model, cfg.optim, s2)
    margs = {"phase": "retrain", "neck": cfg.model.neck, "arch": arch_to_str(arch) if arch else None}
    start = resume_into(model, opt, sched, "retrain")
    t0 = time.perf_counter()
    if start < s2:
        done, stopped = train_phase("retrain", model, opt, sched, data, cfg, ctx, start=start, end=s2, global_offset=s1,
                                    model_args=margs, extra={"arch": margs["arch"]})
        if stopped:
            return {"stopped_at_step": s1 + done, "phase": "retrain", **result}
    result["retrain_seconds"] = time.perf_counter() - t0
    metrics = evaluate(model, data.val, int(cfg.eval.batch_size), ctx.device)
    neck = unwrap(model).backbone.neck
    result.update({f"val_{k}": v for k, v in metrics.items()}, arch=margs["arch"], neck=cfg.model.neck,
                  neck_params=sum(p.numel() for p in neck.parameters()), total_seconds=time.perf_counter() - t_start,
                  steps=s1 + s2)
    if ctx.is_main:
        ctx.metrics.log(phase="final", step=s1 + s2, **{f"val_{k}": v for k, v in metrics.items()})
        (run_dir / "final_metrics.json").write_text(json.dumps(result, indent=1))
        if arch is not None:
            from opanas.viz import plot_arch

            plot_arch(arch, run_dir / "architecture.png", title=f"{'searched' if search_mode else 'trained'} architecture")
    log.info("final (%s, %s): val AP %.4f AP50 %.4f | run dir %s", data.name, margs["arch"] or cfg.model.neck,
             metrics["AP"], metrics["AP50"], run_dir)
    return result


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    fit(cfg, hydra_run_dir())


if __name__ == "__main__":
    main()
