"""``make reproduce-depatch`` / ``depatch-reproduce``: the small-scale claim checks -> ``results/depatch/``.

1. **Mechanism check** (synthetic ``parts`` task): the class is a small glyph at a uniformly random
   position, so at any offset from the patch grid. Mini DPT vs the same PVT and vs a PVT widened to
   DPT's parameter count, at equal steps, paired seeds; where the learned DePatch boxes went (coverage
   of the glyph vs the class-independent distractors, learned vs initial boxes); the offsets-only
   ablation; the trained DePatch against a slow per-point reference.
2. **Paper-setting check** (scaled down): the embedded default's synthetic varied-scale shapes at
   64 px, mini DPT vs mini PVT, paired seeds.
3. **Exact accounting** at the paper's sizes: parameters and multiply-accumulates of DPT-T/S/M and PVT-T.

Every training run goes through ``depatch.train.fit`` with the overrides recorded in
``provenance.json``; runs go two at a time (one thread each). Nothing is reused from earlier runs.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import torch

from shared.cli import entry
from shared.metrics import ResultRow, mean_std, paired_verdict
from shared.provenance import Provenance, compose
from shared.report import Section, Table, write_report
from shared.runtime import runs_root

CONFIG_MODULE = "depatch.conf"
COMMON = ["device=cpu", "threads=1", "resume=null", "figure.num_images=0", "log_interval_s=120"]
# mechanism check: the parts task at 32 px (white glyphs of 6 or 9 px at any offset from the 8-px stage-2 grid,
# 4 classes, next to 2 white distractor squares) at the mini lr 3e-4 (optim/adamw_mini.yaml: at 1e-3 these one-block
# models sit on the chance plateau and DPT's boxes jump and freeze in the first epoch; results.md says why)
MECH_DATA = ["data=parts", "data.num_classes=4", "data.colours=fixed", "data.n_train=8000", "data.n_test=2000"]
MECH_TRAIN = ["epochs=8", "batch_size=64", "optim.warmup_epochs=1"]
MECH_MODELS = {"dpt": ["model=dpt_mini"], "pvt": ["model=pvt_mini"], "pvt_wide": ["model=pvt_mini_wide"],
               "dpt_offsets_only": ["model=dpt_mini", "model.predict_size=false"],
               "dpt_frozen_boxes": ["model=dpt_mini", "model.freeze_boxes=true"]}
# paper-setting check: the embedded default's synthetic varied-scale shapes at 64 px, shorter
PAPER_DATA = ["data=synthetic", "data.n_train=3000", "data.n_test=1000"]
PAPER_TRAIN = ["epochs=6", "batch_size=64"]
PAPER_MODELS = {"dpt": ["model=dpt_mini"], "pvt": ["model=pvt_mini"]}  # the parameter match is the mechanism check's
QUICK = ["data.n_train=128", "data.n_test=64", "epochs=1", "batch_size=32"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="depatch-reproduce", description="DPT vs PVT claim checks on synthetic data "
                                "(mechanism check first, then the scaled-down paper setting).")
    p.add_argument("--out", default="results/depatch", help="output folder (default: results/depatch)")
    p.add_argument("--seeds", type=int, default=5, help="paired seeds of the mechanism check (default 5)")
    p.add_argument("--paper-seeds", type=int, default=5, help="paired seeds of the paper-setting check (default 5)")
    p.add_argument("--workers", type=int, default=2, help="training runs in parallel, one thread each (default 2)")
    p.add_argument("--quick", action="store_true", help="tiny sizes, for tests (not a result)")
    return p


def _runs(args) -> list[tuple[str, str, int, list[str]]]:
    """``(check, model, seed, overrides)`` of every training run."""
    out = []
    for check, data, train, models, seeds in (("mechanism", MECH_DATA, MECH_TRAIN, MECH_MODELS, args.seeds),
                                              ("paper", PAPER_DATA, PAPER_TRAIN, PAPER_MODELS, args.paper_seeds)):
        for seed in range(seeds):
            for model, m_over in models.items():
                over = [*COMMON, *data, *train, *m_over, f"seed={seed}", f"data.data_seed={seed}",
                        f"name=reproduce/{check}/{model}_s{seed}", *(QUICK if args.quick else [])]
                out.append((check, model, seed, over))
    return out


def _train(job: tuple[str, str, int, list[str], str]) -> dict:
    """One training run in a worker process, always from scratch."""
    check, model, seed, overrides, run_dir = job
    torch.set_num_threads(1)
    from depatch.train import fit

    cfg = compose(CONFIG_MODULE, overrides)
    shutil.rmtree(run_dir, ignore_errors=True)
    t0 = time.perf_counter()
    metrics = fit(cfg, run_dir)
    return {"check": check, "model": model, "seed": seed, "run_dir": run_dir, "seconds": time.perf_counter() - t0,
            **{k: v for k, v in metrics.items() if isinstance(v, (int, float))}}


def _load(run_dir: str):
    """The trained model of a run and its test set (rebuilt from the run's own config)."""
    from omegaconf import OmegaConf

    from depatch.train import build_data, build_model

    ck = torch.load(Path(run_dir) / "last.pt", map_location="cpu", weights_only=True)
    cfg = OmegaConf.create(ck["config"])
    model, _ = build_model(cfg)
    model.load_state_dict(ck["model"])
    _, test, _ = build_data(cfg)
    return model.eval(), test


@torch.no_grad()
def slow_depatch(dep, x: torch.Tensor) -> torch.Tensor:
    """A slow reference of one DePatch layer, patch by patch and point by point, in float64: decode by
    the paper-notes formulas, bilinear interpolation written out, project, normalise."""
    B, C, H, W = x.shape
    x = x.double()
    feat = torch.nn.functional.conv2d(x, dep.patch_embed.proj.weight.double(), dep.patch_embed.proj.bias.double(), stride=2)
    h, w = feat.shape[-2:]
    feat = torch.nn.functional.layer_norm(feat.flatten(2).transpose(1, 2), (dep.embed_dim,),
                                          dep.patch_embed.norm.weight.double(), dep.patch_embed.norm.bias.double(), 1e-5)
    codes = torch.nn.functional.gelu(feat) @ dep.offset_predictor.weight.double().T
    if codes.shape[-1] == 2:
        codes = torch.cat([codes, torch.zeros_like(codes)], -1)
    bias = dep.wh_bias.double()
    k = dep.num_points
    out = torch.zeros(B, h * w, k * k * C, dtype=torch.float64)

    def pixel(b, yy, xx):
        return x[b, :, yy, xx] if 0 <= yy < H and 0 <= xx < W else torch.zeros(C, dtype=torch.float64)

    for b in range(B):
        for n in range(h * w):
            i, j = divmod(n, w)
            cx = (j + 0.5) / w + math.tanh(codes[b, n, 0]) / w
            cy = (i + 0.5) / h + math.tanh(codes[b, n, 1]) / h
            hw = max(0.0, math.tanh(codes[b, n, 2] + bias[0])) / w
            hh = max(0.0, math.tanh(codes[b, n, 3] + bias[1])) / h
            x1, x2 = min(max(cx - hw, 0.0), 1.0), min(max(cx + hw, 0.0), 1.0)
            y1, y2 = min(max(cy - hh, 0.0), 1.0), min(max(cy + hh, 0.0), 1.0)
            vals = []
            for a in range(k):
                for c in range(k):
                    u = (x1 + (x2 - x1) * a / (k - 1)) * W - 0.5
                    v = (y1 + (y2 - y1) * c / (k - 1)) * H - 0.5
                    u0, v0 = math.floor(u), math.floor(v)
                    fu, fv = u - u0, v - v0
                    vals.append((1 - fu) * (1 - fv) * pixel(b, v0, u0) + fu * (1 - fv) * pixel(b, v0, u0 + 1)
                                + (1 - fu) * fv * pixel(b, v0 + 1, u0) + fu * fv * pixel(b, v0 + 1, u0 + 1))
            out[b, n] = torch.cat(vals)
    proj = out @ dep.output_proj.weight.double().T + dep.output_proj.bias.double()
    return torch.nn.functional.layer_norm(proj, (dep.embed_dim,), dep.norm.weight.double(), dep.norm.bias.double(), 1e-5)


def _stage_input(model, images: torch.Tensor, stage: int) -> torch.Tensor:
    """The feature map a stage's patch embedding reads (hooked from a forward pass)."""
    seen = {}
    def grab(module, inputs, output) -> None:  # returns None: the module's output is left unchanged
        seen.setdefault("x", inputs[0])

    handle = getattr(model, f"patch_embed{stage}").register_forward_hook(grab)
    with torch.no_grad():
        model(images)
    handle.remove()
    return seen["x"]


def count_macs(model: torch.nn.Module, image_size: int) -> float:
    """Multiply-accumulates of one forward pass at ``image_size`` (the papers' "FLOPs"): torch's
    FlopCounterMode (2 FLOPs per MAC) for the dense ops, plus 4 MACs per channel per bilinear
    sample of each DePatch, which FlopCounterMode does not count."""
    from torch.utils.flop_counter import FlopCounterMode

    from depatch.depatch import DePatchEmbed

    model = model.eval()
    sampled = []

    def hook(mod, inp, out):
        sampled.append(out[0].shape[1] * mod.num_points ** 2 * mod.in_chans)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, DePatchEmbed)]
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, image_size, image_size))
    for h in handles:
        h.remove()
    return counter.get_total_flops() / 2 + 4 * sum(sampled)


def _paired(ours: list[float], base: list[float], claim: str = "higher", margin: float = 0.0):
    return paired_verdict([a - b for a, b in zip(ours, base)], claim, margin)


def _row(setting, metric, ours, base, paper, claim="higher", digits=2):
    """A paired comparison row and its :func:`shared.metrics.paired_verdict`."""
    v = _paired(ours, base, claim)
    return ResultRow(setting, metric, ours, base, paper, f"{claim} (paired)", v.verdict, digits), v


@entry
def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.paper_seeds < 1 or args.workers < 1:
        parser.error("--seeds, --paper-seeds and --workers must be at least 1")
    prov = Provenance(args, argv, threads=1, workers=args.workers, script="depatch-reproduce")
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    root = runs_root("depatch", "reproduce")

    # 1. every training run (mechanism and paper setting), two at a time
    jobs = []
    for check, model, seed, over in _runs(args):
        run_dir = str(root / check / f"{model}_s{seed}")
        prov.add_run(f"{check}/{model}_s{seed}", compose(CONFIG_MODULE, over), over, config_module=CONFIG_MODULE)
        jobs.append((check, model, seed, over, run_dir))
    with ProcessPoolExecutor(max_workers=args.workers, mp_context=get_context("spawn")) as pool:
        results = list(pool.map(_train, jobs))
    res = {(r["check"], r["model"], r["seed"]): r for r in results}

    def acc(check, model, seeds):
        return [res[(check, model, s)]["acc1"] for s in range(seeds)]

    from depatch.data import SYMBOLS
    from depatch.pvt import count_parameters, create_model
    from depatch.viz import mask_coverage, plot_patch_rectangles

    # 2. where the learned boxes went: sample-point coverage of the glyph vs the distractors
    cov = {"glyph": [], "glyph_init": [], "clutter": [], "clutter_init": [], "shift": [], "size": []}
    ref_err = []
    n_img = 16 if args.quick else 256
    stage = 2
    for seed in range(args.seeds):
        model, test = _load(res[("mechanism", "dpt", seed)]["run_dir"])
        images = torch.stack([test[i][0] for i in range(n_img)])
        for key, masks in (("glyph", test.masks[:n_img]), ("clutter", test.distractor_masks[:n_img])):
            learned, initial = mask_coverage(model, images, masks, stage)
            cov[key].append(100 * learned)
            cov[f"{key}_init"].append(100 * initial)
        from depatch.viz import box_stats

        st = box_stats(model, images)
        cov["shift"].append(st[f"s{stage}_shift"])
        cov["size"].append(st[f"s{stage}_size"])
        if seed == 0:  # the trained DePatch against the slow per-point reference
            x = _stage_input(model, images[:2], stage)
            fast = model.depatch_modules()[stage](x)[0].double()
            ref_err.append(float((fast - slow_depatch(model.depatch_modules()[stage], x)).abs().max()))
            plot_patch_rectangles(model, images[:6], out / "patch_rectangles.png", stage=stage,
                                  labels=[test[i][1] for i in range(6)],
                                  title=f"mini DPT (seed 0) on the synthetic parts task: stage-{stage} DePatch boxes "
                                        "(top: initial, bottom: learned)")
    _plot_coverage(cov, out / "box_statistics.png")

    # 3. exact accounting at the paper's sizes and of the mini models
    with torch.device("meta"):
        full = {a: create_model(a) for a in ("pvt_tiny", "dpt_tiny", "pvt_small", "dpt_small", "pvt_medium", "dpt_medium")}
    full_params = {a: count_parameters(m) / 1e6 for a, m in full.items()}
    macs = {a: count_macs(create_model(a), 224) / 1e9 for a in ("pvt_tiny", "dpt_tiny")}
    mcfg = compose(CONFIG_MODULE, [*COMMON, *MECH_DATA, *MECH_TRAIN, *(QUICK if args.quick else [])])
    pcfg = compose(CONFIG_MODULE, [*COMMON, *PAPER_DATA, *PAPER_TRAIN, *(QUICK if args.quick else [])])
    K, img = int(mcfg.data.num_classes), int(mcfg.data.image_size)
    mini = {a: count_parameters(create_model(a, num_classes=K, img_size=img)) for a in ("pvt_mini", "dpt_mini", "pvt_mini_wide")}

    # 4. the report
    S, P = args.seeds, args.paper_seeds
    mech = {m: acc("mechanism", m, S) for m in MECH_MODELS}
    paper = {m: acc("paper", m, P) for m in PAPER_MODELS}
    summaries, verdicts = {}, {}
    rows_m = []
    for name, (ours, base, label) in {
        "dpt_vs_pvt": (mech["dpt"], mech["pvt"], "mini DPT vs mini PVT (same widths)"),
        "dpt_vs_wide": (mech["dpt"], mech["pvt_wide"], "mini DPT vs PVT widened to DPT's parameter count"),
        "offsets_vs_pvt": (mech["dpt_offsets_only"], mech["pvt"], "ablation: DPT offsets only vs mini PVT"),
        "dpt_vs_offsets": (mech["dpt"], mech["dpt_offsets_only"], "ablation: DPT (offsets + sizes) vs offsets only"),
        "dpt_vs_frozen": (mech["dpt"], mech["dpt_frozen_boxes"], "control: DPT vs DPT with frozen boxes"),
    }.items():
        row, verdicts[name] = _row(f"parts task, {img} px, {K} classes: {label}", "test top-1 (%)", ours, base,
                                    "DePatch > fixed patches (ImageNet +2.3 for Tiny)")
        rows_m.append(row)
    gain_glyph = [a / b for a, b in zip(cov["glyph"], cov["glyph_init"])]
    gain_clutter = [a / b for a, b in zip(cov["clutter"], cov["clutter_init"])]
    row, verdicts["coverage"] = _row(f"parts task: stage-{stage} sample points of the trained DPT", "glyph coverage (%)",
                                      cov["glyph"], cov["glyph_init"], "boxes move to the object parts (Fig. 1, qualitative)")
    rows_m.append(row)
    row, verdicts["selectivity"] = _row(f"parts task: stage-{stage} sample points of the trained DPT",
                                         "coverage gain glyph / distractor (learned / initial)", gain_glyph, gain_clutter,
                                         "toward the discriminative parts")
    rows_m.append(row)
    rows_m.append(ResultRow(f"trained DPT (seed 0), stage {stage}", "max |DePatch - slow per-point reference|", ref_err,
                            "< 1e-5", "", "equal", bool(ref_err and ref_err[0] < 1e-5), 8))

    rows_p = []
    for name, (ours, base, label) in {"paper_dpt_vs_pvt": (paper["dpt"], paper["pvt"], "mini DPT vs mini PVT")}.items():
        row, verdicts[name] = _row(f"synthetic varied-scale shapes, 64 px: {label}", "test top-1 (%)", ours, base,
                                    "ImageNet: DPT-T 77.4 vs PVT-T 75.1")
        rows_p.append(row)

    rows_x = [
        ResultRow("DPT-T vs PVT-T at 224 px", "parameters (M)", [full_params["dpt_tiny"]], full_params["pvt_tiny"],
                  "15.2 vs 13.2 (official README)", "as published (0.1 M)",
                  round(full_params["dpt_tiny"], 1) == 15.2 and round(full_params["pvt_tiny"], 1) == 13.2),
        *[ResultRow(f"DPT-{z[0].upper()} vs PVT-{z[0].upper()} at 224 px", "parameters (M)", [full_params[f"dpt_{z}"]],
                    full_params[f"pvt_{z}"], f"{dpt_pub} vs {pvt_pub} (official READMEs)", "as published (0.1 M)",
                    round(full_params[f"dpt_{z}"], 1) == dpt_pub and round(full_params[f"pvt_{z}"], 1) == pvt_pub)
          for z, dpt_pub, pvt_pub in (("small", 26.4, 24.5), ("medium", 46.1, 44.2))],
        ResultRow("DPT-T vs PVT-T at 224 px", "GMACs", [macs["dpt_tiny"]], macs["pvt_tiny"], "2.1 vs 1.9 (official README)",
                  "as published (0.1 G)", round(macs["dpt_tiny"], 1) == 2.1 and round(macs["pvt_tiny"], 1) == 1.9),
    ]

    summaries = {k: v.summary(2) for k, v in verdicts.items()}
    wall = time.perf_counter() - prov.t0
    secs = {c: [r["seconds"] for r in results if r["check"] == c] for c in ("mechanism", "paper")}
    intro = (
        "All data here is **synthetic** (generated on the fly; no ImageNet, no COCO); the models are CPU-sized "
        "mini PVT-v1 / DPT (widths 32-128, one block per stage), not the paper's. Paired seeds: within a seed every "
        "model sees the same images in the same order and starts from the same seed. Verdicts follow the project's "
        "rule (`shared.metrics.paired_verdict`: one-sided paired t-test at 5 %; 'inconclusive' when neither "
        f"direction clears it). {len(results)} training runs, {args.workers} at a time with one thread each"
        + (" -- **quick mode: tiny sizes, not a result**" if args.quick else "") + ".")
    d = mcfg.data
    glyphs = ", ".join(list(SYMBOLS)[:K]) if d.glyph_set == "symbols" else f"{K} random 5-cell patterns"
    sides = " or ".join(str(3 * int(c)) for c in d.scales)
    mech_text = (
        "**Why the effect must show here if the code is right.** Each image "
        f"({img} px, {'black' if d.colours == 'fixed' else 'random colour'}) holds one small "
        f"{'white ' if d.colours == 'fixed' else ''}glyph, a 3x3-cell pattern drawn {sides} px wide "
        f"({K} classes: {glyphs}; every pattern has {d.on_cells} cells), at a uniformly random position, plus "
        f"{d.distractors} class-independent {'white ' if d.colours == 'fixed' else ''}distractor squares of "
        f"{d.distractor_sizes[0]}-{d.distractor_sizes[1]} px; the class is the glyph's shape and nothing else. The "
        "mini models' stage-2 patches are 8 px, so a fixed patch grid cuts the glyph at a random place (a 9-px glyph "
        "always straddles a patch border): its cells reach stage 2 split over up to four tokens, differently in every "
        "image. A DePatch box can shift by up to one patch and change its size, so a stage-2 token can gather the glyph "
        "from any offset: that is the paper's mechanism (patches that follow the object instead of the grid). The "
        "parameter-matched PVT (widths +16-19 %) rules out that DPT wins by its extra parameters, equal steps rule "
        "out more training, and DPT with frozen boxes (its box predictor never trained, so every box stays the fixed "
        "patch; not in the paper) keeps DePatch's re-parametrised patch embedding (9 bilinear samples of the 2x2 "
        "patch, projected) without the deformation: DPT beating it is what says the moving boxes matter. If DePatch works, "
        "DPT must beat both PVTs and the frozen-box DPT, and its learned stage-2 boxes must put more of their sample "
        "points on the glyph than the initial boxes do (coverage = mean glyph-mask value at the 9 sample points of "
        f"every stage-2 patch, on {n_img} test images). Whether they prefer the glyph to the distractors (selectivity "
        "row) is a stricter question the mechanism does not settle: a distractor square and a glyph cell look alike "
        "to a box predictor that reads one patch. If DPT does not win, the "
        "slow per-point reference row tells whether the DePatch layer computes what the paper defines, and the "
        "offsets-only ablation whether the size prediction is what fails.\n\n"
        "**How the task and schedule were chosen** (single-seed probes before this run; the table below is the "
        "test). The previous version of this check (random colours per image, 8 glyph classes, lr 1e-3, 625 steps) "
        "left every model at chance, PVT included, so it could not tell a working DePatch from a broken one. Probes "
        "found two causes. (1) lr 1e-3 is too high for these one-block models at batch 64 (the paper's own rule, "
        "5e-4 x batch / 512, gives 6e-5): they sit on the chance plateau (loss ln K, constant output) for much of "
        "the run, and DPT's box predictor jumps within the first epoch and then stops (mean stage-2 shift 0.44 "
        "stride from epoch 1 on with DePatch in stage 2 only), while stage-3/4 boxes collapse to a point (half-size "
        "relu(tanh(.)) = 0, where no gradient flows); with 4 classes at lr 1e-3, PVT reached 41 % and DPT stayed at "
        "26 %. (2) With white glyphs on black but all 8 classes (three pairs of which are mirror images), every "
        "model still sat at chance after 10 epochs at lr 1e-3. Hence white glyphs on black, the first four glyphs, "
        "lr 3e-4 for every model and 8 epochs, chosen so that the fixed-patch PVT learns the task above chance "
        "without solving it (38-43 % in three probe seeds), which leaves room for a "
        f"difference either way. Scale: {d.n_train} training / {d.n_test} test images, {K} classes, "
        f"{' '.join(MECH_TRAIN)}, AdamW lr {mcfg.optim.lr:g}; {S} paired seeds (one cell took {min(secs['mechanism']):.0f}-"
        f"{max(secs['mechanism']):.0f} s)."
    )
    mech_after = "\n".join(f"- {k}: {v}" for k, v in summaries.items() if k in (
        "dpt_vs_pvt", "dpt_vs_wide", "offsets_vs_pvt", "dpt_vs_offsets", "dpt_vs_frozen", "coverage", "selectivity"))
    mech_after += (f"\n\nBox statistics (stage {stage}, mean over seeds): centre shift "
                   f"{mean_std(cov['shift'])[0]:.3f} strides, box side {mean_std(cov['size'])[0]:.3f} strides "
                   "(initial: 0 and 0.5); glyph coverage "
                   f"{mean_std(cov['glyph_init'])[0]:.2f}% -> {mean_std(cov['glyph'])[0]:.2f}%, distractor coverage "
                   f"{mean_std(cov['clutter_init'])[0]:.2f}% -> {mean_std(cov['clutter'])[0]:.2f}%. Parameters at {K} "
                   f"classes: DPT {mini['dpt_mini']:,}, PVT {mini['pvt_mini']:,}, wide PVT {mini['pvt_mini_wide']:,}.")
    paper_text = (
        "The embedded default's task scaled down: 10 classes of procedural shapes (shared.data, domain shapes-a) at "
        "scale 0.15-0.9 of a 64 px image and anywhere in it, "
        f"{pcfg.data.n_train} training / {pcfg.data.n_test} test images, {' '.join(PAPER_TRAIN)}, AdamW lr "
        f"{pcfg.optim.lr:g}; "
        f"{P} paired seeds (a cell took {min(secs['paper']):.0f}-{max(secs['paper']):.0f} s). DPT against the PVT of the "
        "same widths only: the parameter-matched PVT is the mechanism check's control. The paper's ImageNet gain comes from 300 epochs on 1.28 M images; whether "
        "the mechanism matters on these large, centred-anywhere shapes is what this row tests, at CPU scale. The lr "
        "is the mini default, lowered from 1e-3 for the reason the mechanism check gives; at 1e-3 the previous run of "
        "this check had one of five DPT seeds stuck at chance (10.3 %; DPT 20.0 +- 7.4 vs PVT 27.6 +- 1.3 %)."
    )
    paper_after = "\n".join(f"- {k}: {v}" for k, v in summaries.items() if k.startswith("paper_"))
    # what the accuracies say about the check itself (written from the numbers, not by hand)
    mech_after += "\n\n" + _learned_note(mech, 100.0 / K, "mechanism")
    paper_after += "\n\n" + _learned_note(paper, 100.0 / int(pcfg.data.num_classes), "paper-setting")
    sections = [
        Section("Mechanism check: glyphs at any offset from the patch grid (synthetic)", mech_text, rows_m,
                after=mech_after, figures=["patch_rectangles.png", "box_statistics.png"]),
        Section("Paper-setting check, scaled down (synthetic varied-scale shapes)", paper_text, rows_p, after=paper_after),
        Section("Exact accounting at the paper's sizes", "Parameters and multiply-accumulates of the models as built "
                "(the papers' 'FLOPs' are MACs; 4 MACs per channel per bilinear sample are added to torch's count).",
                rows_x),
        Section("Per-seed top-1 (%)", "", table=Table(["check", "model", *[f"seed {s}" for s in range(max(S, P))]],
                [[c, m, *[f"{res[(c, m, s)]['acc1']:.2f}" if (c, m, s) in res else "" for s in range(max(S, P))]]
                 for c, models in (("mechanism", MECH_MODELS), ("paper", PAPER_MODELS)) for m in models])),
    ]
    prov.extra["summary_seconds"] = {"training": {c: sum(v) for c, v in secs.items()}, "total": round(wall, 1)}
    def short(k):
        v = verdicts[k]
        return f"{v.mean:+.1f} ± {v.std:.1f} points ({v.n_claimed_sign}/{v.n} seeds higher, {v.verdict})"

    headline = (f"Mechanism check (synthetic glyphs at any offset, {S} paired seeds, top-1): DPT - PVT {short('dpt_vs_pvt')}; "
                f"DPT - parameter-matched PVT {short('dpt_vs_wide')}; DPT - DPT with frozen boxes "
                f"{short('dpt_vs_frozen')}. Scaled paper setting (synthetic shapes, {P} seeds): DPT - PVT "
                f"{short('paper_dpt_vs_pvt')}.")
    md = write_report(out, "DePatch / DPT: small-scale claim checks", sections, intro=intro, provenance=prov,
                      headline=headline)
    (out / "runs.json").write_text(json.dumps({"runs": results, "coverage": cov, "reference_max_abs": ref_err},
                                              indent=1, default=str) + "\n")
    print(md.read_text())
    print(f"wrote {out} in {wall / 60:.1f} min")


def _learned_note(accs: dict[str, list[float]], chance: float, check: str) -> str:
    """One sentence on whether the models learned the task at all: a comparison between models that
    all sit near chance says nothing about DePatch."""
    means = {m: sum(v) / len(v) for m, v in accs.items()}
    best = max(means.values())
    listing = ", ".join(f"{m} {v:.1f}%" for m, v in means.items())
    if best < chance + 5.0:
        return (f"**What this {check} check can say:** every model stays within 5 points of chance ({chance:.1f}%; "
                f"mean top-1: {listing}). At this budget neither architecture learns the task, so the comparison "
                "cannot tell a working DePatch from a broken one: it is no evidence for or against the paper's "
                "claim. The reference row (where present) checks the trained layer's computation instead.")
    return (f"**What this {check} check can say:** the best model is {best - chance:.1f} points above chance "
            f"({chance:.1f}%; mean top-1: {listing}), so the task is learned and the paired verdicts above compare "
            "models that work.")


def _plot_coverage(cov: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seeds = range(len(cov["glyph"]))
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))
    for key, colour in (("glyph", "#d62728"), ("clutter", "#7f7f7f")):
        ax[0].plot(seeds, cov[f"{key}_init"], "o--", color=colour, alpha=0.6, label=f"{key}: initial boxes")
        ax[0].plot(seeds, cov[key], "o-", color=colour, label=f"{key}: learned boxes")
    ax[0].set(xlabel="seed", ylabel="sample points on the part (%)", title="stage-2 DePatch coverage")
    ax[0].legend(fontsize=7)
    ratio_g = [a / b for a, b in zip(cov["glyph"], cov["glyph_init"])]
    ratio_c = [a / b for a, b in zip(cov["clutter"], cov["clutter_init"])]
    ax[1].bar([s - 0.2 for s in seeds], ratio_g, 0.4, color="#d62728", label="glyph (discriminative)")
    ax[1].bar([s + 0.2 for s in seeds], ratio_c, 0.4, color="#7f7f7f", label="distractor squares")
    ax[1].axhline(1.0, color="k", lw=0.8)
    ax[1].set(xlabel="seed", ylabel="learned / initial coverage", title="where the boxes moved")
    ax[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
