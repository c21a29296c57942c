"""``make reproduce-depatch`` / ``depatch-reproduce``: the small-scale claim checks.

Mini PVT-v1 vs mini DPT (same widths and depths; DPT swaps the patch embedding of stages 2-4 for
DePatch) on the synthetic varied-scale task, over several seeds: top-1 mean ± std, parameter and
FLOP (multiply-accumulate) overhead, train-step and inference time ratios, the DePatch box
statistics, and the patch-rectangle figure. The full-size parameter/FLOP accounting of DPT-T vs
PVT-T at 224 px is checked against the paper's numbers too. Writes ``results/depatch/``.

Runs go two at a time (one thread each) to use both cores of the dev machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import torch

from shared.metrics import ResultRow, mean_std, write_results

FULL = {"n_train": 2000, "n_test": 500, "epochs": 5, "batch_size": 64}
QUICK = {"n_train": 64, "n_test": 32, "epochs": 1, "batch_size": 16}


def _overrides(arch: str, seed: int, size: dict, image_size: int) -> list[str]:
    return [f"model={arch}", f"seed={seed}", f"data.data_seed={seed}", f"data.n_train={size['n_train']}",
            f"data.n_test={size['n_test']}", f"data.image_size={image_size}", f"epochs={size['epochs']}",
            f"batch_size={size['batch_size']}", "device=cpu", "threads=1", "resume=null", "figure.num_images=0",
            "log_interval_s=60", f"name=reproduce/{arch}_s{seed}"]


def _run_one(args: tuple[str, int, dict, int, str, bool]) -> dict:
    """One training run in a worker process (fit() into ``<runs>/depatch/reproduce/<arch>_s<seed>``).
    With ``reuse``, a finished run of exactly this config (same resolved config.yaml, all steps done)
    is read back instead of retrained."""
    arch, seed, size, image_size, runs, reuse = args
    torch.set_num_threads(1)
    import yaml
    from hydra import compose, initialize_config_module

    from depatch.train import fit
    from shared.runtime import to_plain

    with initialize_config_module(config_module="depatch.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=_overrides(arch, seed, size, image_size))
    out_dir = Path(runs) / "depatch" / "reproduce" / f"{arch}_s{seed}"
    done = out_dir / "final_metrics.json"
    if reuse and done.is_file() and (out_dir / "config.yaml").is_file():
        same = yaml.safe_load((out_dir / "config.yaml").read_text()) == to_plain(cfg)
        final = json.loads(done.read_text())
        if same and final.get("step") == size["epochs"] * (size["n_train"] // size["batch_size"]):  # drop_last
            return {"arch": arch, "seed": seed, "run_dir": str(out_dir), "reused": True, **final}
    if (out_dir / "last.pt").exists():
        (out_dir / "last.pt").unlink()  # always a fresh run
    metrics = fit(cfg, out_dir)
    return {"arch": arch, "seed": seed, "run_dir": str(out_dir), **metrics}


def count_macs(model: torch.nn.Module, image_size: int) -> float:
    """Multiply-accumulates of one forward pass at ``image_size`` (the papers' "FLOPs"): torch's
    FlopCounterMode (2 FLOPs per MAC) for the dense ops, plus 4 MACs per channel per bilinear
    sample of each DePatch, which FlopCounterMode does not count."""
    from torch.utils.flop_counter import FlopCounterMode

    from depatch.depatch import DePatchEmbed

    model = model.eval()
    x = torch.zeros(1, 3, image_size, image_size)
    sampled = []

    def hook(mod, inp, out):
        tokens = out[0].shape[1]
        sampled.append(tokens * mod.num_points ** 2 * mod.in_chans)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, DePatchEmbed)]
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    for h in handles:
        h.remove()
    return counter.get_total_flops() / 2 + 4 * sum(sampled)


def time_steps(models: dict[str, torch.nn.Module], image_size: int, batch: int, steps: int, train: bool,
               rounds: int = 3) -> dict[str, float]:
    """Median seconds per step of each model, measured interleaved (A B A B ...) in this process so
    that load from other processes hits both alike."""
    import statistics

    x = torch.randn(batch, 3, image_size, image_size)
    y = torch.randint(0, 10, (batch,))
    opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-4) for k, m in models.items()}
    times: dict[str, list[float]] = {k: [] for k in models}

    def step(name):
        m = models[name]
        if train:
            m.train()
            loss = torch.nn.functional.cross_entropy(m(x), y)
            opts[name].zero_grad()
            loss.backward()
            opts[name].step()
        else:
            m.eval()
            with torch.no_grad():
                m(x)

    for name in models:  # warm-up
        step(name)
    for _ in range(rounds):
        for name in models:
            t0 = time.perf_counter()
            for _ in range(steps):
                step(name)
            times[name].append((time.perf_counter() - t0) / steps)
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="DPT vs PVT small-scale claim checks on synthetic data.")
    p.add_argument("--out", default="results/depatch", help="output directory (default: results/depatch)")
    p.add_argument("--seeds", type=int, default=3, help="number of seeds per model (default 3)")
    p.add_argument("--quick", action="store_true", help="tiny sizes, for tests")
    p.add_argument("--workers", type=int, default=2, help="parallel training runs (one thread each)")
    p.add_argument("--reuse", action="store_true",
                   help="read back finished runs of the identical config from $REPRO_RUNS instead of retraining")
    args = p.parse_args(argv)
    if args.seeds < 1:
        p.error("--seeds must be at least 1")
    t_start = time.perf_counter()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = os.environ.get("REPRO_RUNS", "runs")
    size = QUICK if args.quick else FULL
    image_size = 32 if args.quick else 64

    from depatch.pvt import count_parameters, create_model

    # 1. training runs: mini PVT and mini DPT, same seeds (same data, same init of shared layers)
    jobs = [(arch, seed, size, image_size, runs, args.reuse) for seed in range(args.seeds) for arch in ("pvt_mini", "dpt_mini")]
    with ProcessPoolExecutor(max_workers=args.workers, mp_context=get_context("spawn")) as pool:
        results = list(pool.map(_run_one, jobs))
    by = {a: sorted((r for r in results if r["arch"] == a), key=lambda r: r["seed"]) for a in ("pvt_mini", "dpt_mini")}
    acc = {a: [r["acc1"] for r in rs] for a, rs in by.items()}

    # 2. parameters and MACs: the mini models and the paper's DPT-T / PVT-T at 224 px
    nc = 10
    minis = {a: create_model(a, num_classes=nc, img_size=image_size) for a in ("pvt_mini", "dpt_mini")}
    params = {a: count_parameters(m) / 1e6 for a, m in minis.items()}
    macs = {a: count_macs(m, image_size) / 1e6 for a, m in minis.items()}
    full = {a: create_model(a) for a in ("pvt_tiny", "dpt_tiny")}
    full_params = {a: count_parameters(m) / 1e6 for a, m in full.items()}
    full_macs = {a: count_macs(m, 224) / 1e9 for a, m in full.items()}
    del full

    # 3. time ratios (interleaved, same process)
    steps = 2 if args.quick else 5
    train_t = time_steps(minis, image_size, size["batch_size"], steps, train=True)
    infer_t = time_steps(minis, image_size, size["batch_size"] * 2, steps, train=False)
    train_ratio = train_t["dpt_mini"] / train_t["pvt_mini"]
    infer_ratio = infer_t["dpt_mini"] / infer_t["pvt_mini"]

    # 4. the patch-rectangle figure from the seed-0 DPT run
    from depatch.data import synthetic_splits
    from depatch.viz import plot_patch_rectangles

    ck = torch.load(Path(by["dpt_mini"][0]["run_dir"]) / "last.pt", map_location="cpu", weights_only=True)
    dpt = create_model("dpt_mini", num_classes=nc, img_size=image_size)
    dpt.load_state_dict(ck["model"])
    from omegaconf import OmegaConf

    _, test = synthetic_splits(OmegaConf.create(ck["config"]["data"]))
    n_fig = min(6, len(test))
    images = torch.stack([test[i][0] for i in range(n_fig)])
    plot_patch_rectangles(dpt, images, out / "patch_rectangles.png", stage=2, labels=[test[i][1] for i in range(n_fig)],
                          title="mini DPT (seed 0) on synthetic varied-scale data: stage-2 DePatch rectangles "
                                "(top: the fixed patches they replace)")

    # 5. the table
    dm, _ = mean_std(acc["dpt_mini"])
    pm, _ = mean_std(acc["pvt_mini"])
    # DePatch box statistics of each seed's trained DPT on 64 test images
    from depatch.viz import box_stats

    stats = []
    for r in by["dpt_mini"]:
        c = torch.load(Path(r["run_dir"]) / "last.pt", map_location="cpu", weights_only=True)
        m = create_model("dpt_mini", num_classes=nc, img_size=image_size)
        m.load_state_dict(c["model"])
        _, t = synthetic_splits(OmegaConf.create(c["config"]["data"]))
        stats.append(box_stats(m, torch.stack([t[i][0] for i in range(min(64, len(t)))])))
    shift = [st["s2_shift"] for st in stats]
    bsize = [st["s2_size"] for st in stats]
    rows = [
        ResultRow("synthetic varied-scale, 64 px, 10 classes; mini DPT vs mini PVT", "top-1 (%)", acc["dpt_mini"],
                  acc["pvt_mini"], "ImageNet: DPT-T 77.4 vs PVT-T 75.1 (Table 1)", "higher", dm > pm),
        ResultRow("paper models at 224 px: DPT-T vs PVT-T", "parameters (M)", [full_params["dpt_tiny"]],
                  full_params["pvt_tiny"], "15.2 vs 13.2 (README; +1.92 M)", "small overhead (+14.5%)",
                  round(full_params["dpt_tiny"], 1) == 15.2 and round(full_params["pvt_tiny"], 1) == 13.2),
        ResultRow("paper models at 224 px: DPT-T vs PVT-T", "GMACs", [full_macs["dpt_tiny"]], full_macs["pvt_tiny"],
                  "2.1 vs 1.9 (README)", "small overhead (+10%)",
                  round(full_macs["dpt_tiny"], 1) == 2.1 and round(full_macs["pvt_tiny"], 1) == 1.9),
        ResultRow("mini models, 64 px", "parameters (M)", [params["dpt_mini"]], params["pvt_mini"], "", "overhead", None,
                  digits=3),
        ResultRow("mini models, 64 px", "MMACs", [macs["dpt_mini"]], macs["pvt_mini"], "", "overhead", None),
        ResultRow("mini models, 64 px, CPU 1 thread", "train step time ratio DPT/PVT", [train_ratio], 1.0, "",
                  "goal <= 1.2", train_ratio <= 1.2),
        ResultRow("mini models, 64 px, CPU 1 thread", "inference time ratio DPT/PVT", [infer_ratio], 1.0, "",
                  "goal <= 1.2", infer_ratio <= 1.2),
        ResultRow("mini DPT after training (test images)", "stage-2 mean centre shift (strides)", shift, "0 at init", "",
                  "patches move", None, digits=3),
        ResultRow("mini DPT after training (test images)", "stage-2 mean box side (strides)", bsize, "0.5 at init", "",
                  "patches resize", None, digits=3),
    ]
    wall = time.perf_counter() - t_start
    scale = (f"{size['n_train']} train / {size['n_test']} test images per seed, {image_size} px, {size['epochs']} epochs, "
             f"batch {size['batch_size']}")
    preamble = (
        f"Data: **synthetic** (shared.data procedural shapes, objects at scale 0.15-0.9 of the image side and anywhere "
        f"in the image), not ImageNet. Scale: {scale}; models: mini PVT-v1 / mini DPT (widths 32-128, one block per "
        f"stage), not the paper's sizes. Seeds: {args.seeds} per model (seed i: data seed i and init seed i for both). "
        f"Hardware: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores shared with other jobs, "
        f"{args.workers} runs in parallel at 1 thread each, no GPU. Wall-clock: {wall / 60:.1f} min "
        f"{'(training runs read back with --reuse; see runs.json for their own wall-clock) ' if any(r.get('reused') for r in results) else ''}"
        f"({'quick mode' if args.quick else 'full'}); time ratios are medians of interleaved timings in one process "
        f"and are noisy on a shared machine.\n\nPer-seed top-1: DPT {[round(a, 2) for a in acc['dpt_mini']]}, "
        f"PVT {[round(a, 2) for a in acc['pvt_mini']]}."
    )
    notes = (
        "The paper's accuracy claim is about ImageNet at 224 px with 300 epochs; a few CPU minutes on synthetic data "
        "cannot test it, and the first row says only what this small run shows. `holds?` compares means and "
        "ignores the seed spread. The parameter and MAC rows for DPT-T / PVT-T are exact accounting of the "
        "models as built (they match the official code to 0.01 M). MACs add 4 per channel per bilinear sample, "
        "which torch's FlopCounterMode does not count. Figure: `patch_rectangles.png`."
    )
    write_results(rows, out, "DePatch / DPT: small-scale claim checks", preamble, notes)
    (out / "runs.json").write_text(json.dumps({"runs": results, "params_m": params, "mmacs": macs,
                                               "full_params_m": full_params, "full_gmacs": full_macs,
                                               "train_step_s": train_t, "infer_step_s": infer_t, "wall_s": wall},
                                              indent=2, default=str) + "\n")
    print((out / "results.md").read_text())
    print(f"wrote {out}/results.md, results.csv, runs.json, patch_rectangles.png in {wall / 60:.1f} min")


if __name__ == "__main__":
    main()
