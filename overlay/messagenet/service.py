"""MessageNet on the overlay: relayers on `WS /relayer`, their messages between nodes.

Between nodes, MessageNet messages are intra-node messages with two commands of their own,
`relayer-deliver` (to one node, answered) and `relayer-broadcast` (to every node, not answered),
registered with the INM bus; so they use the INM links, dialing by peer ID, and the de-duplicated
broadcast that reaches every node once. Signed data is verified before delivery and refused,
counted by reason, when it fails; a message for a known but absent relayer is held for a while,
one for an unknown relayer refused. The commands, the holding rules and the checks are specified
in docs/protocols/messagenet.md.
"""

from __future__ import annotations

import base64
import binascii
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from overlay.channels.inm import MAX_INM, Inm, InmBus
from overlay.core.errors import DecodeError, DialError, RecordError
from overlay.core.metrics import Registry, offer
from overlay.core.records import peer_id_from_public_key, peer_id_from_str, peer_id_to_str
from overlay.core.replay import ReplayWindow
from overlay.messagenet import relayer

log = logging.getLogger(__name__)

DELIVER, BROADCAST = "relayer-deliver", "relayer-broadcast"
UNICAST_TIMEOUT = 10.0
SOCKET_QUEUE = 1024
MAX_CARRIED = MAX_INM - 2048  # a message's data in base64: the rest of its INM envelope (fields, signature) fits beside
MAX_IN_FLIGHT = 64  # unicasts one socket may have waiting for a delivery report


@dataclass(eq=False)
class RelayerSocket:
    """One `WS /relayer` connection: frames to it wait in a bounded channel."""

    send: trio.MemorySendChannel[bytes]
    ids: set[int] = field(default_factory=set)
    in_flight: trio.Semaphore = field(default_factory=lambda: trio.Semaphore(MAX_IN_FLIGHT))


class RelayerService:
    def __init__(self, bus: InmBus, key: Ed25519PrivateKey, metrics: Registry, hold: float = 60.0,
                 max_held: int = 1000, clock: Callable[[], float] = time.time, socket_queue: int = SOCKET_QUEUE) -> None:
        """`bus`: the node's INM links; `key`: its identity key, which signs SignedMessages;
        `clock`: wall-clock seconds, for SignedMessage timestamps; `socket_queue`: frames one
        slow relayer connection may have waiting."""
        self.bus = bus
        self.key = key
        self.peer_id = peer_id_from_public_key(key.public_key())
        self.clock = clock
        self.hold = hold
        self.max_held = max_held
        self.socket_queue = socket_queue
        self.relayers: dict[int, RelayerSocket] = {}
        self.known: set[int] = set()
        self.replays = ReplayWindow(relayer.REPLAY_WINDOW, relayer.MAX_REPLAY_ENTRIES, relayer.MAX_REPLAY_PER_SIGNER)
        self.held: dict[int, deque[tuple[float, bytes]]] = {}
        self.dropped = metrics.counter("overlay_relayer_dropped_total", "MessageNet messages dropped, by reason")
        self.delivered = metrics.counter("overlay_relayer_delivered_total", "MessageNet messages handed to local relayers")
        bus.register(DELIVER, self._on_deliver)
        bus.register(BROADCAST, self._on_broadcast)

    # ---- local relayers ----

    def open_socket(self) -> tuple[RelayerSocket, trio.MemoryReceiveChannel[bytes]]:
        send, receive = trio.open_memory_channel[bytes](self.socket_queue)
        return RelayerSocket(send), receive

    def close_socket(self, sock: RelayerSocket) -> None:
        """The connection is gone: the frames still queued for it are lost, and counted."""
        unsent = sock.send.statistics().current_buffer_used
        if unsent:
            self.dropped.inc(unsent, reason="relayer gone")
        for relayer_id in sock.ids:
            if self.relayers.get(relayer_id) is sock:
                del self.relayers[relayer_id]
        sock.send.close()

    async def handle_frame(self, sock: RelayerSocket, frame: bytes, nursery: trio.Nursery) -> None:
        """One frame from a relayer; answers (errors, delivery reports) go to its queue."""
        try:
            request = relayer.decode_request(frame)
        except DecodeError as e:
            self._to_socket(sock, relayer.error(str(e)))
            return
        if request.action == relayer.REGISTER:
            holder = self.relayers.get(request.relayer_id)
            if holder is not None and holder is not sock:  # a relayer ID is its live holder's alone
                self.dropped.inc(reason="relayer id taken")
                self._to_socket(sock, relayer.error(f"relayer_id {request.relayer_id} is registered by another connection"))
                return
            sock.ids.add(request.relayer_id)
            self.relayers[request.relayer_id] = sock
            self.known.add(request.relayer_id)
            self._flush_held(request.relayer_id)
            return
        data = request.data
        if request.signed:
            recipient = request.node_id if request.unicast else None
            message = relayer.new_message(request.data, self.peer_id, recipient, request.relayer_id, self.clock())
            data = relayer.sign(self.key, message)
        body = {"relayer_id": request.relayer_id, "data": base64.b64encode(data).decode(), "signed": request.signed}
        if len(body["data"]) > MAX_CARRIED:
            self.dropped.inc(reason="too large")
            reason = (f"message too large: {len(body['data'])} bytes in base64, an INM envelope carries at most "
                      f"{MAX_CARRIED}")
            self._to_socket(sock, relayer.delivery(request.id, reason) if request.unicast else relayer.error(reason))
            return
        if not request.unicast:
            self.bus.broadcast({"command": BROADCAST, **body}, answered=False)
            return
        await sock.in_flight.acquire()
        nursery.start_soon(self._unicast, sock, request, body)

    async def _unicast(self, sock: RelayerSocket, request: relayer.RelayerRequest, body: dict) -> None:
        try:
            node = peer_id_to_str(request.node_id)
            if node == self.bus.me:
                answer = self._deliver(node, body)
            else:
                answer = await self.bus.command(node, {"command": DELIVER, **body}, timeout=UNICAST_TIMEOUT)
            error = None if answer.get("ok") else str(answer.get("error", "refused"))
        except DialError:
            error = "peer unreachable"
        finally:
            sock.in_flight.release()
        self._to_socket(sock, relayer.delivery(request.id, error))

    def _to_socket(self, sock: RelayerSocket, frame: bytes) -> bool:
        return offer(sock.send, frame, self.dropped, "relayer")

    # ---- from other nodes ----

    def _on_deliver(self, inm: Inm) -> dict:
        return self._deliver(inm.source, inm.data)

    def _on_broadcast(self, inm: Inm) -> None:
        self._deliver(inm.source, inm.data, broadcast=True)
        return None

    def _deliver(self, sender: str, body: dict, broadcast: bool = False) -> dict:
        relayer_id, signed = body.get("relayer_id"), body.get("signed")
        try:
            if not isinstance(relayer_id, int) or isinstance(relayer_id, bool) or not isinstance(signed, bool):
                raise ValueError("relayer_id and signed")
            data = base64.b64decode(body.get("data", ""), validate=True)
        except (binascii.Error, ValueError, TypeError):
            self.dropped.inc(reason="malformed")
            return {"ok": False, "error": "malformed"}
        if signed:
            try:
                message = relayer.verify(data)
                refused = relayer.accept(message, peer_id_from_str(sender), self.peer_id, broadcast, relayer_id,
                                   self.replays, self.clock())
            except (DecodeError, RecordError) as e:
                log.debug("relayer message from %s: %s", sender, e)
                refused = "bad signature"
            if refused is not None:
                self.dropped.inc(reason=refused)
                return {"ok": False, "error": refused}
        if relayer_id not in self.known:
            self.dropped.inc(reason="no such relayer")
            return {"ok": False, "error": "no such relayer"}
        frame = relayer.to_client(relayer_id, sender, data)
        sock = self.relayers.get(relayer_id)
        if sock is not None:  # connected: queued now, or lost (counted) if it does not keep up
            if not self._to_socket(sock, frame):
                return {"ok": False, "error": "relayer too slow"}
            self.delivered.inc()
            return {"ok": True, "held": False}
        queue = self.held.setdefault(relayer_id, deque())
        self._expire(queue)
        if len(queue) >= self.max_held:
            queue.popleft()
            self.dropped.inc(reason="held too many")
        queue.append((trio.current_time() + self.hold, frame))
        return {"ok": True, "held": True}

    def _expire(self, queue: deque[tuple[float, bytes]]) -> None:
        now = trio.current_time()
        while queue and queue[0][0] < now:
            queue.popleft()
            self.dropped.inc(reason="held too long")

    def _flush_held(self, relayer_id: int) -> None:
        queue = self.held.pop(relayer_id, deque())
        self._expire(queue)
        sock = self.relayers[relayer_id]
        for _, frame in queue:
            if self._to_socket(sock, frame):
                self.delivered.inc()
