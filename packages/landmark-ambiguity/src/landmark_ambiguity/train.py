"""Training: stacked hourglass on (ambiguous) labels, alternating with the latent-GT search, then
the GHCU on the frozen network's heatmaps. ``fit(cfg, out_dir)`` reads top to bottom.

    uv run --package landmark-ambiguity train                      # embedded default (synthetic)
    uv run --package landmark-ambiguity train search.enabled=false # baseline on the ambiguous labels
    uv run --package landmark-ambiguity train experiment=300w_hg4_sa_ghcu    # paper recipe (needs 300W)
    torchrun --nproc-per-node 2 -m landmark_ambiguity.train device=cpu

Under torchrun every rank trains on its shard of each epoch (DistributedDataParallel), the search
pass and the evaluation are sharded across ranks and gathered (every rank holds the same labels),
and rank 0 trains the GHCU and writes the files.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from shared.cli import hydra_main
from shared.data.faces import LANDMARK_GROUPS
from shared.errors import CheckpointError, check_choice, check_range, require
from shared.runtime import (Amp, Progress, all_gather_objects, epoch_loader, hydra_run_dir, maybe_resume,
                            save_checkpoint, save_training_state, start_run, unwrap)
from torch.utils.data import Dataset

from . import metrics as M
from .ambiguity import weak_mask
from .data import KNOWN_SPLITS, build_data
from .heatmaps import decode, from_unit, gaussian_heatmaps, heatmap_loss, to_heatmap, to_image, to_unit
from .model import build_ghcu, build_model, list_models
from .search import SearchConfig, Workspace, latent_search

log = logging.getLogger("landmark_ambiguity")

DATASETS = ("synthetic", "300w", "aflw", "300vw")
OPTIMIZERS = ("adam", "rmsprop")
SCHEDULES = ("cosine", "constant")
DEFAULT_WEAK = ("jaw", "right_brow", "left_brow", "nose_bridge")


def validate(cfg: DictConfig) -> None:
    """Every registry name and value range of a run, checked before any data or model is built."""
    check_choice("model.name", cfg.model.name, list_models())
    check_choice("model.stride", cfg.model.stride, (2, 4))
    for key in ("num_stacks", "depth"):
        check_range(f"model.{key}", cfg.model[key], 1, integer=True)
    check_range("model.width", cfg.model.width, 2, integer=True)
    check_choice("model.channels_last", cfg.model.channels_last, (True, False))
    check_choice("data.name", cfg.data.name, DATASETS)
    check_choice("optim.name", cfg.optim.name, OPTIMIZERS)
    check_choice("optim.schedule", cfg.optim.schedule, SCHEDULES)
    check_choice("eval.norm", cfg.eval.norm, M.NORMS)
    check_range("optim.lr", cfg.optim.lr, 0, lo_inclusive=False)
    check_range("optim.weight_decay", cfg.optim.weight_decay, 0)
    for key in ("epochs", "batch_size"):
        check_range(key, cfg[key], 1, integer=True)
    check_range("heatmap.sigma", cfg.heatmap.sigma, 0, lo_inclusive=False)
    size = cfg.data.image_size
    check_range("data.image_size", size, 8, integer=True)
    require(size % cfg.model.stride == 0 and (size // cfg.model.stride) >= 2 ** cfg.model.depth,
            f"data.image_size={size} does not fit model.stride={cfg.model.stride} and model.depth={cfg.model.depth} "
            f"(the heatmap side image_size/stride must be a whole number >= 2^depth)",
            "use an image_size that is a multiple of the stride, or a smaller model.depth")
    s = cfg.search
    check_range("search.sigma_prior", s.sigma_prior, 0, lo_inclusive=False)
    check_range("search.sigma_e", s.sigma_e, 0, lo_inclusive=False)
    check_range("search.lam", s.lam, 0)
    check_range("search.window_radius", s.window_radius, 0)
    check_range("search.patch_radius", s.patch_radius, 1, integer=True)
    check_range("search.subpixel", s.subpixel, 1, integer=True)
    check_range("search.floor", s.floor, 0, 1, lo_inclusive=False, hi_inclusive=False)
    check_range("search.chunk", s.chunk, 1, integer=True)
    check_range("search.start_epoch", s.start_epoch, 0, integer=True)
    check_range("search.every", s.every, 1, integer=True)
    require(not s.enabled or s.start_epoch < cfg.epochs,
            f"search.enabled=true but search.start_epoch={s.start_epoch} >= epochs={cfg.epochs}, so no search pass "
            f"would run", "lower search.start_epoch or set search.enabled=false")
    g = cfg.ghcu
    check_range("ghcu.epochs", g.epochs, 1, integer=True)
    check_range("ghcu.batch_size", g.batch_size, 1, integer=True)
    check_range("ghcu.lr", g.lr, 0, lo_inclusive=False)
    check_range("ghcu.hidden", g.hidden, 1, integer=True)
    check_range("ghcu.drop_prob", g.drop_prob, 0, 1)
    check_range("ghcu.channel_dropout", g.channel_dropout, 0, 1)
    require(len(g.channels) > 0, "ghcu.channels is empty", "give at least one width, e.g. ghcu.channels=[64]")
    for i, c in enumerate(g.channels):
        check_range(f"ghcu.channels[{i}]", c, 1, integer=True)
    check_range("eval.threshold", cfg.eval.threshold, 0, lo_inclusive=False)
    check_range("eval.overlays", cfg.eval.overlays, 0, integer=True)
    check_range("eval.every", cfg.eval.every, 1, integer=True)
    d = cfg.data
    if d.name == "synthetic":
        for key in ("train_size", "test_size", "num_identities", "supersample"):
            check_range(f"data.{key}", d[key], 1, integer=True)
        check_range("data.noise", d.noise, 0)
        for key in ("yaw", "pitch", "roll", "occluder_size"):
            require(len(d[key]) == 2 and d[key][0] <= d[key][1], f"data.{key}={list(d[key])} is not a range [low, high]",
                    f"give data.{key}=[low,high] with low <= high")
        a = d.ambiguity
        for g_name in a.weak_groups:
            check_choice("data.ambiguity.weak_groups", g_name, sorted(LANDMARK_GROUPS))
        check_range("data.ambiguity.num_annotators", a.num_annotators, 1, integer=True)
        for key in ("bias_std", "tangent_std", "normal_std", "strong_std"):
            check_range(f"data.ambiguity.{key}", a[key], 0)
    else:
        check_range("data.box_scale", d.box_scale, 0, lo_inclusive=False)
        require(len(d.test_splits) > 0, "data.test_splits is empty", "name at least one test split")
        if d.name in KNOWN_SPLITS:
            for split in (d.train_split, *d.test_splits):
                check_choice(f"data split of {d.name}", split, KNOWN_SPLITS[d.name])
        if d.name == "300w":
            check_choice("data.box_source", d.box_source, ("landmarks", "detector", "ground_truth"))
        if d.name == "aflw":
            require(cfg.eval.norm == "box", f"eval.norm={cfg.eval.norm} is defined for 68 points, AFLW has 19",
                    "use eval.norm=box")
    w = cfg.weights
    require(w is None or Path(str(w)).expanduser().is_file(), f"weights={w!r} is not an existing file",
            "pass weights=null or weights=/path/to/hourglass.pt (a state dict or a checkpoint with a 'model' entry)")


class _Indices(Dataset):
    """Batches of indices: images and (searched) labels live in memory and are gathered per batch."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return i


def model_args(cfg, num_landmarks: int) -> dict:
    """Every value that defines the hourglass (checked on resume)."""
    m = cfg.model
    return {"name": m.name, "num_landmarks": num_landmarks, "num_stacks": m.num_stacks, "width": m.width,
            "depth": m.depth, "stride": m.stride}


def _images(x: torch.Tensor, device) -> torch.Tensor:
    return x.to(device, non_blocking=True).float().div_(255.0)


def load_weights(model: torch.nn.Module, path: str) -> None:
    """``weights=``: a state dict (or a checkpoint holding one under ``model``) of this hourglass."""
    state = torch.load(Path(path).expanduser(), map_location="cpu", weights_only=True)
    state = state.get("model", state) if isinstance(state, dict) else state
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise CheckpointError(f"weights={path} do not fit this hourglass ({first}); use weights of the same "
                              f"model.* settings, or weights=null") from None


# ------------------------------------------------------------------------------------ sharding


def _shard(n: int, dist) -> torch.Tensor:
    """The indices of ``range(n)`` this rank handles (all of them without DDP)."""
    if dist is None or not dist.enabled:
        return torch.arange(n)
    return torch.arange(dist.rank, n, dist.world_size)


def _gather(part: torch.Tensor, idx: torch.Tensor, n: int, dist) -> torch.Tensor:
    """Every rank's rows ``part`` (at rows ``idx``) assembled into one (n, ...) tensor on every rank."""
    if dist is None or not dist.enabled:
        return part
    pieces = [(i, p) for i, p in all_gather_objects((idx, part)) if len(i)]
    out = pieces[0][1].new_zeros(n, *pieces[0][1].shape[1:])
    for i, p in pieces:
        out[i] = p
    return out


def _sync_buffers(model: torch.nn.Module, dist) -> None:
    """Under DDP, give every rank rank 0's BatchNorm statistics before an eval-mode pass (each rank's last
    training batch updated its own copy), so every rank predicts what rank 0 would."""
    if dist is not None and dist.enabled:
        for b in unwrap(model).buffers():
            torch.distributed.broadcast(b, 0)


# ---------------------------------------------------------------------------------- inference


@torch.no_grad()
def predict_heatmaps(model, images: torch.Tensor, device, batch_size: int = 64) -> torch.Tensor:
    """Last-stack heatmaps of ``images`` (uint8, N x 3 x H x W) in eval mode, on the CPU."""
    model = unwrap(model)
    was = model.training
    model.eval()
    out = [model(_images(images[i:i + batch_size], device), last_only=True)[-1].float().cpu()
           for i in range(0, len(images), batch_size)]
    model.train(was)
    return (out[0] if len(out) == 1 else torch.cat(out)) if out else torch.zeros(0)


@torch.no_grad()
def predict_points(model, images: torch.Tensor, stride: int, device, dist=None, batch_size: int = 64) -> torch.Tensor:
    """Decoded landmarks (image px) of ``images``; under DDP each rank predicts its share, all get all."""
    idx = _shard(len(images), dist)
    pts = to_image(decode(predict_heatmaps(model, images[idx], device, batch_size)), stride) if len(idx) else None
    return _gather(pts, idx, len(images), dist)


@torch.no_grad()
def search_labels(model, images, labels, scfg: SearchConfig, stride: int, device, annotated=None, dist=None,
                  batch_size: int = 64) -> torch.Tensor:
    """One latent-GT search pass over a set: labels (image px) -> searched labels (image px).

    ``scfg.chunk`` images at a time (their heatmaps, then the search), so memory does not grow with the
    set. Points without annotation (``annotated`` False) keep their label. Under DDP each rank searches
    its share of the images and every rank receives the whole result."""
    idx = _shard(len(images), dist)
    parts, ws = [], Workspace()  # the search's buffers serve every chunk
    for i in range(0, len(idx), scfg.chunk):
        j = idx[i:i + scfg.chunk]
        hm = predict_heatmaps(model, images[j], device, batch_size)
        y = to_image(latent_search(hm, to_heatmap(labels[j], stride), scfg, workspace=ws), stride)
        parts.append(y if annotated is None else torch.where(annotated[j, :, None], y, labels[j]))
    return _gather(torch.cat(parts) if parts else None, idx, len(images), dist)


# ------------------------------------------------------------------------------------ metrics


def _weak(cfg) -> torch.Tensor:
    groups = tuple(cfg.data.ambiguity.weak_groups) if "ambiguity" in cfg.data else DEFAULT_WEAK
    return torch.from_numpy(weak_mask(groups))


def landmark_errors(pred, gt, cfg, boxes=None, prefix="", mask=None) -> dict[str, float]:
    """NME summary (``eval.norm``) plus both 68-point normalisations and weak/strong-point NME.
    ``mask`` (N, K): the points that count (AFLW's unannotated points do not)."""
    out = {}
    errs = M.nme(pred, gt, cfg.eval.norm, boxes, mask)
    out.update(M.summary(errs.numpy(), cfg.eval.threshold, prefix))
    if gt.shape[1] == 68:
        out[f"{prefix}nme_io"] = float(M.nme(pred, gt, "inter_ocular", mask=mask).mean())
        out[f"{prefix}nme_ip"] = float(M.nme(pred, gt, "inter_pupil", mask=mask).mean())
        weak = _weak(cfg).expand(len(gt), -1)
        wm, sm = (weak, ~weak) if mask is None else (weak & mask, ~weak & mask)
        out[f"{prefix}nme_weak"] = float(M.nme(pred, gt, cfg.eval.norm, boxes, wm).mean())
        out[f"{prefix}nme_strong"] = float(M.nme(pred, gt, cfg.eval.norm, boxes, sm).mean())
    return out


def label_error(labels, exact, cfg, mask=None) -> dict[str, float]:
    """Distance of the current training labels to the exact landmarks (synthetic only)."""
    e = landmark_errors(labels, exact, cfg, prefix="label_", mask=mask)
    return {k: v for k, v in e.items() if k in ("label_nme", "label_nme_weak", "label_nme_strong")}


def _prefix(split: str, synthetic: bool) -> str:
    if synthetic:
        return {"test": "test_", "occluded": "occ_"}[split]
    return f"test_{split}_"


def evaluate(model, tests: dict, cfg, device, stride: int, dist=None) -> tuple[dict[str, float], dict]:
    """Metrics of the hourglass on every test split (and its predictions, image px, per split)."""
    synthetic = cfg.data.name == "synthetic"
    metrics, preds = {}, {}
    for split, t in tests.items():
        p = predict_points(model, t["images"], stride, device, dist)
        preds[split] = p
        metrics.update(landmark_errors(p, t["landmarks"], cfg, t["boxes"], _prefix(split, synthetic), t["annotated"]))
    return metrics, preds


# ---------------------------------------------------------------------------------------- GHCU


def train_ghcu(hg, train, labels, cfg, device, stride: int, seed: int) -> torch.nn.Module:
    """Fit the GHCU on the frozen hourglass's training heatmaps (channel dropout as augmentation),
    supervised by the current (searched) labels; points without annotation are left out of the loss."""
    hm = predict_heatmaps(hg, train["images"], device)
    n, k, h, w = hm.shape
    target = to_unit(to_heatmap(labels, stride), (h, w))
    weight = train["annotated"].float()[..., None]
    g = cfg.ghcu
    ghcu = build_ghcu(k, h, g.channels, g.hidden).to(device)
    amp = Amp(cfg.amp, torch.device(device))
    opt = torch.optim.Adam(ghcu.parameters(), lr=g.lr)
    steps = g.epochs * math.ceil(n / g.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
    gen = torch.Generator().manual_seed(seed + 7)
    ghcu.train()
    for _ in range(g.epochs):
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n, g.batch_size):
            idx = perm[i:i + g.batch_size]
            drop = (torch.rand(len(idx), 1, generator=gen) < g.drop_prob) & \
                   (torch.rand(len(idx), k, generator=gen) < g.channel_dropout)
            x = hm[idx] * (~drop)[..., None, None]
            with amp.autocast():
                out = ghcu(x.to(device))
            wt = weight[idx].to(device)
            loss = ((out.float() - target[idx].to(device)) ** 2 * wt).sum() / wt.sum().clamp_min(1) / 2
            opt.zero_grad(set_to_none=True)
            amp.backward(loss)
            amp.step(opt)
            sched.step()
    ghcu.eval()
    return ghcu


@torch.no_grad()
def ghcu_predict(ghcu, heatmaps: torch.Tensor, stride: int, device) -> torch.Tensor:
    """GHCU landmarks (image px) from the hourglass's heatmaps."""
    size = heatmaps.shape[-2:]
    out = torch.cat([ghcu(heatmaps[i:i + 256].to(device)).float().cpu() for i in range(0, len(heatmaps), 256)])
    return to_image(from_unit(out, size), stride)


def save_overlays(images, preds: dict[str, torch.Tensor], gt, path: Path, n: int = 16) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(n, len(images))
    if n == 0:
        return None
    cols = int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2 * cols, 2 * rows))
    colours = ["red", "cyan", "yellow"]
    for i, ax in enumerate(np.atleast_1d(axes).flat):
        ax.axis("off")
        if i >= n:
            continue
        ax.imshow(images[i].permute(1, 2, 0).numpy())
        ax.scatter(gt[i, :, 0], gt[i, :, 1], s=3, c="lime", label="exact")
        for c, (name, p) in zip(colours, preds.items()):
            ax.scatter(p[i, :, 0], p[i, :, 1], s=3, c=c, marker="x", linewidths=0.6, label=name)
    np.atleast_1d(axes).flat[0].legend(fontsize=5, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------ fit


def fit(cfg: DictConfig, out_dir: str | Path) -> dict[str, float]:
    validate(cfg)
    ctx = start_run(cfg, out_dir)
    device, dist = ctx.device, ctx.dist

    # data (in memory): train images + labels (ambiguous for synthetic), exact test labels
    train, tests = build_data(cfg.data)
    n, k = train["labels"].shape[:2]
    stride, size = cfg.model.stride, cfg.data.image_size
    hm_size = (size // stride, size // stride)
    synthetic = cfg.data.name == "synthetic"
    exact = train["landmarks"] if synthetic else None
    annotated = train["annotated"]

    # model, optimiser, schedule
    margs = model_args(cfg, k)
    model = build_model(margs["name"], channels_last=cfg.model.channels_last,
                        **{key: v for key, v in margs.items() if key != "name"})
    if cfg.weights:
        load_weights(model, cfg.weights)
    model.to(device)
    opt_cls = {"adam": torch.optim.Adam, "rmsprop": torch.optim.RMSprop}[cfg.optim.name]
    optimizer = opt_cls(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    steps_per_epoch = math.ceil(math.ceil(n / dist.world_size) / cfg.batch_size)
    total_steps = cfg.epochs * steps_per_epoch
    if cfg.optim.schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(total_steps, 1))
    else:
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    scfg = SearchConfig(**{key: v for key, v in cfg.search.items() if key not in ("enabled", "start_epoch", "every")})

    # resume: weights, optimiser, schedule, RNG, and the current (searched) labels
    labels = train["labels"].clone()
    searched: list[int] = []
    ckpt = maybe_resume(cfg.resume, ctx.run_dir, model, optimizer, scheduler, expect=margs)
    start_epoch, step = 0, 0
    if ckpt is not None:
        ctx.amp.load_state_dict(ckpt.get("amp"))
        start_epoch, step = ckpt["epoch"], ckpt["step"]
        labels, searched = ckpt["labels"].clone(), list(ckpt["searched"])
        ctx.metrics.truncate_after("step", step)
    elif exact is not None:
        ctx.metrics.log(epoch=0, step=0, **label_error(labels, exact, cfg, annotated))
    if dist.enabled:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    metrics: dict[str, float] = {}
    stopped = False
    max_steps = cfg.max_steps if cfg.max_steps is not None else total_steps
    for epoch in range(start_epoch, cfg.epochs):
        if step >= max_steps:
            stopped = True
            break
        # E-step: search the latent labels with the network fixed (each pass starts from the previous y)
        s = cfg.search
        if s.enabled and epoch >= s.start_epoch and (epoch - s.start_epoch) % s.every == 0 and epoch not in searched:
            _sync_buffers(model, dist)
            before = labels
            labels = search_labels(model, train["images"], labels, scfg, stride, device, annotated, dist)
            searched.append(epoch)
            moved = float(M.nme(labels, before, "box" if k != 68 else "inter_ocular",
                                train["boxes"] if k != 68 else None, annotated).mean())
            info = {"label_shift": moved, **(label_error(labels, exact, cfg, annotated) if exact is not None else {})}
            log.info("epoch %d: latent-GT search pass %d %s", epoch, len(searched), {a: round(b, 4) for a, b in info.items()})
            ctx.metrics.log(epoch=epoch, step=step, search_pass=len(searched), **info)
        # M-step: heatmap regression on the current labels
        skip = step - epoch * steps_per_epoch
        loader = epoch_loader(_Indices(n), cfg.batch_size, shuffle=True, seed=cfg.seed, epoch=epoch, dist=dist,
                              num_workers=cfg.num_workers, skip_batches=skip)
        model.train()
        progress = Progress(steps_per_epoch, f"epoch {epoch + 1}/{cfg.epochs}", enabled=ctx.is_main, start=skip)
        loss_sum, seen = 0.0, 0
        for idx in loader:
            x = _images(train["images"][idx], device)
            target = gaussian_heatmaps(to_heatmap(labels[idx], stride), hm_size, cfg.heatmap.sigma).to(device)
            with ctx.amp.autocast():
                outs = model(x)
            loss = heatmap_loss(outs, target, annotated[idx].to(device))
            optimizer.zero_grad(set_to_none=True)
            ctx.amp.backward(loss)
            ctx.amp.step(optimizer)
            scheduler.step()
            step += 1
            loss_sum, seen = loss_sum + loss.item(), seen + 1
            progress.update(loss=loss.item())
            if step >= max_steps:
                break
        done = step % steps_per_epoch == 0 or step >= total_steps  # the epoch finished (not cut by max_steps)
        epoch_done = epoch + 1 if done else epoch
        if done and (epoch_done % cfg.eval.every == 0 or epoch_done == cfg.epochs):
            _sync_buffers(model, dist)
            metrics, _ = evaluate(model, tests, cfg, device, stride, dist)
            metrics["train_loss"] = loss_sum / max(seen, 1)
            ctx.metrics.log(epoch=epoch_done, step=step, lr=scheduler.get_last_lr()[0], **metrics)
            log.info("epoch %d: %s", epoch_done, {key: round(v, 4) for key, v in metrics.items() if "nme" in key})
        save_training_state(ctx.run_dir / "last.pt", ctx, model=model, optimizer=optimizer, scheduler=scheduler,
                            step=step, epoch=epoch_done, cfg=cfg, model_args=margs, labels=labels, searched=searched,
                            amp=ctx.amp.state_dict())
        if not done:
            stopped = True
            log.info("stopped at max_steps=%d (epoch %d, step %d); resume continues from here", max_steps, epoch, step)
            break

    result: dict = {"step": step, "epoch": min(step // steps_per_epoch, cfg.epochs), "search_passes": len(searched)}
    if stopped or not ctx.is_main:
        return {**result, **metrics}
    # final evaluation of the hourglass on every test split, then the GHCU on its frozen heatmaps
    hg = unwrap(model)
    metrics, preds = evaluate(hg, tests, cfg, device, stride)
    result.update(metrics)
    if exact is not None:
        result.update(label_error(labels, exact, cfg, annotated))
    methods = {split: {"HG": p} for split, p in preds.items()}
    if cfg.ghcu.enabled:
        ghcu = train_ghcu(hg, train, labels, cfg, device, stride, cfg.seed)
        save_checkpoint({"model": ghcu.state_dict(), "model_args": {"num_landmarks": k, "heatmap_size": hm_size[0],
                                                                     "channels": list(cfg.ghcu.channels),
                                                                     "hidden": cfg.ghcu.hidden}},
                        ctx.run_dir / "ghcu.pt")
        for split, t in tests.items():
            p = ghcu_predict(ghcu, predict_heatmaps(hg, t["images"], device), stride, device)
            methods[split]["GHCU"] = p
            result.update(landmark_errors(p, t["landmarks"], cfg, t["boxes"], _prefix(split, synthetic) + "ghcu_",
                                          t["annotated"]))
    if "occluded" in tests:  # synthetic occluders: error on the points they hide
        t = tests["occluded"]
        hidden = ~t["visible"] & t["annotated"]
        for name, p in methods["occluded"].items():
            tag = "" if name == "HG" else "ghcu_"
            result[f"occ_{tag}nme_hidden"] = float(M.nme(p, t["landmarks"], cfg.eval.norm, t["boxes"], hidden).mean())
        save_overlays(t["images"], methods["occluded"], t["landmarks"], ctx.run_dir / "overlays_occluded.png",
                      cfg.eval.overlays)
    first = next(iter(tests))
    save_overlays(tests[first]["images"], methods[first], tests[first]["landmarks"], ctx.run_dir / "overlays.png",
                  cfg.eval.overlays)
    errors = {f"{split}/{name}": M.nme(p, tests[split]["landmarks"], cfg.eval.norm, tests[split]["boxes"],
                                        tests[split]["annotated"]).numpy()
              for split, per in methods.items() for name, p in per.items()}
    np.savez(ctx.run_dir / "test_errors.npz", **errors)
    M.plot_ced({name: errors[f"{first}/{name}"] for name in methods[first]}, ctx.run_dir / "ced.png",
               cfg.eval.threshold, f"CED ({cfg.data.name} {first}, NME / {cfg.eval.norm})")
    (ctx.run_dir / "final_metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    log.info("final (%s, NME / %s): %s", cfg.data.name, cfg.eval.norm,
             {key: round(v, 4) if isinstance(v, float) else v for key, v in result.items()})
    log.info("run dir: %s", ctx.run_dir)
    return result


@hydra_main(config_name="train")
def main(cfg: DictConfig) -> None:
    fit(cfg, hydra_run_dir())


if __name__ == "__main__":
    main()
