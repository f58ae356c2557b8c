"""The node as a systemd service (`overlay-node service install|uninstall`): the unit, written for
the overlay-node this command belongs to, enabled and started with systemctl.

Two kinds, as systemd has them:
- a user service (`--user`), the one for a home machine: it runs as its owner with the owner's
  data dir, so the client commands (`overlay-node status`, ...) find the API token as usual; it
  runs while the owner is logged in, or always after `loginctl enable-linger`;
- a system service: a user of its own made by systemd (DynamicUser), its data in
  /var/lib/overlay-node, the rest of the file system read-only to it. It must be able to read the
  installed package, so that is refused from a home directory.
Logs go to the journal (`journalctl [--user] -u overlay-node`): the node writes them to stderr.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from overlay import __version__
from overlay.core.errors import ConfigError, OverlayError

UNIT = "overlay-node.service"
SYSTEM_DATA_DIR = Path("/var/lib/overlay-node")


def executable() -> Path:
    """The overlay-node script beside this interpreter (a venv's, or pipx's)."""
    return Path(sys.executable).parent / "overlay-node"


def unit_path(user: bool) -> Path:
    if user:
        base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
        return Path(base) / "systemd" / "user" / UNIT
    return Path("/etc/systemd/system") / UNIT


def unit_text(exe: Path, user: bool, config: Path | None = None) -> str:
    run = [str(exe), "run"] + (["--data-dir", str(SYSTEM_DATA_DIR)] if not user else [])
    run += ["--config", str(config)] if config is not None else []
    lines = [
        f"# overlay-node {__version__}: written by `overlay-node service install{' --user' if user else ''}`",
        "[Unit]",
        "Description=overlay-node, a peer-to-peer overlay node",
        "Wants=network-online.target",
        "After=network-online.target",
        "",
        "[Service]",
        "Type=exec",
        f"ExecStart={' '.join(run)}",
        "Restart=on-failure",
        "RestartSec=5s",
        "TimeoutStopSec=30s",  # SIGTERM: the node unregisters and closes its connections
        "NoNewPrivileges=yes",
    ]
    if not user:
        lines += ["DynamicUser=yes", "StateDirectory=overlay-node", "ProtectSystem=strict", "ProtectHome=read-only",
                  "PrivateTmp=yes"]
    lines += ["", "[Install]", f"WantedBy={'default.target' if user else 'multi-user.target'}", ""]
    return "\n".join(lines)


def _systemctl(user: bool) -> Callable[[list[str]], None]:
    path = shutil.which("systemctl")
    if path is None:
        raise OverlayError("systemctl not found: this machine does not run systemd (README: running as a service)")

    def run(args: list[str]) -> None:
        done = subprocess.run([path, *(["--user"] if user else []), *args], capture_output=True, text=True)
        if done.returncode != 0:
            raise OverlayError(f"systemctl {' '.join(args)}: {done.stderr.strip() or done.returncode}")

    return run


def install(user: bool, config: Path | None = None) -> Path:
    """Write the unit, reload systemd, enable and start the service; the unit's path."""
    exe = executable()
    if not user and exe.parts[1:2] in (("home",), ("root",)):
        raise ConfigError(f"the system service runs as a user of its own, which cannot read {exe}: install "
                          "overlay-node outside home directories (README), or use --user")
    if config is not None:
        config = config.resolve()
        if not config.is_file():
            raise ConfigError(f"config: {config} is not a file")
    systemctl = _systemctl(user)
    path = unit_path(user)
    path.parent.mkdir(parents=True, exist_ok=True)
    existed = path.exists()
    path.write_text(unit_text(exe, user, config))
    try:
        systemctl(["daemon-reload"])
        systemctl(["enable", "--now", UNIT])
    except OverlayError:
        if not existed:  # leave nothing behind that systemd did not take
            path.unlink()
        raise
    return path


def uninstall(user: bool) -> Path | None:
    """Stop and disable the service and remove its unit; the path removed, None if there was none."""
    path = unit_path(user)
    if not path.exists():
        return None
    systemctl = _systemctl(user)
    systemctl(["disable", "--now", UNIT])
    path.unlink()
    systemctl(["daemon-reload"])
    return path
