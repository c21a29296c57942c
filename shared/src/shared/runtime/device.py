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
    from shared.errors import ConfigError

    spec = str(spec or "auto").strip().lower()
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
            raise ConfigError(
                f"device={spec!r} was requested but CUDA is not available "
                f"(torch {torch.__version__}, built for CUDA {torch.version.cuda}); "
                "use device=auto or device=cpu"
            )
        if spec == "cuda":
            from shared.runtime.dist import local_rank

            return torch.device("cuda", local_rank() % torch.cuda.device_count())
        try:
            index = int(spec.split(":", 1)[1])
        except ValueError:
            raise ConfigError(f"device={spec!r} is not a device; use cuda or cuda:<index>") from None
        if index >= torch.cuda.device_count():
            raise ConfigError(f"device={spec!r} but only {torch.cuda.device_count()} CUDA device(s) exist; "
                              f"use device=cuda:0..cuda:{torch.cuda.device_count() - 1} or device=auto")
        return torch.device("cuda", index)
    if spec == "mps":
        if not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
            raise ConfigError("device='mps' was requested but MPS is not available; use device=auto or device=cpu")
        return torch.device("mps")
    raise ConfigError(f"device={spec!r} is not a device; use one of auto, cpu, cuda, cuda:<index>, mps")


AMP_CHOICES = (False, True, "fp16", "bf16")


def amp_dtype(spec: bool | str | None, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of an ``amp`` setting: ``false``/``null`` -> None (full precision), ``true`` ->
    float16 on CUDA and bfloat16 elsewhere, ``fp16``/``bf16`` -> that dtype. Anything else is a ConfigError."""
    from shared.errors import ConfigError

    if spec in (None, False, "false", "False", "none"):
        return None
    if spec in (True, "true", "True"):
        return torch.float16 if device.type == "cuda" else torch.bfloat16
    named = {"fp16": torch.float16, "float16": torch.float16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
    if isinstance(spec, str) and spec.lower() in named:
        return named[spec.lower()]
    raise ConfigError(f"amp={spec!r} is not a precision setting; use amp=false, true, fp16 or bf16")


class Amp:
    """Mixed precision for one run, built from the ``amp`` setting of the runtime block.

    ``with amp.autocast(): loss = ...`` then ``amp.backward(loss)`` and ``amp.step(optimizer)``. float16
    always runs with a GradScaler (loss scaling, inf/nan steps skipped); bfloat16 and full precision
    without one. ``state_dict``/``load_state_dict`` carry the scaler across a resume.
    """

    def __init__(self, spec: bool | str | None, device: torch.device):
        self.device = device
        self.dtype = amp_dtype(spec, device)
        self.enabled = self.dtype is not None
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.dtype == torch.float16)

    def autocast(self):
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor, **kwargs) -> None:
        self.scaler.scale(loss).backward(**kwargs)

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        """Unscale the gradients in place (before clipping them)."""
        self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """``optimizer.step()`` through the scaler (skipped when fp16 gradients overflowed), then update it."""
        self.scaler.step(optimizer)
        self.scaler.update()

    def state_dict(self) -> dict:
        return self.scaler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.scaler.load_state_dict(state)


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
