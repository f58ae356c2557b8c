"""The channel relay (WSRelay) in the simulator: each node's shipped `ChannelTable` and
`InmRouter` (overlay/channels), driven as `ChannelService` drives them, over simulated links.

- Every node keeps up to `inm_peers` neighbours (links both ways), replaced when one leaves.
- A subscription opens the channel on its node, which floods a channel-open announcement
  through the router; nodes with open channels re-announce every REFRESH seconds, and the table
  expires what is not renewed (the shipped anti-entropy). A new link onboards: the newcomer takes
  its neighbour's open channels, as `_onboard` does with list-channels.
- A publish goes to the local subscribers and, one unicast each, to every node where the table
  says the channel is open. Unicasts to a node not yet connected pay a connection setup (and,
  behind NAT, a relayed dial).
What is measured: for each message, the subscribers online on nodes where the channel was open
when it was sent, and which of them got it, when.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

from overlay.channels.inm import BROADCAST, Inm
from overlay.channels.router import InmRouter
from overlay.channels.table import REFRESH, ChannelTable, hash_password

if TYPE_CHECKING:
    from simulations.network import Simulation, SimNode

RELAYED_DIAL_RTTS = 4  # lookup and relay setup before a first unicast to a node behind NAT


class ChannelWorkload:
    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        sc = sim.scenario
        self.names = [f"channel-{i}" for i in range(sc.channels)]
        self.tables: dict[int, ChannelTable] = {}
        self.routers: dict[int, InmRouter] = {}
        self.links: dict[int, set[int]] = {}
        self._neighbours: dict[int, list[str]] = {}  # names of links[i], rebuilt after a change
        self.subscribers: dict[str, set[tuple[int, int]]] = {name: set() for name in self.names}  # (node, client)
        self.messages: list[dict] = []
        self._clients = itertools.count()
        self._nonces = itertools.count()
        self.password = {name: hash_password(name, None) for name in self.names}

    # ---- nodes ----

    def joined(self, node: SimNode) -> None:
        me = node.name
        self.tables[node.index] = ChannelTable(me)
        self.routers[node.index] = InmRouter(me)
        self.links[node.index] = set()
        self._fill_links(node)
        self.sim.sched.after(REFRESH * (0.8 + 0.2 * self.sim.rng.random()), lambda: self._refresh(node))

    def left(self, node: SimNode) -> None:
        for name in self.names:
            self.subscribers[name] = {s for s in self.subscribers[name] if s[0] != node.index}
        self._neighbours.pop(node.index, None)
        for peer in self.links.pop(node.index, set()):
            if peer in self.links:
                self.links[peer].discard(node.index)
                self._neighbours.pop(peer, None)
                other = self.sim.nodes[peer]
                self.sim.sched.after(15.0, lambda other=other: self._fill_links(other) if other.online else None)
        self.tables.pop(node.index, None)
        self.routers.pop(node.index, None)

    def _fill_links(self, node: SimNode) -> None:
        links, want, online = self.links[node.index], self.sim.scenario.inm_peers, self.sim.online
        for _ in range(4 * want):
            if len(links) >= want or len(online) < 2:
                break
            peer = self.sim.rng.choice(online)
            if peer is node or peer.index in links or peer.index not in self.links:
                continue
            links.add(peer.index)
            self.links[peer.index].add(node.index)
            self._neighbours.pop(node.index, None)
            self._neighbours.pop(peer.index, None)
            self._onboard(node, peer)
            self._onboard(peer, node)

    def _onboard(self, node: SimNode, peer: SimNode) -> None:
        """`node` takes `peer`'s open channels (list-channels on a new link)."""
        table, theirs, now = self.tables[node.index], self.tables[peer.index], self.sim.sched.now
        for name in theirs.open_here():
            reservation = theirs.reservation(name)
            if reservation is not None:
                table.announce(peer.name, name, reservation, True, now)

    # ---- clients ----

    def subscribe(self, node: SimNode, name: str) -> None:
        client = next(self._clients)
        table, now = self.tables[node.index], self.sim.sched.now
        reason, change = table.subscribe(client, name, self.password[name], now, int(now * 1000))
        if reason is None:
            self.subscribers[name].add((node.index, client))
            if change.opened:
                self._announce(node, name, True)

    def publish(self, name: str) -> None:
        candidates = [s for s in self.subscribers[name] if self.sim.nodes[s[0]].online]
        if not candidates:
            return
        node_index, client = self.sim.rng.choice(candidates)
        node, now = self.sim.nodes[node_index], self.sim.sched.now
        table = self.tables[node_index]
        if not table.subscribed(client, name):
            return
        expected = {s for s in candidates if s[1] != client}
        entry = {"t": now, "channel": name, "expected": len(expected), "latencies": []}
        self.messages.append(entry)
        entry["latencies"] += [0.0 for s in expected if s[0] == node_index]  # local subscribers
        for target in table.open_elsewhere(name):
            dst = self.sim.by_name.get(target)
            if dst is None:
                continue
            delay = self._unicast_delay(node, dst)
            if delay is not None:
                self.sim.sched.after(delay, lambda dst=dst: self._arrive(dst, name, client, entry, now))

    def _arrive(self, node: SimNode, name: str, sender: int, entry: dict, sent: float) -> None:
        if not node.online:
            return
        table = self.tables[node.index]
        for client in table.subscribers(name):
            if client != sender:
                entry["latencies"].append(self.sim.sched.now - sent)

    def _unicast_delay(self, src: SimNode, dst: SimNode) -> float | None:
        if not dst.online or self.sim.cut(src, dst):
            return None
        setup = 0.0
        if dst.index not in src.connections:
            setup = self.sim.connect_cost(src, dst)
            if not dst.public:
                setup += RELAYED_DIAL_RTTS * self.sim.net.rtt(src.region, dst.region)
        return setup + self.sim.net.delay(src.region, dst.region, 300)

    # ---- announcements ----

    def _announce(self, node: SimNode, name: str, is_open: bool) -> None:
        reservation = self.tables[node.index].reservation(name)
        if reservation is None:
            return
        inm = Inm(node.name, BROADCAST, "command", f"n{next(self._nonces)}",
                  {"channel": name, "open": is_open, "reservation": reservation})
        self._route(node, inm, None)

    def _route(self, node: SimNode, inm: Inm, came_from: SimNode | None) -> None:
        router = self.routers.get(node.index)
        if router is None:
            return
        neighbours = self._neighbours.get(node.index)
        if neighbours is None:
            neighbours = self._neighbours[node.index] = [self.sim.nodes[i].name for i in self.links[node.index]]
        route = router.route(inm, came_from.name if came_from else None, neighbours, self.sim.sched.now)
        if route.handle:
            data = inm.data
            self.tables[node.index].announce(inm.source, data["channel"], data["reservation"], data["open"], self.sim.sched.now)
        for target in route.forward:
            dst = self.sim.by_name[target]
            if dst.online and not self.sim.cut(node, dst):
                delay = self.sim.net.delay(node.region, dst.region, 200)
                self.sim.sched.after(delay, lambda dst=dst: self._route(dst, inm, node) if dst.online else None)

    def _refresh(self, node: SimNode) -> None:
        table = self.tables.get(node.index)
        if table is None or not node.online:
            return
        for name in table.expire(self.sim.sched.now):
            self._announce(node, name, True)
        self.sim.sched.after(REFRESH * (0.8 + 0.2 * self.sim.rng.random()), lambda: self._refresh(node))

