"""WebRTC connections: the description codec, the credit-windowed byte stream, and a libp2p
connection (Noise + Yamux) over a data channel between two nodes on loopback."""

from __future__ import annotations

import hashlib
import os

import multiaddr
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from libp2p.network.connection.raw_connection import RawConnection

from nat.webrtc import WINDOW, WebRtcConfig, WebRtcSession, parse_description
from overlay.errors import DecodeError
from tests.conftest import cluster, wait_for

LOOPBACK = WebRtcConfig(interfaces=("127.0.0.1",), allow_loopback_candidates=True)


@pytest.fixture
async def pairs():
    """Makes connected stream pairs; closes them all after the test and waits until their
    sessions have stopped, so none keeps running on the shared asyncio thread."""
    made = []

    async def make(config: WebRtcConfig = LOOPBACK):
        pair = await connected_pair(config)
        made.append(pair)
        return pair

    yield make
    for stream in [s for pair in made for s in pair]:
        await stream.close()
    await wait_for(lambda: all(s.session.stopped for pair in made for s in pair), what="sessions stopped")


async def connected_pair(config: WebRtcConfig = LOOPBACK):
    a, b = WebRtcSession(config, controlling=True), WebRtcSession(config, controlling=False)
    da, db = await a.gather(), await b.gather()
    da = parse_description(da.to_json(), allow_loopback=True)
    db = parse_description(db.to_json(), allow_loopback=True)
    streams = {}
    async with trio.open_nursery() as nursery:
        async def connect(session, remote, name):
            streams[name] = await session.connect(remote)
        nursery.start_soon(connect, a, db, "a")
        nursery.start_soon(connect, b, da, "b")
    return streams["a"], streams["b"]


# ---- descriptions -------------------------------------------------------------------------------

GOOD = {
    "ufrag": "abcd",
    "pwd": "a" * 22,
    "fingerprints": ["sha-256 " + ":".join(["AB"] * 32)],
    "candidates": ["candidate:1 1 udp 2130706431 198.18.1.2 40000 typ host"],
}


def test_good_description_round_trips():
    d = parse_description(GOOD)
    assert parse_description(d.to_json()) == d


@pytest.mark.parametrize(
    "change, reason",
    [
        ({"ufrag": "ab"}, "ufrag"),
        ({"pwd": "short"}, "pwd"),
        ({"fingerprints": []}, "fingerprints"),
        ({"fingerprints": ["md5 AB:CD"]}, "fingerprint"),
        ({"candidates": ["candidate:1 1 tcp 1 198.18.1.2 1 typ host"]}, "only UDP"),
        ({"candidates": ["candidate:1 1 udp 1 victim.example 1 typ host"]}, "not an IP"),
        ({"candidates": ["candidate:1 1 udp 1 host.local 1 typ host"]}, "not an IP"),
        ({"candidates": ["candidate:1 1 udp 1 0.0.0.0 9 typ host"]}, "unusable"),
        ({"candidates": ["candidate:1 1 udp 1 224.0.0.1 9 typ host"]}, "unusable"),
        ({"candidates": ["candidate:1 1 udp 1 127.0.0.1 9 typ host"]}, "loopback"),
        ({"candidates": ["candidate:1 1 udp 1 198.18.1.2 9 typ weird"]}, "unknown type"),
        ({"candidates": ["garbage"]}, "cannot parse"),
        ({"candidates": GOOD["candidates"] * 17}, "at most 16"),
        ({"ufrag": "x" * 9000}, "larger than"),
    ],
)
def test_bad_descriptions_are_refused_with_the_reason(change, reason):
    with pytest.raises(DecodeError, match=reason):
        parse_description({**GOOD, **change})


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_arbitrary_json_parses_or_raises_decode_error(obj):
    try:
        parse_description(obj)
    except DecodeError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(GOOD)), json_values)
def test_a_good_description_with_one_field_replaced_parses_or_raises_decode_error(key, value):
    try:
        parse_description({**GOOD, key: value})
    except DecodeError:
        pass


# ---- the byte stream ----------------------------------------------------------------------------


async def test_bytes_arrive_in_order_and_close_is_eof(pairs):
    a, b = await pairs()
    data = os.urandom(3 * WINDOW + 12345)
    received = bytearray()
    async with trio.open_nursery() as nursery:
        async def send():
            await a.write(data)
            await a.close()
        nursery.start_soon(send)
        while chunk := await b.read(65536):
            received += chunk
    assert bytes(received) == data
    await b.close()


async def test_paused_reader_holds_at_most_a_window_and_loses_nothing(pairs):
    a, b = await pairs()
    data = os.urandom(4 * WINDOW)
    sent = trio.Event()
    async with trio.open_nursery() as nursery:
        async def send():
            await a.write(data)
            sent.set()
        nursery.start_soon(send)
        # the reader does not read: the writer must stop once its credit is spent
        await wait_for(lambda: a._credit == 0 and b.buffered == WINDOW, what="writer blocked on credit")
        assert not sent.is_set()
        digest = hashlib.sha256()
        got = 0
        while got < len(data):
            chunk = await b.read(65536)
            assert chunk
            assert b.buffered <= WINDOW
            digest.update(chunk)
            got += len(chunk)
    assert got == len(data) and digest.digest() == hashlib.sha256(data).digest()
    await a.close()
    await b.close()


async def test_writer_sees_the_remote_close(pairs):
    a, b = await pairs()
    await b.close()
    with pytest.raises(Exception, match="closed"):
        with trio.fail_after(10):
            while True:
                await a.write(b"x" * 65536)
    assert await a.read() == b""
    await a.close()


async def test_credit_overrun_closes_the_connection_and_is_counted(pairs):
    a, b = await pairs()
    b._on_frame(b"\x00" + b"x" * (WINDOW + 1))  # as if the peer ignored its credit
    assert b.counters.violations == 1
    assert await b.read() == b""
    await a.close()


# ---- a libp2p connection over the data channel --------------------------------------------------


async def test_noise_and_yamux_over_a_data_channel_carry_the_nodes_protocols(tmp_path, pairs):
    async with cluster(tmp_path) as c:
        alice, bob = await c.start(), await c.start()
        sa, sb = await pairs()
        addr = multiaddr.Multiaddr("/ip4/127.0.0.1/udp/1/webrtc")
        conns = {}
        async with trio.open_nursery() as nursery:
            async def add(node, raw, peer, name):
                conns[name] = await node.host.get_network().add_raw_connection(raw, peer, addr, relayed=False)
            nursery.start_soon(add, alice, RawConnection(sa, True), bob.peer_id, "a")
            nursery.start_soon(add, bob, RawConnection(sb, False), None, "b")
        assert conns["b"].muxed_conn.peer_id == alice.peer_id, "Noise names the remote"
        rtt = await alice.ping(bob.peer_id)
        assert 0 < rtt < 5
        assert [str(c.get_connection_type().value) for c in alice.host.get_network().get_connections(bob.peer_id)] == ["direct"]
