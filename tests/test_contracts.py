"""Cross-package contracts: every member imports, script names are unique, the generic `train`
command runs the named package's config, every experiment config composes."""

import importlib
import os
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MEMBERS = [REPO / "shared"] + sorted(p for p in (REPO / "packages").glob("*") if (p / "pyproject.toml").is_file())
PAPER_PACKAGES = [p.name for p in MEMBERS[1:]]


def _project(member: Path) -> dict:
    return tomllib.loads((member / "pyproject.toml").read_text())["project"]


def test_members_have_build_system():
    for m in MEMBERS:
        assert "build-system" in tomllib.loads((m / "pyproject.toml").read_text()), f"{m.name}: no [build-system]"


@pytest.mark.parametrize("member", MEMBERS, ids=lambda m: m.name)
def test_member_imports(member):
    mod = importlib.import_module(_project(member)["name"].replace("-", "_"))
    assert mod.__file__ is not None


def test_no_two_members_declare_the_same_script():
    owner: dict[str, str] = {}
    for m in MEMBERS:
        proj = _project(m)
        for script in proj.get("scripts", {}):
            assert script not in owner, f"script {script!r} declared by both {owner[script]} and {proj['name']}"
            owner[script] = proj["name"]
    assert owner.get("train") == "shared" and owner.get("reproduce") == "shared"


@pytest.mark.parametrize("pkg", PAPER_PACKAGES)
def test_paper_package_registers_jobs_and_unique_scripts(pkg):
    proj = _project(REPO / "packages" / pkg)
    eps = proj.get("entry-points", {})
    assert pkg in eps.get("repro.train", {}) and pkg in eps.get("repro.reproduce", {})
    assert {f"{pkg}-train", f"{pkg}-reproduce"} <= set(proj.get("scripts", {}))
    assert "train" not in proj.get("scripts", {})


@pytest.mark.parametrize("pkg", PAPER_PACKAGES)
def test_uv_run_package_train_prints_that_packages_config(pkg):
    uv = shutil.which("uv")
    if uv is None:
        pytest.skip("uv is not on PATH")
    env = {k: v for k, v in os.environ.items() if k not in {"REPRO_PACKAGE"}}
    r = subprocess.run([uv, "run", "--frozen", "--package", pkg, "train", "--cfg", "job"], cwd=REPO,
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"package: {pkg}\n" in r.stdout, r.stdout[:2000]


@pytest.mark.parametrize("pkg", PAPER_PACKAGES)
def test_every_experiment_config_composes(pkg):
    from hydra import compose, initialize_config_module

    mod = pkg.replace("-", "_")
    conf_dir = REPO / "packages" / pkg / "src" / mod / "conf"
    experiments = sorted(p.stem for p in (conf_dir / "experiment").glob("*.yaml"))
    with initialize_config_module(config_module=f"{mod}.conf", version_base="1.3"):
        cfg = compose(config_name="train", return_hydra_config=True)
        assert cfg.package == pkg and cfg.hydra.job.name == pkg
        for exp in experiments:
            cfg = compose(config_name="train", overrides=[f"experiment={exp}"])
            assert cfg.package == pkg, exp


@pytest.mark.parametrize("pkg", PAPER_PACKAGES)
def test_make_targets_expand_for_every_package(pkg):
    """`make test-<pkg>` etc. must run the package's commands (a pattern rule on a .PHONY target
    silently does nothing)."""
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not on PATH")
    r = subprocess.run([make, "-n", f"test-{pkg}", f"smoke-{pkg}", f"reproduce-{pkg}"], cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert f"--exact --package {pkg} pytest packages/{pkg}" in r.stdout
    assert f"--package {pkg} {pkg}-train" in r.stdout and f"--package {pkg} {pkg}-reproduce" in r.stdout
