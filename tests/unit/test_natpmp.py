"""NAT-PMP: the codec and the default-gateway reader. The clients against responders on loopback
are in tests/loopback/test_portmap.py, against a real gateway in tests/natlab/test_natlab_portmap.py."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nat.gateway import PortMapError, default_gateway
from nat.natpmp import ExternalAddress, Mapping, decode_response, encode_external_request, encode_mapping_request
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
