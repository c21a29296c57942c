"""Per-sample gradient-norm scoring of one pool, three ways (gradnorm-al).

ResNet-18 (CIFAR variant) at 32x32, 512 samples, entropy-gradnorm with the official norm (sum of
per-tensor L2 norms), eval mode, float32:

* ``loop``  -- one forward + backward per sample (the official code's way);
* ``ghost`` -- batched forward + backward with per-layer hooks (per-sample norms from activations and
  output gradients; materialised or ghost form per layer, whichever is cheaper), chunked;
* ``vmap``  -- torch.func vmap(grad) over chunks;
* ``floor`` -- one batched forward + backward over the same samples (parameter gradients of the
  summed loss; gives no per-sample information -- the lower bound a vectorised path can approach).

Reports seconds, speed-up over the loop, ratio to the floor, agreement with the loop's scores, and
the peak memory per chunk size (CPU: peak RSS growth via /proc VmHWM reset; CUDA: max allocated).

    uv run --package gradnorm-al python benchmarks/gradnorm-al/run.py [--n 512] [--device cpu]
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch

from gradnorm_al import build_model, per_sample_grad_norms
from gradnorm_al.gradnorm import entropy_loss

HERE = Path(__file__).resolve().parent


def _rss_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    return float("nan")


class PeakMemory:
    """Peak memory growth (MB) during the block."""

    def __init__(self, device: torch.device):
        self.device, self.mb = device, float("nan")

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            try:
                Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
            except OSError:
                pass
            self.base = _rss_mb("VmRSS:")
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.mb = (torch.cuda.max_memory_allocated() - self.base) / 2**20
        else:
            self.mb = _rss_mb("VmHWM:") - self.base


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, repeats=1):
    best, out, mem = float("inf"), None, float("nan")
    for _ in range(repeats):
        with PeakMemory(device) as pm:
            _sync(device)
            t = time.perf_counter()
            out = fn()
            _sync(device)
            dt = time.perf_counter() - t
        best, mem = min(best, dt), pm.mb if mem != mem else max(mem, pm.mb)
    return best, out, mem


def floor(model, x, chunk):
    """Batched forward + backward (parameter gradients of the summed loss), chunk by chunk."""
    model.zero_grad(set_to_none=True)
    for s in range(0, len(x), chunk):
        entropy_loss(model(x[s:s + chunk])).sum().backward()
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads on CPU (0: leave torch's default)")
    ap.add_argument("--ghost-chunks", default="32,64,128,512")
    ap.add_argument("--vmap-chunks", default="16,64")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default=str(HERE))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_model("resnet18_cifar", 10).to(device)
    model.train()
    with torch.no_grad():  # non-trivial BatchNorm running statistics
        for _ in range(2):
            model(torch.randn(64, 3, 32, 32, device=device))
    model.eval()
    x = torch.randn(args.n, 3, 32, 32, device=device)

    rows = []
    per_sample_grad_norms(model, x[:4], impl="ghost")  # warm-up (allocator, kernels)
    t_loop, ref, m_loop = timed(lambda: per_sample_grad_norms(model, x, impl="loop"), device)
    rows.append(("loop (official style)", 1, t_loop, m_loop, 0.0))
    floors = {}
    for c in sorted({int(v) for v in args.ghost_chunks.split(",")} | {args.n}):
        t, _, m = timed(lambda: floor(model, x, c), device, args.repeats)
        floors[c] = t
        rows.append(("floor: batched fwd+bwd", c, t, m, float("nan")))
    model.zero_grad(set_to_none=True)
    for c in [int(v) for v in args.ghost_chunks.split(",")]:
        t, s, m = timed(lambda: per_sample_grad_norms(model, x, impl="ghost", chunk_size=c), device, args.repeats)
        rows.append(("ghost hooks", c, t, m, ((s - ref).abs() / ref).max().item()))
    for c in [int(v) for v in args.vmap_chunks.split(",") if v]:
        per_sample_grad_norms(model, x[:2], impl="vmap", chunk_size=2)  # warm-up (torch.func set-up)
        t, s, m = timed(lambda: per_sample_grad_norms(model, x, impl="vmap", chunk_size=c), device)
        rows.append(("vmap(grad)", c, t, m, ((s - ref).abs() / ref).max().item()))

    best_floor = min(floors.values())
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.machine()} CPU, {torch.get_num_threads()} threads"
    lines = [
        "# gradnorm-al benchmark: per-sample gradient-norm scoring",
        "",
        f"ResNet-18 (CIFAR variant, 11.2M params) at 32x32, {args.n} samples, entropy-gradnorm, official norm "
        f"(sum of per-tensor L2 norms), eval mode, float32. Device: {dev_name}; torch {torch.__version__}. "
        "All timings from one process (ratios are what matter; the machine was shared with other jobs).",
        "",
        f"Best floor (one batched forward+backward over the same samples, any chunk): {best_floor:.2f} s.",
        "",
        "| method | chunk | seconds | samples/s | speed-up vs loop | x floor (best) | x floor (same chunk) | peak memory growth (MB) | max rel. diff vs loop |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    csv = ["method,chunk,seconds,samples_per_s,speedup_vs_loop,ratio_to_best_floor,ratio_to_floor_same_chunk,peak_mb,max_rel_diff"]
    for name, c, t, m, d in rows:
        same = t / floors[c] if c in floors and not name.startswith("floor") else float("nan")
        lines.append(f"| {name} | {c} | {t:.2f} | {args.n / t:.1f} | {t_loop / t:.2f} | {t / best_floor:.2f} | "
                     f"{'' if same != same else f'{same:.2f}'} | {m:.0f} | {'' if d != d else f'{d:.1e}'} |")
        csv.append(f"{name},{c},{t:.4f},{args.n / t:.2f},{t_loop / t:.3f},{t / best_floor:.3f},{same:.3f},{m:.1f},{d:.3e}")
    ghost = min((r for r in rows if r[0] == "ghost hooks"), key=lambda r: r[2])
    vm = min((r for r in rows if r[0] == "vmap(grad)"), key=lambda r: r[2], default=None)
    lines += ["", f"Fastest vectorised path: ghost hooks at chunk {ghost[1]}: {ghost[2] / best_floor:.2f}x the floor, "
              f"{t_loop / ghost[2]:.2f}x faster than the loop"
              + (f"; vmap best {vm[2] / best_floor:.2f}x the floor." if vm else "."),
              "Goal: within 1.5x of the floor -> " + ("met." if ghost[2] / best_floor <= 1.5 else "not met."),
              "`impl=auto` (the default) uses the ghost hooks whenever every parameterised layer has a rule "
              "(Conv2d, Linear, BatchNorm, LayerNorm, GroupNorm) and falls back to vmap otherwise."]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    suffix = "" if device.type == "cpu" else f"_{device.type}"
    (out / f"results{suffix}.md").write_text("\n".join(lines) + "\n")
    (out / f"results{suffix}.csv").write_text("\n".join(csv) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
