"""One ``train`` and one ``reproduce`` command for every paper package.

Every workspace member installs its console scripts into the same ``.venv/bin``, so a script named
``train`` in each package cannot work (the last install wins). ``shared`` is therefore the only owner
of ``train`` and ``reproduce``; each paper package registers its entry functions under the
entry-point groups ``repro.train`` and ``repro.reproduce`` (and also gets the unique scripts
``<pkg>-train`` and ``<pkg>-reproduce``).

Which package to run, in order:

1. the package that ``uv run --package <pkg>`` named: uv exports no variable for it, but uv is an
   ancestor process and its command line is readable (``/proc`` on Linux, ``ps`` elsewhere);
2. ``REPRO_PACKAGE`` if set (for launchers other than uv); when it names another package than an
   explicit ``uv run --package``, that is an error (exit 2) rather than a silent choice;
3. the only installed paper package;
4. otherwise exit with status 2 and a message listing the installed packages and their scripts.

All other arguments (Hydra overrides, ``--help``, ``--cfg job``) reach the package unchanged.
"""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import EntryPoint, entry_points

GROUPS = {"train": "repro.train", "reproduce": "repro.reproduce"}
_MAX_ANCESTORS = 8


def _norm(name: str) -> str:
    return name.strip().lower().replace("_", "-").replace(".", "-")


def _cmdline(pid: int) -> list[str]:
    proc = f"/proc/{pid}/cmdline"
    if os.path.exists(proc):
        try:
            with open(proc, "rb") as f:
                return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
        except OSError:
            return []
    try:  # macOS and other systems without /proc
        out = subprocess.run(["ps", "-o", "args=", "-p", str(pid)], capture_output=True, text=True, timeout=5)
        return out.stdout.split()
    except (OSError, subprocess.SubprocessError):
        return []


def _parent_pid(pid: int) -> int | None:
    stat = f"/proc/{pid}/stat"
    if os.path.exists(stat):
        try:
            with open(stat) as f:
                data = f.read()
            # the command name (field 2) is in parentheses and may contain spaces
            return int(data.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return None
    try:
        out = subprocess.run(["ps", "-o", "ppid=", "-p", str(pid)], capture_output=True, text=True, timeout=5)
        return int(out.stdout.strip())
    except (OSError, ValueError, subprocess.SubprocessError):
        return None


def package_from_uv_argv(argv: list[str]) -> str | None:
    """``uv [global opts] run [opts] --package X ...`` -> ``X`` (also ``--package=X``), else None.

    Only options before the command that uv runs count: ``uv run --package a train --package b``
    names ``a``."""
    if not argv or os.path.basename(argv[0]).split(".")[0] != "uv":
        return None
    args = argv[1:]
    if "run" not in args:
        return None
    for i, a in enumerate(args[args.index("run") + 1:], start=args.index("run") + 1):
        if a == "--":
            break
        if a == "--package" and i + 1 < len(args):
            return args[i + 1]
        if a.startswith("--package="):
            return a.split("=", 1)[1]
    return None


def package_from_uv_parent(pid: int | None = None) -> str | None:
    """Walk up the process tree and return the package of the nearest ``uv run --package``."""
    pid = os.getppid() if pid is None else pid
    for _ in range(_MAX_ANCESTORS):
        if not pid or pid <= 1:
            return None
        name = package_from_uv_argv(_cmdline(pid))
        if name:
            return name
        pid = _parent_pid(pid)
    return None


def installed_jobs(job: str) -> dict[str, EntryPoint]:
    """``{distribution name: entry point}`` for one job group."""
    found: dict[str, EntryPoint] = {}
    for ep in entry_points(group=GROUPS[job]):
        dist = ep.dist.name if ep.dist is not None else ep.name
        found[_norm(dist)] = ep
    return found


def _listing(job: str, jobs: dict[str, EntryPoint]) -> str:
    if not jobs:
        return "  (no paper package is installed: run `uv sync --all-packages`)"
    return "\n".join(f"  {name:<22} uv run --package {name} {job}   (or: {name}-{job})" for name in sorted(jobs))


def resolve(job: str) -> tuple[str, EntryPoint]:
    jobs = installed_jobs(job)
    from_uv, from_env = package_from_uv_parent(), os.environ.get("REPRO_PACKAGE")
    if from_uv and from_env and _norm(from_uv) != _norm(from_env):
        raise SystemExit(f"error: `uv run --package {from_uv}` and REPRO_PACKAGE={from_env} name different packages; "
                         f"unset REPRO_PACKAGE, or run `uv run --package {from_env} {job}`")
    wanted = from_uv or from_env
    if wanted:
        key = _norm(wanted)
        if key in jobs:
            return key, jobs[key]
        raise SystemExit(
            f"error: `{job}`: package {wanted!r} has no `{job}` job registered.\n"
            f"Installed paper packages:\n{_listing(job, jobs)}"
        )
    if len(jobs) == 1:
        (name, ep), = jobs.items()
        return name, ep
    raise SystemExit(
        f"error: `{job}` needs to know which paper package to run, and {len(jobs)} are installed.\n"
        f"Name one with `uv run --package <pkg> {job}`, set REPRO_PACKAGE=<pkg>, or call its own script:\n"
        f"{_listing(job, jobs)}"
    )


def _run(job: str) -> None:
    try:
        _, ep = resolve(job)
    except SystemExit as e:
        print(e.code, file=sys.stderr)
        raise SystemExit(2) from None
    result = ep.load()()
    if isinstance(result, int):
        raise SystemExit(result)


def train_main() -> None:
    """Console script ``train``."""
    _run("train")


def reproduce_main() -> None:
    """Console script ``reproduce``."""
    _run("reproduce")
