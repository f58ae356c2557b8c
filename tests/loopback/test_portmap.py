"""NAT-PMP: the client against a responder on a loopback UDP socket: answers amid garbage, refusals,
silence, and keeping a mapping."""

from __future__ import annotations

import socket
import struct

import pytest
import trio

from nat.portmap import NatPmpClient, PortMapError, encode_external_request, encode_mapping_request, keep_port_mapping


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
        mapping = await client.map("tcp", 4001)
        assert (mapping.external_port, mapping.lifetime) == (4001, 7200)
        assert seen[-1] == encode_mapping_request("tcp", 4001, 4001, 7200)
        nursery.cancel_scope.cancel()


async def test_refusal_and_silence_are_errors_in_bounded_time(gateway):
    answers = {1: [struct.pack(">BBHIHHI", 0, 129, 2, 1, 5, 0, 0)]}
    seen: list[bytes] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(responder, gateway, answers, seen)
        client = NatPmpClient("127.0.0.1", gateway.getsockname()[1])
        with pytest.raises(PortMapError, match="refused"):
            await client.map("udp", 5)
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
            nursery.start_soon(keep_port_mapping, 4001, lambda state, addr: reports.append((state, addr)), client)
            while not reports:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    state, addr = reports[0]
    assert state["state"] == "mapped" and state["external"] == "198.18.3.2:4001"
    assert str(addr) == "/ip4/198.18.3.2/tcp/4001"

    answers[2] = [struct.pack(">BBHIHHI", 0, 130, 2, 1, 4001, 0, 0)]  # refused
    reports.clear()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(responder, gateway, answers, [])
        with trio.fail_after(5):
            await keep_port_mapping(4001, lambda state, addr: reports.append((state, addr)), client)
        nursery.cancel_scope.cancel()
    assert reports == [({"state": "none", "protocol": "NAT-PMP", "gateway": "127.0.0.1", "error": "NAT-PMP: refused"}, None)]
