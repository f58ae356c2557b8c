"""A node restarted while its bootstraps are all down rejoins through the peers it remembered
(overlay/node/peerstore.py), and a damaged peers file costs nothing but the memory."""

from __future__ import annotations

import json

import pytest
import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from overlay.core.records import open_peer_record, peer_id_from_public_key, peer_id_to_str, record_key
from overlay.node import peerstore
from tests.conftest import wait_for
from tests.loopback.nodes import cluster

pytestmark = pytest.mark.timeout(90)


async def test_a_restarted_node_whose_bootstrap_is_down_rejoins_through_remembered_peers(tmp_path):
    async with cluster(tmp_path) as c:
        boot = await c.start(dht_mode="server")
        others = [await c.start(join=boot, dht_mode="server") for _ in range(2)]
        node = await c.start(join=boot, dht_mode="server")
        await wait_for(lambda: node.joined.is_set() and all(o.peer_id_bytes in node.core.table for o in others),
                       what="the node knows the others")
        data_dir, bootstrap = node.config.data_dir, node.config.bootstrap
        node.stop()
        await node.stopped.wait()
        assert {o.peer_id_bytes for o in others} <= {p.peer_id for p in peerstore.load(data_dir)}, "saved at shutdown"
        boot.stop()
        await boot.stopped.wait()

        again = await c.start(data_dir=data_dir, bootstrap=bootstrap, dht_mode="server")
        await wait_for(lambda: again.joined.is_set(), timeout=30, what="rejoined without its bootstrap")
        assert all(o.peer_id_bytes in again.core.table for o in others)

        def republished() -> bool:
            values = [o.core.records.get(record_key(again.peer_id_bytes), trio.current_time()) for o in others]
            return any(v is not None and open_peer_record(v).seq == again.record.seq for v in values)

        await wait_for(republished, what="its new record stored on the remembered peers")
        (configured,) = again.status()["bootstraps"]
        assert not configured["connected"] and configured["last_error"], "the configured bootstrap is still down"


def test_a_damaged_or_hostile_peers_file_is_skipped(tmp_path):
    path = tmp_path / peerstore.FILE
    path.write_text("{not json")
    assert peerstore.load(tmp_path) == []
    path.write_text(json.dumps({"peers": {"a": 1}}))
    assert peerstore.load(tmp_path) == []
    path.write_bytes(b" " * (peerstore.MAX_FILE + 1))
    assert peerstore.load(tmp_path) == []

    peer = peer_id_to_str(peer_id_from_public_key(Ed25519PrivateKey.generate().public_key()))
    good = "/ip4/198.18.0.9/tcp/4001"
    entries = [{"peer_id": "not-a-peer-id", "addrs": [good]}, {"peer_id": peer, "addrs": ["/bogus"]},
               {"peer_id": peer, "addrs": [good] * 10}, {"peer_id": peer}, "junk"] * 10
    path.write_text(json.dumps({"version": 1, "peers": entries}))
    loaded = peerstore.load(tmp_path)
    assert loaded and len(loaded) <= peerstore.MAX_PEERS
    assert all(len(p.addrs) == peerstore.MAX_ADDRS for p in loaded), "the good entries kept, with at most MAX_ADDRS"
