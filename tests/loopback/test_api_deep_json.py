"""Deeply nested JSON cannot take a node down (issue 15): after a Degas client's login (which
imports eth-account, whose py_ecc raises the recursion limit to 100,000), a 90,000-deep document
on `/connect`, `/peermsg` and `/relayer` of a real node process gets each protocol's error
answer, and the node stays up, with no traceback. Without jsonwire's depth check json.loads
recurses on it: RecursionError at the default limit, a SIGSEGV at py_ecc's. That the limit is
put back after eth-account's import is checked in tests/unit/test_gateway_codec.py."""

from __future__ import annotations

import json

import pytest
import trio

from overlay.channels.client import MAX_CLIENT_FRAME
from overlay.gateway import degas_pb2 as pb
from overlay.core.jsonwire import MAX_JSON_DEPTH
from overlay.messagenet import relayer
from tests.unit.test_gateway_codec import ACCOUNT, hello, sign

pytestmark = pytest.mark.timeout(120)

DEPTH = 90_000
TOO_DEEP = f"nested deeper than {MAX_JSON_DEPTH}"


async def answer(conn) -> str | bytes:
    with trio.fail_after(20):
        return await conn.get_message()


async def test_deep_json_gets_an_error_answer_and_the_node_stays_up(tmp_path, procs):
    node = procs([], tmp_path / "node")
    async with node.websocket("/gateway") as player:
        await player.send_message(hello(ACCOUNT))
        challenge = pb.GatewayMessage.FromString(await answer(player)).auth_request.ethereum_auth.challenge
        await player.send_message(sign(challenge, ACCOUNT))
        assert pb.GatewayMessage.FromString(await answer(player)).WhichOneof("payload") == "auth_ok"

    unclosed = "[" * DEPTH  # the closing brackets would not fit in /connect's frame
    assert len(unclosed) <= MAX_CLIENT_FRAME
    closed = unclosed + "]" * DEPTH

    async with node.websocket("/connect") as client:
        await client.send_message(unclosed)
        assert json.loads(await answer(client)) == {"type": "response", "data": {"ok": False, "reason": f"malformed json: {TOO_DEEP}"}}
        await client.send_message(json.dumps({"command": "list", "nonce": "n"}))
        assert json.loads(await answer(client)) == {"type": "response", "data": {"channels": []}, "nonce": "n"}

    async with node.websocket("/peermsg") as app:
        for document in (unclosed, closed):
            await app.send_message(document)
            assert json.loads(await answer(app)) == {"op": "error", "error": f"frame: {TOO_DEEP}"}

    async with node.websocket("/relayer") as relayer_socket:
        for document in (unclosed, closed):
            await relayer_socket.send_message(bytes([relayer.REGISTER]) + document.encode())
            frame = await answer(relayer_socket)
            assert (frame[0], json.loads(frame[1:])) == (relayer.ERROR, {"error": f"register: body: {TOO_DEEP}"})

    assert node.request("GET", "/health", token=False)[0] == 200
    assert node.popen.poll() is None
    code, stderr = node.stop()
    assert code == 0, stderr
    assert "Traceback" not in stderr and "RecursionError" not in stderr, stderr
