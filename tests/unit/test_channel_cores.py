"""The channel relay's cores without I/O: the INM and client codecs (with hypothesis), the channel
table's reservations, interest and expiry, and the router's de-duplication, broadcast and queues."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from overlay.channels import client as client_frames
from overlay.channels.inm import MAX_INM, Inm, decode
from overlay.channels.router import CONTROL_RESERVE, MAX_QUEUE, InmRouter, LinkQueue
from overlay.channels.table import EXPIRE, GRACE, ChannelTable, Reservation, hash_password
from overlay.core.errors import DecodeError

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=15,
)
GOOD_INM = {"source": "node-a", "destination": "*", "type": "command", "nonce": "n1", "data": {"command": "list-nodes"}}


# ---- INM codec --------------------------------------------------------------------------------------


def test_an_inm_round_trips_and_a_reply_goes_back_with_the_nonce():
    inm = decode(json.dumps(GOOD_INM).encode())
    assert decode(inm.encode()) == inm
    assert inm.reply("node-b", {"ok": True}) == Inm("node-b", "node-a", "response", "n1", {"ok": True})


@pytest.mark.parametrize(
    "change, reason",
    [
        ({"type": "gossip"}, "type"),
        ({"nonce": ""}, "nonce"),
        ({"nonce": "x" * 65}, "nonce"),
        ({"source": "*"}, "source"),
        ({"source": 5}, "source"),
        ({"destination": "\x00"}, "destination"),
        ({"data": None, "drop": "data"}, "data"),
    ],
)
def test_bad_envelopes_name_what_is_wrong(change, reason):
    obj = {**GOOD_INM, **change}
    obj.pop(obj.pop("drop", "none"), None)
    with pytest.raises(DecodeError, match=reason):
        decode(json.dumps(obj).encode())


def test_oversized_envelopes_are_refused_both_ways():
    with pytest.raises(DecodeError, match="limit"):
        decode(b" " * (MAX_INM + 1))
    with pytest.raises(DecodeError, match="limit"):
        Inm("a", "b", "message", "n", "x" * MAX_INM).encode()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_decode_or_raise_decode_error(raw):
    try:
        decode(raw)
    except DecodeError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(GOOD_INM)), json_values)
def test_a_good_envelope_with_one_field_replaced_decodes_or_raises_decode_error(key, value):
    try:
        inm = decode(json.dumps({**GOOD_INM, key: value}).encode())
    except DecodeError:
        return
    assert decode(inm.encode()) == inm


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(GOOD_INM) + ["at", "sig"]), json_values)
def test_a_signed_envelope_with_one_field_replaced_decodes_or_raises_decode_error(key, value):
    try:
        inm = decode(json.dumps({**GOOD_INM, "at": 1_000, "sig": "c2ln", key: value}).encode())
    except DecodeError:
        return
    assert decode(inm.encode()) == inm


# ---- client protocol codec --------------------------------------------------------------------------


def test_topic_and_channel_name_the_same_thing():
    a = client_frames.decode_request(json.dumps({"command": "subscribe", "data": {"topic": "c", "password": "p"}, "nonce": "1"}))
    b = client_frames.decode_request(json.dumps({"command": "subscribe", "data": {"channel": "c", "password": "p"}, "nonce": "1"}))
    assert a == b == client_frames.Request("subscribe", "1", "c", password="p")
    send = client_frames.decode_request(json.dumps({"command": "send", "data": {"topic": "c", "message": "hi"}}))
    assert send == client_frames.Request("send", None, "c", message="hi")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200) | st.builds(json.dumps, json_values))
def test_arbitrary_client_frames_parse_or_raise_client_error(text):
    try:
        client_frames.decode_request(text)
    except client_frames.ClientError as e:
        assert str(e)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(client_frames.COMMANDS), json_values, json_values)
def test_any_data_under_a_known_command_parses_or_raises_client_error(command, data, nonce):
    try:
        request = client_frames.decode_request(json.dumps({"command": command, "data": data, "nonce": nonce}))
    except client_frames.ClientError:
        return
    assert request.command == command


# ---- channel table ----------------------------------------------------------------------------------


def test_passwords_are_stored_as_pbkdf2_with_the_channel_as_salt():
    import hashlib

    assert hash_password("chan", "pw") == hashlib.pbkdf2_hmac("sha256", b"pw", b"chan", 32768).hex()
    assert hash_password("chan", None) == hash_password("chan", "") == ""
    assert hash_password("chan", "pw") != hash_password("other", "pw")


def test_first_subscriber_reserves_and_others_must_match_the_password():
    table = ChannelTable("me")
    reason, change = table.subscribe("c1", "chan", "h1", now=0, wall_ms=100)
    assert reason is None and change.opened and change.reserved == Reservation(100, "me", "h1")
    assert table.subscribe("c2", "chan", "h2", now=1, wall_ms=101)[0] == "invalid password"
    reason, change = table.subscribe("c2", "chan", "h1", now=1, wall_ms=101)
    assert reason is None and not change.opened and not change.reserved
    assert table.unsubscribe("c1", "chan", 2)[1].closed is False
    assert table.unsubscribe("c2", "chan", 2)[1].closed is True
    assert table.unsubscribe("c2", "chan", 2)[0] == "not subscribed"


def test_concurrent_reservations_resolve_the_same_whatever_the_order():
    early, late = Reservation(100, "node-b", "hb"), Reservation(200, "node-a", "ha")
    tie = Reservation(100, "node-a", "hx")  # same time: the smaller owner name wins
    outcomes = set()
    for order in ([early, late, tie], [late, tie, early], [tie, early, late], [late, early, tie]):
        table = ChannelTable("observer")
        for r in order:
            table.reserve("chan", r, now=0)
        outcomes.add(table.reservation("chan"))
    assert outcomes == {tie}


def test_losing_a_reservation_evicts_the_local_subscribers():
    table = ChannelTable("node-b")
    table.subscribe("c1", "chan", "hb", now=0, wall_ms=200)
    reason, change = table.reserve("chan", Reservation(100, "node-a", "ha"), now=1)
    assert reason is None and change.evicted == frozenset({"c1"}) and change.closed
    assert table.subscribers("chan") == set() and table.open_here() == []
    assert table.reserve("chan", Reservation(300, "node-c", "hc"), now=2)[0] == "channel already reserved"


def test_the_same_password_under_the_winning_reservation_keeps_subscribers():
    table = ChannelTable("node-b")
    table.subscribe("c1", "chan", "same", now=0, wall_ms=200)
    _, change = table.reserve("chan", Reservation(100, "node-a", "same"), now=1)
    assert not change.evicted and table.subscribers("chan") == {"c1"}


def test_interest_lapses_without_refresh_and_orphaned_reservations_go():
    table = ChannelTable("me")
    r = Reservation(1, "peer", "")
    table.announce("peer", "chan", r, True, now=0)
    assert table.open_elsewhere("chan") == ["peer"]
    table.announce("peer", "chan", r, True, now=EXPIRE - 1)  # refreshed
    table.expire(now=EXPIRE + 1)
    assert table.open_elsewhere("chan") == ["peer"]
    table.expire(now=2 * EXPIRE)
    assert table.open_elsewhere("chan") == []
    assert table.reservation("chan") is not None, "kept for the grace period"
    table.expire(now=EXPIRE + GRACE + 1)
    assert table.reservation("chan") is None


def test_unreserve_is_refused_while_clients_are_here():
    table = ChannelTable("me")
    table.subscribe("c1", "chan", "", now=0, wall_ms=1)
    assert table.unreserve("chan", 1) == "channel still open"
    table.unsubscribe("c1", "chan", 2)
    assert table.unreserve("chan", 3) is None and table.reservation("chan") is None


def test_listings_carry_hashes_never_passwords():
    table = ChannelTable("me")
    table.subscribe("c1", "open-one", hash_password("open-one", "secret"), now=0, wall_ms=1)
    table.reserve("reserved-one", Reservation(2, "peer", ""), now=0)
    assert [c["name"] for c in table.listing(open_only=True)] == ["open-one"]
    assert [c["name"] for c in table.listing(open_only=False)] == ["open-one", "reserved-one"]
    assert "secret" not in json.dumps(table.listing(False))


# ---- router -----------------------------------------------------------------------------------------


def test_a_broadcast_reaches_every_node_of_a_random_graph_exactly_once():
    rng = random.Random(7)
    names = [f"n{i}" for i in range(30)]
    edges = {n: set() for n in names}
    for i, n in enumerate(names[1:], 1):  # a random connected graph
        for m in rng.sample(names[:i], min(i, 3)):
            edges[n].add(m)
            edges[m].add(n)
    routers = {n: InmRouter(n) for n in names}
    handled = {n: 0 for n in names}
    inm = Inm("n0", "*", "command", "x", {})
    queue = [(t, "n0") for t in routers["n0"].route(inm, None, sorted(edges["n0"]), 0).forward]
    while queue:
        at, came_from = queue.pop()
        route = routers[at].route(inm, came_from, sorted(edges[at]), 0)
        handled[at] += route.handle
        queue += [(t, at) for t in route.forward]
    assert handled == {n: int(n != "n0") for n in names}


def test_replays_are_duplicates_and_unicasts_for_others_need_a_link():
    router = InmRouter("me")
    inm = Inm("peer", "me", "command", "n", {})
    assert router.route(inm, "peer", [], 0).handle
    assert router.route(inm, "peer", [], 1).dropped == "duplicate" and router.duplicates == 1
    other = Inm("peer", "them", "command", "m", {})
    assert router.route(other, "peer", ["them"], 0).forward == ("them",)
    lost = Inm("peer", "nobody", "command", "k", {})
    assert router.route(lost, "peer", ["them"], 0).dropped == "no route"


def test_link_queue_drops_channel_messages_first_and_counts_them():
    queue = LinkQueue()
    for _ in range(MAX_QUEUE):
        assert queue.put(b"m", "chan")
    assert not queue.put(b"m", "chan") and queue.dropped == {"chan": 1}
    for _ in range(CONTROL_RESERVE):
        assert queue.put(b"c")
    assert not queue.put(b"c") and queue.dropped == {"chan": 1, "": 1}
    batch = queue.take(max_bytes=100)
    assert len(batch) == 100 and len(queue) == MAX_QUEUE + CONTROL_RESERVE - 100


def test_a_batch_given_back_after_a_failed_write_comes_out_first_in_order():
    queue = LinkQueue()
    for i in range(5):
        queue.put(b"m%d" % i, "chan" if i % 2 else "")
    batch = queue.take(max_bytes=6)
    assert batch == [(b"m0", ""), (b"m1", "chan"), (b"m2", "")] and queue.size == 4
    queue.put(b"m5", "chan")
    queue.give_back(batch)
    assert queue.take() == [(b"m%d" % i, "chan" if i % 2 else "") for i in range(6)] and queue.size == 0


def test_announcements_repair_reservations_that_diverged_during_a_partition():
    left, right = ChannelTable("node-a"), ChannelTable("node-b")
    left.subscribe("c1", "chan", "ha", now=0, wall_ms=100)  # each side reserved it alone
    right.subscribe("c2", "chan", "hb", now=0, wall_ms=200)
    # the partition heals: each side's periodic announcement reaches the other
    ra, rb = left.reservation("chan"), right.reservation("chan")
    change_right = right.announce("node-a", "chan", ra, True, now=30)
    change_left = left.announce("node-b", "chan", rb, True, now=30)
    assert left.reservation("chan") == right.reservation("chan") == Reservation(100, "node-a", "ha")
    assert change_right.evicted == frozenset({"c2"}) and change_right.closed and not change_left.evicted
    assert left.open_elsewhere("chan") == [], "node-b's clients were under the losing password"
    assert right.open_elsewhere("chan") == ["node-a"]
