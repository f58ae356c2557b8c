"""The channel relay's cores without I/O: the INM and client codecs (with hypothesis), the channel
table's subscriptions and members, reservations and their first-come rule, sealed
password-channel messages, and the router's de-duplication, broadcast and queues."""

from __future__ import annotations

import json
import random
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from overlay.channels import client as client_frames
from overlay.channels.inm import MAX_INM, Inm, decode
from overlay.channels.router import CONTROL_RESERVE, MAX_QUEUE, InmRouter, LinkQueue
from overlay.channels import reservation
from overlay.channels.reservation import Reservation, ReservationValidator, reservation_key, resolve
from overlay.channels.reservation import sign as sign_reservation
from overlay.channels.sealing import PUBLIC, ChannelSecret, channel_secret, open_sealed, seal
from overlay.channels.table import MAX_MEMBERS, Change, ChannelTable
from overlay.core.errors import DecodeError, RecordError
from overlay.core.records import peer_id_from_public_key, peer_id_to_str
from overlay.kademlia.store import NamespacedValidator, RecordStore

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


def test_a_password_gives_a_verifier_and_a_key_which_open_nothing_of_each_other():
    import hashlib

    secret = channel_secret("chan", "pw")
    stretched = hashlib.pbkdf2_hmac("sha256", b"pw", b"chan", 32768)
    assert secret.verifier != stretched.hex() and len(secret.verifier) == 64 and len(secret.key) == 32
    assert secret.key.hex() != secret.verifier and stretched not in (secret.key, bytes.fromhex(secret.verifier))
    assert channel_secret("chan", None) == channel_secret("chan", "") == PUBLIC
    assert channel_secret("other", "pw") != secret and channel_secret("chan", "pw2") != secret


def test_a_sealed_message_opens_only_with_its_key_channel_and_publisher():
    key = channel_secret("chan", "pw").key
    box = seal(key, "chan", "node-a", "hello", "n1")
    assert open_sealed(key, "chan", "node-a", box) == ("hello", "n1") and b"hello" not in box
    for k, chan, publisher, b in ((channel_secret("chan", "x").key, "chan", "node-a", box), (key, "other", "node-a", box),
                                  (key, "chan", "node-b", box), (key, "chan", "node-a", box[:-1] + bytes([box[-1] ^ 1])),
                                  (key, "chan", "node-a", b"short")):
        with pytest.raises(DecodeError):
            open_sealed(k, chan, publisher, b)


def _secret(verifier: str) -> ChannelSecret:
    return ChannelSecret(verifier, None)


def test_subscribers_wait_for_the_lookup_and_then_must_prove_its_password():
    table = ChannelTable("me")
    first = table.subscribe("c1", "chan", _secret("a" * 64), "n1")
    assert first.look and not first.answers
    assert not table.subscribe("c2", "chan", _secret("b" * 64), "n2").look, "one lookup for all who wait"
    change = table.found("chan", Reservation("chan", "owner", 1, "a" * 64))
    assert change.opened and change.answers == (("c1", "n1", None), ("c2", "n2", "invalid password"))
    assert table.subscribe("c3", "chan", _secret("a" * 64), "n3").answers == (("c3", "n3", None),), "open: at once"
    assert table.unsubscribe("c1", "chan")[1].closed is False
    assert table.unsubscribe("c3", "chan")[1].closed is True
    assert table.unsubscribe("c3", "chan")[0] == "not subscribed"


def test_a_reservation_that_won_elsewhere_evicts_only_subscribers_of_another_password():
    table = ChannelTable("node-b")
    table.subscribe("c1", "chan", _secret("b" * 64), "n")
    table.found("chan", Reservation("chan", "node-b", 200, "b" * 64))
    assert table.checked("chan", Reservation("chan", "node-a", 100, "b" * 64)) == Change()
    assert table.reservation("chan").owner == "node-a", "same password: adopted quietly"
    change = table.checked("chan", Reservation("chan", "node-c", 50, "c" * 64))
    assert change.evicted == frozenset({"c1"}) and change.closed and table.open_here() == []


def test_only_an_open_channel_has_members_and_a_closed_one_leaves_nothing():
    table = ChannelTable("me")
    assert not table.add_member("chan", "peer"), "not open here"
    table.subscribe("c1", "chan", PUBLIC, "n")
    assert not table.add_member("chan", "peer"), "still looking"
    table.found("chan", Reservation("chan", "me", 1, ""))
    assert table.add_member("chan", "peer") and table.add_member("chan", "other") and not table.add_member("chan", "me")
    assert table.members("chan") == ["peer", "other"]
    for i in range(MAX_MEMBERS):
        table.add_member("chan", f"n{i}")
    assert len(table.members("chan")) == MAX_MEMBERS and not table.add_member("chan", "one-more")
    table.forget_node("peer")
    assert "peer" not in table.members("chan")
    assert table.unsubscribe("c1", "chan")[1].closed
    reservation, members = table.closed("chan")
    assert reservation.owner == "me" and len(members) == MAX_MEMBERS - 1 and "chan" not in table.channels


def test_listings_carry_verifiers_never_passwords_or_keys():
    table = ChannelTable("me")
    secret = channel_secret("open-one", "secret")
    table.subscribe("c1", "open-one", secret, "n")
    table.found("open-one", Reservation("open-one", "me", 1, secret.verifier))
    table.subscribe("c2", "looking", PUBLIC, "n")
    assert [c["name"] for c in table.listing()] == ["open-one"]
    text = json.dumps(table.listing())
    assert "secret" not in text and secret.key.hex() not in text and secret.verifier in text


# ---- reservations: the record and the first-come rule ---------------------------------------------------


def _keyed() -> tuple[Ed25519PrivateKey, str]:
    key = Ed25519PrivateKey.generate()
    return key, peer_id_to_str(peer_id_from_public_key(key.public_key()))


def test_a_reservation_is_signed_by_its_owner_over_every_field():
    key, owner = _keyed()
    record = sign_reservation(key, Reservation("chan", owner, 1_000, "a" * 64))
    assert reservation.verify(record) and reservation.decode(record.encode()) == record
    for field, value in (("channel", "other"), ("at", 999), ("verifier", ""), ("released", True), ("owner", _keyed()[1])):
        assert not reservation.verify(replace(record, **{field: value})), field
    assert not reservation.verify(replace(record, sig="%%"))


@given(st.dictionaries(st.sampled_from(["channel", "owner", "at", "verifier", "released", "sig", "x"]), json_values, max_size=7))
@settings(max_examples=300, deadline=None)
def test_any_reservation_json_parses_or_raises_decode_error(obj):
    try:
        reservation.decode(json.dumps(obj).encode())
    except DecodeError:
        pass


def test_readers_believe_what_most_stores_hold():
    a = Reservation("c", "node-a", 500, "", sig="ok")
    backdated = Reservation("c", "mallory", 1, "", sig="ok")
    forged = Reservation("c", "node-z", 0, "", sig="bad")
    valid = lambda r: r.sig == "ok"  # noqa: E731
    assert resolve([a.encode()] * 3 + [backdated.encode()] + [forged.encode()] * 5 + [b"junk"], valid) == a
    assert resolve([a.encode(), backdated.encode()], valid) == backdated, "a tie: the first-ranked"
    assert resolve([replace(a, released=True, at=600).encode(), a.encode()], valid) is None, "the owner's latest word"
    assert resolve([], valid) is None


def test_a_store_keeps_a_settled_reservation_against_later_and_backdated_ones():
    key, owner = _keyed()
    mallory_key, mallory = _keyed()
    wall = [1_000_000]
    store = RecordStore(NamespacedValidator({reservation.NAMESPACE: ReservationValidator(lambda: wall[0])}), ttl=7200)
    k = reservation_key("chan")
    honest = sign_reservation(key, Reservation("chan", owner, wall[0], ""))
    assert store.put(k, honest.encode(), now=0.0)
    wall[0] += 20_000
    for at in (1, wall[0] - 30_000, wall[0]):
        assert not store.put(k, sign_reservation(mallory_key, Reservation("chan", mallory, at, "")).encode(), now=20.0)
    assert store.put(k, honest.encode(), now=30.0), "put again by the nodes keeping it"
    with pytest.raises(RecordError):
        store.put(reservation_key("other"), honest.encode(), now=30.0)
    with pytest.raises(RecordError):
        store.put(k, replace(honest, at=honest.at + 1).encode(), now=30.0)
    release = sign_reservation(key, Reservation("chan", owner, wall[0], "", released=True))
    assert store.put(k, release.encode(), now=31.0)
    assert store.put(k, sign_reservation(mallory_key, Reservation("chan", mallory, wall[0], "")).encode(), now=32.0)


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
