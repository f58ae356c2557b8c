"""Typed peer message frames (Convex peer messaging): the 8192-byte boundary, splitting and reassembly, limits,
and arbitrary bytes (hypothesis)."""

from __future__ import annotations

import os
import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from overlay.core.errors import DecodeError
from overlay.peermsg.frames import FRAGMENT, MAX_FRAME, FrameReader, PeerMessageType, encode

TAGS = st.sampled_from([int(t) for t in PeerMessageType])


def frame_sizes(frames: list[bytes]) -> list[int]:
    return [struct.unpack(">H", f[:2])[0] for f in frames]


@pytest.mark.parametrize("size, frames", [(8191, 1), (8192, 2), (8193, 2), (1_000_000, 123)])
def test_the_8192_byte_boundary_and_a_1_mb_message(size, frames):
    payload = os.urandom(size)
    encoded = encode(PeerMessageType.DATA, payload, message_id=7)
    assert len(encoded) == frames
    assert max(frame_sizes(encoded)) <= MAX_FRAME
    if frames == 1:
        assert encoded[0][2] == PeerMessageType.DATA, "a message that fits is exactly tag + payload"
    assert list(FrameReader().feed(b"".join(encoded))) == [(PeerMessageType.DATA, payload)]


def test_fragments_of_several_messages_interleave_and_small_ones_pass_between():
    big_a, big_b, small = os.urandom(30_000), os.urandom(20_000), b"status?"
    fa, fb = encode(PeerMessageType.BELIEF, big_a, 1), encode(PeerMessageType.QUERY, big_b, 2)
    stream = [fa[0], fb[0], *encode(PeerMessageType.STATUS, small, 3), *fa[1:], *fb[1:]]
    reader = FrameReader()
    got = [m for f in stream for m in reader.feed(f)]
    assert got == [(PeerMessageType.STATUS, small), (PeerMessageType.BELIEF, big_a), (PeerMessageType.QUERY, big_b)]
    assert reader.buffered == 0


def test_limits_drop_the_message_concerned_and_count():
    reader = FrameReader(max_message=50_000, max_partial=2, max_buffered=20_000)
    assert list(reader.feed(b"".join(encode(PeerMessageType.DATA, os.urandom(60_000), 1)))) == []
    assert reader.counters.too_large == 1 and reader.buffered == 0
    firsts = [encode(PeerMessageType.DATA, os.urandom(30_000), i)[0] for i in (10, 11, 12)]
    assert [m for f in firsts for m in reader.feed(f)] == []
    assert reader.counters.too_many_partial == 1
    # the two partial ones may not together hold more than max_buffered: both are dropped
    rest = encode(PeerMessageType.DATA, os.urandom(30_000), 10)[1:] + encode(PeerMessageType.DATA, os.urandom(30_000), 11)[1:]
    for f in rest:
        assert list(reader.feed(f)) == []
        assert reader.buffered <= 20_000
    assert reader.counters.too_large == 3 and reader.buffered == 0


def test_an_oversized_frame_ends_the_stream_and_unknown_tags_are_skipped():
    reader = FrameReader()
    good = encode(PeerMessageType.RESULT, b"ok", 1)[0]
    unknown = struct.pack(">H", 3) + b"\x42ab"
    assert list(reader.feed(unknown + good)) == [(PeerMessageType.RESULT, b"ok")]
    assert reader.counters.unknown_tag == 1
    with pytest.raises(DecodeError, match="8192"):
        list(reader.feed(struct.pack(">H", MAX_FRAME + 1) + b"x" * 10))


def test_malformed_fragments_are_dropped_and_counted():
    reader = FrameReader()
    orphan = struct.pack(">HBIB", 6, FRAGMENT, 99, 0)  # a middle fragment of no message
    short = struct.pack(">HB", 1, FRAGMENT)
    frames = encode(PeerMessageType.DATA, os.urandom(20_000), 5)
    truncated_last = frames[0] + frames[2]  # the middle one missing: the total does not match
    assert list(reader.feed(orphan + short + truncated_last)) == []
    assert reader.counters.malformed >= 2 and reader.buffered == 0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(TAGS, st.integers(0, 40_000)), min_size=1, max_size=6), st.integers(0, 2**32 - 1), st.integers(1, 5000))
def test_any_messages_interleaved_and_cut_anywhere_arrive_whole(messages, seed, cut):
    rng = random.Random(seed)
    queues = [list(encode(tag, rng.randbytes(size), i)) for i, (tag, size) in enumerate(messages)]
    stream = bytearray()
    while any(queues):  # interleave fragments as concurrent senders would
        q = rng.choice([q for q in queues if q])
        stream += q.pop(0)
    reader = FrameReader()
    got = []
    for pos in range(0, len(stream), cut):
        got += reader.feed(bytes(stream[pos : pos + cut]))
    assert sorted((t, len(p)) for t, p in got) == sorted((t, s) for t, s in messages)
    assert reader.buffered == 0


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=3000))
def test_arbitrary_bytes_never_crash_the_reader(data):
    reader = FrameReader(max_message=100_000)
    try:
        for tag, _ in reader.feed(data):
            assert tag in set(int(t) for t in PeerMessageType)
    except DecodeError:
        pass
    assert reader.buffered <= 100_000
