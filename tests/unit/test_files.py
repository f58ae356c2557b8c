"""Crash-safe files (overlay.core.files): a write is whole or absent, an exclusive one never
replaces what is there, and what a killed writer leaves behind is cleaned up."""

from __future__ import annotations

import os
import stat
import time

import pytest

from overlay.core.files import write_atomic


def test_a_write_replaces_the_file_whole_with_mode_0600(tmp_path):
    path = tmp_path / "peers.json"
    assert write_atomic(path, b"old")
    assert write_atomic(path, b"new")
    assert path.read_bytes() == b"new"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["peers.json"], "no temporary file left"


def test_an_exclusive_write_keeps_the_file_that_is_there(tmp_path):
    path = tmp_path / "identity.key"
    assert write_atomic(path, b"first", exclusive=True)
    assert not write_atomic(path, b"second", exclusive=True)
    assert path.read_bytes() == b"first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["identity.key"]


def test_a_write_that_dies_before_its_rename_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "peers.json"
    write_atomic(path, b"old")

    def crash(*_args):
        raise OSError("the process died here")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        write_atomic(path, b"new")
    assert path.read_bytes() == b"old"


def test_the_temporary_file_of_a_killed_writer_is_removed_by_a_later_write_but_not_one_under_way(tmp_path):
    path = tmp_path / "peers.json"
    killed, under_way = tmp_path / ".peers.json.0123456789ab.tmp", tmp_path / ".peers.json.ba9876543210.tmp"
    killed.write_bytes(b"half a fi")
    os.utime(killed, (time.time() - 120, time.time() - 120))
    under_way.write_bytes(b"another process is writing th")
    write_atomic(path, b"whole")
    assert sorted(p.name for p in tmp_path.iterdir()) == [under_way.name, "peers.json"]
