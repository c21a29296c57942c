"""fit(): a tiny end-to-end pass (super-net -> search -> retrain), 2-step runs that resume exactly, and the
COCO evaluator path on a synthetic split."""

import json
import os
import subprocess
import sys

import pytest
import torch
from hydra import compose, initialize_config_module

from shared.data.coco import coco_evaluate

from opanas.train import fit

TINY = ["data.train_images=8", "data.search_images=4", "data.val_images=4", "data.size=64", "data.batch_size=2",
        "model.neck_channels=8", "model.min_size=64", "model.max_size=64", "model.backbone_channels=[8,8,16,16]",
        "search.population=2", "search.generations=2", "search.topk=1", "search.num_mutation=1",
        "search.num_crossover=1", "eval.batch_size=4", "threads=1", "ckpt_every=1000"]


def _cfg(tmp_path, *extra):
    with initialize_config_module(config_module="opanas.conf", version_base="1.3"):
        return compose(config_name="train", overrides=TINY + [f"data.root={tmp_path / 'scenes'}", *extra])


def test_full_pipeline_tiny(tmp_path):
    res = fit(_cfg(tmp_path, "supernet.steps=2", "retrain.steps=1"), tmp_path / "run")
    assert res["search_candidates"] >= 2 and res["steps"] == 3
    found = json.loads((tmp_path / "run" / "search.json").read_text())
    assert found["best"] == res["searched_arch"] == res["arch"]
    assert (tmp_path / "run" / "architecture.png").is_file() and (tmp_path / "run" / "last.pt").is_file()
    assert 0.0 <= res["val_AP"] <= 1.0


def _weights(path):
    return torch.load(path, weights_only=True)["model"]


@pytest.mark.parametrize("mode", ["search", "train"])
def test_two_steps_then_resume_equals_uninterrupted(tmp_path, mode):
    extra = [f"mode={mode}", "supernet.steps=3", "retrain.steps=3"] + (["model.neck=fpn"] if mode == "train" else [])
    a = fit(_cfg(tmp_path, *extra, "max_steps=2"), tmp_path / "a")
    assert a["stopped_at_step"] == 2
    ck = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    assert ck["step"] == 2 and ck["phase"] == ("supernet" if mode == "search" else "retrain")
    fit(_cfg(tmp_path, *extra, "max_steps=3"), tmp_path / "a")  # resume=auto continues from step 2
    assert torch.load(tmp_path / "a" / "last.pt", weights_only=True)["step"] == 3
    fit(_cfg(tmp_path, *extra, "max_steps=3"), tmp_path / "b")  # uninterrupted
    wa, wb = _weights(tmp_path / "a" / "last.pt"), _weights(tmp_path / "b" / "last.pt")
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=0, msg=k)


def test_evaluator_on_synthetic_split_perfect_and_empty(tmp_path):
    from shared.data.detection_scenes import synthetic_detection

    ds = synthetic_detection(tmp_path, {"val": 6}, size=64)["val"]
    perfect = [{"image_id": t["image_id"], "boxes": t["boxes"], "labels": t["labels"], "scores": torch.ones(len(t["labels"]))}
               for t in (ds.target(i) for i in range(len(ds)))]
    assert coco_evaluate(ds.coco, perfect, ds.label_to_cat)["AP"] == pytest.approx(1.0)
    assert coco_evaluate(ds.coco, [], ds.label_to_cat)["AP"] == 0.0


def test_reproduce_quick_writes_a_report(tmp_path, monkeypatch):
    """The reproduce pipeline end to end at tiny sizes: every arm, the super-net scores, provenance and report."""
    from opanas import reproduce

    monkeypatch.setenv("REPRO_RUNS", str(tmp_path / "runs"))
    reproduce.main(["--quick", "--workers", "1", "--out", str(tmp_path / "out")])
    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    assert (tmp_path / "out" / "provenance.json").is_file() and (tmp_path / "out" / "results.md").is_file()
    raw = json.loads((tmp_path / "out" / "raw.json").read_text())
    assert set(raw["runs"]) == {f"{a}|{s}" for a in reproduce.MECH_ARMS for s in range(3)}
    per_w = 8 + 8 + 16 + 16 + 4 + 9 * 4 * 8  # parameters per unit of the FPN's inner width (quick sizes)
    for s in range(3):  # the matched FPN has the searched neck's parameter count
        assert abs(raw["runs"][f"fpn_matched|{s}"]["neck_params"] - raw["runs"][f"searched|{s}"]["neck_params"]) <= per_w
        assert len(raw["supernet"][f"supernet|{s}"]["random"]) == 3
    assert doc["sections"][0]["heading"].startswith("Mechanism check")


def _torchrun(tmp_path, run, *extra):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "opanas.train",
           *TINY, f"data.root={tmp_path / 'scenes'}", "device=cpu", "supernet.steps=2", "retrain.steps=2",
           f"hydra.run.dir={tmp_path / run}", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]


def test_two_process_torchrun_search_then_resume_equals_uninterrupted(tmp_path):
    """Super-net, sharded search and retrain under DistributedDataParallel (2 CPU processes, gloo); stopped in the
    retrain phase and resumed, it ends with the weights and val mAP of an uninterrupted 2-process run."""
    _torchrun(tmp_path, "a", "max_steps=3")
    assert torch.load(tmp_path / "a" / "last.pt", weights_only=True)["phase"] == "retrain"
    _torchrun(tmp_path, "a")
    _torchrun(tmp_path, "b")
    log = (tmp_path / "a" / "train.log").read_text()
    assert "world size 2" in log and "resumed from" in log
    ra, rb = (json.loads((tmp_path / r / "final_metrics.json").read_text()) for r in "ab")
    assert ra["searched_arch"] == rb["searched_arch"] and ra["val_AP"] == rb["val_AP"]
    wa, wb = _weights(tmp_path / "a" / "last.pt"), _weights(tmp_path / "b" / "last.pt")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
