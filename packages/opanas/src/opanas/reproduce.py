"""OPANAS small-scale claim checks on synthetic detection scenes -> results/opanas/.

    uv run --package opanas opanas-reproduce [--seeds 3] [--workers 2] [--quick]

1. Mechanism check (the search must find what its fitness rewards):
   a. unit level: the evolutionary search on a fitness with a planted optimum (the number of edges that agree
      with a hidden architecture) against random search with the same number of evaluations, paired seeds;
   b. super-net level: per seed, the searched architecture's detection AP with the super-net's weights on the
      ``val`` split (never used by the search) against the distribution of architectures drawn at random from
      the same space and scored with the same weights, and against random search at the same budget
      (the best of as many random draws, chosen on the search split).
2. Scaled-down paper setting: every neck retrained from scratch with the same steps, data and detector: the
   searched architecture against FPN, against an FPN widened to the searched neck's parameter count (the
   parameter-matched FPN), and against one random architecture of the space.
Verdicts: ``shared.metrics.paired_verdict`` (one-sided paired t-test at 5 % over seeds).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import time
from pathlib import Path

from shared.cli import entry

MECH_ARMS = ("searched", "fpn", "fpn_matched", "random")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="results/opanas")
    p.add_argument("--seeds", type=int, default=3, help="paired seeds (init, sampling and order; same images)")
    p.add_argument("--workers", type=int, default=2, help="parallel fit() processes, 1 thread each")
    p.add_argument("--size", type=int, default=128, help="scene size (px)")
    p.add_argument("--train-images", type=int, default=256)
    p.add_argument("--search-images", type=int, default=64, help="held-out split the search scores candidates on")
    p.add_argument("--val-images", type=int, default=128)
    p.add_argument("--supernet-steps", type=int, default=300)
    p.add_argument("--retrain-steps", type=int, default=250)
    p.add_argument("--population", type=int, default=6)
    p.add_argument("--generations", type=int, default=2)
    p.add_argument("--random-archs", type=int, default=12,
                   help="architectures drawn at random and scored with each seed's super-net")
    p.add_argument("--ea-seeds", type=int, default=10, help="seeds of the planted-optimum search check")
    p.add_argument("--quick", action="store_true", help="tiny sizes (tests; plumbing only, not a result)")
    return p


def _quick(args) -> None:
    args.size, args.train_images, args.search_images, args.val_images = 64, 8, 4, 4
    args.supernet_steps, args.retrain_steps, args.population, args.generations = 2, 2, 2, 1
    args.random_archs, args.ea_seeds = 3, 3


def base_overrides(args, scenes: Path) -> list[str]:
    o = ["device=cpu", "threads=1", "resume=auto", "log_interval_s=60", f"data.root={scenes}", f"data.size={args.size}",
         f"model.min_size={args.size}", f"model.max_size={args.size}", f"data.train_images={args.train_images}",
         f"data.search_images={args.search_images}", f"data.val_images={args.val_images}",
         f"supernet.steps={args.supernet_steps}", f"retrain.steps={args.retrain_steps}",
         f"search.population={args.population}", f"search.generations={args.generations}",
         f"search.topk={max(1, args.population // 2)}"]
    if args.quick:
        o += ["data.batch_size=2", "model.neck_channels=8", "model.backbone_channels=[8,8,16,16]", "eval.batch_size=4"]
    return o


def arm_overrides(arm: str, extra: dict | None = None) -> list[str]:
    if arm == "searched":
        return ["mode=search"]
    if arm == "fpn":
        return ["mode=train", "model.neck=fpn"]
    if arm == "fpn_matched":
        return ["mode=train", "model.neck=fpn", f"model.fpn_inner_channels={extra['inner']}"]
    if arm == "random":
        return ["mode=train", "model.arch=random"]
    raise ValueError(arm)


def _compose(overrides: list[str]):
    from shared.provenance import compose

    return compose("opanas.conf", overrides)


def _fit(job: tuple[str, list[str], str]) -> dict:
    import torch

    from opanas.train import fit

    name, overrides, run_dir = job
    torch.set_num_threads(1)
    done = Path(run_dir) / "final_metrics.json"
    t0 = time.perf_counter()
    res = json.loads(done.read_text()) if done.is_file() else fit(_compose(overrides), run_dir)
    return {"job": name, "wall": time.perf_counter() - t0, **res}


def _supernet_scores(job: tuple[str, list[str], str, int, int]) -> dict:
    """The super-net of one seed's search run scores its searched architecture and ``n`` random ones on the
    search and val splits (the same weights for every architecture)."""
    import numpy as np
    import torch

    from opanas.arch import arch_to_str, random_arch
    from opanas.data import build_data
    from opanas.train import evaluate, make_model, model_kwargs

    name, overrides, run_dir, n, seed = job
    torch.set_num_threads(1)
    cfg = _compose(overrides)
    run = Path(run_dir)
    data = build_data(cfg, run)
    model = make_model(model_kwargs(cfg, data.num_classes, None))
    model.load_state_dict(torch.load(run / "supernet.pt", map_location="cpu", weights_only=True)["model"])
    searched = json.loads((run / "search.json").read_text())["best"]
    rng = np.random.default_rng([seed, 777])
    archs = [searched] + [arch_to_str(random_arch(rng)) for _ in range(n)]
    bs, dev = int(cfg.eval.batch_size), torch.device("cpu")
    rows = [{"arch": a, "search_AP": evaluate(model, data.search, bs, dev, arch=a)["AP"],
             "val_AP": evaluate(model, data.val, bs, dev, arch=a)["AP"]} for a in archs]
    return {"job": name, "searched": rows[0], "random": rows[1:]}


def planted_check(seeds: int) -> list[dict]:
    """EA vs random search at equal evaluations on a planted optimum (fitness = edges agreeing with a hidden
    code; 15 is the optimum), each seed with its own hidden code."""
    import numpy as np

    from opanas.arch import random_arch
    from opanas.search import EvolutionConfig, evolution_search

    cfg = EvolutionConfig(population=20, topk=5, generations=8, num_mutation=10, num_crossover=10, mutate_prob=0.1)
    out = []
    for s in range(seeds):
        target = random_arch(np.random.default_rng([s, 99]))

        def fit_(a, t=target):
            return float(sum(x == y for x, y in zip(a, t)))

        evo = evolution_search(fit_, cfg, seed=s)
        rng = np.random.default_rng([s, 5])
        rand = max(fit_(random_arch(rng)) for _ in range(evo.num_evaluated))
        out.append({"seed": s, "evaluated": evo.num_evaluated, "evolution": evo.best_fitness, "random_search": rand})
    return out


@entry
def main(argv: list[str] | None = None) -> None:
    from shared.provenance import Provenance

    from opanas.data import synthetic_splits
    from opanas.neck import FPN, fpn_inner_channels_for

    args = build_parser().parse_args(argv)
    prov = Provenance(args, argv, threads=1, workers=args.workers, script="opanas-reproduce")
    if args.quick:
        _quick(args)
    t_start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = Path(os.environ.get("REPRO_RUNS", "runs")) / "opanas" / "reproduce" / ("quick" if args.quick else "full")
    scenes = runs / "scenes"
    base = base_overrides(args, scenes)
    # the images once, before the workers read them (every run and seed uses the same images)
    from shared.data.detection_scenes import synthetic_detection

    root, splits, kwargs = synthetic_splits(_compose(base), runs)
    synthetic_detection(root, splits, **kwargs)

    jobs1, seeds = [], list(range(args.seeds))
    for arm in ("searched", "fpn", "random"):  # the longest runs first, so the workers finish together
        for s in seeds:
            ov = [*base, f"seed={s}", f"name={arm}_s{s}", *arm_overrides(arm)]
            jobs1.append((f"{arm}|{s}", ov, str(runs / f"{arm}_s{s}")))
    ctx = mp.get_context("spawn")
    print(f"{len(jobs1) + 2 * len(seeds)} jobs on {args.workers} workers; runs in {runs}", flush=True)
    with ctx.Pool(args.workers) as pool:
        async_planted = pool.apply_async(planted_check, (args.ea_seeds,))
        res = {r["job"]: r for r in pool.map(_fit, jobs1, chunksize=1)}
        cfg0 = _compose(base)
        chans = list(cfg0.model.backbone_channels)
        jobs2, jobs_sn = [], []
        for s in seeds:
            target = res[f"searched|{s}"]["neck_params"]
            inner = fpn_inner_channels_for(target, chans, int(cfg0.model.neck_channels))
            ov = [*base, f"seed={s}", f"name=fpn_matched_s{s}", *arm_overrides("fpn_matched", {"inner": inner})]
            jobs2.append((f"fpn_matched|{s}", ov, str(runs / f"fpn_matched_s{s}")))
            sov = [*base, f"seed={s}", f"name=searched_s{s}", *arm_overrides("searched")]
            jobs_sn.append((f"supernet|{s}", sov, str(runs / f"searched_s{s}"), args.random_archs, s))
        async_sn = pool.map_async(_supernet_scores, jobs_sn, chunksize=1)
        res.update({r["job"]: r for r in pool.map(_fit, jobs2, chunksize=1)})
        sn = {r["job"]: r for r in async_sn.get()}
        planted = async_planted.get()
    for name, ov, _ in jobs1 + jobs2:
        prov.add_run(name, _compose(ov), ov, config_module="opanas.conf")
    wall = time.perf_counter() - t_start
    fpn_std = FPN(chans, int(cfg0.model.neck_channels))
    payload = {"args": vars(args), "runs": res, "supernet": sn, "planted": planted, "wall_seconds": wall,
               "fpn_params": sum(p.numel() for p in fpn_std.parameters())}
    (out / "raw.json").write_text(json.dumps(payload, indent=1, default=str) + "\n")
    write_report(out, payload, prov)
    print((out / "results.md").read_text())


def _pct(values, x) -> float:
    return 100.0 * sum(v < x for v in values) / max(len(values), 1)


def write_report(out: Path, payload: dict, prov) -> None:
    import statistics

    from shared.metrics import ResultRow, paired_verdict
    from shared.report import Section, Table
    from shared.report import write_report as write_doc

    from opanas.viz import plot_arch

    a = payload["args"]
    seeds = list(range(a["seeds"]))
    runs, sn = payload["runs"], payload["supernet"]

    def v(diffs):
        return paired_verdict(diffs, "higher").verdict

    # ---- 1a. planted optimum
    pl = payload["planted"]
    d_pl = [r["evolution"] - r["random_search"] for r in pl]
    mech_rows = [ResultRow(f"planted optimum: evolution - random search, {pl[0]['evaluated']} evaluations each",
                           "best fitness diff (edges of 15, paired)", d_pl, baseline=[r["random_search"] for r in pl],
                           paper="evolution finds better architectures than random draws", direction="higher (> 0)",
                           holds=v(d_pl), digits=2)]
    # ---- 1b. super-net
    table, d_mean, d_rs, pct = [], [], [], []
    k = None
    for s in seeds:
        r = sn[f"supernet|{s}"]
        k = runs[f"searched|{s}"]["search_candidates"]
        rand_val = [x["val_AP"] * 100 for x in r["random"]]
        searched_val = r["searched"]["val_AP"] * 100
        best_k = max(r["random"][:k], key=lambda x: x["search_AP"])["val_AP"] * 100
        d_mean.append(searched_val - statistics.fmean(rand_val))
        d_rs.append(searched_val - best_k)
        pct.append(_pct(rand_val, searched_val))
        table.append([s, runs[f"searched|{s}"]["searched_arch"], round(r["searched"]["search_AP"] * 100, 2),
                      round(searched_val, 2), f"{statistics.fmean(rand_val):.2f} ± {statistics.pstdev(rand_val):.2f}",
                      f"{min(rand_val):.2f} / {max(rand_val):.2f}", round(best_k, 2), f"{pct[-1]:.0f}"])
    mech_rows += [
        ResultRow("super-net weights: searched arch - mean of random archs (val split)", "AP diff (pts, paired)", d_mean,
                  paper="the search finds above-average paths", direction="higher (> 0)", holds=v(d_mean)),
        ResultRow(f"super-net weights: searched arch - random search best of {k} (val split)", "AP diff (pts, paired)",
                  d_rs, paper="not claimed (the paper uses evolution)", direction="higher (> 0)", holds=v(d_rs)),
        ResultRow("super-net weights: searched arch's percentile among random archs (val split)", "percentile", pct,
                  baseline=50.0, paper="", direction="above 50", holds=None, digits=0)]
    why = (f"**Why this check can show the mechanism.** OPANAS rests on two mechanisms: the weight-sharing super-net ranks "
           f"architectures by a fitness that transfers, and the evolutionary search finds architectures of high fitness. "
           f"(a) On a fitness with a planted optimum only the search decides the outcome: evolution must reach higher "
           f"fitness than random search with the same evaluations, or its selection, mutation or crossover is broken. "
           f"(b) With one super-net per seed, the searched architecture and {a['random_archs']} architectures drawn at "
           f"random from the same space are scored with the same weights on the `val` split, which the search never "
           f"saw: if the super-net's ranking carries information and the search exploits it, the searched architecture "
           f"lies above the random distribution. A search that ignores fitness, or a super-net trained on one fixed path "
           f"(so that the other paths keep their initial weights), puts it in the middle or below.")
    # ---- 2. retrained
    ap = {arm: [runs[f"{arm}|{s}"]["val_AP"] * 100 for s in seeds] for arm in MECH_ARMS}
    rows2 = []
    claims = {"fpn": ("+2.3 to +3.2 AP over FPN (COCO, abstract)", "higher (> 0)"),
              "fpn_matched": ("not in the paper (review request: FPN at the searched neck's size)", "higher (> 0)"),
              "random": ("not claimed directly", "higher (> 0)")}
    for arm in ("fpn", "fpn_matched", "random"):
        d = [x - y for x, y in zip(ap["searched"], ap[arm])]
        rows2.append(ResultRow(f"retrained: searched - {arm.replace('_', ' ')}", "val mAP diff (pts, paired)", d,
                               baseline=ap[arm], paper=claims[arm][0], direction=claims[arm][1], holds=v(d)))
    for arm in MECH_ARMS:
        rows2.append(ResultRow(f"retrained: {arm.replace('_', ' ')} neck", "val mAP (%)", ap[arm]))
        rows2.append(ResultRow(f"retrained: {arm.replace('_', ' ')} neck", "neck params (k)",
                               [runs[f"{arm}|{s}"]["neck_params"] / 1e3 for s in seeds], digits=1))
    cost = [(runs[f"searched|{s}"]["supernet_seconds"] + runs[f"searched|{s}"]["search_seconds"]) / 60 for s in seeds]
    retrain = [runs[f"searched|{s}"]["retrain_seconds"] / 60 for s in seeds]
    cost_rows = [ResultRow("search cost (super-net training + evolutionary search), 1 thread", "wall-minutes", cost,
                           baseline=retrain, paper="4 GPU-days on COCO (abstract)",
                           direction="", holds=None)]
    for s in seeds:
        plot_arch(runs[f"searched|{s}"]["searched_arch"], out / f"architecture_seed{s}.png",
                  title=f"searched architecture (synthetic, seed {s})")
    _plot(out / "supernet_fitness.png", sn, seeds)
    quick = a["quick"]
    intro = (f"**Data: synthetic** detection scenes (`shared.data.detection_scenes`, 5 shape classes, COCO-style "
             f"small/medium/large objects with occlusion, {a['size']} px; {a['train_images']} train, {a['search_images']} "
             f"held-out search, {a['val_images']} val images, the same for every seed), written as COCO files and scored "
             f"with pycocotools: not COCO, and not comparable to the paper's numbers. Detector: torchvision Faster R-CNN "
             f"with the package's tiny from-scratch backbone, deformable paths, AdamW. Super-net {a['supernet_steps']} "
             f"steps (one path per edge drawn per step), evolutionary search population {a['population']} x "
             f"{a['generations']} generations, every neck retrained {a['retrain_steps']} steps at batch 4. Seeds "
             f"{seeds} (3, not 5: a seed's cells take several minutes together); within a seed every arm has the same "
             f"images, initial backbone and order. CPU {platform.machine()}, {os.cpu_count()} cores, {a['workers']} "
             f"workers x 1 thread; wall-clock {payload['wall_seconds'] / 60:.1f} min."
             + (" **--quick: a plumbing check, not a result.**" if quick else ""))
    notes = ["## Reading these tables", "",
             "- `holds` is the project's rule (`shared.metrics.paired_verdict`): a one-sided paired t-test at 5 % over "
             "seeds; `inconclusive` when neither direction clears it. With 3 seeds a difference must exceed about "
             "2.9 standard errors.",
             f"- Standard FPN here has {payload['fpn_params'] / 1e3:.1f} k neck parameters; the searched necks are "
             "several times larger, which is why the parameter-matched FPN (its inner pyramid widened to the searched "
             "neck's count, `model.fpn_inner_channels`) is the fair baseline.",
             "- A few hundred CPU steps on synthetic scenes train a from-scratch detector only part of the way; the "
             "paper's COCO claims need the `experiment/` recipes on COCO with ImageNet backbones."]
    sections = [
        Section("Mechanism check: the search finds what its fitness rewards", text=why, rows=mech_rows,
                table=Table(["seed", "searched architecture", "search AP", "val AP (super-net)",
                             "random archs val AP (mean ± std)", "min / max", f"random search best of {k}",
                             "percentile"], table), figures=["supernet_fitness.png"]),
        Section("Scaled-down paper setting: necks retrained from scratch (synthetic)", rows=rows2,
                figures=[f"architecture_seed{s}.png" for s in seeds]),
        Section("Search cost", rows=cost_rows,
                after="Baseline column: the retrain phase of the same run (minutes), for scale.")]
    head_rows = mech_rows[:2] + rows2[:2]
    headline = ("synthetic scenes, 3 seeds: " + "; ".join(
        f"{r.setting.split(': ', 1)[-1]} {statistics.fmean(r.values):+.2f} ({r.holds})" for r in head_rows))
    write_doc(out, "OPANAS: small-scale claim checks (synthetic scenes)", sections, intro=intro, notes="\n".join(notes),
              provenance=prov, headline=headline)


def _plot(path: Path, sn: dict, seeds: list[int]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for j, s in enumerate(seeds):
        r = sn[f"supernet|{s}"]
        xs = [100 * x["val_AP"] for x in r["random"]]
        ax.scatter([j] * len(xs), xs, s=14, color="#7f7f7f", alpha=0.7, label="random architectures" if j == 0 else None)
        ax.scatter([j], [100 * r["searched"]["val_AP"]], s=60, marker="*", color="#d62728",
                   label="searched" if j == 0 else None)
    ax.set_xticks(range(len(seeds)), [f"seed {s}" for s in seeds])
    ax.set_ylabel("val AP (%), super-net weights")
    ax.set_title("searched vs random architectures, same super-net")
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


if __name__ == "__main__":
    main()
