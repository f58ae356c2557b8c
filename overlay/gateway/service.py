"""The Degas message service on the overlay: every node is a client gateway (`WS /gateway`,
session.py) and hosts service instances (`WS /service`); the overlay carries the messages
between the client's node and the instance's node. The whole picture, and how it departs from
Degas: docs/protocols/degas.md.

An instance registers its degas_id on its node (its host), which claims it in the DHT with a
signed host record (hosts.py: first come, kept while the instance stays, released when it
leaves); a gateway believes only such a record, as most of the DHT's stores hold it. A degas_id
that another connected instance holds is refused (an error frame, DEGAS_ID_TAKEN; the
connection stays and the holder keeps its messages) until that instance disconnects, and so,
after `registered`, is one that another node's claim holds; the same connection registering its
own degas_id again is answered `registered` again. An authenticated client's node announces the
account with a provider record (account_key): a hint only, believed for a node once it shows
the account's proof naming it.

Between nodes these are intra-node messages (overlay/channels/PROTOCOL.md), each believed only
from its Noise-authenticated source or with its signature:

    {"command": "gateway-forward", "degas_id": b64, "account_id": b64, "payload": b64,
     "challenge": str, "signature": b64, "seq": int}
        gateway node -> instance node, not answered (so a client's messages follow each other
        without a round trip each). `challenge` and `signature`: the client's proof (proofs.py),
        which must name the sending node; `seq` numbers the connection's forwarded messages
        from 1, and each is taken once (ProofBook).
    {"command": "gateway-to-client", "degas_id": b64, "account_id": b64, "payload": b64}
        instance node -> each gateway node of the account, not answered. Taken only from the
        node that the DHT's host record names for degas_id.
    {"command": "gateway-account", "account_id": b64}  ->  {"challenge": str, "signature": b64} | {}
        instance node -> a node that the DHT names for an account that has not written to the
        instance: the proof of a live connection of the account there, if there is one.
    {"command": "gateway-error", "to": "client" | "instance", "degas_id": b64, "account_id": b64,
     "code": int (degas.proto ERROR_CODE), "reason": str}
        back to the sender: no such instance (UNKNOWN_DEGAS, DEGAS_GONE), or no connection of the
        account (CLIENT_GONE); delivered to the account's connections or to the instance.

Every socket's outgoing frames wait in a bounded queue; what does not fit is dropped and counted,
as is every message refused between nodes (`overlay_gateway_dropped_total{reason}`).
"""

from __future__ import annotations

import base64
import binascii
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from libp2p.peer.id import ID

from overlay.channels.inm import Inm, InmBus
from overlay.core.errors import OverlayError
from overlay.core.records import peer_id_from_public_key
from overlay.gateway import degas_pb2 as pb
from overlay.gateway.hosts import KEEP, HostRecord, account_key, host_key, resolve, seal_host_record
from overlay.gateway.proofs import MAX_SEQ, ProofBook
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
    client_error,
    error,
    parse_degas,
    recover_address,
)
from overlay.core.metrics import Registry, offer
from overlay.kademlia.lookup import LookupResult

log = logging.getLogger(__name__)

FORWARD, TO_CLIENT, ERROR, ACCOUNT = "gateway-forward", "gateway-to-client", "gateway-error", "gateway-account"
SOCKET_QUEUE = 256  # frames waiting for one socket
LOCATE_TIMEOUT = 15.0
LOCATED_FOR = 60.0  # seconds a found instance node is used before asking the DHT again
MAX_ROUTES = 100_000  # accounts whose gateway nodes an instance node remembers
MAX_ASKED = 8  # nodes the DHT names for an account that are asked for its proof
MAX_GONE = 10_000
MAX_ACCOUNT_ID = 64
MAX_UNVERIFIED = 256  # messages held per (node, degas_id) while the DHT is asked about them
MAX_UNCONFIRMED_HOSTS = 64  # (node, degas_id) pairs being asked about at once


def internal(**kwargs) -> bytes:
    return pb.GatewayInternalMessage(**kwargs).SerializeToString()


@dataclass(eq=False)
class Socket:
    """One client or instance connection: its outgoing frames wait in `send`."""

    send: trio.MemorySendChannel[bytes]
    session: ClientSession | None = None  # clients
    seq: int = 0  # clients: the last sequence number forwarded to another node
    degas_id: bytes = b""  # instances, once registered


class Unreachable(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code


class DhtRecords(Protocol):
    """The DHT as the gateway uses it: host records (values) for instances, provider records
    for accounts."""

    async def put_value(self, key: bytes, value: bytes) -> object: ...

    async def get_value(self, key: bytes) -> LookupResult: ...

    async def provide(self, key: bytes) -> object: ...

    def unprovide(self, key: bytes) -> None: ...

    async def get_providers(self, key: bytes) -> LookupResult: ...


class Gateway:
    def __init__(self, bus: InmBus, dht: DhtRecords, connect: Callable[[ID], Awaitable[object]], metrics: Registry,
                 key: Ed25519PrivateKey, recover: Recover = recover_address, wall: Callable[[], float] = time.time) -> None:
        """`bus`: the node's INM links; `dht`: where instances and accounts are announced;
        `connect`: dial a node by peer ID (the node's DHT lookup and dial strategy); `key`: the
        node's identity key, which signs its host records (and nothing else here)."""
        self.bus = bus
        self.dht = dht
        self.connect = connect
        self.me = bus.me
        self.key = key
        self.me_id = peer_id_from_public_key(key.public_key())
        self.recover = recover
        self.wall = wall
        self.proofs = ProofBook(recover)
        self._stamp = 0  # the last wall-clock ms put in a host record of ours
        self.clients: dict[bytes, set[Socket]] = {}  # account -> its connections here
        self.instances: dict[bytes, Socket] = {}  # degas_id -> the instance here
        self.gone: OrderedDict[bytes, None] = OrderedDict()  # instances that were here and left
        self.located: dict[bytes, tuple[str, float]] = {}  # degas_id -> (node, until)
        self.routes: OrderedDict[bytes, set[str]] = OrderedDict()  # account -> gateway nodes it wrote from
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
        bus.register(ACCOUNT, self._on_account)

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

    async def _store(self, key: bytes, value: bytes) -> None:
        with trio.move_on_after(LOCATE_TIMEOUT):
            try:
                await self.dht.put_value(key, value)
            except OverlayError as e:  # an invalid record (a bug of ours), or no peer to ask
                log.debug("host record not stored: %s", e)

    def _host_record(self, degas_id: bytes, released: bool = False) -> bytes:
        """Our signed claim (or release) of `degas_id`, each later than the last."""
        self._stamp = max(int(self.wall() * 1000), self._stamp + 1)
        return seal_host_record(HostRecord(degas_id, self.me_id, self._stamp, released), self.key)

    def open_socket(self, client: bool) -> tuple[Socket, trio.MemoryReceiveChannel[bytes]]:
        send, receive = trio.open_memory_channel[bytes](SOCKET_QUEUE)
        session = ClientSession(self.me, self.recover) if client else None
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
            self._spawn(self._store, host_key(sock.degas_id), self._host_record(sock.degas_id, released=True))
        sock.send.close()

    # ---- clients (WS /gateway) ----

    async def client_frame(self, sock: Socket, frame: bytes | None) -> tuple[bytes, GatewayClose] | None:
        """One frame from a client (None: a text frame). Returns the last frame and the close
        when the connection must end; everything else goes to the socket's queue."""
        assert sock.session is not None
        actions = sock.session.on_text() if frame is None else sock.session.on_frame(frame, self.wall())
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
        sock.seq += 1
        self.bus.notify(node, {"command": FORWARD, "degas_id": _b64(forward.degas_id), "account_id": _b64(account),
                                "payload": _b64(forward.payload), "challenge": challenge, "signature": _b64(signature),
                                "seq": sock.seq})

    async def _locate(self, degas_id: bytes) -> str:
        """The node hosting instance `degas_id`: a recent answer, or the one the DHT's host
        record names, if we can connect to it."""
        node, until = self.located.get(degas_id, ("", 0.0))
        if node and until > trio.current_time():
            return node
        record = await self._host_of(degas_id)
        if record is None:
            raise Unreachable(Code.UNKNOWN_DEGAS, "no instance with this degas_id is announced")
        if record.released or (record.host == self.me_id and degas_id in self.gone):
            raise Unreachable(Code.DEGAS_GONE, "the instance has left its node")
        if record.host == self.me_id:
            raise Unreachable(Code.UNKNOWN_DEGAS, "no instance with this degas_id is announced")
        host = ID(record.host)
        with trio.move_on_after(LOCATE_TIMEOUT):
            try:
                await self.connect(host)
            except Exception as e:  # noqa: BLE001 - any failure to reach it is the same answer
                log.debug("degas instance host %s: %s", host, e)
            else:
                self.located[degas_id] = (str(host), trio.current_time() + LOCATED_FOR)
                return str(host)
        raise Unreachable(Code.DEGAS_UNREACHABLE, "the instance's node cannot be reached")

    async def _host_of(self, degas_id: bytes) -> HostRecord | None:
        """The host record most of the DHT's stores hold for `degas_id` (None: none, or no
        answer in time); the valid records of other claims are counted as outvoted."""
        with trio.move_on_after(LOCATE_TIMEOUT):
            key = host_key(degas_id)
            result = await self.dht.get_value(key)
            record, outvoted = resolve((value for _, value in result.values), key, int(self.wall() * 1000))
            if outvoted:
                self.dropped.inc(outvoted, reason="host record outvoted")
            return record
        return None

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
            self._spawn(self._host, sock, degas_id)
            self._put(sock, internal(registered=pb.DegasRegisteredMessage(degas_id=degas_id)))

    async def _host(self, sock: Socket, degas_id: bytes) -> None:
        """Claim `degas_id` in the DHT, and put the claim again every KEEP seconds while the
        instance stays. Once the DHT's stores hold another node's claim (it came first), the
        registration is undone and the instance told DEGAS_ID_TAKEN."""
        key, claim = host_key(degas_id), self._host_record(degas_id)
        while self.instances.get(degas_id) is sock:
            await self._store(key, claim)
            record = await self._host_of(degas_id)
            if self.instances.get(degas_id) is not sock:
                return
            if record is not None and record.host != self.me_id and not record.released:
                del self.instances[degas_id]
                sock.degas_id = b""
                self.dropped.inc(reason="degas_id hosted elsewhere")
                self._put(sock, internal(error=error(Code.DEGAS_ID_TAKEN, "another node hosts this degas_id", degas_id)))
                return
            await trio.sleep(KEEP)

    async def _to_client(self, sock: Socket, account: bytes, payload: bytes) -> None:
        frame = pb.GatewayMessage(degas=pb.GatewayDegasMessage(degas_id=sock.degas_id, payload=payload)).SerializeToString()
        reached = self._deliver_to_clients(account, frame)
        gateways = self.routes.get(account)
        if not gateways and not reached:  # an account that has not written here: the DHT knows its gateways
            for gateway in await self._vouched_gateways(account, sock.degas_id):
                self._remember(self.routes, account, None, MAX_ROUTES, add=gateway)
            gateways = self.routes.get(account)
        for gateway in gateways or ():
            self.bus.notify(gateway, {"command": TO_CLIENT, "degas_id": _b64(sock.degas_id),
                                       "account_id": _b64(account), "payload": _b64(payload)})
        if not reached and not gateways:
            self._put(sock, internal(error=error(Code.CLIENT_GONE, "no connection of this account is open", account_id=account)))

    async def _vouched_gateways(self, account: bytes, degas_id: bytes) -> list[str]:
        """The nodes the DHT names for `account` that show its proof naming them (a provider
        record is anyone's claim; the account's signature is evidence)."""
        vouched: list[str] = []

        async def ask(node: str) -> None:
            try:
                answer = await self.bus.command(node, {"command": ACCOUNT, "account_id": _b64(account)}, LOCATE_TIMEOUT)
                challenge, signature = answer.get("challenge"), _unb64(answer, "signature")
                if not isinstance(challenge, str):
                    raise ValueError("no proof")
            except (OverlayError, ValueError):
                self.dropped.inc(reason="account not vouched")
                return
            reason = self.proofs.check(node, account, degas_id, challenge, signature, self.wall())
            if reason is None:
                vouched.append(node)
            else:
                self.dropped.inc(reason=reason)

        async with trio.open_nursery() as nursery:
            for node in (await self._providers(account_key(account)))[:MAX_ASKED]:
                nursery.start_soon(ask, node)
        return vouched

    # ---- from other nodes ----

    def _on_forward(self, inm: Inm) -> None:
        try:
            degas_id, account, payload = (_unb64(inm.data, k) for k in ("degas_id", "account_id", "payload"))
            challenge, signature, seq = inm.data.get("challenge"), _unb64(inm.data, "signature"), inm.data.get("seq")
            if not isinstance(challenge, str) or len(payload) > MAX_PAYLOAD:
                raise ValueError("challenge or payload")
            if not isinstance(seq, int) or isinstance(seq, bool) or not 0 < seq < MAX_SEQ:
                raise ValueError("seq")
        except (ValueError, AttributeError):
            self.dropped.inc(reason="malformed")
            return None
        reason = self.proofs.check(inm.source, account, degas_id, challenge, signature, self.wall(), seq)
        if reason is not None:
            self.dropped.inc(reason=reason)
            return None
        instance = self.instances.get(degas_id)
        if instance is None:
            code = Code.DEGAS_GONE if degas_id in self.gone else Code.UNKNOWN_DEGAS
            self.bus.notify(inm.source, _error("client", code, "no such instance at its node", degas_id, account))
            return None
        self._remember(self.routes, account, None, MAX_ROUTES, add=inm.source)
        self._deliver_to_instance(instance, account, payload)
        return None

    def _on_account(self, inm: Inm) -> dict:
        """The proof of a live connection of the account here, for an instance's node to check."""
        try:
            account = _unb64(inm.data, "account_id")
        except (ValueError, AttributeError):
            self.dropped.inc(reason="malformed")
            return {}
        now = self.wall()
        for sock in self.clients.get(account, ()):
            if sock.session.proof_expires > now:
                challenge, signature = sock.session.proof
                return {"challenge": challenge, "signature": _b64(signature)}
        return {}

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
        DHT's host record names; until that is known they wait, in order."""
        record = await self._host_of(degas_id)
        confirmed = record is not None and not record.released and str(ID(record.host)) == node
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
