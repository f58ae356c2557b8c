"""The channel relay core (overlay/channels/relay.py) without I/O: relays wired to each other by
a queue, as the node's adapter and the simulator wire them over links."""

from __future__ import annotations

import base64
import json
from collections import deque
from dataclasses import replace
from functools import partial

import pytest

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from overlay.channels.inm import BROADCAST, MEMBERS, Inm, decode
from overlay.channels.inm import sign as sign_envelope
from overlay.channels.inm import verify as verify_envelope
from overlay.channels.relay import (COMMAND_TIMEOUT, MAX_INTRODUCTIONS, Answer, AnswerLocally, ChannelRelay, CutLink,
                                    Deliver, DhtGet, DhtPut, FindProviders, Provide, SendEnvelope, ToClient, Unprovide,
                                    join_proof, link_proof, members_key)
from overlay.channels.reservation import KEEP, SETTLE, Reservation, ReservationValidator, reservation_key
from overlay.channels.reservation import decode as reservation_decode
from overlay.channels.reservation import sign as sign_reservation
from overlay.channels.sealing import PUBLIC, ChannelSecret, channel_secret
from overlay.core.errors import DecodeError, RecordError
from overlay.kademlia.store import RecordStore
from overlay.core.records import peer_id_from_public_key, peer_id_to_str


def modelled_sign(inm: Inm) -> str:
    """A signature stand-in for relays named by letters: only the source's relay makes its tag;
    the real Ed25519 signatures are tested below with peer IDs."""
    return f"tag-of:{inm.source}"


def _tag(r: Reservation) -> str:
    return f"tag-of:{r.owner}|{r.channel}|{r.at}|{r.verifier}|{r.released}"


def modelled_sign_reservation(r: Reservation) -> Reservation:
    return replace(r, sig=_tag(r))


def modelled_verify_reservation(r: Reservation) -> bool:
    return r.sig == _tag(r)


def relay_for(me: str, wall_ms, **kw) -> ChannelRelay:
    return ChannelRelay(me, wall_ms, modelled_sign, lambda inm: inm.sig == modelled_sign(inm), modelled_sign_reservation,
                        modelled_verify_reservation, **kw)


SECRET = channel_secret("ch", "pw")


class Net:
    """Relays by name and one DHT store (the real record store and first-come rule); `run`
    carries envelopes (to neighbours or, as the adapter's dial does, straight to any node) and
    DHT lookups and puts until none is in flight, and keeps what else the relays asked for."""

    def __init__(self, *names: str) -> None:
        self.now = 0.0
        self.wall = lambda: int(self.now * 1000) + 1_000_000
        self.relays = {n: relay_for(n, self.wall) for n in names}
        self.dht = RecordStore(ReservationValidator(self.wall, modelled_verify_reservation), ttl=3600)
        self.providers: dict[bytes, dict[str, None]] = {}
        self.flight: deque[tuple[str, str, Inm]] = deque()
        self.dht_flight: deque[tuple[str, object]] = deque()
        self.delivered: dict[str, list[Deliver]] = {n: [] for n in names}
        self.answers: list[tuple[str, Answer]] = []
        self.members_when_answered: dict[tuple[str, object], list[str]] = {}
        self.other: list[object] = []

    def add(self, name: str) -> None:
        self.relays[name] = relay_for(name, self.wall)
        self.delivered[name] = []

    def link(self, a: str, b: str) -> None:
        self.act(a, self.relays[a].link_up(b, self.now))
        self.act(b, self.relays[b].link_up(a, self.now))

    def act(self, at: str, actions: list) -> None:
        for action in actions:
            if isinstance(action, SendEnvelope):
                self.flight += [(at, target, action.inm) for target in action.targets]
            elif isinstance(action, Deliver):
                self.delivered[at].append(action)
            elif isinstance(action, Answer):
                self.answers.append((at, action))
                self.members_when_answered[(at, action.client)] = self.relays[at].table.members("ch")
            elif isinstance(action, (DhtGet, DhtPut, FindProviders, Provide, Unprovide)):
                self.dht_flight.append((at, action))
            else:
                self.other.append((at, action))

    def dht_step(self) -> None:
        at, action = self.dht_flight.popleft()
        if isinstance(action, DhtPut):
            self.dht.put(action.key, action.value, self.now)
        elif isinstance(action, Provide):
            self.providers.setdefault(action.key, {})[at] = None
        elif isinstance(action, Unprovide):
            self.providers.get(action.key, {}).pop(at, None)
        elif isinstance(action, FindProviders):  # as a lookup: the newest 20 (k) providers
            self.act(at, action.then(list(self.providers.get(action.key, {}))[-20:], self.now))
        else:
            held = self.dht.get(action.key, self.now)
            self.act(at, action.then([held] if held is not None else [], self.now))

    def run(self) -> None:
        while self.flight or self.dht_flight:
            if self.flight:
                src, dst, inm = self.flight.popleft()
                self.act(dst, self.relays[dst].receive(inm, src, self.now))
            else:
                self.dht_step()

    def subscribe(self, name: str, client: int, channel: str = "ch", secret: ChannelSecret = PUBLIC) -> str | None:
        self.act(name, self.relays[name].subscribe(client, channel, secret, f"s{client}", self.now))
        self.run()
        [reason] = [a.reason for at, a in self.answers if at == name and a.client == client][-1:]
        return reason

    def held(self, channel: str = "ch") -> Reservation | None:
        raw = self.dht.get(reservation_key(channel), self.now)
        return reservation_decode(raw) if raw is not None else None


def line(*names: str) -> Net:
    net = Net(*names)
    for a, b in zip(names, names[1:]):
        net.link(a, b)
    net.run()
    return net


def test_the_first_subscriber_reserves_in_the_dht_and_member_nodes_find_each_other_there():
    net = line("a", "b", "c")
    assert net.subscribe("a", 1) is None
    assert net.held().owner == "a" and net.relays["a"].table.reservation("ch") == net.held()
    assert list(net.providers[members_key("ch")]) == ["a"]
    for name in "bc":
        assert "ch" not in net.relays[name].table.channels, "a node without subscribers keeps nothing of it"
    assert net.subscribe("c", 2) is None, "c finds a's reservation"
    assert net.members_when_answered[("c", 2)] == ["a"], "answered once joined: a send right after reaches a"
    assert net.relays["c"].table.reservation("ch") == net.held()
    assert net.relays["a"].table.members("ch") == ["c"] and net.relays["c"].table.members("ch") == ["a"]
    assert net.subscribe("b", 3) is None
    assert sorted(net.relays["a"].table.members("ch")) == ["b", "c"] and sorted(net.relays["b"].table.members("ch")) == ["a", "c"]


def test_members_beyond_a_lookup_are_found_through_join_answers_and_leavers_are_forgotten():
    names = [f"n{i:02d}" for i in range(30)]
    net = Net(*names)
    for i, name in enumerate(names):
        assert net.subscribe(name, i) is None  # the later ones' lookups find only 20: joins tell of the rest
    for name in names:
        assert sorted(net.relays[name].table.members("ch")) == sorted(set(names) - {name}), name
    net.act("n05", net.relays["n05"].drop_client(5, net.now))
    net.run()
    assert all("n05" not in net.relays[n].table.members("ch") for n in names if n != "n05")
    net.relays["n07"].link_gone("n08", net.now)
    assert "n08" not in net.relays["n07"].table.members("ch")
    messages = [inm for _, _, inm in net.flight if inm.type == "message"]
    assert messages == [] and "ch" not in net.relays["n05"].table.channels


def test_a_publish_reaches_the_subscribers_of_every_node_where_the_channel_is_open_once():
    net = line("a", "b", "c")
    for name, client in (("a", 1), ("a", 2), ("c", 3)):
        assert net.subscribe(name, client) is None
    reason, actions = net.relays["a"].publish(1, "ch", "hello", "n1", net.now)
    assert reason is None
    net.act("a", actions)
    net.run()
    assert net.delivered["a"] == [Deliver((2,), "ch", "hello", "n1")]  # not back to its sender
    assert net.delivered["c"] == [Deliver((3,), "ch", "hello", "n1")]
    assert net.delivered["b"] == []  # nothing where the channel is not open
    assert net.relays["a"].publish(9, "ch", "x", "n2", net.now) == ("not subscribed", [])


def test_only_a_node_holding_the_key_joins_a_password_channel():
    net = line("a", "b")
    assert net.subscribe("a", 1, secret=SECRET) is None
    relay = net.relays["a"]
    for proof in (None, "0" * 64, join_proof(channel_secret("ch", "guess").key, "ch", "b", "a"),
                  join_proof(SECRET.key, "ch", "b", "someone-else")):
        data = {"command": "channel-join", "channel": "ch", **({"proof": proof} if proof else {})}
        [reply] = relay.receive(Inm("b", "a", "command", f"j-{proof}", data), "b", net.now)
        assert reply.inm.data == {"ok": False, "reason": "invalid password"}
    assert relay.table.members("ch") == [] and relay.dropped.get(reason="join without the channel's key") == 4
    [reply] = relay.receive(Inm("b", "a", "command", "j-ok", {"command": "channel-join", "channel": "ch",
                                                               "proof": join_proof(SECRET.key, "ch", "b", "a")}), "b", net.now)
    assert reply.inm.data == {"ok": True, "members": [], "large": False, "position": relay.mesh.position("ch")}
    assert relay.table.members("ch") == ["b"]
    [reply] = net.relays["b"].receive(Inm("a", "b", "command", "j-2", {"command": "channel-join", "channel": "ch"}), "a", net.now)
    assert reply.inm.data == {"ok": False, "reason": "channel not open here"}


def test_a_password_channel_is_checked_everywhere_and_sealed_end_to_end():
    net = line("a", "b", "c")
    assert net.subscribe("a", 1, secret=SECRET) is None
    assert net.subscribe("c", 2, secret=channel_secret("ch", "wrong")) == "invalid password"
    assert net.subscribe("c", 3, secret=channel_secret("ch", "pw")) is None
    assert net.held().verifier == SECRET.verifier
    net.act("a", net.relays["a"].publish(1, "ch", "secret text", "n1", net.now)[1])
    sent = [inm for _, _, inm in net.flight if inm.type == "message"]
    net.run()
    assert net.delivered["c"] == [Deliver((3,), "ch", "secret text", "n1")]
    assert sent and all("secret text" not in json.dumps(inm.data) and "message" not in inm.data for inm in sent)
    # b is not a member: a message it makes up for the channel is refused by c, unauthenticated
    forged = Inm("b", MEMBERS, "message", "f1", {"channel": "ch", "epoch": 1, "seq": 1,
                                                 "sealed": base64.b64encode(b"\0" * 40).decode()})
    assert net.relays["c"].receive(forged, "b", net.now) == []
    replayed = Inm("b", MEMBERS, "message", "f2", sent[0].data)  # a's box, under b's name: the publisher is bound
    assert net.relays["c"].receive(replayed, "b", net.now) == []
    assert net.relays["c"].dropped.get(reason="unauthentic channel message") == 2


def test_a_new_neighbour_with_the_channel_open_too_becomes_a_member():
    net = line("a", "b")
    assert net.subscribe("a", 1) is None
    net.add("late")
    assert net.subscribe("late", 2) is None
    net.relays["a"].table.remove_member("ch", "late")  # as if its join were lost
    net.relays["late"].table.remove_member("ch", "a")
    net.link("late", "a")
    net.run()
    assert net.relays["a"].table.members("ch") == ["late"] and net.relays["late"].table.members("ch") == ["a"]


def test_the_owner_releases_the_channel_when_its_last_subscriber_leaves():
    net = line("a", "b", "c")
    assert net.subscribe("a", 1, secret=SECRET) is None
    net.act("a", net.relays["a"].drop_client(1, net.now))
    net.run()
    assert net.held().released and net.held().owner == "a"
    assert all(not r.table.channels for r in net.relays.values())
    assert net.subscribe("b", 2, secret=channel_secret("ch", "new")) is None, "a released name is free"
    assert net.held().owner == "b"


def test_a_non_owner_leaving_releases_nothing_and_the_reservation_is_kept_while_open():
    net = line("a", "b")
    assert net.subscribe("a", 1) is None
    assert net.subscribe("b", 2) is None
    net.act("b", net.relays["b"].drop_client(2, net.now))
    net.run()
    assert not net.held().released
    net.now = KEEP + SETTLE + 2
    net.act("a", net.relays["a"].tick(net.now))
    puts = [a for _, a in net.dht_flight if isinstance(a, DhtGet)]
    assert puts, "the open channel's reservation is looked up again"
    net.run()
    assert net.held().owner == "a" and net.relays["a"].table.subscribers("ch") == {1}


def test_concurrent_reservations_end_with_one_winner_and_the_losers_evicted():
    net = line("a", "b")
    net.act("a", net.relays["a"].subscribe(1, "race", PUBLIC, "s1", net.now))
    net.now = 1.0  # b reserves a second later, with another password, before a's record is stored
    net.act("b", net.relays["b"].subscribe(2, "race", SECRET, "s2", net.now))
    gets = [net.dht_flight.popleft() for _ in range(2)]
    for at, get in gets:
        net.act(at, get.then([], net.now))  # both found nothing
    net.run()
    assert net.held("race").owner == "a", "the earlier one, whichever store saw first"
    assert {(at, a.reason) for at, a in net.answers} == {("a", None), ("b", None)}
    net.now = SETTLE + 3
    for name in "ab":
        net.act(name, net.relays[name].tick(net.now))
    net.run()
    assert ("b", ToClient(2, {"ok": False, "reason": "channel reserved elsewhere", "channel": "race"})) in net.other
    assert not net.relays["b"].table.subscribers("race") and net.relays["a"].table.subscribers("race") == {1}


def test_a_backdated_or_foreign_reservation_takes_no_channel_and_only_the_owner_frees_it():
    net = line("a", "b")
    assert net.subscribe("a", 1, secret=SECRET) is None
    net.now = SETTLE + 1
    honest = net.held()
    for at in (0, honest.at - 1, net.wall()):  # backdated far, just before, and fresh
        hijack = modelled_sign_reservation(Reservation("ch", "mallory", at, ""))
        assert not net.dht.put(reservation_key("ch"), hijack.encode(), net.now)
    release = modelled_sign_reservation(Reservation("ch", "mallory", net.wall(), "", released=True))
    assert not net.dht.put(reservation_key("ch"), release.encode(), net.now), "only the owner's release frees it"
    assert net.held() == honest
    # the WSRelay commands, from a peer of ours, change nothing
    relay = net.relays["a"]
    for command, record, reason in (("reserve-channel", hijack, "channel already reserved"),
                                    ("unreserve-channel", release, "channel still open"),
                                    ("unreserve-channel", replace(release, sig="forged"), "not signed by its owner")):
        [reply] = relay.receive(Inm("b", "a", "command", f"n-{command}-{reason}", {"command": command, **record.to_json()}), "b", net.now)
        assert reply.inm.data == {"ok": False, "reason": reason}
    assert relay.table.reservation("ch") == honest and relay.table.subscribers("ch") == {1}
    too_late = modelled_sign_reservation(Reservation("ch", "mallory", net.wall() + 20_000, ""))
    with pytest.raises(RecordError, match="future"):
        net.dht.put(reservation_key("ch"), too_late.encode(), net.now)


def test_members_are_looked_up_again_after_settling_and_then_rarely_with_nothing_else_sent():
    net = line("a", "b")
    assert net.subscribe("a", 1) is None
    assert net.relays["a"].next_timer() == pytest.approx(SETTLE + 1)
    net.act("b", net.relays["b"].subscribe(2, "ch", PUBLIC, "s2", net.now))
    net.dht_flight = deque(x for x in net.dht_flight if not isinstance(x[1], Provide))  # b's provider record is late
    net.run()
    assert net.relays["a"].table.members("ch") == ["b"], "b's join found a"
    net.relays["a"].table.remove_member("ch", "b")  # as if b's join were lost
    net.providers[members_key("ch")]["b"] = None
    net.now = SETTLE + 2
    net.act("a", net.relays["a"].tick(net.now))
    net.run()
    assert net.relays["a"].table.members("ch") == ["b"], "the second lookup repaired it"
    sent = 0
    while (when := min(r.next_timer() or float("inf") for r in net.relays.values())) < 3600:
        net.now = when
        for name, relay in net.relays.items():
            net.act(name, relay.tick(net.now))
        sent += len(net.flight)
        net.run()
    assert sent == 0, "an idle channel costs no envelope: only DHT lookups"


def test_get_node_connection_introduces_through_a_neighbour_or_answers_not_connected():
    net = line("a", "b", "c")
    got = []
    net.act("a", net.relays["a"].command("b", {"command": "get-node-connection", "node": "c"}, net.now,
                                         lambda inm, now: got.append(inm.data)))
    net.run()
    [(node, _)] = net.relays["c"]._tokens.values()
    assert node == "a", "c issued a token for a only"
    assert got == [{"ok": True, "host": "/p2p/c", "token": next(iter(net.relays["c"]._tokens))}]

    # a silent target: b answers "target not connected" once the command times out
    silent = Net("a", "b")
    silent.link("a", "b")
    silent.run()
    silent.relays["b"].neighbours.append("ghost")
    got = []
    silent.act("a", silent.relays["a"].command("b", {"command": "get-node-connection", "node": "ghost"}, 0.0,
                                               lambda inm, now: got.append(inm.data)))
    while silent.flight:
        src, dst, inm = silent.flight.popleft()
        if dst != "ghost":
            silent.act(dst, silent.relays[dst].receive(inm, src, silent.now))
    assert got == []
    silent.act("b", silent.relays["b"].tick(COMMAND_TIMEOUT + 1))
    silent.run()
    assert got == [{"ok": False, "reason": "target not connected"}]


def test_commands_only_the_adapter_can_answer_are_handed_to_it_and_unknown_ones_refused():
    relay = relay_for("me", lambda: 0)
    relay.link_up("p", 0.0)
    for command in ("node-stats", "host-stats", "get-latency"):
        inm = Inm("p", "me", "command", f"n-{command}", {"command": command})
        assert relay.receive(inm, "p", 0.0) == [AnswerLocally(inm)]
    [send] = relay.receive(Inm("p", "me", "command", "n-x", {"command": "nope"}), "p", 0.0)
    assert send.inm.data == {"ok": False, "reason": "unknown command"} and send.targets == ("p",)
    relay.register("ext", lambda inm: {"echo": inm.data["v"]})
    [send] = relay.receive(Inm("p", "me", "command", "n-e", {"command": "ext", "v": 7}), "p", 0.0)
    assert send.inm.data == {"echo": 7}
    for taken in ("ext", "list-channels", "node-stats"):
        with pytest.raises(ValueError):
            relay.register(taken, lambda inm: None)


def test_bad_envelopes_are_dropped_and_counted_by_reason():
    relay = relay_for("me", lambda: 0)
    relay.link_up("p", 0.0)
    bad = Inm("p", "me", "command", "n1", {"command": "channel-leave", "channel": ["x"]})
    assert relay.receive(bad, "p", 0.0) == []
    assert relay.receive(bad, "p", 0.0) == []
    relay.receive(Inm("me", BROADCAST, "command", "n2", {"command": "list-nodes"}), "p", 0.0)
    relay.receive(Inm("p", MEMBERS, "message", "n3", {"channel": "x", "message": "%%%"}), "p", 0.0)
    relay.receive(Inm("p", MEMBERS, "message", "n4", {"message": "%%%"}), "p", 0.0)
    assert [relay.dropped.get(reason=r) for r in ("bad data", "duplicate", "own", "channel not open here")] == [2, 1, 1, 1]
    [reply] = relay.receive(Inm("p", "me", "command", "n5", {"command": "reserve-channel", "channel": "x", "owner": "p",
                                                              "at": -1}), "p", 0.0)
    assert reply.inm.data == {"ok": False, "reason": "reservation: at must be wall-clock milliseconds"}


def test_one_time_tokens_admit_only_their_node_once_and_a_wrong_use_wipes_them():
    relay = relay_for("me", lambda: 0, network_token="secret")
    peer = "12D3KooWHu5UDiWacaCzqtHboSFD2b212f53gR4F1NAmHuBtaYvk"

    def hello(name: str, token: str) -> bytes:
        return json.dumps({"command": "handshake", "data": {"name": name, "token": token}}).encode()

    def issue() -> str:
        [send] = relay.receive(Inm("p", "me", "command", f"t{len(relay._tokens)}-{issue.n}", {"command": "get-connection-token", "node": peer}), "p", 0.0)
        issue.n += 1
        return send.inm.data["token"]

    issue.n = 0
    token = issue()
    assert relay.accept_handshake(peer, hello(peer, token), 1.0)
    assert not relay.accept_handshake(peer, hello(peer, token), 1.0), "single use"
    token = issue()
    assert not relay.accept_handshake("12D3KooWSomeoneElse", hello("12D3KooWSomeoneElse", token), 1.0)
    assert not relay.accept_handshake(peer, hello(peer, token), 1.0), "as in WSRelay: a failed attempt wipes the token"
    token = issue()
    assert not relay.accept_handshake(peer, hello(peer, token), 61.0), "expired"
    assert not relay.accept_handshake(peer, hello(peer, "secret"), 1.0), "the token itself is never a credential"
    assert not relay.accept_handshake(peer, hello(peer, "wrong"), 1.0)
    assert not relay.accept_handshake(peer, b"\xff", 1.0)


def test_a_private_networks_token_is_proven_for_one_pair_and_never_sent():
    a, b = (relay_for(name, lambda: 0, network_token="s3cret-network-token") for name in ("peer-a", "peer-b"))
    hello = a.hello("peer-b")
    assert b"s3cret-network-token" not in hello and json.loads(hello)["data"]["proof"] == link_proof("s3cret-network-token", "peer-a", "peer-b")
    assert b.accept_handshake("peer-a", hello, 0.0)
    c = relay_for("peer-c", lambda: 0, network_token="s3cret-network-token")
    assert not c.accept_handshake("peer-a", hello, 0.0), "a proof made for b admits no one to c"
    assert not a.accept_handshake("peer-a", hello, 0.0)
    outsider = relay_for("peer-a", lambda: 0, network_token="another-token")
    assert not b.accept_handshake("peer-a", outsider.hello("peer-b"), 0.0)
    odd = json.dumps({"command": "handshake", "data": {"name": "peer-a", "proof": "\u00e9" * 64}}).encode()
    assert not b.accept_handshake("peer-a", odd, 0.0)
    assert json.loads(relay_for("open", lambda: 0).hello("x")) == {"command": "handshake", "data": {"name": "open"}}


def heard(relay: ChannelRelay) -> list[str]:
    """A broadcast command of another protocol, whose handler records whom it believed."""
    sources: list[str] = []
    relay.register("hello-all", lambda inm: sources.append(inm.source))
    return sources


def announce_from(source: str, nonce: str, at: int, sig: str | None = None) -> Inm:
    data = {"command": "hello-all"}
    inm = Inm(source, BROADCAST, "command", nonce, data, at)
    return replace(inm, sig=modelled_sign(inm) if sig is None else sig)


def test_an_envelope_its_source_did_not_hand_over_is_believed_only_signed_recent_and_new():
    wall = 1_000_000
    relay = relay_for("me", lambda: wall)
    sources = heard(relay)
    relay.link_up("p", 0.0)
    # a first hop claiming another source: refused, and nothing is sent to the made-up node
    assert relay.receive(Inm("ghost", "me", "command", "n1", {"command": "list-nodes"}), "p", 0.0) == []
    assert relay.receive(replace(announce_from("q", "n2", wall), sig=""), "p", 0.0) == []
    assert relay.dropped.get(reason="unauthenticated source") == 2
    # a forged signature first must not spoil the genuine envelope with the same nonce
    assert relay.receive(announce_from("q", "n3", wall, sig="tag-of:someone-else"), "p", 0.0) == [CutLink("p")], \
        "a neighbour passing on a forged signature loses its link"
    assert relay.dropped.get(reason="bad signature") == 1
    relay.receive(announce_from("q", "n3", wall), "p", 0.0)
    assert sources == ["q"]
    # too old, from the future, and the same envelope again
    for at, reason in ((wall - 61_000, "stale"), (wall + 61_000, "from the future")):
        assert relay.receive(announce_from("q", f"n-{reason}", at), "p", 0.0) == []
        assert relay.dropped.get(reason=reason) == 1
    assert relay.receive(announce_from("q", "n3", wall), "p", 1.0) == []
    assert relay.dropped.get(reason="duplicate") == 1
    # from its source, a signature is checked too (a forged one cuts), and an unsigned broadcast
    # is handled but not passed on: the next node could not believe it
    relay.link_up("q", 0.0)
    relay.link_up("r", 0.0)
    assert relay.receive(announce_from("q", "n6", wall, sig="bad"), "q", 0.0) == [CutLink("q")]
    assert relay.receive(replace(announce_from("q", "n5", wall), sig=""), "q", 0.0) == []
    assert [a for a in relay.receive(announce_from("q", "n7", wall), "q", 0.0) if isinstance(a, SendEnvelope)] \
        == [SendEnvelope(announce_from("q", "n7", wall), ("p", "r"))]
    # its source handing it over needs no signature (the link is Noise-authenticated)
    relay.link_up("q", 0.0)
    [reply] = relay.receive(Inm("q", "me", "command", "n4", {"command": "list-nodes"}), "q", 0.0)
    assert reply.targets == ("q",)


def test_broadcasts_carry_the_identity_keys_signature_which_the_peer_id_checks():
    keys = [Ed25519PrivateKey.generate() for _ in range(2)]
    ids = [peer_id_to_str(peer_id_from_public_key(k.public_key())) for k in keys]
    relay = ChannelRelay(ids[0], lambda: 5_000, partial(sign_envelope, keys[0]), verify_envelope, partial(sign_reservation, keys[0]))
    relay.link_up(ids[1], 0.0)
    [send] = relay.broadcast({"command": "hello-all", "channel": "x"}, 0.0, answered=False)
    sent = decode(send.inm.encode())
    assert sent == send.inm and sent.at == 5_000 and verify_envelope(sent)
    assert not verify_envelope(replace(sent, data={**sent.data, "channel": "y"})), "data is signed"
    assert not verify_envelope(replace(sent, at=5_001)), "the time is signed"
    assert not verify_envelope(replace(sent, source=ids[1])), "only the source's key verifies"
    assert not verify_envelope(replace(sent, source="not-a-peer-id"))
    assert not verify_envelope(replace(sent, sig="%%%"))
    other = ChannelRelay(ids[1], lambda: 5_000, partial(sign_envelope, keys[1]), verify_envelope, partial(sign_reservation, keys[1]))
    sources = heard(other)
    other.link_up("x", 0.0)
    other.receive(sent, "x", 0.0)
    assert sources == [ids[0]], "passed on by a third node, it is believed"


@pytest.mark.parametrize("extra", [{"sig": "x" * 101, "at": 1}, {"sig": 5, "at": 1}, {"sig": "abc"}, {"sig": "abc", "at": True},
                                   {"sig": "abc", "at": -1}, {"sig": "abc", "at": 2**63}, {"sig": "abc", "at": "1"}])
def test_a_signature_field_out_of_bounds_is_a_clear_decode_error(extra):
    raw = json.dumps({"source": "a", "destination": "*", "type": "command", "nonce": "n", "data": {}, **extra}).encode()
    with pytest.raises(DecodeError, match="INM: sig must be"):
        decode(raw)


def test_an_introduction_is_answered_once_and_strangers_cannot_pile_them_up():
    net = line("a", "b", "c")
    got = []
    net.act("a", net.relays["a"].command("b", {"command": "get-node-connection", "node": "c"}, net.now,
                                         lambda inm, now: got.append(inm.data)))
    net.run()
    assert [answer["ok"] for answer in got] == [True]
    assert net.relays["b"].tick(COMMAND_TIMEOUT + 1) == [], "the answered command's timeout does not fire"
    assert len(got) == 1
    # introductions whose target stays silent hold a waiting response each: at most MAX_INTRODUCTIONS
    relay = relay_for("me", lambda: 0)
    relay.link_up("p", 0.0)
    relay.link_up("silent", 0.0)
    answers = [relay.receive(Inm("p", "me", "command", f"q{i}", {"command": "get-node-connection", "node": "silent"}), "p", 0.0)
               for i in range(MAX_INTRODUCTIONS + 5)]
    busy = [a for a in answers if a and a[0].inm.destination == "p"]
    assert len(busy) == 5 and all(a[0].inm.data == {"ok": False, "reason": "busy"} for a in busy)
    assert relay.dropped.get(reason="introductions busy") == 5
    timed_out = relay.tick(COMMAND_TIMEOUT + 1)
    assert len(timed_out) == MAX_INTRODUCTIONS, "each waiting introduction is answered 'target not connected'"
    assert relay.receive(Inm("p", "me", "command", "again", {"command": "get-node-connection", "node": "silent"}), "p", 10.0)[0] \
        .inm.destination == "silent", "and the slots are free again"
