"""The stream protocol on a WebRTC data channel, without I/O: its frames, the credit window and
the half-close states. nat/webrtc.py carries it on aiortc's channels, across threads.

Wire: each data-channel message on a stream's channel is one binary frame:

    0x00 payload...        DATA: stream bytes, at most CHUNK bytes of payload
    0x01 u32 (big endian)  CREDIT: the receiver has consumed that many more bytes
    0x02                   FIN: the sender will send no more DATA

Credit: a sender may have at most `window` (WINDOW) bytes of DATA payload that the receiver has
not credited yet. The receiver credits what its reader consumed once that reaches a quarter of
the window, and stops crediting once the peer's FIN is in. aiortc returns SCTP receive window
as soon as a message is handed over, read or not, so without this window a paused reader's
buffer grows without bound; with it, a paused reader holds at most `window` bytes per stream
and loses none.

States, and what moves them (everything that changes them is in StreamCore):

    OPEN          --close-->               WRITE_CLOSED   (send FIN)
    OPEN          --FIN-->                 READ_CLOSED
    WRITE_CLOSED  --FIN-->                 CLOSED         (close the channel: both FINs through)
    READ_CLOSED   --close-->               CLOSED         (send FIN, close the channel)
    not RESET     --reset, violation-->    RESET          (drop what is buffered, close the channel)
    not CLOSED    --channel closed-->      RESET          ("reset by the peer"; buffered bytes stay readable)
    not RESET     --transport ended-->     RESET          (buffered bytes stay readable)

A violation by the peer resets the stream and raises: DecodeError for a frame that does not
decode (text, empty, unknown type, DATA over CHUNK bytes), ProtocolError for DATA beyond its
credit, DATA after FIN or a second FIN. Frames that arrive once RESET were in flight and are
dropped; `close` and `reset` are idempotent. The adapter asking to send while the stream is not
writable, or to consume more than is buffered, is a bug and raises ProtocolError.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import Enum

from overlay.core.errors import DecodeError, ProtocolError

DATA, CREDIT, FIN = 0, 1, 2
WINDOW = 1 << 20  # per stream
CHUNK = 65535  # DATA payload per message: our SCTP capabilities allow 65,536-byte messages
_CREDIT = struct.Struct(">BI")
FIN_FRAME = bytes([FIN])


class StreamState(Enum):
    OPEN = "open"
    WRITE_CLOSED = "write-closed"  # our FIN is sent
    READ_CLOSED = "read-closed"  # the peer's FIN is in
    CLOSED = "closed"  # both FINs through: the channel goes
    RESET = "reset"  # by either side, a violation, or the transport went away


_AFTER_CLOSE = {StreamState.OPEN: StreamState.WRITE_CLOSED, StreamState.READ_CLOSED: StreamState.CLOSED}
_AFTER_FIN = {StreamState.OPEN: StreamState.READ_CLOSED, StreamState.WRITE_CLOSED: StreamState.CLOSED}


# ---- frames -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Data:
    payload: bytes


@dataclass(frozen=True, slots=True)
class Credit:
    amount: int


@dataclass(frozen=True, slots=True)
class Fin:
    pass


Frame = Data | Credit | Fin


def encode_data(payload: bytes) -> bytes:
    if len(payload) > CHUNK:
        raise ValueError(f"DATA carries at most {CHUNK} bytes")
    return bytes([DATA]) + payload


def encode_credit(amount: int) -> bytes:
    if not 0 <= amount < 1 << 32:
        raise ValueError("CREDIT is a u32")
    return _CREDIT.pack(CREDIT, amount)


def encode(frame: Frame) -> bytes:
    if isinstance(frame, Data):
        return encode_data(frame.payload)
    if isinstance(frame, Credit):
        return encode_credit(frame.amount)
    return FIN_FRAME


def decode_frame(data: object) -> Frame:
    """One data-channel message (aiortc hands text messages over as str); DecodeError says why not."""
    if not isinstance(data, bytes) or not data:
        raise DecodeError("text or empty frame")
    kind = data[0]
    if kind == DATA:
        if len(data) > CHUNK + 1:
            raise DecodeError(f"DATA of more than {CHUNK} bytes")
        return Data(data[1:])
    if kind == CREDIT and len(data) == _CREDIT.size:
        return Credit(_CREDIT.unpack(data)[1])
    if kind == FIN and len(data) == 1:
        return Fin()
    raise DecodeError(f"unknown frame type {kind}" if kind not in (CREDIT, FIN) else f"frame type {kind} of {len(data)} bytes")


def pack(items: Iterable[bytes | memoryview]) -> Iterator[bytes]:
    """The messages for what a stream queued, in order: consecutive stream bytes (memoryviews)
    packed into full DATA frames, control frames (bytes) as they are.

    Every message costs the receiving trio thread a wake-up and a share of the GIL, and writes
    (a Noise message is up to 65,537 bytes with its length) do not divide into messages:
    packing them halves the message count of a bulk transfer.
    """
    data = bytearray([DATA])
    for item in items:
        if isinstance(item, memoryview):  # stream bytes
            while item:
                room = CHUNK + 1 - len(data)
                data += item[:room]
                item = item[room:]
                if len(data) == CHUNK + 1:
                    yield bytes(data)
                    data = bytearray([DATA])
        else:  # a control frame, after the bytes queued before it
            if len(data) > 1:
                yield bytes(data)
                data = bytearray([DATA])
            yield item
    if len(data) > 1:
        yield bytes(data)


# ---- the credit window --------------------------------------------------------------------------


class CreditWindow:
    """Both directions' flow control of one stream.

    Sending: `credit` is what we may still send; `take` spends it, the peer's CREDIT (`granted`)
    refills it. Receiving: the peer may have `size` bytes outstanding, those we hold (`buffered`)
    plus those read but not credited back yet (`consumed`); `consume` says when to credit.
    """

    def __init__(self, size: int = WINDOW) -> None:
        self.size = size
        self.credit = size
        self.buffered = 0
        self.consumed = 0

    def take(self, wanted: int) -> int:
        """How many of `wanted` bytes may be sent now (0: wait for credit); they are spent."""
        size = max(0, min(wanted, self.credit))
        self.credit -= size
        return size

    def granted(self, amount: int) -> None:
        self.credit += amount

    def fits(self, size: int) -> bool:
        """Whether `size` more bytes from the peer stay within the credit we gave it."""
        return self.buffered + self.consumed + size <= self.size

    def received(self, size: int) -> None:
        if not self.fits(size):
            raise ProtocolError("peer sent beyond its credit")
        self.buffered += size

    def consume(self, size: int, may_credit: bool = True) -> int:
        """The reader took `size` buffered bytes: the credit to send the peer now, or 0."""
        if not 0 <= size <= self.buffered:
            raise ProtocolError(f"consumed {size} bytes of {self.buffered} buffered")
        self.buffered -= size
        self.consumed += size
        if not may_credit or self.consumed < self.size // 4:
            return 0
        amount, self.consumed = self.consumed, 0
        return amount

    def discard(self) -> None:
        self.buffered = 0


# ---- one stream ---------------------------------------------------------------------------------


@dataclass
class StreamCounters:
    bytes_in: int = 0
    bytes_out: int = 0
    violations: int = 0


class StreamCore:
    """One stream's state and window; the adapter keeps the bytes and does what the results say."""

    def __init__(self, window: int = WINDOW) -> None:
        self.state = StreamState.OPEN
        self.window = CreditWindow(window)
        self.eof = False  # the peer's FIN arrived (still true after a reset: the stream had ended)
        self.broken: str | None = None  # why it is RESET
        self.counters = StreamCounters()

    @property
    def writable(self) -> bool:
        return self.state is StreamState.OPEN or self.state is StreamState.READ_CLOSED

    @property
    def done(self) -> bool:
        """Both FINs are through: the channel may close."""
        return self.state is StreamState.CLOSED

    def receive(self, message: object) -> Frame | None:
        """A message from the peer, applied: the frame, or None once RESET (it was in flight)."""
        if self.state is StreamState.RESET:
            return None
        try:
            frame = decode_frame(message)
            if isinstance(frame, Data):
                if self.eof:
                    raise ProtocolError("data after FIN")
                self.window.received(len(frame.payload))
                self.counters.bytes_in += len(frame.payload)
            elif isinstance(frame, Credit):
                self.window.granted(frame.amount)
            else:
                if self.eof:
                    raise ProtocolError("a second FIN")
                self.eof = True
                self.state = _AFTER_FIN[self.state]
        except (DecodeError, ProtocolError) as e:
            self.counters.violations += 1
            self.reset(str(e))
            raise
        return frame

    def take(self, wanted: int) -> int:
        """How many of `wanted` bytes to send now (0: wait for credit)."""
        if not self.writable:
            raise ProtocolError(f"send on a stream that is {self.state.value}")
        size = self.window.take(wanted)
        self.counters.bytes_out += size
        return size

    def consume(self, size: int) -> int:
        """The reader took `size` bytes: the CREDIT to send now, or 0."""
        return self.window.consume(size, may_credit=not self.eof and self.state is not StreamState.RESET)

    def close(self) -> bool:
        """Our FIN: True when it is to be sent (then `done` says whether the channel goes)."""
        after = _AFTER_CLOSE.get(self.state)
        if after is None:
            return False
        self.state = after
        return True

    def reset(self, why: str) -> bool:
        """End both directions at once, dropping what is buffered: True when the channel is to close."""
        if self.state is StreamState.RESET:
            return False
        self.broke(why)
        self.window.discard()
        return True

    def broke(self, why: str) -> None:
        """The transport or the peer ended the stream; what is buffered stays readable."""
        self.broken = self.broken or why
        self.state = StreamState.RESET

    def channel_closed(self) -> None:
        if self.state is not StreamState.CLOSED:
            self.broke("reset by the peer")
