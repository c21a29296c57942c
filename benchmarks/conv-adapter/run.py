"""Train-step time and peak memory: Conv-Adapter vs full fine-tuning vs linear probing (ResNet-50, 224x224).

    make bench-conv-adapter            # = uv run --package conv-adapter python benchmarks/conv-adapter/run.py

All modes run in this one process on the same input; the numbers that matter are the ratios to full
fine-tuning. A step is forward + cross-entropy + backward + AdamW step. Memory on CPU is measured with the
PyTorch profiler's allocator events (each op's self allocations net of frees, in time order): peak = parameters + optimiser state already allocated (after a warm-up
step) + the highest live total of the bytes allocated during one profiled step. The theoretical saving of a
frozen backbone is the gradients and both AdamW moments of the frozen parameters (3 x 4 bytes each);
activations are needed either way. With ``peft`` installed, Hugging Face PEFT's LoRA on the same 3x3 convs is
measured too (optional, not a dependency).

Writes benchmarks/conv-adapter/results.md and results.csv.
"""

from __future__ import annotations

import argparse
import copy
import csv
import importlib.util
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from conv_adapter import apply_method, create_backbone, replace_head

HERE = Path(__file__).resolve().parent


def peak_step_bytes(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> int:
    """Highest live total of bytes allocated during one step (profiler memory events, in time order)."""
    from torch.profiler import ProfilerActivity, profile

    opt.zero_grad(set_to_none=True)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step(model, opt, x, y, zero=False)
    # every op's *self* allocations minus frees (children excluded, so nothing is counted twice), plus the
    # frees the profiler could not attribute to an op ("[memory]" events), accumulated in time order
    events = sorted((e for e in prof.events() if e.self_cpu_memory_usage), key=lambda e: e.time_range.start)
    live = peak = 0
    for e in events:
        live += e.self_cpu_memory_usage
        peak = max(peak, live)
    return peak


def step(model, opt, x, y, zero=True):
    if zero:
        opt.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def build(base: nn.Module, mode: str, reduction: float):
    model = copy.deepcopy(base)
    if mode == "peft LoRA":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=8, target_modules=r".*layer\d\.\d+\.conv2", modules_to_save=["fc"]))
    else:
        method = {"full fine-tuning": "full", "linear probe": "linear", "Conv-Adapter": "conv_adapter"}[mode]
        apply_method(model, "resnet50", method, image_size=224, reduction=reduction)
    params = [p for p in model.parameters() if p.requires_grad]
    return model, torch.optim.AdamW(params, lr=1e-4), params


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--reduction", type=float, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(HERE))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    base = create_backbone("resnet50")
    replace_head(base, "resnet50", 100)
    x = torch.randn(args.batch, 3, args.size, args.size)
    y = torch.randint(0, 100, (args.batch,))
    modes = ["full fine-tuning", "Conv-Adapter", "linear probe"]
    has_peft = importlib.util.find_spec("peft") is not None
    if has_peft:
        modes.append("peft LoRA")
    rows = {}
    for mode in modes:
        model, opt, params = build(base, mode, args.reduction)
        model.train()
        for m in model.modules():  # frozen BN in eval mode, as fit() does
            if isinstance(m, nn.BatchNorm2d) and not any(q.requires_grad for q in m.parameters()):
                m.eval()
        step(model, opt, x, y)  # warm-up; allocates the optimiser state
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            step(model, opt, x, y)
            times.append(time.perf_counter() - t0)
        persistent = tensor_bytes(model.parameters()) + tensor_bytes(
            t for s in opt.state.values() for t in s.values() if torch.is_tensor(t) and t.dim() > 0)
        peak = persistent + peak_step_bytes(model, opt, x, y)
        frozen = sum(q.numel() for q in model.parameters() if not q.requires_grad)
        rows[mode] = {"time": statistics.median(times), "peak": peak, "trainable": sum(q.numel() for q in params),
                      "frozen": frozen}
        print(f"{mode:18s} step {rows[mode]['time']:.3f}s  peak {peak / 2**20:.0f} MiB  trainable {rows[mode]['trainable']:,}")
        del model, opt

    full = rows["full fine-tuning"]
    lines = ["# Conv-Adapter benchmark: ResNet-50 train step", "",
             f"ResNet-50 (random weights; timing does not depend on them), {args.size}x{args.size}, batch {args.batch}, "
             f"AdamW, frozen BN in eval mode, Conv-Adapter conv-parallel gamma = {args.reduction:g} on the 16 bottleneck "
             f"3x3 convs. {platform.machine()} CPU, {args.threads} threads, torch {torch.__version__}; median of "
             f"{args.repeats} steps after a warm-up; all modes in one process. The machine was shared with other jobs, "
             "so absolute times are noisy; ratios were measured back to back.", "",
             "| mode | trainable params | step time (s) | time / full FT | peak memory (MiB) | saved vs full FT (MiB) "
             "| theoretical saving (MiB) | saved / theoretical |", "|---|---|---|---|---|---|---|---|"]
    csv_rows = []
    for mode, r in rows.items():
        saved = (full["peak"] - r["peak"]) / 2**20
        theory = 12 * (r["frozen"] - full["frozen"]) / 2**20  # grad + 2 AdamW moments, fp32
        ratio = saved / theory if theory else float("nan")
        lines.append(f"| {mode} | {r['trainable']:,} | {r['time']:.3f} | {r['time'] / full['time']:.2f}x | "
                     f"{r['peak'] / 2**20:.0f} | {saved:.0f} | {theory:.0f} | "
                     f"{'—' if mode == 'full fine-tuning' else f'{100 * ratio:.0f}%'} |")
        csv_rows.append({"mode": mode, "trainable": r["trainable"], "step_s": f"{r['time']:.4f}",
                         "time_ratio": f"{r['time'] / full['time']:.4f}", "peak_mib": f"{r['peak'] / 2**20:.1f}",
                         "saved_mib": f"{saved:.1f}", "theoretical_mib": f"{theory:.1f}"})
    ca = rows["Conv-Adapter"]
    saved = (full["peak"] - ca["peak"]) / 2**20
    theory = 12 * (ca["frozen"] - full["frozen"]) / 2**20
    lines += ["", "Goals (issue 3): Conv-Adapter step time at most 0.8x of full fine-tuning -> "
              f"**{ca['time'] / full['time']:.2f}x ({'met' if ca['time'] / full['time'] <= 0.8 else 'not met'})**; "
              f"memory saving at least 90% of the theoretical one -> **{100 * saved / theory:.0f}% "
              f"({'met' if saved >= 0.9 * theory else 'not met'})**.", ""]
    lines.append("Hugging Face PEFT LoRA: " + ("measured above (r = 8 on the same convs)." if has_peft else
                                               "peft not installed (optional; `uv pip install peft` to compare)."))
    out = Path(args.out)
    (out / "results.md").write_text("\n".join(lines) + "\n")
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(csv_rows[0]))
        w.writeheader()
        w.writerows(csv_rows)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
