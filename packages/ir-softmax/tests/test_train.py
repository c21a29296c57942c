"""fit(): 2 steps then resume equals an uninterrupted run; configs compose; a 2-process torchrun fit (gloo);
the IR centre update under DDP uses every rank's samples."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_module

from ir_softmax.heads import update_centres
from ir_softmax.train import fit

TINY = ["device=cpu", "data.num_classes=4", "data.max_per_class=6", "data.imbalance_ratio=3", "data.test_per_class=2",
        "data.verification_ids=4", "data.verification_per_id=3", "data.pairs_per_half=1", "data.folds=2",
        "data.image_size=16", "model.widths=[8,16]", "model.embedding_size=8", "iterations=6", "batch_size=4",
        "eval_batch_size=16", "log_interval=1000", "plot=false"]
CONF = Path(__file__).resolve().parents[1] / "src" / "ir_softmax" / "conf"


def config(tmp_path, *overrides):
    with initialize_config_module(config_module="ir_softmax.conf", version_base="1.3"):
        return compose(config_name="train", overrides=[*TINY, f"cache_dir={tmp_path / 'cache'}", *overrides])


def test_two_steps_then_resume_continues_like_an_uninterrupted_run(tmp_path):
    first = fit(config(tmp_path, "max_steps=2"), tmp_path / "a")
    assert first["step"] == 2 and (tmp_path / "a" / "last.pt").is_file()
    resumed = fit(config(tmp_path, "max_steps=6", "plot=true"), tmp_path / "a")  # crosses the epoch end at 4
    straight = fit(config(tmp_path, "max_steps=6"), tmp_path / "b")
    assert resumed["step"] == straight["step"] == 6
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    assert "head.centres" in b["model"] and int(b["model"]["head.iteration"]) == 6
    for k in b["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for k in ("verification_accuracy", "minority_recall", "minority_angle"):
        assert resumed[k] == straight[k]
    assert (tmp_path / "a" / "features.png").is_file() and (tmp_path / "a" / "final_metrics.json").is_file()
    steps = [line.split(",")[1] for line in (tmp_path / "a" / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == ["2", "6"]


def test_resume_refuses_a_checkpoint_of_another_head(tmp_path):
    fit(config(tmp_path, "max_steps=1"), tmp_path / "r")
    with pytest.raises(Exception, match="head"):
        fit(config(tmp_path, "max_steps=2", "head=amsoftmax"), tmp_path / "r")


@pytest.mark.parametrize("head", ["softmax", "asoftmax", "ir_asoftmax", "amsoftmax", "normface", "arcface", "combined"])
def test_every_head_config_trains_one_step(tmp_path, head):
    out = fit(config(tmp_path, f"head={head}", "max_steps=1", "eval_train_angles=false"), tmp_path / head)
    assert out["step"] == 1 and 0 <= out["verification_accuracy"] <= 1


def test_weights_initialise_the_backbone_and_a_same_head_from_a_checkpoint(tmp_path):
    fit(config(tmp_path, "max_steps=1", "head=softmax"), tmp_path / "base")
    base = torch.load(tmp_path / "base" / "last.pt", weights_only=True)["model"]
    from ir_softmax.data import build_data
    from ir_softmax.train import build_model, load_weights
    from shared.runtime import to_plain

    for head in ("ir_amsoftmax", "softmax"):
        cfg = config(tmp_path, f"head={head}")
        torch.manual_seed(123)
        model, _ = build_model(cfg, build_data(to_plain(cfg.data), cfg.cache_dir), 6)
        load_weights(model, str(tmp_path / "base" / "last.pt"))
        assert torch.equal(model.backbone.fc1.weight, base["backbone.fc1.weight"])
        if head == "softmax":  # the same head continues from the checkpoint
            assert torch.equal(model.head.fc.weight, base["head.fc.weight"])


def test_fit_starts_the_class_vectors_at_the_class_centres_when_asked(tmp_path):
    from ir_softmax.data import build_data
    from ir_softmax.train import build_model, embed
    from shared.runtime import seed_everything, to_plain

    cfg = config(tmp_path, "head=amsoftmax", "init_class_vectors=centres", "optim.lr=1e-12", "max_steps=1")
    fit(cfg, tmp_path / "init")
    trained = torch.load(tmp_path / "init" / "last.pt", weights_only=True)["model"]["head.weight"]
    seed_everything(0)
    data = build_data(to_plain(cfg.data), cfg.cache_dir)
    model, _ = build_model(cfg, data, 6)
    from types import SimpleNamespace

    from ir_softmax.heads import class_centres

    feats, labels = embed(model, data.train, SimpleNamespace(device=torch.device("cpu")), 16)
    expected, _ = class_centres(feats.double(), labels, data.num_classes)
    assert torch.allclose(trained.double(), expected, atol=1e-5)


def test_flips_change_training_and_the_schedule_follows_the_run_length(tmp_path):
    a = fit(config(tmp_path, "max_steps=1", "flip=true", "eval_train_angles=false"), tmp_path / "flip")
    b = fit(config(tmp_path, "max_steps=1", "flip=false", "eval_train_angles=false"), tmp_path / "noflip")
    wa = torch.load(tmp_path / "flip" / "last.pt", weights_only=True)["model"]
    wb = torch.load(tmp_path / "noflip" / "last.pt", weights_only=True)["model"]
    assert not torch.equal(wa["backbone.fc1.weight"], wb["backbone.fc1.weight"]) and a["step"] == b["step"] == 1
    from ir_softmax.train import build_optimizer, head_options

    assert head_options({"name": "asoftmax", "blend": True, "lambda_gamma": None}, 1000)["lambda_gamma"] == \
        pytest.approx(0.12 * 28)
    assert head_options({"name": "asoftmax", "blend": True, "lambda_gamma": 0.5}, 1000)["lambda_gamma"] == 0.5
    _, sched = build_optimizer(config(tmp_path), torch.nn.Linear(2, 2), 1000)
    assert sorted(sched.milestones) == [571, 857]


def test_every_experiment_config_composes():
    names = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
    assert len(names) >= 15
    for name in names:
        with initialize_config_module(config_module="ir_softmax.conf", version_base="1.3"):
            cfg = compose(config_name="train", overrides=[f"experiment={name}"])
        assert cfg.name == name and cfg.head.name in name and cfg.data.name != "synthetic_faces"


def test_two_process_torchrun_fit_on_cpu(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
           "ir_softmax.train", *TINY, f"cache_dir={tmp_path / 'cache'}", "max_steps=2", f"hydra.run.dir={tmp_path}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "final_metrics.json").read_text())
    assert result["step"] == 2 and "world size 2" in (tmp_path / "train.log").read_text()


def test_ir_centres_under_ddp_use_every_ranks_samples(tmp_path):
    """Two ranks with different batch sizes update one IR head; both end with the centres of the combined batch."""
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(f"""
        import torch, torch.distributed as dist
        from ir_softmax.heads import build_head
        dist.init_process_group("gloo")
        rank = dist.get_rank()
        torch.manual_seed(0)
        head = build_head("ir_amsoftmax", 3, 4, center_update="grad", center_lr=0.5)
        g = torch.Generator().manual_seed(rank + 1)
        x = torch.randn(3 + 2 * rank, 4, generator=g)
        y = torch.tensor([0, 1, 2, 0, 1][: 3 + 2 * rank])
        torch.save({{"init": head.centres.clone(), "x": x, "y": y}}, {str(tmp_path)!r} + f"/in{{rank}}.pt")
        head(x, y)
        torch.save(head.centres, {str(tmp_path)!r} + f"/out{{rank}}.pt")
        dist.destroy_process_group()
    """))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(script)], capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    ins = [torch.load(tmp_path / f"in{r}.pt") for r in range(2)]
    outs = [torch.load(tmp_path / f"out{r}.pt") for r in range(2)]
    x = torch.cat([ins[0]["x"], ins[1]["x"]])
    y = torch.cat([ins[0]["y"], ins[1]["y"]])
    expected = update_centres(ins[0]["init"], F.normalize(x, dim=1), y, "grad", 0.5)
    assert torch.equal(outs[0], outs[1]) and torch.allclose(outs[0], expected, atol=1e-6)
    alone = update_centres(ins[0]["init"], F.normalize(ins[0]["x"], dim=1), ins[0]["y"], "grad", 0.5)
    assert not torch.allclose(outs[0], alone)


@pytest.mark.slow
def test_reproduce_quick_writes_the_tables_and_figures(tmp_path, monkeypatch):
    from ir_softmax.reproduce import main

    monkeypatch.setenv("REPRO_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("REPRO_CACHE", str(tmp_path / "cache"))
    main(["--quick", "--seeds", "2", "--workers", "1", "--mechanism-base-iterations", "3", "--mechanism-iterations", "2",
          "--faces-base-iterations", "2", "--faces-iterations", "2", "--out", str(tmp_path / "out")])
    out = tmp_path / "out"
    md = (out / "results.md").read_text()
    assert md.index("Mechanism check") < md.index("Paper setting") and "synthetic" in md
    runs = json.loads((out / "runs.json").read_text())["runs"]
    assert len(runs) == 2 * (3 + 6) + 2 * (3 * 5 + 6 * 5) + 2 * 6
    prov = json.loads((out / "provenance.json").read_text())
    assert len(prov["runs"]) == len(runs) and prov["args"]["seeds"] == 2
    for name in ("mechanism_curves.png", "faces_curves.png", "mechanism_features_2d.png", "results.csv"):
        assert (out / name).is_file(), name
    from shared.report import render_report

    assert render_report(out) == md  # results.md is rendered from the data alone
    main(["--render-only", "--out", str(out)])
    assert (out / "results.md").read_text() == md


@pytest.mark.parametrize("override, key", [("head.center_update=gard", "head.center_update"), ("iterations=-1", "iterations"),
                                           ("model.name=small_cn", "model.name"), ("head.center_lr=1.5", "head.center_lr"),
                                           ("weights=/no/such/file.pt", "weights"),
                                           ("init_class_vectors=centres", "init_class_vectors")])
def test_bad_config_is_one_clear_error_before_anything_is_built(tmp_path, override, key):
    from shared.errors import ConfigError

    extra = ["head=softmax"] if key == "init_class_vectors" else []
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as err:
        fit(config(tmp_path, override, *extra), tmp_path / "run")
    assert ";" in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_benchmark_quick_writes_its_report(tmp_path):
    import importlib.util

    path = Path(__file__).resolve().parents[3] / "benchmarks" / "ir-softmax" / "run.py"
    spec = importlib.util.spec_from_file_location("bench_ir_softmax", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.main(["--quick", "--force", "--rounds", "5", "--min-run-time", "0.01", "--threads", "1", "--out", str(tmp_path)])
    md = (tmp_path / "results.md").read_text()
    assert "QUICK" in md and "ir_amsoftmax" in md and (tmp_path / "ratios.png").is_file()


@pytest.mark.parametrize("head", ["amsoftmax", "ir_amsoftmax"])
def test_init_class_vectors_and_refresh_set_the_eq3_centres_of_the_training_features(tmp_path, head):
    from ir_softmax.data import build_data
    from ir_softmax.heads import class_centres
    from ir_softmax.train import embed, init_class_vectors, refresh_centres
    from shared.runtime import start_run, to_plain

    cfg = config(tmp_path, f"head={head}")
    ctx = start_run(cfg, tmp_path / "ctx")
    data = build_data(to_plain(cfg.data), cfg.cache_dir)
    from ir_softmax.train import build_model

    model, _ = build_model(cfg, data, 6)
    feats, labels = embed(model, data.train, ctx, 16)
    expected, _ = class_centres(feats.double(), labels, data.num_classes)
    init_class_vectors(model, data, ctx, cfg)
    assert model.training
    assert torch.allclose(model.head.class_vectors().double(), expected, atol=1e-6)
    if head.startswith("ir_"):
        model.head.centres = F.normalize(torch.randn_like(model.head.centres), dim=1)
        refresh_centres(model, data, ctx, cfg)
        assert model.training and torch.allclose(model.head.centres.double(), expected, atol=1e-6)


def test_evaluate_reports_known_recalls_angles_and_verification():
    """A fixed 2-D 'backbone' (identity) and IR centres at 0, 90, 180 deg: every number is known by hand."""
    import math
    from types import SimpleNamespace

    import numpy as np
    from torch import nn

    from ir_softmax.data import DataBundle, ImageTensorDataset
    from ir_softmax.heads import build_head
    from ir_softmax.train import EmbeddingModel, evaluate

    deg = lambda a: [math.cos(math.radians(a)), math.sin(math.radians(a))]  # noqa: E731
    head = build_head("ir_normface", 3, 2)
    head.centres = torch.tensor([deg(0), deg(90), deg(180)])
    model = EmbeddingModel(nn.Identity(), head, "ir_normface")
    # test: class 0 all right (2/2), class 1 one right one called class 0 (1/2), class 2 all wrong (0/2)
    test_x = torch.tensor([deg(10), deg(-10), deg(80), deg(20), deg(100), deg(70)])
    test_y = torch.tensor([0, 0, 1, 1, 2, 2])
    # train features: class 0 centred at 0 deg, class 1 at 60 deg, class 2 at 180 deg
    train_x = torch.tensor([deg(20), deg(-20), deg(60), deg(180)])
    train_y = torch.tensor([0, 0, 1, 2])
    # verification: pairs (image 2i, image 2i+1) with cosines 0.9, 0.6, 0.45, 0.1, 0.4, 0.55 in folds 0, 1, 2, 0, 1, 2
    # (the hand-made case of test_evaluation, interleaved): LFW protocol accuracy (1 + 0.5 + 0) / 3
    cosines = [0.9, 0.6, 0.45, 0.1, 0.4, 0.55]
    ver_x = torch.tensor([v for c in cosines for v in (deg(0), deg(math.degrees(math.acos(c))))])
    data = DataBundle(ImageTensorDataset(train_x, train_y), 3, 1, np.array([2, 1, 1]), np.array([False, True, True]),
                      ImageTensorDataset(test_x, test_y),
                      {"images": ImageTensorDataset(ver_x, torch.zeros(12, dtype=torch.long)),
                       "index": np.arange(12).reshape(6, 2), "same": np.array([True, True, True, False, False, False]),
                       "fold": np.array([0, 1, 2, 0, 1, 2])}, kind="vector")
    cfg = SimpleNamespace(eval_batch_size=4, eval_train_angles=True, eval_train_limit=100)
    out, arrays = evaluate(model, data, SimpleNamespace(device=torch.device("cpu")), cfg)
    assert out["test_accuracy"] == pytest.approx(3 / 6)
    assert out["majority_recall"] == pytest.approx(1.0) and out["minority_recall"] == pytest.approx(0.25)
    assert arrays["angles"] == pytest.approx([0.0, 30.0, 0.0], abs=1e-6)
    assert out["majority_angle"] == pytest.approx(0.0, abs=1e-6) and out["minority_angle"] == pytest.approx(15.0)
    assert out["train_minority_recall"] == pytest.approx(1.0)  # 60 deg is nearer 90 than 0
    assert out["verification_accuracy"] == pytest.approx(0.5)
    assert out["verification_auc"] == pytest.approx(8 / 9)  # 8 of the 9 (same, different) score pairs are ordered


def test_input_scaling_and_flips():
    from ir_softmax.data import to_input
    from ir_softmax.train import flip_batch

    x = torch.tensor([[[[0, 255]]]], dtype=torch.uint8)
    assert torch.equal(to_input(x), torch.tensor([[[[-1.0, 1.0]]]]))
    f = torch.randn(3, 2, 2)
    assert torch.equal(to_input(f), f)
    x = torch.arange(2 * 8 * 3, dtype=torch.float32).reshape(8, 1, 2, 3)
    torch.manual_seed(0)
    mask = torch.rand(8) < 0.5
    torch.manual_seed(0)
    y = flip_batch(x)
    assert 0 < mask.sum() < 8
    assert torch.equal(y[mask], x[mask].flip(-1)) and torch.equal(y[~mask], x[~mask])
