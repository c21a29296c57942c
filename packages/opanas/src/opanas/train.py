"""``fit(cfg, out_dir)``: the OPANAS pipeline, readable top to bottom.

``mode=search`` (the embedded default):
  1. super-net training: a detector whose neck holds all six paths on every edge; each step samples
     one path per edge uniformly (SPOS, :func:`opanas.arch.sample_arch`) and trains that sub-net's weights;
  2. evolutionary search: fitness = COCO box mAP (pycocotools) on the held-out ``search`` split,
     each candidate evaluated with the super-net's weights (no retraining, no BN recalibration:
     the neck has no BN and the backbone's BN does not depend on the architecture);
  3. retraining: the best architecture's detector is trained from scratch (no super-net weights)
     and evaluated on ``val``.
``mode=train``: step 3 only, for ``model.neck`` in {fpn, pafpn, opanas} and ``model.arch`` in
{an architecture code, ``official``, ``random``}.

One global optimiser-step counter spans both training phases, so ``max_steps`` and resume work
across them; ``last.pt`` records the phase and the model (``model_args``, checked on resume), the
super-net's final weights are kept in ``supernet.pt``, every evaluated candidate in ``search_cache.json``
(a search interrupted mid-way replays them instead of re-evaluating) and the result in ``search.json``;
both record the search config and are refused under a different one.

Under torchrun (``torchrun --nproc-per-node N -m opanas.train ...``) both training phases run under
DistributedDataParallel (every rank trains the same sampled sub-net at a step; the training images are
sharded), and every evaluation (each search candidate, the final val) is sharded over the ranks by whole
batches and gathered, so every rank computes the same mAP from the same detections, makes the same search
decisions, and matches what one process computes at the same ``eval.batch_size``. Only rank 0 writes.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from shared.cli import hydra_main
from shared.data.coco import coco_evaluate, detection_collate
from shared.errors import CheckpointError, ConfigError, check_choice, check_range, require
from shared.runtime import (
    Progress,
    all_gather_objects,
    epoch_loader,
    find_resume,
    hydra_run_dir,
    load_checkpoint,
    maybe_resume,
    save_checkpoint,
    save_training_state,
    seed_everything,
    start_run,
    to_plain,
    unwrap,
)

from opanas.arch import OFFICIAL_ARCH, arch_to_str, parse_arch, random_arch, sample_arch
from opanas.data import DATA_KINDS, DetectionData, build_data, check_data, hflip_batch
from opanas.dcn import IMPLS as DCN_IMPLS
from opanas.detector import BACKBONES, DETECTORS, build_detector, supernet_of
from opanas.neck import NECKS, opanas_param_count
from opanas.search import EvolutionConfig, evolution_search

log = logging.getLogger("repro")

MODES = ("search", "train")
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("step", "cosine", "constant")
OFFSET_INITS = ("zero", "xavier")


# ----------------------------------------------------------------------------- validation


def _int_list(key: str, value: Any, n: int | None = None, lo: int = 1) -> list[int]:
    items = list(value) if isinstance(value, (list, tuple)) or hasattr(value, "__iter__") and not isinstance(value, str) else None
    if items is None or (n is not None and len(items) != n) or not items:
        raise ConfigError(f"{key}={to_plain(value)!r} must be a list of {n or 'one or more'} integers; "
                          f"e.g. {key}=[{', '.join(['32'] * (n or 2))}]")
    for i, v in enumerate(items):
        check_range(f"{key}[{i}]", v, lo, integer=True)
    return [int(v) for v in items]


def validate(cfg: DictConfig) -> None:
    """Every registry name and value of the run, checked before any data is built or any step is trained."""
    check_choice("mode", cfg.mode, MODES)
    m = cfg.model
    check_choice("model.detector", m.detector, DETECTORS)
    check_choice("model.neck", m.neck, NECKS)
    check_choice("model.backbone", m.backbone, BACKBONES)
    check_range("model.neck_channels", m.neck_channels, 1, integer=True)
    check_range("model.fpn_inner_channels", m.get("fpn_inner_channels"), 1, integer=True, allow_none=True)
    require(m.get("fpn_inner_channels") is None or m.neck == "fpn",
            f"model.fpn_inner_channels={m.get('fpn_inner_channels')} widens an FPN, but model.neck={m.neck}",
            "set model.neck=fpn or model.fpn_inner_channels=null")
    _int_list("model.anchor_sizes", m.anchor_sizes, 5)
    if m.backbone == "tiny":
        _int_list("model.backbone_channels", m.backbone_channels, 4)
    if isinstance(m.min_size, (int, float)) and not isinstance(m.min_size, bool):
        check_range("model.min_size", m.min_size, 1, integer=True)
    else:
        _int_list("model.min_size", m.min_size)
    check_range("model.max_size", m.max_size, 1, integer=True)
    check_range("model.test_min_size", m.get("test_min_size"), 1, integer=True, allow_none=True)
    check_range("model.test_max_size", m.get("test_max_size"), 1, integer=True, allow_none=True)
    if m.get("scale_range") is not None:
        lo, hi = _int_list("model.scale_range", m.scale_range, 2)
        require(lo <= hi, f"model.scale_range={[lo, hi]} is empty", "give [low, high] with low <= high")
    check_range("model.representation_size", m.representation_size, 1, integer=True)
    check_range("model.roi_sampling_ratio", m.roi_sampling_ratio, 0, integer=True)
    o = m.opanas
    check_choice("model.opanas.offset_init", o.offset_init, OFFSET_INITS)
    check_choice("model.opanas.dcn_impl", o.dcn_impl, DCN_IMPLS)
    for key in ("deformable", "fs_shared_weights", "top_context"):
        require(isinstance(o[key], bool), f"model.opanas.{key}={o[key]!r} must be true or false",
                f"set model.opanas.{key}=true or false")
    if cfg.mode == "search":
        require(m.neck == "opanas", f"mode=search searches OPANAS necks, but model.neck={m.neck}",
                "set model.neck=opanas, or mode=train to train an fpn/pafpn detector")
        require(m.arch is None, f"mode=search finds the architecture itself, so model.arch={m.arch!r} would be ignored",
                "set model.arch=null, or mode=train to train that architecture")
    elif m.neck == "opanas":
        require(m.arch is not None, "mode=train with model.neck=opanas needs an architecture",
                "set model.arch=official, model.arch=random or an architecture code such as model.arch='TD,BU,...'")
        resolve_arch(m.arch, 0)
    else:
        require(m.arch is None, f"model.arch={m.arch!r} applies to the opanas neck only, but model.neck={m.neck}",
                "set model.arch=null or model.neck=opanas")
    opt = cfg.optim
    check_choice("optim.name", opt.name, OPTIMIZERS)
    check_choice("optim.schedule", opt.schedule, SCHEDULES)
    check_range("optim.lr", opt.lr, 0, lo_inclusive=False)
    check_range("optim.weight_decay", opt.weight_decay, 0)
    check_range("optim.momentum", opt.momentum, 0, 1)
    check_range("optim.warmup_steps", opt.warmup_steps, 0, integer=True)
    check_range("optim.warmup_ratio", opt.warmup_ratio, 0, 1)
    check_range("optim.clip_grad", opt.get("clip_grad"), 0, lo_inclusive=False, allow_none=True)
    for i, f in enumerate(opt.get("milestones") or []):
        check_range(f"optim.milestones[{i}]", f, 0, 1, lo_inclusive=False)
    if cfg.mode == "search":
        check_range("supernet.steps", cfg.supernet.steps, 1, integer=True)
        s = cfg.search
        for key in ("population", "generations"):
            check_range(f"search.{key}", s[key], 1, integer=True)
        check_range("search.topk", s.topk, 1, s.population, integer=True)
        check_range("search.num_mutation", s.num_mutation, 0, integer=True)
        check_range("search.num_crossover", s.num_crossover, 0, integer=True)
        check_range("search.mutate_prob", s.mutate_prob, 0, 1)
        check_range("search.max_neck_params", s.get("max_neck_params"), 1, integer=True, allow_none=True)
    check_range("retrain.steps", cfg.retrain.steps, 1, integer=True)
    d = cfg.data
    check_choice("data.kind", d.kind, DATA_KINDS)
    check_range("data.batch_size", d.batch_size, 1, integer=True)
    check_range("data.hflip", d.hflip, 0, 1)
    check_range("data.search_images", d.search_images, 1, integer=True)
    check_range("data.data_seed", d.data_seed, 0, integer=True)
    if d.kind == "synthetic":
        check_range("data.size", d.size, 32, integer=True)
        check_range("data.num_classes", d.num_classes, 1, 6, integer=True)
        check_range("data.train_images", d.train_images, 1, integer=True)
        check_range("data.val_images", d.val_images, 1, integer=True)
        world = int(os.environ.get("WORLD_SIZE", 1))
        require(d.batch_size * world <= d.train_images, f"data.batch_size={d.batch_size} x {world} process(es) is "
                f"more than data.train_images={d.train_images} (no full batch)", "lower data.batch_size or raise "
                "data.train_images")
    for key in ("eval.batch_size", "log_every", "ckpt_every"):
        check_range(key, cfg.eval.batch_size if key == "eval.batch_size" else cfg[key], 1, integer=True)
    check_range("log_interval_s", cfg.log_interval_s, 0)
    check_data(d)  # a missing dataset is reported before a missing weights file
    if cfg.weights:
        require(Path(str(cfg.weights)).expanduser().is_file(), f"weights={cfg.weights!r}: no such file",
                "put a state dict of the backbone there (torchvision's ImageNet weights for a ResNet; nothing is "
                "downloaded) or set weights=null to train from scratch")


# ----------------------------------------------------------------------------- building blocks


def resolve_arch(spec: Any, seed: int) -> tuple[int, ...] | None:
    """``null`` -> None (super-net / non-OPANAS neck); ``official``; ``random`` (seeded, non-degenerate); a code."""
    if spec is None:
        return None
    if isinstance(spec, str) and spec == "official":
        return OFFICIAL_ARCH
    if isinstance(spec, str) and spec == "random":
        return random_arch(np.random.default_rng([int(seed), 424242]))
    try:
        return parse_arch(list(spec) if not isinstance(spec, str) else spec)
    except ValueError as e:
        raise ConfigError(f"model.arch={to_plain(spec)!r} is not an architecture code ({str(e).rstrip('.')}); use "
                          "official, random or 15 comma-separated ops from none, skip_connect, TD, BU, FS, SE") from None


def model_kwargs(cfg: Any, num_classes: int, arch: tuple[int, ...] | None) -> dict[str, Any]:
    m = cfg.model
    return dict(num_classes=num_classes, detector=m.detector, neck=m.neck, arch=arch,
                neck_channels=int(m.neck_channels), backbone=m.backbone, backbone_weights=cfg.weights or None,
                backbone_channels=list(m.backbone_channels), min_size=to_plain(m.min_size), max_size=int(m.max_size),
                test_min_size=m.get("test_min_size"), test_max_size=m.get("test_max_size"),
                scale_range=to_plain(m.get("scale_range")), anchor_sizes=list(m.anchor_sizes),
                representation_size=int(m.representation_size), roi_sampling_ratio=int(m.roi_sampling_ratio),
                fpn_inner_channels=m.get("fpn_inner_channels"), rpn=to_plain(m.rpn), roi=to_plain(m.roi),
                opanas=to_plain(m.opanas))


def model_args_of(kwargs: dict[str, Any], phase: str) -> dict[str, Any]:
    """Everything that defines the trained network (checked when a checkpoint is resumed)."""
    keys = ("num_classes", "detector", "neck", "neck_channels", "backbone", "anchor_sizes", "representation_size",
            "fpn_inner_channels")
    out = {k: kwargs[k] for k in keys}
    out["arch"] = arch_to_str(kwargs["arch"]) if kwargs["arch"] is not None else ("supernet" if phase == "supernet" else None)
    out["backbone_channels"] = kwargs["backbone_channels"] if kwargs["backbone"] == "tiny" else None
    if kwargs["neck"] == "opanas":
        out.update({f"opanas.{k}": kwargs["opanas"][k] for k in ("deformable", "fs_shared_weights", "top_context")})
    out["phase"] = phase
    return out


def make_model(kwargs: dict[str, Any]) -> torch.nn.Module:
    return build_detector(**kwargs)


def make_optimizer(model: torch.nn.Module, o: Any, total_steps: int):
    params = [p for p in model.parameters() if p.requires_grad]
    if o.name == "sgd":
        opt = torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    else:
        opt = torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay)
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
def evaluate(model: torch.nn.Module, dataset, batch_size: int, device: torch.device, arch=None,
             rank: int = 0, world: int = 1) -> dict[str, float]:
    """COCO box mAP of ``model`` on ``dataset`` (pycocotools); ``arch`` sets the super-net's path choice.

    Under torchrun pass ``rank``/``world``: the batches (fixed composition: images ``[b*bs, (b+1)*bs)``) are
    dealt out round-robin, detections are gathered, and every rank scores the same set: the result is the same
    on every rank and equal to one process's at this ``batch_size``."""
    net = unwrap(model)
    was_training = net.training
    net.eval()
    neck = supernet_of(net)
    if arch is not None and neck is not None and neck.is_supernet:
        neck.set_arch(arch)
    n = len(dataset)
    mine = [b for b in range(math.ceil(n / batch_size)) if b % world == rank]
    dets = []
    for b in mine:
        items = [dataset[i] for i in range(b * batch_size, min((b + 1) * batch_size, n))]
        images, targets = detection_collate(items)
        outs = net([im.to(device) for im in images])
        dets += [{"image_id": int(t["image_id"]), **{k: v.cpu() for k, v in o.items()}} for o, t in zip(outs, targets)]
    net.train(was_training)
    dets = sorted((d for part in all_gather_objects(dets) for d in part), key=lambda d: d["image_id"])
    base = DetectionData.base(dataset)
    coco = base.coco
    ids = [d["image_id"] for d in dets]
    if len(ids) < len(base.coco.imgs):  # a Subset: score only its images
        from pycocotools.coco import COCO

        coco = COCO()
        coco.dataset = {"images": [base.coco.imgs[i] for i in ids], "categories": list(base.coco.cats.values()),
                        "annotations": [a for i in ids for a in base.coco.imgToAnns.get(i, [])]}
        _quiet(coco.createIndex)
    return coco_evaluate(coco, dets, base.label_to_cat)


def _quiet(fn):
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        return fn()


def _write_json(path: Path, obj: Any) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def step_seed(seed: int, phase: str, step: int, rank: int) -> int:
    """Seed of one step's image flips: depends only on (seed, phase, step, rank), so a resumed run draws
    exactly what an uninterrupted run would, and each rank flips its own images independently."""
    return int(np.random.SeedSequence([int(seed), {"supernet": 1, "retrain": 2}[phase], int(step), int(rank)])
               .generate_state(1)[0])


def train_phase(phase: str, model, optimizer, scheduler, data: DetectionData, cfg, ctx, *, start: int, end: int,
                global_offset: int, model_args: dict, extra: dict) -> tuple[int, bool]:
    """Train steps ``start..end`` of one phase. Returns (steps done in this phase, stopped early by max_steps)."""
    bs = int(cfg.data.batch_size)
    spe = max(len(epoch_loader(data.train, bs, shuffle=True, seed=cfg.seed, epoch=0, dist=ctx.dist, drop_last=True,
                               collate_fn=detection_collate)), 1)
    net = supernet_of(unwrap(model))
    sample = net is not None and net.is_supernet
    model.train()
    step = start
    prog = Progress(end, desc=phase, interval=float(cfg.log_interval_s), enabled=ctx.is_main, start=start)
    t0 = time.perf_counter()
    while step < end:
        epoch, skip = divmod(step, spe)
        loader = epoch_loader(data.train, bs, shuffle=True, seed=cfg.seed, epoch=epoch, dist=ctx.dist,
                              skip_batches=skip, collate_fn=detection_collate, drop_last=True,
                              num_workers=int(cfg.num_workers))
        for images, targets in loader:
            if sample:  # SPOS: a fresh path per edge at every step (the same on every rank)
                net.set_arch(sample_arch(cfg.seed, step))
            gen = torch.Generator().manual_seed(step_seed(cfg.seed, phase, step, ctx.dist.rank))
            images, targets = hflip_batch(list(images), list(targets), float(cfg.data.hflip), gen)
            images = [im.to(ctx.device) for im in images]
            targets = [{k: v.to(ctx.device) for k, v in t.items()} for t in targets]
            with ctx.amp.autocast():
                losses = model(images, targets)
            loss = sum(losses.values())
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{phase} step {step}: loss is {loss.item()} ({ {k: v.item() for k, v in losses.items()} }). "
                                         f"Lower optim.lr or set optim.clip_grad.")
            optimizer.zero_grad(set_to_none=True)
            ctx.amp.backward(loss)
            if cfg.optim.get("clip_grad"):
                ctx.amp.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), float(cfg.optim.clip_grad))
            ctx.amp.step(optimizer)
            scheduler.step()
            step += 1
            prog.update(1, loss=f"{loss.item():.3f}")
            if step % int(cfg.log_every) == 0 or step == end:
                ctx.metrics.log(phase=phase, step=global_offset + step, loss=loss.item(),
                                lr=optimizer.param_groups[0]["lr"], **{k: v.item() for k, v in losses.items()})
            stop = cfg.max_steps is not None and global_offset + step >= int(cfg.max_steps)
            if stop or step == end or step % int(cfg.ckpt_every) == 0:
                # a collective under torchrun (every rank's RNG state is gathered); only rank 0 writes
                save_training_state(ctx.run_dir / "last.pt", ctx, model=model, optimizer=optimizer, scheduler=scheduler,
                                    step=global_offset + step, epoch=step // spe, cfg=cfg, model_args=model_args,
                                    phase=phase, phase_step=step, amp=ctx.amp.state_dict(), **extra)
            if stop:
                return step, True
            if step >= end:
                break
    log.info("%s: %d steps in %.1fs", phase, end - start, time.perf_counter() - t0)
    return step, False


def search_key(cfg: Any, supernet_args: dict[str, Any]) -> dict[str, Any]:
    """Everything a search result depends on: a ``search.json`` / ``search_cache.json`` written under another
    key is refused."""
    return {"model": supernet_args, "seed": int(cfg.seed), "supernet.steps": int(cfg.supernet.steps),
            "search": to_plain(cfg.search), "optim": to_plain(cfg.optim), "data": to_plain(cfg.data),
            "eval.batch_size": int(cfg.eval.batch_size), "amp": to_plain(cfg.amp)}


def _check_key(path: Path, found: dict, key: dict) -> None:
    have = found.get("config")
    if have == key:
        return
    diff = "no search config recorded"
    if isinstance(have, dict):
        for k in key:
            if have.get(k) != key[k]:
                a, b = have.get(k), key[k]
                if isinstance(a, dict) and isinstance(b, dict):
                    sub = next(s for s in sorted(set(a) | set(b)) if a.get(s) != b.get(s))
                    k, a, b = f"{k}.{sub}", a.get(sub), b.get(sub)
                diff = f"{k}={a!r} there, {b!r} here"
                break
    raise CheckpointError(f"{path} was written under a different search config ({diff}); use a fresh run directory "
                          "(name=...), or delete it to search again")


# ----------------------------------------------------------------------------- fit


def fit(cfg: DictConfig, out_dir: str | Path) -> dict[str, Any]:
    t_start = time.perf_counter()
    validate(cfg)
    ctx = start_run(cfg, out_dir)
    run_dir, rank, world = ctx.run_dir, ctx.dist.rank, ctx.dist.world_size
    data = build_data(cfg, run_dir, ctx.is_main)
    log.info("data %s: %d train / %d search / %d val images, %d classes", data.name, len(data.train), len(data.search),
             len(data.val), data.num_classes)
    search_mode = cfg.mode == "search"
    s1 = int(cfg.supernet.steps) if search_mode else 0
    s2 = int(cfg.retrain.steps)
    ckpt_path = find_resume(cfg.resume, run_dir)
    phase0 = load_checkpoint(ckpt_path).get("phase") if ckpt_path is not None else None
    result: dict[str, Any] = {"data": data.name}

    def wrap(model):
        model.to(ctx.device)
        if ctx.dist.enabled:  # unused paths/offset convs -> find_unused_parameters (as the official code)
            return torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None, find_unused_parameters=True)
        return model

    def resume_into(model, opt, sched, model_args) -> int:
        ckpt = maybe_resume(ckpt_path, run_dir, model, opt, sched, expect=model_args)
        ctx.amp.load_state_dict(ckpt.get("amp"))
        ctx.metrics.truncate_after("step", ckpt["step"])
        log.info("resumed %s at phase step %d (global step %d)", model_args["phase"], ckpt["phase_step"], ckpt["step"])
        return int(ckpt["phase_step"])

    # ---- 1. super-net training (skipped when the run already reached its retrain phase)
    if search_mode:
        sargs = model_kwargs(cfg, data.num_classes, None)
        smodel_args = model_args_of(sargs, "supernet")
        supernet = None
        t0, c0 = time.perf_counter(), time.process_time()
        if phase0 != "retrain":
            supernet = wrap(make_model(sargs))
            opt, sched = make_optimizer(supernet, cfg.optim, s1)
            start = resume_into(supernet, opt, sched, smodel_args) if ckpt_path is not None else 0
            if start < s1:
                done, stopped = train_phase("supernet", supernet, opt, sched, data, cfg, ctx, start=start, end=s1,
                                            global_offset=0, model_args=smodel_args, extra={})
                if stopped:
                    return {"stopped_at_step": done, "phase": "supernet"}
                if ctx.is_main:  # the trained super-net, for a later search or inspection
                    save_checkpoint({"model": unwrap(supernet).state_dict(), "model_args": smodel_args},
                                    run_dir / "supernet.pt")
            del opt, sched
        result["supernet_seconds"] = time.perf_counter() - t0
        result["supernet_cpu_seconds"] = time.process_time() - c0  # this process's CPU time (all threads)

        # ---- 2. evolutionary search on the held-out split (sharded over the ranks under torchrun)
        key = search_key(cfg, smodel_args)
        search_file, cache_file = run_dir / "search.json", run_dir / "search_cache.json"
        if search_file.is_file():
            found = json.loads(search_file.read_text())
            _check_key(search_file, found, key)
        else:
            if supernet is None:
                raise CheckpointError(f"{run_dir} has a retrain checkpoint but no search.json; start a fresh run "
                                      "directory (name=...) or resume=null")
            cache: dict[str, float] = {}
            if cache_file.is_file():
                cached = json.loads(cache_file.read_text())
                _check_key(cache_file, cached, key)
                cache = cached["fitness"]
            s = cfg.search
            ecfg = EvolutionConfig(population=int(s.population), topk=int(s.topk), generations=int(s.generations),
                                   num_mutation=int(s.num_mutation), num_crossover=int(s.num_crossover),
                                   mutate_prob=float(s.mutate_prob))
            neck = supernet_of(unwrap(supernet))
            limit = s.get("max_neck_params")
            constraint = (lambda a: opanas_param_count(neck, a) <= int(limit)) if limit else None
            t0, c0 = time.perf_counter(), time.process_time()
            prog = Progress(ecfg.population * ecfg.generations, desc="search", interval=float(cfg.log_interval_s),
                            enabled=ctx.is_main)

            def fitness(a: tuple[int, ...]) -> float:
                name = arch_to_str(a)
                if name not in cache:  # identical on every rank (gathered detections)
                    cache[name] = evaluate(supernet, data.search, int(cfg.eval.batch_size), ctx.device, arch=a,
                                           rank=rank, world=world)["AP"]
                    if ctx.is_main:
                        _write_json(cache_file, {"config": key, "fitness": cache})
                return cache[name]

            res = evolution_search(fitness, ecfg, seed=int(cfg.seed), constraint=constraint,
                                   on_evaluated=lambda r: prog.update(1, best=f"{r['fitness']:.3f}"))
            found = {"best": arch_to_str(res.best), "best_fitness": res.best_fitness,
                     "num_evaluated": res.num_evaluated, "seconds": time.perf_counter() - t0,
                     "cpu_seconds": time.process_time() - c0, "best_per_generation": res.best_per_generation,
                     "best_neck_params": opanas_param_count(neck, res.best),
                     "top": [{k: v for k, v in r.items() if k != "arch"} for r in res.top(10)],
                     "fitness": "COCO box AP on the held-out search split, super-net weights", "config": key}
            if ctx.is_main:
                _write_json(search_file, found)
            log.info("search: best %s (search AP %.4f) after %d candidates in %.1fs", found["best"],
                     found["best_fitness"], found["num_evaluated"], found["seconds"])
        result.update(searched_arch=found["best"], search_fitness=found["best_fitness"],
                      search_candidates=found["num_evaluated"], search_seconds=found["seconds"],
                      search_cpu_seconds=found["cpu_seconds"])
        del supernet
        arch = parse_arch(found["best"])
    else:
        arch = resolve_arch(cfg.model.arch, cfg.seed) if cfg.model.neck == "opanas" else None

    # ---- 3. (re)train the chosen detector from scratch: its init depends on the seed only (not on the search)
    torch.manual_seed(int(cfg.seed) + 1)
    rargs = model_kwargs(cfg, data.num_classes, arch)
    margs = model_args_of(rargs, "retrain")
    model = wrap(make_model(rargs))
    seed_everything(int(cfg.seed) + 2, rank)  # the retrain phase's own random stream (RPN/RoI sampling)
    opt, sched = make_optimizer(model, cfg.optim, s2)
    start = resume_into(model, opt, sched, margs) if (ckpt_path is not None and (phase0 == "retrain" or not search_mode)) else 0
    t0 = time.perf_counter()
    if start < s2:
        done, stopped = train_phase("retrain", model, opt, sched, data, cfg, ctx, start=start, end=s2, global_offset=s1,
                                    model_args=margs, extra={"arch": margs["arch"]})
        if stopped:
            return {"stopped_at_step": s1 + done, "phase": "retrain", **result}
    result["retrain_seconds"] = time.perf_counter() - t0
    metrics = evaluate(model, data.val, int(cfg.eval.batch_size), ctx.device, rank=rank, world=world)
    net = unwrap(model)
    result.update({f"val_{k}": v for k, v in metrics.items()}, arch=margs["arch"], neck=cfg.model.neck,
                  neck_params=sum(p.numel() for p in net.backbone.neck.parameters()),
                  detector_params=sum(p.numel() for p in net.parameters()),
                  total_seconds=time.perf_counter() - t_start, steps=s1 + s2)
    if ctx.is_main:
        ctx.metrics.log(phase="final", step=s1 + s2, **{f"val_{k}": v for k, v in metrics.items()})
        (run_dir / "final_metrics.json").write_text(json.dumps(result, indent=1))
        if arch is not None:
            from opanas.viz import plot_arch

            plot_arch(arch, run_dir / "architecture.png", title=f"{'searched' if search_mode else 'trained'} architecture")
    log.info("final (%s, %s): val AP %.4f AP50 %.4f | run dir %s (final_metrics.json, metrics.csv, last.pt%s)",
             data.name, margs["arch"] or cfg.model.neck, metrics["AP"], metrics["AP50"], run_dir,
             ", supernet.pt, search.json, architecture.png" if search_mode else "")
    return result


@hydra_main(config_name="train")
def main(cfg: DictConfig) -> None:
    fit(cfg, hydra_run_dir())


if __name__ == "__main__":
    main()
