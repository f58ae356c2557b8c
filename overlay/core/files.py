"""Files the node writes, written so that a crash at any moment leaves the old file or the new
one whole, never part of one (the identity key, the API token, the remembered peers).

The data goes to a temporary file beside the target, is fsynced, and then takes the target's
name in one step: `os.replace` (the new file wins) or, for a file that must never be replaced
(the identity key), `os.link`, which fails if the target exists, so two processes starting at
once keep the first one's key. The directory is fsynced last, so that the new name survives a
power cut too. A leftover temporary file of a killed writer is removed by a later write.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from pathlib import Path

TMP_SUFFIX = ".tmp"
STALE_AFTER = 60.0  # seconds: a temporary file this old is a killed writer's (a write takes milliseconds)


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{secrets.token_hex(6)}{TMP_SUFFIX}")


def write_atomic(path: Path, data: bytes, mode: int = 0o600, exclusive: bool = False) -> bool:
    """Write `data` as `path`, whole or not at all; with `exclusive`, only if `path` does not
    exist yet (False then, and the existing file is left as it is). OSError as the system says."""
    for stale in path.parent.glob(f".{path.name}.*{TMP_SUFFIX}"):
        with contextlib.suppress(OSError):
            if time.time() - stale.stat().st_mtime > STALE_AFTER:  # not another process's write under way
                stale.unlink()
    tmp = _tmp_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if exclusive:
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
        else:
            os.replace(tmp, path)
        _fsync_dir(path.parent)
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # some filesystems cannot open or fsync a directory
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
