"""WS /peermsg: applications on two nodes exchange a query and its result; bad frames get an
error and the socket stays. The frame decoder alone is in tests/unit/test_peermsg_app.py."""

from __future__ import annotations

import base64
import json
import struct

import pytest
import trio
from trio_websocket import ConnectionClosed

import overlay.node.api
from overlay.node.api import serve_api
from overlay.peermsg.app import MAX_APP_FRAME
from overlay.peermsg.core import with_refs
from overlay.peermsg.frames import PeerMessageType
from tests.conftest import wait_for
from tests.loopback.nodes import cluster, open_api_websocket

B64 = lambda data: base64.b64encode(data).decode()


async def start(c, join=None):
    node = await c.start(join=join, api=("127.0.0.1", 0))
    url = await c.nursery.start(serve_api, node)
    node.app_url = url.replace("http://", "ws://") + "/peermsg"
    return node


async def next_op(ws, op: str) -> dict:
    with trio.fail_after(15):
        while True:
            reply = json.loads(await ws.get_message())
            if reply["op"] == op:
                return reply


async def test_applications_on_two_nodes_query_and_answer(tmp_path):
    async with cluster(tmp_path) as c:
        a = await start(c)
        b = await start(c, join=a)
        await wait_for(lambda: b.joined.is_set(), what="joined")
        async with open_api_websocket(a, a.app_url, max_message_size=MAX_APP_FRAME) as app_a, \
                open_api_websocket(b, b.app_url, max_message_size=MAX_APP_FRAME) as app_b:
            await app_a.send_message(json.dumps({"op": "register", "types": ["RESULT"]}))
            await app_b.send_message(json.dumps({"op": "register", "types": ["QUERY"]}))
            await wait_for(lambda: a.peermsg._apps and b.peermsg._apps, what="registered")
            await app_a.send_message(json.dumps({"op": "send", "peer": str(b.peer_id), "type": "QUERY",
                                                 "body": B64(with_refs([], b"how many?"))}))
            sent = await next_op(app_a, "sent")
            query = await next_op(app_b, "message")
            assert query["type"] == "QUERY" and query["peer"] == str(a.peer_id) and base64.b64decode(query["body"]) == b"how many?"
            await app_b.send_message(json.dumps({"op": "answer", "peer": query["peer"], "ref": query["id"], "code": "OK",
                                                 "result": B64(b"seven")}))
            result = await next_op(app_a, "message")
            body = base64.b64decode(result["body"])
            assert result["type"] == "RESULT" and struct.unpack_from(">QB", body) == (sent["id"], 0) and body[9:] == b"seven"
            # an answer counts once, and only for a message this application was given
            for ref in (query["id"], query["id"] + 1000):
                await app_b.send_message(json.dumps({"op": "answer", "peer": query["peer"], "ref": ref, "code": "OK", "result": ""}))
                assert "no unanswered" in (await next_op(app_b, "error"))["error"]
            assert b.peermsg.core.pending == 0
            # a 1 MB query through both sockets, in fragments between the nodes
            big = bytes(range(256)) * 4096
            await app_a.send_message(json.dumps({"op": "send", "peer": str(b.peer_id), "type": "QUERY", "body": B64(with_refs([], big))}))
            await next_op(app_a, "sent")
            query = await next_op(app_b, "message")
            assert base64.b64decode(query["body"]) == big and b.peermsg.core.pending == 1
            # bad frames: an error each, and the socket goes on
            for frame, reason in (("{", "not JSON"), ('{"op": "fly"}', "op must be"),
                                  ('{"op": "send", "peer": "x", "type": "QUERY", "body": ""}', "peer"),
                                  ('{"op": "register", "types": ["NOPE"]}', "type must be")):
                await app_a.send_message(frame)
                assert reason in (await next_op(app_a, "error"))["error"]
            await app_a.send_message(json.dumps({"op": "broadcast", "type": "BELIEF", "body": B64(with_refs([], b"b"))}))
            assert (await next_op(app_a, "sent"))["peers"] >= 1
        # b's application left without answering the big query: it no longer counts as load
        await wait_for(lambda: b.peermsg.core.pending == 0 and not b.peermsg._apps, what="released on disconnect")


async def test_a_client_that_stops_reading_does_not_hold_the_node(tmp_path, monkeypatch):
    """The client refuses a frame over its own limit (1009) and leaves its socket unread: the
    node's write to it is aborted by the kernel, and the node shuts down."""
    monkeypatch.setattr(overlay.node.api, "STALLED_CLIENT", 1.0)
    with trio.fail_after(30):
        async with cluster(tmp_path) as c:
            a = await start(c)
            b = await start(c, join=a)
            await wait_for(lambda: b.joined.is_set(), what="joined")
            async with open_api_websocket(b, b.app_url) as app_b:  # takes frames up to 1 MiB
                await app_b.send_message(json.dumps({"op": "register", "types": ["QUERY"]}))
                await wait_for(lambda: b.peermsg._apps, what="registered")
                await a.peermsg.send(str(b.peer_id), PeerMessageType.QUERY, with_refs([], b"x" * 1_000_000))
                with pytest.raises(ConnectionClosed):
                    await next_op(app_b, "message")
