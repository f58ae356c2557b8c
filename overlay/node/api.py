"""The local HTTP API (127.0.0.1 by default): health, Prometheus metrics, and the JSON the CLI uses.

Starlette routes served by Hypercorn's trio worker, so the API runs in the node's own event
loop next to the host: a handler can await the DHT directly, no thread or second loop.

| method | path                         | answer                                                  |
|--------|------------------------------|---------------------------------------------------------|
| GET    | /health                      | {"healthy": "good"/"degraded"/"bad", "reason": ...}      |
| GET    | /metrics                     | Prometheus text                                          |
| GET    | /v1/status                   | peer ID, addresses, routing table, bootstraps            |
| GET    | /v1/peers                    | connected peers: path (direct-tcp/direct-udp/relayed), last dial's timings |
| DELETE | /v1/peers/{peer_id}          | close every connection to the peer; {"peer_id", "closed"} |
| GET    | /v1/find/{peer_id}           | {"peer_id", "addrs", "seq", "hops", "lookup_ms"}; 404 when not in the DHT |
| POST   | /v1/ping/{peer_id}?count=N   | {"peer_id", "rtt_ms": [...], "errors": [...]}            |
| GET    | /v1/netcheck                 | reachability, NAT type (STUN), public addresses, signalling registrations |
| POST   | /v1/connect/{peer_id}        | {"peer_id", "path", "lookup_ms", "connect_ms", "first_stream_ms", "rtt_ms"} |
| GET    | /v1/channels                 | node-stats, plus "reserved" (the reservations of channels open here) and "members" (channel -> other member nodes) |
| WS     | /connect                     | WSRelay's client protocol (overlay/channels/client.py)   |
| WS     | /relayer                     | MessageNet relayers, binary frames (overlay/messagenet/relayer.py) |
| WS     | /peermsg                     | Convex typed peer messages for applications (overlay/peermsg/app.py) |
| WS     | /gateway                     | the Degas client gateway, protobuf frames (overlay/gateway/session.py) |
| WS     | /service                     | Degas service instances (overlay/gateway/service.py, degas.proto) |

Every route but `GET /health` needs the API token, and only this API's own Host names and the
allowed Origins get through (overlay/node/apiauth.py). No GET changes state. The five systems
behind the WebSocket routes: docs/protocols/.

Errors are JSON {"error": "..."} with 400 (bad input), 401 (no or wrong token), 403 (foreign Host
or Origin), 404 (not found) or 502 (unreachable).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import multiaddr
import trio
from hypercorn.config import Config as HypercornConfig
from libp2p.peer.id import ID
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from overlay.node.apiauth import ApiGuard, is_loopback, load_or_create_token
from overlay.node.apilimits import IDLE_TIMEOUT, ConnectionGate, WebSocketCap, serve
from overlay.channels import client as client_frames
from overlay.core.errors import DialError, NotFoundError, OverlayError, SelfDialError
from overlay.core.fdlimits import FD_EXHAUSTION, FD_METRIC, FD_METRIC_HELP, api_caps, fd_limit
from overlay.gateway.session import CLOSE_PROTOCOL_ERROR, GatewayClose
from overlay.gateway.session import MAX_CLIENT_FRAME as MAX_GATEWAY_FRAME
from overlay.messagenet.relayer import MAX_RELAYER_FRAME
from overlay.messagenet.relayer import error as relayer_error
from overlay.node.node import Node
from overlay.peermsg.app import MAX_APP_FRAME, decode_app, encode_app
from overlay.core.records import peer_id_from_str

log = logging.getLogger(__name__)

MAX_PING_COUNT = 100
REQUEST_TIMEOUT = 30.0


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _peer_id(request: Request) -> ID:
    return ID(peer_id_from_str(request.path_params["peer_id"]))


def _guarded(handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    """The project's errors as HTTP statuses, and a time bound on every request."""
    async def run(request: Request) -> Response:
        try:
            with trio.fail_after(REQUEST_TIMEOUT):
                return await handler(request)
        except NotFoundError as e:
            return _error(404, str(e))
        except SelfDialError as e:
            return _error(400, str(e))
        except DialError as e:
            return _error(502, str(e))
        except OverlayError as e:
            return _error(400, str(e))
        except trio.TooSlowError:
            return _error(504, f"timed out after {REQUEST_TIMEOUT:.0f}s")

    return run


class Api:
    """The local API's routes, one method each, over the node they serve (the guard in
    apiauth.py and the caps in apilimits.py wrap the whole app)."""

    def __init__(self, node: Node) -> None:
        self.node = node

    async def health(self, request: Request) -> Response:
        return JSONResponse(self.node.health())

    async def metrics(self, request: Request) -> Response:
        return PlainTextResponse(self.node.metrics.render(), media_type="text/plain; version=0.0.4")

    async def status(self, request: Request) -> Response:
        return JSONResponse(self.node.status())

    async def peers(self, request: Request) -> Response:
        return JSONResponse(self.node.peers())

    async def find(self, request: Request) -> Response:
        peer_id = _peer_id(request)
        start = trio.current_time()
        record, hops = await self.node.find_with_hops(peer_id)
        lookup_ms = round((trio.current_time() - start) * 1000, 2)
        addrs = [str(multiaddr.Multiaddr(a)) for a in record.addrs]
        return JSONResponse({"peer_id": str(peer_id), "addrs": addrs, "seq": record.seq, "hops": hops,
                             "lookup_ms": lookup_ms})

    async def ping(self, request: Request) -> Response:
        peer_id = _peer_id(request)
        count_text = request.query_params.get("count", "1")
        if not count_text.isdigit() or not 1 <= int(count_text) <= MAX_PING_COUNT:
            return _error(400, f"count must be a whole number from 1 to {MAX_PING_COUNT}")
        rtts, errors = [], []
        for _ in range(int(count_text)):
            try:
                rtts.append(round(await self.node.ping(peer_id) * 1000, 3))
            except SelfDialError:
                raise
            except DialError as e:
                errors.append(str(e))
        if not rtts:
            raise DialError("; ".join(errors))
        return JSONResponse({"peer_id": str(peer_id), "rtt_ms": rtts, "errors": errors})

    async def netcheck(self, request: Request) -> Response:
        return JSONResponse(await self.node.netcheck())

    async def disconnect(self, request: Request) -> Response:
        peer_id = _peer_id(request)
        closed = len(self.node.host.get_network().get_connections(peer_id))
        await self.node.host.disconnect(peer_id)
        return JSONResponse({"peer_id": str(peer_id), "closed": closed})

    async def connect(self, request: Request) -> Response:
        return JSONResponse(await self.node.first_stream(_peer_id(request)))

    async def channels(self, request: Request) -> Response:
        table = self.node.channels.table
        reserved = [{k: v for k, v in entry.items() if k not in ("verifier", "sig")} | {"protected": bool(entry["verifier"])}
                    for entry in table.listing()]  # the reservations our clients proved
        return JSONResponse({**self.node.channels.node_stats(), "reserved": reserved,
                             "members": {name: table.members(name) for name in table.open_here()}})

    async def channel_client(self, websocket: WebSocket) -> None:
        """One WS /connect client: its frames in order, answers and channel messages out through
        one bounded queue (a client that does not read loses messages, counted, not memory)."""
        await websocket.accept()
        client, outbox = self.node.channels.new_client()

        async def handle(message: dict, nursery: trio.Nursery) -> bool:
            frame = message.get("text") if message.get("text") is not None else message.get("bytes", b"")
            if len(frame) > client_frames.MAX_CLIENT_FRAME:
                await websocket.close(code=1009)  # message too big (RFC 6455)
                return False
            reply = await self.node.channels.handle_client_frame(client, frame)
            if reply is not None:
                await client.send.send(reply)
            return True

        batched = websocket.query_params.get("batch") == "1"
        try:
            await _serve_socket(websocket, outbox, websocket.send_text, handle,
                                combine=client_frames.batch if batched else None, most=client_frames.MAX_BATCH,
                                most_bytes=client_frames.MAX_BATCH_BYTES)
        finally:
            self.node.channels.drop_client(client)

    async def relayer_socket(self, websocket: WebSocket) -> None:
        """One MessageNet relayer connection: binary frames, dispatched on their first byte."""
        await websocket.accept()
        sock, outbox = self.node.relayers.open_socket()

        async def handle(message: dict, nursery: trio.Nursery) -> bool:
            if message.get("bytes") is None:
                await sock.send.send(relayer_error("binary frames only"))
            else:
                await self.node.relayers.handle_frame(sock, message["bytes"], nursery)
            return True

        try:
            await _serve_socket(websocket, outbox, websocket.send_bytes, handle)
        finally:
            self.node.relayers.close_socket(sock)

    async def peermsg_app(self, websocket: WebSocket) -> None:
        """One typed-message application (WS /peermsg, overlay/peermsg/app.py)."""
        await websocket.accept()
        service = self.node.peermsg
        send, outbox = trio.open_memory_channel[str](1024)

        async def handle(message: dict, nursery: trio.Nursery) -> bool:
            text = message.get("text") if message.get("text") is not None else message.get("bytes", b"")
            try:
                request = decode_app(text)
                if request.op == "register":
                    service.register_app(send, request.types)
                    answer = {"op": "registered", "types": sorted(t.name for t in request.types)}
                elif request.op == "send":
                    answer = {"op": "sent", "id": await service.send(request.peer, request.type, request.body)}
                elif request.op == "broadcast":
                    answer = {"op": "sent", "peers": await service.broadcast(request.type, request.body)}
                else:
                    await service.answer_for(send, request.peer, request.ref, request.code, request.body)
                    return True
            except OverlayError as e:  # DecodeError included: a bad frame, or a peer out of reach
                answer = {"op": "error", "error": str(e)}
            await send.send(encode_app(answer))
            return True

        try:
            await _serve_socket(websocket, outbox, websocket.send_text, handle)
        finally:
            service.unregister_app(send)
            send.close()

    async def gateway_socket(self, websocket: WebSocket, client: bool) -> None:
        """A Degas client (`WS /gateway`) or service instance (`WS /service`): binary protobuf
        frames only; a text frame closes the connection with a protocol error."""
        await websocket.accept()
        sock, outbox = self.node.gateway.open_socket(client)

        async def handle(message: dict, nursery: trio.Nursery) -> bool:
            frame = message.get("bytes")
            if client:
                end = await self.node.gateway.client_frame(sock, frame)
            elif frame is None:
                end = (b"", GatewayClose(CLOSE_PROTOCOL_ERROR, "binary frames only"))
            else:
                await self.node.gateway.instance_frame(sock, frame)
                end = None
            if end is None:
                return True
            last, close = end
            if last:
                await websocket.send_bytes(last)
            await websocket.close(close.code, close.reason)
            return False

        try:
            await _serve_socket(websocket, outbox, websocket.send_bytes, handle)
        finally:
            self.node.gateway.close_socket(sock)

    async def gateway_client(self, websocket: WebSocket) -> None:
        await self.gateway_socket(websocket, client=True)

    async def gateway_instance(self, websocket: WebSocket) -> None:
        await self.gateway_socket(websocket, client=False)

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/health", self.health),
            Route("/metrics", self.metrics),
            Route("/v1/status", _guarded(self.status)),
            Route("/v1/peers", _guarded(self.peers)),
            Route("/v1/netcheck", _guarded(self.netcheck)),
            Route("/v1/peers/{peer_id}", _guarded(self.disconnect), methods=["DELETE"]),
            Route("/v1/find/{peer_id}", _guarded(self.find)),
            Route("/v1/ping/{peer_id}", _guarded(self.ping), methods=["POST"]),
            Route("/v1/connect/{peer_id}", _guarded(self.connect), methods=["POST"]),
            Route("/v1/channels", _guarded(self.channels)),
            WebSocketRoute("/connect", self.channel_client),
            WebSocketRoute("/relayer", self.relayer_socket),
            WebSocketRoute("/peermsg", self.peermsg_app),
            WebSocketRoute("/gateway", self.gateway_client),
            WebSocketRoute("/service", self.gateway_instance),
        ]


def build_app(node: Node) -> Starlette:
    return Starlette(routes=Api(node).routes())


async def _serve_socket(
    websocket: WebSocket,
    outbox: trio.MemoryReceiveChannel,
    send: Callable[[Any], Awaitable[None]],
    handle: Callable[[dict, trio.Nursery], Awaitable[bool]],
    combine: Callable[[list], Any] | None = None,
    most: int = 1,
    most_bytes: int = 0,
) -> None:
    """What every API WebSocket does: one task sends what `outbox` yields (all that is queued,
    without parking in between; with `combine`, up to `most` of them and about `most_bytes` as
    one frame), this one hands each message to `handle` until the client leaves or `handle`
    says stop."""

    limit = most if combine is not None else 1

    async def pump() -> None:
        try:
            async for frame in outbox:
                frames, size = [frame], len(frame)
                while True:
                    if len(frames) >= limit or size >= most_bytes:  # without `combine`: each at once
                        await send(combine(frames) if combine else frames[0])
                        frames, size = [], 0
                    try:
                        frame = outbox.receive_nowait()
                    except trio.WouldBlock:
                        break
                    frames.append(frame)
                    size += len(frame)
                if frames:
                    await send(combine(frames) if combine else frames[0])
        except (WebSocketDisconnect, RuntimeError, OSError, trio.EndOfChannel):
            pass

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump)
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect" or not await handle(message, nursery):
                    break
            nursery.cancel_scope.cancel()
    except (WebSocketDisconnect, trio.BrokenResourceError, trio.ClosedResourceError):
        pass


STALLED_CLIENT = 20.0  # seconds a client may leave our writes unread before its connection is aborted


class _ApiConfig(HypercornConfig):
    """Hypercorn writes to a connection in a shielded scope without a timeout, so a client that
    stops reading would hold its task, and the node's shutdown, forever. TCP_USER_TIMEOUT on the
    listening sockets (accepted ones inherit it) makes the kernel abort such a connection."""

    def create_sockets(self):  # noqa: ANN201 - hypercorn's own type
        sockets = super().create_sockets()
        for sock in sockets.insecure_sockets:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(STALLED_CLIENT * 1000))
        return sockets


async def serve_api(node: Node, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve the API on `node.config.api`; reports the bound URL (port 0 picks a free port).

    Connections and WebSocket sessions are capped by the open-file limit (overlay/node/apilimits.py)."""
    host, port = node.config.api
    config = _ApiConfig()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = None
    config.keep_alive_timeout = IDLE_TIMEOUT
    # the largest any socket takes (each decoder enforces its own); larger frames close the socket (1009)
    config.websocket_max_message_size = max(client_frames.MAX_CLIENT_FRAME, MAX_RELAYER_FRAME, MAX_APP_FRAME, MAX_GATEWAY_FRAME)
    token = load_or_create_token(node.config.data_dir)
    refused = node.metrics.counter("overlay_api_refused_total",
                                   "API requests refused, by reason (host, origin, token, connections, websockets)")
    FD_EXHAUSTION.attach(node.metrics.counter(FD_METRIC, FD_METRIC_HELP))
    caps = api_caps(fd_limit()[0], node.config.max_connections)
    log.debug("the API takes %d connections, %d of them WebSockets", caps.connections, caps.websockets)
    gate = ConnectionGate(caps.connections, refused)
    websockets = WebSocketCap(build_app(node), caps.websockets, refused)
    node.metrics.gauge("overlay_api_connections", "Open API connections", lambda: gate.open)
    node.metrics.gauge("overlay_api_websockets", "Open API WebSocket sessions", lambda: websockets.open)
    allowed_hosts = list(node.config.api_allowed_hosts) + ([host] if host not in ("0.0.0.0", "::") else [])
    app = ApiGuard(websockets, token, refused, allowed_hosts, node.config.api_allowed_origins)
    if not is_loopback(host):
        log.warning("the API listens on %s:%d, beyond this machine: anyone who can reach it may try the token, "
                    "which travels unencrypted", host, port)
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(serve, app, config, gate)
        task_status.started(bound[0] if bound else f"http://{host}:{port}")
