"""The INM link writer with fake collaborators (the service takes them, not a node): a batch
whose write fails is sent first on the next stream to that neighbour, not lost."""

from __future__ import annotations

import pytest
import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from libp2p.peer.id import ID

from overlay.channels.inm import decode
from overlay.channels import router
from overlay.channels.service import ChannelService
from overlay.channels.table import _Channel
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


def service(host: Host, **kw) -> ChannelService:
    """A channel service on the fake host, with collaborators that always succeed."""
    async def connect(peer: ID) -> None:
        return None

    async def ping(peer: ID) -> float:
        return 0.001

    return ChannelService("me", Ed25519PrivateKey.generate(), host, connect, lambda: [], ping, None, "test", Registry(), **kw)


async def test_a_batch_whose_write_failed_goes_out_on_the_next_stream():
    host = Host()
    svc = service(host)
    async with trio.open_nursery() as nursery:
        await nursery.start(svc.run)
        svc.notify(str(PEER), {"command": "hello-there"})
        second = host.streams[1]
        await wait_for(lambda: any(b"hello-there" in f for f in second.frames), what="the message on the second stream")
        assert len(host.streams[0].frames) == 1, "the first stream carried the handshake, then broke"
        commands = [decode(f).data.get("command") for f in second.frames[1:]]
        assert commands.count("hello-there") == 1 and svc.dropped.get(reason="link lost") == 0
        nursery.cancel_scope.cancel()


async def test_a_link_only_a_message_opened_is_closed_once_idle_and_a_members_stays(monkeypatch):
    """Links do not pile up: one opened to send a command is closed after LINK_IDLE without
    traffic, and the next envelope opens a new stream; a link to a member of a channel open
    here stays (its messages then need no dial)."""
    monkeypatch.setattr(router, "LINK_IDLE", 0.3)
    host = Host()
    host.streams = [Stream(fail_after=None), Stream(fail_after=None), Stream(fail_after=None)]
    svc = service(host)
    async with trio.open_nursery() as nursery:
        await nursery.start(svc.run)
        svc.notify(str(PEER), {"command": "hello-there"})
        await wait_for(lambda: str(PEER) in svc.neighbours(), what="the link up")
        await wait_for(lambda: str(PEER) not in svc.links, what="the idle link closed")
        assert str(PEER) not in svc.neighbours() and svc.dropped.get(reason="link lost") == 0
        assert svc.links_closed.get(reason="idle") == 1
        svc.table.channels["ch"] = _Channel(subscribers={1}, members={str(PEER): None})
        svc.notify(str(PEER), {"command": "again"})
        await wait_for(lambda: any(b"again" in f for f in host.streams[1].frames), what="a new stream for the next")
        await trio.sleep(1.0)  # three idle periods: a member's link stays
        assert str(PEER) in svc.links and host.opened == 2 and svc.links_closed.get(reason="idle") == 1
        nursery.cancel_scope.cancel()


async def test_at_the_cap_the_least_recently_used_link_is_closed_for_a_new_one():
    """A node at `max_links` does not refuse a new destination: the link used longest ago (not
    kept, nothing queued) is closed for it, its peer still a member, counted."""
    peers = [ID(peer_id_from_public_key(Ed25519PrivateKey.generate().public_key())) for _ in range(3)]

    class Hosts(Host):
        def __init__(self) -> None:
            self.streams = [Stream(fail_after=None) for _ in range(4)]
            self.opened = 0
    svc = service(Hosts(), max_links=2)
    async with trio.open_nursery() as nursery:
        await nursery.start(svc.run)
        for peer in peers[:2]:
            svc.notify(str(peer), {"command": "hi"})
            await wait_for(lambda peer=peer: str(peer) in svc.neighbours(), what="a link up")
            await trio.sleep(0.05)  # the first is the least recently used
        svc.notify(str(peers[2]), {"command": "hi"})
        await wait_for(lambda: str(peers[2]) in svc.neighbours(), what="the third link up")
        assert set(svc.links) == {str(peers[1]), str(peers[2])} and str(peers[0]) not in svc.neighbours()
        assert svc.links_closed.get(reason="least recently used") == 1 and svc.dropped.get(reason="no link") == 0
        nursery.cancel_scope.cancel()
