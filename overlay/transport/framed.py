"""Frames on a libp2p stream (anything with async `read(n)`, `write(data)`, `close()`): the trio
side of overlay/core/framing.py."""

from __future__ import annotations

from typing import Any

import trio
from libp2p.network.stream.exceptions import StreamEOF

from overlay.core.framing import FrameDecoder, frame

READ_CHUNK = 16 * 1024


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
        await end_quietly(self.stream, reset=False)


async def end_quietly(stream: Any, reset: bool = True) -> None:
    """Reset (or close) `stream` within a second, whatever it raises: it may be gone already,
    and a dead peer must not hold us."""
    with trio.move_on_after(1):
        try:
            await (stream.reset() if reset else stream.close())
        except Exception:  # noqa: BLE001 - ending a broken stream fails in many ways
            pass
