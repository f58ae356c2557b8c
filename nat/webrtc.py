"""WebRTC connections: aiortc data channels, one per libp2p stream, as in libp2p's /webrtc spec.

Why aiortc's ORTC objects (gatherer, ICE, DTLS, SCTP transports) instead of RTCPeerConnection:
we exchange a compact description instead of SDP (`Description`), and we need our own ICE
gatherer to choose interfaces, which RTCPeerConnection builds internally.

Channels. Channel 0 (negotiated, ordered, reliable) is the control channel: the Noise handshake
runs on it and binds the peer IDs to the DTLS certificates (nat/webrtc_conn.py), and its end is
the connection's end. Every stream is a further channel, opened in-band (RFC 8832 DCEP, ordered,
reliable) by the side that opens the stream. DTLS already encrypts and authenticates every
channel, so streams carry plain bytes: no second encryption and no second multiplexer, which
is what made a single Noise + Yamux channel cost a third of the bare data channel's throughput.

The stream protocol on each channel (DATA, CREDIT and FIN frames, the credit window, the
half-close states) is nat/webrtc_stream.py, without I/O; the description exchanged through
signalling is nat/webrtc_description.py. This module carries them: aiortc runs on an asyncio
loop in its own thread (nat/bridge.py), the streams are read and written from trio. A paused
reader holds at most WINDOW bytes per stream, and a connection at most MAX_STREAMS streams.
Once both FINs are through, each side closes the channel (an SCTP stream reset); a channel
closed before that is a reset.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import ifaddr
import trio
from aioice import Connection as IceConnection
from aiortc import (
    RTCCertificate,
    RTCDataChannel,
    RTCDataChannelParameters,
    RTCDtlsFingerprint,
    RTCDtlsParameters,
    RTCDtlsTransport,
    RTCIceGatherer,
    RTCIceParameters,
    RTCIceServer,
    RTCIceTransport,
    RTCSctpCapabilities,
    RTCSctpTransport,
)
from aiortc.rtcicetransport import connection_kwargs
from aiortc.sdp import candidate_from_sdp, candidate_to_sdp
from libp2p.io.abc import ReadWriteCloser
from libp2p.io.exceptions import ConnectionClosedError

from nat.bridge import AsyncioBridge, TrioCall, get_bridge
from nat.webrtc_description import Description
from nat.webrtc_stream import FIN_FRAME, WINDOW, Data, Fin, StreamCore, StreamCounters, encode_credit, pack
from overlay.core.errors import DecodeError, DialError, ProtocolError

log = logging.getLogger(__name__)

MAX_STREAMS = 256  # open streams per connection, each way together
MAX_PENDING_STREAMS = 32  # opened by the peer, not accepted yet
SCTP_PORT = 5000


@dataclass(frozen=True)
class WebRtcConfig:
    """Where ICE may look: explicit servers only (aiortc's default is a public one), chosen interfaces."""

    ice_servers: tuple[RTCIceServer, ...] = ()
    interfaces: tuple[str, ...] = ()  # interface names or IPs; empty: every non-loopback address
    timeout: float = 10.0  # ICE + DTLS + SCTP, well below aioice's 63 s check-list failure
    allow_loopback_candidates: bool = False


# ---- ICE gathering on chosen interfaces -----------------------------------------------------------


def host_addresses(interfaces: Sequence[str]) -> list[str]:
    """Local IPv4/IPv6 addresses to gather host candidates on.

    `interfaces` lists interface names or addresses; empty means every address but loopback and
    IPv6 link-local, as a node on a home network wants.
    """
    out: list[str] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            addr = ip.ip if isinstance(ip.ip, str) else ip.ip[0]
            if interfaces:
                chosen = adapter.name in interfaces or addr in interfaces
            else:
                parsed = ipaddress.ip_address(addr)
                chosen = not parsed.is_loopback and not parsed.is_link_local
            if chosen and addr not in out:
                out.append(addr)
    return out


class _IceConnection(IceConnection):
    """aioice's connection gathering on the addresses we choose, not every address it finds."""

    def __init__(self, addresses: list[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._addresses = addresses

    async def get_component_candidates(self, component: int, addresses: list[str], timeout: int = 5) -> list:
        return await super().get_component_candidates(component, self._addresses, timeout)


class _Gatherer(RTCIceGatherer):
    """RTCIceGatherer with our interface choice and an explicit ICE role (ORTC has no offer/answer)."""

    def __init__(self, ice_servers: Sequence[RTCIceServer], controlling: bool, addresses: list[str]) -> None:
        super().__init__(iceServers=list(ice_servers))
        self._connection = _IceConnection(addresses, ice_controlling=controlling, **connection_kwargs(list(ice_servers)))


# ---- the session: lives on the asyncio loop, driven from trio -------------------------------------


@dataclass
class PathInfo:
    """What the selected candidate pair says about the path, for status and the NAT lab."""

    local: tuple[str, int] | None = None
    remote: tuple[str, int] | None = None
    local_type: str = ""
    remote_type: str = ""

    @property
    def relayed(self) -> bool:
        return "relay" in (self.local_type, self.remote_type)


class WebRtcSession:
    """One ICE/DTLS/SCTP association and its data channels.

    `gather()` then `connect(remote)`, which returns the control channel (negotiated, id 0) that
    the Noise handshake runs on; streams are further data channels (`open_stream`,
    `accept_stream`). `close()` at any point frees the sockets. The controlling side (the one
    that sends the offer) is also the Noise initiator.
    """

    def __init__(self, config: WebRtcConfig, controlling: bool, bridge: AsyncioBridge | None = None) -> None:
        self.config = config
        self.controlling = controlling
        self.bridge = bridge or get_bridge()
        self._call = TrioCall()
        self._ice: RTCIceTransport | None = None
        self._dtls: RTCDtlsTransport | None = None
        self._sctp: RTCSctpTransport | None = None
        self._closed = False
        self.stopped = False  # every transport stopped (set on the asyncio thread)
        self.path = PathInfo()
        self.remote_fingerprints: tuple[tuple[str, str], ...] = ()
        self.streams: set[DataChannelStream] = set()  # open streams, the control channel excluded
        self._control: DataChannelStream | None = None
        self.streams_refused = 0
        self._incoming_send, self._incoming = trio.open_memory_channel[DataChannelStream](MAX_PENDING_STREAMS)

    async def gather(self) -> Description:
        return await self.bridge.run(self._gather)

    async def connect(self, remote: Description) -> DataChannelStream:
        """Run ICE, DTLS and SCTP within the configured timeout; returns the open control channel."""
        control = self._control = DataChannelStream(self)
        try:
            with trio.fail_after(self.config.timeout):
                await self.bridge.run(self._connect, remote, control)
        except trio.TooSlowError:
            await self.close()
            raise DialError(f"webrtc: no connection within {self.config.timeout:.0f}s") from None
        except (ConnectionError, OSError) as e:
            await self.close()
            raise DialError(f"webrtc: {e}") from None
        self.remote_fingerprints = remote.fingerprints
        return control

    def local_fingerprints(self) -> tuple[tuple[str, str], ...]:
        assert self._dtls is not None, "gather() first"
        return tuple((f.algorithm, f.value) for f in self._dtls.getLocalParameters().fingerprints)

    async def open_stream(self) -> DataChannelStream:
        """A new data channel (announced to the peer in-band, RFC 8832), open for writing."""
        if self._closed:
            raise ConnectionClosedError("webrtc connection closed", transport="webrtc")
        if len(self.streams) >= MAX_STREAMS:
            raise ConnectionClosedError(f"webrtc: {MAX_STREAMS} streams open already", transport="webrtc")
        stream = DataChannelStream(self)
        self.streams.add(stream)
        try:
            with trio.fail_after(self.config.timeout):
                await self.bridge.run(self._open_channel, stream)
        except (trio.TooSlowError, ConnectionError) as e:
            stream._release()
            raise ConnectionClosedError(f"webrtc: no stream: {e or 'timed out'}", transport="webrtc") from None
        return stream

    async def accept_stream(self) -> DataChannelStream:
        """The next data channel the peer opened; EndOfChannel once the session is closed."""
        return await self._incoming.receive()

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._incoming_send.close()
            for stream in list(self.streams):
                stream._on_broken("connection closed")
            with trio.move_on_after(5):
                await self.bridge.run(self._stop)

    def _accept(self, stream: DataChannelStream) -> None:
        """trio side of an incoming channel: queued for accept_stream, or refused and counted."""
        if self._closed or len(self.streams) >= MAX_STREAMS:
            self.streams_refused += 1
            stream._reset_now("refused")
            return
        try:
            self._incoming_send.send_nowait(stream)
        except trio.WouldBlock:
            self.streams_refused += 1
            stream._reset_now("refused")
            return
        self.streams.add(stream)

    # -- asyncio side --

    async def _gather(self) -> Description:
        addresses = host_addresses(self.config.interfaces)
        gatherer = _Gatherer(self.config.ice_servers, self.controlling, addresses)
        self._ice = RTCIceTransport(gatherer)
        self._dtls = RTCDtlsTransport(self._ice, [RTCCertificate.generateCertificate()])
        self._sctp = RTCSctpTransport(self._dtls, SCTP_PORT)
        await gatherer.gather()
        params = gatherer.getLocalParameters()
        candidates = tuple("candidate:" + candidate_to_sdp(c) for c in gatherer.getLocalCandidates())
        return Description(params.usernameFragment, params.password, self.local_fingerprints(), candidates)

    async def _connect(self, remote: Description, control: DataChannelStream) -> None:
        assert self._ice is not None and self._dtls is not None and self._sctp is not None, "gather() first"
        for text in remote.candidates:
            candidate = candidate_from_sdp(text.removeprefix("candidate:"))
            candidate.sdpMid = "0"
            await self._ice.addRemoteCandidate(candidate)
        await self._ice.addRemoteCandidate(None)
        await self._ice.start(RTCIceParameters(usernameFragment=remote.ufrag, password=remote.pwd))
        if self._ice.state != "completed":
            raise ConnectionError("ICE found no working candidate pair")
        self.path = _selected_path(self._ice)
        fingerprints = [RTCDtlsFingerprint(algorithm=a, value=v) for a, v in remote.fingerprints]
        await self._dtls.start(RTCDtlsParameters(fingerprints=fingerprints, role="auto"))
        if self._dtls.state != "connected":
            raise ConnectionError(f"DTLS handshake ended in state {self._dtls.state}")
        # aiortc tells SCTP nothing when DTLS closes (the peer's close_notify can overtake its
        # SCTP ABORT): the session ends every channel itself then.
        self._dtls.on("statechange", self._on_dtls_state_asyncio)
        # The channels and their handlers exist before SCTP starts: the peer's first message can
        # arrive as soon as the association is up, and aiortc drops data for unknown channels.
        channel = RTCDataChannel(self._sctp, RTCDataChannelParameters(label="overlay", negotiated=True, id=0))
        control.attach(channel)
        self._sctp.on("datachannel", self._on_datachannel_asyncio)
        opened = asyncio.Event()
        channel.on("open", opened.set)
        await self._sctp.start(RTCSctpCapabilities(maxMessageSize=65536), SCTP_PORT)
        if channel.readyState != "open":
            await opened.wait()

    def _on_dtls_state_asyncio(self) -> None:
        if self._dtls is not None and self._dtls.state in ("closed", "failed"):
            self._call(self._transport_ended)

    def _transport_ended(self) -> None:
        for stream in [self._control, *self.streams]:
            if stream is not None:
                stream._on_broken("the DTLS transport closed")

    def _on_datachannel_asyncio(self, channel: RTCDataChannel) -> None:
        # Handlers are attached here, synchronously, before the channel's first message is emitted.
        stream = DataChannelStream(self)
        stream.attach(channel)
        self._call(self._accept, stream)

    async def _open_channel(self, stream: DataChannelStream) -> None:
        assert self._sctp is not None
        channel = RTCDataChannel(self._sctp, RTCDataChannelParameters(label="", ordered=True))
        stream.attach(channel)
        if channel.readyState != "open":
            settled = asyncio.Event()
            channel.on("open", settled.set)
            channel.on("close", settled.set)
            await settled.wait()
        if channel.readyState != "open":
            raise ConnectionError("the peer closed the new data channel")

    async def _stop(self) -> None:
        for transport in (self._sctp, self._dtls, self._ice):
            if transport is not None:
                try:
                    await transport.stop()
                except Exception as e:  # noqa: BLE001 - teardown of a half-built session
                    log.debug("webrtc: stopping %s: %s", type(transport).__name__, e)
        self.stopped = True


def _selected_path(ice: RTCIceTransport) -> PathInfo:
    """The nominated pair, read from aioice for reporting only (aiortc does not expose it)."""
    try:
        pair = next(iter(ice._connection._nominated.values()))
        local, remote = pair.local_candidate, pair.remote_candidate
        return PathInfo((local.host, local.port), (remote.host, remote.port), local.type, remote.type)
    except Exception:  # noqa: BLE001 - private structure; reporting degrades, the connection does not
        return PathInfo()


# ---- the byte stream ------------------------------------------------------------------------------


def _drain(outbox: deque[bytes | memoryview]) -> Iterator[bytes | memoryview]:
    """What the trio side queued, including what it queues while this runs."""
    while outbox:
        yield outbox.popleft()


class DataChannelStream(ReadWriteCloser):
    """One data channel as a byte stream, on the trio side; the channel itself is only touched on
    the asyncio loop. Its protocol state and credit are `core` (nat/webrtc_stream.py).

    Frames cross threads in batches, in order, one wake-up per burst: incoming ones through
    trio's run_sync_soon queue (FIFO), outgoing ones through call_soon_threadsafe.
    `close()` ends our direction (FIN) and reading goes on until the peer's FIN; once both are
    through, the channel is closed and its SCTP stream released. `reset()` ends both at once.
    `read()` returns b"" at the end either way: `eof` tells a clean end from a reset.
    """

    def __init__(self, session: WebRtcSession, window: int = WINDOW) -> None:
        self.session = session
        self._channel: RTCDataChannel | None = None
        self._call = session._call
        self.core = StreamCore(window)
        self._chunks: deque[bytes] = deque()  # received payloads, the first one from _offset
        self._offset = 0
        self._readable = trio.lowlevel.ParkingLot()
        self._writable = trio.lowlevel.ParkingLot()
        self._write_lock = trio.Lock()
        self._inbox: deque[Any] = deque()
        self._inbox_scheduled = False
        self._outbox: deque[bytes | memoryview] = deque()
        self._outbox_scheduled = False
        self._send_failed = False  # asyncio side

    # -- asyncio side: every handler only hands over to trio and never raises --

    def attach(self, channel: RTCDataChannel) -> None:
        self._channel = channel
        channel.on("message", self._on_message_asyncio)
        channel.on("close", self._on_close_asyncio)

    def _on_message_asyncio(self, data: Any) -> None:
        self._inbox.append(data)
        if not self._inbox_scheduled:
            self._inbox_scheduled = True
            self._call(self._drain_inbox)

    def _on_close_asyncio(self) -> None:
        self._call(self._on_channel_closed)

    def _flush_asyncio(self) -> None:
        """Send what the trio side queued, stream bytes packed into full DATA frames."""
        self._outbox_scheduled = False
        for frame in pack(_drain(self._outbox)):
            self._send_asyncio(frame)

    def _send_asyncio(self, frame: bytes) -> None:
        if self._send_failed or self._channel is None or self._channel.readyState != "open":
            return
        try:
            self._channel.send(frame)
        except Exception as e:  # noqa: BLE001 - must not escape into the event loop
            self._send_failed = True
            self._call(self._on_broken, f"send failed: {e}")

    def _close_channel_asyncio(self) -> None:
        """Close the channel behind the frames queued before (aiortc resets the SCTP stream once
        they are sent)."""
        self._flush_asyncio()
        if self._channel is not None:
            try:
                self._channel.close()
            except Exception as e:  # noqa: BLE001 - the association may be gone already
                log.debug("webrtc: closing a data channel: %s", e)

    # -- trio side --

    def _send(self, frame: bytes | memoryview) -> None:
        """Queue a control frame (bytes) or stream bytes (a memoryview) for the asyncio side."""
        self._outbox.append(frame)
        if not self._outbox_scheduled:
            self._outbox_scheduled = True
            self.session.bridge.call_soon(self._flush_asyncio)

    def _drain_inbox(self) -> None:
        self._inbox_scheduled = False
        while self._inbox:
            self._on_frame(self._inbox.popleft())

    def _on_frame(self, data: Any) -> None:
        try:
            frame = self.core.receive(data)
        except (DecodeError, ProtocolError) as e:  # the core has reset the stream
            log.warning("webrtc: resetting a stream: %s", e)
            self._after_reset()
            return
        if isinstance(frame, Data):
            if frame.payload:
                self._chunks.append(frame.payload)
                self._readable.unpark_all()
        elif isinstance(frame, Fin):
            self._readable.unpark_all()
            self._close_if_done()
        elif frame is not None:  # CREDIT
            self._writable.unpark_all()

    def _on_channel_closed(self) -> None:
        self.core.channel_closed()
        self._wake()
        self._release()

    def _on_broken(self, why: str) -> None:
        self.core.broke(why)
        self._wake()

    def _reset_now(self, why: str) -> None:
        if self.core.reset(why):
            self._after_reset()

    def _after_reset(self) -> None:
        self._chunks.clear()
        self._offset = 0
        self._wake()
        self._release()
        self.session.bridge.call_soon(self._close_channel_asyncio)

    def _close_if_done(self) -> None:
        if self.core.done:
            self._release()
            self.session.bridge.call_soon(self._close_channel_asyncio)

    def _wake(self) -> None:
        self._readable.unpark_all()
        self._writable.unpark_all()

    def _release(self) -> None:
        self.session.streams.discard(self)

    @property
    def counters(self) -> StreamCounters:
        return self.core.counters

    @property
    def eof(self) -> bool:
        """The peer's FIN arrived."""
        return self.core.eof

    @property
    def buffered(self) -> int:
        """Received bytes not read yet (at most the window)."""
        return self.core.window.buffered

    @property
    def credit(self) -> int:
        """Bytes we may send before the peer credits more."""
        return self.core.window.credit

    @property
    def broken(self) -> str | None:
        return self.core.broken

    async def read(self, n: int | None = None) -> bytes:
        """Up to `n` bytes, from one received frame at a time (no copy of the whole buffer)."""
        while not self._chunks:
            if self.core.eof or self.core.broken:
                return b""
            await self._readable.park()
        chunk = self._chunks[0]
        end = len(chunk) if n is None or n < 0 else min(len(chunk), self._offset + n)
        data = chunk[self._offset : end] if self._offset or end < len(chunk) else chunk
        if end == len(chunk):
            self._chunks.popleft()
            self._offset = 0
        else:
            self._offset = end
        credit = self.core.consume(len(data))
        if credit:
            self._send(encode_credit(credit))
        return data

    async def write(self, data: bytes) -> None:
        view = memoryview(data if isinstance(data, bytes) else bytes(data))  # queued, not copied
        async with self._write_lock:
            pos = 0
            while pos < len(view):
                while self.core.writable and self.core.window.credit <= 0:
                    await self._writable.park()
                if not self.core.writable:
                    why = self.core.broken or "closed for writing"
                    raise ConnectionClosedError(f"webrtc stream: {why}", transport="webrtc")
                size = self.core.take(len(view) - pos)
                self._send(view[pos : pos + size])
                pos += size

    async def close(self) -> None:
        """FIN behind the bytes already queued; reading goes on until the peer's FIN."""
        if not self.core.close():
            return
        self._writable.unpark_all()
        self._send(FIN_FRAME)
        self._close_if_done()

    async def reset(self) -> None:
        self._reset_now("reset locally")

    def get_remote_address(self) -> tuple[str, int] | None:
        return self.session.path.remote
