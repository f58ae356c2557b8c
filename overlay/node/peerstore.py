"""Peers remembered across restarts: routing-table contacts and the addresses they answered at,
kept in the data dir (`peers.json`), so that a node whose bootstraps are all down rejoins
through peers it knew.

The file is the node's own (mode 0600, written whole or not at all: overlay.core.files), but it is read as
untrusted input all the same: at most MAX_FILE bytes, MAX_PEERS peers of MAX_ADDRS addresses,
each peer ID and multiaddr checked; a bad file or entry is skipped with a warning, never fatal.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path

import multiaddr

from overlay.core.files import write_atomic
from overlay.core.peer import PeerInfo
from overlay.core.records import peer_id_from_str, peer_id_to_str

log = logging.getLogger(__name__)

FILE = "peers.json"
MAX_PEERS = 32
MAX_ADDRS = 4
MAX_FILE = 64 * 1024
SAVE_INTERVAL = 300.0  # seconds between saves while running (and one at shutdown)


def save(data_dir: Path, peers: Iterable[PeerInfo]) -> int:
    """Write up to MAX_PEERS peers (the first ones given); how many were written."""
    entries = [{"peer_id": peer_id_to_str(p.peer_id), "addrs": [str(multiaddr.Multiaddr(a)) for a in p.addrs[:MAX_ADDRS]]}
               for p in peers if p.addrs][:MAX_PEERS]
    write_atomic(data_dir / FILE, json.dumps({"version": 1, "peers": entries}).encode())
    return len(entries)


def load(data_dir: Path) -> list[PeerInfo]:
    """The remembered peers, in the order saved; [] when there is no file or it is unusable."""
    path = data_dir / FILE
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE + 1)
    except FileNotFoundError:
        return []
    except OSError as e:
        log.warning("remembered peers: cannot read %s: %s", path, e.strerror)
        return []
    if len(data) > MAX_FILE:
        log.warning("remembered peers: %s is over %d bytes, ignored", path, MAX_FILE)
        return []
    try:
        entries = json.loads(data)["peers"]
    except (ValueError, KeyError, TypeError):
        entries = None
    if not isinstance(entries, list):
        log.warning("remembered peers: %s is not a peers file, ignored", path)
        return []
    peers = []
    for entry in entries[:MAX_PEERS]:
        try:
            addrs = tuple(multiaddr.Multiaddr(a).to_bytes() for a in entry["addrs"][:MAX_ADDRS] if isinstance(a, str))
            peers.append(PeerInfo(peer_id_from_str(entry["peer_id"]), addrs))
        except Exception as e:  # noqa: BLE001 - a malformed entry of any kind is skipped, the rest kept
            log.warning("remembered peers: an entry of %s skipped: %s", path, e)
    return [p for p in peers if p.addrs]
