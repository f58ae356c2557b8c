"""The INM link writer with fake collaborators (the service takes them, not a node): a batch
whose write fails is sent first on the next stream to that neighbour, not lost."""

from __future__ import annotations

import pytest
import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from libp2p.peer.id import ID

from overlay.channels.inm import decode
from overlay.channels.service import ChannelService
from overlay.core.framing import FrameDecoder
from overlay.core.metrics import Registry
from overlay.core.records import peer_id_from_public_key
from tests.conftest import wait_for

pytestmark = pytest.mark.timeout(30)

PEER = ID(peer_id_from_public_key(Ed25519PrivateKey.generate().public_key()))


class Stream:
    """Records what is written; the first stream fails its first write after the handshake."""

    def __init__(self, fail_after: int | None) -> None:
        self.fail_after = fail_after
        self.decoder = FrameDecoder(1 << 20)
        self.frames: list[bytes] = []

    async def write(self, data: bytes) -> None:
        if self.fail_after is not None and len(self.frames) >= self.fail_after:
            raise ConnectionResetError("the stream broke")
        self.frames += self.decoder.feed(data)

    async def reset(self) -> None:
        pass


class Host:
    def __init__(self) -> None:
        self.streams = [Stream(fail_after=1), Stream(fail_after=None)]
        self.opened = 0

    def set_stream_handler(self, protocol, handler) -> None:
        pass

    async def new_stream(self, peer_id, protocols) -> Stream:
        self.opened += 1
        return self.streams[self.opened - 1]


async def test_a_batch_whose_write_failed_goes_out_on_the_next_stream():
    host = Host()

    async def connect(peer: ID) -> None:
        return None

    async def ping(peer: ID) -> float:
        return 0.001

    svc = ChannelService("me", Ed25519PrivateKey.generate(), host, connect, lambda: [], ping, None, "test", Registry())
    async with trio.open_nursery() as nursery:
        await nursery.start(svc.run)
        svc.notify(str(PEER), {"command": "hello-there"})
        second = host.streams[1]
        await wait_for(lambda: any(b"hello-there" in f for f in second.frames), what="the message on the second stream")
        assert len(host.streams[0].frames) == 1, "the first stream carried the handshake, then broke"
        commands = [decode(f).data.get("command") for f in second.frames[1:]]
        assert commands.count("hello-there") == 1 and svc.dropped.get(reason="link lost") == 0
        nursery.cancel_scope.cancel()
