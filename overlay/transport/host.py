"""The hardened py-libp2p host: Noise only, Yamux, TCP and WebSocket, few connections per peer.

We assemble the host ourselves instead of calling `libp2p.new_host()` because its defaults are
unsafe or wrong for a node that runs for weeks (py-libp2p 0.8.1; how each was found and measured:
docs/py-libp2p.md):

- its listener also offers plaintext and secio (a plaintext dialer can impersonate any peer):
  we offer Noise alone;
- with 3 connections per peer every `dial_peer` waits a 250 ms "happy eyeballs" delay; we dial
  addresses ourselves and allow 2 per peer: a relayed connection and the direct one that
  replaces it (the swarm would otherwise close the relayed one with its streams; we retire it
  once idle, see nat/traversal.py);
- its auto-connector dials peerstore entries towards the mid-point of its watermarks: we
  replace it with one that never dials (the DHT decides whom to talk to);
- its swarm keeps each inbound connection's handler task, and its slot in the inbound
  limiter, until the whole swarm stops, so a node accepts only a fixed number of inbound
  connections in its lifetime: `_Swarm` ends the handler when its connection closes;
- dials retry three times with backoff inside the swarm: our dialer has its own strategy;
- a connection whose upgrade completes while the swarm shuts down is logged with a traceback:
  `_Swarm.add_conn` refuses it quietly instead;
- an exception escaping a stream handler stops the whole connection from accepting streams
  (measured: after one echo handler raised on a reset stream, every new stream to that peer
  timed out): `_Host` runs every handler inside a guard that logs, counts and resets instead;
- its Yamux sends a window update after every read: a node relaying a steady flow of small
  messages wrote one extra Yamux frame, Noise message and syscall per read. Turning
  `PY_YAMUX_RELEASE_ON_READ` off (the library's knob) is not enough: a read that leaves the
  window short at all takes the "partial slack" branch first and still sends one (measured: a
  node receiving 1,000 channel messages a second sent about one update per read). Our Yamux
  streams (`_HalfWindowStream`) give credit back once half the window is consumed, as go-yamux does.
- it has no limit per remote IP, and its handshake deadline (10 s) and stream negotiation
  deadline (10 s) let one IP hold every inbound slot with connections that send nothing
  (measured: 300 silent connections took all 256 slots and legitimate dials failed for ~10 s):
  `_Swarm` and `_Host` ask our resource manager (overlay/core/resources.py) before taking a
  connection, once Noise has named its peer, and for every inbound stream and its protocol;
- its WebSocket listener holds a TCP connection that never completes the HTTP upgrade for
  trio-websocket's 60 s, with no limit on how many, and its connections report no remote
  address (`get_remote_address` is a placeholder): `_WebSocketListener` passes each TCP
  connection to the resource manager as it is accepted, allows the upgrade the handshake
  deadline, and `_WebSocketConnection` reports the address, so per-IP limits (and the DHT's
  per-network quotas) hold on both transports;
- its TCP and WebSocket listeners run trio's `serve_listeners`, which retries accept() on EMFILE
  but logs a traceback every 100 ms: those records become one count and one line per episode
  (overlay/core/fdlimits.py).
"""

from __future__ import annotations

import contextvars
import ipaddress
import logging
import socket
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import multiaddr
import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from libp2p.abc import IMuxedConn, INetStream, IRawConnection
from libp2p.connection_types import ConnectionType
from libp2p.custom_types import StreamHandlerFn, TProtocol
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.host.basic_host import BasicHost
from libp2p.network.auto_connector import AutoConnector
from libp2p.network.connection.swarm_connection import SwarmConn
from libp2p.network.config import ConnectionConfig, RetryConfig
from libp2p.network.exceptions import SwarmException
from libp2p.transport.exceptions import OpenConnectionError
from libp2p.network.swarm import Swarm
from libp2p.peer.id import ID
from libp2p.peer.peerstore import PeerStore
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.muxer_multistream import MuxerMultistream
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux, YamuxStream
from libp2p.transport.tcp.tcp import TCP
from libp2p.transport.upgrader import TransportUpgrader
from libp2p.transport.websocket.connection import P2PWebSocketConnection
from libp2p.transport.websocket.listener import WebsocketListener
from libp2p.transport.websocket.transport import WebsocketTransport
from trio_websocket import WebSocketServer

from overlay.core.fdlimits import quiet_trio_accept_errors
from overlay.core.identity import raw_seed
from overlay.core.resources import LimitExceeded, ResourceLimits, ResourceManager, Ticket

log = logging.getLogger(__name__)

DIAL_TIMEOUT = 10.0


class _HalfWindowStream(YamuxStream):
    """A Yamux stream that sends a window update only once the window is short by at least
    the library's grow threshold (half of it), like go-yamux; smaller reads send none."""

    async def _auto_tune_and_send_window_update(self, *, bytes_read: int = 0) -> None:
        buffered = len(self.conn.stream_buffers.get(self.stream_id, b""))
        if self.target_recv_window - (self.recv_window + buffered) >= self._grow_threshold():
            await super()._auto_tune_and_send_window_update(bytes_read=bytes_read)


class _Streams(dict):
    """Yamux's stream table: a stream it makes becomes a _HalfWindowStream as it is added
    (the library builds YamuxStream by name in two long methods we would otherwise copy)."""

    def __setitem__(self, key: int, stream: YamuxStream) -> None:
        if type(stream) is YamuxStream:
            stream.__class__ = _HalfWindowStream
        super().__setitem__(key, stream)


class _Muxers(MuxerMultistream):
    """The upgrader's muxer negotiation, whose Yamux connections get a _Streams table (the
    library builds Yamux by name here too, whatever class it was given)."""

    async def new_conn(self, conn: Any, peer_id: ID) -> IMuxedConn:
        muxed = await super().new_conn(conn, peer_id)
        if isinstance(muxed, Yamux):
            muxed.streams = _Streams(muxed.streams)
        return muxed


class _ConnectionEnded(Exception):
    """Raised inside the swarm's inbound handler once its connection has closed."""


# The inbound connection the current task is accepting: set where the connection is taken (the
# WebSocket server, or _Swarm._handle_inbound_connection for TCP), read by _Swarm.add_conn, which
# the library calls from inside that handler once Noise is done. Tasks started from there (a
# connection's streams) inherit it; `established` ignores a ticket no longer pending.
_TICKET: contextvars.ContextVar[Ticket | None] = contextvars.ContextVar("inbound_ticket", default=None)


def remote_ip(conn: Any) -> str:
    """The remote IP of a raw inbound connection as its socket sees it ("" if it has none); an
    IPv4 peer reaching an IPv6 socket (::ffff:a.b.c.d) as its IPv4 address, so that per-IP limits
    count it once whichever socket took it."""
    try:
        ip = str(conn.get_remote_address()[0])
    except Exception:  # noqa: BLE001 - a relayed or closing connection has no address
        return ""
    if ip.startswith("::ffff:"):
        try:
            mapped = ipaddress.IPv6Address(ip).ipv4_mapped
        except ValueError:
            return ip
        return str(mapped) if mapped is not None else ip
    return ip


def listenable(addrs: Sequence[multiaddr.Multiaddr]) -> tuple[list[multiaddr.Multiaddr], list[tuple[multiaddr.Multiaddr, str]]]:
    """(the listen addresses to use, [(left out, why)]): an IPv6 address this machine cannot bind
    (IPv6 off, or not its address) is left out, so that the default, which listens on both
    families, starts on a machine without IPv6. Only IPv6 is probed; any other failure to listen
    stays the host's error."""
    kept, dropped = [], []
    for addr in addrs:
        parts = str(addr).split("/")
        if len(parts) > 2 and parts[1] == "ip6":
            try:
                with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
                    probe.bind((parts[2], 0))
            except OSError as e:
                dropped.append((addr, e.strerror or str(e)))
                continue
        kept.append(addr)
    return kept, dropped


class _WebSocketConnection(P2PWebSocketConnection):
    """A libp2p WebSocket connection that reports its remote address."""

    def get_remote_address(self) -> tuple[str, int] | None:
        try:
            remote = self._ws_connection.remote
            return str(remote.address), int(remote.port)
        except (AttributeError, TypeError, ValueError):  # closed, or not over TCP
            return None


class _AdmittingServer(WebSocketServer):
    """trio-websocket's server, taking a TCP connection only if the resource manager does, and
    holding it while the HTTP upgrade runs for at most the handshake deadline."""

    def __init__(self, *args: Any, resources: ResourceManager, **kwargs: Any) -> None:
        super().__init__(*args, connect_timeout=resources.limits.handshake_timeout, **kwargs)
        self.resources = resources

    async def _handle_connection(self, stream: trio.SocketStream) -> None:  # type: ignore[override]
        try:
            ip = str(stream.socket.getpeername()[0])
            ticket = self.resources.accept(ip, trio.current_time())
        except (OSError, LimitExceeded) as e:
            log.debug("inbound WebSocket connection refused: %s", e)
            await _close_quietly(stream)
            return
        token = _TICKET.set(ticket)
        try:
            await super()._handle_connection(stream)
        finally:
            _TICKET.reset(token)
            self.resources.closed(ticket)


class _WebSocketListener(WebsocketListener):
    """The library's WebSocket listener (connection handling, close) on an `_AdmittingServer`,
    run in the swarm's background nursery. Plain ws only: the node offers no wss."""

    resources: ResourceManager

    async def listen(self, maddr: multiaddr.Multiaddr) -> None:
        if any(p.name == "wss" for p in maddr.protocols()):
            raise OpenConnectionError(f"{maddr}: wss is not offered (Noise secures the connection)")
        family = "ip6" if "ip6" in [p.name for p in maddr.protocols()] else "ip4"
        host, port = maddr.value_for_protocol(family), int(maddr.value_for_protocol("tcp"))
        listeners = await trio.open_tcp_listeners(port, host=host)
        server = _AdmittingServer(self._handle_websocket_connection, listeners, resources=self.resources)
        self._scope = trio.CancelScope()

        async def serve(task_status: trio.TaskStatus[None]) -> None:
            with self._scope:
                await server.run(task_status=task_status)

        await self.background_nursery.start(serve)  # type: ignore[attr-defined]
        bound = listeners[0].socket.getsockname()
        self._listen_maddr = multiaddr.Multiaddr(f"/{family}/{bound[0]}/tcp/{bound[1]}/ws")

    async def close(self) -> None:
        await super().close()
        scope = getattr(self, "_scope", None)
        if scope is not None:
            scope.cancel()


class _WebsocketTransport(WebsocketTransport):
    """WebsocketTransport whose listeners are `_WebSocketListener`s (the library builds its own
    by name, with a config we keep)."""

    def __init__(self, upgrader: TransportUpgrader, resources: ResourceManager) -> None:
        super().__init__(upgrader)
        self.resources = resources

    def create_listener(self, handler: Any) -> WebsocketListener:  # type: ignore[override]
        listener = super().create_listener(handler)
        listener.__class__ = _WebSocketListener
        listener.resources = self.resources  # type: ignore[attr-defined]
        return listener


async def _close_quietly(conn: Any) -> None:
    with trio.move_on_after(1):
        try:
            await conn.close()
        except Exception:  # noqa: BLE001 - it is being thrown away
            pass


class _NoAutoConnect(AutoConnector):
    """The DHT decides which peers to talk to; the swarm must not dial peerstore entries itself."""

    async def maybe_connect(self) -> None:
        return None


class _Swarm(Swarm):
    """Swarm whose inbound handler returns when its connection closes, without auto-connector,
    and whose inbound connections pass the resource manager."""

    def __init__(self, *args: Any, resources: ResourceManager, is_known: Callable[[ID], bool], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.auto_connector = _NoAutoConnect(swarm=self, auto_connect_interval=self.connection_config.auto_connect_interval)
        self.resources = resources
        self.is_known = is_known

    async def _handle_inbound_connection(self, read_write_closer: Any, maddr: multiaddr.Multiaddr) -> None:
        if type(read_write_closer) is P2PWebSocketConnection:  # taken by _AdmittingServer already
            read_write_closer.__class__ = _WebSocketConnection
            return await super()._handle_inbound_connection(read_write_closer, maddr)
        try:
            ticket = self.resources.accept(remote_ip(read_write_closer), trio.current_time())
        except LimitExceeded as e:
            log.debug("inbound connection refused: %s", e)
            await _close_quietly(read_write_closer)
            return
        token = _TICKET.set(ticket)
        try:
            await super()._handle_inbound_connection(read_write_closer, maddr)
        finally:
            _TICKET.reset(token)
            self.resources.closed(ticket)

    async def upgrade_inbound_raw_conn(self, raw_conn: IRawConnection, maddr: multiaddr.Multiaddr) -> IMuxedConn:
        muxed = await super().upgrade_inbound_raw_conn(raw_conn, maddr)
        closed = getattr(muxed, "event_closed", None)
        if closed is None:
            return muxed  # a muxer we do not know: keep the library's behaviour
        await closed.wait()
        # The base handler catches this, closes the raw connection and returns, which frees
        # the inbound slot and the task; returning normally would park it until shutdown.
        raise _ConnectionEnded()

    async def add_conn(self, muxed_conn: IMuxedConn, direction: str = "unknown") -> SwarmConn:
        """Refuse, quietly, a connection that completes its upgrade while the swarm shuts down
        (the base class would log a warning with a traceback for every such race), and drop one
        that closed while being added."""
        if getattr(self, "manager", None) is not None and not self.manager.is_running:
            with trio.CancelScope(shield=True):
                await _close_quietly(muxed_conn)
            raise SwarmException("the swarm is shutting down")
        ticket = _TICKET.get() if direction == "inbound" else None
        if ticket is not None:
            try:
                self.resources.established(ticket, self.is_known(muxed_conn.peer_id))
            except LimitExceeded as e:
                await _close_quietly(muxed_conn)
                raise SwarmException(f"inbound connection from {muxed_conn.peer_id} refused: {e}") from None
        conn = await super().add_conn(muxed_conn, direction)
        if muxed_conn.is_closed:
            # Closed while the base class was registering it: its close hook ran (and removed
            # nothing) before the registration, so it would stay listed, dead, for good.
            self.remove_conn(conn)
            raise SwarmException("the connection closed while it was being added")
        return conn

    async def add_raw_connection(
        self, raw: IRawConnection, peer_id: ID | None, addr: multiaddr.Multiaddr, relayed: bool
    ) -> SwarmConn:
        """Secure (Noise) and multiplex (Yamux) a connection the swarm's transports did not make
        (a relayed stream), and add it like any other.

        `peer_id` is the peer we expect when we initiate (the Noise initiator authenticates it);
        None when we respond, and the connection belongs to whoever Noise says the remote is.
        """
        if raw.is_initiator:
            assert peer_id is not None, "an outbound connection needs the expected peer ID"
            conn = await self.upgrade_outbound_raw_conn(raw, peer_id)
        else:
            muxed = await super().upgrade_inbound_raw_conn(raw, addr)
            conn = next(c for c in self.get_connections(muxed.peer_id) if c.muxed_conn is muxed)
        conn.set_transport_info([addr], ConnectionType.RELAYED if relayed else ConnectionType.DIRECT)
        return conn


class _Host(BasicHost):
    """BasicHost whose stream handlers cannot take their connection down with them, and whose
    inbound streams pass the resource manager: per connection before the protocol is
    negotiated, per peer and protocol after."""

    handler_failures = 0

    def __init__(self, network: _Swarm) -> None:
        super().__init__(network=network)
        self.resources = network.resources
        for protocol_id, handler in list(self.multiselect.handlers.items()):  # identify, ping
            if handler is not None:
                self.set_stream_handler(protocol_id, handler)

    def counted_ip(self, stream: INetStream) -> str:
        """The remote IP of the stream's connection as per-IP limits count it: "" when it has
        none (relayed) or is exempt (loopback, by default), so such streams count per peer only."""
        try:
            address = stream.get_remote_address()
        except Exception:  # noqa: BLE001 - a closing stream may raise
            address = None
        ip = str(address[0]) if address else ""
        return "" if not ip or self.resources.is_exempt(ip) else ip

    async def _swarm_stream_handler(self, net_stream: INetStream) -> None:
        conn = net_stream.muxed_conn
        try:
            self.resources.open_stream(conn)
        except LimitExceeded as e:
            log.debug("inbound stream from %s refused: %s", conn.peer_id, e)
            await _reset_quietly(net_stream)
            return
        try:
            await super()._swarm_stream_handler(net_stream)
        finally:
            self.resources.close_stream(conn)

    def set_stream_handler(self, protocol_id: TProtocol, stream_handler: StreamHandlerFn,
                           max_per_peer: int | None = None) -> None:
        """`max_per_peer`: the protocol's inbound streams open at once from one peer (else the
        resource limits' `streams_per_protocol`)."""

        async def guarded(stream: INetStream) -> None:
            peer = stream.muxed_conn.peer_id
            try:
                self.resources.open_protocol(peer, protocol_id, max_per_peer)
            except LimitExceeded as e:
                log.debug("stream from %s refused: %s", peer, e)
                await _reset_quietly(stream)
                return
            try:
                await stream_handler(stream)
            except Exception as e:  # noqa: BLE001 - whatever a handler raises, the connection stays
                self.handler_failures += 1
                log.debug("handler for %s failed: %s: %s", protocol_id, type(e).__name__, e)
                await _reset_quietly(stream)
            finally:
                self.resources.close_protocol(peer, protocol_id)

        super().set_stream_handler(protocol_id, guarded)


async def _reset_quietly(stream: INetStream) -> None:
    with trio.move_on_after(1):
        try:
            await stream.reset()
        except Exception:  # noqa: BLE001 - the stream may already be gone
            pass


def is_websocket(addr: multiaddr.Multiaddr) -> bool:
    return any(p.name in ("ws", "wss") for p in addr.protocols())


class StreamHost(Protocol):
    """What a protocol service uses of the host: its stream handler, and streams to a peer."""

    def set_stream_handler(self, protocol_id: TProtocol, handler: StreamHandlerFn, max_per_peer: int | None = None) -> None: ...

    async def new_stream(self, peer_id: ID, protocol_ids: Sequence[TProtocol]) -> INetStream: ...

    def counted_ip(self, stream: INetStream) -> str: ...


def build_host(
    key: Ed25519PrivateKey,
    listen: Sequence[multiaddr.Multiaddr],
    limits: ResourceLimits | None = None,
    is_known: Callable[[ID], bool] = lambda peer: False,
) -> _Host:
    """`is_known(peer)`: whether an inbound connection from `peer` may use the connections kept
    for known peers (the DHT's routing table, say)."""
    quiet_trio_accept_errors()
    limits = limits or ResourceLimits()
    max_connections = limits.connections
    key_pair = create_new_key_pair(raw_seed(key))
    peer_id = ID.from_pubkey(key_pair.public_key)
    upgrader = TransportUpgrader(
        secure_transports_by_protocol={
            NOISE_PROTOCOL_ID: NoiseTransport(key_pair, noise_privkey=create_x25519_key_pair().private_key)
        },
        muxer_transports_by_protocol={YAMUX_PROTOCOL_ID: Yamux},
    )
    upgrader.muxer_multistream = _Muxers({YAMUX_PROTOCOL_ID: Yamux})
    resources = ResourceManager(limits)
    transports: list = [TCP()]
    if any(is_websocket(a) for a in listen):
        transports.append(_WebsocketTransport(upgrader, resources))
    peerstore = PeerStore()
    peerstore.add_key_pair(peer_id, key_pair)
    connection_config = ConnectionConfig(
        max_connections=max_connections,
        max_connections_per_peer=2,
        min_connections=0,
        low_watermark=0,
        high_watermark=max_connections,
        dial_timeout=DIAL_TIMEOUT,
        inbound_upgrade_timeout=limits.handshake_timeout,
        inbound_stream_protocol_negotiation_timeout=limits.handshake_timeout,
    )
    swarm = _Swarm(
        peer_id,
        peerstore,
        upgrader,
        transports=transports,
        retry_config=RetryConfig(max_retries=0),
        connection_config=connection_config,
        resources=resources,
        is_known=is_known,
    )
    return _Host(network=swarm)


async def close_quietly(host: BasicHost) -> None:
    """Bounded shutdown: the library can hang or raise while closing after overload."""
    with trio.move_on_after(5):
        try:
            await host.close()
        except Exception:
            pass
