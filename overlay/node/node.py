"""The node: host, DHT, peer record, join loop, reachability, signalling, relay and dial-by-peer-ID,
assembled and run under trio.

Reachability decides the node's role. A public node (or one that cannot tell yet, such as the
first node of a network) answers DHT requests, serves signalling and relaying, and announces
itself as a signalling node in the DHT. A node behind NAT asks the DHT only, registers with
`signaling_nodes` signalling nodes, and publishes one relay address per registration instead
of its unreachable listen addresses.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass
from typing import Any

import ifaddr
import multiaddr
import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from libp2p.host.ping import ID as PING_PROTOCOL
from libp2p.peer.id import ID

from aiortc import RTCIceServer

from nat.gateway import default_gateway
from nat.lan_io import LanDiscovery
from nat.portmap import keep_port_mapping, mappers_for
from nat.reachability import RATE_INTERVAL, Reachability, ReachabilityMachine
from nat.reachability_io import ReachabilityService
from nat.relay import RelayLimits, RelayService
from nat.stun_io import StunServerCounters, probe_nat, serve_stun_on_tcp_ports
from nat.traversal import Traversal, path_of
from nat.webrtc import WebRtcConfig
from overlay.channels import reservation
from overlay.channels.service import ChannelService
from overlay import __version__
from overlay.core.addrs import dialable, ip_scope, strip_p2p
from overlay.core.errors import ConfigError, DialError, NotFoundError, SelfDialError
from overlay.core.fdlimits import FD_EXHAUSTION, is_capacity_error
from overlay.core.identity import load_or_create_key
from overlay.core.metrics import Registry, trio_tasks
from overlay.core.records import (
    MAX_RECORD_ADDRS, PeerRecord, PeerRecordValidator, peer_id_from_public_key, record_key, seal_peer_record,
)
from overlay.core.peer import PeerInfo
from overlay.gateway import hosts
from overlay.gateway.service import Gateway
from overlay.kademlia.core import Kademlia
from overlay.kademlia.io import DhtService
from overlay.kademlia.routing import key_position
from overlay.kademlia.store import NamespacedValidator
from overlay.messagenet.service import RelayerService
from overlay.node.config import Config, parse_host_port
from overlay.node import peerstore
from overlay.node.namespaces import PROVIDER_NAMESPACES
from overlay.node.roles import Bootstrap, Join, JoinAction, Joiner, TryBootstrap, Wake, best_record, record_addrs
from overlay.peermsg.service import PeerMessaging
from overlay.transport.dialer import Dialer, known_addrs
from overlay.transport.host import build_host, close_quietly, listenable
from overlay.transport.liveness import ConnectionLiveness
from signaling.service import SignalingService

log = logging.getLogger(__name__)

ADDRESS_CHECK_INTERVAL = 10.0
PING_TIMEOUT = 5.0
LAN_DIAL_TIMEOUT = 3.0
REACHABILITY_RECHECK = (30.0, 600.0)  # while unknown, once known
MAX_STUN_SERVERS = 6


_last_interfaces: tuple[list[str], list[str]] = ([], [])
_reported_errnos: set[int | None] = set()


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


def interface_ips() -> tuple[list[str], list[str]]:
    """The machine's (IPv4, IPv6) addresses.

    getifaddrs() opens a netlink socket, so it fails while the process is out of descriptors
    (EMFILE, a full API or a flood of peers): the last answer stands in until it works again, and
    the failure is counted (overlay/core/fdlimits.py), never raised into the node.
    """
    global _last_interfaces
    try:
        adapters = ifaddr.get_adapters()
    except OSError as e:
        if is_capacity_error(e):
            FD_EXHAUSTION.note("interfaces", e, "the last known interface addresses stand in")
        elif e.errno not in _reported_errnos:
            _reported_errnos.add(e.errno)
            log.warning("cannot list the network interfaces (%s); the last known addresses stand in", e)
        return _last_interfaces
    v4, v6 = [], []
    for adapter in adapters:
        for ip in adapter.ips:
            (v6 if isinstance(ip.ip, tuple) else v4).append(ip.ip[0] if isinstance(ip.ip, tuple) else ip.ip)
    _last_interfaces = (v4, v6)
    return v4, v6


def expand_unspecified(addrs: list[multiaddr.Multiaddr]) -> list[multiaddr.Multiaddr]:
    """Replace 0.0.0.0 / :: listen addresses by the machine's interface addresses.

    Loopback is kept only when the machine has nothing else, so published records carry
    addresses other nodes can use. Interfaces are listed only when an address needs them.
    """
    interfaces: tuple[list[str], list[str]] | None = None
    out: list[multiaddr.Multiaddr] = []
    for addr in addrs:
        parts = str(addr).split("/")
        if len(parts) > 2 and parts[1] in ("ip4", "ip6") and parts[2] in ("0.0.0.0", "::"):
            if interfaces is None:
                interfaces = interface_ips()
            v4, v6 = interfaces
            candidates = v4 if parts[1] == "ip4" else [ip for ip in v6 if not ip.startswith("fe80")]
            usable = [ip for ip in candidates if ip not in ("127.0.0.1", "::1")]
            if not usable and not (parts[1] == "ip6" and any(ip != "127.0.0.1" for ip in v4)):
                usable = candidates  # loopback, when the machine has nothing else at all
            out.extend(multiaddr.Multiaddr("/".join(parts[:2] + [ip] + parts[3:])) for ip in usable)
        else:
            out.append(addr)
    return out


@dataclass(eq=False)
class BootstrapState(Bootstrap):
    """A configured bootstrap: where to dial it; its retry bookkeeping is the join core's."""

    addr: multiaddr.Multiaddr
    peer_id: ID


class Node:
    def __init__(self, config: Config, key: Ed25519PrivateKey | None = None) -> None:
        self.config = config
        self.key = key or load_or_create_key(config.data_dir)
        self.peer_id_bytes = peer_id_from_public_key(self.key.public_key())
        self.peer_id = ID(self.peer_id_bytes)
        self.listen, left_out = listenable(config.listen)
        for addr, why in left_out:
            log.warning("not listening on %s: %s", addr, why)
        if not self.listen:
            raise ConfigError("listen: none of the addresses can be bound on this machine")
        self.host = build_host(self.key, self.listen, config.limits(), self._is_known)
        self.metrics = Registry()
        resources = self.host.resources
        self.metrics.counts("overlay_resource_refused_total", "Inbound connections and streams the resource manager refused",
                            "reason", lambda: resources.refused)
        self.metrics.gauge("overlay_resource_pending_handshakes", "Inbound connections still in their handshake",
                           lambda: resources.pending)
        self.metrics.gauge("overlay_resource_inbound_connections", "Open inbound connections", lambda: resources.inbound)
        self.metrics.gauge("overlay_resource_inbound_streams", "Open inbound streams", lambda: resources.streams)
        self.dialer = Dialer(self.host)
        self.liveness = ConnectionLiveness(self.host, self._redial, interval=config.peer_ping_interval)
        self.lan = LanDiscovery(self.peer_id, config.network, self.dialer, self.listen_addrs, self._lan_peer) if config.mdns else None
        validator = NamespacedValidator({b"peer": PeerRecordValidator(),
                                         reservation.NAMESPACE: reservation.ReservationValidator(wall_ms),
                                         hosts.NAMESPACE: hosts.HostRecordValidator(wall_ms)})
        self.core = Kademlia(PeerInfo(self.peer_id_bytes), validator, config.kad_config(), server=config.dht_mode != "client",
                            provider_namespaces=PROVIDER_NAMESPACES)
        self.dht = DhtService(self.host, self.core, self.dialer, config.network, self.metrics)
        self._reachability = ReachabilityMachine(None if config.reachability == "auto" else Reachability(config.reachability))
        self.observed: tuple[str, ...] = ()
        self.port_mapping: dict[str, object] | None = None
        self.mapped_addrs: list[multiaddr.Multiaddr] = []
        self._recheck = trio.Event()
        self.network: dict[str, Any] = {"changes": 0, "last_change": None, "last_reason": None}
        self.reachability_service = ReachabilityService(self.host, config.network, self.metrics)
        self.signaling = SignalingService(self.host, self.dialer, config.network, self.metrics, want=config.signaling_nodes)
        self.signaling.on_registrations = lambda live: self._spawn(self.publish_record)
        self.signaling.on_need_candidates = lambda: self._spawn(self._find_signaling_nodes)
        self.relay = RelayService(
            self.host, config.network, self.metrics, self.signaling.server.is_registered, self.signaling.is_my_relay,
            RelayLimits(bandwidth=config.relay_bandwidth),
        )
        self.stun = StunServerCounters()
        self.metrics.gauge("overlay_stun_answered_total", "STUN binding requests answered", lambda: self.stun.answered)
        self.metrics.gauge("overlay_stun_dropped_total", "STUN datagrams dropped (malformed or over the rate limit)",
                           lambda: self.stun.dropped_malformed + self.stun.dropped_rate)
        self.traversal = Traversal(
            self.host, self.dialer, self.signaling, self.relay, webrtc_config(config), self.metrics, self._ice_servers_via
        )
        self.bootstraps = [
            BootstrapState(strip_p2p(a), pid)
            for a in config.bootstrap
            if (pid := ID.from_base58(a.value_for_protocol("p2p"))) != self.peer_id  # a shared config may list us
        ]
        self.remembered = self._remembered_peers()
        self.channels = ChannelService(str(self.peer_id), self.key, self.host, self.connect, self.connected_peers, self.ping,
                                       self.dht, config.network, self.metrics, want=config.inm_peers, token=config.network_token,
                                       expects_peers=bool(self.bootstraps or self.remembered), client_queue=config.client_queue)
        self.relayers = RelayerService(self.channels, self.key, self.metrics, hold=config.relayer_hold,
                                       socket_queue=config.client_queue)
        self.peermsg = PeerMessaging(self.host, self.connect, self.connected_peers, config.network, self.metrics,
                                     trusted=frozenset(config.trusted_peers))
        self.gateway = Gateway(self.channels, self.dht, self.connect, self.metrics, self.key)
        self.joined = trio.Event()  # set once a bootstrap was reached and our record published
        self.started = trio.Event()
        self.stopped = trio.Event()
        self._scope = trio.CancelScope()
        self._nursery: trio.Nursery | None = None
        self.record: PeerRecord | None = None
        self.start_time = time.time()
        self.bytes = self.metrics.counter("overlay_stream_bytes_total", "Payload bytes of the node's own protocols")
        self.metrics.gauge("overlay_peers", "Connected peers", lambda: len(self.connected_peers()))
        self.metrics.gauge("overlay_connections_closed_dead_total", "Connections closed because their liveness ping failed",
                           lambda: self.liveness.stats.closed)
        self.metrics.gauge("overlay_dial_failures_total", "Dials where every address failed", lambda: self.dialer.stats.failures)
        # what a leak grows first (benchmarks/soak.py samples them)
        self.metrics.gauge("overlay_trio_tasks", "Trio tasks alive in the node's process", trio_tasks)
        self.metrics.gauge("overlay_streams_open", "Streams open on all connections, both directions",
                           lambda: sum(len(c.get_streams()) for c in self.host.get_network().get_connections()))

    # ---- lifecycle ---------------------------------------------------------------------------

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled or stop()ped."""
        try:
            with self._scope:
                async with self.host.run(listen_addrs=self.listen):
                    async with trio.open_nursery() as nursery:
                        self._nursery = nursery
                        await nursery.start(self.dht.run)
                        await nursery.start(self.liveness.run)
                        await nursery.start(self.signaling.run)
                        await nursery.start(self.traversal.run)
                        await nursery.start(self.relay.run)
                        await nursery.start(self.channels.run)
                        await nursery.start(self.peermsg.run)
                        await nursery.start(self.gateway.run)
                        nursery.start_soon(serve_stun_on_tcp_ports, self._tcp_ipv4(), self.stun)
                        await self._set_reachability(self._reachability.start(), changed=False)
                        await self.publish_record()
                        nursery.start_soon(self._join_loop)
                        nursery.start_soon(self._remember_peers_loop)
                        nursery.start_soon(self._watch_addresses)
                        nursery.start_soon(self._watch_reachability)
                        if self.lan is not None:
                            nursery.start_soon(self.lan.run)
                        self.started.set()
                        task_status.started()
        finally:
            if self.core.table:
                self.remember_peers()
            with trio.CancelScope(shield=True):  # peers see the connections end, also in-process
                await close_quietly(self.host)
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

    def _spawn(self, fn) -> None:
        if self._nursery is not None:
            self._nursery.start_soon(fn)

    # ---- reachability and signalling ---------------------------------------------------------

    @property
    def reachability(self) -> Reachability:
        return self._reachability.state

    @property
    def public(self) -> bool:
        """Unknown counts as public: the first node of a network must serve the others."""
        return self.reachability is not Reachability.PRIVATE

    async def _set_reachability(self, state: Reachability, changed: bool = True) -> None:
        """Take the role `state` asks for: serve DHT, signalling and relay, or register with others.
        Called when the machine starts or says the state changed (re-checks mostly confirm it)."""
        if self.config.dht_mode == "auto":
            self.dht.set_server(self.public)
        self.signaling.serve(self.public)
        if state is Reachability.PRIVATE:
            self._spawn(self._find_signaling_nodes)
            if self.config.port_mapping and self.port_mapping is None:
                self.port_mapping = {"state": "trying"}
                self._spawn(self._map_ports)
        if changed:
            log.info("reachability: %s", state)
            await self.publish_record()

    async def _watch_reachability(self) -> None:
        """Ask peers to dial us back (unless forced by config); re-check now and then."""
        if self.config.reachability != "auto":
            return
        while True:
            peers = [p for p in self.connected_peers() if self.dialer.connected(p, direct_only=True)]
            if not peers:
                await trio.sleep(1.0)
                continue
            bootstrap_ids = {b.peer_id for b in self.bootstraps}
            peers.sort(key=lambda p: p not in bootstrap_ids)
            asked_at = trio.current_time()
            verdict = await self.reachability_service.ask(peers, self._listen_ports())
            self.observed = verdict.observed
            changed = self._reachability.on_verdict(verdict.reachability)
            if changed is not None:
                await self._set_reachability(changed)
            with trio.move_on_after(REACHABILITY_RECHECK[verdict.reachability is not Reachability.UNKNOWN]):
                await self._recheck.wait()
            self._recheck = trio.Event()
            await trio.sleep_until(asked_at + RATE_INTERVAL + 1.0)  # sooner, the peers asked would refuse

    def _listen_ports(self) -> list[tuple[str, int]]:
        """Where dial-back should try us: our listen ports, and the ports our gateway mapped."""
        ports: list[tuple[str, int]] = []
        for addr in self.mapped_addrs + list(self.host.get_addrs()):
            names = [p.name for p in addr.protocols()]
            if "tcp" in names and "p2p-circuit" not in names:
                entry = ("ws" if "ws" in names else "tcp", int(addr.value_for_protocol("tcp")))
                if entry not in ports:
                    ports.append(entry)
        return ports[:4]

    async def _map_ports(self) -> None:
        """Ask the gateway to forward our TCP port (PCP, NAT-PMP or UPnP-IGD); a mapped address
        joins our record and reachability is checked again through it."""
        tcp = self._tcp_ipv4()
        if not tcp:
            self.port_mapping = {"state": "no TCP listener"}
            return

        def changed(state: dict[str, object], addr: multiaddr.Multiaddr | None) -> None:
            self.port_mapping = state
            if addr is not None and self.mapped_addrs != [addr]:
                log.info("gateway maps %s to our port", addr)
                if self.mapped_addrs:
                    self._network_changed(f"the gateway maps another address ({addr})")
                self.mapped_addrs = [addr]
                self._recheck.set()

        gateway = default_gateway()
        if gateway is None:
            self.port_mapping = {"state": "no gateway"}
            return
        mappers = mappers_for(gateway, self.config.port_mapping_protocols)
        await keep_port_mapping(int(tcp[0].value_for_protocol("tcp")), changed, gateway, mappers)

    async def _find_signaling_nodes(self) -> None:
        """Candidates for registration: the DHT servers of our routing table (public nodes that
        answered us, a few per network at most), and our bootstraps as the fallback. A lookup of
        our own ID first fills the table near us, where the closest candidates are."""
        with trio.move_on_after(30):
            await self.dht.query(lambda now: self.core.find_node(self.peer_id_bytes, now))
        own = key_position(self.peer_id_bytes)
        table = [c.info for c in self.core.table.closest(own, self.signaling.registrations.max_candidates)]
        bootstraps = [PeerInfo(b.peer_id.to_bytes(), (b.addr.to_bytes(),)) for b in self.bootstraps]
        self.signaling.offer_candidates(table, bootstraps)

    def _tcp_ipv4(self) -> list[multiaddr.Multiaddr]:
        return [a for a in self.listen_addrs() if [p.name for p in a.protocols()] == ["ip4", "tcp"]]

    def stun_servers(self) -> list[tuple[str, int]]:
        """Where netcheck asks: configured STUN servers, then our bootstraps and signalling nodes
        (every public node answers STUN on its TCP port number), IPv4, never anything else."""
        servers = [parse_host_port(s, "stun_servers") for s in self.config.stun_servers]
        addrs = [b.addr for b in self.bootstraps]
        for peer in [b.peer_id for b in self.bootstraps] + [ID(p) for p in self.signaling.live]:
            addrs += self._peer_addrs(peer)
        for addr in map(strip_p2p, addrs):
            if [p.name for p in addr.protocols()] == ["ip4", "tcp"]:
                servers.append((addr.value_for_protocol("ip4"), int(addr.value_for_protocol("tcp"))))
        return list(dict.fromkeys(servers))[:MAX_STUN_SERVERS]

    async def netcheck(self) -> dict[str, object]:
        """What `overlay-node netcheck` shows, in the spirit of `tailscale netcheck`."""
        servers = self.stun_servers()
        nat = await probe_nat(servers) if servers else None
        return {
            "reachability": self.reachability,
            "observed_addrs": list(self.observed),
            "udp": nat.udp if nat else None,
            "nat_type": nat.nat_type if nat else "unknown",
            "mapping": nat.mapping if nat else "unknown",
            "filtering": nat.filtering if nat else "unknown",
            "public_addrs": [f"{ip}:{port}" for ip, port in nat.public_addrs] if nat else [],
            "notes": list(nat.notes) if nat else ["no STUN server known: no bootstrap, registration or configured server"],
            "stun_servers": [f"{ip}:{port}" for ip, port in servers],
            "port_mapping": self.port_mapping,
            "ipv6": self._ipv6(),
            "signaling": {
                "serving": self.public,
                "registered_peers": len(self.signaling.server.registrations),
                "registered_with": [
                    {"peer_id": str(ID(pid)), "rtt_ms": None if r.rtt is None else round(r.rtt * 1000, 2),
                     "age_s": round(self.signaling.now() - r.since, 1)}
                    for pid, r in self.signaling.live.items()
                ],
            },
        }

    def _ipv6(self) -> dict[str, object]:
        """Whether we listen on IPv6, at which addresses, and which of those are global (the
        ones other homes can reach, through their firewalls' holes)."""
        ips = sorted({str(a).split("/")[2] for a in self.listen_addrs() if str(a).startswith("/ip6/")})
        return {"listening": any(str(a).startswith("/ip6/") for a in self.listen), "addrs": ips,
                "global": [ip for ip in ips if ip_scope(ip) == "global"]}

    def _ice_servers_via(self, via: ID, addrs: list[multiaddr.Multiaddr]) -> tuple[RTCIceServer, ...]:
        """STUN at the signalling node a WebRTC session is set up through: every public node
        answers STUN on the UDP port numbered like its TCP port. Its address comes from the
        record that named it, our registration with it, or the peerstore."""
        registration = self.signaling.live.get(via.to_bytes())
        known = list(addrs) + ([multiaddr.Multiaddr(a) for a in registration.peer.addrs] if registration else [])
        for addr in map(strip_p2p, known + self._peer_addrs(via)):
            names = [p.name for p in addr.protocols()]
            if names in (["ip4", "tcp"], ["ip6", "tcp"]):
                ip, port = addr.value_for_protocol(names[0]), addr.value_for_protocol("tcp")
                if ip not in ("0.0.0.0", "::"):
                    return (RTCIceServer(f"stun:{ip}:{port}"),)
        return ()

    def _peer_addrs(self, peer: ID) -> list[multiaddr.Multiaddr]:
        return known_addrs(self.host, peer)

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
        return record_addrs(self.public, self.mapped_addrs + self.listen_addrs(),
                            (registration.peer for registration in self.signaling.live.values()))

    async def _watch_addresses(self) -> None:
        """Republish when the record's addresses change; when our interfaces' do, the network
        changed: re-check reachability through the new ones. (A new mapped address is reported
        by the port mapping at once, `_map_ports`.)"""
        own = None
        while True:
            await trio.sleep(ADDRESS_CHECK_INTERVAL)
            now_own = tuple(self.listen_addrs())
            if own is not None and now_own != own:
                self._network_changed("our addresses changed")
            own = now_own
            if self.record is not None and self._record_addrs() != self.record.addrs:
                log.info("addresses changed; publishing a new peer record")
                await self.publish_record()

    def _network_changed(self, why: str) -> None:
        log.info("network change: %s; re-checking reachability", why)
        self.network["changes"] += 1
        self.network["last_change"] = time.time()
        self.network["last_reason"] = why
        self._recheck.set()
        self._spawn(self._republish_after_change)

    async def _republish_after_change(self) -> None:
        """Publish our record again once the connections that died with the old network are
        closed (the liveness pings' window): a record published at the change went out over
        those dead connections and may have reached no one, and the DHT's own retry of a short
        publish backs off to minutes."""
        await trio.sleep(self.liveness.core.interval + self.liveness.timeout + 1.0)
        stored = await self.publish_record()
        log.info("republished our record after the network change: stored on %d peers", stored)

    # ---- joining -----------------------------------------------------------------------------

    async def _join_loop(self) -> None:
        """Carry out the join core's actions (overlay.node.roles.Joiner: who to try, when to
        retry, when to look our ID up and publish) for the node's lifetime. The tries of a
        round run together; the last one back brings the round's outcome."""
        join = Joiner([*self.bootstraps, *self.remembered], self._in_table, answer_wait=self.core.config.request_timeout)
        actions: list[JoinAction] = join.wake(trio.current_time())
        while True:
            if isinstance(actions[0], TryBootstrap):
                outcome: list[JoinAction] = []
                async with trio.open_nursery() as nursery:
                    for attempt in actions:
                        nursery.start_soon(self._try_bootstrap, join, attempt, outcome)
                actions = outcome
            elif isinstance(actions[0], Join):
                await self.dht.bootstrap()
                if self.reachability is Reachability.PRIVATE:  # the table is full now: better candidates
                    self._spawn(self._find_signaling_nodes)
                stored = await self.publish_record()
                log.info("joined: %d peers in the routing table, record stored on %d", len(self.core.table), stored)
                self.joined.set()
                actions = join.joined(trio.current_time())
            else:
                assert isinstance(actions[0], Wake)
                await trio.sleep_until(actions[0].at)
                actions = join.wake(trio.current_time())

    def _remembered_peers(self) -> list[BootstrapState]:
        """Peers of an earlier run (peerstore), at the first address we could dial, to try as
        bootstraps besides the configured ones."""
        configured = {b.peer_id for b in self.bootstraps}
        found = []
        for peer in peerstore.load(self.config.data_dir):
            pid = ID(peer.peer_id)
            addrs = [a for a in map(multiaddr.Multiaddr, peer.addrs) if dialable(a)]
            if pid != self.peer_id and pid not in configured and addrs:
                found.append(BootstrapState(strip_p2p(addrs[0]), pid, remembered=True))
        if found:
            log.info("remembered %d peers of an earlier run", len(found))
        return found

    def remember_peers(self) -> int:
        """Save the routing table's contacts, the most recently heard from first (peerstore)."""
        contacts = sorted(self.core.table.contacts(), key=lambda c: -c.last_seen)
        try:
            return peerstore.save(self.config.data_dir, [c.info for c in contacts])
        except OSError as e:
            log.warning("remembered peers: cannot write them in %s: %s", self.config.data_dir, e.strerror)
            return 0

    async def _remember_peers_loop(self) -> None:
        while True:
            await trio.sleep(peerstore.SAVE_INTERVAL)
            self.remember_peers()

    def _in_table(self, b: BootstrapState) -> bool:
        return b.peer_id.to_bytes() in self.core.table

    async def _try_bootstrap(
        self, join: Joiner[BootstrapState], attempt: TryBootstrap[BootstrapState], outcome: list[JoinAction]
    ) -> None:
        """Dial the bootstrap, ping it over the DHT and await its arrival in the routing table
        (on the adapter's signal, no polling); report to the join core either way."""
        b = attempt.bootstrap
        try:
            already = await self.dialer.connect(b.peer_id, [b.addr]) is None
            self.dht.add_address(PeerInfo(b.peer_id.to_bytes(), (b.addr.to_bytes(),)))
            with trio.move_on_after(attempt.wait):
                await self.dht.until(lambda: self._in_table(b))
            if not self._in_table(b):
                if already:  # a connection from before that carries nothing: the next try dials anew
                    await self.dialer.drop(b.peer_id, "it does not answer the DHT")
                raise DialError(f"connected, but it does not answer {self.dht.protocol} (another --network?)")
        except DialError as e:
            outcome += join.failed(b, str(e), trio.current_time())
            what = "remembered peer" if b.remembered else "bootstrap"
            log.warning("%s %s not reached (retry in %.0fs): %s", what, b.addr, b.next_try - trio.current_time(), e)
            return
        outcome += join.answered(b, trio.current_time())

    # ---- finding and reaching peers ---------------------------------------------------------

    async def find(self, peer_id: ID, exhaustive: bool = False) -> PeerRecord:
        """The newest valid peer record of `peer_id` in the DHT. Raises NotFoundError."""
        return (await self.find_with_hops(peer_id, exhaustive))[0]

    async def find_with_hops(self, peer_id: ID, exhaustive: bool = False) -> tuple[PeerRecord, int]:
        """`find`, and the lookup's hop count (LookupResult.hops; 0 when held locally)."""
        if peer_id == self.peer_id and self.record is not None:
            return self.record, 0
        result = await self.dht.get_value(record_key(peer_id.to_bytes()), quorum=0 if exhaustive else 1)
        best = best_record((value for _, value in result.values), peer_id.to_bytes())
        if best is None:
            raise NotFoundError(f"no peer record for {peer_id} in the DHT ({result.requests} peers asked)")
        return best, result.hops

    async def connect(self, peer_id: ID, timings: dict[str, float] | None = None) -> str | None:
        """Dial by peer ID: look the record up and follow the dial strategy (direct addresses,
        else a relay at once and a direct path in the background); on failure look for a newer
        record. Returns the first path ("direct" or "relayed"), None if already connected.
        `timings` receives the lookup's duration ("lookup_s"). SelfDialError for our own ID."""
        if peer_id == self.peer_id:
            raise SelfDialError(f"{peer_id} is this node's own peer ID")
        if self.dialer.connected(peer_id):
            return None
        if lan := (self.lan.addrs(peer_id) if self.lan is not None else ()):
            try:  # a peer in our home: at its LAN address (the router may not hairpin)
                await self.dialer.connect(peer_id, lan, timeout=LAN_DIAL_TIMEOUT, direct_only=True)
                return "direct"
            except DialError as e:
                log.info("LAN peer %s not reached at %s: %s", peer_id, ", ".join(map(str, lan)), e)
        start = trio.current_time()
        record = await self.find(peer_id)
        if timings is not None:
            timings["lookup_s"] = trio.current_time() - start
        try:
            return await self.traversal.connect(peer_id, [multiaddr.Multiaddr(a) for a in record.addrs])
        except DialError:
            newer = await self.find(peer_id, exhaustive=True)
            if newer.seq <= record.seq:
                raise
            return await self.traversal.connect(peer_id, [multiaddr.Multiaddr(a) for a in newer.addrs])

    async def _lan_peer(self, peer: ID, addrs: tuple[multiaddr.Multiaddr, ...]) -> None:
        """A LAN peer Noise proved (nat.lan_io): into the DHT. A node that joined no network
        through a bootstrap publishes its record then, so that its LAN peers can look it up."""
        self.dht.add_address(PeerInfo(peer.to_bytes(), tuple(a.to_bytes() for a in addrs)))
        if not self.joined.is_set():
            with trio.move_on_after(self.core.config.request_timeout):
                await self.dht.until(lambda: peer.to_bytes() in self.core.table)
            await self.publish_record()

    async def _redial(self, peer_id: ID) -> None:
        """Dial a peer again whose connection died (overlay.transport.liveness): by peer ID, so a
        record republished after its network changed gives the new addresses."""
        if not self.dialer.connected(peer_id):
            await self.connect(peer_id)

    async def ping(self, peer_id: ID) -> float:
        """Round-trip time of one libp2p ping (32 random bytes echoed), in seconds."""
        await self.connect(peer_id)
        return await self._ping_once(peer_id)

    async def first_stream(self, peer_id: ID) -> dict[str, object]:
        """Dial by peer ID and complete one ping on a new stream: how long each part took."""
        timings: dict[str, float] = {}
        start = trio.current_time()
        path = await self.connect(peer_id, timings)
        connected = trio.current_time()
        try:
            rtt = await self._ping_once(peer_id)
        except DialError:
            # The connection found may have been closing as we took it (the peer's own redial
            # replaced it, or it had just died): dial once more, as a user would.
            path = await self.connect(peer_id, timings)
            connected = trio.current_time()
            rtt = await self._ping_once(peer_id)
        done = trio.current_time()
        return {
            "peer_id": str(peer_id),
            "path": path or "already connected",
            "lookup_ms": round(timings.get("lookup_s", 0.0) * 1000, 2),
            "connect_ms": round((connected - start) * 1000, 2),
            "first_stream_ms": round((done - start) * 1000, 2),
            "rtt_ms": round(rtt * 1000, 3),
        }

    async def _ping_once(self, peer_id: ID) -> float:
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
        """WSRelay's health states, the most serious first; "no peers" only matters when
        bootstraps are configured (a lone node is healthy)."""
        problem = self.channels.health()
        if self.bootstraps and not self.connected_peers() and (problem is None or problem[0] != "bad"):
            problem = ("degraded", "no peers")
        if problem is not None:
            return {"healthy": problem[0], "reason": problem[1]}
        return {"healthy": "good", "reason": "healthy"}

    def _is_known(self, peer: ID) -> bool:
        """Peers whose inbound connections may use the reserve strangers cannot fill: those in
        our routing table, our signalling nodes, the bootstraps and the trusted peers."""
        return (peer.to_bytes() in self.core.table or self.signaling.is_my_relay(peer)
                or any(b.peer_id == peer for b in self.bootstraps) or str(peer) in self.config.trusted_peers)

    def status(self) -> dict:
        return {
            "peer_id": str(self.peer_id),
            "version": __version__,
            "network": self.config.network,
            "addrs": self.full_addrs(),
            "dht_mode": "server" if self.core.server else "client",
            "reachability": self.reachability,
            "observed_addrs": list(self.observed),
            "signaling": {
                "serving": self.public,
                "registered_peers": len(self.signaling.server.registrations),
                "registered_with": [str(ID(p)) for p in self.signaling.live],
            },
            "joined": self.joined.is_set(),
            "routing_table": len(self.core.table),
            "peers": len(self.connected_peers()),
            "records": len(self.core.records),
            # what strangers were refused, by reason
            "refused": {"connections": dict(self.host.resources.refused), "dht": dict(self.core.counters.refused)},
            "record_seq": self.record.seq if self.record else None,
            "record_addrs": [str(multiaddr.Multiaddr(a)) for a in self.record.addrs] if self.record else [],
            "uptime": round(time.time() - self.start_time, 1),
            "network_changes": dict(self.network),
            "liveness": asdict(self.liveness.stats),  # pings on each connection; the dead ones closed, redialed
            "lan": self.lan.status() if self.lan is not None else {"state": "off (mdns = false)"},
            "health": self.health(),
            "bootstraps": [
                {"addr": f"{b.addr}/p2p/{b.peer_id}", "connected": self.dialer.connected(b.peer_id),
                 "in_routing_table": self._in_table(b), "attempts": b.attempts, "last_error": b.last_error}
                for b in self.bootstraps
            ],
        }

    def peers(self) -> list[dict]:
        out = []
        for pid in self.connected_peers():
            conns = self.host.get_network().get_connections(pid)
            paths = sorted({path_of(c) for c in conns})
            out.append({
                "peer_id": str(pid),
                "addrs": [str(a) for a in self._peer_addrs(pid)],
                "path": next((p for p in ("direct-udp", "direct-tcp", "relayed") if p in paths), ""),
                "paths": paths,
                "remote_addrs": sorted({str(a[0]) for c in conns if (a := c.get_transport_addresses())}),  # of each connection
                "in_routing_table": pid.to_bytes() in self.core.table,
                "dial": self.traversal.history[pid].to_json() if pid in self.traversal.history else None,
            })
        return sorted(out, key=lambda p: p["peer_id"])


def webrtc_config(config: Config) -> WebRtcConfig:
    """ICE servers exactly as configured (never a default one), and the chosen interfaces."""
    servers = [RTCIceServer(f"stun:{host}:{port}") for host, port in (parse_host_port(s, "stun_servers") for s in config.stun_servers)]
    servers += [RTCIceServer(url, config.turn_username or None, config.turn_password or None) for url in config.turn_servers]
    loopback = any(i in ("lo", "127.0.0.1", "::1") for i in config.webrtc_interfaces)
    return WebRtcConfig(tuple(servers), config.webrtc_interfaces, allow_loopback_candidates=loopback)
