"""The `train`/`reproduce` dispatcher picks the package that `uv run --package` named, in any
install order. Tested in a temporary uv workspace with two small packages (so it does not depend on
the paper packages), whose `shared` member is the real dispatcher source without the heavy deps."""

import os
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

from shared.dispatch import package_from_uv_argv

REPO = Path(__file__).resolve().parents[1]
UV = shutil.which("uv")


def test_package_from_uv_argv():
    assert package_from_uv_argv(["/usr/bin/uv", "run", "--package", "depatch", "train", "x=1"]) == "depatch"
    assert package_from_uv_argv(["uv", "--quiet", "run", "--package=gradnorm-al", "train"]) == "gradnorm-al"
    assert package_from_uv_argv(["uv", "run", "--", "train", "--package", "x"]) is None
    assert package_from_uv_argv(["uv", "sync", "--package", "x"]) is None
    assert package_from_uv_argv(["python", "run", "--package", "x"]) is None
    assert package_from_uv_argv([]) is None


def _member(root: Path, name: str) -> None:
    mod = name.replace("-", "_")
    d = root / "packages" / name
    (d / "src" / mod).mkdir(parents=True)
    (d / "src" / mod / "__init__.py").write_text("")
    (d / "src" / mod / "jobs.py").write_text(textwrap.dedent(f"""
        import sys
        def train():
            print("TRAIN {name} args=" + " ".join(sys.argv[1:]))
        def reproduce():
            print("REPRODUCE {name}")
    """))
    (d / "pyproject.toml").write_text(textwrap.dedent(f"""
        [project]
        name = "{name}"
        version = "0.0.1"
        requires-python = ">=3.11"
        dependencies = ["shared"]
        [project.scripts]
        {name}-train = "{mod}.jobs:train"
        {name}-reproduce = "{mod}.jobs:reproduce"
        [project.entry-points."repro.train"]
        {name} = "{mod}.jobs:train"
        [project.entry-points."repro.reproduce"]
        {name} = "{mod}.jobs:reproduce"
        [tool.uv.sources]
        shared = {{ workspace = true }}
        [build-system]
        requires = ["hatchling"]
        build-backend = "hatchling.build"
        [tool.hatch.build.targets.wheel]
        packages = ["src/{mod}"]
    """))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    if UV is None:
        pytest.skip("uv is not on PATH")
    root = tmp_path_factory.mktemp("ws")
    (root / "pyproject.toml").write_text('[tool.uv.workspace]\nmembers = ["shared", "packages/*"]\n')
    shared_src = root / "shared" / "src" / "shared"
    shared_src.mkdir(parents=True)
    (shared_src / "__init__.py").write_text("")
    shutil.copy(REPO / "shared" / "src" / "shared" / "dispatch.py", shared_src / "dispatch.py")
    pyproject = (REPO / "shared" / "pyproject.toml").read_text()
    start = pyproject.index("dependencies = [")
    end = pyproject.index("]", start)
    (root / "shared" / "pyproject.toml").write_text(pyproject[:start] + "dependencies = [" + pyproject[end:])
    for name in ("alpha-pkg", "beta-pkg"):
        _member(root, name)
    return root


def _uv(ws: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in {"VIRTUAL_ENV", "REPRO_PACKAGE", "UV_PROJECT"}}
    return subprocess.run([UV, *args], cwd=ws, capture_output=True, text=True, env=env, timeout=300)


def test_dispatch_any_install_order(workspace):
    ws = workspace
    for order in (["alpha-pkg", "beta-pkg"], ["beta-pkg", "alpha-pkg"]):
        shutil.rmtree(ws / ".venv", ignore_errors=True)
        for pkg in order:  # install one after the other, as a user adding packages would
            r = _uv(ws, "sync", "--inexact", "--package", pkg)
            assert r.returncode == 0, r.stderr
        for pkg in ("alpha-pkg", "beta-pkg"):
            r = _uv(ws, "run", "--package", pkg, "train", "--cfg", "job", "x=1")
            assert r.returncode == 0, r.stderr
            assert r.stdout.strip() == f"TRAIN {pkg} args=--cfg job x=1"
            r = _uv(ws, "run", "--package", pkg, "reproduce")
            assert r.stdout.strip() == f"REPRODUCE {pkg}"
    r = _uv(ws, "sync", "--all-packages")
    assert r.returncode == 0, r.stderr
    r = _uv(ws, "run", "--package", "beta-pkg", "train")
    assert r.stdout.strip() == "TRAIN beta-pkg args="
    bin_dir = ws / ".venv" / "bin"
    assert (bin_dir / "alpha-pkg-train").exists() and (bin_dir / "beta-pkg-train").exists()


def test_dispatch_without_uv(workspace):
    ws = workspace
    assert _uv(ws, "sync", "--package", "alpha-pkg").returncode == 0  # exact: beta is removed
    train = str(ws / ".venv" / "bin" / "train")
    env = {k: v for k, v in os.environ.items() if k != "REPRO_PACKAGE"}
    r = subprocess.run([train, "a=1"], capture_output=True, text=True, env=env)
    assert r.stdout.strip() == "TRAIN alpha-pkg args=a=1"  # the only installed package
    assert _uv(ws, "sync", "--all-packages").returncode == 0
    r = subprocess.run([train], capture_output=True, text=True, env=env)
    assert r.returncode == 2
    assert "2 are installed" in r.stderr and "alpha-pkg-train" in r.stderr and "beta-pkg-train" in r.stderr
    r = subprocess.run([train], capture_output=True, text=True, env={**env, "REPRO_PACKAGE": "beta-pkg"})
    assert r.stdout.strip() == "TRAIN beta-pkg args="
    r = subprocess.run([train], capture_output=True, text=True, env={**env, "REPRO_PACKAGE": "gamma"})
    assert r.returncode == 2 and "'gamma' has no `train` job" in r.stderr


def test_explicit_uv_package_beats_repro_package(workspace):
    ws = workspace
    assert _uv(ws, "sync", "--all-packages").returncode == 0
    env = {k: v for k, v in os.environ.items() if k not in {"VIRTUAL_ENV", "UV_PROJECT"}}
    run = lambda pkg, value: subprocess.run([UV, "run", "--package", pkg, "train"], cwd=ws, capture_output=True,  # noqa: E731
                                            text=True, env={**env, "REPRO_PACKAGE": value}, timeout=300)
    r = run("alpha-pkg", "alpha-pkg")
    assert r.returncode == 0 and r.stdout.strip() == "TRAIN alpha-pkg args="
    r = run("alpha-pkg", "beta-pkg")  # both given and different: an error, not a silent choice
    assert r.returncode == 2 and "name different packages" in r.stderr and r.stdout == ""
