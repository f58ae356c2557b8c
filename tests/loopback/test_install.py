"""The package as users install it: a wheel built from this tree holds what the code reads at run
time; `pipx install .` builds the wheel again, installs it and its dependencies into a fresh venv
of its own (not editable), and the CLI's main paths run from there, in a directory outside the
source tree, so that everything the code reads at run time must be in the wheel.

One install serves both, the plain-venv path (`pip install dist/*.whl`) being what pipx does
inside its venv: a second full install would only double the test's ~70 s."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from overlay import __version__
from tests.loopback.nodeproc import Proc

pytestmark = pytest.mark.timeout(900)
ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("pyproject.toml", "README.md", "overlay", "signaling", "nat", "simulations")
SMALL = """[network]
nodes = 12
bootstrap = 2
duration = 240
join_window = 30
warmup = 60
[workload]
dials_per_node_hour = 60
"""


def run(argv: list[str], cwd: Path, timeout: float = 600, **extra: str) -> str:
    """stdout of a command that must succeed, in this test's environment minus the source tree's
    venv, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")} | extra
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A copy of the tree's sources, so that building leaves nothing in the checkout."""
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(ROOT / name, src / name)
    return src


@pytest.fixture(scope="module")
def wheel(source, tmp_path_factory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(dist), str(source)], cwd=source)
    (built,) = dist.glob("overlay_node-*.whl")
    return built


def test_the_wheel_holds_what_the_code_reads_at_run_time(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in ("simulations/scenarios/default.toml", "signaling/PROTOCOL.md", "overlay/channels/PROTOCOL.md",
                 "overlay/gateway/degas.proto", "overlay/gateway/degas_pb2.py"):
        assert name in names, f"{name} is not in {wheel.name}"
    assert wheel.name.startswith(f"overlay_node-{__version__}-"), "the version comes from overlay.__version__"


@pytest.fixture(scope="module")
def installed(source, tmp_path_factory) -> Path:
    """`pipx install .` from the source copy; the directory holding the `overlay-node` it links."""
    home = tmp_path_factory.mktemp("pipx")
    tools = home / "tools"
    run([sys.executable, "-m", "venv", str(tools)], cwd=home)
    run([str(tools / "bin" / "python"), "-m", "pip", "install", "--quiet", "pipx"], cwd=home)
    run([str(tools / "bin" / "pipx"), "install", "--pip-args=--quiet --no-compile", "."], cwd=source,
        PIPX_HOME=str(home / "pipx"), PIPX_BIN_DIR=str(home / "bin"), PIPX_MAN_DIR=str(home / "man"))
    return home / "bin"


def test_the_cli_runs_from_its_own_venv_with_the_wheel(installed, tmp_path):
    cli = str(installed / "overlay-node")
    python = str(Path(os.path.realpath(cli)).parent / "python")
    assert not Path(python).resolve().is_relative_to(ROOT), "not the source tree's venv"
    work = tmp_path / "work"
    work.mkdir()

    assert run([cli, "--version"], work).strip() == f"overlay-node {__version__}"
    assert run([cli, "id", "--data-dir", str(work / "id")], work).strip().startswith("12D3KooW")
    assert "usage: overlay-node natlab" in run([cli, "natlab", "--help"], work)
    origin = run([python, "-c", "import overlay; print(overlay.__file__)"], work).strip()
    assert "site-packages" in origin and not Path(origin).is_relative_to(ROOT), origin
    # the default scenario is package data; a small one runs through the whole report
    loaded = run([python, "-c", "from simulations.scenario import load; print(load().nodes)"], work)
    assert loaded.strip() == "300"
    (work / "small.toml").write_text(SMALL)
    run([cli, "simulate", "small.toml", "--out", "report", "--quiet"], work)
    assert "12 nodes" in (work / "report" / "summary.txt").read_text()

    node = Proc([], work / "node", network="install", cli=cli, cwd=work)  # a lone node: no network needed
    try:
        status = run([cli, "status", "--api", node.api, "--data-dir", str(work / "node")], work)
        assert f"version:       {__version__}, up " in status, status
    finally:
        code, _ = node.stop()
    assert code == 0
