"""Connection liveness on the network: ping each of the host's connections on itself, close the
dead ones, dial their peers again (when, and why: overlay.core.liveness)."""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable

import trio
from libp2p.host.basic_host import BasicHost
from libp2p.host.ping import ID as PING_PROTOCOL
from libp2p.network.connection.swarm_connection import SwarmConn
from libp2p.peer.id import ID
from libp2p.protocol_muxer.multiselect_client import MultiselectClient
from libp2p.protocol_muxer.multiselect_communicator import MultiselectCommunicator
from libp2p.rcmgr import Direction

from overlay.core.liveness import INTERVAL, REDIAL_DELAYS, Close, Liveness, LivenessStats

log = logging.getLogger(__name__)

TIMEOUT = 10.0  # a ping's answer, at most
CLOSE_TIMEOUT = 5.0
MAX_INFLIGHT = 32  # pings at once
PING_SIZE = 32


class ConnectionLiveness:
    """The trio adapter: pings the host's connections, closes dead ones, calls `redial(peer)`."""

    def __init__(self, host: BasicHost, redial: Callable[[ID], Awaitable[object]], interval: float = INTERVAL,
                 timeout: float = TIMEOUT) -> None:
        self.host = host
        self.redial = redial
        self.timeout = min(timeout, interval)
        self.core: Liveness[SwarmConn, ID] = Liveness(interval)
        self._limiter = trio.CapacityLimiter(MAX_INFLIGHT)

    @property
    def stats(self) -> LivenessStats:
        return self.core.stats

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        tick = min(1.0, self.core.interval / 4)
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                conns = {
                    conn: (peer, getattr(conn, "direction", None) is Direction.OUTBOUND)
                    for peer, peer_conns in self.host.get_network().get_connections_map().items()
                    for conn in peer_conns
                    if not conn.is_closed
                }
                for ping in self.core.tick(trio.current_time(), conns):
                    nursery.start_soon(self._check, nursery, ping.conn, conns[ping.conn][0])
                await trio.sleep(tick)

    async def _check(self, nursery: trio.Nursery, conn: SwarmConn, peer: ID) -> None:
        async with self._limiter:
            try:
                with trio.fail_after(self.timeout):
                    await ping_connection(conn)
            except trio.TooSlowError:
                why = f"no ping answer within {self.timeout:.0f}s"
            except Exception as e:  # noqa: BLE001 - stream failures come in many library types
                why = f"ping failed: {type(e).__name__}: {e}"
            else:
                self.core.answered(conn, trio.current_time())
                return
        if conn.is_closed:
            return  # it ended by itself; the next tick forgets it
        for action in self.core.failed(conn, trio.current_time(), why):
            if isinstance(action, Close):
                log.info("closing a connection to %s: %s", peer, action.why)
                with trio.move_on_after(CLOSE_TIMEOUT):
                    await conn.close()
            else:
                nursery.start_soon(self._redial, action.peer)

    async def _redial(self, peer: ID) -> None:
        error: Exception | None = None
        for delay in REDIAL_DELAYS:
            await trio.sleep(delay)
            try:
                await self.redial(peer)
            except Exception as e:  # noqa: BLE001 - any dial failure; the next try may find a newer record
                error = e
            else:
                log.info("dialed %s again after its connection died", peer)
                return
        self.core.stats.redials_failed += 1
        log.info("could not dial %s again after its connection died: %s", peer, error)


async def ping_connection(conn: SwarmConn) -> None:
    """One libp2p ping (32 random bytes echoed) on a new stream of this very connection."""
    stream = await conn.new_stream()
    try:
        await MultiselectClient().select_one_of([PING_PROTOCOL], MultiselectCommunicator(stream))
        stream.set_protocol(PING_PROTOCOL)
        payload = os.urandom(PING_SIZE)
        await stream.write(payload)
        echoed = b""
        while len(echoed) < len(payload):
            chunk = await stream.read(len(payload) - len(echoed))
            if not chunk:
                raise EOFError("the stream ended before the echo")
            echoed += chunk
        if echoed != payload:
            raise ValueError("the echo did not match")
    finally:
        with trio.move_on_after(1):
            await stream.close()
