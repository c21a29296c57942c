"""landmark-ambiguity benchmarks (CPU, one process; ratios against baselines measured here):

1. one latent-GT search pass over the training set vs one training epoch (goal <= 0.3x), split into the
   window search itself and the forward pass that produces the heatmaps;
2. synthetic face renderer throughput (faces/s, one thread) at 64 and 128 px;
3. inference throughput of the default (hg2_w32, 64 px) and paper-size (hg4_w256, 256 px) networks.

    uv run --package landmark-ambiguity python benchmarks/landmark-ambiguity/run.py [--quick]
Writes benchmarks/landmark-ambiguity/results.{md,csv}.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from landmark_ambiguity.heatmaps import gaussian_heatmaps, to_heatmap
from landmark_ambiguity.model import build_model
from landmark_ambiguity.search import SearchConfig, latent_search
from landmark_ambiguity.train import predict_heatmaps
from shared.data.faces import generate_faces, render, sample_params

HERE = Path(__file__).resolve().parent


def timed(fn, repeat=1):
    best = math.inf
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    n = 64 if a.quick else 400
    rows = []

    # 1. search pass vs training epoch (default config: 64 px, 16x16 heatmaps, batch 16)
    faces = generate_faces(n, 64, seed=0)
    images = torch.from_numpy(faces.images).permute(0, 3, 1, 2).contiguous()
    labels = torch.from_numpy(faces.landmarks)
    model = build_model("hg2_w32")
    opt = torch.optim.Adam(model.parameters(), 2e-3)

    def epoch():
        model.train()
        for i in range(0, n, 16):
            x = images[i:i + 16].float() / 255
            t = gaussian_heatmaps(to_heatmap(labels[i:i + 16], 4), (16, 16), 1.0)
            loss = sum(F.mse_loss(o, t, reduction="sum") / len(x) for o in model(x))
            opt.zero_grad()
            loss.backward()
            opt.step()

    t_epoch = timed(epoch)
    t_fwd = timed(lambda: predict_heatmaps(model, images, torch.device("cpu")))
    hm = predict_heatmaps(model, images, torch.device("cpu"))
    obs = to_heatmap(labels, 4)
    cfg = SearchConfig()
    t_search = timed(lambda: latent_search(hm, obs, cfg), repeat=2)
    rows += [("training epoch (hg2_w32, 64 px, batch 16)", f"{n} images", f"{t_epoch:.2f} s", "1.00x (baseline)"),
             ("latent-GT window search only (17x17 candidates, 7x7 patches)", f"{n * 68} landmarks",
              f"{t_search:.2f} s", f"{t_search / t_epoch:.3f}x epoch"),
             ("search pass incl. the eval forward pass", f"{n} images", f"{t_search + t_fwd:.2f} s",
              f"{(t_search + t_fwd) / t_epoch:.3f}x epoch")]

    # 2. renderer throughput, one thread (numpy)
    for size in (64, 128):
        p = sample_params(n if size == 64 else n // 2, 0, occluder_prob=0.2)
        t = timed(lambda: render(p, size))
        rows.append((f"face renderer {size} px (numpy, 1 thread)", f"{len(p)} faces", f"{len(p) / t:.0f} faces/s",
                     f"{60 * len(p) / t:.0f} faces/min"))

    # 3. inference throughput
    for name, size, bs in (("hg2_w32", 64, 64), ("hg4_w256", 256, 4 if a.quick else 8)):
        m = build_model(name).eval()
        x = torch.rand(bs, 3, size, size)
        with torch.no_grad():
            m(x)
            t = timed(lambda: m(x), repeat=2)
        params = sum(q.numel() for q in m.parameters()) / 1e6
        rows.append((f"inference {name} ({size} px, {params:.2f} M params)", f"batch {bs}", f"{bs / t:.1f} img/s", ""))

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    head = (f"# landmark-ambiguity benchmarks\n\nCPU {platform.machine()}, torch {torch.__version__}, "
            f"{a.threads} torch threads, load average at the end {load:.1f} (shared 2-core VM; absolute times are "
            f"inflated by other jobs, ratios measured back to back are more meaningful){' QUICK' if a.quick else ''}.\n")
    md = [head, "| what | size | time / throughput | ratio |", "|---|---|---|---|"]
    md += [f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} |" for r in rows]
    (HERE / "results.md").write_text("\n".join(md) + "\n")
    with open(HERE / "results.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["what", "size", "value", "ratio"])
        w.writerows(rows)
    print("\n".join(md))


if __name__ == "__main__":
    main()
