"""The signalling message codec, the server's forwarding rules and the registration machine,
driven directly (no I/O)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from overlay.core.errors import DecodeError, ProtocolError
from overlay.core.peer import PeerInfo
from overlay.core.records import peer_id_to_str
from signaling import messages
from overlay.kademlia.routing import key_position
from signaling.registrations import AskLoad, Changed, NeedCandidates, RegisterWith, Registrations, Release
from signaling.server import CloseStream, ServerLimits, SignalingServer, StreamRole, Write


def peer(i: int) -> str:
    return peer_id_to_str(b"\x00\x24\x08\x01\x12\x20" + i.to_bytes(32, "big"))


A, B, C = peer(1), peer(2), peer(3)
BODY = {"ufrag": "abcd"}


# ---- codec -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "msg",
    [
        messages.Register(), messages.Registered(60), messages.Ping(), messages.Pong(), messages.Accepted(), messages.Connected(),
        messages.Signal("s1", "offer", BODY, to=A), messages.Signal("s-2_x", "bye", {}, sender=B),
        messages.Error("not-registered", "gone", "s1"), messages.Error("full"), messages.Connect(A), messages.Incoming(B),
    ],
)
def test_round_trip(msg):
    assert messages.decode(messages.encode(msg)) == msg


@pytest.mark.parametrize(
    "obj, reason",
    [
        ([], "JSON object"),
        ({"type": 3}, "string 'type'"),
        ({"type": "nope"}, "unknown message type"),
        ({"type": "registered", "ttl": 0}, "ttl"),
        ({"type": "registered", "ttl": True}, "ttl"),
        ({"type": "signal", "kind": "offer", "body": {}, "session": "s"}, "exactly one"),
        ({"type": "signal", "kind": "offer", "body": {}, "session": "s", "to": A, "from": B}, "exactly one"),
        ({"type": "signal", "kind": "shout", "body": {}, "session": "s", "to": A}, "kind"),
        ({"type": "signal", "kind": "offer", "body": [], "session": "s", "to": A}, "body"),
        ({"type": "signal", "kind": "offer", "body": {}, "session": "bad space", "to": A}, "session"),
        ({"type": "signal", "kind": "offer", "body": {}, "session": "x" * 65, "to": A}, "session"),
        ({"type": "signal", "kind": "offer", "body": {}, "session": "s", "to": "not-a-peer"}, "'to'"),
        ({"type": "connect", "to": 5}, "peer ID"),
        ({"type": "error", "code": "whatever"}, "unknown code"),
    ],
)
def test_bad_messages_are_refused_with_the_reason(obj, reason):
    with pytest.raises(DecodeError, match=reason):
        messages.decode(json.dumps(obj).encode())


def test_size_limit_is_exact():
    pad = messages.MAX_FRAME - len(json.dumps({"type": "ping", "p": ""}, separators=(",", ":")))
    assert messages.decode(json.dumps({"type": "ping", "p": "x" * pad}, separators=(",", ":")).encode()) == messages.Ping()
    with pytest.raises(DecodeError, match="exceeds"):
        messages.decode(json.dumps({"type": "ping", "p": "x" * (pad + 1)}, separators=(",", ":")).encode())
    with pytest.raises(DecodeError, match="exceeds"):
        messages.encode(messages.Signal("s", "offer", {"x": "y" * messages.MAX_FRAME}, to=A))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_decode_or_raise_decode_error(data):
    try:
        messages.decode(data)
    except DecodeError:
        pass


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["signal", "error", "registered", "connect", "incoming", "register"]),
       st.dictionaries(st.sampled_from(["to", "from", "kind", "body", "session", "ttl", "code", "reason"]), json_values))
def test_arbitrary_fields_decode_or_raise_decode_error(kind, fields):
    try:
        messages.decode(json.dumps({"type": kind, **fields}).encode())
    except DecodeError:
        pass


# ---- server ------------------------------------------------------------------------------------


def writes(actions, stream=None):
    return [a.message for a in actions if isinstance(a, Write) and (stream is None or a.stream == stream)]


def closes(actions):
    return [a.stream for a in actions if isinstance(a, CloseStream)]


def registered_server(limits: ServerLimits = ServerLimits()) -> SignalingServer:
    """B registered on stream 1; A's session stream is 2."""
    s = SignalingServer(limits)
    s.opened(1, B, 0.0)
    assert writes(s.message(1, messages.Register(), 0.0)) == [messages.Registered(limits.ttl)]
    s.opened(2, A, 0.0)
    return s


def test_offer_answer_and_candidates_are_forwarded_with_the_authenticated_sender():
    s = registered_server()
    out = s.message(2, messages.Signal("s1", "offer", BODY, to=B), 1.0)
    assert out == [Write(1, messages.Signal("s1", "offer", BODY, sender=A))]
    out = s.message(1, messages.Signal("s1", "answer", BODY, to=A), 1.1)
    assert out == [Write(2, messages.Signal("s1", "answer", BODY, sender=B))]
    out = s.message(2, messages.Signal("s1", "candidate", {"candidate": "x"}, to=B), 1.2)
    assert writes(out, 1) == [messages.Signal("s1", "candidate", {"candidate": "x"}, sender=A)]
    assert s.counters.forwarded == 3


def test_offers_for_unregistered_peers_are_refused_and_the_stream_stays_open():
    s = registered_server()
    out = s.message(2, messages.Signal("s1", "offer", BODY, to=C), 1.0)
    assert writes(out) == [messages.Error("not-registered", f"{C} is not registered here", "s1")] and not closes(out)
    assert s.counters.dropped["not-registered"] == 1


def test_a_registered_peer_reaches_only_callers_with_a_session_to_it():
    s = registered_server()
    out = s.message(1, messages.Signal("s1", "answer", BODY, to=A), 1.0)
    assert writes(out) == [messages.Error("no-session", "no such session with that caller", "s1")]
    s.opened(3, C, 0.0)
    s.message(3, messages.Register(), 0.0)
    s.message(2, messages.Signal("s1", "offer", BODY, to=B), 1.0)
    out = s.message(3, messages.Signal("s1", "answer", BODY, to=A), 1.1)  # C answers for B's session
    assert writes(out)[0].code == "no-session"


def test_a_session_continues_only_on_its_own_stream_and_must_start_with_an_offer():
    s = registered_server()
    assert writes(s.message(2, messages.Signal("s1", "candidate", {}, to=B), 1.0))[0].code == "no-session"
    s.message(2, messages.Signal("s1", "offer", BODY, to=B), 1.0)
    s.opened(4, A, 1.0)
    assert writes(s.message(4, messages.Signal("s1", "candidate", {}, to=B), 1.1))[0].code == "no-session"


def test_flood_of_offers_is_rate_limited_per_peer_and_others_are_served():
    limits = ServerLimits(rate=1.0, burst=5.0, max_sessions_per_caller=100)
    s = registered_server(limits)
    results = [writes(s.message(2, messages.Signal(f"s{i}", "offer", BODY, to=B), 1.0)) for i in range(50)]
    refused = [r for r in results if r and isinstance(r[0], messages.Error)]
    assert len(refused) == 45 and all(r[0].code == "rate-limited" for r in refused)
    assert s.counters.dropped["rate-limited"] == 45
    s.opened(5, C, 1.0)
    assert writes(s.message(5, messages.Signal("c1", "offer", BODY, to=B), 1.0)) == [messages.Signal("c1", "offer", BODY, sender=C)]
    assert writes(s.message(2, messages.Signal("late", "offer", BODY, to=B), 2.5))[0].kind == "offer", "refilled"


def test_sessions_per_caller_and_registrations_are_bounded():
    s = registered_server(ServerLimits(max_sessions_per_caller=2, max_registrations=1, burst=100))
    assert writes(s.message(2, messages.Signal("a", "offer", BODY, to=B), 1.0))[0].kind == "offer"
    assert writes(s.message(2, messages.Signal("b", "offer", BODY, to=B), 1.0))[0].kind == "offer"
    assert writes(s.message(2, messages.Signal("c", "offer", BODY, to=B), 1.0))[0].code == "full"
    s.opened(6, C, 1.0)
    out = s.message(6, messages.Register(), 1.0)
    assert writes(out)[0].code == "full" and closes(out) == [6]


def test_registrations_from_one_ip_are_bounded_and_a_leaving_one_frees_its_place():
    s = SignalingServer(ServerLimits(max_registrations_per_ip=2))
    for stream, p in ((1, A), (2, B)):
        s.opened(stream, p, 0.0, "198.51.100.7")
        assert writes(s.message(stream, messages.Register(), 0.0)) == [messages.Registered(60)]
    s.opened(3, C, 0.0, "198.51.100.7")
    out = s.message(3, messages.Register(), 0.0)
    assert writes(out)[0].code == "full" and closes(out) == [3] and not s.is_registered(C)
    s.opened(4, C, 0.0, "198.51.100.8")
    assert writes(s.message(4, messages.Register(), 0.0)) == [messages.Registered(60)], "another IP"
    s.opened(5, A, 0.0, "198.51.100.7")
    assert closes(s.message(5, messages.Register(), 0.0)) == [1], "registering again from the same IP replaces"
    s.closed(2, 1.0)
    s.opened(6, peer(9), 1.0, "198.51.100.7")
    assert writes(s.message(6, messages.Register(), 1.0)) == [messages.Registered(60)]
    s.opened(7, peer(10), 1.0, "")
    assert writes(s.message(7, messages.Register(), 1.0)) == [messages.Registered(60)], "no IP: per-peer only"


def test_registration_expires_without_keepalive_and_pings_keep_it():
    s = registered_server(ServerLimits(ttl=10))
    assert writes(s.message(1, messages.Ping(), 8.0)) == [messages.Pong()]
    assert not closes(s.handle_timer(15.0))
    assert s.is_registered(B)
    out = s.handle_timer(18.5)
    assert closes(out) == [1] and not s.is_registered(B)


def test_callee_leaving_tells_its_callers_and_caller_leaving_ends_its_sessions():
    s = registered_server()
    s.message(2, messages.Signal("s1", "offer", BODY, to=B), 1.0)
    assert writes(s.closed(1, 2.0)) == [messages.Error("not-registered", "the peer left", "s1")]
    s = registered_server()
    s.message(2, messages.Signal("s1", "offer", BODY, to=B), 1.0)
    s.closed(2, 2.0)
    assert s.sessions == 0


def test_register_again_replaces_the_old_stream():
    s = registered_server()
    s.opened(7, B, 1.0)
    out = s.message(7, messages.Register(), 1.0)
    assert closes(out) == [1] and writes(out, 7) == [messages.Registered(60)]
    s.message(2, messages.Signal("s1", "offer", BODY, to=B), 1.0)
    assert s.closed(1, 2.0) == [] and s.is_registered(B), "the old stream's close changes nothing"


def test_unexpected_messages_close_the_stream():
    s = registered_server()
    for msg in (messages.Ping(), messages.Pong(), messages.Connect(B), messages.Signal("s", "offer", BODY, sender=B)):
        s.opened(9, C, 0.0)
        out = s.message(9, msg, 0.0)
        assert writes(out)[0].code == "bad-message" and closes(out) == [9]
        s.closed(9, 0.0)


def test_a_stream_takes_its_role_from_its_first_message_and_keeps_it():
    s = registered_server()
    assert s._streams[1].role is StreamRole.REGISTRATION and s._streams[2].role is StreamRole.NEW
    s.message(2, messages.Signal("s1", "offer", BODY, to=B), 1.0)
    assert s._streams[2].role is StreamRole.SESSION
    out = s.message(2, messages.Register(), 1.0)  # a session stream cannot become a registration
    assert writes(out)[0].code == "bad-message" and closes(out) == [2] and s.is_registered(B)


def test_a_stream_opened_twice_is_an_adapter_bug():
    s = registered_server()
    with pytest.raises(ProtocolError, match="stream 2 opened twice"):
        s.opened(2, C, 1.0)
    assert s.message(99, messages.Ping(), 1.0) == [], "a stream the server closed itself may still deliver"


# ---- registrations -----------------------------------------------------------------------------


def info(i: int) -> PeerInfo:
    return PeerInfo(bytes([i]) * 4, (b"addr%d" % i,))


ME = b"\x00" * 4


def by_distance(ids: list[int]) -> list[int]:
    return sorted(ids, key=lambda i: key_position(info(i).peer_id) ^ key_position(ME))


def registers(actions):
    return [a.peer.peer_id for a in actions if isinstance(a, RegisterWith)]


def asked(actions):
    return [p.peer_id for a in actions if isinstance(a, AskLoad) for p in a.peers]


def answer_loads(r: Registrations, actions, loads: dict[int, int], now: float):
    """Answer every AskLoad in `actions` (peers not in `loads` fail); returns what followed."""
    out = []
    for peer_id in asked(actions):
        i = peer_id[0]
        out += r.loaded(peer_id, loads[i], now) if i in loads else r.load_failed(peer_id, now)
    return out


def registered(r: Registrations, actions, now: float) -> list[int]:
    """Let every RegisterWith in `actions` succeed; the indices now live."""
    for peer_id in registers(actions):
        r.succeeded(peer_id, now)
    return sorted(p.peer_id[0] for p in r.live)


def test_registers_with_the_least_loaded_of_the_closest_candidates():
    r = Registrations(ME, want=2, pool=4)
    closest = by_distance(list(range(1, 9)))
    out = r.offer([info(i) for i in range(1, 9)], 0.0)
    assert sorted(asked(out)) == sorted(info(i).peer_id for i in closest[:4]), "the pool: the 4 closest"
    assert not registers(out), "nothing chosen before the loads are known"
    loads = {closest[0]: 9, closest[1]: 1, closest[2]: 0, closest[3]: 1}
    out = answer_loads(r, out, loads, 0.1)
    assert registers(out) == [info(closest[2]).peer_id, info(closest[1]).peer_id], "least loaded, then the closer"
    assert registered(r, out, 0.2) == sorted([closest[1], closest[2]])


def test_bootstraps_are_the_fallback_and_are_left_once_others_are_known():
    r = Registrations(ME, want=2, pool=4, lookup_interval=60.0)
    out = r.offer([], 0.0, bootstraps=[info(1), info(2), info(3)])
    assert any(isinstance(a, NeedCandidates) for a in out)
    out = answer_loads(r, out, {1: 50, 2: 40, 3: 60}, 0.1)
    assert registered(r, out, 0.2) == [1, 2]
    out = r.offer([info(10), info(11), info(12)], 61.0)
    out = answer_loads(r, out, {10: 3, 11: 3, 12: 3}, 61.1)
    assert len(registers(out)) == 2 and not set(registers(out)) & {info(1).peer_id, info(2).peer_id}
    for peer_id in registers(out):
        follow = r.succeeded(peer_id, 61.2)
        assert [a.peer.peer_id[0] for a in follow if isinstance(a, Release)] in ([1], [2])
    assert all(p.peer_id[0] >= 10 for p in r.live) and len(r.live) == 2
    assert r.next_timer() >= 300.0, "nothing left to fill: only the next rebalance"


def test_a_burst_of_closer_fresh_identities_does_not_displace_live_registrations():
    r = Registrations(ME, want=3)
    out = answer_loads(r, r.offer([info(i) for i in range(1, 7)], 0.0), {i: 5 for i in range(1, 7)}, 0.1)
    live = registered(r, out, 0.2)
    sybils = [PeerInfo(bytes([200, i, 0, 0]), (b"x",)) for i in range(64)]
    out = r.offer(sybils, 1.0)
    assert not registers(out) and not asked(out), "no slot is open: newcomers are not even asked"
    assert registered(r, [], 1.0) == live
    out = r.lost(info(live[0]).peer_id, 2.0)  # a live one fails: its slot goes to the best of the pool now
    assert asked(out) or registers(out)


def test_fresh_candidates_enter_the_pool_only_once_settled():
    r = Registrations(ME, want=1, pool=2, settle=600.0)
    live = registered(r, answer_loads(r, r.offer([info(1), info(2)], 0.0), {1: 5, 2: 5}, 0.0), 0.0)
    sybils = [PeerInfo(bytes([200, i, 0, 0]), (b"x",)) for i in range(16)]
    out = r.offer(sybils, 690.0)  # a burst of fresh, closer, empty identities; then a slot opens
    assert set(asked(out)) <= {info(1).peer_id, info(2).peer_id}, "the rebalance asks only the settled"
    answer_loads(r, out, {1: 5, 2: 5}, 690.0)
    out = r.lost(info(live[0]).peer_id, 700.0)
    out += answer_loads(r, out, {1: 5, 2: 5}, 700.0)
    assert registers(out), "the slot is filled"
    assert set(asked(out) + registers(out)) <= {info(1).peer_id, info(2).peer_id}, "the settled ones only"


def test_a_registration_far_above_the_median_moves_to_a_lighter_settled_node_then_is_released():
    r = Registrations(ME, want=1, pool=3, settle=0.0, rebalance_interval=300.0)
    out = answer_loads(r, r.offer([info(1)], 0.0), {1: 0}, 0.0)
    assert registered(r, out, 0.0) == [1]
    out = r.offer([info(2), info(3)], 10.0)  # others arrive; 1 has since taken what came
    out += r.handle_timer(301.0)
    out = answer_loads(r, out, {1: 30, 2: 4, 3: 6}, 301.0)
    assert registers(out) == [info(2).peer_id]
    follow = r.succeeded(info(2).peer_id, 302.0)
    assert [a.peer.peer_id for a in follow if isinstance(a, Release)] == [info(1).peer_id]
    assert [p.peer_id for p in r.live] == [info(2).peer_id]
    out = r.handle_timer(700.0)
    out = answer_loads(r, out, {2: 9, 3: 6}, 700.0)
    assert not registers(out), "9 is not more than 1.5 times the median (+1): it stays"


def test_a_lost_registration_is_replaced_and_the_failed_node_backs_off():
    r = Registrations(ME, want=2, pool=3, retry=5.0)
    a, b, c = by_distance([1, 2, 3])
    out = answer_loads(r, r.offer([info(i) for i in (1, 2, 3)], 0.0), {a: 0, b: 0, c: 5}, 0.0)
    assert registered(r, out, 0.1) == sorted([a, b])
    out = r.lost(info(a).peer_id, 1.0)
    assert Changed((info(b),)) in out and registers(out) == [info(c).peer_id], "a known load is reused"
    r.lost(info(c).peer_id, 2.0)  # the replacement fails too: nobody left before the backoff ends
    assert r.next_timer() == 6.0
    assert registers(r.handle_timer(5.9)) == []
    assert registers(r.handle_timer(6.0)) == [info(a).peer_id], "back from its backoff, its load still fresh"


def test_a_candidate_that_does_not_say_its_load_backs_off():
    r = Registrations(ME, want=1, pool=2, retry=5.0)
    a, b = by_distance([1, 2])
    out = answer_loads(r, r.offer([info(1), info(2)], 0.0), {b: 7}, 0.0)
    assert registers(out) == [info(b).peer_id]


def test_backoff_doubles_up_to_the_cap():
    r = Registrations(ME, want=1, retry=5.0, retry_max=12.0)
    answer_loads(r, r.offer([info(0)], 0.0), {0: 0}, 0.0)
    now = 0.0
    delays = []
    for _ in range(4):
        r.lost(info(0).peer_id, now)
        delays.append(r.next_timer() - now)
        now = r.next_timer()
        out = r.handle_timer(now)
        assert registers(out + answer_loads(r, out, {0: 0}, now)) == [info(0).peer_id]
    assert delays == [5.0, 10.0, 12.0, 12.0]


def test_asks_for_candidates_at_most_once_per_interval():
    r = Registrations(ME, want=3, lookup_interval=60.0)
    assert any(isinstance(a, NeedCandidates) for a in r.offer([info(0)], 0.0))
    assert not any(isinstance(a, NeedCandidates) for a in r.offer([info(1)], 10.0))
    assert any(isinstance(a, NeedCandidates) for a in r.offer([], 61.0))


def test_the_timer_never_points_into_the_past_while_a_retry_is_pending():
    r = Registrations(ME, want=1, retry=5.0)
    answer_loads(r, r.offer([info(0)], 0.0), {0: 0}, 0.0)
    r.lost(info(0).peer_id, 1.0)
    assert r.next_timer() == 6.0
    assert registers(r.handle_timer(6.0)) == [info(0).peer_id]
    assert r.next_timer() is None, "pending again: nothing to wake up for"
