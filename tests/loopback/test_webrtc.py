"""WebRTC connections: data-channel streams (credit window, half-close, reset, limits) and a libp2p
connection over a session between two nodes on loopback. The description codec and the stream
protocol's core are tested without I/O in tests/unit/test_webrtc_description.py and
tests/unit/test_webrtc_stream.py."""

from __future__ import annotations

import hashlib
import os

import multiaddr
import pytest
import trio

import nat.webrtc
from nat.webrtc import WebRtcConfig, WebRtcSession
from nat.webrtc_conn import add_webrtc_connection
from nat.webrtc_description import parse_description
from nat.webrtc_stream import CHUNK, WINDOW
from overlay.core.errors import DialError
from tests.conftest import wait_for
from tests.loopback.nodes import cluster

LOOPBACK = WebRtcConfig(interfaces=("127.0.0.1",), allow_loopback_candidates=True)


@pytest.fixture
async def sessions():
    """Makes connected session pairs (with their control channels); closes them all after the
    test and waits until they have stopped, so none keeps running on the shared asyncio thread."""
    made = []

    async def make(config: WebRtcConfig = LOOPBACK):
        pair = await connected_pair(config)
        made.append(pair)
        return pair

    yield make
    for session, _ in [s for pair in made for s in pair]:
        await session.close()
    await wait_for(lambda: all(session.stopped for pair in made for session, _ in pair), what="sessions stopped")


async def connected_pair(config: WebRtcConfig = LOOPBACK):
    a, b = WebRtcSession(config, controlling=True), WebRtcSession(config, controlling=False)
    da, db = await a.gather(), await b.gather()
    da = parse_description(da.to_json(), allow_loopback=True)
    db = parse_description(db.to_json(), allow_loopback=True)
    control = {}
    async with trio.open_nursery() as nursery:
        async def connect(session, remote, name):
            control[name] = await session.connect(remote)
        nursery.start_soon(connect, a, db, "a")
        nursery.start_soon(connect, b, da, "b")
    return (a, control["a"]), (b, control["b"])


async def stream_pair(sessions):
    """A stream opened by one side and accepted by the other."""
    (a, _), (b, _) = await sessions()
    sa = await a.open_stream()
    with trio.fail_after(5):
        sb = await b.accept_stream()
    return sa, sb


# ---- streams over data channels ------------------------------------------------------------------


async def test_bytes_arrive_in_order_each_way_and_close_is_a_half_close(sessions):
    a, b = await stream_pair(sessions)
    data, reply = os.urandom(3 * WINDOW + 12345), os.urandom(70000)
    received = bytearray()
    async with trio.open_nursery() as nursery:
        async def send():
            await a.write(data)
            await a.close()
        nursery.start_soon(send)
        while chunk := await b.read(65536):
            received += chunk
    assert bytes(received) == data and b.eof
    await b.write(reply)  # a closed only its own direction
    await b.close()
    answer = bytearray()
    while chunk := await a.read():
        answer += chunk
    assert bytes(answer) == reply and a.eof
    await wait_for(lambda: not a.session.streams and not b.session.streams, what="both streams released")


async def test_paused_reader_holds_at_most_a_window_and_loses_nothing(sessions):
    a, b = await stream_pair(sessions)
    data = os.urandom(4 * WINDOW)
    sent = trio.Event()
    async with trio.open_nursery() as nursery:
        async def send():
            await a.write(data)
            sent.set()
        nursery.start_soon(send)
        # the reader does not read: the writer must stop once its credit is spent
        await wait_for(lambda: a.credit == 0 and b.buffered == WINDOW, what="writer blocked on credit")
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


async def test_a_reset_reaches_the_other_side_and_is_not_an_end_of_stream(sessions):
    a, b = await stream_pair(sessions)
    await a.write(b"x" * 1000)
    await a.reset()
    with pytest.raises(Exception, match="reset"):
        with trio.fail_after(10):
            while True:
                await b.write(b"y" * 65536)
    await wait_for(lambda: b.broken is not None, what="reset seen")
    assert not b.eof
    await wait_for(lambda: not a.session.streams and not b.session.streams, what="both streams released")


async def test_credit_overrun_resets_that_stream_only(sessions):
    (a, _), (b, _) = await sessions()
    bad, other = await a.open_stream(), await a.open_stream()
    with trio.fail_after(5):
        bad_b, other_b = await b.accept_stream(), await b.accept_stream()
    for _ in range(WINDOW // CHUNK + 1):  # as if the peer ignored its credit
        bad_b._on_frame(b"\x00" + b"x" * CHUNK)
    assert bad_b.counters.violations == 1 and bad_b.broken
    assert await bad_b.read() == b"" and not bad_b.eof
    await other.write(b"still here")
    with trio.fail_after(5):
        assert await other_b.read() == b"still here"


async def test_many_streams_at_once_each_arrive_intact(sessions):
    (a, _), (b, _) = await sessions()
    payloads = [os.urandom(100_000 + i) for i in range(20)]
    results = {}
    async with trio.open_nursery() as nursery:
        async def send(data):
            stream = await a.open_stream()
            await stream.write(len(data).to_bytes(4, "big") + data)
            await stream.close()

        async def receive(stream):
            got = bytearray()
            while chunk := await stream.read():
                got += chunk
            results[int.from_bytes(got[:4], "big")] = bytes(got[4:])
            await stream.close()

        async def accept():
            for _ in payloads:
                nursery.start_soon(receive, await b.accept_stream())

        nursery.start_soon(accept)
        for data in payloads:
            nursery.start_soon(send, data)
    assert [results[len(d)] == d for d in payloads] == [True] * len(payloads)


async def test_streams_beyond_the_limit_are_refused_and_counted(sessions, monkeypatch):
    monkeypatch.setattr(nat.webrtc, "MAX_STREAMS", 3)
    (a, _), (b, _) = await sessions()
    opened = [await a.open_stream() for _ in range(3)]
    with pytest.raises(Exception, match="3 streams open"):
        await a.open_stream()
    accepted = [await b.accept_stream() for _ in range(3)]
    await opened[0].reset()  # frees a slot on both sides
    await wait_for(lambda: len(a.streams) == 2 and len(b.streams) == 2, what="slot freed")
    b.streams.add(nat.webrtc.DataChannelStream(b))  # b is full again; a believes it has room
    extra = await a.open_stream()
    await wait_for(lambda: b.streams_refused == 1 and extra.broken is not None, what="refusal")
    assert len(accepted) == 3


# ---- a libp2p connection over a session ------------------------------------------------------------


async def test_a_session_is_a_libp2p_connection_with_a_channel_per_stream(tmp_path, sessions):
    async with cluster(tmp_path) as c:
        alice, bob = await c.start(), await c.start()
        (sa, ca), (sb, cb) = await sessions()
        addr = multiaddr.Multiaddr("/ip4/127.0.0.1/udp/1/webrtc")
        conns = {}
        async with trio.open_nursery() as nursery:
            async def add(node, session, control, peer, name):
                conns[name] = await add_webrtc_connection(node.host.get_network(), session, control, peer, addr, False)
            nursery.start_soon(add, alice, sa, ca, bob.peer_id, "a")
            nursery.start_soon(add, bob, sb, cb, None, "b")
        assert conns["b"].muxed_conn.peer_id == alice.peer_id, "Noise names the remote"
        rtt = await alice.ping(bob.peer_id)
        assert 0 < rtt < 5
        assert len(sa.streams) <= 1, "a ping is one data channel, released when done"
        assert [str(c.get_connection_type().value) for c in alice.host.get_network().get_connections(bob.peer_id)] == ["direct"]
        await conns["a"].close()
        await wait_for(lambda: not bob.host.get_network().get_connections(alice.peer_id), what="the peer sees the end")


async def test_a_certificate_the_peer_does_not_state_as_its_own_is_refused(tmp_path, sessions):
    async with cluster(tmp_path) as c:
        alice, bob = await c.start(), await c.start()
        (sa, ca), (sb, cb) = await sessions()
        # as if signalling had carried another certificate's fingerprint to bob
        sb.remote_fingerprints = (("sha-256", ":".join(["AB"] * 32)),)
        addr = multiaddr.Multiaddr("/ip4/127.0.0.1/udp/1/webrtc")
        errors = []
        async with trio.open_nursery() as nursery:
            async def add(node, session, control, peer):
                try:
                    await add_webrtc_connection(node.host.get_network(), session, control, peer, addr, False)
                except Exception as e:  # noqa: BLE001 - both sides must fail; the test says how
                    errors.append(e)
            nursery.start_soon(add, alice, sa, ca, bob.peer_id)
            nursery.start_soon(add, bob, sb, cb, None)
        assert any(isinstance(e, DialError) and "certificate" in str(e) for e in errors)
        assert not bob.host.get_network().get_connections(alice.peer_id)
        # alice's own check passed (bob's certificate is bob's); she sees the end when bob closes
        await wait_for(lambda: not alice.host.get_network().get_connections(bob.peer_id), what="alice's side closed")


async def test_a_session_runs_over_ipv6_host_candidates(sessions):
    """IPv6 (issue 19): gathered and paired over an IPv6 address (loopback's, here), bytes carried."""
    (a, _), (b, _) = await sessions(WebRtcConfig(interfaces=("::1",), allow_loopback_candidates=True))
    assert a.path.local is not None and a.path.local[0] == "::1" and a.path.remote[0] == "::1", a.path
    sa = await a.open_stream()
    with trio.fail_after(5):
        sb = await b.accept_stream()
    await sa.write(b"over ipv6")
    with trio.fail_after(5):
        assert await sb.read(100) == b"over ipv6"
