"""fit(): stages, resume (generator, discriminator and all optimisers continue exactly), configs, errors,
a 2-process torchrun fit on CPU, and the quick reproduce."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from shared.errors import CheckpointError, ConfigError
from shared.provenance import compose

from ffwm.train import fit

TINY = ["device=cpu", "threads=1", "data.image_size=32", "data.n_train=12", "data.n_test=6", "data.train_identities=4",
        "data.test_identities=3", "batch_size=4", "flow.batch_size=4", "flow.steps=1", "gen.steps=4",
        "loss.warmup_images=8", "checkpoint_every=1", "eval_batch_size=8", "grid_samples=2", "log_interval=1000",
        "log_every=1", *[f"features.synthetic_{k}.{a}={v}" for k in ("perceptual", "identity")
                         for a, v in (("num_identities", 4), ("per_identity", 2), ("epochs", 1), ("image_size", 32))]]
CONF = Path(__file__).resolve().parents[1] / "src" / "ffwm" / "conf"


def config(tmp_path, *overrides):
    return compose("ffwm.conf", [*TINY, f"cache_dir={tmp_path / 'cache'}", *overrides])


def test_two_steps_then_resume_continues_like_an_uninterrupted_run(tmp_path):
    first = fit(config(tmp_path, "max_steps=3"), tmp_path / "a")  # 1 flow step + 2 generator steps
    assert first["step"] == 3 and (tmp_path / "a" / "flows.pt").is_file()
    ckpt = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    assert ckpt["stage"] == "gen" and {"optimizer_d", "scheduler_d", "optimizer_flow"} <= set(ckpt)
    assert any(k.startswith("discriminator.") for k in ckpt["model"])
    resumed = fit(config(tmp_path), tmp_path / "a")  # resume=auto: 2 more generator steps
    straight = fit(config(tmp_path), tmp_path / "b")
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == 5
    for k in b["model"]:  # generator, discriminator, both flows (spectral-norm vectors and BN statistics too)
        assert torch.equal(a["model"][k], b["model"][k]), k
    for key in ("optimizer", "optimizer_d"):  # both optimisers' moments
        sa, sb = a[key]["state"], b[key]["state"]
        assert sa.keys() == sb.keys() and all(torch.equal(sa[i]["exp_avg"], sb[i]["exp_avg"]) for i in sa)
    assert resumed["l1_consistent"] == straight["l1_consistent"] and resumed["illum_tau"] == straight["illum_tau"]
    steps = [ln.split(",")[0] for ln in (tmp_path / "a" / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == ["1", "2", "3", "4", "5"]
    assert (tmp_path / "a" / "samples.png").is_file() and json.loads((tmp_path / "a" / "final_metrics.json").read_text())


def test_warmup_switches_the_guided_filter_on_after_the_given_images(tmp_path):
    fit(config(tmp_path, "loss.warmup_images=8", "gen.steps=4"), tmp_path / "w")
    rows = [ln.split(",") for ln in (tmp_path / "w" / "metrics.csv").read_text().splitlines()]
    col = rows[0].index("adapt_active")
    gen = [r for r in rows[1:] if r[1] == "gen"]
    assert [float(r[col]) for r in gen] == [0.0, 0.0, 1.0, 1.0]  # 0 and 4 images seen < 8 <= 8, 12


def test_pretrained_flows_skip_stage_one_and_must_fit(tmp_path):
    fit(config(tmp_path, "gen.steps=0"), tmp_path / "f")
    flows = tmp_path / "f" / "flows.pt"
    out = fit(config(tmp_path, f"flow.pretrained={flows}", "gen.steps=1", "method=no_flip"), tmp_path / "g")
    assert out["step"] == 1
    a = torch.load(flows, weights_only=True)["flows"]
    b = torch.load(tmp_path / "g" / "last.pt", weights_only=True)["model"]
    assert not torch.equal(a["flow_f.conv0.0.weight"], b["flow_f.conv0.0.weight"])  # fine-tuned at flow_lr ...
    assert torch.allclose(a["flow_f.conv0.0.weight"], b["flow_f.conv0.0.weight"], atol=1e-3)  # ... from these flows
    bad = tmp_path / "bad.pt"
    torch.save({"flows": {"flow_f.conv0.0.weight": torch.zeros(1)}}, bad)
    with pytest.raises(CheckpointError, match="does not fit"):
        fit(config(tmp_path, f"flow.pretrained={bad}"), tmp_path / "h")


def test_resume_refuses_a_checkpoint_of_another_skip_mode(tmp_path):
    fit(config(tmp_path, "max_steps=1"), tmp_path / "r")
    with pytest.raises(CheckpointError, match="skip"):
        fit(config(tmp_path, "max_steps=2", "method=unet"), tmp_path / "r")


@pytest.mark.parametrize("override,match", [("method.skip=wamm", "method.skip"), ("gen.steps=-1", "gen.steps"),
                                            ("data.image_size=48", "power of two"), ("data.gt_light=sun", "gt_light"),
                                            ("loss.gf_radius_frac=2", "gf_radius_frac"),
                                            ("flow.loss.sampler=nearest", "sampler"),
                                            ("features.identity_weights=/nope.pth", "identity_weights")])
def test_bad_config_is_a_one_line_config_error_before_any_work(tmp_path, override, match):
    with pytest.raises(ConfigError, match=match):
        fit(config(tmp_path, override), tmp_path / "e")
    assert not (tmp_path / "e").exists()


def test_every_experiment_config_composes():
    names = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
    assert names == ["multipie_lfw", "multipie_setting2"]
    for name in names:
        cfg = compose("ffwm.conf", [f"experiment={name}"])
        assert cfg.data.name == "multipie" and cfg.data.image_size == 128 and cfg.model.ngf == 64
        assert cfg.loss.warmup_images == 20000 and cfg.gen.lr == 4e-4 and cfg.gen.flow_lr == 5e-5
        assert len(cfg.loss.parts) == len(cfg.loss.facial_weights) == 4
    assert compose("ffwm.conf", ["experiment=multipie_lfw"]).eval.lfw_root.endswith("lfw")
    for m in ("ffwm", "no_ipm", "no_wam", "unet", "no_flip", "no_att"):
        assert compose("ffwm.conf", [f"method={m}"]).method.name == m


def test_official_loss_weights_in_the_default_config():
    cfg = compose("ffwm.conf")
    w = cfg.loss
    assert (w.l1, w.perceptual, w.facial, w.identity_raw, w.identity_gf, w.illumination, w.adversarial) == \
        (5.0, 1.0, 1.0, 0.5, 1.0, 15.0, 0.1)
    assert list(w.scale_weights) == [1.5, 1.0, 1.0] and list(w.facial_weights) == [2.0, 2.0, 1.0, 1.0]
    f = cfg.flow.loss
    assert (f.correctness, f.affine, f.landmark) == (20.0, 0.01, 1.0) and list(f.landmark_scale_weights) == [1500, 1000, 1000]
    assert cfg.method.skip == "wam" and cfg.method.preserve and cfg.method.adapt and cfg.data.image_size == 64


def test_two_process_torchrun_fit_on_cpu(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "REPRO_CACHE": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "ffwm.train",
           *TINY, "max_steps=3", f"hydra.run.dir={tmp_path / 'run'}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "run" / "final_metrics.json").read_text())
    log = (tmp_path / "run" / "train.log").read_text()
    assert result["step"] == 3 and "world size 2" in log
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert ckpt["world_size"] == 2 and len(ckpt["rng_per_rank"]) == 2


@pytest.mark.slow
def test_reproduce_quick_writes_the_report(tmp_path, monkeypatch):
    from ffwm.reproduce import main

    monkeypatch.setenv("REPRO_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("REPRO_CACHE", str(tmp_path / "cache"))
    main(["--quick", "--seeds", "3", "--workers", "1", "--out", str(tmp_path / "out")])
    md = (tmp_path / "out" / "results.md").read_text()
    assert "Mechanism check (a)" in md and "synthetic" in md and "--quick" in md
    assert (tmp_path / "out" / "samples.png").is_file() and (tmp_path / "out" / "provenance.json").is_file()
