"""How many connections the local API takes (`api_caps`, overlay/core/fdlimits.py), enforced
where a file descriptor is spent.

A connection holds a descriptor from accept() on, whether or not it ever sends a byte, so the cap
holds at the listener: beyond it a connection is closed the moment it is accepted and counted in
`overlay_api_refused_total{reason="connections"}`. WebSocket sessions live long and get a lower
cap, enforced in ASGI at the handshake (`reason="websockets"`, HTTP 403): the difference is a
reserve in which `GET /health`, `/metrics` and the CLI still get through while applications hold
every WebSocket they may.

A connection that never completes a request holds its slot for Hypercorn's keep-alive timeout
only (`IDLE_TIMEOUT`): Hypercorn starts that timer at accept and stops it when a request's headers
are complete, so silence and a trickle of header bytes are cut off alike. One whose client has
gone is closed at once (`_TCPServer`).

The accept loop is ours because Hypercorn's trio worker (`hypercorn.trio.run.worker_serve`)
builds its listeners and runs trio's `serve_listeners` internally, with no way in. `serve` below
is that worker for plain-HTTP binds, with its own accept loop: the cap, and EMFILE handled like
any other overload (wait, retry, count, log once) instead of trio's traceback every 100 ms. It
uses Hypercorn's connection class and lifespan as they are in 0.18; a new Hypercorn may need a
look here.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.statsd import StatsdLogger
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState
from hypercorn.utils import repr_socket_addr, wrap_app

from overlay.core.fdlimits import FD_EXHAUSTION, ApiCaps, is_capacity_error
from overlay.core.metrics import Counter

log = logging.getLogger(__name__)

IDLE_TIMEOUT = 5.0  # seconds a connection may stay without a complete request (Hypercorn's keep_alive_timeout)
ACCEPT_RETRY = 0.1  # seconds between accept() attempts while the process is out of descriptors

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


class ConnectionGate:
    """The API's open connections, counted against `cap`; `refused` is the API's refusal counter."""

    def __init__(self, cap: int, refused: Counter) -> None:
        self.cap = cap
        self.refused = refused
        self.open = 0

    async def accept_loop(self, listener: trio.SocketListener, handler: Callable[[trio.SocketStream], Awaitable[None]],
                          nursery: trio.Nursery) -> None:
        """Accept until cancelled: each connection within the cap runs `handler` in `nursery` and
        holds its slot until its socket is closed; one beyond is closed at once and counted."""

        async def run(stream: trio.SocketStream) -> None:
            try:
                await handler(stream)
            except Exception as e:  # noqa: BLE001 - one connection's failure must not end the API
                log.warning("API connection failed: %s: %s", type(e).__name__, e)
            finally:
                self.open -= 1
                await trio.aclose_forcefully(stream)

        async with listener:
            while True:
                try:
                    stream = await listener.accept()
                except OSError as e:
                    if not is_capacity_error(e):
                        raise
                    FD_EXHAUSTION.note("api-accept", e, f"accept() is retried every {ACCEPT_RETRY}s")
                    await trio.sleep(ACCEPT_RETRY)
                    continue
                if self.open >= self.cap:
                    self.refused.inc(reason="connections")
                    await trio.aclose_forcefully(stream)
                    continue
                self.open += 1
                nursery.start_soon(run, stream)


class WebSocketCap:
    """ASGI middleware: at most `cap` WebSocket sessions at once; one more is refused at its
    handshake (HTTP 403) and counted, and plain HTTP passes untouched."""

    def __init__(self, app: App, cap: int, refused: Counter) -> None:
        self.app = app
        self.cap = cap
        self.refused = refused
        self.open = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            return await self.app(scope, receive, send)
        if self.open >= self.cap:
            self.refused.inc(reason="websockets")
            if (await receive())["type"] == "websocket.connect":
                await send({"type": "websocket.close", "code": 1013})  # try again later (closing before accept: 403)
            return
        self.open += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.open -= 1


class _TCPServer(TCPServer):
    """Hypercorn's connection, closed as soon as the client has gone: when a client resets the
    connection between requests (it closed the socket with our answer unread), Hypercorn's own
    waits out the keep-alive timer, holding the descriptor and its slot for up to IDLE_TIMEOUT."""

    async def _read_data(self) -> None:
        await super()._read_data()
        await self.idle_task.stop()


async def serve(app: App, config: HypercornConfig, gate: ConnectionGate,
                task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
    """Hypercorn's trio worker (0.18's `worker_serve`) for plain-HTTP binds, accepting through
    `gate`; reports the bound URLs. No TLS, QUIC or max_requests (the API uses none), and no
    graceful shutdown: the API stops when the node does, by cancellation."""
    wrapped = wrap_app(app, config.wsgi_max_body_size, "asgi")
    config.set_statsd_logger_class(StatsdLogger)
    context = WorkerContext(None)
    state: dict[str, Any] = {}
    lifespan = Lifespan(wrapped, config, state)

    async def handle(stream: trio.SocketStream) -> None:
        await _TCPServer(wrapped, config, context, ConnectionState(state.copy()), stream)

    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        listeners, binds = [], []
        for sock in config.create_sockets().insecure_sockets:
            sock.listen(config.backlog)
            listeners.append(trio.SocketListener(trio.socket.from_stdlib_socket(sock)))
            binds.append(f"http://{repr_socket_addr(sock.family, sock.getsockname())}")
        async with trio.open_nursery() as nursery:
            for listener in listeners:
                nursery.start_soon(gate.accept_loop, listener, handle, nursery)
            task_status.started(binds)
        lifespan_nursery.cancel_scope.cancel()
