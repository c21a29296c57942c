"""Provenance of committed results: how a ``results/<pkg>/`` or ``benchmarks/<pkg>/`` folder was made.

Every ``make reproduce-<pkg>`` and ``make bench-<pkg>`` writes ``provenance.json`` beside its tables:

* ``command`` / ``argv`` and ``args`` (every option of the script's parser, defaults included),
* ``git``: commit and whether the tree was dirty, ``date`` (UTC, start), library ``versions``,
* ``machine``: cores, platform, CPU/GPU; ``threads_per_process``, ``worker_processes``,
* ``load_1min`` at start and end, ``wall_clock_s``, ``under_load`` (load above the core count),
* ``env``: the ``REPRO_*`` variables that were set, and
* ``runs``: for every training run the results aggregate, its config module, overrides and the full
  resolved config.

``compare_with_defaults`` recomposes the current defaults (the script's parser with no arguments, each
run's config module with its recorded overrides) and names every key that differs: a contract test fails
when a committed result no longer matches the code and defaults that claim it. Changing a default means
re-running and committing the new results with it.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["ENV_KEYS", "Provenance", "compare_with_defaults", "compose", "git_state", "load_average"]

#: Environment variables that change what a run reads or writes; recorded when set.
ENV_KEYS = ("REPRO_DATA", "REPRO_RUNS", "REPRO_CACHE", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
_REPO = Path(__file__).resolve().parents[3]


def load_average() -> float | None:
    """The 1-minute load average (None where the OS has none)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):  # pragma: no cover - Windows
        return None


#: Files whose changes make a tree "dirty" for provenance: code and configuration, not generated reports.
CODE_SUFFIXES = (".py", ".yaml", ".yml", ".toml", ".lock", ".cfg", ".ini", ".sh")


def git_state(cwd: str | os.PathLike | None = None) -> dict[str, Any]:
    """``{"commit": sha or None, "dirty": bool or None, "dirty_files": [...]}`` of the repository holding this
    file. Only tracked code and configuration files count (``CODE_SUFFIXES``, plus the Makefile): the reports a
    reproduce or benchmark run writes (markdown, CSV, JSON, PNG) and untracked run directories do not make the
    tree dirty, so a benchmark run right after a reproduce run still records a clean tree."""
    if cwd is None:
        found = git_state(_REPO)
        return found if found["commit"] else git_state(os.getcwd())
    cwd = str(cwd)
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return {"commit": None, "dirty": None, "dirty_files": []}
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                                capture_output=True, text=True, timeout=10)
        changed = [line[3:].split(" -> ")[-1] for line in status.stdout.splitlines() if len(line) > 3]
        code = [f for f in changed if f.endswith(CODE_SUFFIXES) or Path(f).name == "Makefile"]
        return {"commit": sha.stdout.strip(), "dirty": bool(code), "dirty_files": code[:20]}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None, "dirty_files": []}


def _versions() -> dict[str, str]:
    import numpy
    import torch
    import torchvision

    return {"python": platform.python_version(), "torch": str(torch.__version__),
            "torchvision": str(torchvision.__version__), "numpy": str(numpy.__version__)}


def _machine() -> dict[str, Any]:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {"cores": os.cpu_count(), "platform": platform.platform(), "cpu": cpu}
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def compose(config_module: str, overrides: list[str] | tuple[str, ...] = (), config_name: str = "train"):
    """A package's Hydra config with ``overrides`` (the same composition ``train`` does, without a run)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_module(config_module=config_module, version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=list(overrides))


def _plain(cfg: Any) -> Any:
    from shared.runtime.run import to_plain

    return json.loads(json.dumps(to_plain(cfg), default=str))


class Provenance:
    """Collects the provenance of one reproduce or benchmark invocation; :meth:`write` saves it.

    Create it first thing in ``main`` (it starts the clock and reads the load), record every run with
    :meth:`add_run`, then pass it to :func:`shared.report.write_report` (or call :meth:`write`)."""

    def __init__(self, args: Any = None, argv: list[str] | None = None, *, threads: int | None = None,
                 workers: int = 1, script: str | None = None):
        import torch

        self.t0 = time.perf_counter()
        self.started = datetime.datetime.now(datetime.timezone.utc)
        self.load_start = load_average()
        self.argv = list(sys.argv[1:] if argv is None else argv)
        self.script = script or Path(sys.argv[0]).name
        self.args = dict(vars(args)) if args is not None and not isinstance(args, dict) else dict(args or {})
        self.threads = int(threads) if threads else torch.get_num_threads()
        self.workers = int(workers)
        self.runs: dict[str, dict[str, Any]] = {}
        self.extra: dict[str, Any] = {}

    def add_run(self, name: str, cfg: Any, overrides: list[str] | tuple[str, ...] = (),
                config_module: str | None = None) -> None:
        """Record one training run: its name, the config module and overrides that compose it, and the full
        resolved config it ran with."""
        if name in self.runs:
            raise ValueError(f"run {name!r} recorded twice in the provenance")
        self.runs[name] = {"config_module": config_module, "overrides": list(overrides), "config": _plain(cfg)}

    def to_dict(self) -> dict[str, Any]:
        load_end = load_average()
        cores = os.cpu_count() or 1
        loads = [x for x in (self.load_start, load_end) if x is not None]
        return {
            "command": " ".join([self.script, *self.argv]),
            "argv": self.argv,
            "args": json.loads(json.dumps(self.args, default=str)),
            "git": git_state(),
            "date": self.started.isoformat(timespec="seconds"),
            "versions": _versions(),
            "machine": _machine(),
            "threads_per_process": self.threads,
            "worker_processes": self.workers,
            "load_1min": {"start": self.load_start, "end": load_end},
            "under_load": bool(loads and max(loads) > cores),
            "wall_clock_s": round(time.perf_counter() - self.t0, 1),
            "env": {k: os.environ[k] for k in ENV_KEYS if os.environ.get(k)},
            **self.extra,
            "runs": self.runs,
        }

    def write(self, out_dir: str | os.PathLike) -> dict[str, Any]:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        data = self.to_dict()
        (out / "provenance.json").write_text(json.dumps(data, indent=1, sort_keys=False) + "\n")
        return data


def _diff(a: Any, b: Any, path: str, out: list[str]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            p = f"{path}.{k}" if path else str(k)
            if k not in a:
                out.append(f"{p}: not in the committed provenance (now {b[k]!r})")
            elif k not in b:
                out.append(f"{p}: {a[k]!r} in the committed provenance, gone from the current defaults")
            else:
                _diff(a[k], b[k], p, out)
    elif a != b:
        out.append(f"{path}: committed {a!r}, current default {b!r}")


def compare_with_defaults(provenance: dict[str, Any] | str | os.PathLike, parser=None,
                          ignore_args: tuple[str, ...] = ()) -> list[str]:
    """The differences between a committed ``provenance.json`` and what the current code would run.

    ``parser``: the script's ``argparse`` parser; its defaults (``parse_args([])``) are compared with the
    recorded ``args``. Each recorded run is recomposed from its config module and overrides, under the
    ``REPRO_*`` environment the run had, and compared key by key. Returns one line per difference."""
    if not isinstance(provenance, dict):
        provenance = json.loads(Path(provenance).read_text())
    diffs: list[str] = []
    if parser is not None:
        defaults = json.loads(json.dumps(vars(parser.parse_args([])), default=str))
        committed = {k: v for k, v in provenance.get("args", {}).items() if k not in ignore_args}
        _diff(committed, {k: v for k, v in defaults.items() if k not in ignore_args}, "args", diffs)
    saved = {k: os.environ.get(k) for k in ENV_KEYS}
    try:
        for k in ENV_KEYS:
            os.environ.pop(k, None)
        os.environ.update(provenance.get("env", {}))
        for name, run in provenance.get("runs", {}).items():
            if not run.get("config_module"):
                continue
            now = _plain(compose(run["config_module"], run.get("overrides", [])))
            _diff(run["config"], now, f"runs[{name}]", diffs)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return diffs
