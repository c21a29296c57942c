"""IR-Softmax benchmark: the cost of class centres as classifier weights, and of the evaluation protocols.

    make bench-ir-softmax      # = uv run --package ir-softmax python benchmarks/ir-softmax/run.py

1. Training step of each IR head against its plain counterpart (goal: at most 1.05x): the whole step of the
   embedded default (small CNN, 32x32, batch 64, 40 classes), and the head alone at CASIA-WebFace scale
   (batch 256, 512-D features, 10,575 classes: the centre update is an index_add over the batch plus one pass
   over the C x D centres, against the plain head's weight gradient and SGD update). Peak memory of each
   variant in a fresh process.
2. Evaluation, vectorised, against straightforward references: LFW 10-fold verification on 100k pairs
   (reference: a 2,000-threshold grid as in common face-verification scripts) and Market-1501 CMC/mAP for
   1,000 queries against a 10,000-image gallery (reference: a Python loop over queries).

All variants of a table run in this process, interleaved round by round (shared.bench.compare).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ir_softmax.steps import full_step, head_step
from shared.bench import add_bench_args, check_quiet, compare, peak_memory, plot_ratios, timing_table, write_bench
from shared.cli import entry

HERE = Path(__file__).resolve().parent
GOAL = 1.05
HEAD_PAIRS = [("asoftmax", "ir_asoftmax"), ("amsoftmax", "ir_amsoftmax")]


# --------------------------------------------------------------------------------------- references


def grid_verification(scores: np.ndarray, same: np.ndarray, folds: np.ndarray, grid: np.ndarray) -> float:
    """10-fold accuracy with the threshold picked from a fixed grid (the usual face-verification script)."""
    accs = []
    for k in np.unique(folds):
        train, test = folds != k, folds == k
        s_train, y_train = scores[train], same[train]
        acc_grid = [((s_train > t) == y_train).mean() for t in grid]  # one threshold at a time, as such scripts do
        thr = grid[int(np.argmax(acc_grid))]
        accs.append(((scores[test] > thr) == same[test]).mean())
    return float(np.mean(accs))


def loop_cmc_map(dist: np.ndarray, qp, gp, qc, gc, max_rank: int = 10) -> tuple[np.ndarray, float]:
    """Market-1501 CMC/mAP with a Python loop over queries (standard AP), the reference for the vectorised one."""
    cmc_sum, aps, valid = np.zeros(max_rank), [], 0
    for i in range(len(dist)):
        order = np.argsort(dist[i], kind="stable")
        keep = ~((gp[order] == -1) | ((gp[order] == qp[i]) & (gc[order] == qc[i])))
        good = (gp[order] == qp[i])[keep]
        if not good.any():
            continue
        valid += 1
        first = int(np.argmax(good))
        cmc_sum[first:] += 1 if first < max_rank else 0
        hits = np.flatnonzero(good)
        aps.append(np.mean(np.arange(1, len(hits) + 1) / (hits + 1)))
    return cmc_sum / valid, float(np.mean(aps))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench-ir-softmax", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_bench_args(p, out=str(HERE), threads=2)
    p.add_argument("--pairs", type=int, default=100_000, help="verification pairs")
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--gallery", type=int, default=10_000)
    p.add_argument("--quick", action="store_true", help="tiny sizes, for tests (never committed)")
    return p


@entry
def main(argv: list[str] | None = None) -> None:
    from shared.provenance import Provenance
    from shared.report import Section

    from ir_softmax.evaluation import reid_cmc_map, verification_10fold

    args = build_parser().parse_args(argv)
    prov = Provenance(args, argv, threads=args.threads, script="benchmarks/ir-softmax/run.py")
    check_quiet(args.force)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    head_kw = dict(batch=32, dim=64, classes=500) if args.quick else {}
    full_kw = dict(batch=8, size=16) if args.quick else {}
    sections, goal_lines = [], []

    # 1. training steps
    step_variants = {}
    for plain, ir in HEAD_PAIRS:
        step_variants[f"{plain} step"] = full_step(plain, **full_kw)
        step_variants[f"{ir} step"] = full_step(ir, **full_kw)
    head_variants = {}
    for plain, ir in HEAD_PAIRS:
        head_variants[f"{plain} head"] = head_step(plain, **head_kw)
        head_variants[f"{ir} head"] = head_step(ir, **head_kw)
    tables = {}
    for title, variants, factory, kw in (("whole step", step_variants, full_step, full_kw),
                                         ("head alone", head_variants, head_step, head_kw)):
        timings = {}
        for plain, ir in HEAD_PAIRS:  # each IR head against its own plain counterpart
            suffix = " step" if title == "whole step" else " head"
            pair = {n: variants[n] for n in (plain + suffix, ir + suffix)}
            timings.update(compare(pair, baseline=plain + suffix, rounds=args.rounds, threads=args.threads,
                                   min_run_time=args.min_run_time))
        memory = {n: peak_memory(factory, n.rsplit(" ", 1)[0], **kw, threads=args.threads) for n in variants}
        tables[title] = (timings, memory)
        for plain, ir in HEAD_PAIRS:
            suffix = " step" if title == "whole step" else " head"
            r = timings[ir + suffix].ratio_median
            goal_lines.append(f"{title}: {ir} / {plain} = {r:.3f}x ({'met' if r <= GOAL else 'NOT met'})")
    plot_ratios({**tables["whole step"][0], **tables["head alone"][0]}, "asoftmax step", out / "ratios.png",
                "training-step time / plain counterpart (IR rows) -- see the tables for the pairs")
    step_shape = "batch 8, 16x16" if args.quick else "batch 64, 32x32 RGB, 40 classes"
    head_shape = "batch 32, 64-D, 500 classes" if args.quick else "batch 256, 512-D features, 10,575 classes"
    for title, shape in (("whole step", step_shape), ("head alone", head_shape)):
        timings, memory = tables[title]
        baseline = next(iter(timings))
        table = timing_table(timings, baseline, memory)
        # the ratio column of each IR row is to its own plain counterpart (compare() was called per pair)
        sections.append(Section(f"Training {title} ({shape})",
                                text=f"Goal: each IR head at most {GOAL:.2f}x the time of its plain counterpart. "
                                     "The `time / ...` column of every row is its ratio to the plain head of its "
                                     "own pair (each pair was timed as one interleaved comparison); memory is the "
                                     "peak RSS increase of a fresh process running 3 steps.",
                                table=table))

    # 2. evaluation
    rng = np.random.default_rng(0)
    n_pairs = 2000 if args.quick else args.pairs
    same = np.tile(np.repeat([True, False], n_pairs // 20), 10)
    scores = np.where(same, 0.6, 0.2) + 0.25 * rng.standard_normal(len(same))
    folds = np.repeat(np.arange(10), len(same) // 10)
    grid = np.arange(-1, 1, 0.001)
    ours = verification_10fold(scores, same, folds)["accuracy"]
    ref = grid_verification(scores, same, folds, grid)
    ver = compare({"10-fold, exact (ours)": lambda: verification_10fold(scores, same, folds),
                   "10-fold, 2000-threshold grid": lambda: grid_verification(scores, same, folds, grid)},
                  baseline="10-fold, exact (ours)", rounds=args.rounds, threads=args.threads,
                  min_run_time=args.min_run_time)
    nq, ng = (100, 1000) if args.quick else (args.queries, args.gallery)
    qp, gp = rng.integers(1, 700, nq), rng.integers(0, 700, ng)
    gp[rng.random(ng) < 0.05] = -1
    qc, gc = rng.integers(1, 7, nq), rng.integers(1, 7, ng)
    qf, gf = rng.standard_normal((nq, 64)), rng.standard_normal((ng, 64))
    gf += 2 * np.eye(64)[gp % 64] * (gp[:, None] >= 0)
    qf += 2 * np.eye(64)[qp % 64]
    dist = ((qf[:, None] - gf[None]) ** 2).sum(-1)
    a = reid_cmc_map(dist, qp, gp, qc, gc, ap="standard")
    b_cmc, b_map = loop_cmc_map(dist, qp, gp, qc, gc)
    agree = bool(np.allclose(a["cmc"], b_cmc) and abs(a["mAP"] - b_map) < 1e-9)
    reid = compare({"CMC/mAP, vectorised (ours)": lambda: reid_cmc_map(dist, qp, gp, qc, gc, ap="standard"),
                    "CMC/mAP, loop over queries": lambda: loop_cmc_map(dist, qp, gp, qc, gc)},
                   baseline="CMC/mAP, vectorised (ours)", rounds=args.rounds, threads=args.threads,
                   min_run_time=args.min_run_time)
    sections.append(Section(f"Evaluation: LFW 10-fold verification on {len(same):,} pairs",
                            text=f"Accuracy: exact thresholds {ours:.4f}, grid {ref:.4f} (the exact search can only "
                                 "match or beat the grid on the nine training folds).",
                            table=timing_table(ver, "10-fold, exact (ours)")))
    sections.append(Section(f"Evaluation: Market-1501 CMC/mAP, {nq:,} queries x {ng:,} gallery",
                            text=f"Same numbers as the loop reference: {agree} (rank-1 {a['cmc'][0]:.4f}, "
                                 f"mAP {a['mAP']:.4f}).", table=timing_table(reid, "CMC/mAP, vectorised (ours)")))
    intro = (f"{'QUICK TEST SIZES, NOT A RESULT. ' if args.quick else ''}Threads fixed at {args.threads}; "
             f"{args.rounds} interleaved rounds per comparison, median and IQR. Goal: every IR head at most "
             f"{GOAL:.2f}x its plain counterpart's step time -- " + "; ".join(goal_lines) + ".")
    write_bench(out, "IR-Softmax benchmark: centre heads and evaluation", intro, sections, prov, force=args.force)
    print("\n".join(goal_lines))


if __name__ == "__main__":
    main()
