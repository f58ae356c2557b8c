"""The node: host, DHT, peer record, join loop and dial-by-peer-ID, assembled and run under trio."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

import ifaddr
import multiaddr
import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from libp2p.host.ping import ID as PING_PROTOCOL
from libp2p.peer.id import ID

from overlay.config import Config
from overlay.dht import DhtService
from overlay.dialer import Dialer, strip_p2p
from overlay.errors import DialError, NotFoundError, RecordError
from overlay.host import build_host
from overlay.identity import load_or_create_key
from overlay.kademlia.core import KadConfig, Kademlia
from overlay.kademlia.store import NamespacedValidator
from overlay.kademlia.wire import PeerInfo
from overlay.metrics import Registry
from overlay.records import MAX_RECORD_ADDRS, PeerRecord, PeerRecordValidator, open_peer_record, peer_id_from_public_key, record_key, seal_peer_record

log = logging.getLogger(__name__)

BOOTSTRAP_BACKOFF = (1.0, 60.0)  # first retry, cap
BOOTSTRAP_CHECK = 30.0  # how often a joined node checks that its bootstraps are still there
ADDRESS_CHECK_INTERVAL = 10.0
PING_TIMEOUT = 5.0


def expand_unspecified(addrs: list[multiaddr.Multiaddr]) -> list[multiaddr.Multiaddr]:
    """Replace 0.0.0.0 / :: listen addresses by the machine's interface addresses.

    Loopback is kept only when the machine has nothing else, so published records carry
    addresses other nodes can use.
    """
    v4, v6 = [], []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            (v6 if isinstance(ip.ip, tuple) else v4).append(ip.ip[0] if isinstance(ip.ip, tuple) else ip.ip)
    out: list[multiaddr.Multiaddr] = []
    for addr in addrs:
        parts = str(addr).split("/")
        if len(parts) > 2 and parts[1] in ("ip4", "ip6") and parts[2] in ("0.0.0.0", "::"):
            candidates = v4 if parts[1] == "ip4" else [ip for ip in v6 if not ip.startswith("fe80")]
            usable = [ip for ip in candidates if ip not in ("127.0.0.1", "::1")] or candidates
            out.extend(multiaddr.Multiaddr("/".join(parts[:2] + [ip] + parts[3:])) for ip in usable)
        else:
            out.append(addr)
    return out


@dataclass
class BootstrapState:
    addr: multiaddr.Multiaddr
    peer_id: ID
    last_error: str = ""
    attempts: int = 0
    next_try: float = 0.0
    backoff: float = BOOTSTRAP_BACKOFF[0]


class Node:
    def __init__(self, config: Config, key: Ed25519PrivateKey | None = None) -> None:
        self.config = config
        self.key = key or load_or_create_key(config.data_dir)
        self.peer_id_bytes = peer_id_from_public_key(self.key.public_key())
        self.peer_id = ID(self.peer_id_bytes)
        self.host = build_host(self.key, config.listen, config.max_connections)
        self.metrics = Registry()
        self.dialer = Dialer(self.host)
        validator = NamespacedValidator({b"peer": PeerRecordValidator()})
        self.server = config.dht_mode != "client"
        self.core = Kademlia(PeerInfo(self.peer_id_bytes), validator, KadConfig(), server=self.server)
        self.dht = DhtService(self.host, self.core, self.dialer, config.network, self.metrics)
        self.bootstraps = [
            BootstrapState(strip_p2p(a), pid)
            for a in config.bootstrap
            if (pid := ID.from_base58(a.value_for_protocol("p2p"))) != self.peer_id  # a shared config may list us
        ]
        self.joined = trio.Event()  # set once a bootstrap was reached and our record published
        self.started = trio.Event()
        self.stopped = trio.Event()
        self._scope = trio.CancelScope()
        self.record: PeerRecord | None = None
        self.start_time = time.time()
        self.bytes = self.metrics.counter("overlay_stream_bytes_total", "Payload bytes of the node's own protocols")
        self.metrics.gauge("overlay_peers", "Connected peers", lambda: len(self.connected_peers()))
        self.metrics.gauge("overlay_dial_failures_total", "Dials where every address failed", lambda: self.dialer.stats.failures)

    # ---- lifecycle ---------------------------------------------------------------------------

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled or stop()ped."""
        try:
            with self._scope:
                async with self.host.run(listen_addrs=list(self.config.listen)):
                    async with trio.open_nursery() as nursery:
                        await nursery.start(self.dht.run)
                        await self.publish_record()
                        nursery.start_soon(self._join_loop)
                        nursery.start_soon(self._watch_addresses)
                        self.started.set()
                        task_status.started()
        finally:
            self.stopped.set()

    def stop(self) -> None:
        self._scope.cancel()

    def listen_addrs(self) -> list[multiaddr.Multiaddr]:
        """The addresses we publish: where we listen, unspecified ones expanded."""
        return expand_unspecified([strip_p2p(a) for a in self.host.get_addrs()])

    def full_addrs(self) -> list[str]:
        return [f"{a}/p2p/{self.peer_id}" for a in self.listen_addrs()]

    def connected_peers(self) -> list[ID]:
        return list(self.host.get_network().get_connections_map())

    # ---- peer record -------------------------------------------------------------------------

    async def publish_record(self) -> int:
        """Sign and publish our current addresses; returns how many peers stored the record."""
        addrs = self._record_addrs()
        if len(addrs) == MAX_RECORD_ADDRS:
            log.info("the peer record carries at most %d addresses; further ones are left out", MAX_RECORD_ADDRS)
        seq = max((self.record.seq + 1) if self.record else 0, time.time_ns() // 1000)
        self.record = PeerRecord(self.peer_id_bytes, seq, addrs)
        self.core.set_addrs(addrs)
        envelope = seal_peer_record(self.record, self.key)
        return await self.dht.publish(record_key(self.peer_id_bytes), envelope)

    def _record_addrs(self) -> tuple[bytes, ...]:
        """Our listen addresses as the record carries them: at most MAX_RECORD_ADDRS, which a
        host with many interfaces (container bridges, several IPv6 prefixes) can exceed."""
        return tuple(a.to_bytes() for a in self.listen_addrs())[:MAX_RECORD_ADDRS]

    async def _watch_addresses(self) -> None:
        while True:
            await trio.sleep(ADDRESS_CHECK_INTERVAL)
            if self.record is not None and self._record_addrs() != self.record.addrs:
                log.info("addresses changed; publishing a new peer record")
                await self.publish_record()

    # ---- joining -----------------------------------------------------------------------------

    async def _join_loop(self) -> None:
        """Reach the bootstraps (retrying with backoff), then fill the table and publish.

        A bootstrap counts as reached once it answers our DHT ping and sits in the routing
        table, so a node of another network (its DHT protocol ID differs) is reported as such.
        Runs for the node's lifetime: when a bootstrap drops out it is tried again, and each
        newly reached bootstrap triggers a fresh lookup of our own ID and a republish.
        """
        while True:
            due = [b for b in self.bootstraps if not self._in_table(b) and b.next_try <= trio.current_time()]
            before = sum(self._in_table(b) for b in self.bootstraps)
            async with trio.open_nursery() as nursery:
                for b in due:
                    nursery.start_soon(self._try_bootstrap, b)
            if sum(self._in_table(b) for b in self.bootstraps) > before:
                await self.dht.bootstrap()
                stored = await self.publish_record()
                log.info("joined: %d peers in the routing table, record stored on %d", len(self.core.table), stored)
                self.joined.set()
            now = trio.current_time()
            wake = min((b.next_try for b in self.bootstraps if not self._in_table(b)), default=now + BOOTSTRAP_CHECK)
            await trio.sleep(min(max(wake - now, 0.5), BOOTSTRAP_CHECK))

    def _in_table(self, b: BootstrapState) -> bool:
        return b.peer_id.to_bytes() in self.core.table

    async def _try_bootstrap(self, b: BootstrapState) -> None:
        b.attempts += 1
        try:
            await self.dialer.connect(b.peer_id, [b.addr])
            self.dht.add_address(PeerInfo(b.peer_id.to_bytes(), (b.addr.to_bytes(),)))
            with trio.move_on_after(self.core.config.request_timeout):
                while not self._in_table(b):
                    await trio.sleep(0.01)
            if not self._in_table(b):
                raise DialError(f"connected, but it does not answer {self.dht.protocol} (another --network?)")
        except DialError as e:
            b.last_error = str(e)
            b.next_try = trio.current_time() + b.backoff
            b.backoff = min(b.backoff * 2, BOOTSTRAP_BACKOFF[1])
            log.warning("bootstrap %s not reached (retry in %.0fs): %s", b.addr, b.next_try - trio.current_time(), e)
            return
        b.last_error, b.backoff = "", BOOTSTRAP_BACKOFF[0]

    # ---- finding and reaching peers ---------------------------------------------------------

    async def find(self, peer_id: ID, exhaustive: bool = False) -> PeerRecord:
        """The newest valid peer record of `peer_id` in the DHT. Raises NotFoundError."""
        if peer_id == self.peer_id and self.record is not None:
            return self.record
        result = await self.dht.get_value(record_key(peer_id.to_bytes()), quorum=0 if exhaustive else 1)
        best: PeerRecord | None = None
        for _, value in result.values:
            try:
                record = open_peer_record(value)
            except RecordError:
                continue
            if record.peer_id == peer_id.to_bytes() and (best is None or record.seq > best.seq):
                best = record
        if best is None:
            raise NotFoundError(f"no peer record for {peer_id} in the DHT ({result.requests} peers asked)")
        return best

    async def connect(self, peer_id: ID) -> multiaddr.Multiaddr | None:
        """Dial by peer ID: look the record up, try its addresses; on failure look for a newer record."""
        if self.dialer.connected(peer_id):
            return None
        record = await self.find(peer_id)
        try:
            return await self.dialer.connect(peer_id, [multiaddr.Multiaddr(a) for a in record.addrs])
        except DialError:
            newer = await self.find(peer_id, exhaustive=True)
            if newer.seq <= record.seq:
                raise
            return await self.dialer.connect(peer_id, [multiaddr.Multiaddr(a) for a in newer.addrs])

    async def ping(self, peer_id: ID) -> float:
        """Round-trip time of one libp2p ping (32 random bytes echoed), in seconds."""
        await self.connect(peer_id)
        payload = os.urandom(32)
        try:
            with trio.fail_after(PING_TIMEOUT):
                stream = await self.host.new_stream(peer_id, [PING_PROTOCOL])
                try:
                    start = trio.current_time()
                    await stream.write(payload)
                    echoed = b""
                    while len(echoed) < len(payload):
                        echoed += await stream.read(len(payload) - len(echoed))
                    rtt = trio.current_time() - start
                finally:
                    with trio.move_on_after(1):
                        await stream.close()
        except trio.TooSlowError:
            raise DialError(f"ping {peer_id}: no answer within {PING_TIMEOUT:.0f}s") from None
        except Exception as e:  # noqa: BLE001 - stream failures come in many library types
            raise DialError(f"ping {peer_id}: {type(e).__name__}: {e}") from None
        if echoed != payload:
            raise DialError(f"ping {peer_id}: echo did not match")
        self.bytes.inc(64, protocol="ping")
        return rtt

    # ---- views -------------------------------------------------------------------------------

    def health(self) -> dict[str, str]:
        """Seed 003's health states; "no peers" only matters when bootstraps are configured."""
        if self.bootstraps and not self.connected_peers():
            return {"healthy": "degraded", "reason": "no peers"}
        return {"healthy": "good", "reason": "healthy"}

    def status(self) -> dict:
        return {
            "peer_id": str(self.peer_id),
            "network": self.config.network,
            "addrs": self.full_addrs(),
            "dht_mode": "server" if self.server else "client",
            "routing_table": len(self.core.table),
            "peers": len(self.connected_peers()),
            "records": len(self.core.records),
            "record_seq": self.record.seq if self.record else None,
            "uptime": round(time.time() - self.start_time, 1),
            "health": self.health(),
            "bootstraps": [
                {"addr": f"{b.addr}/p2p/{b.peer_id}", "connected": self.dialer.connected(b.peer_id),
                 "in_routing_table": self._in_table(b), "attempts": b.attempts, "last_error": b.last_error}
                for b in self.bootstraps
            ],
        }

    def peers(self) -> list[dict]:
        store = self.host.get_peerstore()
        out = []
        for pid in self.connected_peers():
            out.append({
                "peer_id": str(pid),
                "addrs": [str(strip_p2p(a)) for a in store.addrs(pid)],
                "in_routing_table": pid.to_bytes() in self.core.table,
            })
        return sorted(out, key=lambda p: p["peer_id"])
