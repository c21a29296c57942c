"""fit(): search + training, 2-step fit and resume (exactly like an uninterrupted run), clear errors,
the policy choices, a 2-process torchrun run."""

import json
import os
import subprocess
import sys

import pytest
import torch
from hydra import compose, initialize_config_module

from dada.policy import Policy
from dada.train import fit

TINY = ["device=cpu", "threads=1", "data.n_search=64", "data.n_train=48", "data.n_test=32", "data.image_size=16",
        "data.num_classes=4", "search.batch_size=16", "search.epochs=2", "train.batch_size=16", "train.epochs=1",
        "train.eval_batch_size=64", "log_interval=1000", "search.top_k=5"]


def config(*overrides):
    with initialize_config_module(config_module="dada.conf", version_base="1.3"):
        return compose(config_name="train", overrides=[*TINY, *overrides])


def _load(path):
    return torch.load(path, weights_only=True)


def test_two_search_steps_then_resume_continues_like_an_uninterrupted_run(tmp_path):
    first = fit(config("max_steps=2"), tmp_path / "a")
    assert first["phase"] == "search" and first["search_steps"] == 2
    ck = _load(tmp_path / "a" / "last.pt")
    assert ck["phase"] == "search" and ck["step"] == 2
    resumed = fit(config("max_steps=5"), tmp_path / "a")  # crosses the search epoch end (2 steps/epoch)
    straight = fit(config("max_steps=5"), tmp_path / "b")
    a, b = _load(tmp_path / "a" / "last.pt"), _load(tmp_path / "b" / "last.pt")
    assert a["step"] == b["step"] == 1 and a["phase"] == b["phase"] == "train"  # 4 search steps, then 1 training step
    assert a["search_steps"] == b["search_steps"] == 4
    assert resumed["search_steps"] == straight["search_steps"] == 4
    for k in b["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    pa, pb = Policy.load(tmp_path / "a" / "policy.json"), Policy.load(tmp_path / "b" / "policy.json")
    assert pa == pb and len(pa) == 5
    assert resumed["test_acc1"] == straight["test_acc1"]


def test_search_checkpoint_holds_the_policy_state(tmp_path):
    fit(config("max_steps=3"), tmp_path)
    ck = _load(tmp_path / "last.pt")
    assert set(ck["aug"]) >= {"weights", "probabilities", "magnitudes", "control.h1.weight"}
    assert ck["aug"]["weights"].shape == (105,) and not torch.all(ck["aug"]["weights"] == 1e-3)  # it was updated
    assert len(ck["subpolicies"]) == 105 and ck["arch_optimizer"]["state"]


def test_full_run_writes_policy_and_metrics(tmp_path):
    result = fit(config(), tmp_path)
    assert result["search_steps"] == 4 and result["train_steps"] == 3 and 0 <= result["test_acc1"] <= 100
    assert (tmp_path / "policy.json").is_file() and json.loads((tmp_path / "final_metrics.json").read_text())
    policy = Policy.load(tmp_path / "policy.json")
    assert all(0 <= p <= 1 and 0 <= m <= 1 for s in policy.subpolicies for _, p, m in s)


@pytest.mark.parametrize("policy", ["none", "random", "dada_cifar10", "trivialaugment", "autoaugment_cifar10"])
def test_baseline_policies_train_without_search(tmp_path, policy):
    result = fit(config("search.enabled=false", f"policy={policy}", "max_steps=1"), tmp_path)
    assert result["train_steps"] == 1 and result["policy"] == policy


@pytest.mark.parametrize("override,match", [
    ("policy=dada_cifar11", "policy='dada_cifar11'"),
    ("model.name=wrn_40_3", "model.name='wrn_40_3'"),
    ("search.estimator=rebar", "search.estimator='rebar'"),
    ("search.epochs=-1", "search.epochs=-1"),
    ("search.tau=0", "search.tau=0"),
    ("search.top_k=106", "search.top_k=106"),
])
def test_bad_config_fails_early_with_one_clear_message(tmp_path, override, match):
    with pytest.raises(ValueError, match=match.replace("[", r"\[")):
        fit(config(override), tmp_path)
    assert not (tmp_path / "metrics.csv").exists()


def test_searched_policy_without_a_search_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="policy=searched"):
        fit(config("search.enabled=false", "policy=searched"), tmp_path)


def test_two_process_torchrun_search_and_training_on_cpu(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "dada.train",
           *TINY, "max_steps=3", f"hydra.run.dir={tmp_path}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "final_metrics.json").read_text())
    assert result["search_steps"] == 2 and result["train_steps"] == 1  # 64/2 ranks/16 = 1 step per search epoch
    assert "world size 2" in (tmp_path / "train.log").read_text()


def test_search_batch_applies_the_drawn_subpolicy_and_pattern_to_every_image():
    from dada.ops import OP_INDEX, apply_op
    from dada.policy import SUBPOLICIES
    from dada.search import AugmentParameters, draw_noise, relax
    from dada.train import search_augment

    aug = AugmentParameters()
    with torch.no_grad():
        aug.magnitudes.uniform_(0.0, 1.0)
    g = torch.Generator().manual_seed(0)
    for _ in range(200):  # a draw whose sub-policy is (Invert|Solarize|Posterize|Color ...) with both ops on
        rel = relax(aug.weights, aug.prob_logits(), draw_noise(105, 2, g), 0.5)
        if rel.b[rel.k].sum() == 2 and not set(SUBPOLICIES[rel.k]) & {"ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Cutout"}:
            break
    x = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    out = search_augment(x, rel, aug, list(SUBPOLICIES), torch.Generator().manual_seed(1))
    ref = x
    for j, op in enumerate(SUBPOLICIES[rel.k]):
        ref = apply_op(ref, op, aug.levels()[rel.k, j].detach().double().expand(6))
    assert torch.equal(out, ref) and not torch.equal(out, x)
    assert OP_INDEX  # (imported for clarity)


def test_training_uses_the_policy(tmp_path):
    inv = tmp_path / "invert.json"
    Policy(((("Invert", 1.0, 0.5), ("Invert", 0.0, 0.5)),)).save(inv)
    a = fit(config("search.enabled=false", f"policy={inv}", "max_steps=1", "train.cutout=0"), tmp_path / "a")
    b = fit(config("search.enabled=false", "policy=none", "max_steps=1", "train.cutout=0"), tmp_path / "b")
    wa, wb = _load(tmp_path / "a" / "last.pt")["model"], _load(tmp_path / "b" / "last.pt")["model"]
    assert not torch.equal(wa["features.0.weight"], wb["features.0.weight"])
    assert a["train_steps"] == b["train_steps"] == 1
