"""torchrun / DistributedDataParallel set-up and small collective helpers.

Everything here also works without torchrun (world size 1), so training code calls the same
functions in both cases. Only rank 0 writes files: guard writes with :func:`is_main_process`.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def init_distributed(device: torch.device | None = None, backend: str | None = None) -> DistInfo:
    """Initialise the default process group when launched by torchrun (``WORLD_SIZE`` > 1).

    Backend: NCCL for CUDA devices, gloo otherwise. Returns the rank information either way.
    """
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world > 1 and not dist.is_initialized():
        if backend is None:
            backend = "nccl" if device is not None and device.type == "cuda" else "gloo"
        if device is not None and device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))
    return get_dist_info()


def get_dist_info() -> DistInfo:
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank())
    return DistInfo(0, 1, 0)


def is_main_process() -> bool:
    return get_dist_info().is_main


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def cleanup_distributed(barrier: bool = False) -> None:
    """Destroy the default process group (if any), after a barrier with ``barrier=True`` (every rank
    has finished its collectives before any rank closes its connections)."""
    if dist.is_available() and dist.is_initialized():
        if barrier:
            dist.barrier()
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks (in place on a copy); identity without DDP."""
    out = tensor.detach().clone()
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def all_gather_objects(obj):
    """``[obj of rank 0, obj of rank 1, ...]`` (picklable objects); ``[obj]`` without DDP. A collective."""
    if dist.is_available() and dist.is_initialized():
        out = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out
    return [obj]


def reduce_metrics(sums: dict[str, float], count: float, device: torch.device | str = "cpu") -> dict[str, float]:
    """Turn per-rank metric *sums* and a per-rank sample ``count`` into global means.

    Summing first and dividing once gives the exact global mean even when ranks saw different
    numbers of samples (the last, uneven batch of a DistributedSampler).
    """
    keys = sorted(sums)
    packed = torch.tensor([float(sums[k]) for k in keys] + [float(count)], dtype=torch.float64, device=device)
    packed = all_reduce_sum(packed)
    total = packed[-1].item()
    return {k: (packed[i].item() / total if total else float("nan")) for i, k in enumerate(keys)}


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside DDP / torch.compile wrappers."""
    while True:
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model
