"""A real browser (headless Chromium) against two real node processes: what a web page can do
with the local API.

The threat is any page in the owner's browser: it can reach 127.0.0.1, and a page may even have
learnt the token. Pages come from two small HTTP servers on loopback, one origin the node allows
and one it does not (another port is another origin). Every refusal is asserted on the node's
side, by its `overlay_api_refused_total` counter, not by what the browser happened to block.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import trio
from trio_websocket import open_websocket_url

from overlay.node.apiauth import auth_headers
from tests.conftest import wait_for
from tests.loopback.browser import CHROMIUM, open_browser
from tests.loopback.nodeproc import Proc, wait_until

pytestmark = pytest.mark.timeout(180)

REQUIRE_ENV = "OVERLAY_REQUIRE_NATLAB"  # set in CI, where a missing browser must fail, not skip
SOCKETS = ("/connect", "/relayer", "/peermsg", "/gateway", "/service")
REBOUND_NAME = "evil.test"
CHANNEL = "browser-news"
PINGS = 100  # the most one /v1/ping asks for
PING_BYTES = 64
PAGE = b"<!doctype html><meta charset=utf-8><title>overlay browser test</title><p>test page</p>"

# Each is a JavaScript function; js_call() applies it to JSON arguments. The token, when a page is
# given one, is in its URL fragment (never sent to any server).
HOSTILE_ATTEMPTS = """async (api, peer, pings, sockets) => {
  const token = location.hash.slice(1);
  const bearer = {Authorization: "Bearer " + token};
  const socket = (path) => new Promise((resolve) => {
    const ws = new WebSocket(`ws://${api}${path}`, ["overlay", "overlay-token." + token]);
    let opened = false;
    ws.onopen = () => { opened = true; ws.close(); };
    ws.onclose = (e) => resolve(opened ? "opened" : `refused (${e.code})`);
  });
  const attempt = (path, init) => fetch(`http://${api}${path}`, init).then(
    async (r) => r.type === "opaque" ? "opaque" : `read ${r.status}: ${await r.text()}`,
    (e) => `failed: ${e.name}`);
  const out = {};
  for (const path of sockets) out[`WS ${path}`] = await socket(path);
  out["GET /v1/status"] = await attempt("/v1/status", {headers: bearer});
  out["GET /v1/peers (no-cors)"] = await attempt("/v1/peers", {mode: "no-cors"});
  out["POST /v1/ping (no-cors)"] = await attempt(`/v1/ping/${peer}?count=${pings}`, {method: "POST", mode: "no-cors"});
  out["POST /v1/connect (no-cors)"] = await attempt(`/v1/connect/${peer}`, {method: "POST", mode: "no-cors"});
  out["DELETE /v1/peers"] = await attempt(`/v1/peers/${peer}`, {method: "DELETE", headers: bearer});
  return out;
}"""

READ = """async (base, paths, withToken) => {
  const headers = withToken ? {Authorization: "Bearer " + location.hash.slice(1)} : {};
  const out = {};
  for (const path of paths) {
    out[path] = await fetch(base + path, {headers}).then(
      async (r) => `read ${r.status}: ${await r.text()}`, (e) => `failed: ${e.name}`);
  }
  return out;
}"""

SUBSCRIBE = """(api, channel) => new Promise((resolve, reject) => {
  const ws = new WebSocket(`ws://${api}/connect`, ["overlay", "overlay-token." + location.hash.slice(1)]);
  const frames = [], waiting = [];
  window.nextFrame = () => frames.length ? Promise.resolve(frames.shift()) : new Promise((r) => waiting.push(r));
  window.channelState = () => ({readyState: ws.readyState, frames});
  ws.onopen = () => ws.send(JSON.stringify({command: "subscribe", data: {topic: channel}, nonce: "page-1"}));
  ws.onclose = (e) => reject(new Error(`the WebSocket closed (${e.code}) before the node answered`));
  ws.onmessage = (e) => {
    const frame = JSON.parse(e.data);
    if (frame.type === "response" && frame.nonce === "page-1") resolve({protocol: ws.protocol, reply: frame});
    else if (waiting.length) waiting.shift()(frame);
    else frames.push(frame);
  };
})"""


def js_call(function: str, *args: Any) -> str:
    return f"({function})(...{json.dumps(args)})"


class Site(NamedTuple):
    server: http.server.ThreadingHTTPServer
    port: int

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class PageHandler(http.server.BaseHTTPRequestHandler):
    """The same blank page at every path; the tests bring their JavaScript over DevTools."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/html; charset=utf-8")
        self.send_header("content-length", str(len(PAGE)))
        self.send_header("cache-control", "no-store")
        self.end_headers()
        self.wfile.write(PAGE)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def serve_page() -> Site:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), PageHandler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return Site(server, server.server_address[1])


class Sites(NamedTuple):
    allowed: Site
    hostile: Site


class Nodes(NamedTuple):
    a: Proc  # allows the `allowed` site's origin
    b: Proc  # bootstrapped from a, its INM neighbour


@pytest.fixture(scope="module", autouse=True)
def _chromium() -> None:
    if shutil.which(CHROMIUM) is None:
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{CHROMIUM} is missing but {REQUIRE_ENV}=1 (scripts/test.sh installs it as root)", pytrace=False)
        pytest.skip(f"{CHROMIUM} is missing (Debian package chromium; scripts/test.sh installs it as root)")


@pytest.fixture(scope="module")
def sites() -> Iterator[Sites]:
    allowed, hostile = serve_page(), serve_page()
    yield Sites(allowed, hostile)
    for site in (allowed, hostile):
        site.server.shutdown()
        site.server.server_close()


@pytest.fixture(scope="module")
def nodes(sites: Sites, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nodes]:
    root: Path = tmp_path_factory.mktemp("browser-nodes")
    config = root / "a.toml"
    config.write_text(f'api_allowed_origins = ["{sites.allowed.origin}"]\n')
    started: list[Proc] = []
    try:
        started.append(a := Proc(["--config", str(config)], root / "a"))
        started.append(b := Proc(["--bootstrap", a.addrs[0]], root / "b"))
        for node in (a, b):
            wait_until(lambda node=node: "overlay_inm_neighbours 1" in node.request("GET", "/metrics")[1],
                       what="a and b INM neighbours")
        yield Nodes(a, b)
    finally:
        errors = [err for _, err in (p.stop() for p in started) if "Traceback" in err]
    assert not errors, errors


def refused(node: Proc, reason: str) -> float:
    return node.metric(f'overlay_api_refused_total{{reason="{reason}"}}')


def channel_metrics(node: Proc) -> list[str]:
    return [line for line in node.request("GET", "/metrics")[1].splitlines()
            if line.startswith(("overlay_inm_", "overlay_channel_delivered", "overlay_channel_client_dropped"))]


def peer_entry(node: Proc, peer_id: str) -> dict | None:
    return next((p for p in node.get_json("/v1/peers") if p["peer_id"] == peer_id), None)


async def test_a_hostile_page_given_the_token_opens_no_socket_and_changes_nothing(nodes: Nodes, sites: Sites) -> None:
    a, b = nodes
    origin_refusals = refused(a, "origin")
    link = peer_entry(a, b.peer_id)
    assert link is not None
    pinged = a.metric('overlay_stream_bytes_total{protocol="ping"}')
    async with open_browser() as browser:
        await browser.navigate(f"{sites.hostile.origin}/#{a.token}")
        seen = await browser.evaluate(js_call(HOSTILE_ATTEMPTS, a.api, b.peer_id, PINGS, SOCKETS))
    assert seen == {
        **{f"WS {path}": "refused (1006)" for path in SOCKETS},
        "GET /v1/status": "failed: TypeError",  # its preflight refused
        "GET /v1/peers (no-cors)": "opaque",
        "POST /v1/ping (no-cors)": "opaque",
        "POST /v1/connect (no-cors)": "opaque",
        "DELETE /v1/peers": "failed: TypeError",
    }
    assert refused(a, "origin") - origin_refusals >= len(seen)
    assert peer_entry(a, b.peer_id) == link  # still connected, and no new dial through the API
    # a's INM service pings b every 15 s on its own; the page's pings would be a hundred at once
    assert a.metric('overlay_stream_bytes_total{protocol="ping"}') - pinged < PING_BYTES * PINGS


async def test_a_dns_rebinding_page_is_refused_by_the_node_not_only_by_the_browser(nodes: Nodes, sites: Sites) -> None:
    a = nodes.a
    rebound = f"http://{REBOUND_NAME}:{a.api.rpartition(':')[2]}"  # the API, under the attacker's name
    host_refusals = refused(a, "host")
    async with open_browser([REBOUND_NAME]) as browser:
        await browser.navigate(f"http://{REBOUND_NAME}:{sites.hostile.port}/#{a.token}")
        across = await browser.evaluate(js_call(READ, rebound, ["/v1/status", "/health"], False))
        # After rebinding, the attacker's page shares the API's origin: the browser lets it read
        # every answer, so only the node's Host check stands between the page and the API.
        await browser.navigate(f"{rebound}/health#{a.token}")
        shown = await browser.evaluate("document.body.innerText")
        same_origin = await browser.evaluate(js_call(READ, "", ["/v1/status", "/health", "/metrics"], True))
    assert across == {"/v1/status": "failed: TypeError", "/health": "failed: TypeError"}
    forbidden = 'read 403: {"error": "forbidden: foreign host"}'
    assert json.loads(shown) == {"error": "forbidden: foreign host"}
    assert same_origin == {"/v1/status": forbidden, "/health": forbidden, "/metrics": forbidden}
    assert refused(a, "host") - host_refusals >= len(across) + 1 + len(same_origin)


async def test_a_page_on_an_allowed_origin_with_the_token_reads_status_and_channel_messages(nodes: Nodes, sites: Sites) -> None:
    a, b = nodes
    text = "hello from a client of b"
    async with open_browser() as browser:
        await browser.navigate(f"{sites.allowed.origin}/#{a.token}")
        status = await browser.evaluate(js_call(READ, f"http://{a.api}", ["/v1/status"], True))
        prefix = "read 200: "
        assert status["/v1/status"].startswith(prefix), status
        assert json.loads(status["/v1/status"].removeprefix(prefix))["peer_id"] == a.peer_id

        joined = await browser.evaluate(js_call(SUBSCRIBE, a.api, CHANNEL))
        assert joined == {"protocol": "overlay", "reply": {"type": "response", "data": {"ok": True}, "nonce": "page-1"}}
        async with open_websocket_url(f"ws://{b.api}/connect", extra_headers=auth_headers(b.token)) as ws:
            for nonce, command, data in (("py-1", "subscribe", {"topic": CHANNEL}),
                                         ("py-2", "send", {"channel": CHANNEL, "message": text})):
                await ws.send_message(json.dumps({"command": command, "data": data, "nonce": nonce}))
                with trio.fail_after(20):
                    assert json.loads(await ws.get_message()) == {"type": "response", "data": {"ok": True}, "nonce": nonce}
                if command == "subscribe":
                    await wait_for(lambda: b.get_json("/v1/channels")["members"].get(CHANNEL) == [a.peer_id],
                                   what="b and a, members of the channel, to find each other")
            try:
                got = await browser.evaluate("window.nextFrame()")
            except trio.TooSlowError:
                page = await browser.evaluate("window.channelState()")
                raise AssertionError(f"the page got no message; its socket's state and frames: {page}; "
                                     f"a: {channel_metrics(a)}; b: {channel_metrics(b)}") from None
    assert got == {"type": "message", "data": {"channel": CHANNEL, "message": text}, "nonce": "py-2"}
