"""A WebRTC session as a libp2p connection: Noise once on the control channel, a data channel per stream.

Handshake, on the control channel (nat/webrtc.py, channel 0), before any stream:

1. multistream-select and the Noise XX handshake of the node's security upgrader, as on TCP: the
   dialer checks the peer ID it expected, the listener learns who called;
2. inside the Noise session each side sends one message, the fingerprints of its own DTLS
   certificate, UTF-8 lines "<algorithm> <HEX:HEX:...>" (at most MAX_BINDING bytes);
3. each side checks them against the fingerprints aiortc verified the peer's certificate
   against (those of the description that signalling carried); a mismatch ends the connection.

Step 3 is what makes the streams safe without a second encryption: the descriptions travel
through a signalling node, which could put its own certificate in both and sit in the middle of
DTLS; it cannot forge the Noise-authenticated statement of the real certificate. (libp2p's
/webrtc spec binds the same way, with the fingerprints in the Noise prologue; py-libp2p's Noise
transport takes no prologue, so they travel as the first Noise message instead.)

After the handshake the control channel carries nothing, and its end (the peer closing, or the
association failing) ends the connection.
"""

from __future__ import annotations

import logging
from types import TracebackType

import multiaddr
import trio
from libp2p.abc import IMuxedConn, IMuxedStream, ISecureConn
from libp2p.connection_types import ConnectionType
from libp2p.io.exceptions import ConnectionClosedError
from libp2p.network.connection.raw_connection import RawConnection
from libp2p.network.connection.swarm_connection import SwarmConn
from libp2p.network.swarm import Swarm
from libp2p.peer.id import ID
from libp2p.stream_muxer.exceptions import (
    MuxedConnUnavailable,
    MuxedStreamClosed,
    MuxedStreamEOF,
    MuxedStreamReset,
)

from nat.webrtc import DataChannelStream, WebRtcSession
from overlay.core.errors import DialError

log = logging.getLogger(__name__)

MAX_BINDING = 1024
HANDSHAKE_TIMEOUT = 10.0


async def add_webrtc_connection(
    swarm: Swarm,
    session: WebRtcSession,
    control: DataChannelStream,
    peer_id: ID | None,
    addr: multiaddr.Multiaddr,
    relayed: bool,
) -> SwarmConn:
    """Authenticate a connected session and add it to the swarm like any other connection.

    `peer_id` is the peer we dialed (we are the Noise initiator), None when we answered.
    The session is closed if anything fails.
    """
    initiator = peer_id is not None
    try:
        with trio.fail_after(HANDSHAKE_TIMEOUT):
            secured = await swarm.upgrader.upgrade_security(RawConnection(control, initiator), initiator, peer_id)
            await bind_certificates(secured, session)
        muxed = WebRtcConnection(session, control, secured.get_remote_peer(), initiator, addr, relayed)
        conn = await swarm.add_conn(muxed, "outbound" if initiator else "inbound")
    except BaseException:
        with trio.CancelScope(shield=True):
            await session.close()
        raise
    conn.set_transport_info([addr], ConnectionType.RELAYED if relayed else ConnectionType.DIRECT)
    return conn


async def bind_certificates(secured: ISecureConn, session: WebRtcSession) -> None:
    """Steps 2 and 3 of the handshake; DialError when the peer's DTLS certificate is not its own."""
    mine = "\n".join(f"{algorithm} {value}" for algorithm, value in session.local_fingerprints())
    await secured.write(mine.encode())
    message = await secured.read()  # one Noise message (at most 65,535 bytes)
    if len(message) > MAX_BINDING:
        raise DialError(f"webrtc: certificate binding larger than {MAX_BINDING} bytes")
    try:
        stated = dict(line.split(" ", 1) for line in message.decode().splitlines())
    except (UnicodeDecodeError, ValueError):
        raise DialError("webrtc: malformed certificate binding") from None
    verified = {algorithm: value.upper() for algorithm, value in session.remote_fingerprints}
    common = [algorithm for algorithm in stated if algorithm in verified]
    if not common or any(stated[a].upper() != verified[a] for a in common):
        raise DialError("webrtc: the peer's DTLS certificate is not the one it states over Noise")


class WebRtcStream(IMuxedStream):
    """One data channel as a libp2p muxed stream: the library's exceptions on end and reset."""

    def __init__(self, stream: DataChannelStream, conn: WebRtcConnection) -> None:
        self._stream = stream
        self.muxed_conn = conn
        self._deadline: float | None = None

    async def read(self, n: int | None = None) -> bytes:
        with trio.fail_after(self._deadline) if self._deadline else trio.CancelScope():
            data = await self._stream.read(n)
        if data or n == 0:
            return data
        if self._stream.eof:
            raise MuxedStreamEOF("stream closed by the peer")
        raise MuxedStreamReset(f"stream reset: {self._stream.broken}")

    async def write(self, data: bytes) -> None:
        try:
            with trio.fail_after(self._deadline) if self._deadline else trio.CancelScope():
                await self._stream.write(data)
        except ConnectionClosedError as e:
            if self._stream.broken:
                raise MuxedStreamReset(str(e)) from None
            raise MuxedStreamClosed(str(e)) from None

    async def close(self) -> None:
        await self._stream.close()

    async def reset(self) -> None:
        await self._stream.reset()

    def set_deadline(self, ttl: int) -> None:
        """Each later read or write fails with trio.TooSlowError after `ttl` seconds."""
        if ttl < 0:
            raise ValueError("ttl must not be negative")
        self._deadline = ttl or None

    def get_remote_address(self) -> tuple[str, int] | None:
        return self._stream.get_remote_address()

    async def __aenter__(self) -> WebRtcStream:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc_val: BaseException | None, exc_tb: TracebackType | None
    ) -> None:
        await self.close()


class WebRtcConnection(IMuxedConn):
    """The muxed connection the swarm sees; streams are the session's data channels."""

    def __init__(
        self,
        session: WebRtcSession,
        control: DataChannelStream,
        peer_id: ID,
        initiator: bool,
        addr: multiaddr.Multiaddr,
        relayed: bool,
    ) -> None:
        self.session = session
        self._control = control
        self.peer_id = peer_id
        self._initiator = initiator
        self._addr = addr
        self._relayed = relayed
        self._closed = False
        self.event_started = trio.Event()
        self.event_closed = trio.Event()
        self.on_close = None  # set by the swarm's connection wrapper

    @property
    def is_initiator(self) -> bool:
        return self._initiator

    @property
    def is_established(self) -> bool:
        return self.event_started.is_set() and not self._closed

    @property
    def is_closed(self) -> bool:
        return self._closed

    async def start(self) -> None:
        """Runs for the connection's life: it ends when the control channel does."""
        self.event_started.set()
        while await self._control.read():
            pass  # nothing is sent here after the handshake; anything is read and dropped
        await self.close()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with trio.CancelScope(shield=True):
            await self._control.reset()
            await self.session.close()
            self.event_closed.set()
            if self.on_close is not None:
                await self.on_close()

    async def open_stream(self) -> IMuxedStream:
        try:
            return WebRtcStream(await self.session.open_stream(), self)
        except ConnectionClosedError as e:
            raise MuxedConnUnavailable(str(e)) from None

    async def accept_stream(self) -> IMuxedStream:
        try:
            return WebRtcStream(await self.session.accept_stream(), self)
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise MuxedConnUnavailable("webrtc connection closed") from None

    def get_transport_addresses(self) -> list[multiaddr.Multiaddr]:
        return [self._addr]

    def get_connection_type(self) -> ConnectionType:
        return ConnectionType.RELAYED if self._relayed else ConnectionType.DIRECT

    def get_remote_address(self) -> tuple[str, int] | None:
        return self.session.path.remote
