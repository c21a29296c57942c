"""DADA benchmarks -> benchmarks/dada/{results.md, results.json, provenance.json, results.csv, ratios.png}.

    uv run --package dada python benchmarks/dada/run.py [--rounds 5] [--threads 1]

1. Augmentation throughput on the same uint8 32x32 images (256 per call): DADA's batched policy (the
   published CIFAR-10 preset, one call per batch) against torchvision's per-image ``v2.AutoAugment(CIFAR10)``
   (goal: at least 5x the images/s), and the same DADA policy applied image by image (what batching buys).
2. A DADA search step against a plain training step on the same batch (expected 3-8x).

Timed with shared.bench (torch.utils.benchmark, variants interleaved over rounds, median and IQR).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn
from torchvision.transforms import v2

from shared.bench import add_bench_args, check_quiet, compare, plot_ratios, timing_table, write_bench
from shared.cli import entry
from shared.provenance import Provenance
from shared.report import Section

HERE = Path(__file__).resolve().parent
BATCH = 256
BASE = "torchvision v2.AutoAugment(CIFAR10), per image"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    return add_bench_args(p, out=str(HERE), rounds=5, threads=1, min_run_time=0.3)


@entry
def main(argv=None) -> None:
    from dada.models import create_model
    from dada.policy import DADAAugment, apply_policy, preset
    from dada.search import AugmentParameters, SearchConfig, SearchStep, draw_noise

    args = build_parser().parse_args(argv)
    check_quiet(args.force)
    prov = Provenance(args, argv, threads=args.threads, script="benchmarks/dada/run.py")
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (BATCH, 3, 32, 32), dtype=torch.uint8, generator=g)
    policy = preset("cifar10")
    aa = v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10)
    single = DADAAugment(policy)
    aug = compare({BASE: lambda: [aa(img) for img in images],
                   "DADA policy, batched (one call per 256 images)": lambda: apply_policy(images, policy, g),
                   "DADA policy, per image (DADAAugment on each image)": lambda: [single(img) for img in images]},
                  baseline=BASE, rounds=args.rounds, threads=args.threads, min_run_time=args.min_run_time)
    speedup = 1.0 / aug["DADA policy, batched (one call per 256 images)"].ratio_median
    ips = {n: BATCH / t.median for n, t in aug.items()}

    sections = [Section("Augmentation throughput (uint8 32x32, 256 images per call)",
                        text="Goal: the batched DADA policy at least 5x the images/s of torchvision's per-image AutoAugment.",
                        table=timing_table(aug, BASE, extra={n: {"images/s": f"{v:.0f}"} for n, v in ips.items()}),
                        after=f"**Batched DADA policy: {speedup:.1f}x torchvision's per-image AutoAugment: goal "
                              f"{'met' if speedup >= 5 else 'NOT met'}.**", figures=["ratios.png"])]
    for model_name, batch in (("small_cnn", 64), ("wrn_40_2", 32)):
        torch.manual_seed(0)
        model = create_model(model_name, 10)
        augp = AugmentParameters()
        net_opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=2e-4)
        step = SearchStep(model, augp, net_opt, torch.optim.Adam(augp.parameters(), lr=5e-3, betas=(0.5, 0.999)), SearchConfig())
        x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
        xv, yv = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))

        def plain(model=model, net_opt=net_opt, x=x, y=y):
            loss = nn.functional.cross_entropy(model(x), y)
            net_opt.zero_grad()
            loss.backward()
            net_opt.step()

        base = f"{model_name} plain training step (batch {batch})"
        t = compare({base: plain, f"{model_name} DADA search step (batch {batch})":
                     lambda step=step, x=x, y=y, xv=xv, yv=yv: step(x, y, xv, yv, draw_noise(105, 2, g), 0.05)},
                    baseline=base, rounds=args.rounds, threads=args.threads, min_run_time=args.min_run_time)
        ratio = t[f"{model_name} DADA search step (batch {batch})"].ratio_median
        sections.append(Section(f"Search step vs plain step: {model_name}", table=timing_table(t, base),
                                after=f"Expected 3-8x (unrolled pass, validation pass at w', two passes at w +- r v; the "
                                      f"network step reuses the first pass's gradient): {ratio:.1f}x, "
                                      f"{'within' if 3 <= ratio <= 8 else 'outside'} the expected range."))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plot_ratios(aug, BASE, out / "ratios.png", "augmentation time / torchvision per-image AutoAugment")
    md = write_bench(out, "DADA benchmarks", f"{args.threads} thread(s), {args.rounds} interleaved rounds; CPU.",
                     sections, prov, force=args.force)
    print(md.read_text())


if __name__ == "__main__":
    main()
