"""``fit(cfg, out_dir)``: flow pre-training, then generator training, readable top to bottom.

    uv run --package ffwm train                               # embedded default (synthetic, 64 px, CPU minutes)
    uv run --package ffwm train method=no_ipm                 # an ablation, same fit()
    uv run --package ffwm train experiment=multipie_setting2  # the paper's recipe on Multi-PIE (real data, GPU)
    torchrun --nproc-per-node 2 -m ffwm.train device=cpu

One global step counter runs over both stages (``flow.steps`` flow steps, then ``gen.steps`` generator
steps), so ``max_steps`` and ``resume=auto`` work across the stage boundary. The run directory receives
config.yaml, train.log, metrics.csv, env.json, last.pt (flows, generator, discriminator, all three
optimisers and schedulers, RNG states), flows.pt (the pre-trained F and B), final_metrics.json and
samples.png (profile / output / ground truth / illumination-consistent target).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import hydra
import torch
import torch.distributed as tdist
from omegaconf import DictConfig

from shared.runtime import (
    Progress,
    epoch_loader,
    hydra_run_dir,
    load_checkpoint,
    maybe_resume,
    save_checkpoint,
    save_training_state,
    start_run,
    to_plain,
)

from .data import build_data
from .evaluate import evaluate_pairs, save_grid
from .evaluate_real import evaluate_lfw, evaluate_multipie
from .featnets import build_feature_nets
from .model import FFWM, FlowLossConfig, GenLossConfig, discriminator_step_loss, flow_step_loss, generator_step_loss
from .networks import SKIP_MODES

log = logging.getLogger("ffwm")


def model_args(cfg: DictConfig) -> dict[str, Any]:
    m = cfg.model
    return {"image_size": int(cfg.data.image_size), "ngf": int(m.ngf), "ndf": int(m.ndf), "flow_ngf": int(m.flow_ngf),
            "skip": str(cfg.method.skip), "sn": bool(m.sn)}


def build_model(cfg: DictConfig) -> FFWM:
    return FFWM(**model_args(cfg))


def flow_loss_config(cfg: DictConfig) -> FlowLossConfig:
    f = cfg.flow.loss
    return FlowLossConfig(correctness=f.correctness, affine=f.affine, landmark=f.landmark,
                          landmark_scale_weights=tuple(f.landmark_scale_weights),
                          landmark_convention=f.landmark_convention, sampler=f.sampler)


def gen_loss_config(cfg: DictConfig) -> GenLossConfig:
    w = cfg.loss
    return GenLossConfig(l1=w.l1, perceptual=w.perceptual, facial=w.facial, identity_raw=w.identity_raw,
                         identity_gf=w.identity_gf, illumination=w.illumination, adversarial=w.adversarial,
                         scale_weights=tuple(w.scale_weights), facial_patch_frac=w.facial_patch_frac,
                         preserve=bool(cfg.method.preserve), adapt=bool(cfg.method.adapt),
                         warmup_images=int(w.warmup_images), gf_radius_frac=w.gf_radius_frac, gf_eps=w.gf_eps,
                         parts=to_plain(w.parts) if w.get("parts") else None)


def validate(cfg: DictConfig) -> None:
    """Every registry name and value range, before any data or model is built."""
    checks = [("method.skip", cfg.method.skip, SKIP_MODES),
              ("flow.loss.sampler", cfg.flow.loss.sampler, ("gaussian", "bilinear")),
              ("flow.loss.landmark_convention", cfg.flow.loss.landmark_convention, ("consistent", "official")),
              ("data.name", cfg.data.name, ("synthetic", "multipie"))]
    for key, value, choices in checks:
        if value not in choices:
            raise ValueError(f"{key}={value!r} is not one of {', '.join(map(str, choices))}; fix the override.")
    size = int(cfg.data.image_size)
    if size < 32 or size & (size - 1):
        raise ValueError(f"data.image_size={size} must be a power of two >= 32 (e.g. 64 or 128).")
    for key in ("flow.steps", "gen.steps"):
        if int(_get(cfg, key)) < 0:
            raise ValueError(f"{key}={_get(cfg, key)} must be >= 0.")
    for key in ("batch_size", "flow.batch_size", "model.ngf", "model.ndf", "model.flow_ngf"):
        if int(_get(cfg, key)) < 1:
            raise ValueError(f"{key}={_get(cfg, key)} must be >= 1.")
    for key in ("gen.lr", "gen.flow_lr", "flow.lr"):
        if not float(_get(cfg, key)) > 0:
            raise ValueError(f"{key}={_get(cfg, key)} must be > 0.")
    if cfg.amp:
        raise ValueError("amp is not supported by ffwm (the guided filter's variance needs float32); use amp=false.")


def _get(cfg: DictConfig, dotted: str):
    node: Any = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


def _sync_grads(params, ctx) -> None:
    """Average gradients over ranks (data parallel across several networks and two backward passes)."""
    if not ctx.dist.enabled:
        return
    for p in params:
        if p.grad is not None:
            tdist.all_reduce(p.grad)
            p.grad /= ctx.dist.world_size


def _broadcast_state(module: torch.nn.Module, ctx) -> None:
    """Rank 0's initial weights and buffers on every rank (seeds differ per rank)."""
    if ctx.dist.enabled:
        for t in list(module.parameters()) + list(module.buffers()):
            tdist.broadcast(t.data, 0)


def _step_lr(optimizer, every: int | None):
    """x0.5 every ``every`` steps (the official ``step`` policy, in steps); constant when ``every`` is null."""
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=int(every), gamma=0.5) if every else \
        torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


def _to(batch: dict, device) -> dict:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def load_flows(model: FFWM, path: str | Path) -> None:
    """Load F and B from a ``flows.pt`` (or a ``last.pt``) of another run."""
    ckpt = load_checkpoint(path)
    state = ckpt.get("flows") or {k: v for k, v in ckpt["model"].items() if k.startswith(("flow_f.", "flow_b."))}
    missing = model.load_state_dict(state, strict=False)
    if any(k.startswith("flow_") for k in missing.missing_keys):
        raise ValueError(f"{path} holds no complete flow_f/flow_b weights (missing {missing.missing_keys[:2]}).")


def fit(cfg: DictConfig, out_dir: str | Path) -> dict[str, Any]:
    validate(cfg)
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    ctx = start_run(cfg, out_dir, device=cfg.device, seed=cfg.seed)
    dev = ctx.device

    # data -> feature networks -> model -> optimisers
    data = build_data(cfg)
    vgg, idnet, evalnet, feat_info = build_feature_nets(cfg.features, cfg.cache_dir)
    vgg, idnet = vgg.to(dev), idnet.to(dev)
    for k, v in feat_info.items():
        log.info("%s network: %s", k, v)
    model = build_model(cfg).to(dev)
    _broadcast_state(model, ctx)
    betas = tuple(cfg.gen.betas)
    opt_flow = torch.optim.Adam(model.flow_parameters(), lr=cfg.flow.lr, betas=tuple(cfg.flow.betas))
    opt_g = torch.optim.Adam([{"params": model.generator_parameters(), "lr": cfg.gen.lr},
                              {"params": model.flow_parameters(), "lr": cfg.gen.flow_lr}], betas=betas)
    opt_d = torch.optim.Adam(model.discriminator.parameters(), lr=cfg.gen.lr, betas=betas)
    sched_g, sched_d = _step_lr(opt_g, cfg.gen.lr_decay_every), _step_lr(opt_d, cfg.gen.lr_decay_every)
    margs = model_args(cfg)
    flow_cfg, gen_cfg = flow_loss_config(cfg), gen_loss_config(cfg)

    ckpt = maybe_resume(cfg.resume, ctx.run_dir, model, opt_g, sched_g, expect=margs)
    step = ckpt["step"] if ckpt else 0
    if ckpt:
        opt_d.load_state_dict(ckpt["optimizer_d"])
        sched_d.load_state_dict(ckpt["scheduler_d"])
        opt_flow.load_state_dict(ckpt["optimizer_flow"])
        ctx.metrics.truncate_after("step", step)
    flow_steps = int(cfg.flow.steps)
    if cfg.flow.pretrained:
        if not ckpt:
            load_flows(model, cfg.flow.pretrained)
            log.info("flows F and B loaded from %s; no flow pre-training", cfg.flow.pretrained)
        flow_steps = 0
    total = flow_steps + int(cfg.gen.steps)
    max_steps = min(total, int(cfg.max_steps)) if cfg.max_steps is not None else total
    world = ctx.dist.world_size

    def checkpoint(stage: str) -> None:
        save_training_state(ctx.run_dir / "last.pt", ctx, model=model, optimizer=opt_g, scheduler=sched_g,
                            step=step, epoch=0, cfg=cfg, model_args=margs, stage=stage,
                            optimizer_d=opt_d.state_dict(), scheduler_d=sched_d.state_dict(),
                            optimizer_flow=opt_flow.state_dict())

    def batches(stage_index: int, local_step: int, bs: int):
        """Batches from ``local_step`` on; the order depends only on (seed, stage, epoch)."""
        per_epoch = max(1, len(data.train) // (bs * world))
        epoch, skip = divmod(local_step, per_epoch)
        while True:
            loader = epoch_loader(data.train, bs, shuffle=True, seed=cfg.seed + 7919 * stage_index, epoch=epoch,
                                  dist=ctx.dist, num_workers=cfg.num_workers, drop_last=True, skip_batches=skip)
            yield from loader
            epoch, skip = epoch + 1, 0

    ckpt_every = int(cfg.checkpoint_every)
    # ---------------------------------------------------------------- stage 1: flow pre-training
    if step < min(flow_steps, max_steps):
        model.train()
        progress = Progress(flow_steps, desc="flow pre-training", start=step, interval=cfg.log_interval,
                            enabled=ctx.is_main)
        for batch in batches(1, step, int(cfg.flow.batch_size)):
            batch = _to(batch, dev)
            loss, terms = flow_step_loss(model, vgg, batch, flow_cfg)
            opt_flow.zero_grad(set_to_none=True)
            loss.backward()
            _sync_grads(model.flow_parameters(), ctx)
            opt_flow.step()
            step += 1
            progress.update(loss=loss.item(), lm=terms["f_landmark"].item())
            if step % cfg.log_every == 0 or step == flow_steps:
                ctx.metrics.log(step=step, stage="flow", loss=loss.item(), **{k: v.item() for k, v in terms.items()})
            if step >= min(flow_steps, max_steps):
                break
            if ckpt_every and step % ckpt_every == 0 and ctx.is_main:
                checkpoint("flow")
        if step == flow_steps and ctx.is_main:
            save_checkpoint({"flows": {k: v for k, v in model.state_dict().items() if k.startswith(("flow_f.", "flow_b."))},
                             "model_args": margs, "config": to_plain(cfg)}, ctx.run_dir / "flows.pt")

    # -------------------------------------------------------- stage 2: generator + discriminator
    bs = int(cfg.batch_size)
    if flow_steps <= step < max_steps:
        model.train()
        progress = Progress(total - flow_steps, desc="generator", start=step - flow_steps, interval=cfg.log_interval,
                            enabled=ctx.is_main)
        g_params = model.generator_parameters() + model.flow_parameters()
        for batch in batches(2, step - flow_steps, bs):
            batch = _to(batch, dev)
            images_seen = (step - flow_steps) * bs * world
            model.discriminator.requires_grad_(False)
            loss_g, terms, fake, real = generator_step_loss(model, vgg, idnet, batch, gen_cfg, images_seen)
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            _sync_grads(g_params, ctx)
            opt_g.step()
            model.discriminator.requires_grad_(True)
            loss_d = discriminator_step_loss(model.discriminator, fake, real)
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            _sync_grads(model.discriminator.parameters(), ctx)
            opt_d.step()
            sched_g.step()
            sched_d.step()
            step += 1
            progress.update(g=loss_g.item(), d=loss_d.item())
            if step % cfg.log_every == 0 or step == total:
                ctx.metrics.log(step=step, stage="gen", loss_g=loss_g.item(), loss_d=loss_d.item(),
                                **{k: float(v.detach()) for k, v in terms.items()})
            if step >= max_steps:
                break
            if ckpt_every and step % ckpt_every == 0 and ctx.is_main:
                checkpoint("gen")
    if ctx.is_main:
        checkpoint("flow" if step < flow_steps else "gen")

    # ----------------------------------------------------------------------------- evaluation
    result: dict[str, Any] = {"step": step, "stage": "flow" if step < flow_steps else "gen",
                              "method": cfg.method.name, "data": cfg.data.name, **{f"net_{k}": v for k, v in feat_info.items()}}
    if data.test_arrays is not None and ctx.is_main:
        ev = evaluate_pairs(model, evalnet, data.test_arrays, dev, int(cfg.eval_batch_size))
        result.update(ev["metrics"])
        save_grid(model, data.test_arrays, ctx.run_dir / "samples.png", dev, n=int(cfg.grid_samples),
                  title=f"synthetic test pairs, method {cfg.method.name}, step {step}")
        if cfg.save_per_sample:
            torch.save({k: torch.from_numpy(v) for k, v in ev["per_sample"].items()}, ctx.run_dir / "per_sample.pt")
    if cfg.data.name == "multipie" and ctx.is_main:
        mp = evaluate_multipie(model, evalnet.to(dev), cfg.data.root, int(cfg.data.image_size), dev,
                               int(cfg.eval_batch_size), cfg.eval.gallery_list)
        result.update({f"multipie_rank1_{k}": v for k, v in mp["rank1_by_angle"].items()})
        log.info("Multi-PIE rank-1 by angle: %s", mp["rank1_by_angle"])
    if cfg.eval.lfw_root and ctx.is_main:
        lfw = evaluate_lfw(model, evalnet.to(dev), cfg.eval.lfw_root, int(cfg.data.image_size), dev, int(cfg.eval_batch_size))
        result.update({f"lfw_{k}": v for k, v in lfw.items()})
        log.info("LFW on frontalised images: accuracy %.2f%% (10 folds), AUC %.2f%%", lfw["acc"], lfw["auc"])
    if ctx.is_main:
        (ctx.run_dir / "final_metrics.json").write_text(json.dumps(result, indent=2, default=float) + "\n")
        if "l1_consistent" in result:
            log.info("final (step %d): L1 vs illumination-consistent target %.4f, SSIM %.3f, PSNR %.2f dB | "
                     "illumination index %.2f (0 = input's light, 1 = ground truth's) | rank-1 %.1f%% | flow EPE %s px",
                     step, result["l1_consistent"], result["ssim_consistent"], result["psnr_consistent"],
                     result["illum_tau"], result["rank1"], f"{result.get('flow_epe_px', math.nan):.2f}")
        log.info("outputs in %s (samples.png: profile / output / ground truth / consistent target)", ctx.run_dir)
    return result


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    fit(cfg, hydra_run_dir())


if __name__ == "__main__":
    main()
