"""fit(): the wiring of every method's loss (replayed by hand), 2 steps + resume = an uninterrupted run,
every method and experiment runs / composes, bad input fails early, and a 2-process torchrun fit."""

import copy
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_module

from metamixup.data import DataBundle, Split
from metamixup.mixing import mix, one_hot, pair_index, sample_lam, soft_cross_entropy
from metamixup.models import MixAt, create_model
from metamixup.ssl import consistency_loss, refine_pseudo_labels, sigmoid_rampup
from metamixup.train import Batch, _step_rngs, fit, meta_split, ssl_loss, supervised_loss

RINGS = ["device=cpu", "threads=1", "data=rings", "model=mlp", "model.kwargs.hidden=[16,16]", "data.n_train=96",
         "data.n_test=40", "data.meta_size=24", "batch_size=16", "eval_batch_size=40", "epochs=2", "log_interval=1000"]
IMAGES = ["device=cpu", "threads=1", "data.n_train=48", "data.n_test=20", "data.meta_size=10", "data.image_size=8",
          "data.num_classes=4", "model.kwargs.widths=[4,8,8]", "batch_size=8", "eval_batch_size=20", "epochs=2",
          "log_interval=1000", "ssl.unlabeled_batch_size=8"]


def config(*overrides, base=RINGS):
    with initialize_config_module(config_module="metamixup.conf", version_base="1.3"):
        return compose(config_name="train", overrides=[*base, *overrides])


def _batch(seed=0, n=6, c=3):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 2, generator=g), torch.randint(0, c, (n,), generator=g)
    rng, gen = _step_rngs(seed, 5, 0)
    return Batch(x, y, torch.arange(n), rng, gen)


def _model(c=3, in_features=2):
    torch.manual_seed(0)
    return create_model("mlp", c, in_features=in_features, hidden=(8,)).double().float()


# ------------------------------------------------------------------------------ loss wiring, replayed


def test_mixup_loss_replays_with_the_drawn_pairs_and_ratio():
    cfg = config("method=mixup", "method.alpha=0.4")
    model, b = _model(), _batch()
    loss, lam = supervised_loss(cfg.method, model, b, 3, None)
    ref = _batch()  # the same step: the same draws, in the same order
    index = pair_index(6, "randperm", ref.gen)
    lam_ref = sample_lam(0.4, ref.rng)
    expected = soft_cross_entropy(model(mix(ref.x, lam_ref, index)), mix(one_hot(ref.y, 3), lam_ref, index))
    assert float(lam) == pytest.approx(lam_ref) and 0 < lam_ref < 1
    torch.testing.assert_close(loss, expected)


def test_manifold_mixup_loss_replays_with_the_drawn_layer():
    cfg = config("method=manifold_mixup", "method.layers=[1]", "method.alpha=1.0")
    model, b = _model(), _batch(1)
    loss, lam = supervised_loss(cfg.method, model, b, 3, None)
    ref = _batch(1)
    index = pair_index(6, "randperm", ref.gen)
    layer = int(ref.rng.choice([1]))
    lam_ref = sample_lam(1.0, ref.rng)
    h = mix(model.stages[0](ref.x), lam_ref, index)
    expected = soft_cross_entropy(model.head(model.stages[1](h) if model.num_stages > 1 else h),
                                  mix(one_hot(ref.y, 3), lam_ref, index))
    assert layer == 1
    torch.testing.assert_close(loss, expected)


def test_metamixup_trains_on_the_ratio_returned_by_the_meta_step():
    cfg = config("method=metamixup")
    model, b = _model(), _batch(2)
    seen = {}

    def lam_fn(train_loss, batch):
        seen["at_half"] = train_loss(lambda x, mix=None: model(x, mix=mix), torch.tensor(0.5))
        return torch.tensor(0.83)

    loss, lam = supervised_loss(cfg.method, model, b, 3, lam_fn)
    ref = _batch(2)
    index = pair_index(6, "randperm", ref.gen)
    ys = one_hot(ref.y, 3)
    assert float(lam) == pytest.approx(0.83)
    torch.testing.assert_close(loss, soft_cross_entropy(model(mix(ref.x, 0.83, index)), mix(ys, 0.83, index)))
    # the closure handed to the meta step is the same mixed loss as a function of lam (same pairs)
    torch.testing.assert_close(seen["at_half"], soft_cross_entropy(model(mix(ref.x, 0.5, index)), mix(ys, 0.5, index)))


@pytest.mark.parametrize("impl", ["native", "torchvision"])
def test_cutmix_and_torchvision_mixup_losses_replay(impl):
    from metamixup.mixing import cutmix, torchvision_batch_mix

    g = torch.Generator().manual_seed(9)
    x, y = torch.rand(6, 3, 8, 8, generator=g), torch.tensor([0, 1, 2, 0, 1, 2])
    torch.manual_seed(0)
    model = create_model("small_cnn", 3, widths=(4, 4, 4))
    cfg = config("method=cutmix", f"method.impl={impl}", "method.prob=1.0", base=IMAGES)
    rng, gen = _step_rngs(1, 3, 0)
    loss, lam = supervised_loss(cfg.method, model, Batch(x, y, torch.arange(6), rng, gen), 3, None)
    rng, gen = _step_rngs(1, 3, 0)
    rng.random()  # the prob draw
    if impl == "torchvision":
        xm, ym = torchvision_batch_mix("cutmix", x, y, 1.0, 3, int(rng.integers(2**62)))
    else:
        index = pair_index(6, "randperm", gen)
        xm, ym, _ = cutmix(x, one_hot(y, 3), sample_lam(1.0, rng), index, rng)
    assert not torch.equal(xm, x)
    torch.testing.assert_close(loss, soft_cross_entropy(model(xm), ym))
    cfg = config("method=mixup", "method.impl=torchvision", base=IMAGES)
    rng, gen = _step_rngs(2, 3, 0)
    loss, lam = supervised_loss(cfg.method, model, Batch(x, y, torch.arange(6), rng, gen), 3, None)
    rng, gen = _step_rngs(2, 3, 0)
    xm, ym = torchvision_batch_mix("mixup", x, y, 1.0, 3, int(rng.integers(2**62)))
    torch.testing.assert_close(loss, soft_cross_entropy(model(xm), ym))
    assert float(lam) == pytest.approx(float(ym[0, y[0]]))  # y[0] != y[-1]: the ratio read off the labels


def test_learning_rate_schedules():
    from metamixup.train import build_scheduler

    def lrs(*ov):
        cfg = config("epochs=4", "optim.lr=1.0", *ov)
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        sch = build_scheduler(cfg, opt, steps_per_epoch=10)
        out = []
        for _ in range(40):
            out.append(sch.get_last_lr()[0])
            opt.step()
            sch.step()
        return out

    cos = lrs("optim.schedule=cosine")
    assert cos[0] == 1.0 and cos[20] == pytest.approx(0.5) and cos[39] == pytest.approx(0.5 * (1 + math.cos(math.pi * 39 / 40)))
    step = lrs("optim.schedule=multistep", "optim.milestones=[1,3]", "optim.gamma=0.1")
    assert step[9] == 1.0 and step[10] == pytest.approx(0.1) and step[30] == pytest.approx(0.01)
    warm = lrs("optim.schedule=constant", "optim.warmup_epochs=1")
    assert warm[0] == pytest.approx(0.1) and warm[9] == 1.0 and warm[39] == 1.0


def test_meta_batches_come_from_the_held_out_split():
    tr, me = Split(torch.zeros(5, 2), torch.zeros(5, dtype=torch.long)), Split(torch.ones(3, 2), torch.ones(3, dtype=torch.long))
    d = DataBundle(tr, tr, 2, "vector", meta=me)
    assert meta_split(d, config("method=metamixup").method) is me
    assert meta_split(d, config("method=metamixup", "method.meta_source=train").method) is tr
    assert meta_split(d, config("method=metamixup_ssl").method) is tr  # SSL: the labelled set


def _ssl_bundle(n_lab=6, n_unl=10, c=3):
    g = torch.Generator().manual_seed(7)
    tr = Split(torch.randn(n_lab, 2, generator=g), torch.arange(n_lab) % c, torch.arange(n_lab))
    un = Split(torch.randn(n_unl, 2, generator=g), torch.arange(n_unl) % c, torch.arange(n_unl) + n_lab)
    return DataBundle(tr, tr, c, "vector", unlabeled=un)


def test_pseudo_label_loss_uses_confident_argmax_of_the_unlabelled_batch():
    cfg = config("method=pseudo_label", "method.threshold=0.4", "data.num_labeled=6", "ssl.unlabeled_batch_size=8",
                 "ssl.rampup_steps=0", "method.weight=2.0")
    data, model = _ssl_bundle(), _model()
    b = _batch(5)
    b = Batch(data.train.x, data.train.y, data.train.ids, b.rng, b.gen)
    loss, lam = ssl_loss(cfg, model, None, data, b, 3, step=1, rank=0, world=1, device="cpu", augment=None, lam_fn=None)
    from metamixup.data import stream_indices

    xu = data.unlabeled.x[stream_indices(10, 8, 1, cfg.seed * 7 + 2)]
    logits = model(torch.cat([data.train.x, xu]))
    lu = logits[6:]
    conf, hard = torch.softmax(lu, -1).max(-1)
    mask = (conf >= 0.4).float()
    assert 0 < mask.sum() < 8  # the threshold matters in this case
    expected = F.cross_entropy(logits[:6], data.train.y) + 2.0 * (F.cross_entropy(lu, hard, reduction="none") * mask).mean()
    torch.testing.assert_close(loss, expected)
    assert lam is None


def test_mixup_at_a_fixed_ratio():
    cfg = config("method=mixup", "method.fixed_lam=0.8")
    model, b = _model(), _batch(6)
    loss, lam = supervised_loss(cfg.method, model, b, 3, None)
    ref = _batch(6)
    index = pair_index(6, "randperm", ref.gen)
    assert float(lam) == pytest.approx(0.8)
    torch.testing.assert_close(loss, soft_cross_entropy(model(mix(ref.x, 0.8, index)), mix(one_hot(ref.y, 3), 0.8, index)))


def test_ict_loss_replays_mean_teacher_targets_mixed_like_the_inputs():
    cfg = config("method=ict", "data.num_labeled=6", "ssl.unlabeled_batch_size=4", "ssl.rampup_steps=10")
    data, model = _ssl_bundle(), _model()
    teacher = copy.deepcopy(model)
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(0.3)  # a teacher that differs from the student
    b = _batch(3)
    b = Batch(data.train.x, data.train.y, data.train.ids, b.rng, b.gen)
    loss, lam = ssl_loss(cfg, model, teacher, data, b, 3, step=5, rank=0, world=1, device="cpu", augment=None, lam_fn=None)
    from metamixup.data import stream_indices

    ref = _batch(3)
    xu = data.unlabeled.x[stream_indices(10, 4, 5, cfg.seed * 7 + 2)]
    pu = torch.softmax(teacher(xu), -1)
    index = pair_index(4, "randperm", ref.gen)
    lam_ref = sample_lam(1.0, ref.rng)
    w = 100.0 * sigmoid_rampup(5, 10)
    expected = F.cross_entropy(model(data.train.x), data.train.y) + w * consistency_loss(
        model(mix(xu, lam_ref, index)), mix(pu, lam_ref, index), "mse")
    torch.testing.assert_close(loss, expected)
    assert float(lam) == pytest.approx(lam_ref)


def test_metamixup_ssl_loss_mixes_labelled_and_pseudo_labelled_images():
    cfg = config("method=metamixup_ssl", "data.num_labeled=6", "ssl.unlabeled_batch_size=4", "ssl.rampup_steps=0",
                 "ssl.views=1", "ssl.threshold=0.5", "ssl.temperature=0.5")
    data, model = _ssl_bundle(), _model()
    teacher = copy.deepcopy(model)
    with torch.no_grad():
        for p in teacher.parameters():
            p.mul_(3.0)  # confident and different from the student
    b = _batch(4)
    b = Batch(data.train.x, data.train.y, data.train.ids, b.rng, b.gen)
    got = {}

    def lam_fn(train_loss, batch, ids):
        got["ids"] = ids
        return torch.tensor(0.7)

    loss, lam = ssl_loss(cfg, model, teacher, data, b, 3, step=2, rank=0, world=1, device="cpu", augment=None, lam_fn=lam_fn)
    from metamixup.data import stream_indices

    ref = _batch(4)
    uidx = stream_indices(10, 4, 2, cfg.seed * 7 + 2)
    xu = data.unlabeled.x[uidx]
    tu, mu = refine_pseudo_labels(torch.softmax(teacher(xu), -1)[None], 0.5, 0.5)
    assert 0 < mu.sum() < 4  # the threshold drops some
    x_all = torch.cat([data.train.x, xu])
    t_all = torch.cat([one_hot(data.train.y, 3), tu])
    index = pair_index(10, "randperm", ref.gen)
    expected = F.cross_entropy(model(data.train.x), data.train.y) + consistency_loss(
        model(mix(x_all, 0.7, index)), mix(t_all, 0.7, index), "ce")
    torch.testing.assert_close(loss, expected)
    assert got["ids"].tolist() == list(range(6)) + (6 + uidx).tolist()  # per-example ids: labelled, then offset unlabelled


# ------------------------------------------------------------------------------ fit / resume


def test_two_steps_then_resume_continues_like_an_uninterrupted_run(tmp_path):
    first = fit(config("max_steps=2", "method.meta.meta_lr=0.2"), tmp_path / "a")
    assert first["step"] == 2 and (tmp_path / "a" / "last.pt").is_file()
    resumed = fit(config("max_steps=7", "method.meta.meta_lr=0.2"), tmp_path / "a")  # crosses the epoch end (5 steps)
    straight = fit(config("max_steps=7", "method.meta.meta_lr=0.2"), tmp_path / "b")
    assert resumed["step"] == straight["step"] == 7
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    for k in b["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert torch.equal(a["metamixup"]["phi"], b["metamixup"]["phi"]) and resumed["final_lam"] == straight["final_lam"]
    assert resumed["final_lam"] != pytest.approx(0.75)
    lam_a = (tmp_path / "a" / "lambda.csv").read_text().splitlines()
    assert lam_a == (tmp_path / "b" / "lambda.csv").read_text().splitlines() and len(lam_a) == 8
    assert (tmp_path / "a" / "lambda_trajectory.png").is_file()
    steps = [line.split(",")[1] for line in (tmp_path / "a" / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == ["2", "5", "7"]


def test_ssl_resume_restores_the_teacher(tmp_path):
    ov = ["method=ict", "data.num_labeled=24", "ssl.unlabeled_batch_size=8"]
    fit(config(*ov, "max_steps=2"), tmp_path / "a")
    fit(config(*ov, "max_steps=3"), tmp_path / "a")
    fit(config(*ov, "max_steps=3"), tmp_path / "b")
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    for k in b["teacher"]:
        assert torch.equal(a["teacher"][k], b["teacher"][k]), k
    assert (tmp_path / "a" / "labeled_idx.json").is_file()


def test_the_mean_teacher_is_updated_every_step(tmp_path):
    fit(config("method=ict", "data.num_labeled=24", "ssl.unlabeled_batch_size=8", "ssl.ema_decay=0.0", "max_steps=2"),
        tmp_path)
    ck = torch.load(tmp_path / "last.pt", weights_only=True)
    for k, v in ck["model"].items():  # decay 0: the teacher is a copy of the student after every step
        assert torch.equal(ck["teacher"][k], v), k


def test_resume_refuses_a_checkpoint_of_another_method(tmp_path):
    fit(config("max_steps=1"), tmp_path)
    with pytest.raises(Exception, match="method"):
        fit(config("max_steps=2", "method=erm"), tmp_path)


@pytest.mark.parametrize("overrides", [
    ["method=erm"], ["method=mixup", "method.impl=torchvision"], ["method=cutmix"], ["method=cutmix", "method.impl=native"],
    ["method=manifold_mixup"], ["method=metamixup", "method.meta.hypergrad=finite_difference", "method.meta.granularity=sample",
                                "method.meta.init=beta", "method.meta.meta_optim=sgd"],
    ["method=metamixup", "method.meta.granularity=sample", "method.meta.meta_optim=sgd", "method.mix_layer=1"],
    ["method=pseudo_label", "data.num_labeled=12"], ["method=pl_mixup", "data.num_labeled=12", "ssl.teacher=model"],
    ["method=metamixup_ssl", "data.num_labeled=12", "method.meta.virtual_params=head"]])
def test_every_method_runs_on_images(tmp_path, overrides):
    r = fit(config(*overrides, "max_steps=2", base=IMAGES), tmp_path)
    assert r["step"] == 2 and 0 <= r["test_acc1"] <= 100
    lam_rows = (tmp_path / "lambda.csv").read_text().splitlines()[1:] if (tmp_path / "lambda.csv").exists() else []
    if overrides[0] not in ("method=erm", "method=pseudo_label"):
        assert len(lam_rows) >= 1


@pytest.mark.parametrize("overrides,match", [
    (["method.name=metamixupp"], "method.name"), (["model.name=resnet5"], "model.name"),
    (["method=mixup", "method.alpha=-1"], "method.alpha"), (["method=ict"], "num_labeled"),
    (["method.meta.hypergrad=second_order"], "hypergrad"), (["data.meta_size=0"], "meta_size"),
    (["optim.lr=0"], "optim.lr"), (["method.meta.lam_min=0.9", "method.meta.lam_max=0.8"], "lam_min")])
def test_bad_config_fails_before_any_work(tmp_path, overrides, match):
    with pytest.raises(ValueError, match=match):
        fit(config(*overrides), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_every_experiment_config_composes():
    from pathlib import Path

    import metamixup.train

    conf = Path(metamixup.train.__file__).parent / "conf" / "experiment"
    names = sorted(p.stem for p in conf.glob("*.yaml"))
    assert {"cifar10_preact_resnet18", "cifar100_preact_resnet18", "svhn_preact_resnet18", "cifar10_wrn28_10",
            "ssl_cifar10_4000", "ssl_svhn_1000"} <= set(names)
    for n in names:
        cfg = config(f"experiment={n}", base=[])
        assert cfg.package == "metamixup" and cfg.name != "default", n
        from metamixup.train import validate
        validate(cfg)


def test_two_process_torchrun_fit_on_cpu(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
           "metamixup.train", *RINGS, "max_steps=3", f"hydra.run.dir={tmp_path}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "final_metrics.json").read_text())
    assert result["step"] == 3 and "world size 2" in (tmp_path / "train.log").read_text()
    assert result["final_lam"] != pytest.approx(0.75)  # the carried ratio moved (all-reduced hypergradient)
    assert len(result["final_lam_ranks"]) == 2 and len(set(result["final_lam_ranks"])) == 1  # the same on both ranks
