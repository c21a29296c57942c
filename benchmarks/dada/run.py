"""DADA benchmarks -> benchmarks/dada/results.{md,csv}.

    uv run --package dada python benchmarks/dada/run.py [--rounds 7] [--threads 1]

1. Augmentation throughput (images/s) on the same uint8 32x32 images: DADA's batched policy
   (published CIFAR-10 preset, one call per batch of 256) against torchvision's per-image
   ``v2.AutoAugment(CIFAR10)`` (goal: at least 5x), and against the same DADA policy applied
   image by image (what batching buys).
2. A DADA search step against a plain training step on the same batch (expected 3-8x).

Variants are interleaved over ``--rounds`` rounds after a warm-up; the table reports the median
and the interquartile range.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import nn
from torchvision.transforms import v2

from dada.models import create_model
from dada.policy import DADAAugment, apply_policy, preset
from dada.search import AugmentParameters, SearchConfig, SearchStep, draw_noise

HERE = Path(__file__).resolve().parent


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batches", type=int, nargs="+", default=[256, 512], help="batch sizes of the batched policy")
    p.add_argument("--out", default=str(HERE))
    return p


def interleaved(variants: dict, rounds: int, warmup: int = 1) -> dict[str, list[float]]:
    times = {k: [] for k in variants}
    for r in range(rounds + warmup):
        for name, fn in variants.items():
            t = time.perf_counter()
            fn()
            dt = time.perf_counter() - t
            if r >= warmup:
                times[name].append(dt)
    return times


def iqr(xs: list[float]) -> tuple[float, float]:
    q = statistics.quantiles(xs, n=4)
    return q[0], q[2]


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    g = torch.Generator().manual_seed(0)
    policy = preset("cifar10")
    aa = v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10)
    dada_single = DADAAugment(policy)
    big = max(args.batches)
    images = torch.randint(0, 256, (big, 3, 32, 32), dtype=torch.uint8, generator=g)
    small = images[:256]
    aug_variants = {f"DADA policy, batched (one call per batch of {b})": (lambda b=b: apply_policy(images[:b], policy, g), b)
                    for b in args.batches}
    aug_variants["torchvision v2.AutoAugment(CIFAR10), per image"] = (lambda: [aa(img) for img in small], 256)
    aug_variants["DADA policy, per image (DADAAugment on each image)"] = (lambda: [dada_single(img) for img in small], 256)
    aug_times = interleaved({k: f for k, (f, _) in aug_variants.items()}, args.rounds)
    per_call = {k: n for k, (_, n) in aug_variants.items()}

    torch.manual_seed(0)
    step_rows = {}
    for model_name, batch in (("small_cnn", 64), ("wrn_40_2", 32)):
        model = create_model(model_name, 10)
        aug = AugmentParameters()
        net_opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=2e-4)
        arch_opt = torch.optim.Adam(aug.parameters(), lr=5e-3, betas=(0.5, 0.999))
        step = SearchStep(model, aug, net_opt, arch_opt, SearchConfig())
        x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
        xv, yv = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))

        def plain(model=model, net_opt=net_opt, x=x, y=y):
            loss = nn.functional.cross_entropy(model(x), y)
            net_opt.zero_grad()
            loss.backward()
            net_opt.step()

        variants = {f"{model_name} search step (batch {batch})": lambda step=step, x=x, y=y, xv=xv, yv=yv: step(x, y, xv, yv, draw_noise(105, 2, g), 0.05),
                    f"{model_name} plain training step (batch {batch})": plain}
        step_rows[model_name] = interleaved(variants, max(3, args.rounds // 2 if model_name != "small_cnn" else args.rounds))

    rows = []
    base_name = "torchvision v2.AutoAugment(CIFAR10), per image"
    base = statistics.median(aug_times[base_name]) / per_call[base_name]  # seconds per image
    for name, ts in aug_times.items():
        med = statistics.median(ts)
        lo, hi = iqr(ts)
        rows.append({"benchmark": "augmentation", "variant": name, "median_s": med, "iqr_s": f"{lo:.4g}-{hi:.4g}",
                     "images_per_s": per_call[name] / med, "ratio_vs_baseline": base / (med / per_call[name])})
    for model_name, times in step_rows.items():
        names = list(times)
        plain_med = statistics.median(times[names[1]])
        for name in names:
            med = statistics.median(times[name])
            lo, hi = iqr(times[name])
            rows.append({"benchmark": "search step", "variant": name, "median_s": med, "iqr_s": f"{lo:.4g}-{hi:.4g}",
                         "images_per_s": "", "ratio_vs_baseline": med / plain_med})
    out = Path(args.out)
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    n_aug = len(aug_times)
    speedups = {r["variant"]: r["ratio_vs_baseline"] for r in rows[:n_aug] if "batched" in r["variant"]}
    ratios = {m: next(r["ratio_vs_baseline"] for r in rows if r["variant"].startswith(f"{m} search")) for m in step_rows}
    lines = ["# DADA benchmarks", "",
             f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
             f"{args.threads} thread(s); load average {load:.2f} at start; {args.rounds} interleaved rounds after a warm-up, "
             f"median (IQR). Command: `uv run --package dada python benchmarks/dada/run.py`.", "",
             "## Augmentation throughput (uint8 32x32; the per-image variants loop over 256 images)", "",
             "| variant | median s / call (IQR) | images/s | speed-up vs torchvision AutoAugment |", "|---|---|---|---|"]
    for r in rows[:n_aug]:
        lines.append(f"| {r['variant']} | {r['median_s']:.4f} ({r['iqr_s']}) | {r['images_per_s']:.0f} | {r['ratio_vs_baseline']:.1f}x |")
    lines += ["", "**Goal: batched DADA policy >= 5x torchvision's per-image AutoAugment (images/s): "
              + "; ".join(f"{k.split('of ')[-1].rstrip(')')} images per call {v:.1f}x, {'met' if v >= 5 else 'NOT met'}"
                          for k, v in speedups.items()) + ".**", "",
              "## Search step vs plain training step", "", "| variant | median s (IQR) | ratio to the plain step |", "|---|---|---|"]
    for r in rows[n_aug:]:
        lines.append(f"| {r['variant']} | {r['median_s']:.4f} ({r['iqr_s']}) | {r['ratio_vs_baseline']:.2f}x |")
    lines += ["", "Expected 3-8x (unrolled pass + validation pass at w' + two passes at w +- r v; the network step reuses "
              "the first pass's gradient): " + ", ".join(f"{m} {v:.1f}x ({'within' if 3 <= v <= 8 else 'outside'})"
                                                        for m, v in ratios.items()) + "."]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
