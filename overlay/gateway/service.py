"""The Degas message service on the overlay: every node is a client gateway (`WS /gateway`,
session.py) and hosts service instances (`WS /service`); the overlay carries the messages
between the client's node and the instance's node. The whole picture, and how it departs from
Degas: docs/protocols/degas.md.

An instance registers its degas_id on its node, which announces it in the DHT (a provider
record under degas_key); a gateway finds the instance's node there. A degas_id that another
connected instance holds is refused (an error frame, DEGAS_ID_TAKEN; the connection stays and
the holder keeps its messages) until that instance disconnects; the same connection registering
its own degas_id again is answered `registered` again. An authenticated client's
node announces the account the same way (account_key), so an instance can reach clients that
have not written to it yet.

Between nodes these are intra-node messages (overlay/channels/PROTOCOL.md), not answered, so a
client's messages stay in order without a round trip each:

    {"command": "gateway-forward", "degas_id": b64, "account_id": b64, "payload": b64,
     "challenge": str, "signature": b64}
        gateway node -> instance node. The client's own signature of a challenge naming the
        gateway node vouches that the account is connected there: a node cannot speak for an
        account that never authenticated at it.
    {"command": "gateway-to-client", "degas_id": b64, "account_id": b64, "payload": b64}
        instance node -> each gateway node of the account. Taken only from a node that the DHT
        names as the host of degas_id.
    {"command": "gateway-error", "to": "client" | "instance", "degas_id": b64, "account_id": b64,
     "code": int (degas.proto ERROR_CODE), "reason": str}
        back to the sender: no such instance (UNKNOWN_DEGAS, DEGAS_GONE), or no connection of the
        account (CLIENT_GONE); delivered to the account's connections or to the instance.

Every socket's outgoing frames wait in a bounded queue; what does not fit is dropped and counted,
as is every message refused between nodes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import secrets
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import trio
from libp2p.peer.id import ID

from overlay.channels.inm import Inm, InmBus
from overlay.gateway import degas_pb2 as pb
from overlay.gateway.session import (
    DEGAS_ID_SIZE,
    MAX_CLIENT_FRAME,
    MAX_PAYLOAD,
    Bound,
    ClientSession,
    Code,
    Forward,
    GatewayClose,
    GatewayReply,
    Recover,
    challenge_text,
    client_error,
    error,
    parse_degas,
    recover_address,
)
from overlay.core.metrics import Registry, offer
from overlay.kademlia.lookup import LookupResult

log = logging.getLogger(__name__)

FORWARD, TO_CLIENT, ERROR = "gateway-forward", "gateway-to-client", "gateway-error"
SOCKET_QUEUE = 256  # frames waiting for one socket
LOCATE_TIMEOUT = 15.0
LOCATED_FOR = 60.0  # seconds a found instance node is used before asking the DHT again
MAX_ROUTES = 100_000  # accounts whose gateway nodes an instance node remembers
MAX_VOUCHED = 10_000  # verified (gateway, account, signature) proofs kept
MAX_GONE = 10_000
MAX_ACCOUNT_ID = 64
MAX_UNVERIFIED = 256  # messages held per (node, degas_id) while the DHT is asked about them
MAX_UNCONFIRMED_HOSTS = 64  # (node, degas_id) pairs being asked about at once


def degas_key(degas_id: bytes) -> bytes:
    return hashlib.sha256(b"/overlay/degas/instance/" + degas_id).digest()


def account_key(account_id: bytes) -> bytes:
    return hashlib.sha256(b"/overlay/degas/account/" + account_id).digest()


def internal(**kwargs) -> bytes:
    return pb.GatewayInternalMessage(**kwargs).SerializeToString()


@dataclass(eq=False)
class Socket:
    """One client or instance connection: its outgoing frames wait in `send`."""

    send: trio.MemorySendChannel[bytes]
    session: ClientSession | None = None  # clients
    degas_id: bytes = b""  # instances, once registered


class Unreachable(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code


class ProviderRecords(Protocol):
    """The DHT's provider records, as the gateway announces and finds instances and accounts."""

    async def provide(self, key: bytes) -> object: ...

    def unprovide(self, key: bytes) -> None: ...

    async def get_providers(self, key: bytes) -> LookupResult: ...


class Gateway:
    def __init__(self, bus: InmBus, dht: ProviderRecords, connect: Callable[[ID], Awaitable[object]], metrics: Registry,
                 recover: Recover = recover_address) -> None:
        """`bus`: the node's INM links; `dht`: where instances and accounts are announced;
        `connect`: dial a node by peer ID (the node's DHT lookup and dial strategy)."""
        self.bus = bus
        self.dht = dht
        self.connect = connect
        self.me = bus.me
        self.recover = recover
        self.clients: dict[bytes, set[Socket]] = {}  # account -> its connections here
        self.instances: dict[bytes, Socket] = {}  # degas_id -> the instance here
        self.gone: OrderedDict[bytes, None] = OrderedDict()  # instances that were here and left
        self.located: dict[bytes, tuple[str, float]] = {}  # degas_id -> (node, until)
        self.routes: OrderedDict[bytes, set[str]] = OrderedDict()  # account -> gateway nodes it wrote from
        self.vouched: OrderedDict[tuple[str, bytes, bytes], None] = OrderedDict()
        # gateway-to-client messages from a node not yet confirmed as the instance's host: (account, frame)
        self.held: dict[tuple[str, bytes], list[tuple[bytes, bytes]]] = {}
        self._nursery: trio.Nursery | None = None
        self.dropped = metrics.counter("overlay_gateway_dropped_total", "Degas messages dropped, by reason")
        self.forwarded = metrics.counter("overlay_gateway_forwarded_total", "Client messages delivered to instances here")
        self.to_clients = metrics.counter("overlay_gateway_to_clients_total", "Instance messages delivered to clients here")
        metrics.gauge("overlay_gateway_clients", "Authenticated client connections", lambda: sum(map(len, self.clients.values())))
        metrics.gauge("overlay_gateway_instances", "Degas instances registered here", lambda: len(self.instances))
        bus.register(FORWARD, self._on_forward)
        bus.register(TO_CLIENT, self._on_to_client)
        bus.register(ERROR, self._on_error)

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    def _spawn(self, fn, *args) -> None:
        if self._nursery is not None:
            self._nursery.start_soon(fn, *args)

    async def _announce(self, key: bytes) -> None:
        """A provider record for `key`, which the DHT then keeps republishing until unprovided."""
        with trio.move_on_after(LOCATE_TIMEOUT):
            await self.dht.provide(key)

    def open_socket(self, client: bool) -> tuple[Socket, trio.MemoryReceiveChannel[bytes]]:
        send, receive = trio.open_memory_channel[bytes](SOCKET_QUEUE)
        session = ClientSession(self.me, secrets.token_bytes(32), self.recover) if client else None
        return Socket(send, session), receive

    def close_socket(self, sock: Socket) -> None:
        if sock.session is not None and sock.session.account_id in self.clients:
            account = sock.session.account_id
            self.clients[account].discard(sock)
            if not self.clients[account]:
                del self.clients[account]
                self.dht.unprovide(account_key(account))
        if sock.degas_id and self.instances.get(sock.degas_id) is sock:
            del self.instances[sock.degas_id]
            self._remember(self.gone, sock.degas_id, None, MAX_GONE)
            self.dht.unprovide(degas_key(sock.degas_id))
        sock.send.close()

    # ---- clients (WS /gateway) ----

    async def client_frame(self, sock: Socket, frame: bytes | None) -> tuple[bytes, GatewayClose] | None:
        """One frame from a client (None: a text frame). Returns the last frame and the close
        when the connection must end; everything else goes to the socket's queue."""
        assert sock.session is not None
        now = trio.current_time()
        actions = sock.session.on_text() if frame is None else sock.session.on_frame(frame, now)
        for i, action in enumerate(actions):
            if isinstance(action, GatewayReply):
                if i + 1 < len(actions) and isinstance(actions[i + 1], GatewayClose):
                    return action.frame, actions[i + 1]
                self._put(sock, action.frame)
            elif isinstance(action, Bound):
                if action.account_id not in self.clients:
                    self._spawn(self._announce, account_key(action.account_id))
                self.clients.setdefault(action.account_id, set()).add(sock)
            elif isinstance(action, Forward):
                await self._forward(sock, action)
        return None

    async def _forward(self, sock: Socket, forward: Forward) -> None:
        account = sock.session.account_id
        local = self.instances.get(forward.degas_id)
        if local is not None:
            self._deliver_to_instance(local, account, forward.payload)
            return
        try:
            node = await self._locate(forward.degas_id)
        except Unreachable as e:
            self._put(sock, client_error(e.code, str(e), forward.degas_id, account))
            return
        challenge, signature = sock.session.proof
        self.bus.notify(node, {"command": FORWARD, "degas_id": _b64(forward.degas_id), "account_id": _b64(account),
                                "payload": _b64(forward.payload), "challenge": challenge, "signature": _b64(signature)})

    async def _locate(self, degas_id: bytes) -> str:
        """The node hosting instance `degas_id`: a recent answer, or the DHT's providers that we
        can connect to."""
        node, until = self.located.get(degas_id, ("", 0.0))
        if node and until > trio.current_time():
            return node
        providers = await self._providers(degas_key(degas_id))
        if not providers:
            raise Unreachable(Code.UNKNOWN_DEGAS, "no instance with this degas_id is announced")
        for provider in providers:
            with trio.move_on_after(LOCATE_TIMEOUT):
                try:
                    await self.connect(ID.from_base58(provider))
                except Exception as e:  # noqa: BLE001 - any failure to reach it: try the next
                    log.debug("degas instance host %s: %s", provider, e)
                    continue
                self.located[degas_id] = (provider, trio.current_time() + LOCATED_FOR)
                return provider
        raise Unreachable(Code.DEGAS_UNREACHABLE, "the instance's node cannot be reached")

    async def _providers(self, key: bytes) -> list[str]:
        with trio.move_on_after(LOCATE_TIMEOUT):
            result = await self.dht.get_providers(key)
            return [str(ID(p.peer_id)) for p in result.providers if str(ID(p.peer_id)) != self.me]
        return []

    # ---- instances (WS /service) ----

    async def instance_frame(self, sock: Socket, frame: bytes) -> None:
        if len(frame) > MAX_CLIENT_FRAME:
            self._put(sock, internal(error=error(Code.PAYLOAD_TOO_LARGE, f"frame over {MAX_CLIENT_FRAME} bytes")))
            return
        try:
            message = parse_degas(frame)
        except ValueError as e:
            self._put(sock, internal(error=error(Code.MALFORMED, str(e))))
            return
        kind = message.WhichOneof("payload")
        if kind == "register":
            self._register(sock, message.register.degas_id)
            return
        to_client = message.degas_to_client
        account, payload = to_client.account_id, to_client.payload
        if not sock.degas_id:
            self._put(sock, internal(error=error(Code.NOT_AUTHENTICATED, "register a degas_id first")))
        elif not 0 < len(account) <= MAX_ACCOUNT_ID:
            self._put(sock, internal(error=error(Code.MALFORMED, f"account_id must be 1-{MAX_ACCOUNT_ID} bytes")))
        elif len(payload) > MAX_PAYLOAD:
            self._put(sock, internal(error=error(Code.PAYLOAD_TOO_LARGE, f"payload over {MAX_PAYLOAD} bytes", account_id=account)))
        else:
            await self._to_client(sock, account, payload)

    def _register(self, sock: Socket, degas_id: bytes) -> None:
        if len(degas_id) != DEGAS_ID_SIZE:
            self._put(sock, internal(error=error(Code.MALFORMED, f"degas_id must be {DEGAS_ID_SIZE} bytes")))
        elif sock.degas_id == degas_id:
            self._put(sock, internal(registered=pb.DegasRegisteredMessage(degas_id=degas_id)))
        elif sock.degas_id:
            self._put(sock, internal(error=error(Code.MALFORMED, "this connection is registered already", sock.degas_id)))
        elif degas_id in self.instances:
            self.dropped.inc(reason="degas_id taken")
            self._put(sock, internal(error=error(Code.DEGAS_ID_TAKEN, "another instance here has this degas_id", degas_id)))
        else:
            sock.degas_id = degas_id
            self.instances[degas_id] = sock
            self.gone.pop(degas_id, None)
            self._spawn(self._announce, degas_key(degas_id))
            self._put(sock, internal(registered=pb.DegasRegisteredMessage(degas_id=degas_id)))

    async def _to_client(self, sock: Socket, account: bytes, payload: bytes) -> None:
        frame = pb.GatewayMessage(degas=pb.GatewayDegasMessage(degas_id=sock.degas_id, payload=payload)).SerializeToString()
        reached = self._deliver_to_clients(account, frame)
        gateways = self.routes.get(account)
        if not gateways and not reached:  # an account that has not written here: the DHT knows its gateways
            for gateway in await self._providers(account_key(account)):
                self._remember(self.routes, account, None, MAX_ROUTES, add=gateway)
            gateways = self.routes.get(account)
        for gateway in gateways or ():
            self.bus.notify(gateway, {"command": TO_CLIENT, "degas_id": _b64(sock.degas_id),
                                       "account_id": _b64(account), "payload": _b64(payload)})
        if not reached and not gateways:
            self._put(sock, internal(error=error(Code.CLIENT_GONE, "no connection of this account is open", account_id=account)))

    # ---- from other nodes ----

    def _on_forward(self, inm: Inm) -> None:
        try:
            degas_id, account, payload = (_unb64(inm.data, k) for k in ("degas_id", "account_id", "payload"))
            challenge, signature = inm.data.get("challenge"), _unb64(inm.data, "signature")
            if not isinstance(challenge, str) or len(payload) > MAX_PAYLOAD:
                raise ValueError("challenge or payload")
        except (ValueError, AttributeError):
            self.dropped.inc(reason="malformed")
            return None
        if not self._vouched(inm.source, account, challenge, signature):
            self.dropped.inc(reason="not vouched")
            return None
        instance = self.instances.get(degas_id)
        if instance is None:
            code = Code.DEGAS_GONE if degas_id in self.gone else Code.UNKNOWN_DEGAS
            self.bus.notify(inm.source, _error("client", code, "no such instance at its node", degas_id, account))
            return None
        self._remember(self.routes, account, None, MAX_ROUTES, add=inm.source)
        self._deliver_to_instance(instance, account, payload)
        return None

    def _vouched(self, gateway: str, account: bytes, challenge: str, signature: bytes) -> bool:
        """The account signed a challenge of `gateway`'s (checked once per proof)."""
        key = (gateway, account, signature)
        if key in self.vouched:
            return True
        if challenge.split("\n", 1)[0] != challenge_text(gateway, b"").split("\n", 1)[0]:
            return False
        try:
            address = self.recover(challenge, signature)
        except ValueError:
            return False
        if bytes.fromhex(address[2:]) != account:
            return False
        self._remember(self.vouched, key, None, MAX_VOUCHED)
        return True

    def _on_to_client(self, inm: Inm) -> None:
        try:
            degas_id, account, payload = (_unb64(inm.data, k) for k in ("degas_id", "account_id", "payload"))
            if len(degas_id) != DEGAS_ID_SIZE or len(payload) > MAX_PAYLOAD:
                raise ValueError("sizes")
        except (ValueError, AttributeError):
            self.dropped.inc(reason="malformed")
            return None
        frame = pb.GatewayMessage(degas=pb.GatewayDegasMessage(degas_id=degas_id, payload=payload)).SerializeToString()
        node, until = self.located.get(degas_id, ("", 0.0))
        if node == inm.source and until > trio.current_time():
            self._client_or_gone(inm.source, degas_id, account, frame)
            return None
        key = (inm.source, degas_id)
        held = self.held.get(key)
        if held is None and len(self.held) >= MAX_UNCONFIRMED_HOSTS:
            self.dropped.inc(reason="unconfirmed host, queue full")
            return None
        if held is None:
            held = self.held[key] = []
            self._spawn(self._confirm_host, inm.source, degas_id)
        if len(held) >= MAX_UNVERIFIED:
            self.dropped.inc(reason="unconfirmed host, queue full")
        else:
            held.append((account, frame))
        return None

    async def _confirm_host(self, node: str, degas_id: bytes) -> None:
        """Messages for clients that name an instance are taken only from the node that the
        DHT names as its host; until that is known they wait, in order."""
        confirmed = node in await self._providers(degas_key(degas_id))
        held = self.held.pop((node, degas_id), [])
        if confirmed:
            self.located[degas_id] = (node, trio.current_time() + LOCATED_FOR)
        for account, frame in held:
            if confirmed:
                self._client_or_gone(node, degas_id, account, frame)
            else:
                self.dropped.inc(reason="not the instance's host")

    def _client_or_gone(self, node: str, degas_id: bytes, account: bytes, frame: bytes) -> None:
        if not self._deliver_to_clients(account, frame):
            self.bus.notify(node, _error("instance", Code.CLIENT_GONE, "no connection of this account is open here",
                                                   degas_id, account))

    def _on_error(self, inm: Inm) -> None:
        try:
            degas_id, account = _unb64(inm.data, "degas_id"), _unb64(inm.data, "account_id")
            to, code, reason = inm.data["to"], Code.Value(Code.Name(inm.data["code"])), str(inm.data["reason"])[:200]
        except (ValueError, AttributeError, KeyError, TypeError):
            self.dropped.inc(reason="malformed")
            return None
        if to == "client" and self.located.get(degas_id, ("",))[0] == inm.source:  # we sent it there
            del self.located[degas_id]
            frame = client_error(code, reason, degas_id, account)
            for sock in list(self.clients.get(account, ())):
                self._put(sock, frame)
        elif to == "instance" and code == Code.CLIENT_GONE and inm.source in self.routes.get(account, ()):
            self.routes[account].discard(inm.source)
            instance = self.instances.get(degas_id)
            if instance is not None:
                self._put(instance, internal(error=error(code, reason, degas_id, account)))
        else:
            self.dropped.inc(reason="unexpected error report")
        return None

    # ---- delivery ----

    def _deliver_to_instance(self, instance: Socket, account: bytes, payload: bytes) -> None:
        forward = pb.GatewayForwardMessage(account_id=account, payload=payload)
        if self._put(instance, internal(client_message=forward)):
            self.forwarded.inc()

    def _deliver_to_clients(self, account: bytes, frame: bytes) -> int:
        reached = 0
        for sock in list(self.clients.get(account, ())):
            reached += self._put(sock, frame)
        self.to_clients.inc(reached)
        return reached

    def _put(self, sock: Socket, frame: bytes) -> bool:
        return offer(sock.send, frame, self.dropped, "socket")

    @staticmethod
    def _remember(table: OrderedDict, key, value, limit: int, add: str | None = None) -> None:
        """Insert into a bounded table, oldest out first (`add`: into the set held under key)."""
        if add is not None:
            table.setdefault(key, set()).add(add)
        else:
            table[key] = value
        table.move_to_end(key)
        while len(table) > limit:
            table.popitem(last=False)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(data: dict, key: str) -> bytes:
    value = data.get(key)
    if not isinstance(value, str) or len(value) > 2 * MAX_PAYLOAD:
        raise ValueError(f"{key} must be base64")
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error:
        raise ValueError(f"{key} is not base64") from None


def _error(to: str, code: int, reason: str, degas_id: bytes, account: bytes) -> dict:
    return {"command": ERROR, "to": to, "degas_id": _b64(degas_id), "account_id": _b64(account), "code": int(code), "reason": reason}
