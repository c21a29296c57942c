"""DPT vs PVT-v1: training-step and inference time, and peak memory, as ratios (``make bench-depatch``).

``uv run --package depatch python benchmarks/depatch/run.py [--sizes tiny] [--batch 2] [--rounds 5]``.

Sections (each timed with ``shared.bench.compare``: warm-up, variants interleaved round by round,
median and interquartile range over rounds, ratios per round):

* the paper's sizes at 224 px (``--sizes``, default tiny): a training step (forward, backward, AdamW)
  and an inference forward of DPT vs PVT; peak memory of the training step in a fresh process each;
* the mini models of ``make reproduce-depatch`` (synthetic parts task, 32 px, batch 64): DPT, PVT and
  the parameter-matched PVT;
* the DePatch layer alone against the fixed patch embedding it replaces (stage 2 of DPT-T at 224 px:
  64 x 56 x 56 -> 128 x 28 x 28), forward + backward.

Goal: a DPT-T training step within 1.2x of PVT-T's (the paper's FLOPs: 2.1 vs 1.9 G, 1.1x).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from shared.bench import add_bench_args, check_quiet, compare, peak_memory, plot_ratios, timing_table, write_bench
from shared.cli import entry
from shared.provenance import Provenance
from shared.report import Section

HERE = Path(__file__).resolve().parent


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="benchmarks/depatch/run.py", description=__doc__.splitlines()[0])
    add_bench_args(p, out="benchmarks/depatch", rounds=5, threads=2, min_run_time=0.5)
    p.add_argument("--sizes", nargs="+", default=["tiny"], choices=["tiny", "small", "medium"],
                   help="paper model sizes at 224 px (default: tiny)")
    p.add_argument("--batch", type=int, default=2, help="batch of the 224 px models (default 2)")
    p.add_argument("--mini-batch", type=int, default=64, help="batch of the mini models at 32 px (default 64)")
    return p


def train_step_factory(arch: str, image_size: int, batch: int, num_classes: int = 1000, seed: int = 0):
    """A training step (forward, cross-entropy, backward, AdamW) of ``arch`` on a fixed random batch."""
    from depatch import create_model

    torch.manual_seed(seed)
    model = create_model(arch, num_classes=num_classes, img_size=image_size).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, 3, image_size, image_size)
    y = torch.randint(0, num_classes, (batch,))

    def step():
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def inference_factory(arch: str, image_size: int, batch: int, seed: int = 0):
    from depatch import create_model

    torch.manual_seed(seed)
    model = create_model(arch, img_size=image_size).eval()
    x = torch.randn(batch, 3, image_size, image_size)

    def step():
        with torch.no_grad():
            model(x)

    return step


def embed_factory(kind: str, batch: int = 2, seed: int = 0):
    """Forward + backward of stage 2's patch embedding of DPT-T / PVT-T at 224 px."""
    from depatch import DePatchEmbed, PatchEmbed

    torch.manual_seed(seed)
    layer = DePatchEmbed(64, 128) if kind == "DePatch" else PatchEmbed(64, 128, 2)
    if kind == "DePatch":
        torch.nn.init.normal_(layer.offset_predictor.weight, std=0.1)  # boxes off the grid, as after training
    x = torch.randn(batch, 64, 56, 56, requires_grad=True)

    def step():
        out, _ = layer(x)
        out.sum().backward()

    return step


@entry
def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    prov = Provenance(args, argv, threads=args.threads, workers=1, script="benchmarks/depatch/run.py")
    check_quiet(args.force)
    torch.set_num_threads(args.threads)
    sections, all_timings = [], {}
    kw = dict(rounds=args.rounds, threads=args.threads, min_run_time=args.min_run_time)

    for size in args.sizes:
        pvt, dpt = f"pvt_{size}", f"dpt_{size}"
        train = compare({f"{pvt} train": train_step_factory(pvt, 224, args.batch),
                         f"{dpt} train": train_step_factory(dpt, 224, args.batch)}, baseline=f"{pvt} train", **kw)
        memory = {f"{a} train": peak_memory(train_step_factory, a, 224, args.batch, threads=args.threads)
                  for a in (pvt, dpt)}
        infer = compare({f"{pvt} inference": inference_factory(pvt, 224, args.batch),
                         f"{dpt} inference": inference_factory(dpt, 224, args.batch)}, baseline=f"{pvt} inference", **kw)
        ratio = train[f"{dpt} train"].ratio_median
        sections.append(Section(
            f"{size} at 224 px, batch {args.batch}: training step", f"Goal: DPT within 1.2x of PVT -> "
            f"{'met' if ratio <= 1.2 else 'not met'} ({ratio:.3f}x).",
            table=timing_table(train, f"{pvt} train", memory=memory, unit="s")))
        sections.append(Section(f"{size} at 224 px, batch {args.batch}: inference",
                                table=timing_table(infer, f"{pvt} inference", unit="s")))
        all_timings.update(train)
        all_timings.update(infer)

    mini = compare({name: train_step_factory(name, 32, args.mini_batch, num_classes=8)
                    for name in ("pvt_mini", "dpt_mini", "pvt_mini_wide")}, baseline="pvt_mini", **kw)
    memory = {name: peak_memory(train_step_factory, name, 32, args.mini_batch, 8, threads=args.threads)
              for name in mini}
    sections.append(Section(f"mini models of the reproduce runs, 32 px, batch {args.mini_batch}: training step",
                            "The mini DPT pays more than the paper's sizes: its transformer blocks are tiny next to "
                            "the DePatch projections (37% more parameters than pvt_mini).",
                            table=timing_table(mini, "pvt_mini", memory=memory, unit="ms")))
    all_timings.update(mini)

    layer = compare({"fixed 2x2 patch embedding": embed_factory("fixed"), "DePatch": embed_factory("DePatch")},
                    baseline="fixed 2x2 patch embedding", **kw)
    sections.append(Section("stage-2 patch embedding of DPT-T at 224 px (64 x 56 x 56 -> 128 x 28 x 28), "
                            "forward + backward, batch 2", "The layer alone: predictor (conv + LayerNorm + linear), "
                            "decode, 9 bilinear samples per patch (grid_sample), projection.",
                            table=timing_table(layer, "fixed 2x2 patch embedding", unit="ms")))
    all_timings.update(layer)

    # the ratio plot: every variant against its own section's baseline (per-round ratios)
    plot_ratios(all_timings, baseline=f"pvt_{args.sizes[0]} train", path=Path(args.out) / "ratios.png",
                title="time / baseline of its section (median over rounds, IQR whiskers)")
    intro = (f"CPU, {args.threads} torch threads, {args.rounds} interleaved rounds per section (torch.utils.benchmark "
             "blocked_autorange, median and IQR over rounds; ratios taken per round). Peak memory: each variant "
             "in a fresh process (peak RSS increase). Ratios < 1 favour the variant.")
    md = write_bench(args.out, "DPT vs PVT-v1: time and memory", intro, sections, provenance=prov, force=args.force)
    print(md.read_text())


if __name__ == "__main__":
    main()
