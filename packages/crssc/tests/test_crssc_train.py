"""fit(): every method, resume with the history restored, the two-step recipe, early errors, 2-process torchrun."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from PIL import Image

import crssc.train as train_mod
from crssc.train import fit

TINY = ["device=cpu", "data.num_classes=4", "data.open_classes=1", "data.n_train=48", "data.n_val=16",
        "data.n_test=16", "data.image_size=8", "model.widths=[4,8]", "batch_size=16", "eval_batch_size=32",
        "epochs=3", "log_interval_s=1000", "method.warmup=1", "method.memory_length=2", "threads=1"]


def config(*overrides, tiny=TINY):
    with initialize_config_module(config_module="crssc.conf", version_base="1.3"):
        return compose(config_name="train", overrides=[*tiny, *overrides])


def _ckpt(path: Path):
    return torch.load(path / "last.pt", weights_only=True)


def test_two_steps_then_resume_continues_exactly_with_the_history_restored(tmp_path):
    first = fit(config("max_steps=2"), tmp_path / "a")
    assert first["step"] == 2 and (tmp_path / "a" / "last.pt").is_file()
    fit(config("max_steps=5"), tmp_path / "a")  # resume=auto: mid epoch 2, the first epoch after the warm-up
    mid = _ckpt(tmp_path / "a")
    counts = mid["memories"][0]["count"]
    assert mid["step"] == 5 and counts.sum() == 5 * 16 and set(counts.tolist()) <= {1, 2}  # the history was saved
    resumed = fit(config("max_steps=8"), tmp_path / "a")  # resumes mid-epoch with the saved history
    straight = fit(config("max_steps=8"), tmp_path / "b")
    a, b = _ckpt(tmp_path / "a"), _ckpt(tmp_path / "b")
    assert a["step"] == b["step"] == 8 and a["epoch"] == b["epoch"] == 2
    for k in b["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for key in ("pred", "prob", "count"):
        assert torch.equal(a["memories"][0][key], b["memories"][0][key]), key
    assert resumed["test_acc_last"] == straight["test_acc_last"]
    steps = [line.split(",")[1] for line in (tmp_path / "a" / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == ["2", "3", "5", "6", "8"]  # stops and epoch ends, no duplicates
    final = json.loads((tmp_path / "b" / "final_metrics.json").read_text())
    assert final["selected_on"] == "val" and 1 <= final["selected_epoch"] <= 2


def test_the_loss_sees_only_earlier_epochs_predictions(tmp_path, monkeypatch):
    """At phase-epoch e every sample of a batch has exactly e records when its loss is computed: the memory is
    recorded during the warm-up and updated only after the loss."""
    seen = []
    real = train_mod.crssc_loss

    def spy(logits, labels, indices, memory, **kw):
        seen.append((kw["epoch"], memory.count[indices].clone()))
        return real(logits, labels, indices, memory, **kw)

    monkeypatch.setattr(train_mod, "crssc_loss", spy)
    result = fit(config("resume=null"), tmp_path)
    assert len(seen) == 9
    for epoch, counts in seen:
        assert (counts == epoch).all(), (epoch, counts)
    assert result["selection_last_epoch"]["clean_frac"] > 0


@pytest.mark.parametrize("method, extra", [
    ("ce", []), ("ls_ce", []), ("coteaching", ["method.num_gradual=2"]), ("cl_prune", ["method.prune_epoch=1"]),
    ("crssc_cot", []), ("crssc_cot", ["method.history=shared_official"]),
])
def test_every_method_trains_through_the_same_fit(tmp_path, method, extra):
    overrides = [f"method={method}", "epochs=2", "resume=null", *extra]
    if method in ("crssc_cot",):
        overrides += ["method.warmup=1", "method.memory_length=2"]
    tiny = [o for o in TINY if not o.startswith("method.")]
    result = fit(config(*overrides, tiny=tiny), tmp_path)
    assert result["method"] == method and result["step"] == 6 and 0 <= result["test_acc_last"] <= 100
    ckpt = _ckpt(tmp_path)
    if method == "crssc_cot":
        counts = [m["count"] for m in ckpt["memories"]]
        if extra:  # the released mix-up: one history receives both networks' predictions
            assert len(counts) == 1 and (counts[0] == 4).all()
        else:
            assert len(counts) == 2 and all((c == 2).all() for c in counts)
        assert result["selection_last_epoch"]["clean_frac"] > 0
    if method == "cl_prune":
        assert (~ckpt["cl_keep"]).sum() > 0  # some labels were flagged and pruned
        assert result["selection_last_epoch"]["dropped_frac"] > 0
    if method == "coteaching":  # epoch 2: forget rate = the data's noise share (ramp of 2 epochs)
        noise = result["data"]["noise_share"]
        assert result["selection_last_epoch"]["dropped_frac"] == pytest.approx(1 - int((1 - noise) * 16) / 16)


def test_two_step_recipe_freezes_the_backbone_then_starts_step_two_from_the_step_one_best(tmp_path):
    two = ["recipe=two_step", "step1.epochs=2", "step1.lr=0.5", "epochs=1", "resume=null"]
    fit(config(*two, "max_steps=3"), tmp_path / "one")
    fit(config(*two, "max_steps=6"), tmp_path / "two")
    one, two_ = _ckpt(tmp_path / "one"), _ckpt(tmp_path / "two")
    assert one["phase"] == two_["phase"] == 0
    params = [k for k in one["model"] if "running" not in k and "num_batches" not in k]
    for k in params:
        same = torch.equal(one["model"][k], two_["model"][k])
        assert same == (not k.startswith("fc.")), k  # only the head moves in step 1
    result = fit(config(*two), tmp_path / "full")
    assert result["step"] == 9 and result["epochs"] == 3
    best = torch.load(tmp_path / "full" / "step1_best.pt", weights_only=True)
    last = _ckpt(tmp_path / "full")
    assert last["phase"] == 1 and best["epoch"] in (1, 2)
    assert (last["memories"][0]["count"] == 1).all()  # step 2 starts a fresh history (the official trainer does)
    assert not torch.equal(best["model"]["features.0.weight"], last["model"]["features.0.weight"])  # step 2: all layers
    rows = (tmp_path / "full" / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[2] for r in rows[1:]] == ["head", "head", "all"]


@pytest.mark.parametrize("override, match", [
    ("method.name=crsc", "method.name"), ("optim.lr=-1", "optim.lr"), ("method.warmup=0", "method.warmup"),
    ("model.name=bcnn_vgg19", "model.name"), ("data.close_noise=1.5", "data.close_noise"),
    ("method.all_certain=never", "method.all_certain"),
])
def test_bad_config_fails_before_any_work(tmp_path, override, match):
    with pytest.raises(ValueError, match=match):
        fit(config(override), tmp_path)
    assert not (tmp_path / "config.yaml").exists()


def _fixture_webfg(root: Path) -> None:
    rng = np.random.default_rng(0)
    for c in range(1, 4):
        for k in range(4):
            path = root / "web-bird" / "train" / f"{c:03d}.Bird_{c}" / f"w{k}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (10, 12, 3), dtype=np.uint8)).save(path)
    base = root / "CUB_200_2011"
    (base / "images").mkdir(parents=True)
    lines = []
    for i in range(1, 7):
        rel = f"{(i - 1) % 3 + 1:03d}.Bird_{(i - 1) % 3 + 1}/t{i}.jpg"
        (base / "images" / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (12, 10, 3), dtype=np.uint8)).save(base / "images" / rel)
        lines.append((i, rel, (i - 1) % 3 + 1))
    (base / "images.txt").write_text("".join(f"{i} {rel}\n" for i, rel, _ in lines))
    (base / "image_class_labels.txt").write_text("".join(f"{i} {c}\n" for i, _, c in lines))
    (base / "train_test_split.txt").write_text("".join(f"{i} 0\n" for i, _, _ in lines))
    (base / "classes.txt").write_text("".join(f"{c} {c:03d}.Bird_{c}\n" for c in range(1, 4)))


def test_fit_reads_a_webfg_training_folder_and_the_cub_test_layout(tmp_path):
    _fixture_webfg(tmp_path)
    overrides = ["device=cpu", "data=webfg", f"data.root={tmp_path}/web-bird", f"data.test_root={tmp_path}",
                 "data.num_classes=3", "data.image_size=8", "data.val_fraction=0.25", "model=cnn_tiny",
                 "model.widths=[4]", "batch_size=4", "epochs=2", "method.warmup=1", "log_interval_s=1000",
                 "resume=null"]
    with initialize_config_module(config_module="crssc.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    result = fit(cfg, tmp_path / "run")
    assert result["step"] == 6 and result["data"] == {"n_train": 9, "n_val": 3, "n_test": 6}
    last = result["selection_last_epoch"]
    assert last["clean_frac"] > 0 and np.isnan(last["clean_precision"])  # no truth for web data: counts only


def test_two_process_torchrun_fit_on_cpu_shares_one_history(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    overrides = [o for o in TINY if not o.startswith(("batch_size", "epochs"))]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
           "crssc.train", *overrides, "batch_size=8", "epochs=2", f"hydra.run.dir={tmp_path}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "final_metrics.json").read_text())
    assert result["step"] == 6 and "world size 2" in (tmp_path / "train.log").read_text()
    counts = _ckpt(tmp_path)["memories"][0]["count"]
    assert (counts == 2).all()  # every sample recorded once per epoch, whichever rank saw it


@pytest.mark.parametrize("select_on, want_epoch, want_test", [("val", 2, 10.0), ("test", 1, 50.0)])
def test_model_selection_uses_the_noisy_validation_split_never_the_test_split(tmp_path, monkeypatch, select_on,
                                                                            want_epoch, want_test):
    """Scripted accuracies (val 10/30/20, test 50/10/40): selecting on val picks epoch 2 (test 10), whatever the
    test set says; the official protocol (select_on=test) picks epoch 1; the oracle is reported apart."""
    script = {"val": [10.0, 30.0, 20.0], "test": [50.0, 10.0, 40.0]}

    def fake_evaluate(model, dataset, ctx, batch_size, num_workers=0):
        split = "val" if dataset is data_seen["val"] else "test"
        return {"acc": script[split].pop(0), "loss": 0.0}

    data_seen = {}
    real_build = train_mod.build_data

    def spy_build(cfg, seed):
        data = real_build(cfg, seed=seed)
        data_seen["val"] = data.val
        return data

    monkeypatch.setattr(train_mod, "build_data", spy_build)
    monkeypatch.setattr(train_mod, "evaluate", fake_evaluate)
    result = fit(config("resume=null", f"select_on={select_on}"), tmp_path)
    assert (result["selected_epoch"], result["test_acc_selected"]) == (want_epoch, want_test)
    assert (result["oracle_epoch"], result["test_acc_oracle"]) == (1, 50.0)
    assert result["test_acc_last"] == 40.0
    assert torch.load(tmp_path / "best.pt", weights_only=True)["epoch"] == want_epoch
