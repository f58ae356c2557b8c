"""The local API over real HTTP."""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request

import multiaddr
import trio

from overlay.node.api import serve_api
from tests.conftest import wait_for
from tests.loopback.nodes import api_headers, cluster

M = multiaddr.Multiaddr
PEER = "12D3KooWHu5UDiWacaCzqtHboSFD2b212f53gR4F1NAmHuBtaYvk"


def http(method: str, url: str, headers: dict[str, str]) -> tuple[int, bytes]:
    request = urllib.request.Request(url, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


async def call(node, method: str, url: str) -> tuple[int, dict | str]:
    status, body = await trio.to_thread.run_sync(http, method, url, dict(api_headers(node)))
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body.decode()


async def test_api_routes_and_errors(tmp_path):
    async with cluster(tmp_path) as c:
        a = await c.start(api=("127.0.0.1", 0))
        b = await c.start(join=a, api=("127.0.0.1", 0))
        await wait_for(lambda: b.joined.is_set(), what="join")
        url = await c.nursery.start(serve_api, b)
        await wait_for(lambda: b.channels.neighbours(), what="an INM neighbour (else: no peers)")

        assert await call(b, "GET", f"{url}/health") == (200, {"healthy": "good", "reason": "healthy"})
        status, body = await call(b, "GET", f"{url}/v1/status")
        assert status == 200 and body["peer_id"] == str(b.peer_id) and body["routing_table"] == 1
        status, body = await call(b, "GET", f"{url}/v1/peers")
        assert status == 200 and [p["peer_id"] for p in body] == [str(a.peer_id)]
        status, body = await call(b, "GET", f"{url}/v1/find/{a.peer_id}")
        assert status == 200 and body["addrs"] == [str(x) for x in a.listen_addrs()]
        status, body = await call(b, "POST", f"{url}/v1/ping/{a.peer_id}?count=2")
        assert status == 200 and len(body["rtt_ms"]) == 2 and body["errors"] == []

        assert (await call(b, "GET", f"{url}/v1/find/nonsense"))[0] == 400
        assert (await call(b, "GET", f"{url}/v1/find/{PEER}"))[0] == 404
        assert (await call(b, "POST", f"{url}/v1/ping/{a.peer_id}?count=0"))[0] == 400
        assert (await call(b, "POST", f"{url}/v1/ping/{a.peer_id}?count=x"))[0] == 400
        assert (await call(b, "GET", f"{url}/v1/ping/{a.peer_id}"))[0] == 405

        status, text = await call(b, "GET", f"{url}/metrics")
        assert status == 200
        assert "# TYPE overlay_dht_operation_seconds histogram" in text
        assert "overlay_routing_table_size 1" in text
        assert 'overlay_dht_bytes_total{direction="out"}' in text
        assert "overlay_peers 1" in text


async def test_websocket_listener_joins_and_finds(tmp_path):
    async with cluster(tmp_path) as c:
        ws = (M("/ip4/127.0.0.1/tcp/0/ws"),)
        a = await c.start(listen=ws)
        assert "/ws/p2p/" in a.full_addrs()[0]
        b = await c.start(join=a, listen=ws)
        await wait_for(lambda: b.joined.is_set(), what="join over WebSocket")
        record = await a.find(b.peer_id)
        assert [str(M(x)) for x in record.addrs] == [str(x) for x in b.listen_addrs()]
        # the WebSocket connection was counted as it was taken, and reports where it came from
        conn = next(c for c in a.host.get_network().get_connections(b.peer_id) if not c.muxed_conn.is_initiator)
        assert conn.muxed_conn.secured_conn.get_remote_address()[0] == "127.0.0.1"
        assert a.host.resources.inbound >= 1


async def test_an_api_beyond_loopback_warns_and_answers_only_its_allowed_names(tmp_path, caplog):
    """api_expose: the API binds every interface (for a moment, port from the OS), says so, and
    a Host it was not told about is still refused."""
    async with cluster(tmp_path) as c:
        node = await c.start(api=("0.0.0.0", 0), api_expose=True, api_allowed_hosts=("mynode.test",))
        with caplog.at_level(logging.WARNING, logger="overlay.node.api"):
            url = await c.nursery.start(serve_api, node)
        assert any("beyond this machine" in r.getMessage() for r in caplog.records)
        port = url.rsplit(":", 1)[1]
        local = f"http://127.0.0.1:{port}/v1/status"
        headers = dict(api_headers(node))
        assert (await trio.to_thread.run_sync(http, "GET", local, headers))[0] == 200
        named = {**headers, "Host": f"mynode.test:{port}"}
        assert (await trio.to_thread.run_sync(http, "GET", local, named))[0] == 200
        other = {**headers, "Host": f"othernode.test:{port}"}
        assert (await trio.to_thread.run_sync(http, "GET", local, other))[0] == 403
