"""Nodes in the test's own trio process on 127.0.0.1, and token-carrying clients of their API."""

from __future__ import annotations

import itertools
from contextlib import asynccontextmanager
from pathlib import Path

import multiaddr
import trio
from trio_websocket import open_websocket_url

from overlay.core.records import open_peer_record, record_key
from overlay.node.apiauth import auth_headers, read_token
from overlay.node.config import Config
from overlay.node.node import Node
from tests.conftest import wait_for

LOOPBACK = (multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0"),)


def api_headers(node: Node) -> list[tuple[str, str]]:
    """The Authorization header for `node`'s API (serve_api made the token in its data dir)."""
    return auth_headers(read_token(node.config.data_dir))


def open_api_websocket(node: Node, url: str, **kwargs):
    """open_websocket_url to one of `node`'s API WebSockets, carrying its token."""
    return open_websocket_url(url, extra_headers=api_headers(node), **kwargs)


def relay_address_stored(store: Node, hidden: Node):
    """Whether `store`'s DHT holds `hidden`'s record with an address (its relay's): what a
    caller that is a DHT client finds when it looks `hidden` up."""
    def check() -> bool:
        value = store.core.records.get(record_key(hidden.peer_id_bytes), trio.current_time())
        return value is not None and bool(open_peer_record(value).addrs)
    return check


class Cluster:
    """Nodes in this trio process on loopback, each with its own data dir; stopped on exit."""

    def __init__(self, nursery: trio.Nursery, root: Path) -> None:
        self.nursery = nursery
        self.root = root
        self.nodes: list[Node] = []
        self._ids = itertools.count()

    async def start(self, join: Node | None = None, **overrides) -> Node:
        n = next(self._ids)
        # never ask this machine's real gateway for a port mapping, nor multicast on its LAN
        # (nor anything off loopback)
        fields = {"data_dir": self.root / f"node{n}", "listen": LOOPBACK, "network": "test", "port_mapping": False,
                  "mdns": False}
        if join is not None:
            fields["bootstrap"] = (multiaddr.Multiaddr(join.full_addrs()[0]),)
        fields.update(overrides)
        node = Node(Config(**fields))
        await self.nursery.start(node.run)
        self.nodes.append(node)
        return node


@asynccontextmanager
async def cluster(tmp_path: Path):
    async with trio.open_nursery() as nursery:
        yield Cluster(nursery, tmp_path)
        nursery.cancel_scope.cancel()


async def three_nodes(start, c) -> tuple[Node, Node, Node]:
    """a, b joining a, d joining b; `start(c, join=...)` starts one (with whatever API it needs)."""
    a = await start(c)
    b = await start(c, join=a)
    d = await start(c, join=b)
    for n in (b, d):
        await wait_for(lambda n=n: n.joined.is_set(), what="join")
    return a, b, d
