"""The channel relay on the network: INM links between nodes, the ten commands, local clients.

The trio adapter around the cores (table.py, router.py): it owns the streams, the tasks and
the clocks; every decision is the cores'. PROTOCOL.md in this directory is the wire format.

Links. Each node keeps an INM link to each neighbour: our outbound stream carries our envelopes
to it (one writer task draining the link's bounded queue, at most one write per COALESCE), its
outbound stream carries its envelopes to us. A node seeks `want` neighbours among the peers it
is connected to (its bootstraps and DHT peers) and accepts up to `max_links`; a destination that
is not a neighbour is dialed by peer ID and becomes one.

Why channel messages go by direct fan-out from the publisher's node (one unicast per node where
the channel is open) and not by gossipsub or a tree, measured with benchmarks/channels.py (10
node processes on one 2-core machine, docs/benchmarks.md):
- py-libp2p's gossipsub, with its limits lifted, sustained 20 msg/s; this sustained 500 msg/s
  (p99 24 ms). Gossipsub sends each message to D mesh peers per hop, N*D copies where we send
  N-1, verifies every RPC, and reaches nodes without subscribers.
- Order and exactly-once come for free: one publisher's messages to one node share one link,
  which is FIFO, and each node gets one copy.
- A tree would spread the publisher node's writes over more nodes, but the limit measured is the
  whole machine's CPU (about 170 us per message in every receiving node, mostly py-libp2p's
  stream layers and the WebSocket send), which a tree does not reduce; it would add a hop of
  latency. Worth revisiting for channels open on hundreds of nodes.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import logging
import random
import secrets
import statistics
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio
from libp2p.custom_types import TProtocol
from libp2p.network.stream.net_stream import INetStream
from libp2p.peer.id import ID

from overlay.channels import client as client_frames
from overlay.channels.inm import BROADCAST, CommandHandler, Inm, decode, new_nonce
from overlay.channels.router import InmRouter, LinkQueue
from overlay.channels.stats import HOST_SAMPLE, WINDOWS, HostStats, Traffic
from overlay.channels.table import REFRESH, ChannelTable, Reservation, hash_password, valid_channel_name, valid_hash
from overlay.core.errors import DecodeError, DialError
from overlay.core.framing import frame
from overlay.core.jsonwire import loads
from overlay.core.metrics import Registry
from overlay.core.ratelimit import TokenBucket
from overlay.transport.framed import FramedStream
from overlay.transport.host import StreamHost

log = logging.getLogger(__name__)

COMMAND_TIMEOUT = 5.0
TOKEN_TTL = 60.0
MAX_TOKENS = 1024
HIGH_LATENCY = 0.010  # seconds, WSRelay's "high latency"
LATENCY_EVERY = 15.0
MAINTAIN_EVERY = 5.0
CLIENT_QUEUE = 1024  # messages waiting for one slow client
RETRY = (0.5, 1.0, 2.0, 5.0)  # reconnect delays of a link with envelopes waiting
COALESCE = 0.010  # seconds between two writes on one link
ANNOUNCE = "channel-open"  # extension: where a channel is open (no response)
OWN_COMMANDS = frozenset({ANNOUNCE, "get-connection-token", "list-nodes", "list-channels", "list-reserved-channels",
                          "reserve-channel", "unreserve-channel", "node-stats", "host-stats", "get-node-connection",
                          "get-latency"})


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


class ChannelService:
    def __init__(self, me: str, host: StreamHost, connect: Callable[[ID], Awaitable[object]],
                 peers: Callable[[], list[ID]], ping: Callable[[ID], Awaitable[float]], network: str, metrics: Registry,
                 want: int = 8, max_links: int = 64, token: str = "", expects_peers: bool = False) -> None:
        """`me`: this node's peer ID; `host`: streams to peers; `connect`: dial a peer by ID;
        `peers`: the peers connected now (candidate neighbours); `ping`: a round trip to one, in
        seconds; `expects_peers`: bootstraps are configured, so no neighbour is a health problem."""
        self.me = me
        self.host = host
        self.connect = connect
        self.peers = peers
        self.ping = ping
        self.expects_peers = expects_peers
        self.protocol = inm_protocol(network)
        self.want = want
        self.max_links = max_links
        self.network_token = token
        self.table = ChannelTable(self.me)
        self.router = InmRouter(self.me)
        self.links: dict[str, Link] = {}
        self.inbound: set[str] = set()  # peers whose handshake we accepted
        self.clients: dict[int, Client] = {}
        self._handlers: dict[str, CommandHandler] = {}  # other protocols' INM commands (register)
        self._client_ids = itertools.count(1)
        self._client_drops_gone = 0
        self._waiting: dict[str, tuple[float, Callable[[Inm], None]]] = {}
        self._tokens: dict[str, tuple[str, float]] = {}  # token -> (node, expiry)
        self._not_nodes: dict[str, float] = {}  # peers that do not speak INM, until when
        self._lost: dict[str, int] = {}  # drops of links that are gone, by channel
        self.traffic = Traffic()
        self.channel_traffic: dict[str, Traffic] = {}
        self.host_stats = HostStats()
        self._nursery: trio.Nursery | None = None
        self.received = metrics.counter("overlay_inm_received_total", "Intra-node messages received, by type")
        self.dropped = metrics.counter("overlay_inm_dropped_total", "Intra-node messages dropped, by reason")
        self.delivered = metrics.counter("overlay_channel_delivered_total", "Channel messages delivered to local clients")
        self.client_drops = metrics.counter("overlay_channel_client_dropped_total", "Channel messages dropped for slow local clients")
        metrics.gauge("overlay_inm_neighbours", "Nodes with an INM link", lambda: len(self.neighbours()))
        metrics.gauge("overlay_channel_clients", "Local channel clients", lambda: len(self.clients))
        metrics.gauge("overlay_channels_open", "Channels open on this node", lambda: len(self.table.open_here()))
        metrics.gauge("overlay_channels_reserved", "Channels reserved in the network", lambda: len(self.table.channels))
        metrics.gauge("overlay_inm_link_dropped_total", "Envelopes dropped on full link queues",
                      lambda: sum(self.link_drops().values()))
        # node-stats' network figures, the same numbers as the command answers
        for window in WINDOWS:
            metrics.gauge(f"overlay_channel_packets_{window}s", f"Channel messages through this node in the last {window} s",
                          lambda w=window: self.traffic.summary(trio.current_time())["packets"][f"{w}s"])
            metrics.gauge(f"overlay_channel_bandwidth_{window}s_kbytes", f"Channel message kB/s through this node over the last {window} s",
                          lambda w=window: self.traffic.summary(trio.current_time())["bandwidth"][f"{w}s"])

    # ---- lifecycle ----

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.host.set_stream_handler(self.protocol, self._handle_stream)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._maintain)
            nursery.start_soon(self._refresh)
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
        return [p for p, link in self.links.items() if link.ready.is_set()]

    def _link(self, peer: str) -> Link | None:
        link = self.links.get(peer)
        if link is None:
            if len(self.links) >= self.max_links or peer == self.me or self._nursery is None:
                return None
            link = self.links[peer] = Link(ID.from_base58(peer))
            self._nursery.start_soon(self._write_link, link)
        return link

    async def _write_link(self, link: Link) -> None:
        """Our stream to one neighbour: handshake, then batches of queued frames until it fails;
        reconnects while envelopes wait, and gives the link up after len(RETRY) failures."""
        peer = str(link.peer)
        try:
            while link.failures <= len(RETRY):
                try:
                    await self._serve_link(link)
                except Exception as e:  # noqa: BLE001 - any stream or dial failure ends this attempt
                    log.debug("inm link to %s failed: %s", peer, e)
                link.ready = trio.Event()
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
                self.table.forget_node(peer)

    async def _serve_link(self, link: Link) -> None:
        peer = str(link.peer)
        with trio.fail_after(COMMAND_TIMEOUT * 3):
            await self.connect(link.peer)
            try:
                stream = await self.host.new_stream(link.peer, [self.protocol])
            except Exception:
                self._not_nodes[peer] = trio.current_time() + 300
                raise
        hello = {"command": "handshake", "data": {"name": self.me}}
        if self.network_token:
            hello["data"]["token"] = self.network_token
        try:
            with trio.fail_after(COMMAND_TIMEOUT):
                await stream.write(frame(json.dumps(hello).encode()))
            link.ready.set()
            link.failures = 0
            self._spawn(self._onboard, peer)
            last = -COALESCE
            while True:
                while not link.queue:
                    link.wake = trio.Event()
                    await link.wake.wait()
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
        if not self._accept_handshake(peer, raw):
            self.dropped.inc(reason="handshake refused")
            await stream.reset()
            return
        if peer not in self.links and len(self.links) >= self.max_links:
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
                self._receive(inm, peer)
        finally:
            self.inbound.discard(peer)

    def _accept_handshake(self, peer: str, raw: bytes | None) -> bool:
        """The INM link handshake (WSRelay's `WS /node` one): the name must be the
        Noise-authenticated peer, and the token the network's (when one is configured) or one
        issued to that name."""
        try:
            hello = loads(raw or b"", "INM link hello")
            data = hello["data"]
            name, token = data["name"], data.get("token", "")
        except (DecodeError, TypeError, KeyError):
            return False
        if hello.get("command") != "handshake" or name != peer:
            return False
        if not self.network_token:
            return True
        if secrets.compare_digest(str(token), self.network_token):
            return True
        issued = self._tokens.pop(str(token), None)
        return issued is not None and issued[0] == peer and issued[1] > trio.current_time()

    # ---- envelopes ----

    def send(self, inm: Inm, channel: str = "") -> None:
        """Send an envelope we made: unicast (dialing if needed) or "*" to every neighbour."""
        route = self.router.route(inm, None, self.neighbours(), trio.current_time())
        self._forward(inm, route.forward, channel)

    def _forward(self, inm: Inm, targets: tuple[str, ...], channel: str = "") -> None:
        if not targets:
            return
        try:
            data = frame(inm.encode())
        except DecodeError:
            self.dropped.inc(reason="too large")
            return
        for target in targets:
            link = self._link(target)
            if link is None:
                self.dropped.inc(reason="no link")
            elif link.queue.put(data, channel):
                link.wake.set()

    def _receive(self, inm: Inm, came_from: str) -> None:
        now = trio.current_time()
        if inm.source == self.me:
            self.dropped.inc(reason="own")
            return
        route = self.router.route(inm, came_from, self.neighbours(), now)
        if route.dropped:
            self.dropped.inc(reason=route.dropped)
            return
        self._forward(inm, route.forward)
        if route.handle:
            self.received.inc(type=inm.type)
            try:
                if inm.type == "message":
                    self._on_message(inm)
                elif inm.type == "command":
                    self._on_command(inm)
                else:
                    self._on_response(inm)
            except (KeyError, TypeError, ValueError, AttributeError) as e:
                self.dropped.inc(reason="bad data")
                log.debug("inm %s from %s: bad data: %s", inm.type, inm.source, e)

    async def command(self, node: str, data: dict, timeout: float = COMMAND_TIMEOUT) -> dict:
        """Send a command to one node and wait for its response's data."""
        got: list[dict] = []
        done = trio.Event()

        def on_response(inm: Inm) -> None:
            got.append(inm.data)
            done.set()

        nonce = new_nonce()
        self._waiting[nonce] = (trio.current_time() + timeout, on_response)
        try:
            self.send(Inm(self.me, node, "command", nonce, data))
            with trio.fail_after(timeout):
                await done.wait()
        except trio.TooSlowError:
            raise DialError(f"no response from {node} to {data.get('command')}") from None
        finally:
            self._waiting.pop(nonce, None)
        return got[0] if isinstance(got[0], dict) else {}

    def register(self, command: str, handler: CommandHandler) -> None:
        """Another protocol's INM command: `handler` takes each one addressed here and returns
        the response's data, or None for no response. One handler per command."""
        if command in self._handlers or command in OWN_COMMANDS:
            raise ValueError(f"INM command {command!r} is taken")
        self._handlers[command] = handler

    def notify(self, node: str, data: dict) -> None:
        """A command to one node that is not answered (the receiver may send one of its own)."""
        self.send(Inm(self.me, node, "command", new_nonce(), data))

    def broadcast(self, data: dict, on_response: Callable[[Inm], None] | None = None, answered: bool = True) -> None:
        """A command to every node, each once; their responses go to `on_response` for
        COMMAND_TIMEOUT seconds (announcements and `answered=False` commands have none)."""
        nonce = new_nonce()
        if answered and data.get("command") != ANNOUNCE:
            self._waiting[nonce] = (trio.current_time() + COMMAND_TIMEOUT, on_response or (lambda inm: None))
        self.send(Inm(self.me, BROADCAST, "command", nonce, data))

    def _on_response(self, inm: Inm) -> None:
        waiting = self._waiting.get(inm.nonce)
        if waiting is None:
            self.dropped.inc(reason="unexpected response")
            return
        waiting[1](inm)

    # ---- commands (WSRelay's, and the channel-open announcement) ----

    def _on_command(self, inm: Inm) -> None:
        data = inm.data
        name = data.get("command") if isinstance(data, dict) else None
        if name == ANNOUNCE:
            self._on_announce(inm.source, data)
            return
        if name in self._handlers:  # other protocols' commands (MessageNet, Degas)
            reply = self._handlers[name](inm)
            if reply is not None:
                self.send(inm.reply(self.me, reply))
            return
        handler = {
            "get-connection-token": self._cmd_token,
            "list-nodes": lambda inm: {"nodes": sorted(self.neighbours())},
            "list-channels": lambda inm: {"channels": self.table.listing(open_only=True)},
            "list-reserved-channels": lambda inm: {"channels": self.table.listing(open_only=False)},
            "reserve-channel": self._cmd_reserve,
            "unreserve-channel": self._cmd_unreserve,
            "node-stats": lambda inm: self.node_stats(),
            "host-stats": lambda inm: self.host_stats.report(),
        }.get(name)
        if name in ("get-node-connection", "get-latency"):
            self._spawn(self._answer_async, inm, name)
        elif handler is None:
            self.send(inm.reply(self.me, {"ok": False, "reason": "unknown command"}))
        else:
            self.send(inm.reply(self.me, handler(inm)))

    async def _answer_async(self, inm: Inm, name: str) -> None:
        target = inm.data.get("node")
        if not isinstance(target, str) or target not in self.neighbours():
            answer = {"ok": False, "reason": "target not connected"}
        elif name == "get-latency":
            latency = await self.latency(target)
            answer = {"ok": True, "latency": round(latency * 1000, 3)} if latency is not None else {"ok": False, "reason": "target not connected"}
        else:
            try:
                token = await self.command(target, {"command": "get-connection-token", "node": inm.source})
                answer = {"ok": True, "host": f"/p2p/{target}", "token": token["token"]}
            except (DialError, KeyError):
                answer = {"ok": False, "reason": "target not connected"}
        self.send(inm.reply(self.me, answer))

    def _cmd_token(self, inm: Inm) -> dict:
        """A one-time token that lets `node` (only) complete the INM handshake with us."""
        node = inm.data.get("node")
        if not isinstance(node, str):
            return {"ok": False, "reason": "node missing"}
        now = trio.current_time()
        self._tokens = {t: v for t, v in self._tokens.items() if v[1] > now}
        while len(self._tokens) >= MAX_TOKENS:
            self._tokens.pop(next(iter(self._tokens)))
        token = secrets.token_urlsafe(24)
        self._tokens[token] = (node, now + TOKEN_TTL)
        return {"token": token}

    def _reservation(self, source: str, data: dict) -> tuple[str, Reservation]:
        name, password = data["channel"], data.get("password", "")
        if not valid_channel_name(name) or not valid_hash(password):
            raise ValueError("invalid channel or password hash")
        owner, at = data.get("owner", source), data.get("at")
        if not isinstance(owner, str) or not isinstance(at, int):
            owner, at = source, int(time.time() * 1000)  # a WSRelay-style command without our fields
        return name, Reservation(at, owner, password)

    def _cmd_reserve(self, inm: Inm) -> dict:
        name, reservation = self._reservation(inm.source, inm.data)
        reason, change = self.table.reserve(name, reservation, trio.current_time())
        self._apply(name, change)
        return {"ok": False, "reason": reason} if reason else {"ok": True}

    def _cmd_unreserve(self, inm: Inm) -> dict:
        reason = self.table.unreserve(inm.data["channel"], trio.current_time())
        return {"ok": False, "reason": reason} if reason else {"ok": True}

    def _on_announce(self, source: str, data: dict) -> None:
        name, reservation = self._reservation(source, data)
        change = self.table.announce(source, name, reservation, bool(data.get("open")), trio.current_time())
        self._apply(name, change)

    def _announce(self, name: str, is_open: bool) -> None:
        reservation = self.table.reservation(name)
        if reservation is not None:
            self.broadcast({"command": ANNOUNCE, "open": is_open, **reservation.to_json(name)})

    def _apply(self, name: str, change) -> None:
        """Act on a table change: announce, evict, unreserve."""
        for client_id in change.evicted:
            client = self.clients.get(client_id)
            if client is not None:
                self._to_client(client, client_frames.response(None, {"ok": False, "reason": "channel reserved elsewhere", "channel": name}))
        if change.reserved is not None:
            self.broadcast({"command": "reserve-channel", **change.reserved.to_json(name)})
        if change.opened:
            self._announce(name, True)
        if change.closed:
            self._announce_closed(name)

    def _announce_closed(self, name: str) -> None:
        reservation = self.table.reservation(name)
        if reservation is None:
            return
        self.broadcast({"command": ANNOUNCE, "open": False, **reservation.to_json(name)})
        if self.table.open_elsewhere(name):
            return
        # As WSRelay asks: a node that still has clients refuses, and we reserve again.
        def on_answer(inm: Inm) -> None:
            if isinstance(inm.data, dict) and inm.data.get("reason") == "channel still open":
                self.table.reserve(name, reservation, trio.current_time())
                self.broadcast({"command": "reserve-channel", **reservation.to_json(name)})

        if not self.table.subscribers(name):
            self.table.unreserve(name, trio.current_time())
            self.broadcast({"command": "unreserve-channel", "channel": name}, on_answer)

    async def _onboard(self, peer: str) -> None:
        """WSRelay's onboarding: take the new neighbour's open and reserved channels."""
        now = trio.current_time
        try:
            open_ = await self.command(peer, {"command": "list-channels"})
            reserved = await self.command(peer, {"command": "list-reserved-channels"})
        except DialError:
            return
        for listing, is_open in ((open_.get("channels", []), True), (reserved.get("channels", []), False)):
            for item in listing if isinstance(listing, list) else []:
                try:
                    name, reservation = self._reservation(peer, {"channel": item["name"], **item})
                except (KeyError, TypeError, ValueError):
                    self.dropped.inc(reason="bad listing")
                    continue
                if is_open:
                    self._apply(name, self.table.announce(peer, name, reservation, True, now()))
                else:
                    self._apply(name, self.table.reserve(name, reservation, now())[1])

    # ---- channel messages ----

    def _on_message(self, inm: Inm) -> None:
        name, text = inm.data["channel"], inm.data["message"]
        if not isinstance(name, str) or not isinstance(text, str):
            raise ValueError("channel and message must be strings")
        try:
            message = base64.b64decode(text, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise ValueError("message is not base64 of UTF-8") from None
        nonce = inm.data.get("nonce", inm.nonce)
        self._count(name, len(message))
        self._deliver(name, message, nonce if isinstance(nonce, str) else inm.nonce, sender=None)

    def publish(self, client: Client, name: str, message: str, nonce: str) -> str | None:
        """A local client sends to a channel: its other local subscribers, then each node where
        the channel is open, one unicast each over that node's link (so in order)."""
        if not self.table.subscribed(client.id, name):
            return "not subscribed"
        self._count(name, len(message))
        self._deliver(name, message, nonce, sender=client.id)
        data = {"message": base64.b64encode(message.encode()).decode(), "channel": name, "nonce": nonce}
        for node in self.table.open_elsewhere(name):  # each envelope its own nonce: clients reuse theirs
            self.send(Inm(self.me, node, "message", new_nonce(), data), channel=name)
        return None

    def _deliver(self, name: str, message: str, nonce: str, sender: int | None) -> None:
        subscribers = self.table.subscribers(name)
        if not subscribers:
            return
        text = client_frames.message(name, message, nonce)
        for client_id in subscribers:
            if client_id != sender and (client := self.clients.get(client_id)) is not None:
                self._to_client(client, text)

    def _to_client(self, client: Client, text: str) -> None:
        try:
            client.send.send_nowait(text)
            self.delivered.inc()
        except trio.WouldBlock:
            client.dropped += 1
            self.client_drops.inc()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    def _count(self, name: str, size: int) -> None:
        now = trio.current_time()
        self.traffic.record(now, size)
        traffic = self.channel_traffic.get(name)
        if traffic is None:
            if len(self.channel_traffic) >= 1000:
                self.channel_traffic = {n: t for n, t in self.channel_traffic.items() if n in self.table.channels}
            traffic = self.channel_traffic[name] = Traffic()
        traffic.record(now, size)

    # ---- local clients (WS /connect) ----

    def new_client(self) -> tuple[Client, trio.MemoryReceiveChannel[str]]:
        send, receive = trio.open_memory_channel[str](CLIENT_QUEUE)
        client = Client(next(self._client_ids), send)
        self.clients[client.id] = client
        return client, receive

    def drop_client(self, client: Client) -> None:
        if self.clients.pop(client.id, None) is not None:
            self._client_drops_gone += client.dropped
        client.send.close()
        for name in self.table.drop_client(client.id, trio.current_time()):
            self._announce_closed(name)

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
            return client_frames.failure(request.nonce, reason) if reason else client_frames.ok(request.nonce)
        if request.command == "unsubscribe":
            reason, change = self.table.unsubscribe(client.id, request.channel, now)
            self._apply(request.channel, change)
            return client_frames.failure(request.nonce, reason) if reason else client_frames.ok(request.nonce)
        if not client.subscribe_bucket.allow(now):
            return client_frames.failure(request.nonce, "rate limited")
        hashed = await trio.to_thread.run_sync(hash_password, request.channel, request.password)
        if client.id not in self.clients:
            return None
        reason, change = self.table.subscribe(client.id, request.channel, hashed, trio.current_time(), int(time.time() * 1000))
        self._apply(request.channel, change)
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
            "network": self.traffic.summary(now),
            "channels": {name: self.channel_traffic.get(name, Traffic()).summary(now) for name in open_here},
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
        if self.expects_peers and not self.neighbours():
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

    async def _maintain(self) -> None:
        """Keep `want` neighbours among connected peers; expire waiting responses."""
        while True:
            now = trio.current_time()
            self._waiting = {n: w for n, w in self._waiting.items() if w[0] > now}
            self._not_nodes = {p: t for p, t in self._not_nodes.items() if t > now}
            if len(self.links) < self.want:
                candidates = [str(p) for p in self.peers()]
                random.shuffle(candidates)
                for peer in candidates:
                    if len(self.links) >= self.want:
                        break
                    if peer not in self.links and peer not in self._not_nodes:
                        self._link(peer)
            await trio.sleep(1.0 if len(self.links) < self.want else MAINTAIN_EVERY)

    async def _refresh(self) -> None:
        """Re-announce open channels and expire what lapsed (table.py's soft state)."""
        while True:
            await trio.sleep(REFRESH * random.uniform(0.8, 1.0))
            for name in self.table.expire(trio.current_time()):
                self._announce(name, True)

    async def _measure(self) -> None:
        while True:
            self.host_stats.sample(trio.current_time())
            for peer in self.neighbours():
                await self.latency(peer)
            await trio.sleep(min(LATENCY_EVERY, HOST_SAMPLE))
