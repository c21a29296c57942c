"""OPANAS benchmarks -> benchmarks/opanas/{results.md, results.json, provenance.json, results.csv, ratios.png}.

    uv run --package opanas python benchmarks/opanas/run.py [--rounds 5] [--threads 1]

1. Neck size (exact, no timing): parameters and FLOPs of FPN, PAFPN and the official OPANAS architecture on a
   ResNet-50 pyramid, and the width of the parameter-matched FPN.
2. Deformable conv, forward + backward: the package's grid_sample + matmul implementation (the CPU default)
   against torchvision's ``deform_conv2d`` and a plain conv of the same shape.
3. One training step of the embedded default's detector (batch 4, 128 px): FPN, PAFPN, the official
   architecture's sub-net and the super-net (a fresh path per edge every step).
4. Scoring one search candidate (COCO AP with the super-net's weights on 32 images).

Timed with shared.bench (torch.utils.benchmark, variants interleaved over rounds, median and IQR).
"""

from __future__ import annotations

import argparse
import tempfile
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F

from shared.bench import add_bench_args, check_quiet, compare, plot_ratios, timing_table, write_bench
from shared.cli import entry
from shared.provenance import Provenance
from shared.report import Section, Table

HERE = Path(__file__).resolve().parent
RESNET = [256, 512, 1024, 2048]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    return add_bench_args(p, out="benchmarks/opanas", rounds=5, threads=1, min_run_time=0.3)


def neck_macs(neck, image_hw=(256, 256)) -> float:
    """Multiply-accumulates of one forward pass on a ResNet-50 pyramid of an ``image_hw`` input (convs, deformable
    convs and their offset convs; sampling, adds and pooling not counted)."""
    from opanas import DeformConv

    total = [0]

    def conv_hook(m, inp, out):
        total[0] += out[0].numel() * m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]

    def dcn_hook(m, inp, out):
        total[0] += out[0].numel() * m.weight.shape[1] * 9

    hooks = [m.register_forward_hook(conv_hook) for m in neck.modules() if isinstance(m, torch.nn.Conv2d)]
    hooks += [m.register_forward_hook(dcn_hook) for m in neck.modules() if isinstance(m, DeformConv)]
    h, w = image_hw
    x = OrderedDict((str(i), torch.randn(1, c, h // 2 ** (i + 2), w // 2 ** (i + 2))) for i, c in enumerate(RESNET))
    with torch.no_grad():
        neck(x)
    for hk in hooks:
        hk.remove()
    return total[0]


@entry
def main(argv=None) -> None:
    from torchvision.ops import deform_conv2d as tv_deform_conv2d

    from shared.data.detection_scenes import synthetic_detection

    from opanas import OFFICIAL_ARCH, build_detector, build_neck, deform_conv2d_grid_sample, supernet_of
    from opanas.arch import sample_arch
    from opanas.data import to_tensor
    from opanas.neck import fpn_inner_channels_for
    from opanas.train import evaluate

    args = build_parser().parse_args(argv)
    check_quiet(args.force)
    prov = Provenance(args, argv, threads=args.threads, script="benchmarks/opanas/run.py")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    kw = dict(rounds=args.rounds, threads=args.threads, min_run_time=args.min_run_time)

    # ---- 1. neck size
    scale = (800 * 1216) / (256 * 256)
    necks = [("FPN 256", build_neck("fpn", RESNET, 256)), ("PAFPN 256", build_neck("pafpn", RESNET, 256)),
             ("OPANAS official arch 112, FS shared (official code)",
              build_neck("opanas", RESNET, 112, arch=OFFICIAL_ARCH, fs_shared_weights=True)),
             ("OPANAS official arch 112, FS separate (paper)", build_neck("opanas", RESNET, 112, arch=OFFICIAL_ARCH)),
             ("OPANAS official arch 160, FS shared (official code)",
              build_neck("opanas", RESNET, 160, arch=OFFICIAL_ARCH, fs_shared_weights=True))]
    size_rows, base_p, base_f = [], None, None
    for name, neck in necks:
        params = sum(p.numel() for p in neck.parameters())
        gflops = 2 * neck_macs(neck) * scale / 1e9
        base_p, base_f = base_p or params, base_f or gflops
        size_rows.append([name, f"{params / 1e6:.3f}", f"{params / base_p:.2f}x", f"{gflops:.1f}", f"{gflops / base_f:.2f}x"])
    target = sum(p.numel() for p in necks[2][1].parameters())
    inner = fpn_inner_channels_for(target, RESNET, 112)
    matched = build_neck("fpn", RESNET, 112, inner_channels=inner)
    mp_ = sum(p.numel() for p in matched.parameters())
    size_rows.append([f"FPN 112 out, inner width {inner} (matched to the official 112 neck)", f"{mp_ / 1e6:.3f}",
                      f"{mp_ / base_p:.2f}x", f"{2 * neck_macs(matched) * scale / 1e9:.1f}", ""])
    sections = [Section("Neck size on a ResNet-50 pyramid (800x1216 input)",
                        text="FLOPs = 2 x multiply-accumulates of convs, deformable convs and offset convs, counted at "
                             "256x256 and scaled to 800x1216.",
                        table=Table(["neck", "params (M)", "params / FPN", "GFLOPs", "FLOPs / FPN"], size_rows),
                        after="The official OPANAS-112 neck has 5.03 M parameters with the official FS weight sharing "
                              "(our count of the official code's structure, pinned by the tests; not a number the paper prints).")]

    # ---- 2. deformable conv
    x = torch.randn(8, 64, 16, 16, requires_grad=True)
    w = torch.randn(64, 64, 3, 3, requires_grad=True)
    off = torch.randn(8, 18, 16, 16, requires_grad=True)
    base = "plain conv2d"
    dcn = compare({base: lambda: F.conv2d(x, w, padding=1).sum().backward(),
                   "DCN grid_sample + matmul (ours, CPU default)":
                       lambda: deform_conv2d_grid_sample(x, off, w, None, 1, 1, 1).sum().backward(),
                   "DCN torchvision.ops.deform_conv2d": lambda: tv_deform_conv2d(x, off, w, None, padding=1).sum().backward()},
                  baseline=base, **kw)
    speed = dcn["DCN torchvision.ops.deform_conv2d"].median / dcn["DCN grid_sample + matmul (ours, CPU default)"].median
    sections.append(Section("Deformable conv, forward + backward, 8x64x16x16, 3x3 (CPU)",
                            table=timing_table(dcn, base),
                            after=f"The grid_sample implementation is {speed:.1f}x faster than torchvision's on this "
                                  "CPU (the two agree in float64, forward and gradients, in the tests).", figures=["ratios.png"]))

    # ---- 3. train steps, 4. candidate scoring
    rpn = dict(rpn_batch_size_per_image=64, rpn_pre_nms_top_n_train=300, rpn_post_nms_top_n_train=150,
               rpn_pre_nms_top_n_test=300, rpn_post_nms_top_n_test=100)
    roi = dict(box_batch_size_per_image=64, box_detections_per_img=50)
    mk = dict(num_classes=5, neck_channels=32, representation_size=128, roi_sampling_ratio=1, rpn=rpn, roi=roi)
    with tempfile.TemporaryDirectory() as d:
        sets = synthetic_detection(d, {"train": 8, "search": 32}, seed=0, transforms=to_tensor)
        images, targets = zip(*[sets["train"][i] for i in range(4)])
        images, targets = list(images), [dict(t) for t in targets]
        variants, models = {}, {}
        for name, neck, arch in (("FPN", "fpn", None), ("PAFPN", "pafpn", None),
                                 ("official arch (sub-net)", "opanas", OFFICIAL_ARCH),
                                 ("super-net (a fresh path per edge each step)", "opanas", None)):
            torch.manual_seed(0)
            model = build_detector(neck=neck, arch=arch, **mk)
            model.train()
            opt = torch.optim.SGD(model.parameters(), lr=1e-4)
            counter = [0]

            def step(model=model, opt=opt, counter=counter):
                net = supernet_of(model)
                if net is not None and net.is_supernet:
                    net.set_arch(sample_arch(0, counter[0]))
                    counter[0] += 1
                loss = sum(model(images, targets).values())
                opt.zero_grad()
                loss.backward()
                opt.step()

            variants[name], models[name] = step, model
        steps = compare(variants, baseline="FPN", **kw)
        sections.append(Section("One training step, tiny Faster R-CNN (embedded default), batch 4, 128 px, neck 32 ch",
                                table=timing_table(steps, "FPN", unit="s")))
        supernet = models["super-net (a fresh path per edge each step)"]
        cand = compare({"score one candidate (32 images, COCO AP)":
                        lambda: evaluate(supernet, sets["search"], 8, torch.device("cpu"), arch=OFFICIAL_ARCH)},
                       baseline="score one candidate (32 images, COCO AP)", **kw)
        t = cand["score one candidate (32 images, COCO AP)"].median
        sections.append(Section("Search throughput", table=timing_table(cand, "score one candidate (32 images, COCO AP)", unit="s"),
                                after=f"{60 / t:.1f} candidates per minute on 32 held-out images at 1 thread."))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plot_ratios(dcn, base, out / "ratios.png", "deformable conv fwd+bwd time / plain conv")
    md = write_bench(out, "OPANAS benchmarks", f"{args.threads} thread(s), {args.rounds} interleaved rounds; CPU.",
                     sections, prov, force=args.force)
    print(md.read_text())


if __name__ == "__main__":
    main()
