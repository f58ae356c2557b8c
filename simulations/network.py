"""A simulated overlay network: the shipped protocol cores of every node, on the simulated
internet (internet.py), in virtual time (engine.py).

What runs is the node's own code without I/O:
- `overlay.kademlia.core.Kademlia`: routing, lookups, records, providers, refresh and republish
  timers, with the node's quotas, table limits and provider namespaces; public nodes are DHT
  servers, nodes behind NAT clients, as on the real node;
- peer records (`overlay.core.records`): signed with each node's Ed25519 key, validated by the DHT;
- `signaling.registrations.Registrations`: which signalling nodes a node behind NAT keeps;
- `nat.strategy.DialStrategy` with `nat.plan.plan_for`: dial by peer ID, direct or relayed,
  then the upgrade to a direct path;
- `nat.circuits.RelayBudget`: which circuits each public node's relay admits (a first
  connection's, then a persistent one for a pair with no direct path, held `connection_hold`);
- `overlay.node.roles`: what a node's record carries, which record a lookup believes, and the
  join through the bootstraps (`Joiner`);
- `overlay.kademlia.driver.MemoryDriver`: the Kademlia actions carried between cores, the same
  driver the tests use (this module gives it the internet model, `InternetLinks`);
- `overlay.channels.relay.ChannelRelay` (channels.py): the channel relay's commands, onboarding,
  announcements and messages.
What is modelled: connections (a first message between two nodes pays a connection setup of
CONNECT_RTTS round trips), relays (a relayed connection needs the target to be registered with
that relay), and ICE (internet.py).
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import multiaddr
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from nat.circuits import RelayBudget, RelayFull
from nat.plan import plan_for
from nat.strategy import DialConnected, DialDirect, DialRelay, DialStrategy, Failed, GaveUp, Plan, Upgrade, Upgraded
from overlay.core.peer import PeerInfo
from overlay.core.records import PeerRecord, PeerRecordValidator, peer_id_from_public_key, peer_id_to_str, record_key, seal_peer_record
from overlay.kademlia.core import KadConfig, Kademlia, QueryDone
from overlay.channels import reservation
from overlay.kademlia.driver import Links, MemoryDriver
from overlay.kademlia.routing import key_position
from overlay.kademlia.store import NamespacedValidator
from overlay.kademlia.wire import Message, encode_message
from overlay.node.namespaces import PROVIDER_NAMESPACES
from overlay.node.roles import Bootstrap, Join, JoinAction, Joiner, TryBootstrap, best_record, record_addrs
from signaling.registrations import AskLoad, Changed, NeedCandidates, RegisterWith, Registrations, Release
from simulations.channels import ChannelWorkload
from simulations.engine import Scheduler
from simulations.internet import Internet, Nat, direct_path_possible, dialable, upgrade_time
from simulations.scenario import Scenario

CONNECT_RTTS = 3  # TCP, Noise and multistream before the first stream on a new connection
DIAL_TIMEOUT = 10.0  # a dial to a vanished host waits this long (no RST comes back)
LOSS_DETECTION = 15.0  # a signalling node's clients notice it left after this long
MAX_CONNECTIONS = 256  # per node, oldest closed first: the connection manager's bound
SAMPLE = 60.0  # seconds between time-series samples


@dataclass(eq=False)
class SimNode:
    index: int
    key: Ed25519PrivateKey
    peer_id: bytes
    name: str  # the peer ID as text, the channel relay's node name
    region: str
    nat: Nat
    core: Kademlia
    joined_at: float
    bootstrap: bool = False
    online: bool = True
    ready: bool = False  # record published (and, behind NAT, registered)
    seq: int = 0
    registrations: Registrations | None = None
    joiner: Joiner[SimBootstrap] | None = None
    relays: dict[int, None] = field(default_factory=dict)  # signalling nodes we are registered with
    clients: set[int] = field(default_factory=set)  # (signalling nodes) who is registered here
    connections: dict[int, None] = field(default_factory=dict)
    reg_timer_at: float | None = None
    bytes_sent: int = 0
    bytes_received: int = 0
    relayed: int = 0  # connections relayed through this node
    upgrades_signalled: int = 0
    circuits: RelayBudget | None = None  # (public nodes) the relay's admission, as the node's
    circuits_peak: int = 0
    relay_refused: Counter[str] = field(default_factory=Counter)  # first / persistent circuits refused

    @property
    def public(self) -> bool:
        return self.nat is Nat.PUBLIC


@dataclass(eq=False)
class SimBootstrap(Bootstrap):
    node: SimNode


@dataclass
class Metrics:
    dials: list[dict] = field(default_factory=list)  # one per dial by peer ID after the warm-up
    samples: list[dict] = field(default_factory=list)  # every SAMPLE seconds
    joins: int = 0
    leaves: int = 0


class Simulation:
    def __init__(self, scenario: Scenario, progress: Callable[[float], None] | None = None) -> None:
        self.scenario = scenario
        self.rng = random.Random(scenario.seed)
        self.sched = Scheduler()
        self.net = Internet(scenario.link_model(), random.Random(self.rng.random()))
        self.kad_config = KadConfig()
        self.validator = NamespacedValidator({b"peer": PeerRecordValidator(), reservation.NAMESPACE: reservation.ReservationValidator(
            lambda: int(self.sched.now * 1000), verified=lambda r: True)})  # honest nodes (simulations/channels.py)
        self.nodes: list[SimNode] = []
        self.by_id: dict[bytes, SimNode] = {}
        self.by_name: dict[str, SimNode] = {}
        self.online: list[SimNode] = []  # in no order; removal by swap
        self._online_at: dict[int, int] = {}
        self.bootstraps: list[SimNode] = []
        self.dht = MemoryDriver(self.sched, InternetLinks(self))
        self.metrics = Metrics()
        self.channels = ChannelWorkload(self) if scenario.channels else None
        self.progress = progress
        self._ips = 0

    # ---- running -----------------------------------------------------------------------------

    def run(self) -> Metrics:
        sc = self.scenario
        for i in range(sc.nodes):
            node = self._new_node(bootstrap=i < sc.bootstrap)
            # bootstraps first, together; the others arrive over the first join_window seconds
            at = 0.0 if node.bootstrap else sc.join_window * (i - sc.bootstrap + 1) / max(1, sc.nodes - sc.bootstrap)
            self.sched.at(at, lambda node=node: self._join(node))
        if sc.churn_per_hour > 0:
            for node in self.nodes:
                if not node.bootstrap:
                    self._schedule_leave(node)
        if sc.dials_per_node_hour > 0:
            self.sched.at(sc.warmup, self._dial_event)
        if self.channels is not None:
            self.sched.at(max(sc.join_window + 30, sc.warmup - 60), self._subscribe_all)
            for name in self.channels.names:
                self.sched.at(sc.warmup, lambda name=name: self._publish_event(name))
        self.sched.at(SAMPLE, self._sample)
        for part in sc.partitions:
            self.sched.at(part.start, lambda part=part: self._partition(part))
        self.sched.run(sc.duration, self.progress)
        return self.metrics

    # ---- nodes joining and leaving -------------------------------------------------------------

    def _new_node(self, bootstrap: bool = False) -> SimNode:
        sc = self.scenario
        key = Ed25519PrivateKey.from_private_bytes(self.rng.getrandbits(256).to_bytes(32, "big"))
        peer_id = peer_id_from_public_key(key.public_key())
        region = _pick(self.rng, sc.regions)
        nat = Nat.PUBLIC if bootstrap else Nat(_pick(self.rng, sc.nat))
        index = len(self.nodes)
        addrs = (self._address(index),) if nat is Nat.PUBLIC else ()
        core = Kademlia(PeerInfo(peer_id, addrs), self.validator, self.kad_config, server=nat is Nat.PUBLIC,
                        rng=random.Random(self.rng.random()), provider_namespaces=PROVIDER_NAMESPACES)
        node = SimNode(index, key, peer_id, peer_id_to_str(peer_id), region, nat, core, joined_at=0.0, bootstrap=bootstrap,
                       online=False, circuits=RelayBudget(sc.relay_limits()) if nat is Nat.PUBLIC else None)
        if nat is not Nat.PUBLIC:
            node.registrations = Registrations(peer_id, want=sc.signaling_nodes)
        self.nodes.append(node)
        self.by_id[peer_id] = node
        self.by_name[node.name] = node
        return node

    def _address(self, index: int) -> bytes:
        return multiaddr.Multiaddr(f"/ip4/198.18.{index >> 8 & 0xFF}.{index & 0xFF}/tcp/4001").to_bytes()

    def _join(self, node: SimNode) -> None:
        node.online, node.joined_at = True, self.sched.now
        self._online_at[node.index] = len(self.online)
        self.online.append(node)
        self.metrics.joins += 1
        if self.channels is not None:
            self.channels.joined(node)
        if self.bootstraps:  # the bootstraps that came before are the node's configured ones
            node.joiner = Joiner([SimBootstrap(node=b) for b in self.bootstraps],
                                 lambda b: b.node.peer_id in node.core.table, self.kad_config.request_timeout)
            self._join_step(node, node.joiner.wake(self.sched.now))
        else:  # the first node: only its start-up publish, as the node's
            self._joined(node)
        if node.bootstrap:
            self.bootstraps.append(node)

    def _join_step(self, node: SimNode, actions: list[JoinAction]) -> None:
        """The join core's actions, carried out as the node does (overlay/node/node.py,
        _join_loop); the dial is the connection setup that the ping to the bootstrap pays."""
        joiner = node.joiner
        for action in actions:
            if isinstance(action, TryBootstrap):
                b = action.bootstrap
                self.dht.apply(node, node.core.add_address(b.node.core.local, self.sched.now))
                self.dht.until(node, lambda b=b: joiner.in_table(b), action.wait, lambda ok, b=b: self._tried(node, b, ok))
            elif isinstance(action, Join):
                self.dht.query(node, node.core.bootstrap, lambda done: self._bootstrapped(node))
            else:
                self.sched.at(action.at, lambda: self._join_step(node, joiner.wake(self.sched.now)) if node.online else None)

    def _tried(self, node: SimNode, b: SimBootstrap, ok: bool) -> None:
        if node.online:
            now = self.sched.now
            self._join_step(node, node.joiner.answered(b, now) if ok else node.joiner.failed(b, "no answer", now))

    def _bootstrapped(self, node: SimNode) -> None:
        """A join lookup is done. The first makes the node take its part; a later one (a bootstrap
        was back in the table) republishes, as the node does, once the record has addresses."""
        if node.joiner.joins == 0:
            self._joined(node)
        elif node.public or node.relays:
            self._publish_record(node)
        self._join_step(node, node.joiner.joined(self.sched.now))

    def _joined(self, node: SimNode) -> None:
        if node.public:
            self._publish_record(node)
        else:
            self._offer(node)

    def _schedule_leave(self, node: SimNode) -> None:
        sc = self.scenario
        mean = 3600.0 / sc.churn_per_hour
        if sc.session == "pareto":  # heavy tail, same mean: shape 2, scale mean/2
            length = (mean / 2) / (1 - self.rng.random()) ** 0.5
        else:
            length = self.rng.expovariate(1 / mean)
        start = node.joined_at if node.online else self.sched.now
        self.sched.at(max(start, sc.join_window) + length, lambda: self._leave(node))

    def _leave(self, node: SimNode) -> None:
        if not node.online:
            return
        node.online = False
        last = self.online.pop()
        if last is not node:
            i = self._online_at[node.index]
            self.online[i] = last
            self._online_at[last.index] = i
        del self._online_at[node.index]
        self.metrics.leaves += 1
        if self.channels is not None:
            lost = [name for name, subs in self.channels.subscribers.items() for s in subs if s[0] == node.index]
            self.channels.left(node)
            for name in lost:  # the channel's audience stays level: someone elsewhere subscribes
                self.sched.after(self.rng.expovariate(1 / 60.0), lambda name=name: self._subscribe_one(name))
        for client in list(node.clients):
            self.sched.after(LOSS_DETECTION, lambda c=self.nodes[client]: self._relay_lost(c, node))
        for relay in node.relays:
            self.nodes[relay].clients.discard(node.index)
        # a fresh node (new identity) takes its place, so the population stays level
        fresh = self._new_node()
        self.sched.after(self.rng.expovariate(1 / 60.0), lambda: self._join(fresh))
        self.sched.after(0, lambda: self._schedule_leave(fresh))

    def _relay_lost(self, client: SimNode, relay: SimNode) -> None:
        if client.online and client.registrations is not None:
            client.relays.pop(relay.index, None)
            self._apply_registrations(client, client.registrations.lost(relay.peer_id, self.sched.now))

    # ---- records and registrations -----------------------------------------------------------

    def _publish_record(self, node: SimNode) -> None:
        node.seq += 1
        addrs = record_addrs(node.public, map(multiaddr.Multiaddr, node.core.local.addrs),
                             (self.nodes[r].core.local for r in node.relays))
        sealed = seal_peer_record(PeerRecord(node.peer_id, node.seq, addrs), node.key)
        self.dht.query(node, lambda now: node.core.publish(record_key(node.peer_id), sealed, now),
                    lambda done: setattr(node, "ready", True))

    def _apply_registrations(self, node: SimNode, actions: list) -> None:
        for action in actions:
            if isinstance(action, RegisterWith):
                relay = self.by_id.get(action.peer.peer_id)
                ok = relay is not None and relay.online and relay.public and not self.cut(node, relay)
                rtt = self.net.rtt(node.region, relay.region) if relay is not None else 0.0
                self.sched.after((CONNECT_RTTS + 1) * rtt if ok else DIAL_TIMEOUT,
                                 lambda relay=relay, ok=ok, p=action.peer.peer_id: self._registered(node, relay, ok, p))
            elif isinstance(action, Changed):
                node.relays = {self.by_id[p.peer_id].index: None for p in action.live}
                self._publish_record(node)
            elif isinstance(action, AskLoad):
                for peer in action.peers:
                    self._ask_load(node, peer.peer_id)
            elif isinstance(action, Release):
                released = self.by_id.get(action.peer.peer_id)
                if released is not None:
                    released.clients.discard(node.index)
            elif isinstance(action, NeedCandidates):  # as the node: a lookup of its own ID, then its table
                self.dht.query(node, lambda now: node.core.find_node(node.peer_id, now), lambda done: self._offer(node))
        self._touch_registrations(node)

    def _offer(self, node: SimNode) -> None:
        """The candidates the node takes: its routing table's servers, its bootstraps as the fallback."""
        if node.online and node.registrations is not None:
            table = [c.info for c in node.core.table.closest(key_position(node.peer_id), node.registrations.max_candidates)]
            bootstraps = [b.core.local for b in self.bootstraps if b.online]
            self._apply_registrations(node, node.registrations.offer(table, self.sched.now, bootstraps))

    def _ask_load(self, node: SimNode, peer_id: bytes) -> None:
        """A candidate's answer (its registrations) one round trip later, or a failure after the dial timeout."""
        relay = self.by_id.get(peer_id)
        ok = relay is not None and relay.online and relay.public and not self.cut(node, relay)

        def answered() -> None:
            if node.online:
                regs = node.registrations
                if ok and relay.online:
                    self._apply_registrations(node, regs.loaded(peer_id, len(relay.clients), self.sched.now))
                else:
                    self._apply_registrations(node, regs.load_failed(peer_id, self.sched.now))

        self.sched.after((CONNECT_RTTS + 1) * self.net.rtt(node.region, relay.region) if ok else DIAL_TIMEOUT, answered)

    def _registered(self, node: SimNode, relay: SimNode | None, ok: bool, peer_id: bytes) -> None:
        if not node.online:
            return
        if ok and relay is not None and relay.online:
            relay.clients.add(node.index)
            self._apply_registrations(node, node.registrations.succeeded(peer_id, self.sched.now))
        else:
            self._apply_registrations(node, node.registrations.lost(peer_id, self.sched.now))

    def _touch_registrations(self, node: SimNode) -> None:
        t = node.registrations.next_timer()
        if t is not None and t != node.reg_timer_at:
            node.reg_timer_at = t
            self.sched.at(t, lambda: self._registration_timer(node, t))

    def _registration_timer(self, node: SimNode, t: float) -> None:
        if node.online and node.reg_timer_at == t:
            node.reg_timer_at = None
            self._apply_registrations(node, node.registrations.handle_timer(self.sched.now))

    # ---- Kademlia over simulated links: the shared in-memory driver (overlay/kademlia/driver.py) --

    def connect_cost(self, a: SimNode, b: SimNode) -> float:
        """Connection setup time for a message between a and b (0 when connected). Each use
        makes the connection the most recent of both ends; beyond MAX_CONNECTIONS the least
        recently used is closed, as a connection manager keeps those that carry traffic."""
        connected = b.index in a.connections
        for x, y in ((a, b), (b, a)):
            x.connections.pop(y.index, None)
            x.connections[y.index] = None
            if len(x.connections) > MAX_CONNECTIONS:
                del x.connections[next(iter(x.connections))]
        return 0.0 if connected else CONNECT_RTTS * self.net.rtt(a.region, b.region)

    def cut(self, a: SimNode, b: SimNode) -> bool:
        return bool(self.net.partitions) and self.net.cut(a.index, b.index, self.sched.now)

    def _partition(self, part) -> None:
        eligible = [n.index for n in self.online]
        side = frozenset(self.rng.sample(eligible, int(len(eligible) * part.share)))
        self.net.partitions.append((part.start, part.end, side))

    # ---- the workload: dial by peer ID -----------------------------------------------------------

    def _dial_event(self) -> None:
        rate = len(self.online) * self.scenario.dials_per_node_hour / 3600.0
        ready = [n for n in self.online if n.ready] if len(self.online) < 64 else None
        source = self._random_ready(ready)
        target = self._random_ready(ready)
        if source is not None and target is not None and source is not target:
            self._dial(source, target)
        if rate > 0:
            self.sched.after(self.rng.expovariate(rate), self._dial_event)

    def _random_ready(self, ready: list[SimNode] | None) -> SimNode | None:
        if ready is not None:
            return self.rng.choice(ready) if ready else None
        for _ in range(16):
            node = self.rng.choice(self.online)
            if node.ready:
                return node
        return None

    def _dial(self, source: SimNode, target: SimNode) -> None:
        start = self.sched.now
        entry = {"t": start, "source_nat": source.nat.value, "target_nat": target.nat.value, "found": False,
                 "connected": False, "path": None, "hops": 0, "lookup_s": None, "first_stream_s": None, "direct_s": None}
        self.metrics.dials.append(entry)

        def looked_up(done: QueryDone) -> None:
            entry["lookup_s"] = done.duration
            entry["hops"] = done.result.hops
            best = best_record((value for _, value in done.result.values), target.peer_id)
            if best is None:
                return
            entry["found"] = True
            self._connect_by_record(source, target, best, start, entry)

        self.dht.query(source, lambda now: source.core.get_value(record_key(target.peer_id), now, 1), looked_up)

    def _connect_by_record(self, source: SimNode, target: SimNode, record: PeerRecord, start: float, entry: dict) -> None:
        plan = plan_for(map(multiaddr.Multiaddr, record.addrs))
        strategy = DialStrategy(Plan(plan.direct, tuple(r for r in plan.relays if r[0] in self.by_id)))
        state: dict = {"via": None, "circuit": None}

        def circuit(relay: SimNode, persistent: bool) -> bool:
            """The relay admits a circuit from source to target (its RelayBudget), or counts the refusal."""
            try:
                state["circuit"] = relay.circuits.admit(target.name, source.name, persistent, self.sched.now)
            except RelayFull:
                relay.relay_refused["persistent" if persistent else "first"] += 1
                return False
            relay.circuits_peak = max(relay.circuits_peak, len(relay.circuits.circuits))
            return True

        def release() -> None:
            if state["circuit"] is not None:
                state["via"].circuits.release(state["circuit"])
                state["circuit"] = None

        def relayed(relay: bytes, ok: bool) -> None:
            actions = strategy.relay_done(relay, ok, self.sched.now)
            if ok and not any(isinstance(a, DialConnected) for a in actions):
                release()  # a direct dial won meanwhile: the circuit closes unused
            act(actions)

        def act(actions: list) -> None:
            for action in actions:
                if isinstance(action, DialDirect):
                    ok = target.online and dialable(target.nat) and not self.cut(source, target)
                    rtt = self.net.rtt(source.region, target.region)
                    self.sched.after(CONNECT_RTTS * rtt if ok else DIAL_TIMEOUT,
                                     lambda ok=ok: act(strategy.direct_done(ok, self.sched.now)))
                elif isinstance(action, DialRelay):
                    relay = self.by_id[action.relay]
                    ok = (relay.online and target.online and target.index in relay.clients
                          and not self.cut(source, relay) and not self.cut(relay, target)) and circuit(relay, False)
                    if ok:
                        state["via"] = relay
                    time = (CONNECT_RTTS * self.net.rtt(source.region, relay.region) + 2 * self._relayed_rtt(source, relay, target)
                            if ok else DIAL_TIMEOUT)
                    self.sched.after(time, lambda r=action.relay, ok=ok: relayed(r, ok))
                elif isinstance(action, Upgrade):
                    relay = self.by_id[action.relay]
                    relay.upgrades_signalled += 1
                    ok = target.online and source.online and direct_path_possible(source.nat, target.nat) and not self.cut(source, target)
                    time = self._relayed_rtt(source, relay, target) + upgrade_time(
                        source.nat, target.nat, self.net.rtt(source.region, target.region))
                    self.sched.after(time if ok else time + DIAL_TIMEOUT, lambda ok=ok: act(strategy.upgrade_done(ok, self.sched.now)))
                elif isinstance(action, DialConnected):
                    entry["connected"], entry["path"] = True, action.path
                    if action.path == "relayed":
                        state["via"].relayed += 1
                        rtt = self._relayed_rtt(source, state["via"], target)
                    else:
                        rtt = self.net.rtt(source.region, target.region)
                    entry["first_stream_s"] = self.sched.now - start + rtt
                    if action.path == "direct":
                        entry["direct_s"] = self.sched.now - start
                elif isinstance(action, Upgraded):
                    entry["path"], entry["direct_s"] = "upgraded", self.sched.now - start
                    release()
                elif isinstance(action, GaveUp) and state["via"] is not None:
                    # no direct path: the first connection's circuit makes way for a persistent one,
                    # held for as long as the connection is; refused, the connection ends at its limit
                    relay = state["via"]
                    release()
                    if circuit(relay, True):
                        self.sched.after(self.scenario.connection_hold, release)
                    else:
                        entry["path"] = "cut"
                elif isinstance(action, Failed):
                    release()
            t = strategy.next_timer()
            if t is not None and not strategy.finished:
                self.sched.at(t, lambda: act(strategy.handle_timer(self.sched.now)) if strategy.next_timer() == t else None)

        act(strategy.start(self.sched.now))

    def _relayed_rtt(self, a: SimNode, relay: SimNode, b: SimNode) -> float:
        return self.net.rtt(a.region, relay.region) + self.net.rtt(relay.region, b.region)

    # ---- the workload: channels ----

    def _subscribe_all(self) -> None:
        for rank, name in enumerate(self.channels.names):
            for _ in range(self.scenario.channel_size(rank)):
                self._subscribe_one(name)

    def _subscribe_one(self, name: str) -> None:
        node = self._random_ready(None if len(self.online) >= 64 else [n for n in self.online if n.ready])
        if node is not None:
            self.channels.subscribe(node, name)

    def _publish_event(self, name: str) -> None:
        self.channels.publish(name)
        rate = self.scenario.messages_per_channel_hour / 3600.0
        if rate > 0:
            self.sched.after(self.rng.expovariate(rate), lambda: self._publish_event(name))

    # ---- samples -------------------------------------------------------------------------------

    def _sample(self) -> None:
        online = self.online
        behind = [n for n in online if not n.public]
        self.metrics.samples.append({
            "t": self.sched.now,
            "online": len(online),
            "ready": sum(n.ready for n in online),
            "registered": sum(1 for n in behind if n.relays),
            "behind_nat": len(behind),
            "events": self.sched.events,
        })
        self.sched.after(SAMPLE, self._sample)


class InternetLinks(Links[SimNode]):
    """The simulated internet as the DHT driver's network model: region delays with jitter and
    loss, connection setup on a first message, partitions, and every node's byte counts."""

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim

    def core(self, node: SimNode) -> Kademlia:
        return node.core

    def resolve(self, peer_id: bytes) -> SimNode | None:
        return self.sim.by_id.get(peer_id)

    def alive(self, node: SimNode) -> bool:
        return node.online

    def size(self, message: Message) -> int:
        return len(encode_message(message))

    def sent(self, node: SimNode, size: int) -> None:
        node.bytes_sent += size

    def received(self, node: SimNode, size: int) -> None:
        node.bytes_received += size

    def request_delay(self, src: SimNode, dst: SimNode, size: int) -> float | None:
        if self.sim.cut(src, dst):
            return None
        return self.sim.net.delay(src.region, dst.region, size) + self.sim.connect_cost(src, dst)

    def response_delay(self, dst: SimNode, src: SimNode, size: int) -> float | None:
        return None if self.sim.cut(src, dst) else self.sim.net.delay(dst.region, src.region, size)


def _pick(rng: random.Random, shares: dict[str, float]) -> str:
    x, acc = rng.random(), 0.0
    for name, share in shares.items():
        acc += share
        if x < acc:
            return name
    return next(reversed(shares))


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, max(0, math.ceil(q / 100 * len(values)) - 1))]
