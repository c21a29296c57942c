"""DPT vs PVT-v1 throughput and memory at 224x224, for each size, as ratios measured in one process.

``make bench-depatch`` (= ``uv run --package depatch python benchmarks/depatch/run.py``). Options:
``--sizes tiny small medium``, ``--batch 4``, ``--steps 3``, ``--device auto|cpu|cuda``.

For each size the two models are timed interleaved (PVT, DPT, PVT, DPT, ...) after warm-up, and the
median seconds per step is kept, so load from other processes hits both alike. Memory: peak CUDA
allocation on a GPU; on the CPU (no allocator statistics) the bytes of activations saved for the
backward pass, which is what differs between the two models in training. Goal: DPT step time
within 1.2x of PVT's at each size. Writes ``benchmarks/depatch/results.md`` and ``results.csv``.
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

from depatch import count_parameters, create_model
from shared.runtime import resolve_device

HERE = Path(__file__).resolve().parent


def saved_activation_bytes(model, x, y) -> int:
    """Bytes of the tensors autograd keeps for backward in one training forward pass."""
    total = 0
    seen = set()

    def pack(t):
        nonlocal total
        key = (t.untyped_storage().data_ptr(), t.dtype)
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    model.zero_grad(set_to_none=True)
    return total


def bench_size(size: str, batch: int, steps: int, rounds: int, device: torch.device) -> dict:
    torch.manual_seed(0)
    models = {k: create_model(f"{k}_{size}").to(device) for k in ("pvt", "dpt")}
    opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-4) for k, m in models.items()}
    x = torch.randn(batch, 3, 224, 224, device=device)
    y = torch.randint(0, 1000, (batch,), device=device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def train_step(k):
        m = models[k].train()
        loss = torch.nn.functional.cross_entropy(m(x), y)
        opts[k].zero_grad(set_to_none=True)
        loss.backward()
        opts[k].step()

    def infer_step(k):
        m = models[k].eval()
        with torch.no_grad():
            m(x)

    out = {"size": size, "batch": batch}
    for mode, fn in (("train", train_step), ("infer", infer_step)):
        for k in models:  # warm-up
            fn(k)
        times = {k: [] for k in models}
        for _ in range(rounds):
            for k in models:
                sync()
                t0 = time.perf_counter()
                for _ in range(steps):
                    fn(k)
                sync()
                times[k].append((time.perf_counter() - t0) / steps)
        for k in models:
            out[f"{k}_{mode}_s"] = statistics.median(times[k])
        out[f"{mode}_ratio"] = out[f"dpt_{mode}_s"] / out[f"pvt_{mode}_s"]
    for k, m in models.items():
        out[f"{k}_params_m"] = count_parameters(m) / 1e6
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            train_step(k)
            out[f"{k}_mem_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        else:
            out[f"{k}_mem_mb"] = saved_activation_bytes(m.train(), x, y) / 2**20
    out["mem_ratio"] = out["dpt_mem_mb"] / out["pvt_mem_mb"]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", default=["tiny", "small", "medium"])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=2, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median is kept")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=str(HERE))
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    t0 = time.perf_counter()
    rows = []
    for size in args.sizes:
        r = bench_size(size, args.batch, args.steps, args.rounds, device)
        rows.append(r)
        print(f"{size}: train {r['pvt_train_s']:.3f}s -> {r['dpt_train_s']:.3f}s (x{r['train_ratio']:.2f}), "
              f"infer {r['pvt_infer_s']:.3f}s -> {r['dpt_infer_s']:.3f}s (x{r['infer_ratio']:.2f}), "
              f"memory x{r['mem_ratio']:.2f}", flush=True)
    wall = time.perf_counter() - t0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    hw = (torch.cuda.get_device_name(device) if device.type == "cuda"
          else f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
               f"{torch.get_num_threads()} torch threads, shared with other jobs)")
    mem_kind = "peak CUDA memory" if device.type == "cuda" else "activations saved for backward"
    lines = [
        "# DPT vs PVT-v1 at 224x224: step time and memory ratios",
        "",
        f"Hardware: {hw}. Batch {args.batch}, {args.rounds} interleaved rounds of {args.steps} timed steps after "
        f"one warm-up step each; medians. torch {torch.__version__}. Wall-clock {wall:.0f} s. "
        f"Command: `make bench-depatch` (`python benchmarks/depatch/run.py "
        f"--sizes {' '.join(args.sizes)} --batch {args.batch}`).",
        "",
        f"| size | params PVT / DPT (M) | train s/step PVT / DPT | train ratio | inference s/step PVT / DPT | "
        f"inference ratio | {mem_kind} PVT / DPT (MB) | memory ratio | within 1.2x (train) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['size']} | {r['pvt_params_m']:.2f} / {r['dpt_params_m']:.2f} | {r['pvt_train_s']:.3f} / "
            f"{r['dpt_train_s']:.3f} | {r['train_ratio']:.2f} | {r['pvt_infer_s']:.3f} / {r['dpt_infer_s']:.3f} | "
            f"{r['infer_ratio']:.2f} | {r['pvt_mem_mb']:.0f} / {r['dpt_mem_mb']:.0f} | {r['mem_ratio']:.2f} | "
            f"{'yes' if r['train_ratio'] <= 1.2 else 'no'} |")
    lines += ["", "Ratios are DPT / PVT (lower is better for DPT; 1.0 = no overhead). CPU timings on a shared "
              "machine are noisy; the GPU case (the paper's) was not measured here."]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
