"""The trio adapter of signalling (PROTOCOL.md): serves the server core on libp2p streams, keeps
our own registrations with other nodes' servers, and sends a caller's offer through one.

Each served stream has a bounded outbox drained by its own writer task, so a slow reader never
stalls the server; a stream whose outbox is full is closed and counted.
"""

from __future__ import annotations

import itertools
import logging
import math
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import multiaddr
import trio
from libp2p.host.basic_host import BasicHost
from libp2p.peer.id import ID

from overlay.core.errors import DecodeError, DialError
from overlay.core.metrics import Registry
from overlay.core.peer import PeerInfo
from overlay.transport.dialer import Dialer
from overlay.transport.framed import FramedStream
from signaling import messages
from signaling.messages import MAX_FRAME
from signaling.registrations import AskLoad, Changed, NeedCandidates, RegisterWith, RegistrationAction, Registrations, Release
from signaling.server import ServerAction, ServerLimits, SignalingServer, Write

log = logging.getLogger(__name__)

OUTBOX = 64
FIRST_MESSAGE_TIMEOUT = 10.0
REGISTER_TIMEOUT = 5.0
CALL_TIMEOUT = 5.0

SignalHandler = Callable[[ID, ID, messages.Signal], Awaitable[None]]


def signal_protocol(network: str) -> str:
    return f"/overlay/{network}/signal/1.0.0"


@dataclass
class _Served:
    outbox: trio.MemorySendChannel[Any]
    scope: trio.CancelScope


@dataclass
class Registration:
    """One of our live registrations, as netcheck and status show it."""

    peer: PeerInfo
    framed: FramedStream
    rtt: float | None = None
    since: float = 0.0  # when it was made (the service's clock)
    lock: trio.Lock = field(default_factory=trio.Lock)


_CLOSE = object()


def _timed_out(e: BaseException) -> bool:
    """A trio timeout, alone or inside the exception group of a nursery."""
    if isinstance(e, BaseExceptionGroup):
        return any(_timed_out(inner) for inner in e.exceptions)
    return isinstance(e, trio.TooSlowError)


class SignalingService:
    def __init__(
        self,
        host: BasicHost,
        dialer: Dialer,
        network: str,
        metrics: Registry,
        limits: ServerLimits = ServerLimits(),
        want: int = 3,
    ) -> None:
        self.host = host
        self.dialer = dialer
        self.protocol = signal_protocol(network)
        self.server = SignalingServer(limits)
        self.registrations = Registrations(host.get_id().to_bytes(), want)
        self._scopes: dict[bytes, trio.CancelScope] = {}  # our registrations, being made or live
        self.live: dict[bytes, Registration] = {}
        self.on_signal: SignalHandler | None = None
        self.on_registrations: Callable[[tuple[PeerInfo, ...]], None] | None = None
        self.on_need_candidates: Callable[[], None] | None = None
        self._ids = itertools.count(1)
        self._served: dict[int, _Served] = {}
        self._serving = False
        self._wakeup = trio.Event()
        self._nursery: trio.Nursery | None = None
        self.dropped = metrics.counter("overlay_signaling_dropped_total", "Signalling messages refused or dropped, by reason")
        metrics.gauge("overlay_signaling_registered_peers", "Peers registered with our signalling server", lambda: len(self.server.registrations))
        metrics.gauge("overlay_signaling_registrations", "Our live registrations with other signalling nodes", lambda: len(self.live))
        metrics.gauge("overlay_signaling_forwarded_total", "Signalling messages forwarded", lambda: self.server.counters.forwarded)

    @staticmethod
    def now() -> float:
        return trio.current_time()

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            while True:
                deadline = min((t for t in (self.server.next_timer(), self.registrations.next_timer()) if t is not None), default=math.inf)
                with trio.move_on_at(deadline):
                    await self._wakeup.wait()
                now = self.now()
                self._apply(self.server.handle_timer(now))
                self._apply_registrations(self.registrations.handle_timer(now))
                self._wakeup = trio.Event()  # after applying: their own wake-ups must not spin us

    def serve(self, enabled: bool) -> None:
        """Serve signalling (publicly reachable nodes) or stop accepting new streams."""
        if enabled and not self._serving:
            self.host.set_stream_handler(self.protocol, self._serve)
        elif not enabled and self._serving:
            self.host.remove_stream_handler(self.protocol)
        self._serving = enabled

    # ---- server ------------------------------------------------------------------------------

    async def _serve(self, stream) -> None:
        sid = next(self._ids)
        framed = FramedStream(stream, MAX_FRAME)
        send, receive = trio.open_memory_channel[Any](OUTBOX)
        idle_limit = 2 * self.server.limits.ttl
        try:
            async with trio.open_nursery() as nursery:
                self._served[sid] = _Served(send, nursery.cancel_scope)
                nursery.start_soon(self._writer, framed, receive, nursery.cancel_scope)
                self._apply(self.server.opened(sid, str(stream.muxed_conn.peer_id), self.now(), self.host.counted_ip(stream)))
                timeout = FIRST_MESSAGE_TIMEOUT
                while True:
                    data = None
                    with trio.move_on_after(timeout):
                        data = await framed.read()
                    if data is None:
                        break
                    timeout = idle_limit
                    try:
                        msg = messages.decode(data)
                    except DecodeError as e:
                        self._apply(self.server.bad_input(sid, "bad-message", str(e)))
                        continue  # the CloseStream action ends this stream once the error is written
                    self._apply(self.server.message(sid, msg, self.now()))
                nursery.cancel_scope.cancel()
        except DecodeError as e:  # a frame over the size limit
            self.dropped.inc(reason="too-large")
            log.debug("signalling stream %d: %s", sid, e)
        except Exception as e:  # noqa: BLE001 - a broken stream must not reach the swarm
            log.debug("signalling stream %d ended: %s", sid, e)
        finally:
            self._served.pop(sid, None)
            self._apply(self.server.closed(sid, self.now()))
            await framed.close()

    async def _writer(self, framed: FramedStream, receive: trio.MemoryReceiveChannel[Any], scope: trio.CancelScope) -> None:
        try:
            async for item in receive:
                if item is _CLOSE:
                    break
                await framed.write(messages.encode(item))
        except Exception as e:  # noqa: BLE001
            log.debug("signalling write failed: %s", e)
        scope.cancel()

    def _apply(self, actions: list[ServerAction]) -> None:
        for action in actions:
            if isinstance(action, Write) and isinstance(action.message, messages.Error):
                self.dropped.inc(reason=action.message.code)
            served = self._served.get(action.stream)
            if served is None:
                continue
            try:
                served.outbox.send_nowait(action.message if isinstance(action, Write) else _CLOSE)
            except trio.WouldBlock:
                self.dropped.inc(reason="slow-reader")
                served.scope.cancel()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
        self._wakeup.set()

    # ---- our registrations -------------------------------------------------------------------

    def offer_candidates(self, peers: Sequence[PeerInfo], bootstraps: Sequence[PeerInfo] = ()) -> None:
        """`peers`: public nodes we verified (our routing table's DHT servers); `bootstraps`: the fallback."""
        own = self.host.get_id().to_bytes()
        self._apply_registrations(self.registrations.offer(
            [p for p in peers if p.peer_id != own], self.now(), [b for b in bootstraps if b.peer_id != own]))

    def is_my_relay(self, peer: ID) -> bool:
        return peer.to_bytes() in self.live

    def _apply_registrations(self, actions: list[RegistrationAction]) -> None:
        for action in actions:
            if isinstance(action, RegisterWith) and self._nursery is not None:
                self._nursery.start_soon(self._register, action.peer)
            elif isinstance(action, AskLoad) and self._nursery is not None:
                for peer in action.peers:
                    self._nursery.start_soon(self._ask_load, peer)
            elif isinstance(action, Release) and action.peer.peer_id in self._scopes:
                log.info("leaving signalling node %s (a bootstrap, or loaded above the others)", ID(action.peer.peer_id))
                self._scopes[action.peer.peer_id].cancel()
            elif isinstance(action, Changed) and self.on_registrations is not None:
                self.on_registrations(action.live)
            elif isinstance(action, NeedCandidates) and self.on_need_candidates is not None:
                self.on_need_candidates()
        self._wakeup.set()

    async def _ask_load(self, peer: PeerInfo) -> None:
        """How many registrations a candidate holds, on a stream of its own."""
        pid = ID(peer.peer_id)
        count = None
        try:
            with trio.fail_after(REGISTER_TIMEOUT):
                await self.dialer.connect(pid, [multiaddr.Multiaddr(a) for a in peer.addrs], timeout=REGISTER_TIMEOUT)
                framed = FramedStream(await self.host.new_stream(pid, [self.protocol]), MAX_FRAME)
                try:
                    await framed.write(messages.encode(messages.Load()))
                    reply = await _read(framed)
                finally:
                    await framed.close()
            if isinstance(reply, messages.Load) and reply.registrations is not None:
                count = reply.registrations
        except Exception as e:  # noqa: BLE001 - any failure: the candidate backs off
            log.debug("load of signalling node %s: %s", pid, str(e) or type(e).__name__)
        if count is None:
            self._apply_registrations(self.registrations.load_failed(peer.peer_id, self.now()))
        else:
            self._apply_registrations(self.registrations.loaded(peer.peer_id, count, self.now()))

    async def _register(self, peer: PeerInfo) -> None:
        """Register with `peer` and keep the registration until it fails or we Release it."""
        pid = ID(peer.peer_id)
        framed: FramedStream | None = None
        scope = self._scopes[peer.peer_id] = trio.CancelScope()
        try:
            with scope:
                with trio.fail_after(REGISTER_TIMEOUT):
                    await self.dialer.connect(pid, [multiaddr.Multiaddr(a) for a in peer.addrs], timeout=REGISTER_TIMEOUT)
                    framed = FramedStream(await self.host.new_stream(pid, [self.protocol]), MAX_FRAME)
                    start = self.now()
                    await framed.write(messages.encode(messages.Register()))
                    reply = await _read(framed)
                if not isinstance(reply, messages.Registered):
                    raise DialError(f"refused: {reply}")
                registration = self.live[peer.peer_id] = Registration(peer, framed, self.now() - start, self.now())
                self._apply_registrations(self.registrations.succeeded(peer.peer_id, self.now()))
                log.info("registered with signalling node %s", pid)
                await self._keep(pid, registration, reply.ttl)
        except Exception as e:  # noqa: BLE001 - each failure just loses this registration
            log.info("registration with %s ended: %s", pid, str(e) or type(e).__name__)
            if _timed_out(e):  # unanswered on a connection we have: its path is gone
                await self.dialer.drop(pid, "the signalling node stopped answering")
        finally:
            if self._scopes.get(peer.peer_id) is scope:
                del self._scopes[peer.peer_id]
            self.live.pop(peer.peer_id, None)
            if framed is not None:
                await framed.close()
            self._apply_registrations(self.registrations.lost(peer.peer_id, self.now()))

    async def _keep(self, via: ID, registration: Registration, ttl: int) -> None:
        """Ping every ttl/3 and hand incoming signals over, until the stream fails."""
        pong = trio.Event()

        async def pinger() -> None:
            nonlocal pong
            while True:
                await trio.sleep(ttl / 3)
                pong = trio.Event()
                sent = self.now()
                async with registration.lock:
                    await registration.framed.write(messages.encode(messages.Ping()))
                with trio.fail_after(ttl / 3):
                    await pong.wait()
                registration.rtt = self.now() - sent

        async with trio.open_nursery() as nursery:
            nursery.start_soon(pinger)
            while True:
                msg = await _read(registration.framed)
                if isinstance(msg, messages.Pong):
                    pong.set()
                elif isinstance(msg, messages.Signal) and msg.sender is not None and self.on_signal is not None:
                    nursery.start_soon(self.on_signal, via, ID.from_base58(msg.sender), msg)
                elif isinstance(msg, messages.Error):
                    log.debug("signalling node %s: %s %s", via, msg.code, msg.reason)

    async def reply(self, via: ID, caller: ID, session: str, kind: str, body: dict[str, Any]) -> None:
        """Answer a caller through the signalling node its message came from."""
        registration = self.live.get(via.to_bytes())
        if registration is None:
            raise DialError(f"no longer registered with {via}")
        async with registration.lock:
            await registration.framed.write(messages.encode(messages.Signal(session, kind, body, to=str(caller))))

    # ---- calling a registered peer -----------------------------------------------------------

    async def call(self, via: ID, target: ID, offer: dict[str, Any], timeout: float = CALL_TIMEOUT) -> dict[str, Any]:
        """Send `offer` to `target` through its signalling node `via`; return the answer's body."""
        session = secrets.token_urlsafe(12)
        framed: FramedStream | None = None
        try:
            with trio.fail_after(timeout):
                framed = FramedStream(await self.host.new_stream(via, [self.protocol]), MAX_FRAME)
                await framed.write(messages.encode(messages.Signal(session, "offer", offer, to=str(target))))
                while True:
                    reply = await _read(framed)
                    if isinstance(reply, messages.Error):
                        raise DialError(f"signalling via {via}: {reply.code}: {reply.reason}")
                    if isinstance(reply, messages.Signal) and reply.session == session and reply.kind == "answer":
                        return reply.body
                    if isinstance(reply, messages.Signal) and reply.kind == "bye":
                        raise DialError(f"{target} declined: {reply.body.get('reason', '')}")
        except trio.TooSlowError:
            raise DialError(f"signalling via {via}: no answer from {target} within {timeout:.0f}s") from None
        except DecodeError as e:
            raise DialError(f"signalling via {via}: {e}") from None
        finally:
            if framed is not None:
                await framed.close()


async def _read(framed: FramedStream) -> messages.Message:
    data = await framed.read()
    if data is None:
        raise DialError("stream ended")
    return messages.decode(data)
