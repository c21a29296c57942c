"""Benchmarks that can be trusted: the one timing helper every ``benchmarks/<pkg>/run.py`` uses.

* :func:`compare` times variants with ``torch.utils.benchmark`` (no hand-written timer): a warm-up, then
  the variants interleaved round by round (the order rotates each round), at least 5 rounds, the thread
  count fixed and recorded; each variant's time is the median over rounds with its interquartile range, and
  each ratio to the baseline is taken per round (paired) before its median and IQR.
* :func:`peak_memory` measures one variant in a fresh subprocess: the peak RSS increase over the process's
  footprint before the variant was built (CPU), or ``torch.cuda.max_memory_allocated`` (CUDA).
* :func:`check_quiet` refuses to write committed results while the 1-minute load average is above the
  core count (``--force`` writes them marked "measured under load").
* :func:`write_bench` renders the table (``results.md`` through :mod:`shared.report`), ``results.csv``,
  ``provenance.json`` and ``ratios.png`` (ratio bars with IQR whiskers).

A benchmark script::

    parser = build_parser()                 # add_bench_args(parser) adds --rounds/--threads/--force/--out
    args = parser.parse_args(argv)
    prov = Provenance(args, argv, threads=args.threads)
    check_quiet(args.force)
    timings = compare({"plain": f0, "method": f1}, baseline="plain", rounds=args.rounds, threads=args.threads)
    write_bench(args.out, "title", intro, timings, baseline="plain", provenance=prov, force=args.force,
                goal="method at most 1.05x of plain", goal_met=timings["method"].ratio_median <= 1.05)
"""

from __future__ import annotations

import argparse
import csv
import multiprocessing as mp
import os
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

__all__ = ["MIN_ROUNDS", "Timing", "add_bench_args", "check_quiet", "compare", "peak_memory", "plot_ratios",
           "timing_table", "write_bench"]

MIN_ROUNDS = 5


def add_bench_args(parser: argparse.ArgumentParser, out: str, rounds: int = MIN_ROUNDS, threads: int = 2,
                   min_run_time: float = 0.5) -> argparse.ArgumentParser:
    """The options every benchmark shares."""
    parser.add_argument("--out", default=out, help="folder for results.md/csv/json, provenance.json, ratios.png")
    parser.add_argument("--rounds", type=int, default=rounds, help=f"interleaved rounds (>= {MIN_ROUNDS})")
    parser.add_argument("--threads", type=int, default=threads, help="torch threads, fixed for every variant")
    parser.add_argument("--min-run-time", type=float, default=min_run_time,
                        help="seconds per variant per round (torch.utils.benchmark blocked_autorange)")
    parser.add_argument("--force", action="store_true",
                        help="write results even when the machine is loaded (they are marked 'measured under load')")
    return parser


def _quantiles(xs: Sequence[float]) -> tuple[float, float, float]:
    xs = sorted(xs)
    if len(xs) == 1:
        return xs[0], xs[0], xs[0]
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[0], statistics.median(xs), q[2]


@dataclass
class Timing:
    """One variant: seconds per call in each round, and its ratio to the baseline in each round."""

    name: str
    per_round: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return _quantiles(self.per_round)[1]

    @property
    def iqr(self) -> tuple[float, float]:
        q1, _, q3 = _quantiles(self.per_round)
        return q1, q3

    @property
    def ratio_median(self) -> float:
        return _quantiles(self.ratios)[1]

    @property
    def ratio_iqr(self) -> tuple[float, float]:
        q1, _, q3 = _quantiles(self.ratios)
        return q1, q3


def compare(variants: dict[str, Callable[[], Any]], baseline: str, rounds: int = MIN_ROUNDS, threads: int = 2,
            min_run_time: float = 0.5, warmup: int = 2) -> dict[str, Timing]:
    """Time every variant (a zero-argument callable) ``rounds`` times, interleaved, at ``threads`` threads.

    Each round measures every variant once with ``Timer.blocked_autorange(min_run_time)`` (its median
    per call), in an order rotated by one each round so that no variant always runs first or after the
    same neighbour. Ratios to ``baseline`` are per round. Returns ``{name: Timing}`` in input order."""
    import torch
    from torch.utils import benchmark

    if baseline not in variants:
        raise ValueError(f"baseline {baseline!r} is not one of the variants {list(variants)}")
    torch.set_num_threads(threads)
    names = list(variants)
    for name in names:  # warm-up: allocator, lazy init, autotuning
        for _ in range(warmup):
            variants[name]()
    timers = {n: benchmark.Timer(stmt="fn()", globals={"fn": variants[n]}, num_threads=threads, label=n)
              for n in names}
    out = {n: Timing(n) for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for n in order:
            out[n].per_round.append(timers[n].blocked_autorange(min_run_time=min_run_time).median)
        for n in names:
            out[n].ratios.append(out[n].per_round[-1] / out[baseline].per_round[-1])
    return out


def _current_rss_bytes() -> int:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS high-water mark of this process (Linux: ``clear_refs`` 5)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_rss_bytes() -> int:
    """The peak RSS since the last reset (Linux ``VmHWM``), else the lifetime peak (``ru_maxrss``)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def _memory_child(queue, factory, args, steps, threads, device) -> None:
    import torch

    torch.set_num_threads(threads)
    try:
        cuda = device.startswith("cuda")
        if cuda:
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        import gc

        gc.collect()
        _reset_peak_rss()  # the peak from start-up (imports, unpickling) must not count
        base_rss = _current_rss_bytes()
        fn = factory(*args)
        for _ in range(steps):
            fn()
        if cuda:
            torch.cuda.synchronize()
            queue.put({"peak_bytes": torch.cuda.max_memory_allocated() - base, "kind": "cuda max_memory_allocated"})
        else:
            queue.put({"peak_bytes": max(0, _peak_rss_bytes() - base_rss), "kind": "peak RSS increase"})
    except BaseException as exc:  # report instead of hanging the parent
        queue.put({"error": f"{type(exc).__name__}: {exc}"})


def peak_memory(factory: Callable[..., Callable[[], Any]], *args: Any, steps: int = 3, threads: int = 1,
                device: str = "cpu") -> dict[str, Any]:
    """Peak memory of one variant, measured in a fresh (spawned) process so variants do not share an
    allocator. ``factory(*args)`` runs in the child and returns the step callable, which is called ``steps``
    times. ``factory`` must be importable (a module-level function; scripts work under spawn)."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_memory_child, args=(queue, factory, args, steps, threads, device))
    proc.start()
    import queue as queue_module

    result = None
    while result is None:
        try:
            result = queue.get(timeout=1.0)
        except queue_module.Empty:
            if not proc.is_alive():
                result = {"error": f"the measuring process died (exit code {proc.exitcode}) before reporting; "
                                   "is the factory an importable module-level function?"}
    proc.join()
    if "error" in result:
        raise RuntimeError(f"memory measurement of {getattr(factory, '__name__', factory)} failed: {result['error']}")
    return result


def allocation_probe(mib: int) -> Callable[[], Any]:
    """A calibration variant for :func:`peak_memory`: each call allocates and keeps ``mib`` MiB (touched)."""
    import torch

    keep: list[Any] = []

    def step() -> None:
        keep.append(torch.ones(mib * 2**18))  # float32: 4 bytes each

    return step


def check_quiet(force: bool = False, what: str = "benchmark") -> float | None:
    """Refuse (one-line :class:`~shared.errors.UserError`) when the 1-minute load average is above the core
    count, unless ``force``; return the load."""
    from shared.errors import UserError
    from shared.provenance import load_average

    load, cores = load_average(), os.cpu_count() or 1
    if load is not None and load > cores and not force:
        raise UserError(f"the machine is busy (1-minute load {load:.1f} > {cores} cores), so {what} timings would "
                        f"not be trustworthy; wait for a quiet machine, or pass --force to write them marked "
                        f"'measured under load'")
    return load


def plot_ratios(timings: dict[str, Timing], baseline: str, path: str | os.PathLike, title: str = "") -> Path:
    """Horizontal bars of each variant's median time ratio to the baseline, with IQR whiskers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(timings)
    med = [timings[n].ratio_median for n in names]
    lo = [timings[n].ratio_median - timings[n].ratio_iqr[0] for n in names]
    hi = [timings[n].ratio_iqr[1] - timings[n].ratio_median for n in names]
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(names) + 1.2))
    ax.barh(range(len(names)), med, xerr=[lo, hi], capsize=3,
            color=["#999999" if n == baseline else "#3b75af" for n in names])
    ax.axvline(1.0, color="k", lw=0.8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(f"time / {baseline} (median over rounds, IQR whiskers)")
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def timing_table(timings: dict[str, Timing], baseline: str, memory: dict[str, dict] | None = None,
                 unit: str = "ms", extra: dict[str, dict[str, Any]] | None = None):
    """A :class:`shared.report.Table` of the timings (and memory, and extra per-variant columns)."""
    from shared.report import Table

    scale = {"s": 1.0, "ms": 1e3, "us": 1e6}[unit]
    extra_cols = sorted({k for d in (extra or {}).values() for k in d})
    cols = ["variant", f"median ({unit})", f"IQR ({unit})", f"time / {baseline}", "ratio IQR"]
    if memory:
        cols += ["peak memory (MiB)", f"memory / {baseline}"]
    cols += extra_cols
    rows = []
    for n, t in timings.items():
        q1, q3 = t.iqr
        r1, r3 = t.ratio_iqr
        row: list[Any] = [n, f"{t.median * scale:.3f}", f"{q1 * scale:.3f}-{q3 * scale:.3f}",
                          f"{t.ratio_median:.3f}x", f"{r1:.3f}-{r3:.3f}"]
        if memory:
            m = memory.get(n)
            base = memory.get(baseline)
            row += [f"{m['peak_bytes'] / 2**20:.1f}" if m else "",
                    f"{m['peak_bytes'] / base['peak_bytes']:.2f}x" if m and base and base["peak_bytes"] else ""]
        row += [(extra or {}).get(n, {}).get(c, "") for c in extra_cols]
        rows.append(row)
    return Table(cols, rows)


def write_bench(out_dir: str | os.PathLike, title: str, intro: str, sections: Sequence[Any], provenance: Any,
                force: bool = False, notes: str = "") -> Path:
    """Write a benchmark report (``results.md`` rendered from ``results.json`` + ``provenance.json``, and
    ``results.csv`` of every table row). Refuses when the machine became busy during the run (unless
    ``force``); with ``force`` on a busy machine the provenance marks it as measured under load."""
    from shared.report import write_report

    check_quiet(force, "benchmark")
    md = write_report(out_dir, title, sections, intro=intro, notes=notes, provenance=provenance)
    with open(Path(out_dir) / "results.csv", "w", newline="") as f:
        w = csv.writer(f)
        for s in sections:
            if s.table is not None:
                w.writerow(["section", *s.table.columns])
                w.writerows([[s.heading, *r] for r in s.table.rows])
    return md
