"""Small-scale claim checks on synthetic pairs -> ``results/ffwm/``.

    uv run --package ffwm ffwm-reproduce [--seeds 3] [--workers 2] [--quick]

Per seed (same data, same pre-trained flows and the same generator initialisation for every method):
pre-train F and B once, then train five generators from them -- FFWM (WAM + IPM), without IPM, without
WAM (no skips), plain U-Net skips (IPM kept), and WAM without the flipped branch -- all through the same
``fit()``, and evaluate them on held-out identities against the illumination-consistent target that only
the synthetic renderer can provide.

1. Mechanism check (first): (a) IPM -- with illumination-inconsistent supervision, where does the output's
   illumination lie between the input's and the ground truth's (index tau: 0 = input's, 1 = ground
   truth's)? (b) WAM flip -- at large yaw, the error on the frontal pixels the profile does not show, with
   and without the flipped branch.
2. Paper-setting check: L1 / SSIM / PSNR against the illumination-consistent target, identity similarity
   and rank-1 with an identity network no loss used, for the four generators the issue names.

Runs go to ``$REPRO_RUNS/ffwm/reproduce/`` (not committed); tables, JSON and figures to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import time
from pathlib import Path
from typing import Any

import numpy as np

from shared.cli import entry
from shared.metrics import ResultRow, mean_std, paired_verdict
from shared.provenance import Provenance, compose
from shared.report import Section, Table, write_report
from shared.runtime import runs_root

CONFIG_MODULE = "ffwm.conf"
METHODS = [  # (label, method config)
    ("FFWM (WAM + IPM)", "ffwm"),
    ("without IPM", "no_ipm"),
    ("without WAM (no skips)", "no_wam"),
    ("plain U-Net skips", "unet"),
    ("WAM without flip", "no_flip"),
]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="results/ffwm")
    p.add_argument("--seeds", type=int, default=3, help="paired seeds (data, flows, initialisation)")
    p.add_argument("--workers", type=int, default=1, help="parallel fit() processes, 1 thread each")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--n-train", type=int, default=600)
    p.add_argument("--n-test", type=int, default=96)
    p.add_argument("--flow-steps", type=int, default=60)
    p.add_argument("--gen-steps", type=int, default=120)
    p.add_argument("--warmup-images", type=int, default=320, help="GF adaption starts after this many images")
    p.add_argument("--quick", action="store_true", help="tiny run for tests (a plumbing check, not a result)")
    return p


def base_overrides(args) -> list[str]:
    s = args.image_size
    ov = ["device=cpu", "threads=1", "resume=null", "log_interval=1000", "save_per_sample=true",
          f"data.image_size={s}", f"data.n_train={args.n_train}", f"data.n_test={args.n_test}",
          f"loss.warmup_images={args.warmup_images}",
          f"features.synthetic_perceptual.image_size={min(s, 64)}", f"features.synthetic_perceptual.input_size={s}",
          f"features.synthetic_identity.image_size={min(s, 64)}", f"features.synthetic_identity.input_size={min(s, 32)}"]
    if args.quick:
        ov += ["data.train_identities=6", "data.test_identities=4", "batch_size=4", "flow.batch_size=4",
               "eval_batch_size=8", "grid_samples=2",
               *[f"features.synthetic_{k}.{a}={v}" for k in ("perceptual", "identity")
                 for a, v in (("num_identities", 4), ("per_identity", 2), ("epochs", 1))]]
    return ov


def _run(job: tuple[str, list[str], str]) -> dict[str, Any]:
    """One fit() in a worker process (1 thread)."""
    import torch

    from ffwm.train import fit

    torch.set_num_threads(1)
    name, overrides, run_dir = job
    cfg = compose(CONFIG_MODULE, overrides)
    t0 = time.perf_counter()
    result = fit(cfg, run_dir)
    result["seconds"] = time.perf_counter() - t0
    result["job"] = name
    return result


def _prepare(args) -> dict[str, str]:
    """Feature networks and every seed's pair sets, built once in this process (cached for the workers)."""
    import torch

    from ffwm.featnets import build_feature_nets
    from ffwm.synthetic import load_pairs, pair_config_from

    torch.set_num_threads(1)
    cfg = compose(CONFIG_MODULE, base_overrides(args))
    _, _, _, info = build_feature_nets(cfg.features, cfg.cache_dir)
    for s in range(args.seeds):
        c = compose(CONFIG_MODULE, [*base_overrides(args), f"seed={s}"])
        for split in ("train", "test"):
            load_pairs(pair_config_from(c.data, split), c.cache_dir)
    return info


def _pool_map(jobs, workers):
    if workers <= 1:
        return [_run(j) for j in jobs]
    with mp.get_context("spawn").Pool(workers) as pool:
        return pool.map(_run, jobs, chunksize=1)


def _per_sample(run_dir: Path) -> dict[str, np.ndarray]:
    import torch

    d = torch.load(run_dir / "per_sample.pt", weights_only=True)
    return {k: v.numpy() for k, v in d.items()}


def _verdict_row(setting, metric, ours, base, claim, paper, digits=3, margin=0.0):
    diffs = [a - b for a, b in zip(ours, base)]
    v = paired_verdict(diffs, claim, margin)
    return ResultRow(setting=setting, metric=metric, values=ours, baseline=base, paper=paper,
                     direction=f"{claim} ({v.summary()})", holds=v.verdict, digits=digits), v


@entry
def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    prov = Provenance(args, argv, threads=1, workers=args.workers, script="ffwm-reproduce")
    if args.quick:
        args.n_train, args.n_test, args.flow_steps, args.gen_steps, args.warmup_images = 16, 8, 2, 3, 8
        args.image_size = 32
    out = Path(args.out)
    runs = runs_root("ffwm", "reproduce", "quick" if args.quick else "full")
    base = base_overrides(args)
    t0 = time.perf_counter()
    feat_info = _prepare(args)
    t_prep = time.perf_counter() - t0

    # phase 1: flow pre-training, one per seed (gen.steps=0)
    flow_jobs = []
    for s in range(args.seeds):
        ov = [*base, f"seed={s}", "method=ffwm", f"flow.steps={args.flow_steps}", "gen.steps=0"]
        flow_jobs.append((f"flows|{s}", ov, str(runs / f"flows_s{s}")))
        prov.add_run(f"flows_s{s}", compose(CONFIG_MODULE, ov), ov, CONFIG_MODULE)
    t1 = time.perf_counter()
    flow_results = {r["job"]: r for r in _pool_map(flow_jobs, args.workers)}
    t_flow = time.perf_counter() - t1

    # phase 2: every method from the same flows, data and seed
    jobs = []
    for label, m in METHODS:
        for s in range(args.seeds):
            ov = [*base, f"seed={s}", f"method={m}", f"flow.pretrained={runs / f'flows_s{s}' / 'flows.pt'}",
                  f"gen.steps={args.gen_steps}", f"flow.steps={args.flow_steps}"]
            jobs.append((f"{m}|{s}", ov, str(runs / f"{m}_s{s}")))
            prov.add_run(f"{m}_s{s}", compose(CONFIG_MODULE, [o for o in ov if not o.startswith("flow.pretrained")]),
                         [o for o in ov if not o.startswith("flow.pretrained")], CONFIG_MODULE)
    t2 = time.perf_counter()
    results = _pool_map(jobs, args.workers)
    t_gen = time.perf_counter() - t2
    by = {r["job"]: r for r in results}
    seeds = range(args.seeds)

    def vals(m, key):
        return [float(by[f"{m}|{s}"][key]) for s in seeds]

    # ----------------------------------------------------------------- mechanism check (a): IPM
    tau_f, tau_n = vals("ffwm", "illum_tau"), vals("no_ipm", "illum_tau")
    row_tau, v_tau = _verdict_row("IPM: FFWM vs without IPM", "illumination index tau (0 = input's, 1 = ground truth's)",
                                  tau_f, tau_n, "lower", "output keeps the input's illumination (abstract, Fig. 1/5)")
    close_f, close_n = vals("ffwm", "illum_closer_to_input"), vals("no_ipm", "illum_closer_to_input")
    row_close, _ = _verdict_row("IPM: FFWM vs without IPM", "fraction of pairs closer to the input's illumination",
                                close_f, close_n, "higher", "")
    abs_rows = [ResultRow("FFWM alone: tracks the input", "tau < 0.5 (closer to the input's light)", tau_f,
                          0.5, "", "lower than 0.5", holds=paired_verdict([t - 0.5 for t in tau_f], "lower").verdict, digits=3),
                ResultRow("without IPM alone: tracks the ground truth", "tau > 0.5", tau_n, 0.5, "",
                          "higher than 0.5", holds=paired_verdict([t - 0.5 for t in tau_n], "higher").verdict, digits=3)]
    # ----------------------------------------------------------------- mechanism check (b): flip
    occ_f, occ_nf = vals("ffwm", "occluded_l1_large_yaw"), vals("no_flip", "occluded_l1_large_yaw")
    row_occ, v_occ = _verdict_row("WAM flip: FFWM vs WAM without flip, |yaw| >= 60",
                                  "L1 on the self-occluded frontal pixels (vs consistent target)", occ_f, occ_nf, "lower",
                                  "the flipped branch fills the occluded half (Sec. 3.2)", digits=4)
    vis_f, vis_nf = vals("ffwm", "visible_l1_large_yaw"), vals("no_flip", "visible_l1_large_yaw")
    row_vis, _ = _verdict_row("control: same, visible pixels", "L1 on the visible frontal pixels", vis_f, vis_nf,
                              "lower", "", digits=4)

    # ----------------------------------------------------------------- paper-setting check
    paper_rows = []
    for label, m in METHODS[1:4]:
        for key, name, claim, digits in (("l1_consistent", "L1 vs illumination-consistent target", "lower", 4),
                                         ("ssim_consistent", "SSIM vs illumination-consistent target", "higher", 3),
                                         ("psnr_consistent", "PSNR (dB) vs illumination-consistent target", "higher", 2),
                                         ("id_similarity", "identity cosine similarity (evaluation network)", "higher", 3),
                                         ("rank1", "rank-1 (%) against a frontal gallery", "higher", 1)):
            row, _ = _verdict_row(f"FFWM vs {label}", name, vals("ffwm", key), vals(m, key), claim,
                                  "FFWM better (Tables 3-4, ablations)" if key in ("rank1",) else "", digits)
            paper_rows.append(row)

    # ----------------------------------------------------------------- descriptive tables
    keys = [("l1_consistent", 4), ("l1_gt", 4), ("ssim_consistent", 3), ("psnr_consistent", 2), ("illum_tau", 3),
            ("illum_closer_to_input", 3), ("occluded_l1_large_yaw", 4), ("visible_l1_large_yaw", 4),
            ("id_similarity", 3), ("rank1", 1), ("flow_epe_px", 2)]
    table = Table(columns=["method"] + [k for k, _ in keys],
                  rows=[[label] + [f"{mean_std(vals(m, k))[0]:.{d}f} ± {mean_std(vals(m, k))[1]:.{d}f}" for k, d in keys]
                        for label, m in METHODS])
    # yaws present in every run's test set (a small test set need not hold every yaw for every seed)
    yaws = sorted(set.intersection(*[{int(k.split("yaw")[1]) for k in r if k.startswith("rank1_yaw")} for r in by.values()]))
    rank_table = Table(columns=["method"] + [f"±{a}°" for a in yaws],
                       rows=[[label] + [f"{np.mean(vals(m, f'rank1_yaw{a}')):.1f}" for a in yaws] for label, m in METHODS]
                       + [["profile input (no frontalisation)"]
                          + [f"{np.mean([float(by[f'ffwm|{s}']['rank1_input']) for s in seeds]):.1f} (all yaws)"]
                          + [""] * (len(yaws) - 1)])
    gap = _data_gap(runs, args)
    figures = _figures(out, runs, args)
    wall = time.perf_counter() - t0

    intro = (
        f"**Data: synthetic** (`ffwm.synthetic` on `shared.data.faces`), never a real dataset. Profile/frontal pairs at "
        f"{args.image_size} px, |yaw| in {{15, 30, 45, 60, 75, 90}} (the Multi-PIE arc), {args.n_train} training pairs "
        f"(doubled by mirror images) and {args.n_test} test pairs of held-out identities per seed. The ground-truth "
        f"frontal is lit inconsistently (the profile camera's light carried into the frontal camera's frame, plus a "
        f"frontal-camera colour response; mean L1 to the consistent target {gap:.3f}); the **illumination-consistent "
        f"target** (the frontal under the profile's own light) is used only for evaluation. Networks: the official "
        f"layouts at CPU widths (generator ngf 16, flows ngf 8, discriminator ndf 16, spectral norm), official loss "
        f"weights and optimisers; flows pre-trained {args.flow_steps} steps per seed (landmark + correctness + affine "
        f"losses on dense synthetic correspondences), generators {args.gen_steps} steps at batch 8 with a guided-filter "
        f"warm-up of {args.warmup_images} images. Feature networks: perceptual = {feat_info['perceptual']}; identity "
        f"loss = {feat_info['identity']}; evaluation = {feat_info['eval_identity']}. Seeds: {args.seeds} (paired: "
        f"data, flows and initialisation shared by all methods of a seed; 3 because a cell takes minutes). Hardware: "
        f"CPU, {args.workers} worker processes x 1 thread. Wall-clock {wall / 60:.1f} min (preparation {t_prep:.0f} s, "
        f"flows {t_flow:.0f} s, generators {t_gen:.0f} s)."
        + (" **--quick: a plumbing check, not a result.**" if args.quick else ""))
    mech_text = (
        "Why the effect must show here if the code is right. (a) The ground truth's light differs from the input's "
        "in a way the network can predict from the profile, so a generator supervised with pixel / perceptual / "
        "identity losses on the ground truth learns to relight its output like the ground truth (tau near 1). With the "
        "IPM, every ground-truth loss sees the guided-filtered output, whose low frequencies come from the ground "
        "truth whatever the generator does, and the only term that constrains the output's own low frequencies is "
        "the backward-warp L1 to the input profile -- so the output must take the input's illumination (tau near 0). "
        "tau is measured on masked local means (radius size/8) of output, ground truth and consistent target, pooled "
        "over the test set. (b) At |yaw| >= 60 a part of the frontal face is self-occluded in the profile (the renderer "
        "knows exactly which pixels); the forward flow can only point those pixels at wrong profile content, while the "
        "flipped warped feature holds the mirrored, visible side; without it the decoder has to invent that half.")
    sections = [
        Section("Mechanism check (a): the IPM keeps the input's illumination", mech_text,
                rows=[row_tau, row_close, *abs_rows],
                after=f"Verdict: {v_tau.verdict} (FFWM - without IPM, paired over seeds: {v_tau.summary()}).",
                figures=[f for f in figures if "illum" in f or "samples" in f]),
        Section("Mechanism check (b): the flipped branch of the WAM carries the occluded half",
                "Same runs; error on the frontal pixels whose surface point faces away from the profile camera.",
                rows=[row_occ, row_vis], after=f"Verdict: {v_occ.verdict} ({v_occ.summary()})."),
        Section("Paper-setting check: FFWM vs without IPM / without WAM / plain U-Net skips",
                "The issue's comparison, scaled down; against the illumination-consistent target (what a frontalised "
                "face under the input's light looks like) and with an identity network that no loss used.",
                rows=paper_rows),
        Section("All methods (mean ± std over seeds)", "", table=table),
        Section("Rank-1 per yaw (synthetic gallery: one frontal per test identity, front light)",
                "Synthetic stand-in for the paper's Table 1 protocol (per camera, merged by ±angle).", table=rank_table),
    ]
    notes = ("Reading this report: every number is on synthetic faces at CPU scale; it checks mechanisms, not the paper's "
             "Multi-PIE / LFW numbers (the `experiment/` configs run those on real data with the released feature "
             "networks; paper numbers are in `packages/ffwm/paper_results.yaml`). A `no` or `inconclusive` verdict means "
             "this run does not show the claim at this scale; the checks were fixed before running.")
    headline = (f"IPM: illumination index {np.mean(tau_f):.2f} (FFWM) vs {np.mean(tau_n):.2f} (without IPM), "
                f"{v_tau.verdict}; flip: occluded-side L1 {np.mean(occ_f):.3f} vs {np.mean(occ_nf):.3f}, {v_occ.verdict} "
                f"({args.seeds} seeds, synthetic {args.image_size} px)")
    write_report(out, "FFWM: small-scale claim checks (synthetic)", sections, intro=intro, notes=notes,
                 provenance=prov, headline=headline)
    (out / "runs.json").write_text(json.dumps(sorted([*results, *flow_results.values()], key=lambda r: r["job"]),
                                              indent=1, default=str) + "\n")
    print((out / "results.md").read_text())


def _data_gap(runs: Path, args) -> float:
    from ffwm.synthetic import load_pairs, pair_config_from

    c = compose(CONFIG_MODULE, [*base_overrides(args), "seed=0"])
    a = load_pairs(pair_config_from(c.data, "test"), c.cache_dir)
    m = a["mask_frontal"][..., None]
    return float((np.abs(a["frontal"].astype(np.float32) - a["consistent"].astype(np.float32)) * m).sum()
                 / (m.sum() * 3) / 255)


def _figures(out: Path, runs: Path, args) -> list[str]:
    """samples.png (one test set, every method of seed 0) and illum_by_yaw.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from ffwm.synthetic import load_pairs, pair_config_from
    from ffwm.train import build_model

    out.mkdir(parents=True, exist_ok=True)
    c = compose(CONFIG_MODULE, [*base_overrides(args), "seed=0"])
    a = load_pairs(pair_config_from(c.data, "test"), c.cache_dir)
    order = np.argsort(np.abs(a["yaw"]), kind="stable")
    pick = order[np.linspace(0, len(order) - 1, min(8, len(order))).astype(int)]
    x = torch.from_numpy(a["profile"][pick]).permute(0, 3, 1, 2).float() / 255
    rows = [("profile (input)", a["profile"][pick] / 255)]
    for label, m in METHODS:
        cfg = compose(CONFIG_MODULE, [*base_overrides(args), f"method={m}"])
        model = build_model(cfg)
        model.load_state_dict(torch.load(runs / f"{m}_s0" / "last.pt", weights_only=True)["model"])
        model.eval()
        with torch.no_grad():
            y = model.frontalize(x)[0][-1] * torch.from_numpy(a["mask_frontal"][pick]).float()[:, None]
        rows.append((label, y.permute(0, 2, 3, 1).numpy()))
    rows += [("ground truth (inconsistent light)", a["frontal"][pick] / 255),
             ("illumination-consistent target", a["consistent"][pick] / 255)]
    fig, ax = plt.subplots(len(rows), len(pick), figsize=(1.3 * len(pick), 1.35 * len(rows)))
    for r, (name, imgs) in enumerate(rows):
        for j in range(len(pick)):
            ax[r, j].imshow(np.clip(imgs[j], 0, 1))
            ax[r, j].set_xticks([])
            ax[r, j].set_yticks([])
            if r == 0:
                ax[r, j].set_title(f"yaw {a['yaw'][pick[j]]:+.0f}", fontsize=7)
        ax[r, 0].set_ylabel(name, fontsize=6)
    fig.suptitle("synthetic test pairs (seed 0); outputs shown inside the face mask", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "samples.png", dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(4.5, 3))
    for label, m in METHODS[:2]:
        per = [_per_sample(runs / f"{m}_s{s}") for s in range(args.seeds)]
        ys = sorted(set.intersection(*[set(np.abs(ps["yaw"]).astype(int).tolist()) for ps in per]))
        taus = []
        for ps in per:
            yaws = np.abs(ps["yaw"]).astype(int)
            taus.append([ps["dot"][yaws == y].sum() / max(ps["norm"][yaws == y].sum(), 1e-12) for y in ys])
        t = np.array(taus)
        ax.errorbar(ys, t.mean(0), yerr=t.std(0), marker="o", capsize=3, label=label)
    ax.axhline(0, color="k", lw=0.5)
    ax.axhline(1, color="k", lw=0.5, ls="--")
    ax.set(xlabel="|yaw| (degrees)", ylabel="illumination index tau", title="0 = input's light, 1 = ground truth's")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "illum_by_yaw.png", dpi=100)
    plt.close(fig)
    return ["samples.png", "illum_by_yaw.png"]


if __name__ == "__main__":
    main()
