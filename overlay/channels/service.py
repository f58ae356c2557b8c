"""The channel relay on the network: INM links between nodes, the ten commands, local clients.

The trio adapter around the relay core (relay.py, over table.py and router.py): it owns the
streams, the tasks, the clocks and the local clients, and carries out the core's actions; every
protocol decision is the core's, which the simulator drives too. PROTOCOL.md in this directory
is the wire format.

Links. Each node keeps an INM link to each neighbour: our outbound stream carries our envelopes
to it (one writer task draining the link's bounded queue, at most one write per COALESCE), its
outbound stream carries its envelopes to us. A node seeks `want` neighbours among the peers it
is connected to (its bootstraps and DHT peers) and accepts up to `max_links`; a destination that
is not a neighbour is dialed by peer ID and becomes one.

Where the CPU of a channel message goes (benchmarks/channels.py, 10 node processes on one 2-core
machine, docs/benchmarks.md): mostly py-libp2p's stream layers and the WebSocket server, per
write and per frame, not the relay core (some 15-20 us per message). Hence one envelope encoded
once for all members, at most one link write per COALESCE, batch=1 clients, and direct sends
among a busy channel's members (mesh.py); py-libp2p's gossipsub, with its limits lifted,
sustained 20 msg/s there.
"""

from __future__ import annotations

import itertools
import logging
import random
import statistics
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Protocol

import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from libp2p.custom_types import TProtocol
from libp2p.network.stream.net_stream import INetStream
from libp2p.peer.id import ID

from overlay.channels import client as client_frames
from overlay.channels.inm import CommandHandler, Inm, decode, new_nonce
from overlay.channels.inm import sign as sign_envelope
from overlay.channels.inm import verify as verify_envelope
from overlay.channels import reservation
from overlay.channels.relay import (COMMAND_TIMEOUT, Answer, AnswerLocally, ChannelRelay, CutLink, Deliver, DhtGet,
                                    DhtPut, FindProviders, Provide, RelayAction, SendEnvelope, ToClient, Unprovide)
from overlay.channels import router
from overlay.channels.router import MAX_LINKS, LinkQueue
from overlay.channels.sealing import channel_secret
from overlay.channels.stats import HOST_SAMPLE, WINDOWS, HostStats, Traffic
from overlay.channels.table import ChannelTable
from overlay.core.errors import DecodeError, DialError, RecordError
from overlay.core.framing import frame
from overlay.core.metrics import Registry
from overlay.core.ratelimit import TokenBucket
from overlay.kademlia.lookup import LookupResult
from overlay.transport.framed import FramedStream
from overlay.transport.host import StreamHost

log = logging.getLogger(__name__)

HIGH_LATENCY = 0.010  # seconds, WSRelay's "high latency"
LATENCY_EVERY = 15.0
TIMER_STEP = 1.0
MAINTAIN_EVERY = 5.0
CLIENT_QUEUE = 1024  # messages waiting for one slow client
RETRY = (0.5, 1.0, 2.0, 5.0)  # reconnect delays of a link with envelopes waiting
COALESCE = 0.025  # seconds between two writes on one link


def inm_protocol(network: str) -> TProtocol:
    return TProtocol(f"/overlay/{network}/inm/1.0.0")


@dataclass
class Link:
    peer: ID
    queue: LinkQueue = field(default_factory=LinkQueue)
    ready: trio.Event = field(default_factory=trio.Event)  # handshake sent on our stream
    wake: trio.Event = field(default_factory=trio.Event)
    samples: deque[float] = field(default_factory=lambda: deque(maxlen=3))  # round trips, seconds
    failures: int = 0
    kept: bool = False  # one of the `want` links kept for onboarding and broadcasts: never closed idle
    used: float = 0.0  # when an envelope was last queued on it
    closing: bool = False  # closed to make room for another (the least recently used)

    def slow(self) -> bool:
        """WSRelay's "high latency": the median of the last round trips (two at least) > 10 ms."""
        return len(self.samples) >= 2 and statistics.median(self.samples) > HIGH_LATENCY


@dataclass(eq=False)
class Client:
    """A local WebSocket client; messages wait in a bounded channel for its sender task."""

    id: int
    send: trio.MemorySendChannel[str]
    dropped: int = 0
    subscribe_bucket: TokenBucket = field(default_factory=lambda: TokenBucket(rate=10, burst=20))
    send_bucket: TokenBucket = field(default_factory=lambda: TokenBucket(rate=5000, burst=10000))


class Records(Protocol):
    """The DHT, as the channels use it (the DhtService): reservations are records, and member
    nodes are providers of a channel's members key."""

    async def get_value(self, key: bytes, quorum: int = 0) -> LookupResult: ...

    async def put_value(self, key: bytes, value: bytes) -> int: ...

    async def provide(self, key: bytes) -> int: ...

    def unprovide(self, key: bytes) -> None: ...

    async def get_providers(self, key: bytes, quorum: int = 0) -> LookupResult: ...

    @property
    def serving(self) -> bool: ...

    def tree(self, scope: int, per_bucket: int) -> list[tuple[int, list[str]]]: ...


class ChannelService:
    def __init__(self, me: str, key: Ed25519PrivateKey, host: StreamHost, connect: Callable[[ID], Awaitable[object]],
                 peers: Callable[[], list[ID]], ping: Callable[[ID], Awaitable[float]], records: Records, network: str,
                 metrics: Registry, want: int = 8, max_links: int = MAX_LINKS, token: str = "", expects_peers: bool = False,
                 client_queue: int = CLIENT_QUEUE) -> None:
        """`me`: this node's peer ID, `key` its identity key (signs its broadcasts and
        reservations); `host`: streams to peers; `connect`: dial a peer by ID; `peers`: the
        peers connected now (candidate neighbours); `ping`: a round trip to one, in seconds;
        `records`: the DHT; `expects_peers`: bootstraps are configured, so no neighbour is a
        health problem; `client_queue`: messages one slow local client may have waiting."""
        self.me = me
        self.client_queue = client_queue
        self.records = records
        self.host = host
        self.connect = connect
        self.peers = peers
        self.ping = ping
        self.expects_peers = expects_peers
        self.protocol = inm_protocol(network)
        self.want = want
        self.max_links = max_links
        self.received = metrics.counter("overlay_inm_received_total", "Intra-node messages received, by type")
        self.dropped = metrics.counter("overlay_inm_dropped_total", "Intra-node messages dropped, by reason")
        self.links_closed = metrics.counter("overlay_inm_links_closed_total", "INM links closed while healthy, by reason")
        self.relay = ChannelRelay(me, lambda: int(time.time() * 1000), partial(sign_envelope, key), verify_envelope,
                                  partial(reservation.sign, key), network_token=token, received=self.received,
                                  dropped=self.dropped, tree=records.tree if records is not None else None,
                                  serving=lambda: records is not None and records.serving, linked=self._linked)
        self.links: dict[str, Link] = {}
        self.inbound: set[str] = set()  # peers whose handshake we accepted
        self.clients: dict[int, Client] = {}
        self._client_ids = itertools.count(1)
        self._client_drops_gone = 0
        self._not_nodes: dict[str, float] = {}  # peers that do not speak INM, until when
        self._lost: dict[str, int] = {}  # drops of links that are gone, by channel
        self.host_stats = HostStats()
        self._nursery: trio.Nursery | None = None
        self._timer_wake = trio.Event()
        self.delivered = metrics.counter("overlay_channel_delivered_total", "Channel messages delivered to local clients")
        self.client_drops = metrics.counter("overlay_channel_client_dropped_total", "Channel messages dropped for slow local clients")
        metrics.gauge("overlay_inm_neighbours", "Nodes with an INM link", lambda: len(self.relay.neighbours))
        metrics.gauge("overlay_channel_clients", "Local channel clients", lambda: len(self.clients))
        metrics.gauge("overlay_channels_open", "Channels open on this node", lambda: len(self.table.open_here()))
        metrics.gauge("overlay_channel_members", "Other member nodes of the channels open here",
                      lambda: sum(len(self.table.members(name)) for name in self.table.open_here()))
        metrics.gauge("overlay_inm_link_dropped_total", "Envelopes dropped on full link queues",
                      lambda: sum(self.link_drops().values()))
        # node-stats' network figures, the same numbers as the command answers
        for window in WINDOWS:
            metrics.gauge(f"overlay_channel_packets_{window}s", f"Channel messages through this node in the last {window} s",
                          lambda w=window: self.relay.traffic.summary(trio.current_time())["packets"][f"{w}s"])
            metrics.gauge(f"overlay_channel_bandwidth_{window}s_kbytes", f"Channel message kB/s through this node over the last {window} s",
                          lambda w=window: self.relay.traffic.summary(trio.current_time())["bandwidth"][f"{w}s"])

    @property
    def table(self) -> ChannelTable:
        return self.relay.table

    # ---- lifecycle ----

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.host.set_stream_handler(self.protocol, self._handle_stream)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._maintain)
            nursery.start_soon(self._timers)
            nursery.start_soon(self._measure)
            task_status.started()

    def link_drops(self) -> dict[str, int]:
        """Channel messages (by channel; "" for control) dropped on full or lost links."""
        out = dict(self._lost)
        for link in self.links.values():
            for channel, n in link.queue.dropped.items():
                out[channel] = out.get(channel, 0) + n
        return out

    def neighbours(self) -> list[str]:
        return list(self.relay.neighbours)

    def _room(self) -> bool:
        """Whether one more link fits: at `max_links`, the least recently used link that is
        not kept and has nothing queued is closed for it (its peer stays a member)."""
        if len(self.links) < self.max_links:
            return True
        idle = [link for link in self.links.values() if not link.kept and not link.queue and link.ready.is_set()]
        if not idle:
            return False
        link = min(idle, key=lambda link: link.used)
        peer = str(link.peer)
        del self.links[peer]
        self.relay.link_down(peer)
        link.closing = True
        link.wake.set()
        self.links_closed.inc(reason="least recently used")
        return True

    def _linked(self, peer: str) -> bool:
        link = self.links.get(peer)
        return link is not None and link.ready.is_set() and not link.closing

    def _link(self, peer: str) -> Link | None:
        link = self.links.get(peer)
        if link is None:
            if peer == self.me or self._nursery is None or not self._room():
                return None
            link = self.links[peer] = Link(ID.from_base58(peer))
            self._nursery.start_soon(self._write_link, link)
        return link

    async def _write_link(self, link: Link) -> None:
        """Our stream to one neighbour: handshake, then batches of queued frames until it fails;
        reconnects while envelopes wait, and gives the link up after len(RETRY) failures."""
        peer = str(link.peer)
        idle = False
        try:
            while link.failures <= len(RETRY):
                try:
                    await self._serve_link(link)
                    idle = True  # it returns only once idle
                    break
                except Exception as e:  # noqa: BLE001 - any stream or dial failure ends this attempt
                    log.debug("inm link to %s failed: %s", peer, e)
                link.ready = trio.Event()
                self.relay.link_down(peer)
                link.failures += 1
                if link.failures > len(RETRY):
                    break
                await trio.sleep(RETRY[link.failures - 1])
        finally:
            if self.links.get(peer) is link:
                del self.links[peer]
                for channel, n in link.queue.dropped.items():
                    self._lost[channel] = self._lost.get(channel, 0) + n
                for _, channel in link.queue.items:
                    self._lost[channel] = self._lost.get(channel, 0) + 1
                    self.dropped.inc(reason="link lost")
                if idle:  # closed for want of traffic: still a member, dialed again when needed
                    self.relay.link_down(peer)
                else:
                    self.relay.link_gone(peer, trio.current_time())

    async def _serve_link(self, link: Link) -> None:
        peer = str(link.peer)
        with trio.fail_after(COMMAND_TIMEOUT * 3):
            await self.connect(link.peer)
            try:
                stream = await self.host.new_stream(link.peer, [self.protocol])
            except Exception:
                self._not_nodes[peer] = trio.current_time() + 300
                raise
        try:
            with trio.fail_after(COMMAND_TIMEOUT):
                await stream.write(frame(self.relay.hello(peer)))
            link.ready.set()
            link.failures = 0
            self._act(self.relay.link_up(peer, trio.current_time()))
            last = -COALESCE
            while True:
                while not link.queue:
                    if link.closing:
                        return
                    link.wake = trio.Event()
                    with trio.move_on_after(router.LINK_IDLE) as waited:
                        await link.wake.wait()
                    if (waited.cancelled_caught and not link.kept and not link.queue
                            and not self.table.member_anywhere(peer)):
                        self.links_closed.inc(reason="idle")
                        return  # a link only messages or commands opened: closed once idle, so links do not pile up
                # At most one write per COALESCE seconds: each write costs a Yamux frame, a Noise
                # message and a syscall, which at one envelope per write was most of a busy
                # publisher node's CPU (profile in docs/benchmarks.md).
                await trio.sleep_until(last + COALESCE)
                batch = link.queue.take()
                last = trio.current_time()
                try:
                    await stream.write(b"".join(frame for frame, _ in batch))
                except BaseException:
                    link.queue.give_back(batch)
                    raise
        finally:
            with trio.move_on_after(1):
                try:
                    await stream.reset()
                except Exception:  # noqa: BLE001
                    pass

    async def _handle_stream(self, stream: INetStream) -> None:
        """A neighbour's outbound stream: its handshake, then its envelopes."""
        peer = str(stream.muxed_conn.peer_id)
        framed = FramedStream(stream, max_size=256 * 1024 + 16)
        with trio.fail_after(COMMAND_TIMEOUT):
            raw = await framed.read()
        if not self.relay.accept_handshake(peer, raw, trio.current_time()):
            self.dropped.inc(reason="handshake refused")
            await stream.reset()
            return
        if peer not in self.links and not self._room():
            self.dropped.inc(reason="too many links")
            await stream.reset()
            return
        self.inbound.add(peer)
        self._link(peer)  # our own stream back
        try:
            while (raw := await framed.read()) is not None:
                try:
                    inm = decode(raw)
                except DecodeError as e:
                    self.dropped.inc(reason="malformed")
                    log.debug("inm from %s: %s", peer, e)
                    continue
                actions = self.relay.receive(inm, peer, trio.current_time())
                if actions and type(actions[0]) is CutLink:
                    self.dropped.inc(reason="link cut")
                    await stream.reset()
                    return
                self._act(actions)
        finally:
            self.inbound.discard(peer)

    # ---- the core's actions ----

    def _act(self, actions: list[RelayAction]) -> None:
        if self.relay.mesh.rescheduled:  # a gap or heartbeat due sooner than the timer sleeps
            self.relay.mesh.rescheduled = False
            self._timer_wake.set()
        for action in actions:
            if isinstance(action, SendEnvelope):
                self._forward(action)
            elif isinstance(action, Deliver):
                text = client_frames.message(action.channel, action.message, action.nonce)
                for client_id in action.clients:
                    if (client := self.clients.get(client_id)) is not None:  # type: ignore[arg-type]
                        self._to_client(client, text)
            elif isinstance(action, Answer):
                if (client := self.clients.get(action.client)) is not None:  # type: ignore[arg-type]
                    reason, nonce = action.reason, action.nonce or None
                    self._to_client(client, client_frames.failure(nonce, reason) if reason else client_frames.ok(nonce))
            elif isinstance(action, ToClient):
                if (client := self.clients.get(action.client)) is not None:  # type: ignore[arg-type]
                    self._to_client(client, client_frames.response(None, action.data))
            elif isinstance(action, DhtGet):
                self._spawn(self._get, action)
            elif isinstance(action, DhtPut):
                self._spawn(self._put, action)
            elif isinstance(action, FindProviders):
                self._spawn(self._providers, action)
            elif isinstance(action, Provide):
                self._spawn(self.records.provide, action.key)
            elif isinstance(action, Unprovide):
                self.records.unprovide(action.key)
            elif isinstance(action, AnswerLocally):
                self._spawn(self._answer_locally, action.inm)

    async def _get(self, get: DhtGet) -> None:
        try:
            values = [value for _, value in (await self.records.get_value(get.key)).values]
        except Exception as e:  # noqa: BLE001 - a failed lookup finds nothing
            log.debug("channel record lookup failed: %s", e)
            values = []
        self._act(get.then(values, trio.current_time()))

    async def _providers(self, find: FindProviders) -> None:
        try:
            providers = [str(ID(p.peer_id)) for p in (await self.records.get_providers(find.key)).providers]
        except Exception as e:  # noqa: BLE001 - a failed lookup finds no one
            log.debug("channel members lookup failed: %s", e)
            providers = []
        self._act(find.then(providers, trio.current_time()))

    async def _put(self, put: DhtPut) -> None:
        try:
            await self.records.put_value(put.key, put.value)
        except RecordError as e:  # ours, refused by our own store: a bug, or a clock far off
            self.dropped.inc(reason="reservation refused")
            log.warning("channel reservation refused by the local store: %s", e)

    def _forward(self, send: SendEnvelope) -> None:
        try:
            data = frame(send.inm.encode())
        except DecodeError:
            self.dropped.inc(reason="too large")
            return
        now = trio.current_time()
        for target in send.targets:
            link = self._link(target)
            if link is None:
                self.dropped.inc(reason="no link")
            elif link.queue.put(data, send.channel):
                link.used = now
                link.wake.set()

    async def _answer_locally(self, inm: Inm) -> None:
        """The commands whose answers are this process's figures."""
        name = inm.data["command"]
        if name == "node-stats":
            answer = self.node_stats()
        elif name == "host-stats":
            answer = self.host_stats.report()
        else:  # get-latency
            target = inm.data.get("node")
            latency = await self.latency(target) if isinstance(target, str) and target in self.relay.neighbours else None
            answer = ({"ok": True, "latency": round(latency * 1000, 3)} if latency is not None
                      else {"ok": False, "reason": "target not connected"})
        self._act(self.relay.reply(inm, answer, trio.current_time()))

    # ---- the INM bus other protocols use (InmBus) ----

    def send(self, inm: Inm, channel: str = "") -> None:
        """Send an envelope we made: unicast (dialing if needed) or "*" to every neighbour."""
        self._act(self.relay.send(inm, trio.current_time(), channel))

    async def command(self, node: str, data: dict, timeout: float = COMMAND_TIMEOUT) -> dict:
        """Send a command to one node and wait for its response's data."""
        got: list[object] = []
        done = trio.Event()

        def on_response(inm: Inm, now: float) -> None:
            got.append(inm.data)
            done.set()

        self._act(self.relay.command(node, data, trio.current_time(), on_response, timeout))
        with trio.move_on_after(timeout):
            await done.wait()
        if not got:
            raise DialError(f"no response from {node} to {data.get('command')}")
        return got[0] if isinstance(got[0], dict) else {}

    def register(self, command: str, handler: CommandHandler) -> None:
        self.relay.register(command, handler)

    def notify(self, node: str, data: dict) -> None:
        self._act(self.relay.notify(node, data, trio.current_time()))

    def broadcast(self, data: dict, on_response: Callable[[Inm], None] | None = None, answered: bool = True) -> None:
        handler = (lambda inm, now: on_response(inm)) if on_response else None
        self._act(self.relay.broadcast(data, trio.current_time(), handler, answered))

    # ---- local clients (WS /connect) ----

    def publish(self, client: Client, name: str, message: str, nonce: str) -> str | None:
        reason, actions = self.relay.publish(client.id, name, message, nonce, trio.current_time())
        self._act(actions)
        return reason

    def _to_client(self, client: Client, text: str) -> None:
        try:
            client.send.send_nowait(text)
            self.delivered.inc()
        except trio.WouldBlock:
            client.dropped += 1
            self.client_drops.inc()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    def new_client(self) -> tuple[Client, trio.MemoryReceiveChannel[str]]:
        send, receive = trio.open_memory_channel[str](self.client_queue)
        client = Client(next(self._client_ids), send)
        self.clients[client.id] = client
        return client, receive

    def drop_client(self, client: Client) -> None:
        """The client is gone: what still waited in its queue is lost, and counted."""
        unsent = client.send.statistics().current_buffer_used
        client.dropped += unsent
        self.client_drops.inc(unsent)
        if self.clients.pop(client.id, None) is not None:
            self._client_drops_gone += client.dropped
        client.send.close()
        self._act(self.relay.drop_client(client.id, trio.current_time()))

    async def handle_client_frame(self, client: Client, text: str | bytes) -> str | None:
        """One frame from a client; the response to send back (None for none)."""
        try:
            request = client_frames.decode_request(text)
        except client_frames.ClientError as e:
            return client_frames.failure(e.nonce, str(e))
        now = trio.current_time()
        if request.command == "list":
            return client_frames.response(request.nonce, {"channels": sorted(self.table.channels)})
        if request.command == "send":
            if not client.send_bucket.allow(now):
                return client_frames.failure(request.nonce, "rate limited")
            reason = self.publish(client, request.channel, request.message, request.nonce or new_nonce())
        elif request.command == "unsubscribe":
            reason, actions = self.relay.unsubscribe(client.id, request.channel, now)
            self._act(actions)
        else:
            if not client.subscribe_bucket.allow(now):
                return client_frames.failure(request.nonce, "rate limited")
            secret = await trio.to_thread.run_sync(channel_secret, request.channel, request.password)
            if client.id in self.clients:  # answered by an Answer action, maybe after a DHT lookup
                self._act(self.relay.subscribe(client.id, request.channel, secret, request.nonce or "", trio.current_time()))
            return None
        return client_frames.failure(request.nonce, reason) if reason else client_frames.ok(request.nonce)

    # ---- stats and health ----

    def node_stats(self) -> dict:
        now = trio.current_time()
        open_here = self.table.open_here()
        return {
            "relay": {
                "channels": open_here,
                "clients": len(self.clients),
                "channel_connections": {name: len(self.table.subscribers(name)) for name in open_here},
            },
            "network": self.relay.traffic.summary(now),
            "channels": {name: self.relay.channel_traffic.get(name, Traffic()).summary(now) for name in open_here},
            "dropped": {  # an addition to WSRelay: what slow clients and links lost
                "clients": sum(c.dropped for c in self.clients.values()) + self._client_drops_gone,
                "links": self.link_drops(),
            },
        }

    async def latency(self, peer: str) -> float | None:
        try:
            with trio.fail_after(COMMAND_TIMEOUT):
                rtt = await self.ping(ID.from_base58(peer))
        except Exception:  # noqa: BLE001 - unreachable or slow: no figure
            return None
        link = self.links.get(peer)
        if link is not None:
            link.samples.append(rtt)
        return rtt

    def health(self) -> tuple[str, str] | None:
        """WSRelay's channel reasons, most serious first; None when none applies."""
        if self.table.open_here() and not self.clients:
            return "bad", "channels no clients"
        if self.expects_peers and not self.relay.neighbours:
            return "degraded", "no peers"
        if len(self.clients) > 3 and not self.table.open_here():
            return "degraded", "clients no channels"
        if any(link.slow() for link in self.links.values()):
            return "degraded", "high latency"
        return None

    # ---- background ----

    def _spawn(self, fn, *args) -> None:
        if self._nursery is not None:
            self._nursery.start_soon(fn, *args)

    async def _timers(self) -> None:
        """The relay's timers (responses that lapsed, lookups due, mesh heartbeats and gaps):
        asleep until the next is due, at most TIMER_STEP, and woken when the mesh schedules one
        sooner (a gap waits a fraction of a second). An idle node sleeps."""
        while True:
            now = trio.current_time()
            when = self.relay.next_timer()
            if when is not None and when <= now:
                self._act(self.relay.tick(now))
                continue
            self._timer_wake = trio.Event()
            with trio.move_on_at(now + TIMER_STEP if when is None else min(when, now + TIMER_STEP)):
                await self._timer_wake.wait()

    async def _maintain(self) -> None:
        """Keep `want` neighbours among connected peers."""
        while True:
            now = trio.current_time()
            self._not_nodes = {p: t for p, t in self._not_nodes.items() if t > now}
            if len(self.links) < self.want:
                candidates = [str(p) for p in self.peers()]
                random.shuffle(candidates)
                for peer in candidates:
                    if len(self.links) >= self.want:
                        break
                    if peer not in self.links and peer not in self._not_nodes and (link := self._link(peer)) is not None:
                        link.kept = True
            await trio.sleep(1.0 if len(self.links) < self.want else MAINTAIN_EVERY)

    async def _measure(self) -> None:
        while True:
            self.host_stats.sample(trio.current_time())
            for peer in self.neighbours():
                await self.latency(peer)
            await trio.sleep(min(LATENCY_EVERY, HOST_SAMPLE))
