"""Typed peer messages on the network: the frame codec (frames.py) and the core (core.py) over
`/overlay/<network>/peermsg/1.0.0`, and the Python API an in-process application uses.

One stream per peer and direction: ours carries our messages to the peer, written whole-frame
under a lock so fragments of different messages may interleave but never split a frame; the
peer's carries its messages to us, read through a FrameReader. A peer's new stream replaces its
old one, which is reset, and one silent for IDLE_TIMEOUT is closed: a peer holds at most one
inbound stream, and only while it uses it. A write to a stream the peer has closed is tried
once more on a new stream. A frame over the limit ends that stream (it is out of sync);
everything else bad is counted by the reader or the core.

Application API: `send(peer, tag, body)` and `broadcast(tag, body)` (to every connected peer),
`messages` (DeliverPeerMessage actions: BELIEF, QUERY, TRANSACT, RESULT), `answer(deliver, code, result)`
for QUERY/TRANSACT, `release(deliver)` for the rest, `set_status(bytes)`, `put(value)`. Once a
WebSocket application registers (`WS /peermsg`, app.py), a dispatcher reads `messages` and hands
each type to the application registered for it.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Awaitable, Callable

import trio
from libp2p.custom_types import TProtocol
from libp2p.network.stream.net_stream import INetStream
from libp2p.peer.id import ID

from overlay.core.errors import DecodeError, OverlayError
from overlay.core.metrics import Registry
from overlay.peermsg.app import delivered
from overlay.peermsg.core import Code, DeliverPeerMessage, PeerMessages, SendPeerMessage, message
from overlay.peermsg.frames import FrameReader, PeerMessageType, encode
from overlay.transport.framed import READ_CHUNK, end_quietly
from overlay.transport.host import StreamHost

log = logging.getLogger(__name__)

TICK = 1.0
OPEN_TIMEOUT = 10.0
IDLE_TIMEOUT = 300.0  # seconds a peer's stream to us may stay silent before we close it
MAX_REPLYING = 256  # automatic answers in flight; more are dropped and counted


class PeerMessaging:
    def __init__(self, host: StreamHost, connect: Callable[[ID], Awaitable[object]], peers: Callable[[], list[ID]],
                 network: str, metrics: Registry, trusted: frozenset[str] = frozenset()) -> None:
        """`host`: streams to peers; `connect`: dial a peer by ID (the node's DHT lookup and dial
        strategy); `peers`: the peers connected now, which a broadcast reaches."""
        self.host = host
        self.connect = connect
        self.peers = peers
        self.protocol = TProtocol(f"/overlay/{network}/peermsg/1.0.0")
        self.core = PeerMessages(trusted=trusted)
        capacity = self.core.max_pending + self.core.trusted_reserve
        self._send_app, self.messages = trio.open_memory_channel[DeliverPeerMessage](capacity)
        self._streams: dict[str, tuple[INetStream, trio.Lock]] = {}
        self._inbound: dict[str, tuple[INetStream, trio.CancelScope]] = {}  # each peer's stream to us, and its reader
        self._used: dict[str, float] = {}  # when we last wrote on our stream to each peer
        self._opening: dict[str, trio.Lock] = {}
        self._replying = 0  # automatic answers (DATA, RESULT) being written
        self._apps: dict[PeerMessageType, trio.MemorySendChannel[str]] = {}
        self._unanswered: dict[tuple[str, int], trio.MemorySendChannel[str]] = {}  # bounded by the core's pending limit
        self._dispatching = False
        self.app_drops = metrics.counter("overlay_peermsg_app_dropped_total",
                                         "Typed messages no application took, and registrations of a type another "
                                         "application holds, by type and reason")
        self._ids = itertools.count(1)
        self._nursery: trio.Nursery | None = None
        self.send_failures = metrics.counter("overlay_peermsg_send_failures_total", "Typed peer messages that could not be sent")
        self.replaced = metrics.counter("overlay_peermsg_streams_replaced_total",
                                        "Peers' streams reset because the same peer opened another")
        self.idle_closed = metrics.counter("overlay_peermsg_streams_idle_total", "Peers' streams closed after IDLE_TIMEOUT silent")
        metrics.gauge("overlay_peermsg_shed_total", "Typed peer messages shed under load", lambda: self.core.counters.shed)
        metrics.gauge("overlay_peermsg_malformed_total", "Malformed typed peer messages", lambda: self.core.counters.malformed)

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.host.set_stream_handler(self.protocol, self._handle_stream)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            while True:
                await trio.sleep(TICK)
                self._act(self.core.tick(trio.current_time()))

    # ---- the application's API ----

    async def send(self, peer: str, tag: PeerMessageType, body: bytes) -> int:
        """Send one typed message; returns its id (RESULTs reference it). Raises OverlayError
        when the peer cannot be reached."""
        message_id = next(self._ids)
        await self._write(peer, *message(tag, message_id, body), message_id)
        return message_id

    async def broadcast(self, tag: PeerMessageType, body: bytes) -> int:
        """To every connected peer; returns how many it reached."""
        reached = 0
        for peer in self.peers():
            try:
                await self.send(str(peer), tag, body)
                reached += 1
            except OverlayError:
                pass
        return reached

    async def answer(self, deliver: DeliverPeerMessage, code: Code, result: bytes) -> None:
        send = self.core.result(deliver.peer, deliver.id, code, result, next(self._ids))
        await self._write(send.peer, send.tag, send.payload, 0)

    # ---- WebSocket applications (WS /peermsg, app.py) ----

    def register_app(self, outbox: trio.MemorySendChannel[str], types: frozenset[PeerMessageType]) -> None:
        """Deliver these types to `outbox` from now on. A type another connected application
        holds is not taken from it (that application would silently stop getting its messages):
        OverlayError, and none of `types` is registered. The first registration starts the
        dispatcher, which from then on is the only reader of `messages`."""
        taken = sorted(tag.name for tag in types if self._apps.get(tag, outbox) is not outbox)
        if taken:
            for name in taken:
                self.app_drops.inc(type=name, reason="type taken")
            raise OverlayError(f"another application holds {', '.join(taken)}; nothing was registered")
        for tag in types:
            self._apps[tag] = outbox
        if not self._dispatching and self._nursery is not None:
            self._dispatching = True
            self._nursery.start_soon(self._dispatch)

    def unregister_app(self, outbox: trio.MemorySendChannel[str]) -> None:
        """The application left: its types go unserved, and what it did not answer is released."""
        self._apps = {t: o for t, o in self._apps.items() if o is not outbox}
        for key in [k for k, o in self._unanswered.items() if o is outbox]:
            del self._unanswered[key]
            self.core.released()

    async def answer_for(self, outbox: trio.MemorySendChannel[str], peer: str, ref: int, code: Code, result: bytes) -> None:
        """A WebSocket application answers a QUERY/TRANSACT it was given, once."""
        if self._unanswered.get((peer, ref)) is not outbox:
            raise OverlayError(f"no unanswered QUERY or TRANSACT {ref} from {peer} was given to this application")
        del self._unanswered[(peer, ref)]
        await self.answer(DeliverPeerMessage(peer, PeerMessageType.QUERY, ref, b""), code, result)

    async def _dispatch(self) -> None:
        async for deliver in self.messages:
            outbox = self._apps.get(deliver.tag)
            try:
                if outbox is None:
                    raise trio.WouldBlock
                outbox.send_nowait(delivered(deliver.peer, deliver.tag, deliver.id, deliver.body))
            except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                self.release(deliver)
                self.app_drops.inc(type=deliver.tag.name, reason="no application" if outbox is None else "application too slow")
                continue
            if deliver.tag in (PeerMessageType.QUERY, PeerMessageType.TRANSACT):
                self._unanswered[(deliver.peer, deliver.id)] = outbox
            else:
                self.release(deliver)

    def release(self, deliver: DeliverPeerMessage) -> None:
        """The application is done with a BELIEF (or a QUERY/TRANSACT it will not answer)."""
        if deliver.tag is not PeerMessageType.RESULT:
            self.core.released()

    def set_status(self, status: bytes) -> None:
        self.core.set_status(status)

    def put(self, value: bytes) -> bytes:
        return self.core.put(value)

    # ---- streams ----

    async def _write(self, peer: str, tag: int, payload: bytes, message_id: int) -> None:
        """Our stream to `peer` is dropped once it has been unused for half the peer's idle
        timeout (so a well-behaved peer never closes one we are about to write); a write to one
        the peer closed anyway is tried once more on a new stream."""
        if peer in self._streams and trio.current_time() - self._used.get(peer, 0.0) > IDLE_TIMEOUT / 2:
            stream, _ = self._streams.pop(peer)
            self._used.pop(peer, None)
            await end_quietly(stream, reset=False)
        tries = 2 if peer in self._streams else 1
        for left in reversed(range(tries)):
            try:
                await self._write_once(peer, tag, payload, message_id)
                self._used[peer] = trio.current_time()
                return
            except OverlayError:
                if not left:
                    self.send_failures.inc()
                    raise

    async def _write_once(self, peer: str, tag: int, payload: bytes, message_id: int) -> None:
        try:
            entry = self._streams.get(peer)
            if entry is None:
                opening = self._opening.setdefault(peer, trio.Lock())
                async with opening:  # one stream per peer, however many senders wait for it
                    entry = self._streams.get(peer)
                    if entry is None:
                        with trio.fail_after(OPEN_TIMEOUT):
                            await self.connect(ID.from_base58(peer))
                            stream = await self.host.new_stream(ID.from_base58(peer), [self.protocol])
                        entry = self._streams[peer] = (stream, trio.Lock())
                self._opening.pop(peer, None)
            stream, lock = entry
            for frame in encode(tag, payload, message_id & 0xFFFFFFFF):
                async with lock:  # whole frames; another message's frames may come between
                    await stream.write(frame)
        except Exception as e:  # noqa: BLE001 - dial, lookup or stream failure: not sent
            self._streams.pop(peer, None)
            self._used.pop(peer, None)
            raise OverlayError(f"peer message to {peer}: {e or type(e).__name__}") from None

    async def _handle_stream(self, stream: INetStream) -> None:
        """A peer's stream replaces its last one, whose reader is cancelled (a local reset does
        not wake a Yamux read, so it would otherwise sit out the idle timeout)."""
        peer = str(stream.muxed_conn.peer_id)
        reader = trio.CancelScope()
        old, self._inbound[peer] = self._inbound.get(peer), (stream, reader)
        if old is not None:
            self.replaced.inc()
            old[1].cancel()
        try:
            with reader:
                await self._read(peer, stream)
        finally:
            if self._inbound.get(peer, (None,))[0] is stream:
                del self._inbound[peer]
        if reader.cancelled_caught:
            await end_quietly(stream)

    async def _read(self, peer: str, stream: INetStream) -> None:
        reader = FrameReader()
        while True:
            data = b""
            with trio.move_on_after(IDLE_TIMEOUT) as idle:
                try:
                    data = await stream.read(READ_CHUNK)
                except Exception:  # noqa: BLE001 - the stream ended, one way or another
                    return
            if idle.cancelled_caught:
                self.idle_closed.inc()
                await end_quietly(stream)
                return
            if not data:
                return
            try:
                for tag, payload in reader.feed(data):
                    self._act(self.core.on_message(peer, tag, payload, trio.current_time()))
            except DecodeError as e:
                log.debug("peer messages from %s: %s", peer, e)
                await stream.reset()
                return

    def _act(self, actions: list) -> None:
        for action in actions:
            if isinstance(action, DeliverPeerMessage):
                try:
                    self._send_app.send_nowait(action)
                except trio.WouldBlock:  # the core's limits keep this from happening
                    self.core.released()
                    self.core.counters.shed += 1
            elif isinstance(action, SendPeerMessage) and self._nursery is not None:
                if self._replying >= MAX_REPLYING:  # a peer that asks faster than it reads
                    self.send_failures.inc()
                    continue
                self._replying += 1
                self._nursery.start_soon(self._send_quietly, action)

    async def _send_quietly(self, action: SendPeerMessage) -> None:
        try:
            await self._write(action.peer, action.tag, action.payload, next(self._ids))
        except OverlayError as e:
            log.debug("%s", e)
        finally:
            self._replying -= 1
