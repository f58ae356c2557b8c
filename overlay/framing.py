"""Length-prefixed frames: an unsigned varint length, then that many bytes (as libp2p's
Kademlia, and our signalling and relay protocols, put messages on a stream).

`FrameDecoder` is the part without I/O; `FramedStream` reads and writes frames on a libp2p
stream (anything with async `read(n)`, `write(data)`, `close()`).
"""

from __future__ import annotations

from typing import Any

import trio
from libp2p.network.stream.exceptions import StreamEOF

from overlay.errors import DecodeError
from overlay.protobuf import MAX_VARINT_BYTES, decode_varint, encode_varint

READ_CHUNK = 16 * 1024


def frame(payload: bytes) -> bytes:
    """Prefix `payload` with its length as an unsigned varint."""
    return encode_varint(len(payload)) + payload


class FrameDecoder:
    """Splits a byte stream into varint-length-prefixed frames, without I/O.

    A declared length over `max_size` is refused as soon as the prefix is read, before the frame
    is buffered. After a DecodeError the stream is out of sync and should be closed.
    """

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._buffer = bytearray()

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes, max_frames: int | None = None) -> list[bytes]:
        """Add received bytes; return the frames completed by them, in order (at most
        `max_frames`: the rest stays buffered, unparsed)."""
        self._buffer += data
        frames: list[bytes] = []
        while self._buffer and (max_frames is None or len(frames) < max_frames):
            prefix = bytes(self._buffer[:MAX_VARINT_BYTES])
            if len(prefix) < MAX_VARINT_BYTES and all(b & 0x80 for b in prefix):
                break
            length, start = decode_varint(prefix)
            if length > self.max_size:
                raise DecodeError(f"frame of {length} bytes exceeds the limit of {self.max_size}")
            if len(self._buffer) < start + length:
                break
            frames.append(bytes(self._buffer[start : start + length]))
            del self._buffer[: start + length]
        return frames

    def take_rest(self) -> bytes:
        """The buffered bytes not yet parsed, for protocols that switch from frames to raw bytes."""
        rest = bytes(self._buffer)
        self._buffer.clear()
        return rest


class FramedStream:
    """Frames on a stream. `read()` returns None at end of stream and raises DecodeError for an
    oversized frame. It parses one frame at a time, so bytes after it stay raw in `decoder`
    (see `take_rest`)."""

    def __init__(self, stream: Any, max_size: int) -> None:
        self.stream = stream
        self.decoder = FrameDecoder(max_size)
        self.idle_since = 0.0

    async def read(self) -> bytes | None:
        frames = self.decoder.feed(b"", max_frames=1)
        while not frames:
            try:
                data = await self.stream.read(READ_CHUNK)
            except StreamEOF:
                return None
            if not data:
                return None
            frames = self.decoder.feed(data, max_frames=1)
        return frames[0]

    async def write(self, payload: bytes) -> None:
        await self.stream.write(frame(payload))

    async def close(self) -> None:
        """Close within a second, whatever the stream raises: a dead peer must not hold us."""
        with trio.move_on_after(1):
            try:
                await self.stream.close()
            except Exception:  # noqa: BLE001 - closing a broken stream fails in many ways
                pass
