"""Length-prefixed framing: any chunking, exact limits, bad prefixes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from overlay.core.errors import DecodeError
from overlay.core.framing import FrameDecoder, frame
from overlay.core.protobuf import encode_varint


@settings(max_examples=150, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=6), st.lists(st.integers(1, 50), min_size=1, max_size=10))
def test_frame_decoder_yields_the_same_frames_under_any_chunking(payloads, cuts):
    stream = b"".join(frame(p) for p in payloads)
    decoder, out, pos, i = FrameDecoder(300), [], 0, 0
    while pos < len(stream):
        step = cuts[i % len(cuts)]
        out += decoder.feed(stream[pos : pos + step])
        pos, i = pos + step, i + 1
    assert out == payloads


def test_frames_arrive_whole_and_in_order():
    decoder = FrameDecoder(10)
    assert decoder.feed(frame(b"ab") + frame(b"") + frame(b"c")[:1]) == [b"ab", b""]
    assert decoder.feed(b"") == []
    assert decoder.feed(b"c" + frame(b"x" * 10)) == [b"c", b"x" * 10]
    assert frame(b"abc") == b"\x03abc"


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 4096), st.integers(1, 2**63))
def test_oversize_declared_length_is_refused_from_the_prefix_alone(max_size, excess):
    decoder = FrameDecoder(max_size)
    with pytest.raises(DecodeError, match="exceeds the limit"):
        decoder.feed(encode_varint(max_size + excess))


def test_oversize_length_split_across_feeds_is_refused_once_the_prefix_completes():
    decoder = FrameDecoder(100)
    prefix = encode_varint(1_000_000)
    assert decoder.feed(prefix[:1]) == []
    with pytest.raises(DecodeError, match="1000000 bytes exceeds"):
        decoder.feed(prefix[1:])


@pytest.mark.parametrize(("data", "reason"), [(b"\x80" * 10, "longer than 10"), (b"\x80\x00", "overlong")])
def test_bad_length_prefix_is_refused(data, reason):
    with pytest.raises(DecodeError, match=reason):
        FrameDecoder(100).feed(data)


def test_at_most_max_frames_are_parsed_and_the_rest_stays_raw():
    decoder = FrameDecoder(10)
    raw_tail = b"\xff\xff\xff"  # would be an oversized length prefix if it were parsed
    assert decoder.feed(frame(b"ab") + frame(b"cd") + raw_tail, max_frames=1) == [b"ab"]
    assert decoder.feed(b"", max_frames=1) == [b"cd"]
    assert decoder.take_rest() == raw_tail and decoder.buffered == 0
