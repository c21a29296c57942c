"""Run-directory logging: CSV metrics, a log-friendly progress display, the environment report."""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch

log = logging.getLogger("repro")


class CSVLogger:
    """Append rows of metrics to ``metrics.csv``. New keys extend the header (the file is rewritten)."""

    def __init__(self, path: str | os.PathLike, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled
        self.fields: list[str] = []
        if enabled and self.path.is_file():  # resume: keep what is there
            with open(self.path, newline="") as f:
                reader = csv.reader(f)
                self.fields = next(reader, [])

    def log(self, **row: Any) -> None:
        if not self.enabled:
            return
        row = {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()}
        new = [k for k in row if k not in self.fields]
        if new:
            old_rows = []
            if self.path.is_file():
                with open(self.path, newline="") as f:
                    old_rows = list(csv.DictReader(f))
            self.fields += new
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=self.fields)
                w.writeheader()
                w.writerows(old_rows)
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.fields).writerow(row)

    def truncate_after(self, key: str, value: float) -> None:
        """Drop rows with ``row[key] > value`` (used on resume so replayed steps are not logged twice)."""
        if not (self.enabled and self.path.is_file()):
            return
        with open(self.path, newline="") as f:
            rows = list(csv.DictReader(f))
        keep = [r for r in rows if r.get(key, "") == "" or float(r[key]) <= value]
        with open(self.path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.fields)
            w.writeheader()
            w.writerows(keep)


def _fmt_seconds(s: float) -> str:
    if not math.isfinite(s):
        return "?"
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h:d}:{m:02d}:{sec:02d}" if h else f"{m:d}:{sec:02d}"


_UPDATES = 0


def _fault_point(n: int) -> None:
    """Fault injection for the resume contract test: with ``REPRO_FAULT_KILL_AFTER=k`` in the environment,
    the process SIGKILLs itself after its k-th training step (``Progress.update``), as a crash or a pre-empted
    job would, mid-epoch and without any chance to clean up."""
    global _UPDATES
    _UPDATES += n
    limit = os.environ.get("REPRO_FAULT_KILL_AFTER")
    if limit and _UPDATES >= int(limit):
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


class Progress:
    """Progress with ETA that reads well both on a terminal and in a log file.

    It never uses carriage returns: it emits one complete line at most every ``interval`` seconds
    (and on the last item), e.g. ``epoch 3/10 [ 120/ 391]  31% 52.1 it/s eta 0:05 loss=1.234``.
    """

    def __init__(self, total: int, desc: str = "", interval: float = 10.0, enabled: bool = True,
                 logger: logging.Logger | None = None, start: int = 0):
        self.total, self.desc, self.interval, self.enabled = total, desc, interval, enabled
        self.logger = logger or log
        self.n = start
        self._start_n = start
        self.t0 = time.perf_counter()
        self._last = -math.inf
        self.postfix: dict[str, Any] = {}

    def line(self) -> str:
        elapsed = time.perf_counter() - self.t0
        done = self.n - self._start_n
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.n) / rate if rate > 0 else math.inf
        w = len(str(self.total))
        pct = 100.0 * self.n / self.total if self.total else 100.0
        post = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in self.postfix.items())
        return (f"{self.desc} [{self.n:>{w}}/{self.total}] {pct:3.0f}% {rate:.2f} it/s "
                f"elapsed {_fmt_seconds(elapsed)} eta {_fmt_seconds(eta)} {post}").strip()

    def update(self, n: int = 1, **postfix: Any) -> None:
        _fault_point(n)
        self.n += n
        self.postfix.update(postfix)
        now = time.perf_counter()
        if self.enabled and (now - self._last >= self.interval or self.n >= self.total):
            self._last = now
            self.logger.info(self.line())

    def __call__(self, iterable: Iterable) -> Iterator:
        for item in iterable:
            yield item
            self.update()


def git_sha(cwd: str | os.PathLike | None = None) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd or os.getcwd(), capture_output=True,
                             text=True, timeout=5)
        sha = out.stdout.strip()
        if out.returncode != 0 or not sha:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd or os.getcwd(),
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def environment_report() -> dict[str, Any]:
    """torch / CUDA / GPU / git facts for the run directory (``env.json``)."""
    import numpy
    import torchvision

    report: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": numpy.__version__,
        "cuda_available": torch.cuda.is_available(),
        "cuda_version": torch.version.cuda,
        "cudnn_version": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "git_sha": git_sha(),
        "argv": sys.argv,
        "world_size": int(os.environ.get("WORLD_SIZE", 1)),
    }
    if torch.cuda.is_available():
        report["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return report


def write_environment_report(run_dir: str | os.PathLike) -> Path:
    path = Path(run_dir) / "env.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(environment_report(), indent=2) + "\n")
    return path


def setup_file_logging(run_dir: str | os.PathLike, filename: str = "train.log", level: int = logging.INFO) -> None:
    """Log the ``repro`` logger (and the package loggers) to stdout and ``run_dir/train.log``.

    Idempotent; safe to call whether or not Hydra has already configured logging.
    """
    path = (Path(run_dir) / filename).resolve()
    root = logging.getLogger()
    root.setLevel(level)
    fmt = logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s", "%Y-%m-%d %H:%M:%S")
    if not any(isinstance(h, logging.FileHandler) and Path(h.baseFilename).resolve() == path for h in root.handlers):
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(path)
        fh.setFormatter(fmt)
        root.addHandler(fh)
    if not any(type(h) is logging.StreamHandler for h in root.handlers):
        sh = logging.StreamHandler(sys.stdout)
        sh.setFormatter(fmt)
        root.addHandler(sh)
