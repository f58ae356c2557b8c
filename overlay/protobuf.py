"""A minimal proto3 wire-format codec for the few fixed messages the overlay speaks.

Why our own: the decoders face the network, so size limits are enforced while decoding, before
anything is allocated; and the protocol cores must import without py-libp2p (the simulator runs
them by the thousand). Only what the messages need: varints, length-delimited fields, and
skipping of unknown fields of every wire type.
"""

from __future__ import annotations

from collections.abc import Iterator

from overlay.errors import DecodeError

VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5
MAX_VARINT_BYTES = 10


def encode_varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64  # proto3 encodes negative int32/int64 as 10-byte two's complement
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def decode_varint(data: bytes, pos: int = 0) -> tuple[int, int]:
    """(value, position after it). Raises DecodeError on truncation or more than 64 bits."""
    result = shift = 0
    for i in range(MAX_VARINT_BYTES):
        if pos + i >= len(data):
            raise DecodeError("truncated varint")
        byte = data[pos + i]
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if result >> 64:
                raise DecodeError("varint exceeds 64 bits")
            return result, pos + i + 1
        shift += 7
    raise DecodeError("varint longer than 10 bytes")


def field_varint(number: int, value: int) -> bytes:
    return encode_varint(number << 3 | VARINT) + encode_varint(value)


def field_bytes(number: int, value: bytes) -> bytes:
    return encode_varint(number << 3 | LENGTH) + encode_varint(len(value)) + value


def iter_fields(data: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """Yield (field number, wire type, value): an int for varint/fixed, bytes for length-delimited."""
    pos = 0
    while pos < len(data):
        tag, pos = decode_varint(data, pos)
        number, wire_type = tag >> 3, tag & 7
        if number == 0:
            raise DecodeError("field number 0")
        if wire_type == VARINT:
            value, pos = decode_varint(data, pos)
            yield number, wire_type, value
        elif wire_type == LENGTH:
            length, pos = decode_varint(data, pos)
            if pos + length > len(data):
                raise DecodeError(f"field {number}: length {length} runs past the end")
            yield number, wire_type, data[pos : pos + length]
            pos += length
        elif wire_type in (FIXED64, FIXED32):
            size = 8 if wire_type == FIXED64 else 4
            if pos + size > len(data):
                raise DecodeError(f"field {number}: truncated fixed{size * 8}")
            yield number, wire_type, int.from_bytes(data[pos : pos + size], "little")
            pos += size
        else:
            raise DecodeError(f"field {number}: unsupported wire type {wire_type}")


def expect_bytes(number: int, wire_type: int, value: int | bytes) -> bytes:
    if wire_type != LENGTH or not isinstance(value, bytes):
        raise DecodeError(f"field {number}: expected length-delimited, got wire type {wire_type}")
    return value


def expect_int(number: int, wire_type: int, value: int | bytes) -> int:
    if wire_type != VARINT or not isinstance(value, int):
        raise DecodeError(f"field {number}: expected varint, got wire type {wire_type}")
    return value
