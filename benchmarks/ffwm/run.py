"""FFWM benchmark: training-step times at 64 and 128 px, and the pure-PyTorch replacements of the official
flow pre-training's CUDA kernels against the slow loop references they are tested against.

    uv run --package ffwm python benchmarks/ffwm/run.py [--rounds 5] [--threads 2] [--force]

Goals (fixed before measuring):
1. The WAM + IPM generator step (FFWM) costs at most 2x the plain U-Net-skip generator step at the same
   widths (the flows, the backward warp and the guided filters are the overhead).
2. Every vectorised replacement is at least 10x faster than its loop reference (the loop versions are what a
   straight port of the CUDA kernels' per-pixel logic to Python would be).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from shared.bench import add_bench_args, check_quiet, compare, peak_memory, plot_ratios, timing_table, write_bench
from shared.cli import entry
from shared.provenance import Provenance
from shared.report import Section

HERE = Path(__file__).resolve().parent


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_bench_args(p, out=str(HERE), rounds=5, threads=1, min_run_time=0.3)
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--memory", action=argparse.BooleanOptionalAction, default=False,
                   help="peak memory of each training step in a fresh process")
    return p


def _nets(size: int, skip: str):
    import torch

    from ffwm.model import FFWM
    from ffwm.networks import LightCNN29, VGG19Features

    torch.manual_seed(0)
    model = FFWM(size, ngf=16, ndf=16, flow_ngf=8, skip=skip)
    vgg = VGG19Features(0.125, batch_norm=True).eval().requires_grad_(False)
    idn = LightCNN29(0.25, image_size=32, batch_norm=True).eval().requires_grad_(False)
    return model, vgg, idn


def _batch(size: int, batch: int):
    from ffwm.synthetic import PairConfig, PairDataset, make_pairs
    from torch.utils.data import default_collate

    ds = PairDataset(make_pairs(PairConfig(n=batch, size=size, seed=0, num_identities=4)))
    return default_collate([ds[i] for i in range(batch)])


def gen_step_factory(size: int, batch: int, skip: str, preserve: bool = True, adapt: bool = True):
    """One generator + discriminator training step (all official losses), as in ``fit()``."""
    import torch

    from ffwm.model import GenLossConfig, discriminator_step_loss, generator_forward, generator_loss

    model, vgg, idn = _nets(size, skip)
    b = _batch(size, batch)
    cfg = GenLossConfig(warmup_images=0, preserve=preserve, adapt=adapt)
    opt_g = torch.optim.Adam(model.generator_parameters() + model.flow_parameters(), lr=1e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(model.discriminator.parameters(), lr=1e-4, betas=(0.5, 0.999))

    def step():  # as fit(): one forward pass, the D step, then the G step
        fwd = generator_forward(model, b, cfg)
        model.discriminator.requires_grad_(True)
        d = discriminator_step_loss(model.discriminator, fwd["fake"], fwd["real"])
        opt_d.zero_grad(set_to_none=True)
        d.backward()
        opt_d.step()
        model.discriminator.requires_grad_(False)
        loss, _ = generator_loss(model, vgg, idn, b, fwd, cfg, 10**9)
        opt_g.zero_grad(set_to_none=True)
        loss.backward()
        opt_g.step()

    return step


def flow_step_factory(size: int, batch: int, sampler: str = "bilinear"):
    """One flow pre-training step of F and B (correctness + affine + landmark losses)."""
    import torch

    from ffwm.model import FlowLossConfig, flow_step_loss

    model, vgg, _ = _nets(size, "wam")
    b = _batch(size, batch)
    cfg = FlowLossConfig(sampler=sampler)
    opt = torch.optim.Adam(model.flow_parameters(), lr=1e-4, betas=(0.5, 0.999))

    def step():
        loss, _ = flow_step_loss(model, vgg, b, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def _ops_variants():
    """(fast, reference) pairs of the replacements at sizes where the loop references finish."""
    import torch

    from ffwm import ops

    g = torch.Generator().manual_seed(0)
    src = torch.randn(2, 8, 16, 16, generator=g)
    pos = torch.rand(2, 16, 16, 2, generator=g) * 15
    small = torch.randn(1, 9, 8, 8, generator=g)
    grid = ops.base_grid(16, 16, batch=2) + 0.02 * torch.randn(2, 16, 16, 2, generator=g)
    x, y = torch.rand(2, 3, 32, 32, generator=g), torch.rand(2, 3, 32, 32, generator=g)
    return {
        "resample2d": (lambda: ops.resample2d(src, pos), lambda: ops.resample2d_reference(src, pos)),
        "block_extractor (k=3)": (lambda: ops.block_extractor(src, pos, 3), lambda: ops.block_extractor_reference(src, pos, 3)),
        "local_attn_reshape (k=3)": (lambda: ops.local_attn_reshape(small, 3), lambda: ops.local_attn_reshape_reference(small, 3)),
        "affine_regularization (k=5)": (lambda: ops.affine_regularization(grid, 5),
                                        lambda: ops.affine_regularization_reference(grid, 5)),
        "guided filter (r=8)": (lambda: ops.guided_filter(x, y, 8), lambda: ops.guided_filter_naive(x, y, 8)),
    }


@entry
def main(argv: list[str] | None = None) -> None:
    import torch

    args = build_parser().parse_args(argv)
    prov = Provenance(args, argv, threads=args.threads, script="benchmarks/ffwm/run.py")
    check_quiet(args.force)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sections = []
    step_goal = []
    for size in args.sizes:
        variants = {f"U-Net skips, {size} px": gen_step_factory(size, args.batch, "unet"),
                    f"FFWM (WAM + IPM), {size} px": gen_step_factory(size, args.batch, "wam"),
                    f"FFWM without IPM, {size} px": gen_step_factory(size, args.batch, "wam", False, False),
                    f"flow pre-training step, {size} px": flow_step_factory(size, args.batch)}
        base = f"U-Net skips, {size} px"
        t = compare(variants, base, rounds=args.rounds, threads=args.threads, min_run_time=args.min_run_time)
        mem = None
        if args.memory:
            mem = {base: peak_memory(gen_step_factory, size, args.batch, "unet", threads=args.threads),
                   f"FFWM (WAM + IPM), {size} px": peak_memory(gen_step_factory, size, args.batch, "wam", threads=args.threads),
                   f"flow pre-training step, {size} px": peak_memory(flow_step_factory, size, args.batch, threads=args.threads)}
        ratio = t[f"FFWM (WAM + IPM), {size} px"].ratio_median
        step_goal.append((size, ratio))
        plot_ratios(t, base, out / f"steps_{size}.png", f"training steps, batch {args.batch}, {size} px")
        sections.append(Section(
            f"Training steps at {size} px (batch {args.batch}, CPU widths: G ngf 16, flows ngf 8, D ndf 16)",
            "One optimiser step of generator + discriminator with every official loss (synthetic VGG/LightCNN "
            "stand-ins), and one flow pre-training step of F and B.",
            table=timing_table(t, base, mem),
            after=f"Goal 1 (FFWM step <= 2x the U-Net step): {ratio:.2f}x, {'met' if ratio <= 2 else 'not met'}.",
            figures=[f"steps_{size}.png"]))
    ops_t = {}
    pairs = _ops_variants()
    extra = {}
    for name, (fast, ref) in pairs.items():
        t = compare({f"{name}: loop reference": ref, f"{name}: vectorised": fast}, f"{name}: loop reference",
                    rounds=args.rounds, threads=args.threads, min_run_time=args.min_run_time)
        ops_t.update(t)
        speed = 1 / t[f"{name}: vectorised"].ratio_median
        extra[f"{name}: vectorised"] = {"speed-up": f"{speed:.0f}x", "goal (>= 10x)": "met" if speed >= 10 else "not met"}
    plot_ratios({k: v for k, v in ops_t.items() if "vectorised" in k}, next(iter(ops_t)), out / "ops.png",
                "vectorised / loop reference")
    sections.append(Section(
        "Pure-PyTorch replacements of the CUDA kernels vs their loop references",
        "Each row pair: the per-pixel loop reference the tests compare against, then the vectorised version used "
        "in training (resample2d: 2x8x16x16 source, 16x16 positions; blocks: k=3; affine regulariser: 2x16x16 "
        "grid, k=5, float64 least squares per window; guided filter: 2x3x32x32, r=8, naive window sum). The "
        "'time / baseline' column of a vectorised row is relative to the first row's reference only; the speed-up "
        "column is the paired ratio to its own reference.",
        table=timing_table(ops_t, next(iter(ops_t)), extra=extra), figures=["ops.png"]))
    intro = ("Goals: (1) the FFWM generator step at most 2x the plain U-Net-skip step; (2) every vectorised kernel "
             "replacement at least 10x faster than its loop reference. Steps: "
             + ", ".join(f"{s} px {r:.2f}x ({'met' if r <= 2 else 'not met'})" for s, r in step_goal)
             + "; kernels: " + ", ".join(f"{n} {v['speed-up']} ({v['goal (>= 10x)']})" for n, v in extra.items()) + ".")
    write_bench(out, "FFWM benchmark (CPU)", intro, sections, prov, force=args.force)
    print((out / "results.md").read_text())


if __name__ == "__main__":
    main()
