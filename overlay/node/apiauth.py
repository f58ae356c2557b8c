"""Who may use the local API: the owner's programs, and pages on origins the owner allowed.

A web page in the owner's browser can reach 127.0.0.1, so the API trusts nothing a browser sends
on a page's behalf. Every request passes three checks, in this order (kubo's RPC, Jupyter's token
and Syncthing's API key are the models):

1. **Host** must name this API: `127.0.0.1`, `localhost` or `[::1]` (or a name the config lists
   in `api_allowed_hosts`, or the non-wildcard address the API is bound to), with the port the
   request came in on. A DNS-rebinding page sends its own name and is refused.
2. **Origin**, when present, must be in `api_allowed_origins` (empty by default). Programs send no
   Origin and are not affected. A request a browser marks `Sec-Fetch-Site: cross-site` or
   `same-site` without an allowed Origin (an `<img>`, a form, a no-cors fetch) is refused too: a
   page on another port of 127.0.0.1 is same-site but another origin.
3. **The API token** (`api.token` in the data dir, mode 0600, made at first start) is required on
   every endpoint except `GET /health`: `Authorization: Bearer <token>`, or, since a page cannot
   set headers on a WebSocket, as the WebSocket subprotocol `overlay-token.<token>` (offer
   `overlay` beside it; the server selects `overlay`). A cross-site "simple" request can carry
   neither, so it changes nothing.

Allowed origins get CORS answers (preflight included) so a page of theirs can read the API with
the token. Each refusal is counted by reason in `overlay_api_refused_total`; the token is never
logged. This module is stdlib only: the CLI client imports it without the node's dependencies.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import secrets
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

from overlay.core.errors import ConfigError
from overlay.core.files import write_atomic

log = logging.getLogger(__name__)

TOKEN_FILE = "api.token"
TOKEN_ENV = "OVERLAY_API_TOKEN"
SUBPROTOCOL = "overlay"
TOKEN_PROTOCOL = "overlay-token."
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})
OPEN_PATHS = frozenset({"/health"})  # GET only; no secret, no state
CORS_MAX_AGE = "600"

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


# ---- the token ---------------------------------------------------------------------------------


def load_or_create_token(data_dir: Path) -> str:
    """The node's API token, made on first start (256 bits, URL-safe, mode 0600)."""
    path = data_dir / TOKEN_FILE
    token = secrets.token_urlsafe(32)
    try:
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if path.exists() or not write_atomic(path, (token + "\n").encode(), exclusive=True):
            return read_token(data_dir)
    except OSError as e:
        raise ConfigError(f"cannot create the API token {path}: {e.strerror}") from None
    return token


def read_token(data_dir: Path) -> str:
    path = data_dir / TOKEN_FILE
    try:
        token = path.read_text().strip()
    except OSError as e:
        raise ConfigError(f"cannot read the API token {path}: {e.strerror}; give --token or ${TOKEN_ENV}") from None
    if not valid_token(token):
        raise ConfigError(f"the API token in {path} is malformed; delete it and restart the node")
    return token


def valid_token(token: str) -> bool:
    """A token fits in a WebSocket subprotocol (RFC 6455: an HTTP token) and is long enough."""
    return 32 <= len(token) <= 128 and all(c.isascii() and (c.isalnum() or c in "-_") for c in token)


def client_token(explicit: str | None, data_dir: Path) -> str:
    """What a client presents: --token, else $OVERLAY_API_TOKEN, else the data dir's file."""
    token = explicit or os.environ.get(TOKEN_ENV, "")
    if token:
        if not valid_token(token):
            raise ConfigError("the API token is malformed (expected 32-128 of A-Z a-z 0-9 - _)")
        return token
    return read_token(data_dir)


def auth_headers(token: str) -> list[tuple[str, str]]:
    return [("Authorization", f"Bearer {token}")]


# ---- the guard -----------------------------------------------------------------------------------


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


def _split_host(host: str) -> tuple[str, int | None]:
    """`name[:port]` or `[v6][:port]` -> (name, port); port None when absent or malformed."""
    if host.startswith("["):
        name, _, rest = host[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        name, _, port = host.partition(":") if host.count(":") <= 1 else (host, "", "")
    return name.lower(), int(port) if port.isdigit() else None


class ApiGuard:
    """ASGI middleware applying the Host, Origin and token rules above to HTTP and WebSocket."""

    def __init__(self, app: App, token: str, refused: Any, allowed_hosts: Iterable[str] = (),
                 allowed_origins: Iterable[str] = ()) -> None:
        self.app = app
        self.token = token.encode()
        self.refused = refused  # a metrics Counter, by reason
        self.hosts = LOOPBACK_NAMES | {h.lower().strip("[]") for h in allowed_hosts}
        self.origins = frozenset(o.rstrip("/").lower() for o in allowed_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        origin = _header(scope, b"origin")
        reason = self._foreign(scope, origin)
        if reason is None and scope["type"] == "http" and scope["method"] == "OPTIONS" and origin is not None:
            return await self._preflight(send, origin)
        if reason is None and not self._open(scope) and not self._authorized(scope):
            reason = "token"
        if reason is not None:
            self.refused.inc(reason=reason)
            return await self._refuse(scope, receive, send, reason)
        if scope["type"] == "websocket":
            send = self._select_subprotocol(scope, send)
        elif origin is not None:
            send = self._cors(send, origin)
        await self.app(scope, receive, send)

    def _foreign(self, scope: Scope, origin: str | None) -> str | None:
        """Why the request is not from this API's own name or an allowed origin, or None."""
        name, port = _split_host(_header(scope, b"host") or "")
        server = scope.get("server")
        if name not in self.hosts or (server and port is not None and port != server[1]) \
                or (port is None and server and server[1] != 80):
            return "host"
        if origin is not None and origin.rstrip("/").lower() not in self.origins:
            return "origin"
        site = _header(scope, b"sec-fetch-site")
        if origin is None and site in ("cross-site", "same-site"):
            return "origin"
        return None

    @staticmethod
    def _open(scope: Scope) -> bool:
        return scope["type"] == "http" and scope["method"] in ("GET", "HEAD") and scope["path"] in OPEN_PATHS

    def _authorized(self, scope: Scope) -> bool:
        offered: list[str] = []
        authorization = _header(scope, b"authorization")
        if authorization is not None and authorization[:7].lower() == "bearer ":
            offered.append(authorization[7:].strip())
        offered += [p.removeprefix(TOKEN_PROTOCOL) for p in scope.get("subprotocols", ()) if p.startswith(TOKEN_PROTOCOL)]
        return any(hmac.compare_digest(t.encode(), self.token) for t in offered)

    @staticmethod
    def _select_subprotocol(scope: Scope, send: Send) -> Send:
        """A browser fails a WebSocket whose server selects none of the offered subprotocols."""
        offered = scope.get("subprotocols") or []
        chosen = SUBPROTOCOL if SUBPROTOCOL in offered else next((p for p in offered if p.startswith(TOKEN_PROTOCOL)), None)
        if chosen is None:
            return send

        async def accept_with_subprotocol(message: dict) -> None:
            if message["type"] == "websocket.accept":
                message = {**message, "subprotocol": chosen}
            await send(message)

        return accept_with_subprotocol

    @staticmethod
    def _cors(send: Send, origin: str) -> Send:
        async def with_cors(message: dict) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *_cors_headers(origin)]}
            await send(message)

        return with_cors

    async def _preflight(self, send: Send, origin: str) -> None:
        headers = [*_cors_headers(origin), (b"access-control-allow-methods", b"GET, POST, DELETE"),
                   (b"access-control-allow-headers", b"authorization"), (b"access-control-max-age", CORS_MAX_AGE.encode()),
                   (b"content-length", b"0")]
        await send({"type": "http.response.start", "status": 204, "headers": headers})
        await send({"type": "http.response.body", "body": b""})

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, reason: str) -> None:
        if scope["type"] == "websocket":
            message = await receive()  # websocket.connect; closing before accept answers 403
            if message["type"] == "websocket.connect":
                await send({"type": "websocket.close", "code": 1008})
            return
        status, text = (401, "the API token is missing or wrong") if reason == "token" else (403, f"forbidden: foreign {reason}")
        body = ('{"error": "%s"}' % text).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if reason == "token":
            headers.append((b"www-authenticate", b'Bearer realm="overlay-node"'))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _cors_headers(origin: str) -> list[tuple[bytes, bytes]]:
    return [(b"access-control-allow-origin", origin.encode("latin-1")), (b"vary", b"Origin")]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
