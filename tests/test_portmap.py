"""NAT-PMP: the codec, the default-gateway reader, and the client against a responder on loopback."""

from __future__ import annotations

import socket
import struct

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from nat.portmap import (
    ExternalAddress, Mapping, NatPmpClient, PortMapError, decode_response, default_gateway, keep_port_mapping,
    encode_external_request, encode_mapping_request,
)
from overlay.core.errors import DecodeError


def test_requests_have_the_rfc_layout():
    assert encode_external_request() == b"\x00\x00"
    assert encode_mapping_request("tcp", 4001, 4001, 7200) == bytes.fromhex("00020000" "0fa1" "0fa1" "00001c20")
    assert encode_mapping_request("udp", 1, 2, 0)[1] == 1


def test_responses_decode():
    assert decode_response(bytes.fromhex("00800000" "0000000a" "c6120302")) == ExternalAddress(10, "198.18.3.2")
    assert decode_response(bytes.fromhex("00820000" "00000005" "0fa1" "1f41" "00000e10")) == Mapping("tcp", 5, 4001, 8001, 3600)


@pytest.mark.parametrize(
    "data, error, reason",
    [
        (b"\x00\x80", DecodeError, "too short"),
        (bytes.fromhex("01800000" "00000000" "c6120302"), DecodeError, "version"),
        (bytes.fromhex("00030000" "00000000" "c6120302"), DecodeError, "unexpected opcode"),
        (bytes.fromhex("00800000" "00000000" "c612"), DecodeError, "address response of 10 bytes"),
        (bytes.fromhex("00810000" "00000000" "0fa10fa1"), DecodeError, "mapping response of 12 bytes"),
        (bytes.fromhex("00820002" "00000000" "0fa10fa1" "00000000"), PortMapError, "refused"),
        (bytes.fromhex("00820009" "00000000" "0fa10fa1" "00000000"), PortMapError, "result 9"),
    ],
)
def test_malformed_and_refused_responses_say_why(data, error, reason):
    with pytest.raises(error, match=reason):
        decode_response(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=40))
def test_arbitrary_bytes_decode_or_raise_one_of_our_errors(data):
    try:
        decode_response(data)
    except (DecodeError, PortMapError):
        pass


def test_default_gateway_from_the_route_table(tmp_path):
    routes = tmp_path / "route"
    routes.write_text(
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
        "lan\t00004064\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"
        "lan\t00000000\t01014064\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"
    )
    assert default_gateway(str(routes)) == "100.64.1.1"
    routes.write_text("Iface\tDestination\tGateway\tFlags\n")
    assert default_gateway(str(routes)) is None
    assert default_gateway(str(tmp_path / "missing")) is None


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
