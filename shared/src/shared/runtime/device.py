"""Device resolution and mixed-precision helpers."""

from __future__ import annotations

import contextlib

import torch


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """Turn ``auto|cpu|cuda|cuda:<i>|mps`` into a :class:`torch.device`.

    ``auto`` picks CUDA (the local rank's GPU under torchrun), then MPS, then CPU. Asking for a device
    that is not available is an error, not a silent fallback: a run that was meant for a GPU should
    not quietly take a week on the CPU.
    """
    if isinstance(spec, torch.device):
        return spec
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            from shared.runtime.dist import local_rank

            return torch.device("cuda", local_rank() % torch.cuda.device_count())
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError(
                f"device={spec!r} was requested but CUDA is not available "
                f"(torch {torch.__version__}, built for CUDA {torch.version.cuda}). "
                "Use device=auto or device=cpu."
            )
        if spec == "cuda":
            from shared.runtime.dist import local_rank

            return torch.device("cuda", local_rank() % torch.cuda.device_count())
        index = int(spec.split(":", 1)[1])
        if index >= torch.cuda.device_count():
            raise RuntimeError(f"device={spec!r} but only {torch.cuda.device_count()} CUDA device(s) exist.")
        return torch.device("cuda", index)
    if spec == "mps":
        if not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
            raise RuntimeError("device='mps' was requested but MPS is not available. Use device=auto or cpu.")
        return torch.device("mps")
    raise ValueError(f"Unknown device {spec!r}: expected one of auto, cpu, cuda, cuda:<index>, mps.")


def autocast(device: torch.device, enabled: bool = True, dtype: str | torch.dtype | None = None):
    """Autocast context for ``device``; a no-op when disabled.

    Defaults to bfloat16 on CPU and float16 on CUDA (pair float16 with :func:`grad_scaler`).
    """
    if not enabled:
        return contextlib.nullcontext()
    if isinstance(dtype, str):
        dtype = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16,
                 "float16": torch.float16}[dtype]
    if dtype is None:
        dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(device: torch.device, enabled: bool = True) -> torch.amp.GradScaler:
    """A GradScaler that is only active for float16 AMP on CUDA."""
    return torch.amp.GradScaler(device.type, enabled=enabled and device.type == "cuda")
