"""The active-learning loop, as the official GradNorm code runs it, with exact mid-loop resume.

Under torchrun (``torchrun --nproc-per-node N -m gradnorm_al.train ...``) every cycle's training runs under
DistributedDataParallel (the labelled pool is sharded by a DistributedSampler, ``batch_size`` per process)
and the candidate pool's scoring is sharded over the ranks and gathered, so all ranks select the same samples
(the selection a single process makes from the same model). Only rank 0 writes files.

For each trial: a random initial labelled pool; then for each cycle: train on the labelled pool
(optimiser and LR schedule created afresh each cycle; the model continues from the previous cycle
unless ``al.reinit=true``), evaluate on the test set, score a random ``al.subset`` of the unlabelled
pool with the strategy and label its top ``al.budget``. Every random choice is derived from
``(seed, trial, cycle, epoch, batch)``, and a checkpoint (``last.pt``, atomic) is written after every
epoch and after every cycle's selection, so an interrupted run continues exactly.

Run directory: ``config.yaml``, ``metrics.csv`` (per epoch), ``al_curve.csv`` (per cycle),
``selections.jsonl`` (per cycle: selected train-pool indices), ``final_metrics.json``,
``al_curve.png``, ``last.pt``.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from shared.cli import hydra_main
from shared.errors import ConfigError, check_choice, check_range, require
from shared.metrics import mean_std
from shared.runtime import (
    Progress,
    epoch_loader,
    hydra_run_dir,
    maybe_resume,
    save_training_state,
    start_run,
    unwrap,
)

from .data import DATASETS, ArrayData, augment, load_dataset
from .gradnorm import AGGREGATES, IMPLS
from .models import build_model, list_models
from .strategies import list_strategies, select

log = logging.getLogger("gradnorm_al")


# ------------------------------------------------------------------------------ seeds and pools


def derived_seed(*parts: int) -> int:
    """One 63-bit seed from a tuple of ints (NumPy's SeedSequence hashing)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint32).astype(np.uint64)
               .view(np.uint64)[0] >> np.uint64(1))


def initial_pool(n: int, size: int, seed: int, trial: int) -> list[int]:
    if not 0 < size <= n:
        raise ConfigError(f"al.init_size={size} is larger than the training pool ({n}); set al.init_size <= {n}")
    return np.random.default_rng([seed, trial, 0xA1]).permutation(n)[:size].tolist()


def candidate_subset(unlabelled: np.ndarray, subset: int | None, seed: int, trial: int, cycle: int) -> np.ndarray:
    """The official SUBSET trick: shuffle the unlabelled pool and score only its first ``subset``."""
    perm = np.random.default_rng([seed, trial, cycle, 0x5B]).permutation(len(unlabelled))
    chosen = unlabelled[perm]
    return chosen if subset is None or subset <= 0 else chosen[:subset]


class _Positions(torch.utils.data.Dataset):
    """A dataset of training-pool indices (the batch is gathered from the in-memory tensor)."""

    def __init__(self, positions: list[int]):
        self.positions = positions

    def __len__(self):
        return len(self.positions)

    def __getitem__(self, i):
        return self.positions[i]


# ---------------------------------------------------------------------------- train / evaluate


def validate(cfg: DictConfig) -> None:
    """Every name and value of the run, checked before any data is built or any step is trained."""
    import re

    check_choice("strategy", cfg.strategy, list_strategies())
    check_choice("model.name", cfg.model.name, list_models())
    check_choice("data.name", cfg.data.name, DATASETS)
    check_choice("optim.name", cfg.optim.name, ("sgd",))
    check_choice("gradnorm.impl", cfg.gradnorm.impl, IMPLS)
    check_choice("gradnorm.aggregate", cfg.gradnorm.aggregate, AGGREGATES)
    if cfg.gradnorm.params not in (None, "all"):
        try:
            re.compile(cfg.gradnorm.params)
        except re.error as e:
            raise ConfigError(f"gradnorm.params={cfg.gradnorm.params!r} is not a valid regex ({e}); use 'all' or a "
                              "regex on parameter names such as '^fc\\.'") from None
    for key, value, lo in (("epochs", cfg.epochs, 1), ("batch_size", cfg.batch_size, 1),
                           ("eval_batch_size", cfg.eval_batch_size, 1), ("al.init_size", cfg.al.init_size, 1),
                           ("al.budget", cfg.al.budget, 0), ("al.cycles", cfg.al.cycles, 1),
                           ("al.trials", cfg.al.trials, 1), ("gradnorm.chunk_size", cfg.gradnorm.chunk_size, 1),
                           ("augment.padding", cfg.augment.padding, 0)):
        check_range(key, value, lo, integer=True)
    check_range("al.subset", cfg.al.subset, 0, integer=True, allow_none=True)
    check_range("optim.lr", cfg.optim.lr, 0, lo_inclusive=False)
    check_range("optim.momentum", cfg.optim.momentum, 0, 1)
    check_range("optim.weight_decay", cfg.optim.weight_decay, 0)
    check_range("model.dropout", cfg.model.get("dropout", 0.0), 0, 1, hi_inclusive=False)
    if cfg.strategy == "bald":
        require(cfg.model.get("dropout", 0.0) > 0, f"strategy=bald needs MC dropout but model.dropout="
                f"{cfg.model.get('dropout', 0.0)}", "set model.dropout to a value in (0, 1), e.g. model.dropout=0.3")
        check_range("bald.mc_samples", cfg.bald.mc_samples, 2, integer=True)
    if cfg.data.name == "synthetic":
        check_range("data.n_train", cfg.data.n_train, 1, integer=True)
        require(cfg.al.init_size <= cfg.data.n_train, f"al.init_size={cfg.al.init_size} is larger than the "
                f"training pool (data.n_train={cfg.data.n_train})", "lower al.init_size or raise data.n_train")


def build_optim(cfg, model):
    o = cfg.optim
    check_choice("optim.name", o.name, ("sgd",))
    opt = torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(o.milestones), gamma=o.gamma)
    return opt, sched


@torch.no_grad()
def evaluate(model, data: ArrayData, device, batch_size: int = 512) -> dict[str, float]:
    model.eval()
    correct, loss, n = 0.0, 0.0, 0
    for s in range(0, len(data), batch_size):
        x = data.inputs(torch.arange(s, min(s + batch_size, len(data))), device)
        y = data.labels[s:s + batch_size].to(device)
        out = model(x)
        out = out[0] if isinstance(out, (tuple, list)) else out
        loss += F.cross_entropy(out, y, reduction="sum").item()
        correct += (out.argmax(1) == y).sum().item()
        n += len(y)
    return {"test_acc": 100.0 * correct / n, "test_loss": loss / n}


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_history(run_dir: Path, history: list[dict]) -> None:
    """``selections.jsonl`` (one line per cycle) and ``al_curve.csv``, rewritten from the checkpointed
    history so that a resumed run never duplicates or loses a line."""
    _write_atomic(run_dir / "selections.jsonl", "".join(json.dumps(h) + "\n" for h in history))
    lines = ["trial,cycle,n_labelled,test_acc,test_loss,select_seconds"]
    lines += [f"{h['trial']},{h['cycle']},{h['n_labelled']},{h['test_acc']:.4f},{h['test_loss']:.6f},"
              f"{h['select_seconds']:.3f}" for h in history]
    _write_atomic(run_dir / "al_curve.csv", "\n".join(lines) + "\n")


def curve_by_size(history: list[dict]) -> dict[int, list[float]]:
    out: dict[int, list[float]] = {}
    for h in history:
        out.setdefault(h["n_labelled"], []).append(h["test_acc"])
    return dict(sorted(out.items()))


def plot_curve(history: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = curve_by_size(history)
    xs = list(curve)
    ms = np.array([mean_std(v)[0] for v in curve.values()])
    sd = np.array([mean_std(v)[1] for v in curve.values()])
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(xs, ms, "o-")
    ax.fill_between(xs, ms - sd, ms + sd, alpha=0.25)
    ax.set_xlabel("labelled samples")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------------------------- fit


def fit(cfg: DictConfig, out_dir: str | os.PathLike) -> dict:
    t_start = time.perf_counter()
    validate(cfg)
    ctx = start_run(cfg, out_dir)
    device = ctx.device
    al = cfg.al
    rank, world = ctx.dist.rank, ctx.dist.world_size

    # data (whole pools in memory as uint8) ------------------------------------------------------
    train, test = load_dataset(cfg.data)
    train.images, test.images = train.images.to(device), test.images.to(device)
    n_pool = len(train)
    model_args = {"arch": cfg.model.name, "num_classes": train.num_classes,
                  **{f"model.{k}": v for k, v in cfg.model.items() if k != "name"}}
    model_kw = {k: v for k, v in cfg.model.items() if k != "name"}
    log.info("data %s: %d train / %d test, %d classes | strategy %s | %d trials x %d cycles",
             train.name, n_pool, len(test), train.num_classes, cfg.strategy, al.trials, al.cycles)

    init_state = None
    if cfg.weights:
        from shared.runtime import load_checkpoint

        path = Path(str(cfg.weights)).expanduser()
        if not path.is_file():
            raise ConfigError(f"weights={cfg.weights!r}: no such file; pass a state dict of {cfg.model.name} or weights=null")
        init_state = load_checkpoint(path)
        init_state = init_state.get("model", init_state) if isinstance(init_state, dict) else init_state

    def new_model(trial: int):
        torch.manual_seed(derived_seed(cfg.seed, trial, 0x4D))  # same init for every strategy (paired runs)
        model = build_model(cfg.model.name, train.num_classes, **model_kw).to(device)
        if init_state is not None:
            from shared.errors import CheckpointError

            try:
                model.load_state_dict(init_state)
            except RuntimeError as e:
                raise CheckpointError(f"weights={cfg.weights!r} do not fit {cfg.model.name} with "
                                      f"{train.num_classes} classes ({str(e).splitlines()[0]}); pass weights of this "
                                      "model") from None
        return model

    def trainable(model):
        """The model to train: DDP-wrapped under torchrun (gradients all-reduced), else itself."""
        if not ctx.dist.enabled:
            return model
        return torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    # resume point --------------------------------------------------------------------------------
    state = {"trial": 0, "cycle": 0, "epoch": 0, "epoch_step": 0, "step": 0, "labelled": None, "history": []}
    probe = new_model(0)
    probe_opt, probe_sched = build_optim(cfg, probe)
    ckpt = maybe_resume(cfg.resume, ctx.run_dir, probe, probe_opt, probe_sched, expect=model_args)
    if ckpt is not None:
        ctx.amp.load_state_dict(ckpt.get("amp"))
        al_state = ckpt["al_state"]
        state.update({k: al_state[k] for k in ("trial", "cycle", "epoch", "epoch_step", "history")})
        state["labelled"] = None if al_state["labelled"] is None else al_state["labelled"].tolist()
        state["step"] = ckpt["step"]
        ctx.metrics.truncate_after("step", ckpt["step"])
        log.info("resuming at trial %d cycle %d epoch %d (batch %d)", state["trial"], state["cycle"],
                 state["epoch"], state["epoch_step"])
    history: list[dict] = state["history"]
    step = state["step"]
    stopped = False

    def checkpoint(model, opt, sched, trial, cycle, epoch, epoch_step, labelled):
        # a collective under torchrun (every rank's RNG state is gathered); only rank 0 writes
        save_training_state(ctx.run_dir / "last.pt", ctx, model=model, optimizer=opt, scheduler=sched, step=step,
                            epoch=epoch, cfg=cfg, model_args=model_args, amp=ctx.amp.state_dict(),
                            al_state={"trial": trial, "cycle": cycle, "epoch": epoch, "epoch_step": epoch_step,
                                      "labelled": None if labelled is None else torch.tensor(labelled),
                                      "history": history})

    for trial in range(state["trial"], al.trials):
        resuming_trial = ckpt is not None and trial == state["trial"] and state["labelled"] is not None
        if resuming_trial:
            model, labelled = probe, state["labelled"]
        else:
            model = new_model(trial)
            labelled = initial_pool(n_pool, al.init_size, cfg.seed, trial)
        first_cycle = state["cycle"] if resuming_trial else 0

        for cycle in range(first_cycle, al.cycles):
            # a checkpoint at a cycle boundary (epoch 0, batch 0) starts the cycle afresh, as an uninterrupted run
            resuming_cycle = (resuming_trial and cycle == first_cycle
                              and (state["epoch"] > 0 or state["epoch_step"] > 0))
            if resuming_cycle:  # optimiser/scheduler/weights/RNG as checkpointed
                opt, sched = probe_opt, probe_sched
                first_epoch, skip = state["epoch"], state["epoch_step"]
            else:
                if cycle > 0 and al.reinit:
                    model = new_model(trial)  # option: re-initialise (the official code continues)
                opt, sched = build_optim(cfg, model)  # official: fresh optimiser + schedule every cycle
                first_epoch, skip = 0, 0
            cycle_seed = derived_seed(cfg.seed, trial, cycle) % 2**31

            # train on the labelled pool -----------------------------------------------------------
            net = trainable(model)
            for epoch in range(first_epoch, cfg.epochs):
                net.train()
                loader = epoch_loader(_Positions(labelled), cfg.batch_size, shuffle=True, seed=cycle_seed,
                                      epoch=epoch, dist=ctx.dist, skip_batches=skip)
                progress = Progress(len(loader) + skip, f"trial {trial} cycle {cycle} epoch {epoch + 1}/{cfg.epochs}",
                                    interval=30.0, logger=log, start=skip, enabled=ctx.is_main)
                epoch_step, loss_sum, seen = skip, 0.0, 0
                for idx in loader:
                    # augmentation drawn from (seed, trial, cycle, epoch, batch, rank): exact on resume
                    gen = torch.Generator().manual_seed(derived_seed(cycle_seed, epoch, epoch_step, rank))
                    x = train.normalise(augment(train.images[idx.to(device)], gen, cfg.augment.padding,
                                                cfg.augment.hflip))
                    y = train.labels[idx].to(device)
                    with ctx.amp.autocast():
                        out = net(x)
                        loss = F.cross_entropy(out[0] if isinstance(out, (tuple, list)) else out, y)
                    opt.zero_grad(set_to_none=True)
                    ctx.amp.backward(loss)
                    ctx.amp.step(opt)
                    step += 1
                    epoch_step += 1
                    loss_sum += loss.item() * len(y)
                    seen += len(y)
                    progress.update(loss=loss.item())
                    if cfg.max_steps is not None and step >= cfg.max_steps:
                        checkpoint(model, opt, sched, trial, cycle, epoch, epoch_step, labelled)
                        stopped = True
                        break
                if stopped:
                    break
                skip = 0
                sched.step()
                ctx.metrics.log(trial=trial, cycle=cycle, epoch=epoch + 1, step=step,
                                n_labelled=len(labelled), train_loss=loss_sum / max(seen, 1),
                                lr=opt.param_groups[0]["lr"])
                checkpoint(model, opt, sched, trial, cycle, epoch + 1, 0, labelled)
            if stopped:
                break

            # evaluate, then select the next batch (every rank: the same weights, the same selection) ------
            model = unwrap(net)
            metrics = evaluate(model, test, device)
            row = {"trial": trial, "cycle": cycle, "n_labelled": len(labelled), **metrics, "select_seconds": 0.0,
                   "selected": []}
            if cycle < al.cycles - 1:  # the official code also selects after the last cycle; unused, skipped
                mask = np.ones(n_pool, dtype=bool)
                mask[labelled] = False
                candidates = candidate_subset(np.flatnonzero(mask), al.subset, cfg.seed, trial, cycle)
                t0 = time.perf_counter()
                pos = select(model, train.inputs(candidates, device), min(al.budget, len(candidates)),
                             cfg.strategy, labelled=train.inputs(labelled, device) if cfg.strategy == "coreset" else None,
                             seed=derived_seed(cfg.seed, trial, cycle, 0x5E), batch_size=cfg.eval_batch_size,
                             device=device, mc_samples=cfg.bald.mc_samples, **dict(cfg.gradnorm))
                row["select_seconds"] = time.perf_counter() - t0
                row["selected"] = candidates[pos.numpy()].tolist()
                labelled = labelled + row["selected"]
            history.append(row)
            log.info("trial %d cycle %d: %d labelled -> test acc %.2f%% (selection %.1fs)", trial, cycle,
                     row["n_labelled"], row["test_acc"], row["select_seconds"])
            last_cycle = cycle == al.cycles - 1
            next_trial, next_cycle = (trial + 1, 0) if last_cycle else (trial, cycle + 1)
            checkpoint(model, opt, sched, next_trial, next_cycle, 0, 0, None if last_cycle else labelled)
            if ctx.is_main:
                write_history(ctx.run_dir, history)
        if stopped:
            break

    result = {"stopped_early": stopped, "step": step, "cycles_done": len(history),
              "wall_seconds": time.perf_counter() - t_start}
    if history:
        curve = curve_by_size(history)
        result.update({"final_test_acc": mean_std(list(curve.values())[-1])[0],
                       "curve": {str(k): mean_std(v)[0] for k, v in curve.items()}})
    if ctx.is_main:
        (ctx.run_dir / "final_metrics.json").write_text(json.dumps(result, indent=2) + "\n")
        if history and not stopped:
            plot_curve(history, ctx.run_dir / "al_curve.png",
                       f"{cfg.strategy} on {train.name} ({cfg.model.name}, {al.trials} trial(s))")
    log.info("final: %s | outputs in %s (al_curve.csv, selections.jsonl, al_curve.png, last.pt)",
             {k: (round(v, 2) if isinstance(v, float) else v) for k, v in result.items() if k != "curve"}, ctx.run_dir)
    return result


@hydra_main(config_name="train")
def main(cfg: DictConfig) -> None:
    fit(cfg, hydra_run_dir())


if __name__ == "__main__":
    main()
