"""Atomic checkpoint save and safe (``weights_only=True``) load.

A checkpoint holds plain types only::

    {model, optimizer, scheduler, step, epoch, config (plain dict), model_args, versions, ...}

``save_checkpoint`` writes to a temporary file in the same directory, fsyncs it and moves it over
the target with ``os.replace``, so a run killed mid-write leaves the previous checkpoint intact.
``load_checkpoint`` refuses pickled code (``weights_only=True``) and says so in plain words.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch


from shared.errors import CheckpointError  # noqa: E402  (a user error: one line, exit 2)


def versions() -> dict[str, str]:
    import platform

    import numpy
    import torchvision

    # str(): torch.__version__ is a TorchVersion, which weights_only=True loading refuses
    return {"torch": str(torch.__version__), "torchvision": str(torchvision.__version__),
            "numpy": str(numpy.__version__), "python": platform.python_version()}


def save_checkpoint(obj: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``obj`` to ``path`` atomically (temp file in the same directory + ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu",
                    expect: dict[str, Any] | None = None) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``.

    ``expect`` maps keys of the checkpoint's ``model_args`` to the values this run needs (for
    example ``{"arch": "dpt_tiny", "num_classes": 10}``); a mismatch raises :class:`CheckpointError`
    naming the key, instead of a wall of ``size mismatch`` messages from ``load_state_dict``.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}; check the path, or start without resume (resume=null)")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        msg = str(e)
        if "GLOBAL" not in msg and "global" not in msg:
            raise CheckpointError(f"checkpoint {path} is corrupt or truncated (not a torch checkpoint); "
                                  "delete it or pick another") from e
        detail = next((ln for ln in msg.splitlines() if "GLOBAL" in ln or "global" in ln), msg.splitlines()[0])
        raise CheckpointError(
            f"refusing to load {path}: it contains pickled Python objects (code), not just tensors and "
            f"plain types, and loading it could run arbitrary code (torch said: {detail.strip()}); "
            f"re-save it as a plain state dict"
        ) from e
    except (RuntimeError, EOFError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({first}); delete it or pick another") from e
    if expect:
        have = ckpt.get("model_args", {}) if isinstance(ckpt, dict) else {}
        for key, want in expect.items():
            if key not in have or have[key] != want:
                there = f"{key}={have[key]!r}" if key in have else f"no {key}"
                raise CheckpointError(
                    f"checkpoint {path} is from another model: {there} there, but this run has "
                    f"{key}={want!r}; use a checkpoint of this model, or a fresh run directory (or resume=null)"
                )
    return ckpt


def find_resume(resume: str | bool | None, run_dir: str | os.PathLike, name: str = "last.pt") -> Path | None:
    """Resolve a ``resume`` setting: ``auto`` -> ``run_dir/last.pt`` if it exists; a path -> that
    file (must exist); ``null``/``false``/empty -> no resume."""
    if resume in (None, False, "", "none", "null", "false", "False"):
        return None
    if resume in (True, "auto", "true", "True"):
        p = Path(run_dir) / name
        return p if p.is_file() else None
    p = Path(str(resume))
    if not p.is_file():
        raise CheckpointError(f"resume={resume!r}: no such checkpoint file; use resume=auto, resume=null or a path to last.pt")
    return p
