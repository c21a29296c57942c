"""fit(): a 2-step run writes its checkpoint and figure, resume continues exactly (same weights as an
uninterrupted run), every experiment config composes, a 2-process torchrun fit on CPU."""

import json
import os
import subprocess
import sys

import torch
from hydra import compose, initialize_config_module

from depatch.train import fit

TINY = ["data.n_train=48", "data.n_test=16", "data.image_size=32", "batch_size=8", "eval_batch_size=16",
        "epochs=2", "device=cpu", "figure.num_images=0", "log_interval_s=1000", "threads=1"]


def _cfg(*overrides):
    with initialize_config_module(config_module="depatch.conf", version_base="1.3"):
        return compose(config_name="train", overrides=[*TINY, *overrides])


def test_fit_two_steps_then_resume_equals_uninterrupted(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    full = fit(_cfg("max_steps=4"), a)
    first = fit(_cfg("max_steps=2", "figure.num_images=2"), b)
    assert first["step"] == 2
    ck = torch.load(b / "last.pt", weights_only=True)
    assert ck["step"] == 2 and ck["epoch"] == 0  # stopped mid-epoch (6 batches per epoch)
    for f in ("config.yaml", "metrics.csv", "env.json", "final_metrics.json", "patch_rectangles.png"):
        assert (b / f).is_file(), f
    resumed = fit(_cfg("max_steps=4", "resume=auto"), b)
    assert resumed["step"] == 4 and full["step"] == 4
    wa = torch.load(a / "last.pt", weights_only=True)["model"]
    wb = torch.load(b / "last.pt", weights_only=True)["model"]
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa), "resumed weights differ from the uninterrupted run"
    assert resumed["acc1"] == full["acc1"]
    # the DePatch predictor has moved away from its zero init, and box stats are reported
    assert wa["patch_embed2.offset_predictor.weight"].abs().sum() > 0
    assert 0 <= first["s2_shift"] <= 2 ** 0.5 and 0 <= first["s2_size"] <= 2


def test_full_epochs_and_checkpoint_mismatch_is_a_clear_error(tmp_path):
    out = fit(_cfg("model=pvt_mini", "epochs=1"), tmp_path)
    assert out["step"] == 6 and 0 <= out["acc1"] <= 100
    ck = torch.load(tmp_path / "last.pt", weights_only=True)
    assert ck["epoch"] == 1 and ck["model_args"]["arch"] == "pvt_mini"
    assert not (tmp_path / "patch_rectangles.png").exists()  # PVT has no DePatch to draw
    import pytest

    from shared.runtime import CheckpointError

    with pytest.raises(CheckpointError, match="arch='pvt_mini' there"):
        fit(_cfg("model=dpt_mini", "epochs=1"), tmp_path)


def test_every_experiment_composes_with_the_paper_settings():
    with initialize_config_module(config_module="depatch.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=["experiment=imagenet_dpt_tiny"])
        assert cfg.model.arch == "dpt_tiny" and cfg.optim.lr == 5e-4 and cfg.optim.lr_ref_batch == 512
        assert cfg.epochs == 300 and cfg.data.kind == "imagenet" and cfg.optim.label_smoothing == 0.1
        cfg = compose(config_name="train", overrides=["experiment=coco_retinanet_dpt_medium_ms3x"])
        assert cfg.task == "detection" and list(cfg.optim.milestones) == [28, 34] and cfg.data.min_size[0] == 640


def test_lr_schedule_known_values():
    from depatch.train import lr_factor

    with initialize_config_module(config_module="depatch.conf", version_base="1.3"):
        o = compose(config_name="train", overrides=["optim=detection_1x"]).optim
    # warm-up 500 iterations from 0.001 x lr, then x0.1 at epochs 8 and 11 (100 steps per epoch)
    assert abs(lr_factor(0, o, 100, 1200, 1e-4) - 1e-3) < 1e-12
    assert abs(lr_factor(500, o, 100, 1200, 1e-4) - 1.0) < 1e-12
    assert abs(lr_factor(800, o, 100, 1200, 1e-4) - 0.1) < 1e-12
    assert abs(lr_factor(1100, o, 100, 1200, 1e-4) - 0.01) < 1e-12


def test_torchrun_two_processes(tmp_path):
    env = dict(os.environ, REPRO_RUNS=str(tmp_path), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
           "depatch.train", "name=ddp", *TINY, "max_steps=2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = tmp_path / "depatch" / "ddp"
    assert json.loads((run / "env.json").read_text())["world_size"] == 2
    ck = torch.load(run / "last.pt", weights_only=True)
    assert ck["step"] == 2  # 48 samples / 2 ranks / batch 8 = 3 steps per epoch: stopped mid-epoch
    assert json.loads((run / "final_metrics.json").read_text())["step"] == 2
