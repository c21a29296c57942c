"""Train-step cost of MetaMixUp against plain mixup, and the cost of its two hypergradients.

    make bench-metamixup          # = uv run --package metamixup python benchmarks/metamixup/run.py

One training step on the same batch for every variant (forward, loss, backward, SGD momentum step):
ERM, plain mixup (the baseline: one mixed forward/backward), MetaMixUp with the exact (second-order)
hypergradient, with DARTS' finite-difference hypergradient, with a per-sample ratio, and with the
virtual step restricted to the classifier head; then the hypergradient alone (no real step), exact vs
finite difference. Two networks: the small CPU CNN of the reproduce checks (16x16 synthetic-size inputs,
batch 64, meta batch 100 as in the package defaults) and PreAct ResNet-18, the paper's CIFAR network
(32x32, batch 32, meta batch 32). Timing: ``shared.bench.compare`` (torch.utils.benchmark, warm-up,
variants interleaved over rounds, median and IQR); peak memory of each variant in a fresh process.

Goal (from the issue and the method's structure): a MetaMixUp step costs about 2-3x a plain mixup step.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from metamixup.meta import MetaConfig, MetaMixUp, hypergradient
from metamixup.mixing import mix, one_hot, soft_cross_entropy
from metamixup.models import MixAt, create_model
from shared.bench import add_bench_args, check_quiet, compare, peak_memory, plot_ratios, timing_table, write_bench
from shared.cli import entry
from shared.provenance import Provenance
from shared.report import Section

HERE = Path(__file__).resolve().parent
NETWORKS = {  # name: (model, kwargs, image size, batch, meta batch)
    "small_cnn": ("small_cnn", {"widths": (32, 64, 128)}, 16, 64, 100),
    "preact_resnet18": ("preact_resnet18", {}, 32, 32, 32),
}
STEP_VARIANTS = ["ERM", "mixup", "MetaMixUp exact", "MetaMixUp finite-diff", "MetaMixUp exact per-sample",
                 "MetaMixUp exact head-only"]
HYPERGRAD_VARIANTS = ["hypergradient exact", "hypergradient finite-diff"]
GOAL = 3.0  # MetaMixUp exact step / mixup step


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_bench_args(p, out=str(HERE.relative_to(HERE.parents[1])), rounds=5, threads=2, min_run_time=0.5)
    p.add_argument("--networks", default="small_cnn,preact_resnet18", help="comma-separated subset of " + ",".join(NETWORKS))
    p.add_argument("--no-memory", action="store_true", help="skip the per-variant memory subprocesses")
    return p


def make_step(network: str, variant: str):
    """A zero-argument callable doing one step of ``variant`` on ``network`` (module level: importable in
    the memory-measuring subprocess)."""
    name, kwargs, size, batch, meta_batch = NETWORKS[network]
    torch.manual_seed(0)
    model = create_model(name, 10, **kwargs)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(batch, 3, size, size, generator=g), torch.randint(0, 10, (batch,), generator=g)
    xm, ym = torch.randn(meta_batch, 3, size, size, generator=g), torch.randint(0, 10, (meta_batch,), generator=g)
    index = torch.randperm(batch, generator=g)
    ys = one_hot(y, 10)

    def train_loss(forward, lam):
        return soft_cross_entropy(forward(x, MixAt(0, lam, index)), mix(ys, lam, index))

    def meta_loss(forward):
        return F.cross_entropy(forward(xm), ym)

    def real(lam):
        loss = train_loss(lambda a, mix=None: model(a, mix=mix), lam)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    if variant == "ERM":
        def step():
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return step
    if variant == "mixup":
        return lambda: real(torch.tensor(0.7))
    if variant.startswith("hypergradient"):
        mode = "exact" if variant.endswith("exact") else "finite_difference"
        lam = torch.tensor(0.7)
        return lambda: hypergradient(model, train_loss, meta_loss, lam, 0.05, mode)
    cfg = {"MetaMixUp exact": MetaConfig(),
           "MetaMixUp finite-diff": MetaConfig(hypergrad="finite_difference"),
           "MetaMixUp exact per-sample": MetaConfig(granularity="sample", init="beta", meta_optim="sgd", meta_lr=0.5),
           "MetaMixUp exact head-only": MetaConfig(virtual_params="head")}[variant]
    ctrl = MetaMixUp(cfg)
    import numpy as np

    rng = np.random.default_rng(0)

    def step():
        lam = ctrl.step(model, train_loss, meta_loss, lr=0.05, step=0, batch_size=batch, rng=rng)
        real(lam)
    return step


@entry
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    prov = Provenance(args, argv, threads=args.threads, script="benchmarks/metamixup/run.py")
    check_quiet(args.force)
    sections = []
    met = {}
    for network in [n.strip() for n in args.networks.split(",") if n.strip()]:
        name, kwargs, size, batch, meta_batch = NETWORKS[network]
        steps = {v: make_step(network, v) for v in STEP_VARIANTS}
        timings = compare(steps, baseline="mixup", rounds=args.rounds, threads=args.threads,
                          min_run_time=args.min_run_time)
        memory = None if args.no_memory else {v: peak_memory(make_step, network, v, threads=args.threads)
                                               for v in STEP_VARIANTS}
        ratio = timings["MetaMixUp exact"].ratio_median
        met[network] = ratio
        hg = compare({v: make_step(network, v) for v in HYPERGRAD_VARIANTS}, baseline="hypergradient exact",
                     rounds=args.rounds, threads=args.threads, min_run_time=args.min_run_time)
        plot_ratios(timings, "mixup", Path(args.out) / f"ratios_{network}.png",
                    title=f"{network}: train-step time / plain mixup")
        text = (f"{network} ({sum(p.numel() for p in create_model(name, 10, **kwargs).parameters()):,} parameters), "
                f"{size}x{size} inputs, batch {batch}, meta batch {meta_batch}, {args.threads} threads. Goal: MetaMixUp "
                f"(exact) at most {GOAL:g}x a plain mixup step; measured {ratio:.2f}x: "
                f"{'met' if ratio <= GOAL else 'not met'}.")
        sections.append(Section(f"Train step: {network}", text, table=timing_table(timings, "mixup", memory),
                                figures=[f"ratios_{network}.png"]))
        fd = hg["hypergradient finite-diff"].ratio_median
        sections.append(Section(f"Hypergradient alone: {network}",
                                f"The meta step's hypergradient without the real update: DARTS' finite difference "
                                f"costs {fd:.2f}x the exact second-order one.", table=timing_table(hg, "hypergradient exact")))
    intro = ("Every variant is one training step on the same random batch (timings do not depend on the data); "
             "ratios are per round against plain mixup, which does one mixed forward and backward. A MetaMixUp "
             "step adds a virtual forward/backward on the mixed batch (kept as a graph for the exact mode), a meta "
             "forward/backward on the meta batch through the virtual step, then the real step.")
    write_bench(args.out, "MetaMixUp: train-step and hypergradient cost (CPU)", intro, sections, provenance=prov,
                force=args.force)
    print((Path(args.out) / "results.md").read_text())


if __name__ == "__main__":
    sys.exit(main())
