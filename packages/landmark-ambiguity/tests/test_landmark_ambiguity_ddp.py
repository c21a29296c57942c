"""torchrun with 2 CPU processes (gloo): a run stopped mid-epoch and resumed equals an uninterrupted one
(weights, searched labels, final metrics), and the sharded search gives every rank the same labels."""

import json
import os
import subprocess
import sys

import pytest
import torch

ARGS = ["data.train_size=16", "data.test_size=4", "data.image_size=32", "model.width=8", "model.depth=2", "epochs=2",
        "batch_size=4", "search.start_epoch=1", "search.every=1", "ghcu.epochs=1", "ghcu.channels=[8]",
        "ghcu.hidden=16", "eval.overlays=2", "threads=1", "device=cpu"]


def _torchrun(tmp_path, *extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REPRO_", "MASTER_", "WORLD_", "RANK", "LOCAL_"))}
    env.update(REPRO_RUNS=str(tmp_path / "runs"), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "landmark_ambiguity.train", *ARGS, *extra]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    return r


def test_torchrun_two_processes_resume_equals_uninterrupted(tmp_path):
    _torchrun(tmp_path, "name=cut", "max_steps=3")  # 2 steps per epoch per rank: stops inside epoch 2
    cut = tmp_path / "runs" / "landmark-ambiguity" / "cut"
    ck = torch.load(cut / "last.pt", weights_only=True)
    assert ck["step"] == 3 and ck["world_size"] == 2 and ck["searched"] == [1]
    assert not (cut / "final_metrics.json").exists()
    _torchrun(tmp_path, "name=cut")
    assert "resumed from" in (cut / "train.log").read_text()
    _torchrun(tmp_path, "name=whole")
    whole = tmp_path / "runs" / "landmark-ambiguity" / "whole"
    a, b = torch.load(cut / "last.pt", weights_only=True), torch.load(whole / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == 4
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=0, atol=0)
    torch.testing.assert_close(a["labels"], b["labels"], rtol=0, atol=0)
    ma, mb = (json.loads((d / "final_metrics.json").read_text()) for d in (cut, whole))
    assert ma == mb and ma["search_passes"] == 1 and ma["step"] == 4
