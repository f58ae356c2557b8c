"""The stream protocol of a WebRTC data channel without I/O (nat/webrtc_stream.py): the frame
codec, the packing of queued bytes into frames, the credit window between two cores joined by
queues, and the half-close states with their violations."""

from __future__ import annotations

from collections import deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nat.webrtc_stream import (
    CHUNK, CREDIT, DATA, FIN, FIN_FRAME, WINDOW, Credit, CreditWindow, Data, Fin, StreamCore, StreamState, decode_frame,
    encode, encode_credit, encode_data, pack,
)
from overlay.core.errors import DecodeError, ProtocolError

FRAMES = st.one_of(
    st.binary(max_size=CHUNK).map(Data),
    st.integers(0, 2**32 - 1).map(Credit),
    st.just(Fin()),
)


# ---- codec ----------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(FRAMES)
def test_every_frame_round_trips(frame):
    assert decode_frame(encode(frame)) == frame


def test_the_wire_bytes_are_the_documented_ones():
    assert encode_data(b"hi") == b"\x00hi"
    assert encode_credit(262144) == b"\x01\x00\x04\x00\x00"
    assert FIN_FRAME == b"\x02"
    assert (DATA, CREDIT, FIN) == (0, 1, 2)


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.binary(max_size=CHUNK + 8), st.text(max_size=8), st.none(), st.integers()))
def test_arbitrary_messages_decode_or_raise_decode_error(message):
    try:
        frame = decode_frame(message)
    except DecodeError:
        return
    assert isinstance(frame, (Data, Credit, Fin))
    assert encode(frame) == message


@pytest.mark.parametrize("message, reason", [
    (b"", "text or empty"), ("text", "text or empty"), (b"\x03", "unknown frame type 3"),
    (b"\x01\x00\x00\x00", "frame type 1 of 4 bytes"), (b"\x02\x00", "frame type 2 of 2 bytes"),
    (b"\x00" + b"x" * (CHUNK + 1), f"DATA of more than {CHUNK} bytes"),
])
def test_malformed_messages_say_why(message, reason):
    with pytest.raises(DecodeError, match=reason):
        decode_frame(message)


def test_encoders_refuse_what_does_not_fit():
    with pytest.raises(ValueError):
        encode_data(b"x" * (CHUNK + 1))
    with pytest.raises(ValueError):
        encode_credit(2**32)


def runs(tokens: list[bytes | memoryview]) -> list[tuple[str, bytes]]:
    """Stream bytes merged into runs between control frames: what the peer's stream sees."""
    out: list[tuple[str, bytes]] = []
    for token in tokens:
        if isinstance(token, memoryview) or token[0] == DATA:
            payload = bytes(token) if isinstance(token, memoryview) else token[1:]
            if out and out[-1][0] == "bytes":
                out[-1] = ("bytes", out[-1][1] + payload)
            elif payload:
                out.append(("bytes", payload))
        else:
            out.append(("control", token))
    return out


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=3 * CHUNK).map(memoryview), st.sampled_from([FIN_FRAME, encode_credit(5)])),
                max_size=8))
def test_packing_keeps_bytes_and_order_in_full_data_frames(items):
    frames = list(pack(items))
    assert runs(frames) == runs(items)
    for frame, following in zip(frames, frames[1:] + [FIN_FRAME]):
        assert 1 < len(frame) <= CHUNK + 1 or frame[0] != DATA, "no empty or oversized DATA frame"
        if frame[0] == DATA and following[0] == DATA:
            assert len(frame) == CHUNK + 1, "a DATA frame followed by more bytes is full"


# ---- the credit window between two cores ------------------------------------------------------------

STEPS = st.lists(st.tuples(st.sampled_from(["write", "to-reader", "read", "to-writer"]), st.integers(1, 200)), max_size=300)


@settings(max_examples=300, deadline=None)
@given(st.integers(4, 256), STEPS)
def test_a_writer_never_sends_beyond_its_credit_and_credit_comes_back_as_data_is_read(window, steps):
    writer, reader = StreamCore(window), StreamCore(window)
    data_in_flight: deque[bytes] = deque()
    credit_in_flight: deque[bytes] = deque()
    sent = received = read = 0

    def conserved() -> int:  # every byte of the window is in exactly one place
        return (writer.window.credit + sum(len(f) - 1 for f in data_in_flight) + reader.window.buffered
                + reader.window.consumed + sum(decode_frame(f).amount for f in credit_in_flight))

    for step, n in steps:
        if step == "write":
            size = writer.take(n)
            assert size <= n
            if size:
                data_in_flight.append(encode_data(b"x" * size))
                sent += size
        elif step == "to-reader" and data_in_flight:
            frame = reader.receive(data_in_flight.popleft())  # never a violation
            received += len(frame.payload)
        elif step == "read" and reader.window.buffered:
            size = min(n, reader.window.buffered)
            read += size
            grant = reader.consume(size)
            assert grant == 0 or grant >= window // 4
            if grant:
                credit_in_flight.append(encode_credit(grant))
        elif step == "to-writer" and credit_in_flight:
            writer.receive(credit_in_flight.popleft())
        assert writer.window.credit >= 0
        assert sent - received + reader.window.buffered + reader.window.consumed <= window
        assert conserved() == window
    # drain: everything arrives, is read, and all but less than a quarter window is credited back
    while data_in_flight:
        reader.receive(data_in_flight.popleft())
    if reader.window.buffered:
        grant = reader.consume(reader.window.buffered)
        if grant:
            credit_in_flight.append(encode_credit(grant))
    while credit_in_flight:
        writer.receive(credit_in_flight.popleft())
    assert reader.window.consumed < window // 4
    assert writer.window.credit == window - reader.window.consumed
    assert reader.counters.violations == writer.counters.violations == 0


def test_credit_is_granted_once_a_quarter_window_is_read():
    window = CreditWindow(100)
    window.received(60)
    assert window.consume(24) == 0
    assert window.consume(1) == 25
    assert window.consume(30) == 30
    assert (window.buffered, window.consumed) == (5, 0)
    assert window.consume(5, may_credit=False) == 0 and window.consumed == 5


def test_the_reader_counts_what_it_read_but_has_not_credited_against_the_peer():
    window = CreditWindow(100)
    window.received(100)
    window.consume(20)  # under a quarter: not credited, so the peer may not send it again yet
    assert not window.fits(1)
    with pytest.raises(ProtocolError, match="beyond its credit"):
        window.received(1)


def test_a_writer_waits_at_zero_credit():
    core = StreamCore(10)
    assert core.take(25) == 10
    assert core.take(1) == 0
    core.receive(encode_credit(4))
    assert core.take(25) == 4
    assert core.counters.bytes_out == 14


# ---- states ---------------------------------------------------------------------------------------


def in_state(state: StreamState) -> StreamCore:
    core = StreamCore()
    if state in (StreamState.WRITE_CLOSED, StreamState.CLOSED):
        core.close()
    if state in (StreamState.READ_CLOSED, StreamState.CLOSED):
        core.receive(FIN_FRAME)
    if state is StreamState.RESET:
        core.reset("test")
    assert core.state is state
    return core


@pytest.mark.parametrize("state, event, after", [
    (StreamState.OPEN, "close", StreamState.WRITE_CLOSED),
    (StreamState.OPEN, "fin", StreamState.READ_CLOSED),
    (StreamState.WRITE_CLOSED, "fin", StreamState.CLOSED),
    (StreamState.READ_CLOSED, "close", StreamState.CLOSED),
    (StreamState.WRITE_CLOSED, "close", StreamState.WRITE_CLOSED),
    (StreamState.CLOSED, "close", StreamState.CLOSED),
    (StreamState.RESET, "close", StreamState.RESET),
    (StreamState.RESET, "fin", StreamState.RESET),
    (StreamState.OPEN, "reset", StreamState.RESET),
    (StreamState.CLOSED, "reset", StreamState.RESET),
    (StreamState.OPEN, "channel closed", StreamState.RESET),
    (StreamState.READ_CLOSED, "channel closed", StreamState.RESET),
    (StreamState.CLOSED, "channel closed", StreamState.CLOSED),
    (StreamState.WRITE_CLOSED, "transport ended", StreamState.RESET),
])
def test_the_transition_table(state, event, after):
    core = in_state(state)
    if event == "close":
        assert core.close() is (state in (StreamState.OPEN, StreamState.READ_CLOSED))
    elif event == "fin":
        assert (core.receive(FIN_FRAME) is None) is (state is StreamState.RESET)
    elif event == "reset":
        assert core.reset("reset locally")
    elif event == "channel closed":
        core.channel_closed()
    else:
        core.broke("the DTLS transport closed")
    assert core.state is after
    assert core.done is (after is StreamState.CLOSED)
    assert core.writable is (after in (StreamState.OPEN, StreamState.READ_CLOSED))


@pytest.mark.parametrize("state, message, error, reason", [
    (StreamState.READ_CLOSED, encode_data(b"x"), ProtocolError, "data after FIN"),
    (StreamState.CLOSED, FIN_FRAME, ProtocolError, "a second FIN"),
    (StreamState.OPEN, "text", DecodeError, "text or empty frame"),
    (StreamState.WRITE_CLOSED, b"\x09", DecodeError, "unknown frame type 9"),
])
def test_a_violation_resets_the_stream_and_raises(state, message, error, reason):
    core = in_state(state)
    with pytest.raises(error, match=reason):
        core.receive(message)
    assert core.state is StreamState.RESET and core.broken == reason and core.counters.violations == 1
    assert core.receive(encode_data(b"late")) is None, "frames in flight after a reset are dropped"


def test_data_beyond_the_credit_resets_and_drops_the_buffer():
    core = StreamCore(8)
    core.receive(encode_data(b"12345678"))
    with pytest.raises(ProtocolError, match="beyond its credit"):
        core.receive(encode_data(b"9"))
    assert core.window.buffered == 0 and core.broken == "peer sent beyond its credit"


def test_a_broken_transport_keeps_what_is_buffered_readable_but_credits_nothing():
    core = StreamCore(8)
    core.receive(encode_data(b"12345678"))
    core.broke("the DTLS transport closed")
    core.broke("connection closed")
    assert core.broken == "the DTLS transport closed", "the first reason stays"
    assert core.window.buffered == 8 and core.consume(8) == 0


def test_eof_survives_a_later_reset_so_a_reader_sees_a_clean_end():
    core = in_state(StreamState.READ_CLOSED)
    core.broke("connection closed")
    assert core.eof and core.state is StreamState.RESET


def test_adapter_bugs_raise_protocol_error():
    core = in_state(StreamState.WRITE_CLOSED)
    with pytest.raises(ProtocolError, match="write-closed"):
        core.take(1)
    with pytest.raises(ProtocolError, match="consumed 1 bytes of 0"):
        StreamCore().consume(1)


def test_default_window():
    assert StreamCore().window.size == WINDOW == 1 << 20
