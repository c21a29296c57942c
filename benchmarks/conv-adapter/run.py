"""Train-step time and peak memory: Conv-Adapter vs full fine-tuning vs linear probing (ResNet-50, 224x224).

    make bench-conv-adapter            # = uv run --package conv-adapter python benchmarks/conv-adapter/run.py

A step is forward + cross-entropy + backward + AdamW step on one fixed batch, every BatchNorm in train mode
(``fit()``'s default ``bn_mode=train``, the official trainer). Conv-Adapter is the ResNet-50 recipe: conv-parallel adapters on the 16 bottleneck 3x3 convs
with the official placement (after relu(bn2)) and the official BatchNorm2d(2048) before pooling, gamma = the
package default. Times come from :func:`shared.bench.compare` (torch.utils.benchmark, warm-up, variants
interleaved round by round, median and IQR, per-round ratios to full fine-tuning); memory from
:func:`shared.bench.peak_memory` (each variant in a fresh process: peak RSS increase while the model is built
and ``--memory-steps`` steps run). What a frozen backbone can save in principle is the gradients and the two
AdamW moments of the frozen parameters (3 x 4 bytes each); activations are kept either way (linear probing
keeps none of the backbone's, so it saves more). Hugging Face PEFT's LoRA on the same convs is timed too when
``peft`` is installed (optional, not a dependency).

Writes results.md / results.json / results.csv / provenance.json / ratios.png into ``--out``.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

from shared.bench import add_bench_args, check_quiet, compare, peak_memory, plot_ratios, timing_table, write_bench
from shared.cli import entry
from shared.provenance import Provenance
from shared.report import Section

HERE = Path(__file__).resolve().parent
BASELINE = "full fine-tuning"
METHODS = {"full fine-tuning": "full", "Conv-Adapter": "conv_adapter", "linear probe": "linear"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="benchmarks/conv-adapter/run.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_bench_args(p, out=str(HERE), rounds=5, threads=2, min_run_time=0.5)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--memory-steps", type=int, default=3)
    return p


def make_step(mode: str, batch: int, size: int, seed: int = 0):
    """A zero-argument train step of ``mode`` on a ResNet-50 with a new 100-class head (module level, so that
    :func:`shared.bench.peak_memory` can build it in a fresh process)."""
    import torch
    from torch import nn

    from conv_adapter import apply_method, create_backbone, replace_head, set_train_mode

    torch.manual_seed(seed)
    model = create_backbone("resnet50")
    replace_head(model, "resnet50", 100)
    if mode == "peft LoRA":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=8, target_modules=r".*layer\d\.\d+\.conv2", modules_to_save=["fc"]))
    else:
        official = dict(placement="official", pool_norm=True) if mode == "Conv-Adapter" else {}
        apply_method(model, "resnet50", METHODS[mode], image_size=size, **official)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    set_train_mode(model, "train")
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 100, (batch,), generator=torch.Generator().manual_seed(2))

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    step.model = model  # for the parameter counts
    return step


@entry
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    prov = Provenance(args, argv, threads=args.threads, workers=1, script="benchmarks/conv-adapter/run.py")
    check_quiet(args.force)
    modes = list(METHODS) + (["peft LoRA"] if importlib.util.find_spec("peft") else [])
    steps = {m: make_step(m, args.batch, args.size) for m in modes}
    counts = {}
    for m, fn in steps.items():
        params = list(fn.model.parameters())
        trainable = sum(p.numel() for p in params if p.requires_grad)
        frozen = sum(p.numel() for p in params if not p.requires_grad)
        counts[m] = {"trainable": trainable, "frozen": frozen}
    timings = compare(steps, baseline=BASELINE, rounds=args.rounds, threads=args.threads, min_run_time=args.min_run_time)
    del steps
    memory = {m: peak_memory(make_step, m, args.batch, args.size, steps=args.memory_steps, threads=args.threads)
              for m in modes}
    base_frozen = counts[BASELINE]["frozen"]
    extra = {m: {"trainable params": f"{c['trainable']:,}",
                 "frozen-state saving (MiB, theory)": f"{12 * (c['frozen'] - base_frozen) / 2**20:.0f}",
                 "measured saving (MiB)": f"{(memory[BASELINE]['peak_bytes'] - memory[m]['peak_bytes']) / 2**20:.0f}"}
             for m, c in counts.items()}
    table = timing_table(timings, BASELINE, memory=memory, unit="ms", extra=extra)
    plot_ratios(timings, BASELINE, Path(args.out) / "ratios.png",
                title=f"ResNet-50 train step, {args.size}x{args.size}, batch {args.batch}, {args.threads} threads")
    ca_t = timings["Conv-Adapter"].ratio_median
    ca_saved = memory[BASELINE]["peak_bytes"] - memory["Conv-Adapter"]["peak_bytes"]
    ca_theory = 12 * (counts["Conv-Adapter"]["frozen"] - base_frozen)
    goals = (f"Goals: Conv-Adapter step time at most 0.8x of full fine-tuning -> **{ca_t:.2f}x "
             f"({'met' if ca_t <= 0.8 else 'not met'})**; Conv-Adapter saves at least half of the theoretical "
             f"frozen-state memory -> **{ca_saved / 2**20:.0f} of {ca_theory / 2**20:.0f} MiB "
             f"({'met' if ca_saved >= 0.5 * ca_theory else 'not met'})**.")
    intro = (f"ResNet-50 (random weights: timing does not depend on them), {args.size}x{args.size}, batch {args.batch}, "
             f"AdamW, BatchNorm in train mode (bn_mode=train); {args.threads} threads, {args.rounds} interleaved rounds of at "
             f"least {args.min_run_time:g} s per variant; memory: peak RSS increase in a fresh process per variant "
             f"over {args.memory_steps} steps. Hugging Face PEFT LoRA: "
             + ("timed (r = 8 on the same convs)." if "peft LoRA" in modes else "peft not installed (optional)."))
    section = Section("Train step: time and peak memory", text=goals, table=table, figures=["ratios.png"],
                      after=("Linear probing saves more than the frozen-state column because it also skips the "
                             "backward pass through the backbone (no backbone activations are kept). A Conv-Adapter "
                             "step still back-propagates through every block (the adapters sit inside them), so its "
                             "time saving is the skipped weight gradients and optimiser work of the frozen convs."))
    md = write_bench(args.out, "Conv-Adapter benchmark: ResNet-50 train step", intro, [section], provenance=prov,
                     force=args.force)
    print(md.read_text())


if __name__ == "__main__":
    main()
