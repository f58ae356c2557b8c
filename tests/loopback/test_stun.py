"""The trio STUN server and probes on loopback UDP sockets: answers, change requests from the
alternate socket, rate limits, junk, retransmission, and NAT type probes against fake NATs."""

from __future__ import annotations

import socket
from functools import partial

import pytest
import trio
import trio.socket as tsocket

from nat import stun
from nat.stun import MAX_MESSAGE_SIZE, MessageClass, decode, encode_binding_request, encode_binding_success
from nat.stun_io import _route_sources, probe_nat, serve_stun, stun_probe, stun_request
from overlay.core.ratelimit import RateLimiter
from tests.conftest import wait_for
from tests.unit.test_stun import GOOD, RFC5769_IPV4_RESPONSE, RFC5769_REQUEST, _filler, attr, raw


# ---- trio: server and probes on loopback ----------------------------------------------------


@pytest.fixture
async def udp():
    """Makes bound UDP sockets on loopback; closes them after the test."""
    made: list[tsocket.SocketType] = []

    async def make(ip: str = "127.0.0.1", port: int = 0) -> tsocket.SocketType:
        sock = tsocket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        made.append(sock)
        await sock.bind((ip, port))
        return sock

    yield make
    for sock in made:
        sock.close()


@pytest.fixture
async def alt_ip():
    """127.0.0.2 where loopback accepts it (Linux does), else None: tests fall back to ports."""
    with tsocket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            await sock.bind(("127.0.0.2", 0))
        except OSError:
            return None
    return "127.0.0.2"


async def recv_within(sock, seconds: float = 5.0):
    with trio.fail_after(seconds):
        return await sock.recvfrom(2048)


async def test_probe_sees_its_own_address(udp):
    async with trio.open_nursery() as nursery:
        server, client = await udp(), await udp()
        counters = await nursery.start(serve_stun, server)
        assert await stun_probe(client, server.getsockname()) == client.getsockname()
        reply = await stun_request(client, server.getsockname())
        assert reply.source == server.getsockname() and reply.message.response_origin == server.getsockname()
        assert reply.message.other_address is None
        await wait_for(lambda: counters.answered == 2, timeout=5, what="two answers counted")
        nursery.cancel_scope.cancel()


async def test_change_request_from_alternate_socket(udp, alt_ip):
    async with trio.open_nursery() as nursery:
        primary, client = await udp(), await udp()
        alternate = await udp(alt_ip or "127.0.0.1")
        counters = await nursery.start(serve_stun, primary, alternate)
        change_ip = alt_ip is not None
        reply = await stun_request(client, primary.getsockname(), change_ip=change_ip, change_port=True)
        assert reply.message.message_class == MessageClass.SUCCESS
        assert reply.source == alternate.getsockname() == reply.message.response_origin
        assert reply.message.mapped_address == client.getsockname()
        assert reply.message.other_address == alternate.getsockname()
        # The alternate serves too, and points back at the primary.
        back = await stun_request(client, alternate.getsockname(), change_ip=change_ip, change_port=True)
        assert back.source == primary.getsockname() and back.message.other_address == primary.getsockname()
        if alt_ip:
            refused = await stun_request(client, primary.getsockname(), change_port=True)
            assert refused.source == primary.getsockname()
            assert (refused.message.error_code, refused.message.listed_unknown) == (420, (stun.CHANGE_REQUEST,))
            assert await stun_probe(client, primary.getsockname(), change_port=True) is None
            await wait_for(lambda: counters.rejected == 2, timeout=5, what="two 420s counted")
        await wait_for(lambda: counters.answered == 2, timeout=5, what="two answers counted")
        nursery.cancel_scope.cancel()


async def test_rate_limit_drops_and_counts(udp):
    async with trio.open_nursery() as nursery:
        server, client = await udp(), await udp()
        counters = await nursery.start(partial(serve_stun, server, limiter=RateLimiter(rate=0.0, burst=3)))
        requests = [encode_binding_request(bytes([i]) * 12) for i in range(6)]
        for data in requests:
            await client.sendto(data, server.getsockname())
        await wait_for(lambda: counters.received == 6, timeout=5, what="six datagrams received")
        assert (counters.answered, counters.dropped_rate) == (3, 3)
        answered = {decode((await recv_within(client))[0]).transaction_id for _ in range(3)}
        assert answered == {bytes([i]) * 12 for i in range(3)}
        nursery.cancel_scope.cancel()


async def test_malformed_input_is_counted_and_server_keeps_answering(udp):
    junk = [
        b"", b"\x00", b"hello world, not stun",
        GOOD[:-4],
        bytes(1600),  # oversized
        _filler(MAX_MESSAGE_SIZE + 4),
        RFC5769_REQUEST[:-1] + b"\x00",  # bad fingerprint
        raw(attr(stun.XOR_MAPPED_ADDRESS, bytes([0, 9, 0, 0])), type_value=0x0101),
    ]
    ignored = [RFC5769_IPV4_RESPONSE, raw(type_value=0x0011)]
    async with trio.open_nursery() as nursery:
        server, client = await udp(), await udp()
        counters = await nursery.start(serve_stun, server)
        for data in junk + ignored:
            await client.sendto(data, server.getsockname())
        await wait_for(lambda: counters.received == len(junk) + len(ignored), timeout=5, what="junk received")
        assert counters.dropped_malformed == len(junk) and counters.ignored == len(ignored)
        assert await stun_probe(client, server.getsockname()) == client.getsockname()
        await wait_for(lambda: counters.answered == 1, timeout=5, what="the answer counted")
        assert (counters.rejected, counters.dropped_rate) == (0, 0)
        nursery.cancel_scope.cancel()


async def test_probe_ignores_unrelated_packets(udp):
    async with trio.open_nursery() as nursery:
        server, client = await udp(), await udp()

        async def noisy_server():
            data, source = await server.recvfrom(2048)
            request = decode(data)
            await server.sendto(b"junk", source)
            await server.sendto(encode_binding_success(bytes(12), ("198.18.9.9", 9)), source)  # other txid
            await server.sendto(encode_binding_success(request.transaction_id, ("198.18.0.1", 7)), source)

        nursery.start_soon(noisy_server)
        assert await stun_probe(client, server.getsockname(), timeout=5) == ("198.18.0.1", 7)
        nursery.cancel_scope.cancel()


async def test_response_with_unknown_required_attribute_fails_the_probe(udp):
    async with trio.open_nursery() as nursery:
        server, client = await udp(), await udp()

        async def odd_server():
            data, source = await server.recvfrom(2048)
            txid = decode(data).transaction_id
            xor_mapped = encode_binding_success(txid, ("198.18.0.1", 7), fingerprint=False)[20:]
            await server.sendto(raw(xor_mapped + attr(0x7F01, b"?"), type_value=0x0101, txid=txid), source)

        nursery.start_soon(odd_server)
        reply = await stun_request(client, server.getsockname(), timeout=5)
        assert reply.message.unknown_attributes == (0x7F01,)
        nursery.start_soon(odd_server)
        assert await stun_probe(client, server.getsockname(), timeout=5) is None
        nursery.cancel_scope.cancel()


async def test_probe_retransmits_and_gives_up_within_timeout(udp):
    async with trio.open_nursery() as nursery:
        server, client = await udp(), await udp()
        seen = []

        async def deaf_then_answer():
            while True:
                data, source = await server.recvfrom(2048)
                seen.append(trio.current_time())
                if len(seen) == 3:
                    await server.sendto(encode_binding_success(decode(data).transaction_id, ("198.18.0.1", 7)), source)

        nursery.start_soon(deaf_then_answer)
        assert await stun_probe(client, server.getsockname(), timeout=5) == ("198.18.0.1", 7)
        assert len(seen) == 3
        start = trio.current_time()
        assert await stun_probe(client, server.getsockname(), timeout=0.5, retransmits=2) is None
        assert trio.current_time() - start < 2.0
        await wait_for(lambda: len(seen) == 6, timeout=5, what="three more sends")
        nursery.cancel_scope.cancel()


async def test_probe_nat_on_loopback_is_public(udp, alt_ip):
    async with trio.open_nursery() as nursery:
        primary, alternate = await udp(), await udp(alt_ip or "127.0.0.1")
        await nursery.start(serve_stun, primary, alternate)
        result = await probe_nat([primary.getsockname()], "127.0.0.1", timeout=2)
        assert (result.nat_type, result.mapping, result.udp) == ("public", "none", True)
        assert result.filtering == ("endpoint-independent" if alt_ip else "address-dependent")
        nursery.cancel_scope.cancel()


async def fake_nat_server(sock, mapped, other=None, answer_changes=False, alt=None):
    """A server that reports a fixed mapped address, as if a NAT stood in between."""
    while True:
        data, source = await sock.recvfrom(2048)
        request = decode(data)
        if request.change_ip or request.change_port:
            if answer_changes:
                await alt.sendto(encode_binding_success(request.transaction_id, mapped), source)
            continue
        await sock.sendto(encode_binding_success(request.transaction_id, mapped, other_address=other), source)


@pytest.mark.parametrize("second_mapped, answer_changes, nat_type", [
    (("198.18.2.2", 40000), True, "full-cone"),
    (("198.18.2.2", 40000), False, "port-restricted-cone"),
    (("198.18.2.2", 40001), False, "symmetric"),
])
async def test_probe_nat_with_fake_nat(udp, alt_ip, second_mapped, answer_changes, nat_type):
    if alt_ip is None:
        pytest.skip("needs a second loopback IP so the two servers differ in IP")
    async with trio.open_nursery() as nursery:
        s1, s2, alt = await udp(), await udp(alt_ip), await udp(alt_ip)
        nursery.start_soon(fake_nat_server, s1, ("198.18.2.2", 40000), alt.getsockname(), answer_changes, alt)
        nursery.start_soon(fake_nat_server, s2, second_mapped)
        result = await probe_nat([s1.getsockname(), s2.getsockname()], "127.0.0.1", timeout=1.0)
        assert result.nat_type == nat_type
        assert result.public_addrs[0] == ("198.18.2.2", 40000)
        nursery.cancel_scope.cancel()


async def test_probe_nat_udp_blocked_and_no_servers(udp):
    deaf = await udp()
    result = await probe_nat([deaf.getsockname()], "127.0.0.1", timeout=0.3)
    assert (result.nat_type, result.udp) == ("udp-blocked", False)
    empty = await probe_nat([])
    assert empty.nat_type == "unknown" and empty.notes
    with pytest.raises(ValueError):
        await probe_nat([("stun.invalid", 3478)])
    mixed = await probe_nat([("2001:db8::1", 3478), deaf.getsockname()], "127.0.0.1", timeout=0.3)
    assert mixed.nat_type == "udp-blocked" and "skipped 1 server(s) not on IPv4" in mixed.notes
    only_v6 = await probe_nat([("2001:db8::1", 3478)], "127.0.0.1")
    assert only_v6.nat_type == "unknown" and "skipped 1 server(s) not on IPv4" in only_v6.notes


async def test_route_sources_names_our_address_towards_each_server(udp):
    servers = [(await udp()).getsockname(), (await udp()).getsockname()]
    assert await _route_sources(socket.AF_INET, servers, 4242) == [("127.0.0.1", 4242)]


async def test_server_refuses_ambiguous_sockets(udp):
    sock = await udp()
    with pytest.raises(ValueError, match="share an address"):
        await serve_stun(sock, sock)
