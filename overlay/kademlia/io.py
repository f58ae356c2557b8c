"""The trio adapter that runs the Kademlia core on py-libp2p streams.

Wire: each message is one unsigned-varint length-prefixed Kademlia protobuf
(`overlay.kademlia.wire`) on a stream of protocol `/overlay/<network>/kad/1.0.0`; the network
name in the protocol ID keeps differently named networks out of each other's DHT. A requester
opens a stream, writes one request and reads one response (none for ADD_PROVIDER); a server
answers requests on a stream until the requester closes it or goes idle.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import multiaddr
import trio
from libp2p.host.basic_host import BasicHost
from libp2p.peer.id import ID

from overlay.core.addrs import address_group, ip_scope
from overlay.core.errors import DecodeError
from overlay.core.metrics import Registry
from overlay.core.records import peer_id_to_str
from overlay.core.peer import PeerInfo
from overlay.kademlia.core import DhtAction, Kademlia, QueryDone, Send
from overlay.kademlia.driver import answer, dispatch
from overlay.kademlia.lookup import LookupResult
from overlay.kademlia.wire import MAX_MESSAGE_SIZE, Message, MessageType, decode_message, encode_message
from overlay.transport.dialer import Dialer, known_addrs
from overlay.transport.framed import FramedStream

log = logging.getLogger(__name__)



def kad_protocol(network: str) -> str:
    return f"/overlay/{network}/kad/1.0.0"


class StreamPool:
    """Idle request streams per peer, reused by later requests.

    Opening a stream costs a multistream negotiation (~4.5 ms on loopback, most of it CPU in
    py-libp2p) while a request on an open stream takes ~1.5 ms, so lookups reuse streams as
    libp2p's Kademlia allows. Streams idle for longer than `idle_timeout` (shorter than the
    server's) are closed instead of reused.
    """

    def __init__(
        self, host: BasicHost, protocol: str, per_peer: int = 2, idle_timeout: float = 20.0, max_peers: int = 256
    ) -> None:
        self.host = host
        self.protocol = protocol
        self.per_peer = per_peer
        self.max_peers = max_peers
        self.idle_timeout = idle_timeout
        self._idle: dict[ID, list[FramedStream]] = {}

    async def take(self, peer_id: ID) -> tuple[FramedStream, bool]:
        """A stream to `peer_id` and whether it was reused."""
        idle = self._idle.get(peer_id, [])
        while idle:
            channel = idle.pop()
            if not idle:
                del self._idle[peer_id]
            if trio.current_time() - channel.idle_since < self.idle_timeout:
                return channel, True
            await self.discard(channel)
        stream = await self.host.new_stream(peer_id, [self.protocol])
        return FramedStream(stream, MAX_MESSAGE_SIZE), False

    async def give_back(self, peer_id: ID, channel: FramedStream) -> None:
        if len(self._idle) >= self.max_peers:
            await self._sweep()
        idle = self._idle.setdefault(peer_id, [])
        if len(idle) >= self.per_peer or channel.decoder.buffered or len(self._idle) > self.max_peers:
            await self.discard(channel)
            return
        channel.idle_since = trio.current_time()
        idle.append(channel)

    async def _sweep(self) -> None:
        """Close streams that went stale, so peers we stopped asking hold no memory."""
        now = trio.current_time()
        for peer_id in list(self._idle):
            keep = [c for c in self._idle[peer_id] if now - c.idle_since < self.idle_timeout]
            for channel in self._idle[peer_id]:
                if channel not in keep:
                    await self.discard(channel)
            if keep:
                self._idle[peer_id] = keep
            else:
                del self._idle[peer_id]

    async def discard(self, channel: FramedStream) -> None:
        await channel.close()


class DhtService:
    def __init__(
        self,
        host: BasicHost,
        core: Kademlia,
        dialer: Dialer,
        network: str,
        metrics: Registry,
    ) -> None:
        self.host = host
        self.core = core
        self.dialer = dialer
        self.protocol = kad_protocol(network)
        self.streams = StreamPool(host, self.protocol)
        self._results: dict[int, tuple[trio.Event, list[QueryDone]]] = {}
        self._wakeup = trio.Event()
        self._fed = trio.Event()  # set (and replaced) whenever the core took an input
        self._nursery: trio.Nursery | None = None
        self.op_latency = metrics.histogram("overlay_dht_operation_seconds", "Duration of DHT operations")
        self.ops = metrics.counter("overlay_dht_operations_total", "DHT operations by kind and outcome")
        self.bytes = metrics.counter("overlay_dht_bytes_total", "Kademlia message bytes by direction")
        self.bad_input = metrics.counter("overlay_dht_bad_messages_total", "Malformed or oversized DHT messages received")
        metrics.gauge("overlay_routing_table_size", "Peers in the Kademlia routing table", lambda: len(core.table))
        metrics.gauge("overlay_dht_records", "Records held in the local DHT store", lambda: len(core.records))
        metrics.gauge("overlay_dht_rejected_records_total", "Invalid records refused", lambda: core.counters.records_rejected)
        metrics.counts("overlay_dht_refused_total", "Records and providers the stores refused (full, quota, older)",
                       "reason", lambda: core.counters.refused)

    @staticmethod
    def now() -> float:
        return trio.current_time()

    def set_server(self, on: bool) -> None:
        """Answer DHT requests (reachable node) or only ask (node behind NAT)."""
        if on and not self.core.server:
            self.host.set_stream_handler(self.protocol, self._serve)
        elif not on and self.core.server:
            self.host.remove_stream_handler(self.protocol)
        self.core.server = on

    @property
    def serving(self) -> bool:
        """Whether we answer DHT requests, so that others' routing tables hold us."""
        return self.core.server

    def tree(self, scope: int, per_bucket: int) -> list[tuple[int, list[str]]]:
        """The routing table's prefix tree from bucket `scope` down (RoutingTable.tree), by
        peer ID: where a broadcast goes next."""
        return [(i, [peer_id_to_str(p) for p in peers]) for i, peers in self.core.table.tree(scope, per_bucket)]

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            if self.core.server:
                self.host.set_stream_handler(self.protocol, self._serve)
            task_status.started()
            while True:
                deadline = self.core.next_timer()
                with trio.move_on_at(deadline if deadline is not None else math.inf):
                    await self._wakeup.wait()
                self._wakeup = trio.Event()
                self._dispatch(self.core.handle_timer(self.now()))

    # ---- queries ----------------------------------------------------------------------------

    async def query(self, start: Callable[[float], tuple[int, list[DhtAction]]]) -> QueryDone:
        """Run one core query (e.g. `lambda now: core.find_node(key, now)`) to its end."""
        event = trio.Event()
        query_id, actions = start(self.now())
        self._results[query_id] = (event, [])
        try:
            self._apply(actions)
            await event.wait()
            done = self._results[query_id][1][0]
        finally:
            del self._results[query_id]
        self.op_latency.observe(done.duration, kind=done.kind.value)
        self.ops.inc(kind=done.kind.value, outcome="ok" if done.result.closest or done.result.values else "empty")
        return done

    async def bootstrap(self) -> LookupResult:
        return (await self.query(self.core.bootstrap)).result

    async def get_value(self, key: bytes, quorum: int = 0) -> LookupResult:
        return (await self.query(lambda now: self.core.get_value(key, now, quorum))).result

    async def put_value(self, key: bytes, value: bytes) -> int:
        """Store once (no republishing); the stores that took it. Raises RecordError if invalid."""
        return (await self.query(lambda now: self.core.put_value(key, value, now))).stored

    async def publish(self, key: bytes, value: bytes) -> int:
        return (await self.query(lambda now: self.core.publish(key, value, now))).stored

    async def provide(self, key: bytes) -> int:
        return (await self.query(lambda now: self.core.provide(key, now))).stored

    async def get_providers(self, key: bytes, quorum: int = 0) -> LookupResult:
        return (await self.query(lambda now: self.core.get_providers(key, now, quorum))).result

    def unprovide(self, key: bytes) -> None:
        self._apply(self.core.unprovide(key, self.now()))

    async def until(self, condition: Callable[[], bool]) -> None:
        """Return once `condition()` (of the core's state: its table, its stores) holds, checked
        each time the core takes an input, the only moments its state changes."""
        while not condition():
            await self._fed.wait()

    def add_address(self, peer: PeerInfo) -> None:
        self._apply(self.core.add_address(peer, self.now()))

    # ---- driving the core ----------------------------------------------------------------------

    def _apply(self, actions: list[DhtAction]) -> None:
        """Carry out actions from an input to the core, and let the timer loop re-read its timer."""
        self._dispatch(actions)
        self._wakeup.set()

    def _dispatch(self, actions: list[DhtAction]) -> None:
        """Carry out what the core answered to an input (each input's answer passes here)."""
        nursery = self._nursery
        assert nursery is not None, "DhtService.run() must be started first"
        self._fed.set()
        self._fed = trio.Event()
        dispatch(actions, lambda send: nursery.start_soon(self._request, send), self._done)

    def _done(self, done: QueryDone) -> None:
        if done.query_id in self._results:
            event, slot = self._results[done.query_id]
            slot.append(done)
            event.set()

    async def _request(self, send: Send) -> None:
        expects_answer = send.expects_response
        peer_id = ID(send.peer.peer_id)
        response: Message | None = None
        group, scope = "", "global"
        try:
            with trio.fail_after(self.core.config.request_timeout):
                addrs = [multiaddr.Multiaddr(a) for a in send.peer.addrs]
                await self.dialer.connect(peer_id, addrs, timeout=self.core.config.request_timeout)
                response, stream = await self._exchange(peer_id, send.message, expects_answer)
                if stream is not None:
                    group, scope = self._origin(stream)
        except DecodeError as e:
            self.bad_input.inc()
            log.debug("bad DHT response from %s: %s", peer_id, e)
        except Exception as e:  # noqa: BLE001 - a peer can fail in many ways; each is one failure
            log.debug("DHT request to %s failed: %s", peer_id, e)
        if not expects_answer:
            return
        known = self._known_addrs(peer_id) if response is not None else ()
        self._apply(answer(self.core, send, response, self.now(), known, group, scope))

    def _origin(self, stream: Any) -> tuple[str, str]:
        """The routing table's address group of the stream's connection ("" if relayed or exempt)
        and its IP scope ("global" if relayed), for `Kademlia.handle_response`."""
        ip = self.host.counted_ip(stream)
        remote = stream.get_remote_address()
        return address_group(ip) if ip else "", (ip_scope(remote[0]) or "global") if remote else "global"

    async def _exchange(self, peer_id: ID, message: Message, expects_answer: bool) -> tuple[Message | None, Any]:
        """One request (and its response) on a pooled stream, and the stream it was answered on;
        a stale reused stream gets one retry."""
        payload = encode_message(message)
        while True:
            channel, reused = await self.streams.take(peer_id)
            try:
                await channel.write(payload)
                data = await channel.read() if expects_answer else b""
            except DecodeError:
                await self.streams.discard(channel)
                raise
            except Exception:
                await self.streams.discard(channel)
                if reused:
                    continue
                raise
            if data is None:  # the server closed the stream
                await self.streams.discard(channel)
                if reused:
                    continue
                return None, None
            self.bytes.inc(len(payload), direction="out")
            await self.streams.give_back(peer_id, channel)
            if not expects_answer:
                return None, None
            self.bytes.inc(len(data), direction="in")
            return decode_message(data), channel.stream

    def _known_addrs(self, peer_id: ID) -> tuple[bytes, ...]:
        """The peer's listen addresses as identify reported them (empty until it has)."""
        return tuple(a.to_bytes() for a in known_addrs(self.host, peer_id))

    async def _serve(self, stream) -> None:
        peer_id = stream.muxed_conn.peer_id
        peer = PeerInfo(peer_id.to_bytes(), self._known_addrs(peer_id))
        remote = stream.get_remote_address()  # None over a relayed connection: only the per-peer quota holds
        group = (address_group(remote[0]) or None) if remote else None
        framed = FramedStream(stream, MAX_MESSAGE_SIZE)
        try:
            while True:
                data = None
                with trio.move_on_after(self.core.config.max_stream_idle):
                    data = await framed.read()
                if data is None:
                    break
                self.bytes.inc(len(data), direction="in")
                request = decode_message(data)
                response, actions = self.core.handle_request(peer, request, self.now(), group)
                self._apply(actions)
                if response is None:
                    if request.type is MessageType.ADD_PROVIDER:
                        continue
                    break
                payload = encode_message(response)
                await framed.write(payload)
                self.bytes.inc(len(payload), direction="out")
        except DecodeError as e:
            self.bad_input.inc()
            log.debug("bad DHT request from %s: %s", peer_id, e)
        except Exception as e:  # noqa: BLE001 - a broken stream must not reach the swarm
            log.debug("DHT stream from %s ended: %s", peer_id, e)
        finally:
            await framed.close()
