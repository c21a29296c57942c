"""The pieces every package's ``fit()`` uses to start a run, load data reproducibly, and
save/restore training state. They are helpers, not a framework: ``fit()`` stays readable top to
bottom in each package (torchvision-references style)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from shared.runtime.checkpoint import find_resume, load_checkpoint, save_checkpoint, versions
from shared.runtime.device import AMP_CHOICES, Amp, resolve_device
from shared.runtime.dist import DistInfo, all_gather_objects, get_dist_info, init_distributed, unwrap
from shared.runtime.logging import CSVLogger, setup_file_logging, write_environment_report
from shared.runtime.seed import make_generator, rng_state, seed_everything, seed_worker, set_rng_state

log = logging.getLogger("repro")


def to_plain(cfg: Any) -> Any:
    """An OmegaConf config (or anything) as plain Python types, interpolations resolved."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(cfg, (DictConfig, ListConfig)):
            return OmegaConf.to_container(cfg, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    return cfg


@dataclass
class RunContext:
    run_dir: Path
    device: torch.device
    dist: DistInfo
    seed: int
    metrics: CSVLogger
    amp: Amp

    @property
    def is_main(self) -> bool:
        return self.dist.is_main


def runs_root(*parts: str | os.PathLike) -> Path:
    """Where run directories go: ``$REPRO_RUNS`` (default ``./runs``), joined with ``parts``. The one place
    that reads ``REPRO_RUNS`` (Hydra configs use the same default through ``${oc.env:REPRO_RUNS,runs}``)."""
    return Path(os.environ.get("REPRO_RUNS") or "runs").expanduser().joinpath(*parts)


def check_runtime(cfg: Any) -> None:
    """Validate the shared runtime block (``seed, device, threads, amp, num_workers, max_steps``) and raise
    :class:`~shared.errors.ConfigError` on the first bad value. :func:`start_run` calls it first."""
    from shared.errors import ConfigError, check_range

    get = cfg.get if hasattr(cfg, "get") else (lambda k, d=None: getattr(cfg, k, d))
    check_range("seed", get("seed", 0), 0, integer=True)
    check_range("threads", get("threads"), 1, integer=True, allow_none=True)
    check_range("num_workers", get("num_workers", 0), 0, integer=True)
    check_range("max_steps", get("max_steps"), 1, integer=True, allow_none=True)
    amp = get("amp", False)
    if amp not in AMP_CHOICES and str(amp).lower() not in ("false", "true", "fp16", "bf16", "float16", "bfloat16"):
        raise ConfigError(f"amp={amp!r} is not a precision setting; use amp=false, true, fp16 or bf16")
    for legacy, key in (("num_threads", "threads"),):
        if get(legacy) is not None:
            raise ConfigError(f"{legacy}={get(legacy)!r} is the old spelling; use {key}=")


def start_run(cfg: Any, run_dir: str | os.PathLike, device: str | None = None, seed: int | None = None,
              amp_supported: bool | str = True) -> RunContext:
    """Validate and apply the runtime block, then set up the run.

    Reads ``threads`` (``torch.set_num_threads``), ``device``, ``seed`` and ``amp`` from ``cfg`` (the
    arguments override them), resolves the device, initialises DDP under torchrun, seeds (``seed + rank``),
    and on rank 0 creates ``run_dir`` with ``config.yaml``, ``env.json``, ``train.log`` and ``metrics.csv``.
    ``amp_supported``: ``True``, or a string saying why this package cannot run mixed precision; then
    ``amp`` set to anything but false is a :class:`~shared.errors.ConfigError` (never a silent no-op).
    """
    import yaml

    from shared.errors import ConfigError

    get = cfg.get if hasattr(cfg, "get") else (lambda k, d=None: getattr(cfg, k, d))
    check_runtime(cfg)
    if get("threads"):
        torch.set_num_threads(int(get("threads")))
    run_dir = Path(run_dir)
    dev = resolve_device(device if device is not None else get("device", "auto"))
    amp = Amp(get("amp", False), dev)
    if amp.enabled and amp_supported is not True:
        raise ConfigError(f"amp={get('amp')!r} cannot be honoured here: {amp_supported}; use amp=false")
    info = init_distributed(dev)
    effective_seed = seed_everything(seed if seed is not None else get("seed", 0), info.rank)
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        setup_file_logging(run_dir)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(to_plain(cfg), sort_keys=False))
        write_environment_report(run_dir)
    log.info("run dir %s | device %s | world size %d | seed %d | threads %d | amp %s", run_dir, dev,
             info.world_size, effective_seed, torch.get_num_threads(), amp.dtype or "off")
    return RunContext(run_dir, dev, info, effective_seed, CSVLogger(run_dir / "metrics.csv", enabled=info.is_main), amp)


class _SkipSampler(Sampler):
    """Wraps a sampler and drops its first ``skip`` indices (mid-epoch resume)."""

    def __init__(self, sampler: Sampler, skip: int):
        self.sampler, self.skip = sampler, skip

    def __iter__(self) -> Iterator[int]:
        for i, idx in enumerate(self.sampler):
            if i >= self.skip:
                yield idx

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.skip)


def epoch_loader(dataset: Dataset, batch_size: int, *, shuffle: bool, seed: int, epoch: int = 0,
                 dist: DistInfo | None = None, num_workers: int = 0, drop_last: bool = False,
                 skip_batches: int = 0, collate_fn=None, pin_memory: bool = False) -> DataLoader:
    """A DataLoader whose order depends only on ``(seed, epoch)``, so a resumed run sees exactly the
    batches an uninterrupted run would have seen. Under DDP it shards with a DistributedSampler.
    ``skip_batches`` drops the batches already consumed in this epoch before a resume."""
    if dist is not None and dist.enabled:
        sampler: Sampler = DistributedSampler(dataset, num_replicas=dist.world_size, rank=dist.rank,
                                              shuffle=shuffle, seed=seed, drop_last=drop_last)
        sampler.set_epoch(epoch)
    elif shuffle:
        sampler = torch.utils.data.RandomSampler(dataset, generator=make_generator(seed * 100003 + epoch))
    else:
        sampler = torch.utils.data.SequentialSampler(dataset)
    if skip_batches:
        sampler = _SkipSampler(sampler, skip_batches * batch_size)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      drop_last=drop_last, collate_fn=collate_fn, pin_memory=pin_memory,
                      worker_init_fn=seed_worker, generator=make_generator(seed + epoch),
                      persistent_workers=False)


def training_state(model: torch.nn.Module, optimizer=None, scheduler=None, *, step: int, epoch: int,
                   cfg: Any = None, model_args: dict | None = None, **extra: Any) -> dict[str, Any]:
    """Everything needed to resume exactly, as plain types. Under DDP this is a collective (it gathers every
    rank's RNG state): call it on every rank."""
    per_rank = all_gather_objects(rng_state())
    state = {
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "step": int(step),
        "epoch": int(epoch),
        "config": to_plain(cfg),
        "model_args": to_plain(dict(model_args or {})),
        "versions": versions(),
        "rng": per_rank[0],
        "rng_per_rank": per_rank,
        "world_size": len(per_rank),
    }
    state.update(extra)
    return state


def save_training_state(path: str | os.PathLike, ctx: RunContext | None = None, **kwargs: Any) -> None:
    """Atomically write :func:`training_state`. Call it on EVERY rank: all ranks contribute their RNG state
    (so each one resumes its own stream), and only rank 0 writes the file."""
    state = training_state(**kwargs)
    if ctx is None or ctx.is_main:
        save_checkpoint(state, path)


def maybe_resume(resume: Any, run_dir: str | os.PathLike, model: torch.nn.Module, optimizer=None,
                 scheduler=None, expect: dict | None = None, map_location: Any = "cpu") -> dict[str, Any] | None:
    """If ``resume`` points at a checkpoint (``auto`` -> ``run_dir/last.pt``), check it is of this model
    (``expect``: the ``model_args`` this run has; a mismatch is a one-line CheckpointError), load model,
    optimizer, scheduler and this rank's own RNG state from it and return the checkpoint dict; otherwise
    return None."""
    path = find_resume(resume, run_dir)
    if path is None:
        return None
    ckpt = load_checkpoint(path, map_location=map_location, expect=to_plain(expect) if expect else None)
    unwrap(model).load_state_dict(ckpt["model"])
    if optimizer is not None and ckpt.get("optimizer") is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
    if scheduler is not None and ckpt.get("scheduler") is not None:
        scheduler.load_state_dict(ckpt["scheduler"])
    restore_rng(ckpt)
    log.info("resumed from %s at epoch %d, step %d", path, ckpt["epoch"], ckpt["step"])
    return ckpt


def restore_rng(ckpt: dict[str, Any]) -> None:
    """Restore this rank's own RNG state from a checkpoint of :func:`training_state`. When the world size
    changed since it was written, each rank is re-seeded from (its seed, rank, step) instead, with a warning:
    the run continues reproducibly, but not bit-identically to an uninterrupted one."""
    info = get_dist_info()
    per_rank = ckpt.get("rng_per_rank")
    if per_rank is not None and len(per_rank) == info.world_size:
        set_rng_state(per_rank[info.rank])
    elif per_rank is None and info.world_size == 1 and ckpt.get("rng") is not None:
        set_rng_state(ckpt["rng"])
    else:
        have = len(per_rank) if per_rank is not None else 1
        base = int((ckpt.get("config") or {}).get("seed", 0) or 0)
        seed_everything(base + 7919 * int(ckpt.get("step", 0)), info.rank)
        log.warning("checkpoint holds RNG states of %d rank(s) but this run has %d: re-seeded each rank from "
                    "(seed, rank, step); the continuation is reproducible but not identical to an uninterrupted run",
                    have, info.world_size)


def hydra_run_dir() -> Path:
    """The run directory Hydra created for this job (``hydra.run.dir``); we never ``chdir``."""
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)
