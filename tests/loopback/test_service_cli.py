"""`overlay-node service install|uninstall --user` as a user runs it: the unit written where
systemd looks for user units, and systemctl asked to reload, enable and start it (a systemctl of
our own on PATH records what it is asked, as this machine runs no systemd), then the reverse."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.loopback.nodeproc import CLI

pytestmark = pytest.mark.timeout(60)


def service(tmp_path: Path, *args: str, systemctl: str | None = "exit 0") -> subprocess.CompletedProcess:
    """The CLI with XDG_CONFIG_HOME in tmp_path and, unless None, a systemctl running `systemctl`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "systemctl"
    if systemctl is None:
        fake.unlink(missing_ok=True)
    else:
        fake.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "calls"}\n{systemctl}\n')
        fake.chmod(0o755)
    env = {**os.environ, "PATH": str(bin_dir), "XDG_CONFIG_HOME": str(tmp_path / "config")}
    return subprocess.run([CLI, "service", *args], env=env, capture_output=True, text=True, timeout=30)


def calls(tmp_path: Path) -> list[str]:
    return (tmp_path / "calls").read_text().splitlines()


def test_install_and_uninstall_a_user_service(tmp_path):
    unit = tmp_path / "config" / "systemd" / "user" / "overlay-node.service"
    done = service(tmp_path, "install", "--user")
    assert done.returncode == 0, done.stderr
    assert f"ExecStart={CLI} run" in unit.read_text().splitlines()
    assert calls(tmp_path) == ["--user daemon-reload", "--user enable --now overlay-node.service"]
    assert "journalctl --user -u overlay-node" in done.stdout

    done = service(tmp_path, "uninstall", "--user")
    assert done.returncode == 0, done.stderr
    assert not unit.exists()
    assert calls(tmp_path)[2:] == ["--user disable --now overlay-node.service", "--user daemon-reload"]
    assert "nothing to remove" in service(tmp_path, "uninstall", "--user").stdout


def test_a_failing_systemctl_and_a_missing_one_are_clear_errors(tmp_path):
    done = service(tmp_path, "install", "--user", systemctl='echo "Failed to connect to bus" >&2; exit 1')
    assert done.returncode == 1 and "systemctl daemon-reload: Failed to connect to bus" in done.stderr
    assert not (tmp_path / "config" / "systemd" / "user" / "overlay-node.service").exists(), "no unit left behind"
    done = service(tmp_path, "install", "--user", systemctl=None)
    assert done.returncode == 1 and "systemctl not found" in done.stderr
    done = service(tmp_path, "install", "--user", "--config", str(tmp_path / "missing.toml"))
    assert done.returncode == 2 and "is not a file" in done.stderr
