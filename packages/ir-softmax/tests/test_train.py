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


def test_weights_initialise_the_backbone_from_a_checkpoint(tmp_path):
    fit(config(tmp_path, "max_steps=1", "head=softmax"), tmp_path / "base")
    base = torch.load(tmp_path / "base" / "last.pt", weights_only=True)["model"]
    from ir_softmax.data import build_data
    from ir_softmax.train import build_model, load_weights
    from shared.runtime import to_plain

    cfg = config(tmp_path, "head=ir_amsoftmax")
    model, _ = build_model(cfg, build_data(to_plain(cfg.data), cfg.cache_dir), 6)
    load_weights(model, str(tmp_path / "base" / "last.pt"))
    assert torch.equal(model.backbone.fc1.weight, base["backbone.fc1.weight"])


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
    md = (tmp_path / "out" / "results.md").read_text()
    assert md.index("Mechanism check") < md.index("Paper setting") and "synthetic" in md
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    assert len(data["results"]) == 2 * (3 + 6) + 2 * (3 * 5 + 6 * 5) + 2 * 6
    for name in ("mechanism_curves.png", "faces_curves.png", "mechanism_features_2d.png", "results.csv"):
        assert (tmp_path / "out" / name).is_file(), name
