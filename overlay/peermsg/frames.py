"""Typed peer messages (Convex peer messaging): frames of at most 8192 bytes, larger messages split
and reassembled.

This is the codec without I/O; the stream protocol that carries it is `/overlay/<network>/peermsg/1.0.0`.
How it relates to Convex's peer messaging: docs/protocols/convex.md.

Frame on the stream: u16 big-endian length L (1..MAX_FRAME), then L bytes:

    tag (1 byte) | payload              a whole message of type `tag` (tag in TYPES)
    0x7F | id u32 | flags u8 | rest     one fragment of a message too large for one frame

A message is a type tag (one byte) and its payload, in a buffer of 8192 bytes, as Convex
specifies; a message whose tag and payload fit in MAX_FRAME bytes travels exactly so. A larger
one is split into fragments under a message id chosen by the sender (unique among its
unfinished messages on that stream), so a large message does not hold up small ones behind it:

    flags 0x01 FIRST: rest = tag u8 | total payload length u32 | the first bytes of the payload
    flags 0x02 LAST:  the fragment that completes the payload (a fragment may be FIRST and LAST)
    otherwise:        rest = the next bytes of the payload

Limits, each counted when it bites: a frame longer than MAX_FRAME ends the stream (it is out of
sync); a message larger than `max_message`, more than `max_partial` unfinished messages, or more
than `max_buffered` bytes waiting for reassembly drops the message concerned; an unknown tag or
a malformed fragment drops that frame and the stream goes on.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import IntEnum

from overlay.core.errors import DecodeError

MAX_FRAME = 8192  # tag + payload of one frame, Convex's buffer
FRAGMENT = 0x7F
FIRST, LAST = 0x01, 0x02
_FIRST_HEADER = struct.Struct(">BIBBI")  # FRAGMENT, id, flags, tag, total
_HEADER = struct.Struct(">BIB")  # FRAGMENT, id, flags
FIRST_ROOM = MAX_FRAME - _FIRST_HEADER.size
NEXT_ROOM = MAX_FRAME - _HEADER.size


class PeerMessageType(IntEnum):
    BELIEF = 1
    DATA = 2
    QUERY = 3
    TRANSACT = 4
    RESULT = 5
    STATUS = 6
    MISSING_DATA = 7


TYPES = frozenset(int(t) for t in PeerMessageType)


def encode(tag: int, payload: bytes, message_id: int) -> list[bytes]:
    """The frames (each with its length prefix) of one message; `message_id` is used only if it
    must be split."""
    if tag not in TYPES:
        raise ValueError(f"unknown message type {tag}")
    if 1 + len(payload) <= MAX_FRAME:
        return [struct.pack(">H", 1 + len(payload)) + bytes([tag]) + payload]
    frames = []
    view = memoryview(payload)
    first = _FIRST_HEADER.pack(FRAGMENT, message_id, FIRST, tag, len(payload)) + view[:FIRST_ROOM]
    frames.append(first)
    pos = FIRST_ROOM
    while pos < len(payload):
        chunk = view[pos : pos + NEXT_ROOM]
        pos += len(chunk)
        frames.append(_HEADER.pack(FRAGMENT, message_id, LAST if pos >= len(payload) else 0) + chunk)
    return [struct.pack(">H", len(f)) + f for f in frames]


@dataclass
class _Partial:
    tag: int
    total: int
    data: bytearray = field(default_factory=bytearray)


@dataclass
class PeerFrameCounters:
    unknown_tag: int = 0
    malformed: int = 0
    too_large: int = 0
    too_many_partial: int = 0


class FrameReader:
    """Turns received bytes into (tag, payload) messages, in the order they complete."""

    def __init__(self, max_message: int = 16 << 20, max_partial: int = 16, max_buffered: int = 32 << 20) -> None:
        self.max_message = max_message
        self.max_partial = max_partial
        self.max_buffered = max_buffered
        self.counters = PeerFrameCounters()
        self._buffer = bytearray()
        self._partial: dict[int, _Partial] = {}
        self._buffered = 0  # bytes held in _partial

    def feed(self, data: bytes) -> Iterator[tuple[int, bytes]]:
        """Complete messages found once `data` is added. Raises DecodeError when a frame is
        longer than MAX_FRAME (the stream must be closed)."""
        self._buffer += data
        while len(self._buffer) >= 2:
            length = struct.unpack_from(">H", self._buffer)[0]
            if length == 0 or length > MAX_FRAME:
                raise DecodeError(f"peer message frame of {length} bytes (at most {MAX_FRAME})")
            if len(self._buffer) < 2 + length:
                return
            frame = bytes(self._buffer[2 : 2 + length])
            del self._buffer[: 2 + length]
            message = self._frame(frame)
            if message is not None:
                yield message

    def _frame(self, frame: bytes) -> tuple[int, bytes] | None:
        tag = frame[0]
        if tag in TYPES:
            return tag, frame[1:]
        if tag != FRAGMENT:
            self.counters.unknown_tag += 1
            return None
        if len(frame) < _HEADER.size:
            self.counters.malformed += 1
            return None
        _, message_id, flags = _HEADER.unpack_from(frame)
        if flags & FIRST:
            return self._first(message_id, flags, frame)
        partial = self._partial.get(message_id)
        if partial is None or flags & ~LAST:
            self.counters.malformed += 1
            return None
        return self._append(message_id, partial, frame[_HEADER.size :], flags & LAST)

    def _first(self, message_id: int, flags: int, frame: bytes) -> tuple[int, bytes] | None:
        if len(frame) < _FIRST_HEADER.size or flags & ~(FIRST | LAST) or message_id in self._partial:
            self.counters.malformed += 1
            self._drop(message_id)
            return None
        _, _, _, tag, total = _FIRST_HEADER.unpack_from(frame)
        if tag not in TYPES:
            self.counters.unknown_tag += 1
            return None
        if total > self.max_message:
            self.counters.too_large += 1
            return None
        if len(self._partial) >= self.max_partial:
            self.counters.too_many_partial += 1
            return None
        partial = self._partial[message_id] = _Partial(tag, total)
        return self._append(message_id, partial, frame[_FIRST_HEADER.size :], flags & LAST)

    def _append(self, message_id: int, partial: _Partial, chunk: bytes, last: int) -> tuple[int, bytes] | None:
        if len(partial.data) + len(chunk) > partial.total or self._buffered + len(chunk) > self.max_buffered:
            self.counters.too_large += 1
            self._drop(message_id)
            return None
        partial.data += chunk
        self._buffered += len(chunk)
        if not last:
            return None
        self._drop(message_id)
        if len(partial.data) != partial.total:
            self.counters.malformed += 1
            return None
        return partial.tag, bytes(partial.data)

    def _drop(self, message_id: int) -> None:
        partial = self._partial.pop(message_id, None)
        if partial is not None:
            self._buffered -= len(partial.data)

    @property
    def buffered(self) -> int:
        """Bytes held for unfinished messages (at most max_buffered)."""
        return self._buffered
