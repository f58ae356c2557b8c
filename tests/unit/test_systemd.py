"""The systemd units `overlay-node service install` writes: a user service that runs as its
owner, and a system service confined to a user of its own and its state directory."""

from __future__ import annotations

from pathlib import Path

from overlay.node.systemd import SYSTEM_DATA_DIR, unit_text

EXE = Path("/opt/overlay/bin/overlay-node")


def lines(text: str) -> set[str]:
    return set(text.splitlines())


def test_a_user_unit_runs_the_node_as_its_owner_with_the_default_data_dir():
    unit = lines(unit_text(EXE, user=True))
    assert f"ExecStart={EXE} run" in unit
    assert "WantedBy=default.target" in unit and "Restart=on-failure" in unit
    assert not any(line.startswith("DynamicUser") for line in unit)


def test_a_system_unit_runs_as_a_user_of_its_own_in_its_state_directory():
    unit = lines(unit_text(EXE, user=False, config=Path("/etc/overlay-node.toml")))
    assert f"ExecStart={EXE} run --data-dir {SYSTEM_DATA_DIR} --config /etc/overlay-node.toml" in unit
    assert {"DynamicUser=yes", "StateDirectory=overlay-node", "ProtectSystem=strict", "NoNewPrivileges=yes",
            "WantedBy=multi-user.target"} <= unit
