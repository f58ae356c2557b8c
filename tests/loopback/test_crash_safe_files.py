"""Crash-safe files under real kills (issue 20, item 5): a process that keeps writing what the
node writes (a fresh identity key and API token per directory, the remembered peers over and
over) is killed with SIGKILL at random moments. After every kill, each file is whole: each key
and token that exists loads, and the peer file holds one of the two lists written, never a part.
Then a node starts on a directory the writer was killed in."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time

import pytest

from overlay.core.identity import load_or_create_key
from overlay.node import peerstore
from overlay.node.apiauth import read_token
from tests.loopback.nodeproc import CLI, Proc

pytestmark = pytest.mark.timeout(180)

WRITER = """
import itertools, sys
from pathlib import Path
import multiaddr
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from overlay.core.identity import load_or_create_key
from overlay.core.peer import PeerInfo
from overlay.core.records import peer_id_from_public_key
from overlay.node import peerstore
from overlay.node.apiauth import load_or_create_token

root = Path(sys.argv[1])
peers = [PeerInfo(peer_id_from_public_key(Ed25519PrivateKey.generate().public_key()),
                  (multiaddr.Multiaddr(f"/ip4/127.0.0.1/tcp/{4000 + i}").to_bytes(),)) for i in range(peerstore.MAX_PEERS)]
lists = [peers[:5], peers]
print("ready", flush=True)
for i in itertools.count():
    d = root / f"dir{i}"
    load_or_create_key(d)
    load_or_create_token(d)
    peerstore.save(root, lists[i % 2])
"""
KILLS = 12


def test_files_survive_kills_at_random_moments_of_their_writes(tmp_path):
    rng = random.Random(20)
    lengths_seen = set()
    for round_ in range(KILLS):
        root = tmp_path / f"round{round_}"
        root.mkdir()
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(root)], stdout=subprocess.PIPE, text=True)
        try:
            assert writer.stdout.readline().strip() == "ready"
            time.sleep(rng.uniform(0.05, 0.4))
        finally:
            writer.send_signal(signal.SIGKILL)
            writer.wait(timeout=10)
        dirs = [d for d in root.iterdir() if d.is_dir()]
        assert dirs, "the writer wrote nothing before it was killed: kill later"
        for d in dirs:
            if (d / "identity.key").exists():
                load_or_create_key(d)  # raises ConfigError on a half-written key
            if (d / "api.token").exists():
                read_token(d)  # raises ConfigError on a half-written token
        lengths_seen.add(len(peerstore.load(root)))
        assert lengths_seen <= {0, 5, peerstore.MAX_PEERS}, lengths_seen
    assert {5, peerstore.MAX_PEERS} <= lengths_seen, "both lists were read back whole at some kill"
    survivor = max((d for d in (tmp_path / "round0").iterdir() if d.is_dir()), key=lambda d: int(d.name[3:]))
    on_disk = subprocess.run([CLI, "id", "--data-dir", str(survivor)], capture_output=True, text=True, check=True).stdout.strip()
    node = Proc([], survivor)
    try:
        assert node.peer_id == on_disk, "the node runs with the key the killed writer left"
    finally:
        node.stop()
