"""The node's persistent identity: one Ed25519 key in the data directory.

The key is created on first use with mode 0600 (never readable by other users, never logged)
and reused after, so the peer ID survives restarts. It is stored as PKCS#8 PEM, written whole or
not at all (overlay.core.files), and never replaced once there.
"""

from __future__ import annotations

import logging
import stat
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from overlay.core.errors import ConfigError
from overlay.core.files import write_atomic

KEY_FILE = "identity.key"
log = logging.getLogger(__name__)


def load_or_create_key(data_dir: Path) -> Ed25519PrivateKey:
    path = data_dir / KEY_FILE
    try:
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as e:
        raise ConfigError(f"cannot create data dir {data_dir}: {e.strerror}") from e
    if not path.exists():
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        try:
            created = write_atomic(path, pem, exclusive=True)  # a kill mid-write leaves no half key
        except OSError as e:
            raise ConfigError(f"cannot create identity key {path}: {e.strerror}") from e
        return key if created else load_or_create_key(data_dir)  # another process created it first
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        log.warning("identity key %s is accessible by other users (mode %o); chmod 600 it", path, mode)
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read identity key {path}: {e}") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"identity key {path} is not an Ed25519 key")
    return key


def raw_seed(key: Ed25519PrivateKey) -> bytes:
    """The 32-byte seed, the form py-libp2p's key pair is built from."""
    return key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
