"""Foundation round 2 in `shared`: one-line user errors, the runtime block, AMP, provenance, reports rendered
from data, the verdict rule, the benchmark helper, and the reliability fixes in the readers."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from shared.errors import (CheckpointError, ConfigError, DatasetFormatError, DatasetNotFoundError, UserError,
                           check_choice, check_range)


# ----------------------------------------------------------------------------------------------- errors


def test_user_error_hierarchy_keeps_builtin_bases():
    assert issubclass(ConfigError, ValueError) and issubclass(ConfigError, UserError)
    assert issubclass(DatasetFormatError, ValueError) and issubclass(DatasetFormatError, UserError)
    assert issubclass(DatasetNotFoundError, FileNotFoundError) and issubclass(DatasetNotFoundError, UserError)
    assert issubclass(CheckpointError, UserError)
    from shared.data.root import DatasetNotFoundError as FromRoot
    from shared.runtime import CheckpointError as FromRuntime

    assert FromRoot is DatasetNotFoundError and FromRuntime is CheckpointError


def test_check_choice_names_value_choices_and_closest():
    assert check_choice("strategy", "entropy", ["random", "entropy"]) == "entropy"
    with pytest.raises(ConfigError) as e:
        check_choice("strategy", "entropy_gradnrom", ["random", "entropy_gradnorm", "entropy"])
    msg = str(e.value)
    assert "strategy='entropy_gradnrom'" in msg and "did you mean 'entropy_gradnorm'" in msg
    assert msg.endswith("use one of: random, entropy_gradnorm, entropy") and "\n" not in msg


@pytest.mark.parametrize("value,kw,ok", [
    (1, dict(lo=1), True), (0, dict(lo=1), False), (0.0, dict(lo=0, lo_inclusive=False), False),
    (1.0, dict(lo=0, hi=1), True), (1.5, dict(lo=0, hi=1), False), (1.0, dict(hi=1, hi_inclusive=False), False),
    (2.5, dict(lo=0, integer=True), False), (None, dict(lo=0), False), (None, dict(lo=0, allow_none=True), True),
    (True, dict(lo=0), False), (float("nan"), dict(lo=0), False), ("3", dict(lo=0), False),
])
def test_check_range(value, kw, ok):
    if ok:
        assert check_range("x", value, **kw) is value
    else:
        with pytest.raises(ConfigError, match=r"^x=.*; set x to "):
            check_range("x", value, **kw)


def _app(tmp_path: Path, body: str) -> Path:
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "model").mkdir()
    (tmp_path / "conf" / "model" / "small.yaml").write_text("width: 4\n")
    (tmp_path / "conf" / "train.yaml").write_text(textwrap.dedent("""
        defaults:
          - runtime
          - _self_
          - model: small
        package: toy
        x: 1
        hydra:
          searchpath:
            - pkg://shared.conf
          run:
            dir: ${oc.env:REPRO_RUNS,runs}/toy
    """))
    app = tmp_path / "app.py"
    app.write_text(textwrap.dedent("""
        import json
        from shared.cli import hydra_main
        from shared.errors import check_choice, DatasetNotFoundError
        from shared.runtime import hydra_run_dir, start_run

        @hydra_main(config_name="train")
        def main(cfg):
    """) + textwrap.indent(textwrap.dedent(body), "    ") + "\nmain()\n")
    return app


def _run(app: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    import os

    e = {k: v for k, v in os.environ.items() if k != "REPRO_DEBUG"}
    e.update({"REPRO_RUNS": str(app.parent / "runs"), **(env or {})})
    return subprocess.run([sys.executable, str(app), *args], capture_output=True, text=True, env=e, timeout=120)


def test_entry_turns_user_errors_into_one_line_exit_2(tmp_path):
    app = _app(tmp_path, """
        check_choice("x", cfg.x, [1, 2])
        if cfg.x == 2:
            raise DatasetNotFoundError("Toy", "toy/*.png", "/nonexistent", "make some")
        ctx = start_run(cfg, hydra_run_dir())
        print("ran", ctx.device, ctx.amp.dtype)
    """)
    cases = {
        "x=3": "error: x=3 is not a known name; use one of: 1, 2",
        "x=2": "error: Toy not found: expected toy/*.png under /nonexistent; how to get it: make some",
        "model=smal": "error: In 'train': Could not find 'model/smal'; available options in 'model': small",
        "seed=-1": "error: seed=-1 is out of range; set seed to a value in [0, inf]",
        "threads=0": "error: threads=0 is out of range; set threads to a value in [1, inf]",
        "amp=fp8": "error: amp='fp8' is not a precision setting; use amp=false, true, fp16 or bf16",
        "device=tpu": "error: device='tpu' is not a device; use one of auto, cpu, cuda, cuda:<index>, mps",
        "xyz=1": "error: Could not override 'xyz'",
    }
    for override, expected in cases.items():
        r = _run(app, override)
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert r.returncode == 2, (override, r.stderr)
        assert len(lines) == 1 and lines[0].startswith(expected), (override, r.stderr)
    r = _run(app, "x=1", "amp=bf16", "device=cpu")
    assert r.returncode == 0 and "ran cpu torch.bfloat16" in r.stdout, r.stderr
    r = _run(app, "x=3", env={"REPRO_DEBUG": "1"})
    assert r.returncode != 0 and "Traceback" in r.stderr and "ConfigError" in r.stderr


def test_entry_keeps_tracebacks_of_bugs(tmp_path):
    app = _app(tmp_path, "raise KeyError('a bug')")
    r = _run(app)
    assert r.returncode == 1 and "Traceback" in r.stderr and "KeyError" in r.stderr


def test_one_line_of_a_dataloader_worker_error():
    from shared.cli import one_line

    wrapped = DatasetFormatError("Caught DatasetFormatError in DataLoader worker process 0.\nOriginal Traceback "
                                 "(most recent call last):\n  File x\nshared.errors.DatasetFormatError: image "
                                 "/d/a.png is empty (0 bytes); replace or delete the file")
    assert one_line(wrapped) == "image /d/a.png is empty (0 bytes); replace or delete the file"


def test_amp_unsupported_is_an_error_not_a_no_op(tmp_path):
    from omegaconf import OmegaConf

    from shared.runtime import start_run

    cfg = OmegaConf.create({"seed": 0, "device": "cpu", "threads": None, "amp": True, "num_workers": 0,
                            "max_steps": None})
    with pytest.raises(ConfigError, match=r"amp=True cannot be honoured here: scores need float64; use amp=false"):
        start_run(cfg, tmp_path / "run", amp_supported="scores need float64")
    cfg.amp = False
    assert start_run(cfg, tmp_path / "run", amp_supported="scores need float64").amp.enabled is False
    cfg.num_threads = 2
    with pytest.raises(ConfigError, match="old spelling; use threads="):
        start_run(cfg, tmp_path / "run")


def test_amp_dtypes_and_grad_scaler():
    from shared.runtime import Amp

    cpu = torch.device("cpu")
    assert Amp(False, cpu).dtype is None and not Amp(False, cpu).scaler.is_enabled()
    assert Amp(True, cpu).dtype is torch.bfloat16 and not Amp(True, cpu).scaler.is_enabled()
    assert Amp("bf16", cpu).dtype is torch.bfloat16
    fp16 = Amp("fp16", torch.device("cuda")) if torch.cuda.is_available() else None
    if fp16 is not None:
        assert fp16.scaler.is_enabled()
    # fp16 always runs with a scaler, bf16 never (checked on the scaler's own switch, device-independent)
    assert Amp("fp16", cpu).dtype is torch.float16 and Amp("fp16", cpu).scaler.is_enabled()
    with pytest.raises(ConfigError):
        Amp("half-ish", cpu)


def test_amp_bf16_step_trains_on_cpu():
    from shared.runtime import Amp

    torch.manual_seed(0)
    amp = Amp("bf16", torch.device("cpu"))
    lin = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(lin.parameters(), lr=0.1)
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    before = lin.weight.detach().clone()
    with amp.autocast():
        out = lin(x)
        assert out.dtype is torch.bfloat16
        loss = (out.float() - y).pow(2).mean()
    amp.backward(loss)
    amp.step(opt)
    assert not torch.equal(before, lin.weight)


def test_runtime_block_composes_with_shared_defaults():
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="shared.conf", version_base="1.3"):
        cfg = compose(config_name="runtime")
    assert dict(cfg) == {"seed": 0, "device": "auto", "threads": None, "amp": False, "weights": None,
                         "num_workers": 0, "resume": "auto", "max_steps": None}


# ------------------------------------------------------------------------------------ seeds and resume


def test_seed_depends_on_rank():
    from shared.runtime import seed_everything

    draws = []
    for rank in (0, 1):
        assert seed_everything(5, rank) == 5 + rank
        draws.append(torch.rand(3))
    assert not torch.equal(draws[0], draws[1])


def test_resume_restores_this_ranks_rng_state(tmp_path):
    from shared.runtime import maybe_resume, save_training_state

    model = torch.nn.Linear(2, 2)
    torch.manual_seed(3)
    save_training_state(tmp_path / "last.pt", model=model, step=4, epoch=1, cfg={"seed": 3})
    expected = torch.rand(5)
    torch.manual_seed(99)
    ckpt = maybe_resume("auto", tmp_path, model)
    assert ckpt["world_size"] == 1 and len(ckpt["rng_per_rank"]) == 1
    assert torch.equal(torch.rand(5), expected)


def test_resume_refuses_a_checkpoint_without_the_expected_model_key(tmp_path):
    from shared.runtime import maybe_resume, save_training_state

    model = torch.nn.Linear(2, 2)
    save_training_state(tmp_path / "last.pt", model=model, step=1, epoch=0, model_args={"arch": "a"})
    with pytest.raises(CheckpointError, match=r"from another model: no width there, but this run has width=4"):
        maybe_resume("auto", tmp_path, model, expect={"arch": "a", "width": 4})


def test_progress_fault_injection_kills_the_process(tmp_path):
    script = "from shared.runtime import Progress\np = Progress(10, interval=1e9)\nfor i in range(10):\n" \
             "    p.update()\n    print(i, flush=True)\n"
    import os

    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       env={**os.environ, "REPRO_FAULT_KILL_AFTER": "3"}, timeout=60)
    assert r.returncode == -9 and r.stdout.split() == ["0", "1"]


# ----------------------------------------------------------------------------- verdicts and reports


def test_paired_verdict_rule():
    from shared.metrics import paired_verdict, t_critical

    assert math.isclose(t_critical(5), 2.131847, rel_tol=1e-5)
    v = paired_verdict([1.0, 2.0, 1.5, 1.2, 0.8])
    assert v.verdict == "holds" and v.n_claimed_sign == 5 and math.isclose(v.mean, 1.3)
    assert math.isclose(v.threshold, t_critical(5) * v.std / math.sqrt(5))
    assert paired_verdict([0.5, -0.4, 0.3, 0.1, -0.2]).verdict == "inconclusive"
    assert paired_verdict([-1.0, -2.0, -1.5], "higher").verdict == "does not hold"
    assert paired_verdict([-1.0, -2.0, -1.5], "lower").verdict == "holds"
    assert paired_verdict([5.0, 6.0], "higher").verdict == "inconclusive"  # fewer than 3 seeds
    assert paired_verdict([0.1, -0.2, 0.05, 0.1], "comparable", margin=1.0).verdict == "holds"
    assert paired_verdict([3.0, 3.2, 2.9, 3.1], "comparable", margin=1.0).verdict == "does not hold"
    # a margin shifts the bar: +1.3 clears 0 but not 2
    assert paired_verdict([1.0, 2.0, 1.5, 1.2, 0.8], "higher", margin=2.0).verdict == "does not hold"


def test_report_is_rendered_only_from_data(tmp_path):
    from shared.metrics import ResultRow
    from shared.provenance import Provenance
    from shared.report import Section, Table, render_report, write_report

    prov = Provenance({"seeds": 3}, ["--seeds", "3"], threads=1, workers=2, script="toy-reproduce")
    prov.add_run("a_s0", {"lr": 0.1, "nested": {"k": [1, 2]}}, ["lr=0.1"])
    sections = [Section("Mechanism check", text="Why it must show.", rows=[
                    ResultRow("toy", "acc", [1.0, 2.0, 3.0], baseline=[0.0, 1.0, 2.0], direction="higher",
                              holds="holds")]),
                Section("Timings", table=Table(["variant", "ms"], [["a", 1.5], ["b", 2.25]]), figures=["x.png"])]
    md = write_report(tmp_path, "Toy results", sections, intro="Data: synthetic.", provenance=prov)
    text = md.read_text()
    assert render_report(tmp_path) == text
    assert text.startswith("# Toy results\n\nData: synthetic.\n\n## Mechanism check\n\nWhy it must show.")
    assert "| toy | acc | 2.00 ± 1.00 | 3 | 1.00 ± 1.00 |" in text and "| a | 1.5 |" in text
    assert "`toy-reproduce --seeds 3`" in text and "1 thread(s)" in text and "2 worker process(es)" in text
    p = json.loads((tmp_path / "provenance.json").read_text())
    assert p["runs"]["a_s0"]["config"] == {"lr": 0.1, "nested": {"k": [1, 2]}}
    assert set(p) >= {"command", "git", "date", "versions", "machine", "threads_per_process", "worker_processes",
                      "load_1min", "wall_clock_s", "args", "runs"}
    (tmp_path / "results.md").write_text(text.replace("2.00 ± 1.00", "2.50 ± 1.00"))  # a hand edit
    assert render_report(tmp_path) != (tmp_path / "results.md").read_text()


def test_compare_with_defaults_names_each_differing_key(tmp_path):
    import argparse

    from shared.provenance import Provenance, compare_with_defaults, compose

    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=10)
    prov = Provenance(parser.parse_args(["--seeds", "3"]), ["--seeds", "3"])
    cfg = compose("shared.conf", ["seed=4"], config_name="runtime")
    prov.add_run("r", cfg, ["seed=4"], config_module="shared.conf")
    data = prov.to_dict()
    for run in data["runs"].values():
        run["config_module"] = None  # the runtime block is not a train config; compared by hand below
    assert compare_with_defaults(data, parser) == ["args.seeds: committed 3, current default 5"]
    data = prov.to_dict()
    data["runs"]["r"]["config"]["threads"] = 2
    data["runs"]["r"]["config_module"] = "shared.conf"
    import shared.provenance as sp

    real = sp.compose
    sp.compose = lambda module, overrides, config_name="train": real(module, overrides, config_name="runtime")
    try:
        diffs = compare_with_defaults(data)
    finally:
        sp.compose = real
    assert diffs == ["runs[r].threads: committed 2, current default None"]


def test_benchmark_helper_interleaves_and_measures_memory(tmp_path):
    from shared.bench import allocation_probe, compare, peak_memory

    calls: list[str] = []
    t = compare({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, baseline="a", rounds=5,
                threads=1, min_run_time=0.01, warmup=1)
    assert len(t["a"].per_round) == 5 and t["a"].ratios == [1.0] * 5 and len(t["b"].ratios) == 5
    assert calls[:2] == ["a", "b"]  # warm-up first
    one, three = peak_memory(allocation_probe, 64, steps=1), peak_memory(allocation_probe, 64, steps=3)
    assert one["kind"] == "peak RSS increase" and 60 * 2**20 <= one["peak_bytes"] < 110 * 2**20
    assert 180 * 2**20 <= three["peak_bytes"] < 240 * 2**20
    with pytest.raises(RuntimeError, match="died"):
        peak_memory(_not_importable_under_spawn, 1)


def _not_importable_under_spawn(mib: int):  # this test module is not importable in a spawned child
    return lambda: None


def test_check_quiet_refuses_under_load(monkeypatch):
    import os

    from shared import bench

    monkeypatch.setattr(bench.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(os, "getloadavg", lambda: (17.0, 1.0, 1.0))
    with pytest.raises(UserError, match=r"1-minute load 17.0 > 2 cores.*--force"):
        bench.check_quiet(False)
    assert bench.check_quiet(True) == 17.0


# --------------------------------------------------------------------------------- data reliability


def _coco(tmp_path, doc):
    (tmp_path / "img").mkdir(exist_ok=True)
    f = tmp_path / "ann.json"
    f.write_text(json.dumps(doc))
    return tmp_path / "img", f


@pytest.mark.parametrize("missing", ["images", "annotations", "categories"])
def test_coco_missing_key_names_file_and_key(tmp_path, missing):
    from shared.data.coco import CocoDetection

    doc = {"images": [{"id": 1, "file_name": "a.jpg", "width": 8, "height": 8}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 2, 2]}],
           "categories": [{"id": 1, "name": "x"}]}
    del doc[missing]
    img, ann = _coco(tmp_path, doc)
    with pytest.raises(DatasetFormatError, match=rf"ann.json: the key '{missing}' is missing"):
        CocoDetection(img, ann)


def test_coco_empty_images_and_dangling_annotation(tmp_path):
    from shared.data.coco import CocoDetection

    img, ann = _coco(tmp_path, {"images": [], "annotations": [], "categories": []})
    with pytest.raises(DatasetFormatError, match="the list 'images' is empty"):
        CocoDetection(img, ann)
    img, ann = _coco(tmp_path, {"images": [{"id": 1, "file_name": "a.jpg", "width": 8, "height": 8}],
                                "annotations": [{"id": 7, "image_id": 1, "category_id": 3, "bbox": [0, 0, 2, 2]}],
                                "categories": [{"id": 1, "name": "x"}]})
    with pytest.raises(DatasetFormatError, match="annotation 7 has category_id=3"):
        CocoDetection(img, ann)


def _tree(tmp_path):
    from PIL import Image

    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        Image.new("RGB", (4, 4), (10, 20, 30)).save(tmp_path / c / "ok.png")
    (tmp_path / "a" / "empty.png").write_bytes(b"")
    (tmp_path / "b" / "garbage.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return tmp_path


def test_image_folder_names_an_unreadable_file_when_read(tmp_path):
    from shared.data import image_folder

    ds = image_folder(_tree(tmp_path))
    bad = {p: i for i, (p, _) in enumerate(ds.samples)}
    with pytest.raises(DatasetFormatError, match=r"a/empty\.png is empty \(0 bytes\); replace or delete"):
        ds[bad[str(tmp_path / "a" / "empty.png")]]
    with pytest.raises(DatasetFormatError, match=r"b/garbage\.jpg cannot be decoded"):
        ds[bad[str(tmp_path / "b" / "garbage.jpg")]]
    assert ds[bad[str(tmp_path / "a" / "ok.png")]][1] == 0


def test_image_folder_can_skip_unreadable_files_with_a_count(tmp_path, caplog):
    from shared.data import image_folder

    with caplog.at_level("WARNING", logger="repro"):
        ds = image_folder(_tree(tmp_path), skip_unreadable=True)
    assert len(ds) == 2 and len(ds.skipped) == 2 and ds.targets == [0, 1]
    assert "skipped 2 unreadable image(s)" in caplog.text


def test_split_list_files_are_checked_when_built(tmp_path):
    from shared.data.readers import check_files_exist

    (tmp_path / "x.png").write_bytes(b"1")
    check_files_exist([tmp_path / "x.png"], tmp_path / "list.txt", "Toy", "get it")
    with pytest.raises(DatasetNotFoundError, match=r"the 1 file\(s\) listed in list.txt \(missing: .*y.png\)"):
        check_files_exist([tmp_path / "x.png", tmp_path / "y.png"], tmp_path / "list.txt", "Toy", "get it")


def test_git_state_counts_code_changes_not_generated_reports(tmp_path):
    from shared.provenance import git_state

    def git(*a):
        subprocess.run(["git", *a], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    git("config", "user.email", "t@t")
    git("config", "user.name", "t")
    (tmp_path / "train.py").write_text("x = 1\n")
    (tmp_path / "results.md").write_text("old\n")
    git("add", ".")
    git("commit", "-qm", "c")
    assert git_state(tmp_path)["dirty"] is False
    (tmp_path / "results.md").write_text("new numbers\n")
    (tmp_path / "run.log").write_text("untracked\n")
    assert git_state(tmp_path)["dirty"] is False
    (tmp_path / "train.py").write_text("x = 2\n")
    st = git_state(tmp_path)
    assert st["dirty"] is True and st["dirty_files"] == ["train.py"]
