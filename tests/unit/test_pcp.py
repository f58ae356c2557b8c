"""PCP (RFC 6887 MAP): the codec, byte for byte against the RFC's layout, and against garbage."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nat.gateway import PortMapError
from nat.pcp import MapResponse, decode_map_response, encode_map_request
from overlay.core.errors import DecodeError

NONCE = bytes(range(12))


def response(result: int = 0, nonce: bytes = NONCE, protocol: int = 6, internal: int = 4001, external: int = 4001,
             address: str = "198.18.3.2", lifetime: int = 7200, epoch: int = 42, options: bytes = b"") -> bytes:
    header = struct.pack(">BBBBII", 2, 0x81, 0, result, lifetime, epoch) + bytes(12)
    payload = nonce + struct.pack(">B3xHH", protocol, internal, external)
    return header + payload + ipaddress.IPv6Address(f"::ffff:{address}").packed + options


def test_a_map_request_has_the_rfc_layout():
    data = encode_map_request(NONCE, "udp", 4001, 7200, "100.64.1.2", suggested_port=4001)
    assert len(data) == 60
    assert data[:8] == bytes.fromhex("02010000" "00001c20")
    assert data[8:24] == ipaddress.IPv6Address("::ffff:100.64.1.2").packed
    assert data[24:36] == NONCE
    assert data[36:44] == bytes.fromhex("11000000" "0fa1" "0fa1")
    assert data[44:60] == ipaddress.IPv6Address("::ffff:0.0.0.0").packed
    with pytest.raises(ValueError):
        encode_map_request(b"short", "tcp", 1, 1, "100.64.1.2")


def test_a_response_decodes_with_or_without_options():
    expected = MapResponse(0, NONCE, "tcp", 4001, 4001, "198.18.3.2", 7200, 42)
    assert decode_map_response(response()) == expected
    assert decode_map_response(response(options=bytes(8))) == expected
    refused = decode_map_response(response(result=2))
    assert refused.result == 2 and refused.nonce == NONCE, "an error with a payload says which request it answers"


@pytest.mark.parametrize(
    "data, error, reason",
    [
        (b"\x02\x81", DecodeError, "too short"),
        (bytes.fromhex("00810001" "00000000" "00000000"), PortMapError, "NAT-PMP only"),
        (b"\x03" + response()[1:], DecodeError, "version 3"),
        (response() + b"\x00", DecodeError, "61 bytes"),
        (response() + bytes(1100), DecodeError, "bytes"),
        (b"\x02\x01" + response()[2:], DecodeError, "opcode byte 1"),
        (response()[:24], DecodeError, "MAP response of 24 bytes"),
        (struct.pack(">BBBBII", 2, 0x81, 0, 8, 0, 0) + bytes(12), PortMapError, "no resources"),
        (response(protocol=99), DecodeError, "protocol 99"),
    ],
)
def test_malformed_and_refused_responses_say_why(data, error, reason):
    with pytest.raises(error, match=reason):
        decode_map_response(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120))
def test_arbitrary_bytes_decode_or_raise_one_of_our_errors(data):
    try:
        decode_map_response(data)
    except (DecodeError, PortMapError):
        pass
