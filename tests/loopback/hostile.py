"""Hostile peers of our own making for attack tests: each its own identity and libp2p host,
speaking the node's real wire protocols, dialing from any address of the loopback network 127/8
(so per-IP and per-network limits can be tried on one machine)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable

import multiaddr
import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo as Libp2pPeerInfo
from libp2p.protocol_muxer.multiselect_client import MultiselectClient
from libp2p.protocol_muxer.multiselect_communicator import MultiselectCommunicator
from libp2p.transport.tcp.tcp import TCP

from overlay.core.peer import PeerInfo
from overlay.kademlia.io import kad_protocol
from overlay.kademlia.wire import MAX_MESSAGE_SIZE, Message, MessageType, decode_message, encode_message
from overlay.transport.framed import FramedStream
from overlay.transport.host import build_host
from tests.loopback.nodeproc import Proc

SINK = TProtocol("/test/sink/1.0.0")
CHUNK = 32 * 1024


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def target(node: Proc, transport: str) -> tuple[str, int]:
    """(host, port) of the node's TCP or WebSocket listener."""
    addr = next(a for a in node.addrs if ("ws" in a.split("/")) == (transport == "ws"))
    return addr.split("/")[2], int(addr.split("/")[4])


class Peer:
    """A peer of our own making: its own key and libp2p host, dialing from `source` (an address
    of the loopback network 127/8) when given."""

    def __init__(self, source: str = "", listen: bool = False) -> None:
        """`listen`: also take connections, at `source` (so the node can dial it)."""
        self.listen = [multiaddr.Multiaddr(f"/ip4/{source or '127.0.0.1'}/tcp/0")] if listen else []
        self.host = build_host(Ed25519PrivateKey.generate(), self.listen)
        self.id = self.host.get_id()
        if source:
            tcp = next(t for t in self.host.get_network().transport_manager.get_transports() if isinstance(t, TCP))

            async def dial(maddr: multiaddr.Multiaddr) -> object:
                return await tcp.dial_with_source(maddr, (source, 0))

            tcp.dial = dial

    async def connect(self, node: Proc) -> None:
        """Over TCP (the node may listen on WebSocket too)."""
        tcp = next(a for a in node.addrs if "ws" not in a.split("/"))
        await self.host.connect(Libp2pPeerInfo(ID.from_base58(node.peer_id), [multiaddr.Multiaddr(tcp)]))

    async def stream(self, node: Proc) -> FramedStream:
        return FramedStream(await self.host.new_stream(ID.from_base58(node.peer_id), [kad_protocol(node.network)]),
                            MAX_MESSAGE_SIZE)

    def serve_dht(self, network: str) -> None:
        """Answer the node's DHT requests as a server with nothing to tell: a PING with a PING,
        anything else with an empty answer of its type (so the node takes it for a DHT server)."""

        async def serve(stream) -> None:
            framed = FramedStream(stream, MAX_MESSAGE_SIZE)
            while (data := await framed.read()) is not None:
                await framed.write(encode_message(Message(decode_message(data).type)))

        self.host.set_stream_handler(kad_protocol(network), serve)

    async def ask(self, node: Proc, request: Message) -> Message:
        """One request on a new stream, and the node's answer."""
        stream = await self.stream(node)
        await stream.write(encode_message(request))
        with trio.fail_after(10):
            answer = decode_message(await stream.read())
        await stream.close()
        return answer

    async def _run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with self.host.run(self.listen):
            task_status.started()
            await trio.sleep_forever()

    def provider(self, addrs: tuple[bytes, ...]) -> tuple[PeerInfo, ...]:
        return (PeerInfo(self.id.to_bytes(), addrs),)

    async def put(self, node: Proc, request: Message) -> bool:
        """One PUT_VALUE; whether the node answered it as stored (with the echo of the record)."""
        return (await self.ask(node, request)).record == request.record


@contextlib.asynccontextmanager
async def running(peers: Iterable[Peer]) -> AsyncIterator[None]:
    """The peers' hosts, each run by a task of one nursery: a failure while they run shows as
    itself, not under one exception group per host (as nested `host.run` contexts do)."""
    async with trio.open_nursery() as nursery:
        for peer in peers:
            await nursery.start(peer._run)
        yield
        nursery.cancel_scope.cancel()


class SilentFlood:
    """TCP connections that send nothing, from `sources` in turn: at most `held` open at once and
    `rate` new ones a second; each is opened again as soon as the node drops it."""

    def __init__(self, address: tuple[str, int], sources: list[str], held: int = 300, rate: float = 100) -> None:
        self.target, self.sources, self.held, self.rate = address, sources, held, rate
        self.opened = 0
        self.dropped = 0  # closed by the node
        self.open = 0

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            for i in range(self.held):
                nursery.start_soon(self._one, self.sources[i % len(self.sources)], i / self.rate)

    async def _one(self, source: str, delay: float) -> None:
        await trio.sleep(delay)
        while True:
            started = trio.current_time()
            try:
                stream = await trio.open_tcp_stream(*self.target, local_address=source)
            except OSError:
                await trio.sleep(0.1)
                continue
            self.opened += 1
            self.open += 1
            try:
                while await stream.receive_some(4096):
                    pass  # the node sends nothing until we do; EOF when it drops us
                self.dropped += 1
            except trio.BrokenResourceError:
                self.dropped += 1
            finally:
                self.open -= 1
                await stream.aclose()
            # each worker opens at most one a second per `held / rate` seconds
            await trio.sleep_until(started + self.held / self.rate)


async def legitimate_dials(node: Proc, peers: list[Peer]) -> list[float]:
    """Each peer dials in (Noise, Yamux) and is answered a FIND_NODE; seconds each took."""
    took: list[float] = []
    for peer in peers:
        started = trio.current_time()
        with trio.fail_after(10):
            await peer.connect(node)
            stream = await peer.stream(node)
            await stream.write(encode_message(Message(MessageType.FIND_NODE, key=b"k" * 32)))
            assert decode_message(await stream.read()).type is MessageType.FIND_NODE
            await stream.close()
        took.append(trio.current_time() - started)
    return took


def sink(node) -> list[int]:
    """A protocol on `node` that reads its streams to the end; returns the bytes read so far."""
    received = [0]

    async def handler(stream) -> None:
        while data := await stream.read(CHUNK):
            received[0] += len(data)

    node.host.set_stream_handler(SINK, handler)
    return received


async def send(conn, total: int) -> int:
    """Writes up to `total` bytes to the sink at the other end of `conn` (this connection: the
    two may hold a direct one as well); returns how many were written before the stream or its
    connection failed."""
    stream = await conn.new_stream()
    await MultiselectClient().select_one_of([SINK], MultiselectCommunicator(stream), 10)
    written = 0
    try:
        while written < total:
            await stream.write(b"x" * CHUNK)
            written += CHUNK
        await stream.close()
    except Exception:  # noqa: BLE001 - the relay cutting the circuit shows as any of several errors
        pass
    return written
