"""Length-prefixed frames: an unsigned varint length, then that many bytes (as libp2p's
Kademlia, and our signalling and relay protocols, put messages on a stream).

`FrameDecoder` is the part without I/O; overlay/transport/framed.py reads and writes frames on
a libp2p stream.
"""

from __future__ import annotations

from overlay.core.errors import DecodeError
from overlay.core.protobuf import MAX_VARINT_BYTES, decode_varint, encode_varint

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
