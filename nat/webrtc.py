"""WebRTC connections: one aiortc data channel carrying a byte stream that Noise and Yamux run over.

Why aiortc's ORTC objects (gatherer, ICE, DTLS, SCTP transports) instead of RTCPeerConnection:
we exchange a compact description instead of SDP (see `Description`), and we need our own ICE
gatherer to choose interfaces, which RTCPeerConnection builds internally.

Byte stream over the data channel (`DataChannelStream`), one channel per connection
(negotiated, id 0, ordered, reliable). Each data-channel message is one frame:

    0x00 payload...        DATA: stream bytes (at most CHUNK bytes of payload)
    0x01 u32 (big endian)  CREDIT: the receiver has consumed that many more bytes
    0x02                   FIN: the sender will send no more DATA

A sender may have at most WINDOW bytes of DATA payload that the receiver has not credited yet.
aiortc returns SCTP receive window as soon as a message is handed over, read or not, so without
this window a paused reader's buffer grows without bound; with it, a paused reader holds at most
WINDOW bytes and loses none. A peer exceeding its credit, or sending a frame we do not know, is
a protocol violation: the connection is closed.

The noise-secured, yamux-multiplexed libp2p connection on top authenticates the remote peer ID
end to end, so neither the signalling node that carried the descriptions nor anyone on the path
can stand in for the peer.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import re
import struct
from collections import deque
from collections.abc import Sequence
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
from overlay.errors import DecodeError, DialError

log = logging.getLogger(__name__)

DATA, CREDIT, FIN = 0, 1, 2
WINDOW = 1 << 20
CHUNK = 16 * 1024
SCTP_PORT = 5000
CLOSE_GRACE = 2.0

MAX_DESCRIPTION = 8 * 1024
MAX_CANDIDATES = 16
MAX_FINGERPRINTS = 4
_ICE_CHARS = re.compile(r"^[A-Za-z0-9+/]+$")
_FINGERPRINT = re.compile(r"^([0-9A-Fa-f]{2}:){15,63}[0-9A-Fa-f]{2}$")
_HASHES = ("sha-256", "sha-384", "sha-512")
_CANDIDATE_TYPES = ("host", "srflx", "prflx", "relay")


@dataclass(frozen=True)
class WebRtcConfig:
    """Where ICE may look: explicit servers only (aiortc's default is a public one), chosen interfaces."""

    ice_servers: tuple[RTCIceServer, ...] = ()
    interfaces: tuple[str, ...] = ()  # interface names or IPs; empty: every non-loopback address
    timeout: float = 10.0  # ICE + DTLS + SCTP, well below aioice's 63 s check-list failure
    allow_loopback_candidates: bool = False


# ---- the description exchanged through signalling ----------------------------------------------


@dataclass(frozen=True)
class Description:
    """What one side tells the other to connect: ICE credentials, DTLS fingerprints, candidates.

    Wire form (JSON object, at most MAX_DESCRIPTION bytes once encoded):
    {"ufrag": str, "pwd": str, "fingerprints": ["sha-256 AB:CD:...", ...],
     "candidates": ["candidate:<foundation> 1 udp <prio> <ip> <port> typ <type> ...", ...]}
    Candidates use the candidate-attribute syntax of RFC 8839, UDP and IP literals only.
    """

    ufrag: str
    pwd: str
    fingerprints: tuple[tuple[str, str], ...]
    candidates: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "ufrag": self.ufrag,
            "pwd": self.pwd,
            "fingerprints": [f"{a} {v}" for a, v in self.fingerprints],
            "candidates": list(self.candidates),
        }


def parse_description(obj: Any, allow_loopback: bool = False) -> Description:
    """Validate a remote description; DecodeError names what is wrong.

    Candidates that a remote could use to aim our connectivity checks elsewhere are refused:
    hostnames (aioice would resolve them, mDNS included), TCP, unspecified, multicast and
    broadcast addresses, and loopback unless allowed.
    """
    if not isinstance(obj, dict):
        raise DecodeError("description: expected a JSON object")
    if len(json.dumps(obj)) > MAX_DESCRIPTION:
        raise DecodeError(f"description: larger than {MAX_DESCRIPTION} bytes")
    ufrag, pwd = obj.get("ufrag"), obj.get("pwd")
    if not isinstance(ufrag, str) or not 4 <= len(ufrag) <= 256 or not _ICE_CHARS.match(ufrag):
        raise DecodeError("description: ufrag must be 4-256 ICE characters")
    if not isinstance(pwd, str) or not 22 <= len(pwd) <= 256 or not _ICE_CHARS.match(pwd):
        raise DecodeError("description: pwd must be 22-256 ICE characters")
    fingerprints = obj.get("fingerprints")
    if not isinstance(fingerprints, list) or not 1 <= len(fingerprints) <= MAX_FINGERPRINTS:
        raise DecodeError(f"description: 1 to {MAX_FINGERPRINTS} fingerprints expected")
    parsed_fps = []
    for fp in fingerprints:
        algorithm, _, value = fp.partition(" ") if isinstance(fp, str) else ("", "", "")
        if algorithm not in _HASHES or not _FINGERPRINT.match(value):
            raise DecodeError(f"description: bad fingerprint {str(fp)[:80]!r}")
        parsed_fps.append((algorithm, value.upper()))
    candidates = obj.get("candidates")
    if not isinstance(candidates, list) or len(candidates) > MAX_CANDIDATES:
        raise DecodeError(f"description: at most {MAX_CANDIDATES} candidates expected")
    for text in candidates:
        check_candidate(text, allow_loopback)
    return Description(ufrag, pwd, tuple(parsed_fps), tuple(candidates))


def check_candidate(text: Any, allow_loopback: bool = False) -> None:
    if not isinstance(text, str) or len(text) > 256:
        raise DecodeError("candidate: expected a string of at most 256 characters")
    try:
        candidate = candidate_from_sdp(text.removeprefix("candidate:"))
    except Exception:  # noqa: BLE001 - the SDP parser raises several types
        raise DecodeError(f"candidate: cannot parse {text[:80]!r}") from None
    if candidate.protocol.lower() != "udp":
        raise DecodeError(f"candidate: only UDP is used, got {candidate.protocol!r}")
    if candidate.type not in _CANDIDATE_TYPES:
        raise DecodeError(f"candidate: unknown type {candidate.type!r}")
    try:
        ip = ipaddress.ip_address(candidate.ip)
    except ValueError:
        raise DecodeError(f"candidate: {candidate.ip!r} is not an IP address") from None
    if ip.is_unspecified or ip.is_multicast or (ip.version == 4 and ip == ipaddress.IPv4Address("255.255.255.255")):
        raise DecodeError(f"candidate: unusable address {ip}")
    if ip.is_loopback and not allow_loopback:
        raise DecodeError(f"candidate: loopback address {ip}")
    if not 1 <= candidate.port <= 65535:
        raise DecodeError(f"candidate: bad port {candidate.port}")


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
    """One ICE/DTLS/SCTP association with one data channel.

    `gather()` then `connect(remote)`; `close()` at any point frees the sockets. The controlling
    side (the one that sends the offer) is also the Noise initiator.
    """

    def __init__(self, config: WebRtcConfig, controlling: bool, bridge: AsyncioBridge | None = None) -> None:
        self.config = config
        self.controlling = controlling
        self.bridge = bridge or get_bridge()
        self._ice: RTCIceTransport | None = None
        self._dtls: RTCDtlsTransport | None = None
        self._sctp: RTCSctpTransport | None = None
        self._closed = False
        self.stopped = False  # every transport stopped (set on the asyncio thread)
        self.path = PathInfo()

    async def gather(self) -> Description:
        return await self.bridge.run(self._gather)

    async def connect(self, remote: Description) -> DataChannelStream:
        """Run ICE, DTLS and SCTP to an open data channel within the configured timeout."""
        stream = DataChannelStream(self, TrioCall())
        try:
            with trio.fail_after(self.config.timeout):
                await self.bridge.run(self._connect, remote, stream)
        except trio.TooSlowError:
            await self.close()
            raise DialError(f"webrtc: no connection within {self.config.timeout:.0f}s") from None
        except (ConnectionError, OSError) as e:
            await self.close()
            raise DialError(f"webrtc: {e}") from None
        return stream

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            with trio.move_on_after(5):
                await self.bridge.run(self._stop)

    # -- asyncio side --

    async def _gather(self) -> Description:
        addresses = host_addresses(self.config.interfaces)
        gatherer = _Gatherer(self.config.ice_servers, self.controlling, addresses)
        self._ice = RTCIceTransport(gatherer)
        self._dtls = RTCDtlsTransport(self._ice, [RTCCertificate.generateCertificate()])
        self._sctp = RTCSctpTransport(self._dtls, SCTP_PORT)
        await gatherer.gather()
        params = gatherer.getLocalParameters()
        fingerprints = tuple((f.algorithm, f.value) for f in self._dtls.getLocalParameters().fingerprints)
        candidates = tuple("candidate:" + candidate_to_sdp(c) for c in gatherer.getLocalCandidates())
        return Description(params.usernameFragment, params.password, fingerprints, candidates)

    async def _connect(self, remote: Description, stream: DataChannelStream) -> None:
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
        # The channel and its handlers exist before SCTP starts: the peer's first message can
        # arrive as soon as the association is up, and aiortc drops data for unknown channels.
        channel = RTCDataChannel(self._sctp, RTCDataChannelParameters(label="overlay", negotiated=True, id=0))
        stream.attach(channel)
        opened = asyncio.Event()
        channel.on("open", opened.set)
        await self._sctp.start(RTCSctpCapabilities(maxMessageSize=65536), SCTP_PORT)
        if channel.readyState != "open":
            await opened.wait()

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


@dataclass
class _Counters:
    bytes_in: int = 0
    bytes_out: int = 0
    violations: int = 0


class DataChannelStream(ReadWriteCloser):
    """The trio side of the byte stream; the data channel itself is only touched on the asyncio loop.

    Incoming frames are handed over one by one in order (trio's run_sync_soon queue is FIFO);
    outgoing frames are scheduled in order with call_soon_threadsafe.
    """

    def __init__(self, session: WebRtcSession, call: TrioCall, window: int = WINDOW) -> None:
        self.session = session
        self._channel: RTCDataChannel | None = None
        self._call = call
        self._window = window
        self._chunks: deque[bytes] = deque()  # received payloads, the first one from _offset
        self._offset = 0
        self._buffered = 0
        self._credit = window
        self._consumed = 0
        self._eof = False
        self._closed = False  # by us
        self._broken: str | None = None  # by the remote or the transport
        self._readable = trio.lowlevel.ParkingLot()
        self._writable = trio.lowlevel.ParkingLot()
        self._write_lock = trio.Lock()
        self._remote_fin = asyncio.Event()
        self.counters = _Counters()
        # Frames cross threads in batches: one wake-up per burst, not per frame.
        self._inbox: deque[Any] = deque()
        self._inbox_scheduled = False
        self._outbox: deque[bytes] = deque()
        self._outbox_scheduled = False

    # -- asyncio side: every handler only hands over to trio and never raises --

    def attach(self, channel: RTCDataChannel) -> None:
        self._channel = channel
        channel.on("message", self._on_message_asyncio)
        channel.on("close", self._on_close_asyncio)

    def _on_message_asyncio(self, data: Any) -> None:
        if isinstance(data, bytes) and data[:1] == bytes([FIN]):
            self._remote_fin.set()
        self._inbox.append(data)
        if not self._inbox_scheduled:
            self._inbox_scheduled = True
            self._call(self._drain_inbox)

    def _on_close_asyncio(self) -> None:
        self._remote_fin.set()
        self._call(self._on_broken, "data channel closed")

    def _flush_asyncio(self) -> None:
        self._outbox_scheduled = False
        try:
            while self._outbox:
                frame = self._outbox.popleft()
                if self._channel is not None and self._channel.readyState == "open":
                    self._channel.send(frame)
        except Exception as e:  # noqa: BLE001 - must not escape into the event loop
            self._call(self._on_broken, f"send failed: {e}")

    async def _shutdown_asyncio(self) -> None:
        try:
            await asyncio.wait_for(self._remote_fin.wait(), CLOSE_GRACE)
        except asyncio.TimeoutError:
            pass
        try:
            if self._channel is not None:
                self._channel.close()
        except Exception:  # noqa: BLE001
            pass
        await self.session._stop()

    # -- trio side --

    def _send(self, frame: bytes) -> None:
        self._outbox.append(frame)
        if not self._outbox_scheduled:
            self._outbox_scheduled = True
            self.session.bridge.call_soon(self._flush_asyncio)

    def _drain_inbox(self) -> None:
        self._inbox_scheduled = False
        while self._inbox:
            self._on_frame(self._inbox.popleft())

    def _on_frame(self, data: Any) -> None:
        if self._closed:
            return
        if not isinstance(data, bytes) or not data:
            self._violation("text or empty frame")
        elif data[0] == DATA:
            payload = data[1:]
            if self._buffered + len(payload) > self._window:
                self._violation("peer sent beyond its credit")
                return
            if payload:
                self._chunks.append(payload)
                self._buffered += len(payload)
            self.counters.bytes_in += len(payload)
            self._readable.unpark_all()
        elif data[0] == CREDIT and len(data) == 5:
            self._credit += struct.unpack(">I", data[1:])[0]
            self._writable.unpark_all()
        elif data[0] == FIN and len(data) == 1:
            self._eof = True
            self._readable.unpark_all()
        else:
            self._violation(f"unknown frame type {data[0]}")

    def _violation(self, why: str) -> None:
        self.counters.violations += 1
        log.warning("webrtc: closing the connection: %s", why)
        self._on_broken(why)
        trio.lowlevel.spawn_system_task(self.close)

    def _on_broken(self, why: str) -> None:
        if self._broken is None:
            self._broken = why
        self._readable.unpark_all()
        self._writable.unpark_all()

    @property
    def buffered(self) -> int:
        """Received bytes not read yet (at most the window)."""
        return self._buffered

    async def read(self, n: int | None = None) -> bytes:
        """Up to `n` bytes, from one received frame at a time (no copy of the whole buffer)."""
        while not self._chunks:
            if self._eof or self._closed or self._broken:
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
        size = len(data)
        self._buffered -= size
        self._consumed += size
        if self._consumed >= self._window // 4:
            self._send(bytes([CREDIT]) + struct.pack(">I", self._consumed))
            self._consumed = 0
        return data

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        async with self._write_lock:
            pos = 0
            while pos < len(view):
                while self._credit <= 0 and not (self._closed or self._broken):
                    await self._writable.park()
                if self._closed or self._broken:
                    raise ConnectionClosedError(f"webrtc connection closed: {self._broken or 'locally'}", transport="webrtc")
                size = min(len(view) - pos, self._credit, CHUNK)
                self._credit -= size
                self._send(bytes([DATA]) + view[pos : pos + size])
                self.counters.bytes_out += size
                pos += size

    async def close(self) -> None:
        """Send FIN behind the data already queued, then tear the association down once the peer
        has answered with its FIN (or after CLOSE_GRACE), so the last bytes arrive first."""
        if self._closed:
            return
        self._closed = True
        self._readable.unpark_all()
        self._writable.unpark_all()
        self._send(bytes([FIN]))
        self.session.bridge.call_soon(asyncio.ensure_future, self._shutdown_asyncio())
        self.session._closed = True

    def get_remote_address(self) -> tuple[str, int] | None:
        return self.session.path.remote
