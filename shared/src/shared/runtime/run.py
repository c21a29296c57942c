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
from shared.runtime.device import resolve_device
from shared.runtime.dist import DistInfo, init_distributed, unwrap
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

    @property
    def is_main(self) -> bool:
        return self.dist.is_main


def start_run(cfg: Any, run_dir: str | os.PathLike, device: str = "auto", seed: int = 0) -> RunContext:
    """Resolve the device, initialise DDP under torchrun, seed (``seed + rank``), and on rank 0
    create ``run_dir`` with ``config.yaml``, ``env.json``, ``train.log`` and ``metrics.csv``."""
    import yaml

    run_dir = Path(run_dir)
    dev = resolve_device(device)
    info = init_distributed(dev)
    effective_seed = seed_everything(seed, info.rank)
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        setup_file_logging(run_dir)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(to_plain(cfg), sort_keys=False))
        write_environment_report(run_dir)
    log.info("run dir %s | device %s | world size %d | seed %d", run_dir, dev, info.world_size, effective_seed)
    return RunContext(run_dir, dev, info, effective_seed, CSVLogger(run_dir / "metrics.csv", enabled=info.is_main))


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
    """Everything needed to resume exactly, as plain types."""
    state = {
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "step": int(step),
        "epoch": int(epoch),
        "config": to_plain(cfg),
        "model_args": dict(model_args or {}),
        "versions": versions(),
        "rng": rng_state(),
    }
    state.update(extra)
    return state


def save_training_state(path: str | os.PathLike, ctx: RunContext | None = None, **kwargs: Any) -> None:
    """Atomically write :func:`training_state` (rank 0 only)."""
    if ctx is None or ctx.is_main:
        save_checkpoint(training_state(**kwargs), path)


def maybe_resume(resume: Any, run_dir: str | os.PathLike, model: torch.nn.Module, optimizer=None,
                 scheduler=None, expect: dict | None = None, map_location: Any = "cpu") -> dict[str, Any] | None:
    """If ``resume`` points at a checkpoint (``auto`` -> ``run_dir/last.pt``), load model, optimizer,
    scheduler and RNG state from it and return the checkpoint dict; otherwise return None."""
    path = find_resume(resume, run_dir)
    if path is None:
        return None
    ckpt = load_checkpoint(path, map_location=map_location, expect=expect)
    unwrap(model).load_state_dict(ckpt["model"])
    if optimizer is not None and ckpt.get("optimizer") is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
    if scheduler is not None and ckpt.get("scheduler") is not None:
        scheduler.load_state_dict(ckpt["scheduler"])
    if ckpt.get("rng") is not None:
        set_rng_state(ckpt["rng"])
    log.info("resumed from %s at epoch %d, step %d", path, ckpt["epoch"], ckpt["step"])
    return ckpt


def hydra_run_dir() -> Path:
    """The run directory Hydra created for this job (``hydra.run.dir``); we never ``chdir``."""
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)
