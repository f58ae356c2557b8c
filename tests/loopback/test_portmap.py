"""Port mapping against responders on loopback UDP sockets: the NAT-PMP and PCP clients amid
garbage, refusals and silence; keeping a mapping and falling back from one protocol to the next;
UPnP discovery that believes only the gateway. Against a real gateway (miniupnpd):
tests/natlab/test_natlab_portmap.py."""

from __future__ import annotations

import socket
import struct

import pytest
import trio

from nat.gateway import PortMapError
from nat.natpmp import NatPmpClient, encode_external_request, encode_mapping_request
from nat.pcp import PcpClient
from nat.portmap import keep_port_mapping
from nat.upnp import discover, location_from


async def responder(sock, answers: dict[int, list[bytes]], seen: list[bytes]) -> None:
    """Answers requests by opcode with the next prepared datagrams (garbage first, if given)."""
    while True:
        data, source = await sock.recvfrom(64)
        seen.append(data)
        for reply in answers.get(data[1], []):
            await sock.sendto(reply, source)


@pytest.fixture
async def gateway():
    with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        await sock.bind(("127.0.0.1", 0))
        yield sock


async def test_client_gets_the_address_and_a_mapping_ignoring_garbage(gateway):
    answers = {
        0: [b"junk", bytes.fromhex("00800000" "00000001" "c6120302")],
        2: [struct.pack(">BBHIHHI", 0, 130, 0, 1, 4001, 4001, 7200)],
    }
    seen: list[bytes] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(responder, gateway, answers, seen)
        client = NatPmpClient("127.0.0.1", gateway.getsockname()[1])
        assert (await client.external_address()).address == "198.18.3.2"
        lease = await client.map("tcp", 4001)
        assert (lease.external_ip, lease.external_port, lease.lifetime, lease.epoch) == ("198.18.3.2", 4001, 7200, 1)
        assert seen[-1] == encode_mapping_request("tcp", 4001, 4001, 7200)
        nursery.cancel_scope.cancel()


async def test_refusal_and_silence_are_errors_in_bounded_time(gateway):
    answers = {0: [bytes.fromhex("00800000" "00000001" "c6120302")], 1: [struct.pack(">BBHIHHI", 0, 129, 2, 1, 5, 0, 0)]}
    seen: list[bytes] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(responder, gateway, answers, seen)
        client = NatPmpClient("127.0.0.1", gateway.getsockname()[1])
        with pytest.raises(PortMapError, match="refused"):
            await client.map("udp", 5)
        del answers[0]
        seen.clear()
        with trio.fail_after(5):
            with pytest.raises(PortMapError, match="no answer"):
                await client.external_address()
        assert [s for s in seen if s == encode_external_request()] == [encode_external_request()] * 3, "three tries"
        nursery.cancel_scope.cancel()


async def test_keep_port_mapping_reports_the_mapped_address_or_why_not(gateway):
    client = NatPmpClient("127.0.0.1", gateway.getsockname()[1])
    answers = {
        0: [bytes.fromhex("00800000" "00000001" "c6120302")],
        2: [struct.pack(">BBHIHHI", 0, 130, 0, 1, 4001, 4001, 7200)],
        1: [struct.pack(">BBHIHHI", 0, 129, 0, 1, 4001, 4001, 7200)],
    }
    reports: list = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(responder, gateway, answers, [])
        with trio.move_on_after(5):
            nursery.start_soon(keep_port_mapping, 4001, lambda state, addr: reports.append((state, addr)), "127.0.0.1", [client])
            while not reports:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    state, addr = reports[0]
    assert state["state"] == "mapped" and state["protocol"] == "NAT-PMP" and state["external"] == "198.18.3.2:4001"
    assert state["udp"] == "198.18.3.2:4001"
    assert str(addr) == "/ip4/198.18.3.2/tcp/4001"

    answers[2] = [struct.pack(">BBHIHHI", 0, 130, 2, 1, 4001, 0, 0)]  # refused
    reports.clear()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(responder, gateway, answers, [])
        with trio.fail_after(5):
            await keep_port_mapping(4001, lambda state, addr: reports.append((state, addr)), "127.0.0.1", [client])
        nursery.cancel_scope.cancel()
    assert reports == [({"state": "none", "gateway": "127.0.0.1", "error": "NAT-PMP: refused"}, None)]


def pcp_answer(request: bytes, result: int = 0, external: str = "198.18.3.2", nonce: bytes | None = None) -> bytes:
    """The gateway's answer to a PCP MAP `request`: its nonce, protocol and ports, `external` address."""
    lifetime = struct.unpack(">I", request[4:8])[0]
    header = struct.pack(">BBBBII", 2, 0x81, 0, result, lifetime, 7) + bytes(12)
    return header + (nonce or request[24:36]) + request[36:44] + socket.inet_pton(socket.AF_INET6, f"::ffff:{external}")


async def pcp_responder(sock, seen: list[bytes], stale_first: bool = True) -> None:
    """Answers each MAP request with garbage and a stale answer (another nonce) first, then its own."""
    while True:
        data, source = await sock.recvfrom(1100)
        seen.append(data)
        if stale_first:
            await sock.sendto(b"\x02\x81junk", source)
            await sock.sendto(pcp_answer(data, result=2, nonce=bytes(12)), source)
        await sock.sendto(pcp_answer(data), source)


async def test_pcp_maps_renews_and_deletes_with_one_nonce_ignoring_stale_answers(gateway):
    seen: list[bytes] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pcp_responder, gateway, seen)
        client = PcpClient("127.0.0.1", gateway.getsockname()[1])
        lease = await client.map("tcp", 4001, 600)
        assert (lease.external_ip, lease.external_port, lease.lifetime, lease.epoch) == ("198.18.3.2", 4001, 600, 7)
        await client.map("tcp", 4001, 600)
        await client.unmap("tcp", 4001)
        await client.unmap("tcp", 4001)  # nothing left to delete: no request
        nursery.cancel_scope.cancel()
    assert len(seen) == 3
    assert all(s[8:24] == socket.inet_pton(socket.AF_INET6, "::ffff:127.0.0.1") for s in seen), "our own address"
    assert seen[0][24:36] == seen[1][24:36] == seen[2][24:36], "renewal and delete reuse the mapping's nonce"
    assert struct.unpack(">I", seen[2][4:8])[0] == 0, "the delete asks for lifetime 0"


async def test_a_nat_pmp_only_gateway_gets_nat_pmp_and_the_mapping_is_removed_on_stop(gateway):
    """PCP first; the gateway answers it with NAT-PMP's "unsupported version", so NAT-PMP maps the
    port at once (no waiting out PCP's retries); stopping removes the TCP and UDP mappings."""
    seen: list[bytes] = []

    async def natpmp_only():
        while True:
            data, source = await gateway.recvfrom(1100)
            seen.append(data)
            if data[0] == 2:
                await gateway.sendto(struct.pack(">BBHI", 0, 0x81, 1, 1), source)
            elif data[1] == 0:
                await gateway.sendto(bytes.fromhex("00800000" "00000001" "c6120302"), source)
            else:
                internal, _, lifetime = struct.unpack(">HHI", data[4:12])
                await gateway.sendto(struct.pack(">BBHIHHI", 0, 128 + data[1], 0, 1, internal, internal, lifetime), source)

    port = gateway.getsockname()[1]
    reports: list = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(natpmp_only)
        with trio.fail_after(5):
            async with trio.open_nursery() as mapping:
                mapping.start_soon(keep_port_mapping, 4001, lambda state, addr: reports.append(state), "127.0.0.1",
                                   [PcpClient("127.0.0.1", port), NatPmpClient("127.0.0.1", port)])
                while not reports:
                    await trio.sleep(0.01)
                mapping.cancel_scope.cancel()
        nursery.cancel_scope.cancel()
    assert reports[0]["protocol"] == "NAT-PMP" and reports[0]["external"] == "198.18.3.2:4001"
    assert len([s for s in seen if s[0] == 2]) == 1, "one PCP try was enough"
    deletes = [s for s in seen if s[0] == 0 and s[1] in (1, 2) and s[8:12] == bytes(4)]
    assert sorted(d[1] for d in deletes) == [1, 2], "UDP and TCP mappings deleted (lifetime 0)"


def ssdp_answer(location: str) -> bytes:
    return f"HTTP/1.1 200 OK\r\nCACHE-CONTROL: max-age=120\r\nST: upnp:rootdevice\r\nLOCATION: {location}\r\n\r\n".encode()


def test_an_ssdp_answer_counts_only_with_an_http_location_on_the_gateway():
    assert location_from(ssdp_answer("http://100.64.1.1:5000/rootDesc.xml"), "100.64.1.1") == "http://100.64.1.1:5000/rootDesc.xml"
    for bad in ("http://100.64.1.9:5000/rootDesc.xml", "http://127.0.0.1:4080/v1/status", "https://100.64.1.1/x",
                "http://100.64.1.1:99999/x", "http://gateway.example.org/x", "file:///etc/passwd"):
        assert location_from(ssdp_answer(bad), "100.64.1.1") is None, bad
    assert location_from(b"NOTIFY * HTTP/1.1\r\nLOCATION: http://100.64.1.1/x\r\n\r\n", "100.64.1.1") is None
    assert location_from(b"\xff\xfe", "100.64.1.1") is None


async def test_upnp_discovery_believes_only_the_gateway():
    """A LAN host that answers first (from another address, or pointing at another host) is ignored;
    the gateway's own answer wins; with only strangers answering, discovery fails in bounded time."""
    with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as ssdp, \
            trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger:
        await ssdp.bind(("127.0.0.1", 0))
        await stranger.bind(("127.0.0.2", 0))
        searches: list[bytes] = []

        async def answer(honest: bool):
            while True:
                data, source = await ssdp.recvfrom(2048)
                searches.append(data)
                await stranger.sendto(ssdp_answer("http://127.0.0.1:4080/rootDesc.xml"), source)
                await ssdp.sendto(ssdp_answer("http://127.0.0.3:5000/rootDesc.xml"), source)
                if honest:
                    await ssdp.sendto(ssdp_answer("http://127.0.0.1:5000/rootDesc.xml"), source)

        for honest in (True, False):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(answer, honest)
                with trio.fail_after(5):
                    if honest:
                        assert await discover("127.0.0.1", ssdp.getsockname(), timeout=2) == "http://127.0.0.1:5000/rootDesc.xml"
                    else:
                        with pytest.raises(PortMapError, match="no answer from 127.0.0.1"):
                            await discover("127.0.0.1", ssdp.getsockname(), timeout=0.5)
                nursery.cancel_scope.cancel()
        assert searches and all(s.startswith(b"M-SEARCH * HTTP/1.1\r\n") for s in searches)


async def test_a_lease_is_renewed_at_half_time_and_a_failed_renewal_searches_again(gateway, monkeypatch):
    monkeypatch.setattr("nat.portmap.MIN_RENEW", 0.05)
    answers = {
        0: [bytes.fromhex("00800000" "00000001" "c6120302")],
        2: [struct.pack(">BBHIHHI", 0, 130, 0, 1, 4001, 4001, 1)],  # a one-second lease
        1: [struct.pack(">BBHIHHI", 0, 129, 0, 1, 4001, 4001, 1)],
    }
    seen: list[bytes] = []
    reports: list = []

    def changed(state, addr):
        reports.append(state["state"])
        if reports.count("mapped") == 2:  # the router forgets us: the next renewal is refused
            answers[2] = [struct.pack(">BBHIHHI", 0, 130, 2, 1, 4001, 0, 0)]

    async with trio.open_nursery() as nursery:
        nursery.start_soon(responder, gateway, answers, seen)
        with trio.fail_after(5):
            await keep_port_mapping(4001, changed, "127.0.0.1", [NatPmpClient("127.0.0.1", gateway.getsockname()[1])])
        nursery.cancel_scope.cancel()
    assert reports == ["mapped", "mapped", "none"]
    tcp_requests = [s for s in seen if s[1] == 2]
    assert len(tcp_requests) == 4, "map, renew, failed renewal, the search again"
