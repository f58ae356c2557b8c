"""The proto3 wire-format codec under the network decoders: varints, field writer and reader."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from overlay.core.errors import DecodeError
from overlay.core.protobuf import (
    FIXED32,
    FIXED64,
    LENGTH,
    MAX_FIELD_NUMBER,
    VARINT,
    as_int32,
    decode_varint,
    encode_varint,
    expect_bytes,
    expect_int,
    field_bytes,
    field_varint,
    iter_fields,
)

field_numbers = st.integers(1, MAX_FIELD_NUMBER)
fields = st.lists(
    st.tuples(field_numbers, st.just(VARINT), st.integers(0, 2**64 - 1))
    | st.tuples(field_numbers, st.just(LENGTH), st.binary(max_size=300)),
    max_size=8,
)


@given(st.integers(0, 2**64 - 1), st.binary(max_size=3), st.binary(max_size=3))
def test_varint_round_trip_at_any_position(n, before, after):
    data = encode_varint(n)
    assert decode_varint(before + data + after, len(before)) == (n, len(before) + len(data))


@pytest.mark.parametrize(
    ("n", "encoded"),
    [(0, b"\x00"), (1, b"\x01"), (127, b"\x7f"), (128, b"\x80\x01"), (300, b"\xac\x02"),
     (2**64 - 1, b"\xff" * 9 + b"\x01")],
)
def test_known_varint_encodings(n, encoded):
    assert encode_varint(n) == encoded
    assert decode_varint(encoded) == (n, len(encoded))


@given(st.integers(-(2**31), 2**31 - 1))
def test_negative_int32_travels_as_ten_bytes_and_reads_back(n):
    data = encode_varint(n)
    assert n >= 0 or len(data) == 10
    value, end = decode_varint(data)
    assert end == len(data) and as_int32(value) == n


@pytest.mark.parametrize(
    ("value", "expected"), [(0, 0), (2**31 - 1, 2**31 - 1), (2**31, -(2**31)), (2**64 - 1, -1), (2**32 + 5, 5)]
)
def test_as_int32_takes_the_low_32_bits_signed(value, expected):
    assert as_int32(value) == expected


@pytest.mark.parametrize("n", [2**64, -(2**63) - 1])
def test_encode_varint_refuses_values_outside_64_bits(n):
    with pytest.raises(ValueError, match="64 bits"):
        encode_varint(n)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "truncated"),
        (b"\x80", "truncated"),
        (b"\xff" * 9, "truncated"),
        (b"\xff" * 11, "longer than 10 bytes"),
        (b"\x80" * 10 + b"\x01", "longer than 10 bytes"),
        (b"\xff" * 9 + b"\x02", "exceeds 64 bits"),
        (b"\xff" * 9 + b"\x7f", "exceeds 64 bits"),
        (b"\x80\x00", "overlong"),
        (b"\xff\x80\x00", "overlong"),
    ],
)
def test_bad_varints_are_refused_with_the_reason(data, reason):
    with pytest.raises(DecodeError, match=reason):
        decode_varint(data)


def test_reader_handles_every_non_group_wire_type():
    data = (
        b"\x08\x96\x01"  # field 1, varint 150
        + b"\x11" + (2**60 + 3).to_bytes(8, "little")  # field 2, fixed64
        + b"\x1a\x03abc"  # field 3, length-delimited
        + b"\x25" + (7).to_bytes(4, "little")  # field 4, fixed32
    )
    assert list(iter_fields(data)) == [(1, VARINT, 150), (2, FIXED64, 2**60 + 3), (3, LENGTH, b"abc"), (4, FIXED32, 7)]


@settings(max_examples=200)
@given(fields)
def test_writer_and_reader_round_trip(items):
    data = b"".join(field_varint(n, v) if t == VARINT else field_bytes(n, v) for n, t, v in items)
    assert list(iter_fields(data)) == items


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x08", "truncated varint"),
        (b"\x88", "truncated varint"),
        (b"\x1a\x05abc", "runs past the end"),
        (b"\x1a", "truncated varint"),
        (b"\x11" + b"\x00" * 7, "truncated fixed64"),
        (b"\x25\x00\x00", "truncated fixed32"),
        (b"\x1b", "groups"),
        (b"\x1c", "groups"),
        (b"\x1e\x00", "invalid wire type 6"),
        (b"\x1f\x00", "invalid wire type 7"),
        (b"\x00\x00", "field number 0"),
        (b"\x02\x00", "field number 0"),
        (encode_varint((MAX_FIELD_NUMBER + 1) << 3), "out of range"),
    ],
)
def test_reader_refuses_malformed_input_with_the_reason(data, reason):
    with pytest.raises(DecodeError, match=reason):
        list(iter_fields(data))


def test_expect_helpers_check_the_wire_type():
    assert expect_bytes(3, LENGTH, b"x") == b"x"
    assert expect_int(1, VARINT, 5) == 5
    with pytest.raises(DecodeError, match="field 3: expected length-delimited"):
        expect_bytes(3, VARINT, 5)
    with pytest.raises(DecodeError, match="field 1: expected varint"):
        expect_int(1, FIXED64, 5)
    with pytest.raises(DecodeError, match="expected varint"):
        expect_int(1, LENGTH, b"5")


@settings(max_examples=500)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_read_or_raise_decode_error(data):
    try:
        items = list(iter_fields(data))
    except DecodeError:
        return
    for number, wire_type, value in items:
        assert 1 <= number <= MAX_FIELD_NUMBER
        assert isinstance(value, bytes) if wire_type == LENGTH else isinstance(value, int)
