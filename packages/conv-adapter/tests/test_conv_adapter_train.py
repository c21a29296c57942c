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
        "data.num_classes=4", "batch_size=8", "eval_batch_size=16", "epochs=2", "eval_every=1", "log_interval=1000"]


def config(*overrides, tiny=True):
    with initialize_config_module(config_module="conv_adapter.conf", version_base="1.3"):
        return compose(config_name="train", overrides=[*(TINY if tiny else []), *overrides])


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


def _torchrun(run_dir, *overrides):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
           "conv_adapter.train", *TINY, *overrides, f"hydra.run.dir={run_dir}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return json.loads((run_dir / "final_metrics.json").read_text())


def test_two_process_torchrun_fit_then_resume_equals_an_uninterrupted_run(tmp_path):
    """2 ranks x 8 images per step; stop after 2 steps, resume to 4 (crossing the end of epoch 1: 3 steps per
    epoch with 24 images), and compare with 4 uninterrupted steps: same step, weights and test accuracy."""
    first = _torchrun(tmp_path / "a", "max_steps=2")
    assert first["step"] == 2 and "world size 2" in (tmp_path / "a" / "train.log").read_text()
    resumed = _torchrun(tmp_path / "a", "max_steps=4")
    assert "resumed from" in (tmp_path / "a" / "train.log").read_text()
    straight = _torchrun(tmp_path / "b", "max_steps=4")
    assert resumed["step"] == straight["step"] == 4 and resumed["test_acc1"] == straight["test_acc1"]
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("method,backbone_changes", [("conv_adapter", False), ("bitfit", False), ("full", True)])
def test_fit_trains_only_the_methods_parameters(tmp_path, method, backbone_changes):
    """Wiring of fit(): the pretrained file is loaded, the optimiser holds exactly the method's parameters, and
    frozen tensors (BatchNorm statistics included, bn_mode=eval) leave fit() bit-identical."""
    torch.manual_seed(3)
    from conv_adapter.models import create_backbone

    source = create_backbone("resnet_tiny").state_dict()
    torch.save(source, tmp_path / "w.pth")
    fit(config("max_steps=2", f"method={method}", f"weights={tmp_path / 'w.pth'}", "bn_mode=eval"), tmp_path / "run")
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["model"]
    backbone = [k for k in source if not k.startswith("fc.")]
    frozen = [k for k in backbone if not (method == "bitfit" and k.endswith(".bias"))]
    same = [k for k in frozen if torch.equal(state[k], source[k])]
    if backbone_changes:
        assert len(same) < len(frozen) // 2
    else:
        assert same == frozen
    if method == "conv_adapter":
        adapter = [k for k in state if "conv_adapter." in k]
        assert adapter and all(state[k].dtype == torch.float32 for k in adapter)


BAD = [
    ("method.reduction=3", "method.reduction|divide"),          # gamma must divide every adapted channel count
    ("method.target_modules=nothing", "matched no module"),
    ("method.scheme=convpass", "method.scheme"),
    ("method.init=kaiming", "method.init"),
    ("method.placement=official", "Bottleneck"),                  # resnet_tiny has BasicBlocks
    ("method.pool_norm=yes", "method.pool_norm"),
    ("model.head_dropout=1.0", "model.head_dropout"),
    ("data.domain=shapes-z", "data.domain"),
    ("data.shots=60", "data.shots"),
    ("data.n_val=0", "data.n_val"),
    ("optim.min_lr=1.0", "optim.min_lr"),
    ("optim.warmup_epochs=5", "optim.warmup_epochs"),
    ("optim.momentum=1.5", "optim.momentum"),
    ("label_smoothing=1.0", "label_smoothing"),
    ("bn_mode=frozen", "bn_mode"),
    ("weights=synthetic", None),                                  # valid
]


@pytest.mark.parametrize("override,match", BAD)
def test_validate_names_every_bad_value_before_any_data(override, match):
    from shared.errors import ConfigError

    from conv_adapter.train import validate

    cfg = config(override)
    if match is None:
        validate(cfg)
        return
    with pytest.raises(ConfigError, match=match):
        validate(cfg)


def test_validate_checks_the_recipe_of_each_dataset():
    from shared.errors import ConfigError

    from conv_adapter.train import validate

    for overrides, match in [(["experiment=vtab1k_resnet50_conv_adapter", "data.task=cifar10"], "data.task"),
                             (["experiment=fgvc_resnet50_conv_adapter", "data.task=birds"], "data.task"),
                             (["experiment=fewshot_resnet50_conv_adapter", "data.shots=3"], "data.shots"),
                             (["experiment=vtab1k_convnext_tiny_conv_adapter", "method.pool_norm=true"], "pool_norm"),
                             (["model.pretrain.epochs=0"], "model.pretrain.epochs")]:
        with pytest.raises(ConfigError, match=match):
            validate(config(*overrides, tiny=False))
    validate(config("experiment=vtab1k_resnet50_conv_adapter", tiny=False))  # the official recipe itself is valid


def test_resnet50_recipes_use_the_official_placement_and_pool_norm():
    for name in ("vtab1k_resnet50_conv_adapter", "fgvc_resnet50_conv_adapter", "fewshot_resnet50_conv_adapter"):
        cfg = config(f"experiment={name}", tiny=False)
        assert cfg.method.placement == "official" and cfg.method.pool_norm is True, name
        assert cfg.method.reduction == 8


@pytest.mark.slow
def test_reproduce_quick_writes_the_report(tmp_path, monkeypatch):
    from conv_adapter.reproduce import main

    monkeypatch.setenv("REPRO_RUNS", str(tmp_path / "runs"))
    main(["--quick", "--seeds", "3", "--epochs", "1", "--lrs", "0.001", "--shots", "1", "--fewshot-steps", "1",
          "--workers", "1", "--out", str(tmp_path / "out")])
    md = (tmp_path / "out" / "results.md").read_text()
    assert md.index("Mechanism check") < md.index("Paper setting") and "synthetic" in md
    assert "| 8 | 199,192 | 0.85 | 408,188 | 1.72 |" in md
    for f in ("results.json", "provenance.json", "results.csv", "methods.png", "fewshot.png"):
        assert (tmp_path / "out" / f).is_file(), f


def test_cosine_schedule_values():
    """Per-step linear warm-up, then cosine from the base lr to min_lr (the official trainer's schedule)."""
    import math

    from conv_adapter.train import cosine_schedule

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = cosine_schedule(opt, total_steps=12, warmup_steps=2, min_lr=0.001)
    lrs = []
    for _ in range(13):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.05) and lrs[1] == pytest.approx(0.1)  # warm-up (step + 1) / 2
    assert lrs[2] == pytest.approx(0.1) and lrs[12] == pytest.approx(0.001)
    assert lrs[7] == pytest.approx(0.001 + (0.1 - 0.001) * 0.5 * (1 + math.cos(math.pi * 5 / 10)))
