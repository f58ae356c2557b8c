"""A large channel's mesh (overlay/channels/mesh.py), as a core and inside relays wired by the
test network of test_channel_relay: bounded degree, once-only in-order delivery per publisher,
repair of what a link lost, and what a lying member cannot do."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from overlay.channels import mesh as meshes
from overlay.channels.inm import MEMBERS, Inm
from overlay.channels.mesh import D_HI, D_LO, GAP_GIVEUP, GAP_WAIT, HEARTBEAT, ChannelMesh, Control, Release, Resend
from overlay.channels.relay import CutLink, SendEnvelope
from overlay.core.metrics import Counter
from tests.unit.test_channel_relay import Net

pytestmark = pytest.mark.timeout(60)


def core() -> tuple[ChannelMesh, Counter]:
    dropped = Counter()
    mesh = ChannelMesh("me", random.Random(1), lambda reason: dropped.inc(reason=reason))
    mesh.open("ch", 1000)
    return mesh, dropped


# ---- the core ----

def test_a_publishers_messages_are_delivered_once_and_in_order_whatever_order_they_come_in():
    mesh, dropped = core()
    assert mesh.accept("ch", "o", 5, 10, "m10", "p", 0.0) == ["m10"], "the first message of an origin starts it"
    assert mesh.accept("ch", "o", 5, 12, "m12", "p", 0.0) == [] and mesh.duplicate("ch", "o", 5, 12)
    assert mesh.accept("ch", "o", 5, 13, "m13", "q", 0.0) == []
    assert mesh.accept("ch", "o", 5, 11, "m11", "q", 0.0) == ["m11", "m12", "m13"]
    assert mesh.duplicate("ch", "o", 5, 11) and mesh.duplicate("ch", "o", 5, 3) and not mesh.duplicate("ch", "o", 5, 14)
    assert mesh.duplicate("ch", "o", 4, 99), "an older epoch is over"
    assert mesh.accept("ch", "o", 6, 1, "new", "p", 0.0) == ["new"], "a newer epoch: the origin started anew"
    assert mesh.next_timer() is None and dropped.values == {}


def test_an_origin_that_began_after_the_channel_opened_here_is_expected_from_its_first_message():
    """Found by the churn test: the origin's direct link to a member redialed while other members
    passed its later messages on; the member started the origin at the first copy it heard and
    dropped the first messages as old when they came."""
    mesh, dropped = core()  # open here since 1000 (ms)
    assert mesh.accept("ch", "o", 2000, 3, "m3", "p", 0.0) == [], "1 and 2 are ours too: a gap"
    assert mesh.accept("ch", "o", 2000, 1, "m1", "o", 0.01) == ["m1"]
    assert not mesh.duplicate("ch", "o", 2000, 2)
    assert mesh.accept("ch", "o", 2000, 2, "m2", "o", 0.01) == ["m2", "m3"]
    assert dropped.values == {}
    assert mesh.accept("ch", "late", 500, 7, "l7", "p", 0.0) == ["l7"], "began before we opened: starts where heard"


def test_an_origins_told_position_makes_every_later_message_expected_whatever_copy_comes_first():
    mesh, dropped = core()
    mesh.start("ch", "o", [500, 7], 0.0)  # the origin (open before us) joined us at seq 7
    assert mesh.accept("ch", "o", 500, 9, "m9", "p", 0.0) == [], "8 is ours: a gap, not a start at 9"
    assert mesh.accept("ch", "o", 500, 8, "m8", "o", 0.0) == ["m8", "m9"]
    mesh.start("ch", "o", [500, 2], 0.0)
    assert mesh.duplicate("ch", "o", 500, 9), "a position changes nothing of an epoch already followed"
    for bad in ([500], ["x", 1], [500, -1], [True, 1], None):
        mesh.start("ch", "b", bad, 0.0)
    assert mesh.accept("ch", "b", 500, 4, "b4", "p", 0.0) == ["b4"] and dropped.values == {}


def test_a_gap_is_asked_for_from_who_passed_the_later_message_then_given_up_and_counted():
    mesh, dropped = core()
    mesh.accept("ch", "o", 1, 1, "m1", "p", 0.0)
    assert mesh.accept("ch", "o", 1, 4, "m4", "q", 0.0) == []
    assert mesh.next_timer() == GAP_WAIT
    [ask] = mesh.tick(GAP_WAIT, lambda name: [])
    assert ask == Control("q", {"command": meshes.IWANT, "channel": "ch", "want": [["o", 1, 2], ["o", 1, 3]]})
    assert mesh.accept("ch", "o", 1, 2, "m2", "q", GAP_WAIT) == ["m2"], "what came is delivered; 3 is still missing"
    assert mesh.tick(GAP_WAIT + GAP_GIVEUP, lambda name: []) == [Release("ch", ["m4"])]
    assert dropped.get(reason="lost") == 1 and mesh.next_timer() is None
    assert mesh.duplicate("ch", "o", 1, 3), "given up: a late copy is not delivered out of order"


def test_buffers_are_bounded_a_far_jump_gives_the_gap_up_at_once(monkeypatch):
    mesh, dropped = core()
    mesh.accept("ch", "o", 1, 1, "m1", "p", 0.0)
    assert mesh.accept("ch", "o", 1, 2 + meshes.REORDER_MAX + 1, "far", "p", 0.0) == ["far"]
    assert dropped.get(reason="lost") == meshes.REORDER_MAX + 1
    monkeypatch.setattr(meshes, "MAX_BUFFERED", 3)
    for origin in "abcd":
        mesh.accept("ch", origin, 1, 1, "first", "p", 0.0)
    assert [mesh.accept("ch", o, 1, 3, f"{o}3", "p", 0.0) for o in "abcd"] == [[], [], [], ["d3"]]
    monkeypatch.setattr(meshes, "MAX_ORIGINS", 5)
    assert mesh.accept("ch", "e", 1, 1, "e1", "p", 0.0) == [] and dropped.get(reason="publishers full") == 1
    assert mesh.accept("ch", "e", 1, 1, "e1", "p", meshes.ORIGIN_IDLE + 1) == ["e1"], "idle origins make room"


def test_the_repair_cache_is_bounded_in_count_bytes_and_time(monkeypatch):
    mesh, dropped = core()
    monkeypatch.setattr(meshes, "CACHE_MAX", 3)
    for seq in range(1, 6):
        mesh.remember("ch", "o", 1, seq, f"env{seq}", 10, 0.0)
    want = [["o", 1, s] for s in range(1, 6)]
    assert mesh.on_iwant("ch", "p", want, 0.0) == [Resend("p", f"env{s}") for s in (3, 4, 5)]
    assert dropped.get(reason="repair missed") == 2
    assert mesh.on_iwant("ch", "p", want, meshes.CACHE_FOR + 1) == []
    with pytest.raises(ValueError):
        mesh.on_iwant("ch", "p", [["o", -1, 2]], 0.0)


def test_the_degree_is_kept_within_bounds_and_a_graft_beyond_it_is_pruned():
    mesh, _ = core()
    members = [f"m{i}" for i in range(40)]
    mesh.mark_large("ch", 0.0)
    grafts = mesh.tick(HEARTBEAT, lambda name: members)
    assert len(grafts) == meshes.D and all(g.data == {"command": meshes.GRAFT, "channel": "ch"} for g in grafts)
    assert mesh.next_timer() is None, "nothing changed, nothing is due"
    for peer in members[:D_HI]:
        mesh.on_graft("ch", peer, True, 2.0)
    assert len(mesh.peers("ch")) == D_HI
    assert mesh.on_graft("ch", "m39", True, 2.0) == [Control("m39", {"command": meshes.PRUNE, "channel": "ch"})]
    assert mesh.on_graft("ch", "stranger", False, 2.0)[0].data["command"] == meshes.PRUNE
    for peer in list(mesh.peers("ch"))[:D_HI - D_LO + 1]:
        mesh.on_prune("ch", peer, 3.0)
    assert len(mesh.peers("ch")) == D_LO - 1 and mesh.next_timer() == 3.0 + HEARTBEAT
    regrafts = mesh.tick(3.0 + HEARTBEAT, lambda name: members)
    assert len(mesh.peers("ch")) == meshes.D and not {g.peer for g in regrafts} & set(mesh.channels["ch"].backoff)


def test_a_digest_asks_only_for_what_is_missing_and_an_idle_channel_sends_none():
    mesh, _ = core()
    mesh.mark_large("ch", 0.0)
    mesh.on_graft("ch", "p", True, 0.0)
    mesh.accept("ch", "o", 1, 1, "m1", "p", 0.0)
    mesh.accept("ch", "o", 1, 3, "m3", "p", 0.0)
    [iwant] = mesh.on_ihave("ch", "p", [["o", 1, 5], ["unknown", 1, 9], ["me", 1000, 4]], 0.1)
    assert iwant.data["want"] == [["o", 1, 2], ["o", 1, 4], ["o", 1, 5]]
    out = mesh.tick(HEARTBEAT, lambda name: ["p"])
    assert Control("p", {"command": meshes.IHAVE, "channel": "ch", "have": [["o", 1, 3]]}) in out
    mesh.tick(GAP_WAIT + GAP_GIVEUP + 10, lambda name: ["p"])
    assert mesh.tick(100.0, lambda name: ["p"]) == [] and mesh.next_timer() is None


# ---- in relays ----

NODES = [f"n{i:02d}" for i in range(40)]


@pytest.fixture
def large(monkeypatch) -> Net:
    """40 member nodes of one channel, large beyond 8 members; meshes formed."""
    monkeypatch.setattr(meshes, "DIRECT_MAX", 8)
    monkeypatch.setattr(meshes, "FANOUT", 2)
    net = Net(*NODES)
    for i, name in enumerate(NODES):
        assert net.subscribe(name, i) is None
    for _ in range(3):
        advance(net, HEARTBEAT)
    return net


def advance(net: Net, seconds: float) -> None:
    net.now += seconds
    for name, relay in net.relays.items():
        net.act(name, relay.tick(net.now))
    net.run()


def messages(net: Net) -> list[tuple[str, str, Inm]]:
    return [f for f in net.flight if f[2].type == "message"]


def test_a_large_channels_messages_travel_the_mesh_once_to_each_subscriber_in_order(large):
    net = large
    for relay in net.relays.values():
        assert relay.mesh.large("ch") and D_LO <= len(relay.mesh.peers("ch")) <= D_HI
        assert all(relay.table.is_member("ch", p) for p in relay.mesh.peers("ch"))
    sent = 0
    for k in range(5):
        for publisher in ("n00", "n17"):
            reason, actions = net.relays[publisher].publish(NODES.index(publisher), "ch", f"{publisher}-{k}", f"c{k}", net.now)
            assert reason is None
            [send] = [a for a in actions if isinstance(a, SendEnvelope)]
            assert send.inm.sig and len(send.targets) <= D_HI + meshes.FANOUT, "signed once, to the mesh and a few"
            net.act(publisher, actions)
            sent += len(net.flight)
            net.run()
    for name in NODES:
        got = [d.message for d in net.delivered[name]]
        for publisher in ("n00", "n17"):
            expected = [] if name == publisher else [f"{publisher}-{k}" for k in range(5)]
            assert [m for m in got if m.startswith(publisher)] == expected, name
    assert sum(r.dropped.get(reason="duplicate") for r in net.relays.values()) > 0, "the mesh has redundant paths"


def carry(net: Net, lose=lambda src, dst, inm: False) -> None:
    """Carry envelopes until none is in flight, losing those `lose` picks."""
    while net.flight:
        src, dst, inm = net.flight.popleft()
        if not lose(src, dst, inm):
            net.act(dst, net.relays[dst].receive(inm, src, net.now))


def publish(net: Net, node: str, text: str) -> None:
    net.act(node, net.relays[node].publish(NODES.index(node), "ch", text, text, net.now)[1])


VICTIM = "n21"


def to_victim(text: str):
    return lambda src, dst, inm: dst == VICTIM and inm.type == "message" and inm.data["message"] == text


def test_a_message_every_copy_of_which_was_lost_is_repaired_from_a_digest(large):
    net = large
    publish(net, "n00", "m0")
    carry(net)
    publish(net, "n00", "m1")
    carry(net, lose=to_victim("m1"))
    assert [d.message for d in net.delivered[VICTIM]] == ["m0"]
    advance(net, HEARTBEAT)  # its mesh peers' digests name m1
    assert [d.message for d in net.delivered[VICTIM]] == ["m0", "m1"]
    assert all([d.message for d in net.delivered[n]] == ["m0", "m1"] for n in NODES if n != "n00"), "once each"


def test_a_gap_seen_on_a_later_message_is_filled_by_asking_whoever_passed_it(large):
    net = large
    publish(net, "n00", "m0")
    carry(net)
    publish(net, "n00", "m1")
    publish(net, "n00", "m2")
    carry(net, lose=to_victim("m1"))
    assert [d.message for d in net.delivered[VICTIM]] == ["m0"], "m2 waits behind the gap"
    advance(net, GAP_WAIT)
    assert [d.message for d in net.delivered[VICTIM]] == ["m0", "m1", "m2"]
    assert net.relays[VICTIM].received.get(type="message") == 3


def test_a_lying_member_cannot_forge_replay_or_make_others_verify_duplicates(large):
    net = large
    victim = net.relays[VICTIM]
    publish(net, "n00", "real")
    real = next(inm for _, _, inm in net.flight if inm.type == "message")
    carry(net)
    verified: list[Inm] = []
    verify = victim.verify
    victim.verify = lambda inm: verified.append(inm) or verify(inm)
    liar = sorted(victim.mesh.peers("ch") - {"n00"})[0]
    epoch = real.data["epoch"]
    assert victim.receive(real, liar, net.now) == [] and verified == [], "a replayed copy costs no verification"
    forged = replace(real, data={**real.data, "seq": 2, "message": "send all funds"}, sig="forged")
    assert victim.receive(forged, liar, net.now) == [CutLink(liar)] and victim.dropped.get(reason="bad signature") == 1
    unsigned = Inm("n00", MEMBERS, "message", "u1", {"channel": "ch", "epoch": epoch, "seq": 3, "message": "x", "nonce": "x"})
    assert victim.receive(unsigned, liar, net.now) == [] and victim.dropped.get(reason="unauthenticated source") == 1
    liar_epoch = net.relays[liar].mesh.position("ch")[0]  # told in its join: an older epoch would be a duplicate
    stale = Inm(liar, MEMBERS, "message", "s1", {"channel": "ch", "epoch": liar_epoch, "seq": 1, "message": "old", "nonce": "o"},
                net.wall() - 120_000)
    assert victim.receive(replace(stale, sig=f"tag-of:{liar}"), liar, net.now) == []
    assert victim.dropped.get(reason="stale") == 1
    stranger = victim.receive(Inm("x", VICTIM, "command", "g1", {"command": meshes.GRAFT, "channel": "ch"}), "x", net.now)
    assert [a.inm.data["command"] for a in stranger] == [meshes.PRUNE] and "x" not in victim.mesh.peers("ch")
    digest = {"command": meshes.IHAVE, "channel": "ch", "have": [["n00", epoch, 1000]]}
    assert victim.receive(Inm("x", VICTIM, "command", "h1", digest), "x", net.now) == []
    assert victim.dropped.get(reason="not a member") == 1
    assert [d.message for d in net.delivered[VICTIM]] == ["real"]


def test_a_publisher_linked_to_each_of_a_few_dozen_members_sends_to_each_unsigned_and_none_passes_it_on(monkeypatch):
    monkeypatch.setattr(meshes, "DIRECT_MAX", 4)
    names = NODES[:10]
    net = Net(*names)
    for i, name in enumerate(names):
        assert net.subscribe(name, i) is None
    for _ in range(3):
        advance(net, HEARTBEAT)
    publisher = net.relays["n00"]
    others = sorted(publisher.table.members("ch"))
    assert publisher.mesh.large("ch") and len(others) == 9

    def send(text: str) -> SendEnvelope:
        reason, actions = publisher.publish(0, "ch", text, text, net.now)
        assert reason is None
        net.act("n00", actions)
        [envelope] = [a for a in actions if isinstance(a, SendEnvelope)]
        return envelope

    publisher.linked = lambda peer: True
    hot = send("hot")
    assert not hot.inm.sig and sorted(hot.targets) == others, "to every member, as a small channel's"
    carried = 0
    while net.flight:
        src, dst, inm = net.flight.popleft()
        carried += inm.type == "message"
        net.act(dst, net.relays[dst].receive(inm, src, net.now))
    assert carried == 9, "nobody passed a copy on"
    assert all([d.message for d in net.delivered[n]] == ["hot"] for n in others)
    publisher.linked = lambda peer: peer != others[0]
    cold = send("cold")
    assert cold.inm.sig, "one member without a link: the mesh, signed"
    carry(net)
    assert all([d.message for d in net.delivered[n]] == ["hot", "cold"] for n in others)
    publisher.linked = lambda peer: True
    monkeypatch.setattr(meshes, "LINKED_MAX", 8)
    assert send("many").inm.sig, "beyond LINKED_MAX members, the mesh whatever the links"
