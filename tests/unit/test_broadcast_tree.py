"""INM broadcasts over the DHT's prefix tree (overlay/channels/relay.py, "broadcasts"): relays on
the routing tables of real Kademlia cores (tests/kadnet.py), servers and nodes behind NAT."""

from __future__ import annotations

from collections import deque
from dataclasses import replace

import pytest

from overlay.channels.inm import BROADCAST, LEAF, Inm
from overlay.channels import relay as relay_module
from overlay.channels.relay import ATTACH, PARENTS, ChannelRelay, CutLink, SendEnvelope
from overlay.core.records import peer_id_to_str
from overlay.kademlia.core import Kademlia
from tests.kadnet import KadNet
from tests.unit.test_channel_relay import modelled_sign, modelled_sign_reservation, modelled_verify_reservation

pytestmark = pytest.mark.timeout(120)


class TreeNet:
    """One relay per Kademlia core, wired by a queue; counts the envelopes of each kind."""

    def __init__(self, servers: int, clients: int) -> None:
        self.kad = KadNet(seed=7)
        cores = self.kad.build(servers)
        for _ in range(clients):
            core = self.kad.add_node(server=False)
            self.kad.apply(core.local.peer_id, core.add_address(cores[0].local, self.kad.now))
            self.kad.run_until(lambda: cores[0].local.peer_id in core.table)
            self.kad.run_query(core, core.bootstrap(self.kad.now))
            cores.append(core)
        self.now = 0.0
        self.relays = {peer_id_to_str(c.local.peer_id): self._relay(c) for c in cores}
        self.got: dict[str, list[str]] = {name: [] for name in self.relays}
        for name, relay in self.relays.items():
            relay.register("hello", lambda inm, name=name: self.got[name].append(inm.data["text"]))
        self.flight: deque[tuple[str, str, Inm]] = deque()
        self.sent: dict[str, int] = {}

    def _relay(self, core: Kademlia) -> ChannelRelay:
        def tree(scope: int, per_bucket: int) -> list[tuple[int, list[str]]]:
            return [(i, [peer_id_to_str(p) for p in peers]) for i, peers in core.table.tree(scope, per_bucket)]

        return ChannelRelay(peer_id_to_str(core.local.peer_id), lambda: 1_000_000, modelled_sign,
                            lambda inm: inm.sig == modelled_sign(inm), modelled_sign_reservation,
                            modelled_verify_reservation, tree=tree, serving=lambda: core.server)

    def act(self, at: str, actions: list) -> None:
        for action in actions:
            if isinstance(action, SendEnvelope):
                kind = action.inm.data.get("command", action.inm.type) if isinstance(action.inm.data, dict) else action.inm.type
                self.sent[kind] = self.sent.get(kind, 0) + len(action.targets)
                self.flight += [(at, target, action.inm) for target in action.targets]

    def run(self) -> None:
        while self.flight:
            src, dst, inm = self.flight.popleft()
            self.act(dst, self.relays[dst].receive(inm, src, self.now))

    def tick(self) -> None:
        for name, relay in self.relays.items():
            self.act(name, relay.tick(self.now))
        self.run()


def test_a_broadcast_reaches_every_node_once_in_about_two_envelopes_per_node():
    net = TreeNet(servers=120, clients=60)
    net.tick()  # the nodes behind NAT attach to two servers each
    clients = [n for n, r in net.relays.items() if not r.serving()]
    assert all(len(net.relays[c]._parents) == PARENTS for c in clients)
    assert net.sent[ATTACH] == PARENTS * len(clients)
    for origin, text in ((next(iter(net.relays)), "from a server"), (clients[0], "from behind NAT")):
        net.sent.clear()
        net.act(origin, net.relays[origin].broadcast({"command": "hello", "text": text}, net.now, answered=False))
        net.run()
        for name in net.relays:
            assert net.got[name].count(text) == (0 if name == origin else 1), name
        n = len(net.relays)
        assert net.sent["hello"] <= 2.2 * n, f"{net.sent['hello']} envelopes for {n} nodes (a flood over 8 links: {8 * n})"


def test_a_copy_with_a_lying_scope_or_signature_costs_a_bounded_pass_and_changes_nothing():
    net = TreeNet(servers=60, clients=0)
    names = list(net.relays)
    origin, victim, liar = names[0], names[1], names[2]
    signed = net.relays[origin].broadcast({"command": "hello", "text": "once"}, net.now, answered=False)[0].inm
    first = net.relays[victim].receive(replace(signed, scope=LEAF), liar, net.now)
    assert first == [] and net.got[victim] == ["once"], "a leaf passes nothing on"
    wider = net.relays[victim].receive(replace(signed, scope=0), liar, net.now)
    assert wider and all(isinstance(a, SendEnvelope) for a in wider), "a smaller scope: the rest of its buckets, once"
    assert net.relays[victim].receive(replace(signed, scope=0), liar, net.now) == []
    assert net.got[victim] == ["once"], "handled once, however many copies"
    forged = Inm(origin, BROADCAST, "command", "n-forged", {"command": "hello", "text": "forged"}, 1_000_000, "bad", 0)
    assert net.relays[victim].receive(forged, liar, net.now) == [CutLink(liar)] and net.got[victim] == ["once"]



def test_a_dead_contact_loses_nothing_the_other_tree_covers():
    """Three servers die without anyone noticing (their envelopes vanish): every live node
    still gets the broadcast, through the tree that does not pass through them."""
    net = TreeNet(servers=150, clients=50)
    net.tick()
    servers = [n for n, r in net.relays.items() if r.serving()]
    dead = set(servers[10:13])
    net.act(servers[0], net.relays[servers[0]].broadcast({"command": "hello", "text": "t"}, net.now, answered=False))
    while net.flight:
        src, dst, inm = net.flight.popleft()
        if dst not in dead:
            net.act(dst, net.relays[dst].receive(inm, src, net.now))
    assert all(net.got[n] == ["t"] for n in net.relays if n not in dead and n != servers[0])


def test_a_parent_takes_a_bounded_number_of_children_and_a_node_behind_nat_none(monkeypatch):
    """Strangers attaching as children: at most MAX_CHILDREN, the rest answered busy and counted;
    a node that is no DHT server takes none."""
    monkeypatch.setattr(relay_module, "MAX_CHILDREN", 2)
    net = TreeNet(servers=10, clients=1)
    server = next(r for r in net.relays.values() if r.serving())
    client = next(r for r in net.relays.values() if not r.serving())
    answers = [server.receive(Inm(f"stranger-{i}", server.me, "command", f"a{i}", {"command": ATTACH}), f"stranger-{i}",
                              net.now)[0].inm.data for i in range(3)]
    assert answers == [{"ok": True}, {"ok": True}, {"ok": False, "reason": "busy"}]
    assert server.dropped.get(reason="children full") == 1
    [answer] = client.receive(Inm("stranger-9", client.me, "command", "a9", {"command": ATTACH}), "stranger-9", net.now)
    assert answer.inm.data == {"ok": False, "reason": "not a DHT server"}
