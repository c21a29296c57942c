"""Contracts every paper package keeps (foundation round 2), parametrised over the packages:

* a misspelt registry name, an invalid value and a missing dataset each end in exactly one stderr line
  ``error: ...`` and exit status 2, within seconds, through `uv run --package <pkg> train`;
* every package's config carries the shared runtime block (one spelling, one meaning);
* kill -9 in the middle of training, then the same command: the final metrics and weights equal those of
  an uninterrupted run;
* the committed `results/<pkg>/` and `benchmarks/<pkg>/` were made by the current defaults (provenance),
  and their `results.md` is exactly what their data renders to.

Each package declares the overrides these tests use in its pyproject, `[tool.repro.contract]`:
`bad_name`, `bad_value`, `missing_data`, `tiny`, `kill_after` (see CONTRIBUTING.md).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
PACKAGES = sorted(p.name for p in (REPO / "packages").glob("*") if (p / "pyproject.toml").is_file())
RUNTIME_KEYS = {"seed", "device", "threads", "amp", "weights", "num_workers", "resume", "max_steps"}
ERROR_SECONDS = 30.0


def _contract(pkg: str) -> dict:
    data = tomllib.loads((REPO / "packages" / pkg / "pyproject.toml").read_text())
    contract = data.get("tool", {}).get("repro", {}).get("contract")
    assert contract, f"{pkg}: pyproject.toml has no [tool.repro.contract] table (see CONTRIBUTING.md)"
    return contract


def _mod(pkg: str) -> str:
    return pkg.replace("-", "_")


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in {"REPRO_PACKAGE", "REPRO_DEBUG", "REPRO_FAULT_KILL_AFTER", "VIRTUAL_ENV", "HYDRA_FULL_ERROR"}}
    env.update({"REPRO_RUNS": str(tmp_path / "runs"), "REPRO_DATA": str(tmp_path / "no-data-here"),
                "REPRO_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1", **extra})
    return env


@pytest.mark.parametrize("kind", ["bad_name", "bad_value", "missing_data"])
@pytest.mark.parametrize("pkg", PACKAGES)
def test_user_error_is_one_line_and_exit_2(pkg, kind, tmp_path):
    uv = shutil.which("uv")
    if uv is None:
        pytest.skip("uv is not on PATH")
    overrides = _contract(pkg)[kind]
    t0 = time.perf_counter()
    r = subprocess.run([uv, "run", "--frozen", "--package", pkg, "train", *overrides], cwd=REPO, capture_output=True,
                       text=True, env=_env(tmp_path), timeout=300)
    seconds = time.perf_counter() - t0
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2, f"{pkg} {overrides}: exit {r.returncode}\n{r.stderr[-3000:]}"
    assert len(lines) == 1 and lines[0].startswith("error: "), f"{pkg} {overrides}: stderr was\n{r.stderr[-3000:]}"
    assert ";" in lines[0], f"{pkg}: the message should say what is wrong and how to fix it: {lines[0]}"
    assert seconds < ERROR_SECONDS, f"{pkg} {overrides}: the error took {seconds:.1f} s"
    assert not (tmp_path / "runs" / pkg).exists() or not any((tmp_path / "runs" / pkg).rglob("last.pt"))


@pytest.mark.parametrize("pkg", PACKAGES)
def test_runtime_block_in_every_package(pkg):
    from omegaconf import OmegaConf

    from shared.provenance import compose

    cfg = compose(f"{_mod(pkg)}.conf")
    plain = OmegaConf.to_container(cfg, resolve=False)
    assert RUNTIME_KEYS <= set(plain), f"{pkg}: missing runtime keys {sorted(RUNTIME_KEYS - set(plain))}"
    for legacy in ("num_threads", "pretrained_weights"):
        assert legacy not in plain, f"{pkg}: legacy key {legacy!r}; use the runtime block's spelling"
    assert plain["amp"] in (False, True, "fp16", "bf16")


def _train(pkg: str, overrides: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"{_mod(pkg)}.train", *overrides], cwd=REPO, capture_output=True,
                          text=True, env=env, timeout=600)


def _numbers(d: dict, ignore: list[str]) -> dict:
    return {k: v for k, v in d.items() if isinstance(v, (int, float)) and not any(s in k for s in ignore)}


@pytest.mark.parametrize("pkg", PACKAGES)
def test_kill_9_mid_training_then_resume_equals_uninterrupted(pkg, tmp_path):
    c = _contract(pkg)
    tiny = [*c["tiny"], "device=cpu", "threads=1"]
    ignore = ["second", "time", "wall", *c.get("compare_ignore", [])]
    env = _env(tmp_path)
    ref = _train(pkg, [*tiny, "name=uninterrupted"], env)
    assert ref.returncode == 0, ref.stdout[-2000:] + ref.stderr[-3000:]
    killed = _train(pkg, [*tiny, "name=killed"], {**env, "REPRO_FAULT_KILL_AFTER": str(c["kill_after"])})
    assert killed.returncode == -9, f"{pkg}: the fault did not fire (exit {killed.returncode}); raise kill_after?"
    run_dir = tmp_path / "runs" / pkg / "killed"
    assert (run_dir / "last.pt").is_file(), f"{pkg}: no checkpoint before step {c['kill_after']}: lower kill_after"
    resumed = _train(pkg, [*tiny, "name=killed"], env)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    assert "resumed from" in (run_dir / "train.log").read_text(), f"{pkg}: the second run did not resume"
    a = json.loads((tmp_path / "runs" / pkg / "uninterrupted" / "final_metrics.json").read_text())
    b = json.loads((run_dir / "final_metrics.json").read_text())
    assert _numbers(a, ignore) == _numbers(b, ignore)
    wa = torch.load(tmp_path / "runs" / pkg / "uninterrupted" / "last.pt", weights_only=True)["model"]
    wb = torch.load(run_dir / "last.pt", weights_only=True)["model"]
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), f"{pkg}: weights differ"


def _bench_parser(pkg: str):
    path = REPO / "benchmarks" / pkg / "run.py"
    spec = importlib.util.spec_from_file_location(f"bench_{_mod(pkg)}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_parser()


@pytest.mark.parametrize("kind", ["results", "benchmarks"])
@pytest.mark.parametrize("pkg", PACKAGES)
def test_committed_results_match_the_current_defaults(pkg, kind):
    from shared.provenance import compare_with_defaults

    prov = REPO / kind / pkg / "provenance.json"
    assert prov.is_file(), f"{kind}/{pkg}/provenance.json is missing: run `make {'reproduce' if kind == 'results' else 'bench'}-{pkg}`"
    if kind == "results":
        parser = importlib.import_module(f"{_mod(pkg)}.reproduce").build_parser()
    else:
        parser = _bench_parser(pkg)
    diffs = compare_with_defaults(prov, parser)
    assert not diffs, (f"{kind}/{pkg} was made with other defaults than the current code's; re-run and commit:\n  "
                       + "\n  ".join(diffs))
    data = json.loads(prov.read_text())
    assert data["git"]["commit"], f"{kind}/{pkg}: provenance has no commit"


REPORTS = sorted(str(p.parent.relative_to(REPO)) for p in REPO.glob("*/*/results.json")
                 if p.parent.parent.name in ("results", "benchmarks"))


@pytest.mark.parametrize("folder", REPORTS)
def test_committed_results_md_is_rendered_from_data(folder):
    from shared.report import render_report

    md = (REPO / folder / "results.md").read_text()
    assert render_report(REPO / folder) == md, f"{folder}/results.md differs from what its data renders to"
