"""A minimal proto3 wire-format codec for the few fixed messages the overlay speaks.

Why our own: the decoders face the network, so size limits are enforced while decoding, before
anything is allocated; the protocol cores must import without py-libp2p (the simulator runs them
by the thousand); and the messages are small and fixed, so a field reader and a field writer are
all they need. Varints are read strictly: at most 10 bytes, at most 64 bits, minimally encoded.
"""

from __future__ import annotations

from collections.abc import Iterator

from overlay.core.errors import DecodeError

VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5
MAX_VARINT_BYTES = 10
MAX_FIELD_NUMBER = (1 << 29) - 1
_UINT64 = 1 << 64


def encode_varint(value: int) -> bytes:
    """Unsigned LEB128; a negative value (proto3 int32/int64) is sent as its 64-bit two's complement."""
    if not -(1 << 63) <= value < _UINT64:
        raise ValueError(f"{value} does not fit in 64 bits")
    value %= _UINT64
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def decode_varint(data: bytes, pos: int = 0) -> tuple[int, int]:
    """(value, position after it). DecodeError when truncated, over 64 bits, or not minimal."""
    result = 0
    for i in range(MAX_VARINT_BYTES):
        if pos + i >= len(data):
            raise DecodeError("truncated varint")
        byte = data[pos + i]
        result |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            if i and not byte:
                raise DecodeError("overlong varint (not minimally encoded)")
            if result >= _UINT64:
                raise DecodeError("varint exceeds 64 bits")
            return result, pos + i + 1
    raise DecodeError(f"varint longer than {MAX_VARINT_BYTES} bytes")


def as_int32(value: int) -> int:
    """Read a decoded varint as proto3 int32/enum does: the low 32 bits, signed."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >> 31 else value


def field_varint(number: int, value: int) -> bytes:
    return encode_varint(number << 3 | VARINT) + encode_varint(value)


def field_bytes(number: int, value: bytes) -> bytes:
    return encode_varint(number << 3 | LENGTH) + encode_varint(len(value)) + value


def iter_fields(data: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """Yield (field number, wire type, value): an int for varint/fixed, bytes for length-delimited.

    Every wire type but groups is read, so callers skip unknown fields by ignoring them.
    """
    pos = 0
    while pos < len(data):
        tag, pos = decode_varint(data, pos)
        number, wire_type = tag >> 3, tag & 7
        if number == 0:
            raise DecodeError("field number 0")
        if number > MAX_FIELD_NUMBER:
            raise DecodeError(f"field number {number} out of range")
        if wire_type == VARINT:
            value, pos = decode_varint(data, pos)
            yield number, wire_type, value
        elif wire_type == LENGTH:
            length, pos = decode_varint(data, pos)
            if length > len(data) - pos:
                raise DecodeError(f"field {number}: length {length} runs past the end")
            yield number, wire_type, bytes(data[pos : pos + length])
            pos += length
        elif wire_type in (FIXED64, FIXED32):
            size = 8 if wire_type == FIXED64 else 4
            if size > len(data) - pos:
                raise DecodeError(f"field {number}: truncated fixed{size * 8}")
            yield number, wire_type, int.from_bytes(data[pos : pos + size], "little")
            pos += size
        elif wire_type in (3, 4):
            raise DecodeError(f"field {number}: groups (wire type {wire_type}) are not supported")
        else:
            raise DecodeError(f"field {number}: invalid wire type {wire_type}")


def expect_bytes(number: int, wire_type: int, value: int | bytes) -> bytes:
    if wire_type != LENGTH or not isinstance(value, bytes):
        raise DecodeError(f"field {number}: expected length-delimited, got wire type {wire_type}")
    return value


def expect_int(number: int, wire_type: int, value: int | bytes) -> int:
    if wire_type != VARINT or not isinstance(value, int):
        raise DecodeError(f"field {number}: expected varint, got wire type {wire_type}")
    return value
