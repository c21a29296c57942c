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

import torch
import torch.distributed as tdist
from omegaconf import DictConfig

from shared.cli import hydra_main
from shared.errors import CheckpointError, check_choice, check_range, require
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
from .model import (FFWM, FlowLossConfig, GenLossConfig, discriminator_step_loss, flow_step_loss, generator_forward,
                    generator_loss)
from .losses import IBUG68_PARTS
from .networks import SKIP_MODES
from .synthetic import GT_LIGHTS

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
                         facial_weights=tuple(w.facial_weights), preserve=bool(cfg.method.preserve),
                         adapt=bool(cfg.method.adapt),
                         warmup_images=int(w.warmup_images), gf_radius_frac=w.gf_radius_frac, gf_eps=w.gf_eps,
                         parts=to_plain(w.parts) if w.get("parts") else None)


def validate(cfg: DictConfig) -> None:
    """Every registry name and value range, before any data or model is built."""
    check_choice("method.skip", cfg.method.skip, SKIP_MODES)
    check_choice("flow.loss.sampler", cfg.flow.loss.sampler, ("gaussian", "bilinear"))
    check_choice("flow.loss.landmark_convention", cfg.flow.loss.landmark_convention, ("consistent", "official"))
    check_choice("data.name", cfg.data.name, ("synthetic", "multipie"))
    size = cfg.data.image_size
    check_range("data.image_size", size, 32, integer=True)
    require(int(size) & (int(size) - 1) == 0, f"data.image_size={size} is not a power of two",
            "use 32, 64 or 128 (the flows and outputs live at size/4, size/2 and size)")
    if cfg.data.name == "synthetic":
        check_choice("data.gt_light", cfg.data.gt_light, GT_LIGHTS)
        check_range("data.n_train", cfg.data.n_train, 1, integer=True)
        check_range("data.n_test", cfg.data.n_test, 1, integer=True)
        for a in cfg.data.yaws:
            check_range("data.yaws[]", a, 0, 90)
    for key in ("flow.steps", "gen.steps", "loss.warmup_images", "checkpoint_every"):
        check_range(key, _get(cfg, key), 0, integer=True)
    for key in ("batch_size", "eval_batch_size", "flow.batch_size", "model.ngf", "model.ndf", "model.flow_ngf",
                "log_every"):
        check_range(key, _get(cfg, key), 1, integer=True)
    require(len(cfg.loss.facial_weights) == len(cfg.loss.parts or IBUG68_PARTS),
            f"loss.facial_weights has {len(cfg.loss.facial_weights)} entries for {len(cfg.loss.parts or IBUG68_PARTS)} parts",
            "give one weight per facial part")
    for key in ("gen.lr", "gen.flow_lr", "flow.lr", "loss.gf_eps"):
        check_range(key, _get(cfg, key), 0, lo_inclusive=False)
    for key in ("l1", "perceptual", "facial", "identity_raw", "identity_gf", "illumination", "adversarial"):
        check_range(f"loss.{key}", cfg.loss[key], 0)
    check_range("loss.gf_radius_frac", cfg.loss.gf_radius_frac, 0, 1, lo_inclusive=False)
    check_range("gen.lr_decay_every", cfg.gen.lr_decay_every, 1, integer=True, allow_none=True)
    for key in ("weights", "flow.pretrained", "features.perceptual_weights", "features.identity_weights",
                "features.eval_identity_weights"):
        v = _get(cfg, key)
        require(v is None or Path(str(v)).expanduser().is_file(), f"{key}={v!r} is not an existing file",
                f"pass a local file or {key}=null")


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


def load_weights(model: FFWM, path: str | Path, flows_only: bool = False) -> None:
    """Initialise from a ``flows.pt`` or ``last.pt`` of this package (``flows_only``: F and B only)."""
    ckpt = load_checkpoint(path)
    state = ckpt.get("flows") or ckpt.get("model") or {}
    if flows_only:
        state = {k: v for k, v in state.items() if k.startswith(("flow_f.", "flow_b."))}
    own = model.state_dict()
    bad = [k for k, v in state.items() if k not in own or own[k].shape != v.shape]
    missing = [k for k in own if k not in state and (not flows_only or k.startswith(("flow_f.", "flow_b.")))]
    if bad or (flows_only and missing) or not state:
        raise CheckpointError(f"{path} does not fit this model ({(bad or missing or ['no weights'])[0]!r} differs or "
                              "is missing); use a flows.pt/last.pt written by ffwm with the same model and data.image_size")
    model.load_state_dict(state, strict=False)


def fit(cfg: DictConfig, out_dir: str | Path) -> dict[str, Any]:
    validate(cfg)
    ctx = start_run(cfg, out_dir)
    dev, amp = ctx.device, ctx.amp

    # data -> feature networks -> model -> optimisers
    data = build_data(cfg)
    log.info("data: %s", data.description)
    vgg, idnet, evalnet, feat_info = build_feature_nets(cfg.features, cfg.cache_dir)
    vgg, idnet = vgg.to(dev), idnet.to(dev)
    for k, v in feat_info.items():
        log.info("%s network: %s", k, v)
    model = build_model(cfg).to(dev)
    if cfg.weights:
        load_weights(model, cfg.weights)
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
        amp.load_state_dict(ckpt.get("amp"))
        ctx.metrics.truncate_after("step", step)
    flow_steps = int(cfg.flow.steps)
    if cfg.flow.pretrained:
        if not ckpt:
            load_weights(model, cfg.flow.pretrained, flows_only=True)
            log.info("flows F and B loaded from %s; no flow pre-training", cfg.flow.pretrained)
        flow_steps = 0
    total = flow_steps + int(cfg.gen.steps)
    max_steps = min(total, int(cfg.max_steps)) if cfg.max_steps is not None else total
    world = ctx.dist.world_size

    def checkpoint() -> None:  # a collective under DDP: every rank calls it, rank 0 writes
        save_training_state(ctx.run_dir / "last.pt", ctx, model=model, optimizer=opt_g, scheduler=sched_g,
                            step=step, epoch=0, cfg=cfg, model_args=margs, stage="flow" if step < flow_steps else "gen",
                            optimizer_d=opt_d.state_dict(), scheduler_d=sched_d.state_dict(),
                            optimizer_flow=opt_flow.state_dict(), amp=amp.state_dict())

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
            with amp.autocast():
                loss, terms = flow_step_loss(model, vgg, batch, flow_cfg)
            opt_flow.zero_grad(set_to_none=True)
            amp.backward(loss)
            _sync_grads(model.flow_parameters(), ctx)
            amp.step(opt_flow)
            step += 1
            if step % cfg.log_every == 0 or step == flow_steps:
                ctx.metrics.log(step=step, stage="flow", loss=loss.item(), **{k: v.item() for k, v in terms.items()})
            if ckpt_every and step % ckpt_every == 0 and step < min(flow_steps, max_steps):
                checkpoint()
            progress.update(loss=loss.item(), lm=terms["f_landmark"].item())
            if step >= min(flow_steps, max_steps):
                break
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
            images_seen = (step - flow_steps) * bs * world  # the official `titers` (images, not steps)
            with amp.autocast():  # one forward pass, then D's step, then G's (the official order)
                fwd = generator_forward(model, batch, gen_cfg)
            model.discriminator.requires_grad_(True)
            with amp.autocast():
                loss_d = discriminator_step_loss(model.discriminator, fwd["fake"], fwd["real"])
            opt_d.zero_grad(set_to_none=True)
            amp.backward(loss_d)
            _sync_grads(model.discriminator.parameters(), ctx)
            amp.step(opt_d)
            model.discriminator.requires_grad_(False)
            with amp.autocast():
                loss_g, terms = generator_loss(model, vgg, idnet, batch, fwd, gen_cfg, images_seen)
            opt_g.zero_grad(set_to_none=True)
            amp.backward(loss_g)
            _sync_grads(g_params, ctx)
            amp.step(opt_g)
            sched_g.step()
            sched_d.step()
            step += 1
            if step % cfg.log_every == 0 or step == total:
                ctx.metrics.log(step=step, stage="gen", loss_g=loss_g.item(), loss_d=loss_d.item(),
                                **{k: float(v.detach()) for k, v in terms.items()})
            if ckpt_every and step % ckpt_every == 0 and step < max_steps:
                checkpoint()
            progress.update(g=loss_g.item(), d=loss_d.item())
            if step >= max_steps:
                break
    checkpoint()

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
    model.discriminator.requires_grad_(True)
    if cfg.data.name == "multipie" and ctx.is_main:  # rank-1 on the test split (Setting 2)
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


@hydra_main(config_name="train")
def main(cfg: DictConfig) -> None:
    fit(cfg, hydra_run_dir())


if __name__ == "__main__":
    main()
