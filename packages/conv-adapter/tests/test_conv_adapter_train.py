"""fit(): 2 steps, resume continues exactly; the synthetic pre-training cache; a 2-process torchrun fit."""

import json
import os
import subprocess
import sys

import pytest
import torch
from hydra import compose, initialize_config_module

from conv_adapter.pretrain import cache_path, pretrained_state
from conv_adapter.train import build_model, fit

TINY = ["device=cpu", "weights=null", "data.n_train=24", "data.n_test=16", "data.image_size=16",
        "data.num_classes=4", "batch_size=8", "eval_batch_size=16", "epochs=2", "log_interval=1000"]


def config(*overrides):
    with initialize_config_module(config_module="conv_adapter.conf", version_base="1.3"):
        return compose(config_name="train", overrides=[*TINY, *overrides])


def test_two_steps_then_resume_continues_like_an_uninterrupted_run(tmp_path):
    first = fit(config("max_steps=2"), tmp_path / "a")
    assert first["step"] == 2 and (tmp_path / "a" / "last.pt").is_file()
    assert (tmp_path / "a" / "adapter.pt").is_file() and (tmp_path / "a" / "final_metrics.json").is_file()
    resumed = fit(config("max_steps=4"), tmp_path / "a")  # resume=auto picks up last.pt; crosses an epoch end
    assert resumed["step"] == 4
    straight = fit(config("max_steps=4"), tmp_path / "b")
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == 4 and a["epoch"] == b["epoch"] == 1
    for k in b["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert resumed["test_acc1"] == straight["test_acc1"]
    steps = [line.split(",")[1] for line in (tmp_path / "a" / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == ["2", "3", "4"]  # the stop at 2 and both epoch ends, no duplicates


def test_resume_refuses_a_checkpoint_of_another_method(tmp_path):
    fit(config("max_steps=1"), tmp_path)
    with pytest.raises(Exception, match="method"):
        fit(config("max_steps=2", "method=linear"), tmp_path)


def test_synthetic_pretraining_is_cached_by_config(tmp_path):
    pcfg = {"arch": "resnet_tiny", "domain": "shapes-a", "num_classes": 3, "n_train": 24, "n_test": 6,
            "image_size": 16, "epochs": 1, "batch_size": 8, "lr": 0.01, "weight_decay": 0.0, "seed": 0}
    rng = torch.get_rng_state()
    state, metrics = pretrained_state(pcfg, tmp_path)
    assert torch.equal(torch.get_rng_state(), rng)  # pre-training does not disturb the caller's RNG
    path = cache_path(pcfg, tmp_path)
    assert path.is_file() and path.parent.name == "conv-adapter" and 0 <= metrics["source_test_acc"] <= 100
    mtime = path.stat().st_mtime_ns
    again, _ = pretrained_state(pcfg, tmp_path)  # a cache hit: same tensors, file untouched
    assert path.stat().st_mtime_ns == mtime and all(torch.equal(state[k], again[k]) for k in state)
    assert cache_path({**pcfg, "domain": "shapes-c"}, tmp_path) != path
    cfg = config("weights=synthetic", f"cache_dir={tmp_path}", *[f"model.pretrain.{k}={v}" for k, v in pcfg.items() if k != "arch"])
    model, info, source = build_model(cfg, num_classes=4)
    assert torch.equal(model.layer1[0].conv1.weight, state["layer1.0.conv1.weight"])  # the backbone is the cached one
    assert model.fc[1].out_features == 4 and source == metrics


def test_two_process_torchrun_fit_on_cpu(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
           "conv_adapter.train", *TINY, "max_steps=2", f"hydra.run.dir={tmp_path}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "final_metrics.json").read_text())
    assert result["step"] == 2 and "world size 2" in (tmp_path / "train.log").read_text()


@pytest.mark.slow
def test_reproduce_quick_writes_the_table_and_plots(tmp_path, monkeypatch):
    from conv_adapter.reproduce import main

    monkeypatch.setenv("REPRO_RUNS", str(tmp_path / "runs"))
    main(["--quick", "--seeds", "2", "--epochs", "1", "--fewshot-steps", "1", "--n-train", "40", "--n-test", "20",
          "--workers", "1", "--out", str(tmp_path / "out")])
    md = (tmp_path / "out" / "results.md").read_text()
    assert "synthetic" in md and "| 1 | 1,302,784 |" in md
    assert (tmp_path / "out" / "methods.png").is_file() and (tmp_path / "out" / "fewshot.png").is_file()
