"""A local application cannot take what another live connection registered (issue 15): a MessageNet
relayer ID, a typed-message type or a Degas degas_id held on a real node process is refused to a
second connection with a clear error, counted in /metrics, while the holder keeps its messages;
once the holder disconnects, the second one can register it and gets them."""

from __future__ import annotations

import base64
import json
from collections.abc import Awaitable, Callable

import pytest
import trio
from trio_websocket import WebSocketConnection

from overlay.gateway import degas_pb2 as pb
from overlay.gateway.session import Code
from overlay.messagenet import relayer
from overlay.peermsg.core import with_refs
from tests.loopback.nodeproc import Proc
from tests.unit.test_gateway_codec import ACCOUNT, DEGAS, degas, hello, sign

pytestmark = pytest.mark.timeout(120)

B64 = lambda data: base64.b64encode(data).decode()
RELAYER_ID = 42


async def until_registered(attempt: Callable[[], Awaitable[bool]]) -> None:
    """The node notices a closed WebSocket a moment after the client does: retry until it has."""
    with trio.fail_after(20):
        while not await attempt():
            await trio.sleep(0.05)


# ---- MessageNet relayers (WS /relayer) ----


async def relayer_frame(conn: WebSocketConnection) -> tuple[int, dict]:
    with trio.fail_after(15):
        frame = await conn.get_message()
    return frame[0], json.loads(frame[1:])


async def relayer_send(conn: WebSocketConnection, action: int, **body) -> None:
    await conn.send_message(bytes([action]) + json.dumps(body).encode())


async def self_send(conn: WebSocketConnection, proc: Proc, data: bytes, request_id: int) -> None:
    await relayer_send(conn, relayer.SEND_TO_VALIDATOR, relayer_id=RELAYER_ID, node_id=proc.peer_id, raw_data=B64(data), id=request_id)


async def test_a_live_relayer_id_cannot_be_taken(tmp_path, procs):
    a = procs([], tmp_path / "a")
    delivered = lambda data: (relayer.SEND_TO_CLIENT, {"relayer_id": RELAYER_ID, "node_id": a.peer_id, "data": B64(data)})
    async with a.websocket("/relayer") as holder, a.websocket("/relayer") as rival:
        await relayer_send(holder, relayer.REGISTER, relayer_id=RELAYER_ID)
        await self_send(holder, a, b"mine", 1)
        assert await relayer_frame(holder) == delivered(b"mine")
        assert await relayer_frame(holder) == (relayer.DELIVERY, {"id": 1, "ok": True})
        # the same connection registering again is no conflict
        await relayer_send(holder, relayer.REGISTER, relayer_id=RELAYER_ID)
        await self_send(holder, a, b"still mine", 2)
        assert await relayer_frame(holder) == delivered(b"still mine")
        assert await relayer_frame(holder) == (relayer.DELIVERY, {"id": 2, "ok": True})

        await relayer_send(rival, relayer.REGISTER, relayer_id=RELAYER_ID)
        assert await relayer_frame(rival) == (relayer.ERROR, {"error": f"relayer_id {RELAYER_ID} is registered by another connection"})
        await self_send(rival, a, b"for the holder", 3)
        assert await relayer_frame(rival) == (relayer.DELIVERY, {"id": 3, "ok": True})  # no SendToClient before it
        assert await relayer_frame(holder) == delivered(b"for the holder")
        assert a.metric('overlay_relayer_dropped_total{reason="relayer id taken"}') == 1

        await holder.aclose()
        request_ids = iter(range(10, 10_000))

        async def register() -> bool:
            """A refused attempt's message may have been held for the ID (its holder gone by
            then): the next registration gets it first."""
            request_id = next(request_ids)
            await relayer_send(rival, relayer.REGISTER, relayer_id=RELAYER_ID)
            await self_send(rival, a, b"now yours", request_id)
            frames = [await relayer_frame(rival)]
            while frames[-1][0] != relayer.DELIVERY:
                frames.append(await relayer_frame(rival))
            assert frames[-1] == (relayer.DELIVERY, {"id": request_id, "ok": True})
            if frames[0][0] == relayer.ERROR:
                return False
            assert frames[:-1] and all(f == delivered(b"now yours") for f in frames[:-1]), frames
            return True

        await until_registered(register)


# ---- typed peer messages (WS /peermsg) ----


async def app_reply(conn: WebSocketConnection) -> dict:
    with trio.fail_after(15):
        return json.loads(await conn.get_message())


async def app_send(conn: WebSocketConnection, **request) -> None:
    await conn.send_message(json.dumps(request))


async def test_a_live_peermsg_type_cannot_be_taken(tmp_path, procs):
    a = procs([], tmp_path / "a")
    b = procs(["--bootstrap", a.addrs[0]], tmp_path / "b")
    with trio.fail_after(30):
        while b.get_json("/v1/status")["routing_table"] < 1:
            await trio.sleep(0.1)
    async with a.websocket("/peermsg") as sender, b.websocket("/peermsg") as holder, b.websocket("/peermsg") as rival:

        async def belief(text: bytes) -> None:
            await app_send(sender, op="send", peer=b.peer_id, type="BELIEF", body=B64(with_refs([], text)))
            assert (await app_reply(sender))["op"] == "sent"

        def message(reply: dict) -> tuple:
            return reply["op"], reply.get("type"), reply.get("peer"), base64.b64decode(reply.get("body", ""))

        for _ in range(2):  # the same connection registering again is no conflict
            await app_send(holder, op="register", types=["BELIEF"])
            assert await app_reply(holder) == {"op": "registered", "types": ["BELIEF"]}
        await app_send(rival, op="register", types=["QUERY", "BELIEF"])
        assert await app_reply(rival) == {"op": "error", "error": "another application holds BELIEF; nothing was registered"}
        assert b.metric('overlay_peermsg_app_dropped_total{reason="type taken",type="BELIEF"}') == 1

        await belief(b"one")
        assert message(await app_reply(holder)) == ("message", "BELIEF", a.peer_id, b"one")
        await app_send(rival, op="register", types=[])
        assert await app_reply(rival) == {"op": "registered", "types": []}  # and no message before it

        await holder.aclose()

        async def register() -> bool:
            await app_send(rival, op="register", types=["BELIEF"])
            reply = await app_reply(rival)
            assert reply["op"] in ("registered", "error"), reply
            return reply == {"op": "registered", "types": ["BELIEF"]}

        await until_registered(register)
        await belief(b"two")
        assert message(await app_reply(rival)) == ("message", "BELIEF", a.peer_id, b"two")


# ---- Degas service instances (WS /service) ----


async def internal(conn: WebSocketConnection) -> pb.GatewayInternalMessage:
    message = pb.GatewayInternalMessage()
    with trio.fail_after(15):
        message.ParseFromString(await conn.get_message())
    return message


def register_frame(degas_id: bytes = DEGAS) -> bytes:
    return pb.DegasMessage(register=pb.DegasRegisterMessage(degas_id=degas_id)).SerializeToString()


async def test_a_live_degas_id_cannot_be_taken(tmp_path, procs):
    a = procs([], tmp_path / "a")
    async with a.websocket("/service") as holder, a.websocket("/service") as rival, a.websocket("/gateway") as player:
        await player.send_message(hello(ACCOUNT))
        challenge = pb.GatewayMessage.FromString(await player.get_message()).auth_request.ethereum_auth.challenge
        await player.send_message(sign(challenge, ACCOUNT))
        assert pb.GatewayMessage.FromString(await player.get_message()).WhichOneof("payload") == "auth_ok"

        for _ in range(2):  # the same connection registering again is no conflict
            await holder.send_message(register_frame())
            assert (await internal(holder)).registered.degas_id == DEGAS
        await rival.send_message(register_frame())
        refused = (await internal(rival)).error
        assert (refused.code, refused.degas_id) == (Code.DEGAS_ID_TAKEN, DEGAS) and "has this degas_id" in refused.reason
        assert a.metric('overlay_gateway_dropped_total{reason="degas_id taken"}') == 1

        await player.send_message(degas(b"one"))
        assert (await internal(holder)).client_message.payload == b"one"
        to_client = pb.DegasMessage(degas_to_client=pb.DegasToClientMessage(account_id=b"x", payload=b"?"))
        await rival.send_message(to_client.SerializeToString())
        assert (await internal(rival)).error.code == Code.NOT_AUTHENTICATED  # not registered, and no message before it

        await holder.aclose()

        async def register() -> bool:
            await rival.send_message(register_frame())
            answer = await internal(rival)
            if answer.WhichOneof("payload") == "error":
                assert answer.error.code == Code.DEGAS_ID_TAKEN, answer
                return False
            assert answer.registered.degas_id == DEGAS
            return True

        await until_registered(register)
        await player.send_message(degas(b"two"))
        assert (await internal(rival)).client_message.payload == b"two"
