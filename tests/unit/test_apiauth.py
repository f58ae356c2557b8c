"""The API guard as an ASGI middleware, driven directly: Host forms, Origin, token, preflight."""

from __future__ import annotations

import pytest

from overlay.node.apiauth import ApiGuard, load_or_create_token, read_token, valid_token
from overlay.core.errors import ConfigError
from overlay.core.metrics import Counter

TOKEN = "t" * 43


async def run(guard: ApiGuard, scope: dict) -> tuple[list[dict], bool]:
    """What the guard sent, and whether the inner app ran."""
    sent: list[dict] = []
    reached: list[bool] = []

    async def app(scope, receive, send) -> None:
        reached.append(True)
        if scope["type"] == "websocket":
            await send({"type": "websocket.accept"})
        else:
            await send({"type": "http.response.start", "status": 200, "headers": []})

    async def receive() -> dict:
        return {"type": "websocket.connect"}

    async def send(message: dict) -> None:
        sent.append(message)

    guard.app = app
    await guard(scope, receive, send)
    return sent, bool(reached)


def http(host: str, port: int = 4080, method: str = "GET", path: str = "/v1/status", **headers: str) -> dict:
    raw = [(b"host", host.encode())] + [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()]
    return {"type": "http", "method": method, "path": path, "headers": raw, "server": ("127.0.0.1", port)}


def guard(**kw) -> ApiGuard:
    return ApiGuard(None, TOKEN, Counter(), **kw)  # run() sets the inner app


@pytest.mark.parametrize("host, port, allowed", [
    ("127.0.0.1:4080", 4080, True), ("localhost:4080", 4080, True), ("[::1]:4080", 4080, True),
    ("LOCALHOST:4080", 4080, True), ("127.0.0.1:4081", 4080, False), ("127.0.0.1", 4080, False),
    ("127.0.0.1", 80, True), ("evil.example:4080", 4080, False), ("127.0.0.1.evil.example:4080", 4080, False),
    ("[::1]", 4080, False), ("", 4080, False), ("::1", 80, True),
])
async def test_host_forms(host, port, allowed):
    sent, reached = await run(guard(), http(host, port, authorization=f"Bearer {TOKEN}"))
    assert reached == allowed and (allowed or sent[0]["status"] == 403)


async def test_allowed_hosts_and_origins_from_the_config():
    g = guard(allowed_hosts=["mynode.lan"], allowed_origins=["http://127.0.0.1:8000/"])
    assert (await run(g, http("mynode.lan:4080", authorization=f"Bearer {TOKEN}")))[1]
    sent, reached = await run(g, http("127.0.0.1:4080", authorization=f"Bearer {TOKEN}", origin="http://127.0.0.1:8000"))
    assert reached and (b"access-control-allow-origin", b"http://127.0.0.1:8000") in sent[0]["headers"]
    assert not (await run(g, http("127.0.0.1:4080", authorization=f"Bearer {TOKEN}", origin="http://127.0.0.1:8001")))[1]
    assert not (await run(g, http("127.0.0.1:4080", authorization=f"Bearer {TOKEN}", sec_fetch_site="same-site")))[1]


async def test_a_preflight_from_an_allowed_origin_needs_no_token_and_reaches_no_handler():
    g = guard(allowed_origins=["http://127.0.0.1:8000"])
    sent, reached = await run(g, http("127.0.0.1:4080", method="OPTIONS", origin="http://127.0.0.1:8000"))
    assert not reached and sent[0]["status"] == 204
    assert (b"access-control-allow-headers", b"authorization") in sent[0]["headers"]
    sent, reached = await run(g, http("127.0.0.1:4080", method="OPTIONS", origin="http://evil.example"))
    assert not reached and sent[0]["status"] == 403


async def test_websocket_refusal_closes_before_accept_and_a_page_gets_its_subprotocol():
    g = guard()
    scope = {**http("127.0.0.1:4080"), "type": "websocket", "subprotocols": ["overlay", "overlay-token." + TOKEN]}
    sent, reached = await run(g, scope)
    assert reached and sent == [{"type": "websocket.accept", "subprotocol": "overlay"}]
    scope["subprotocols"] = ["overlay", "overlay-token." + "u" * 43]
    sent, reached = await run(g, scope)
    assert not reached and sent == [{"type": "websocket.close", "code": 1008}]


async def test_only_get_health_is_open():
    g = guard()
    assert (await run(g, http("127.0.0.1:4080", path="/health")))[1]
    assert not (await run(g, http("127.0.0.1:4080", path="/health", method="POST")))[1]
    sent, reached = await run(g, http("127.0.0.1:4080", path="/metrics"))
    assert not reached and sent[0]["status"] == 401


def test_the_token_file_is_made_once_private_and_checked(tmp_path):
    token = load_or_create_token(tmp_path / "d")
    assert valid_token(token) and load_or_create_token(tmp_path / "d") == token == read_token(tmp_path / "d")
    assert (tmp_path / "d" / "api.token").stat().st_mode & 0o777 == 0o600
    (tmp_path / "d" / "api.token").write_text("short\n")
    with pytest.raises(ConfigError, match="malformed"):
        read_token(tmp_path / "d")
