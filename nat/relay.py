"""Relayed connections through a signalling node (`/overlay/<network>/relay/1.0.0`, PROTOCOL.md).

Why our own relay rather than py-libp2p's circuit relay v2: a relay here serves exactly the
peers registered with the node's signalling server, so registration, relaying and their limits
are one mechanism with one state (and one model in the simulator); and the relayed connection
is added to the swarm as an ordinary Noise + Yamux connection
(`overlay.transport.host._Swarm.add_raw_connection`).

`nat/circuits.py` is the relay's admission and pacing without I/O (`RelayBudget`); `RelayService`
is the trio adapter: it splices hop and stop streams on the
relay, accepts stop streams from our own signalling nodes, and dials through a relay.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import multiaddr
import trio
from libp2p.host.basic_host import BasicHost
from libp2p.io.abc import ReadWriteCloser
from libp2p.network.connection.raw_connection import RawConnection
from libp2p.network.connection.swarm_connection import SwarmConn
from libp2p.network.stream.exceptions import StreamEOF
from libp2p.peer.id import ID

from nat.circuits import Circuit, RelayBudget, RelayFull, RelayLimits
from overlay.core.errors import DecodeError, DialError
from overlay.transport.framed import FramedStream
from overlay.core.metrics import Registry
from signaling import messages
from signaling.messages import MAX_FRAME

log = logging.getLogger(__name__)

CONTROL_TIMEOUT = 5.0
COPY_CHUNK = 64 * 1024


def relay_protocol(network: str) -> str:
    return f"/overlay/{network}/relay/1.0.0"


class StreamConnection(ReadWriteCloser):
    """A libp2p stream carrying another libp2p connection; `prefix` holds bytes already read
    past the control messages. It counts the bytes and time it carried, to tell whether it
    ended at the relay's `limit`."""

    def __init__(self, framed: FramedStream, limit: messages.Limit | None = None) -> None:
        self.stream = framed.stream
        self._prefix = framed.decoder.take_rest()
        self.limit = limit
        self.carried = 0
        self.started = trio.current_time()

    async def read(self, n: int | None = None) -> bytes:
        if self._prefix:
            size = len(self._prefix) if n is None or n < 0 else n
            data, self._prefix = self._prefix[:size], self._prefix[size:]
            return data
        try:
            data = await self.stream.read(n)
        except StreamEOF:
            return b""
        self.carried += len(data)
        return data

    async def write(self, data: bytes) -> None:
        await self.stream.write(data)
        self.carried += len(data)

    def at_limit(self) -> bool:
        """Whether the bytes or time carried reached the limit (the relay ends a circuit at
        the chunk that would cross it, so within one chunk)."""
        limit = self.limit
        if limit is None:
            return False
        return bool((limit.bytes and self.carried >= limit.bytes - COPY_CHUNK)
                    or (limit.seconds and trio.current_time() - self.started >= limit.seconds - 1))

    async def close(self) -> None:
        with trio.move_on_after(1):
            try:
                await self.stream.close()
            except Exception:  # noqa: BLE001 - a relayed stream can already be gone
                pass

    def get_remote_address(self) -> tuple[str, int] | None:
        return None


class RelayService:
    def __init__(
        self,
        host: BasicHost,
        network: str,
        metrics: Registry,
        is_registered: Callable[[str], bool],
        is_my_relay: Callable[[ID], bool],
        limits: RelayLimits | None = None,
    ) -> None:
        """`is_registered(peer)`: whether our signalling server holds a registration of `peer`
        (we relay only to those); `is_my_relay(peer)`: whether we are registered with `peer`
        (we accept relayed connections only through those)."""
        self.host = host
        self.protocol = relay_protocol(network)
        self.is_registered = is_registered
        self.is_my_relay = is_my_relay
        self.budget = RelayBudget(limits)
        self._nursery: trio.Nursery | None = None
        self.relayed_bytes = metrics.counter("overlay_relay_bytes_total", "Bytes this node relayed for others")
        self.refused = metrics.counter("overlay_relay_refused_total",
                                       "Relay requests refused, and circuits ended at their limit (limit), by reason")
        self.limited = metrics.counter("overlay_relay_limited_total",
                                       "Our own relayed connections that ended at their relay's limit, by side")
        metrics.gauge("overlay_relay_circuits", "Relayed connections through this node", lambda: len(self.budget.circuits))
        # stop streams come from our relay, up to its per-peer circuit limit
        host.set_stream_handler(self.protocol, self._handle, max_per_peer=self.budget.limits.per_peer)

    # ---- dialing through a relay ------------------------------------------------------------

    async def dial(self, relay: ID, target: ID, persistent: bool = False) -> SwarmConn:
        """A connection to `target` through `relay` (we must already be connected to `relay`):
        a first connection, capped by the relay while a direct path is sought, or `persistent`
        (rate-limited) once none was found."""
        try:
            with trio.fail_after(CONTROL_TIMEOUT):
                stream = await self.host.new_stream(relay, [self.protocol])
                framed = FramedStream(stream, MAX_FRAME)
                await framed.write(messages.encode(messages.Connect(str(target), persistent)))
                reply = await _read_message(framed)
        except (trio.TooSlowError, DecodeError) as e:
            raise DialError(f"relay {relay}: {e or 'no answer'}") from None
        except Exception as e:  # noqa: BLE001 - stream errors come in many library types
            raise DialError(f"relay {relay}: {type(e).__name__}: {e}") from None
        if not isinstance(reply, messages.Connected):
            await framed.close()
            reason = f"{reply.code}: {reply.reason}" if isinstance(reply, messages.Error) else "unexpected answer"
            raise DialError(f"relay {relay} refused: {reason}")
        carried = StreamConnection(framed, reply.limit)
        addr = multiaddr.Multiaddr(f"/p2p/{relay}/p2p-circuit/p2p/{target}")
        try:
            conn = await self.host.get_network().add_raw_connection(RawConnection(carried, True), target, addr, relayed=True)
        except Exception as e:  # noqa: BLE001 - the upgrade raises several library types
            await framed.close()
            raise DialError(f"relayed connection to {target} via {relay}: {e}") from None
        if reply.limit is not None and self._nursery is not None:
            self._nursery.start_soon(self._watch, conn, carried, "caller")
        return conn

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Watches our relayed connections, to say when one ends at its relay's limit."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    async def _watch(self, conn: SwarmConn, carried: StreamConnection, side: str) -> None:
        await conn.muxed_conn.event_closed.wait()
        if carried.at_limit():
            self.limited.inc(side=side)
            log.info("relayed connection with %s ended at its relay's limit (%s)", conn.muxed_conn.peer_id, carried.limit)

    # ---- the relay (hop) and the registered node (stop) ------------------------------------

    async def _handle(self, stream) -> None:
        framed = FramedStream(stream, MAX_FRAME)
        remote = stream.muxed_conn.peer_id
        try:
            with trio.fail_after(CONTROL_TIMEOUT):
                first = await _read_message(framed)
            if isinstance(first, messages.Connect):
                await self._hop(framed, remote, first)
            elif isinstance(first, messages.Incoming):
                await self._stop(framed, remote, first)
            else:
                await self._refuse(framed, "bad-message", f"{type(first).__name__} cannot start a relay stream")
        except (trio.TooSlowError, DecodeError) as e:
            self.refused.inc(reason="bad-message")
            log.debug("relay stream from %s: %s", remote, e or "timed out")
        except Exception as e:  # noqa: BLE001 - a broken stream must not reach the swarm
            log.debug("relay stream from %s ended: %s", remote, e)
        finally:
            await framed.close()

    async def _hop(self, caller: FramedStream, caller_id: ID, connect: messages.Connect) -> None:
        target = connect.to
        if not self.is_registered(target):
            return await self._refuse(caller, "not-registered", f"{target} is not registered here")
        try:
            circuit = self.budget.admit(target, self.host.counted_ip(caller.stream), connect.persistent, trio.current_time())
        except RelayFull as e:
            return await self._refuse(caller, e.code, str(e))
        try:
            limit = self.budget.limit_of(circuit)
            with trio.fail_after(CONTROL_TIMEOUT):
                callee = FramedStream(await self.host.new_stream(ID.from_base58(target), [self.protocol]), MAX_FRAME)
                await callee.write(messages.encode(messages.Incoming(str(caller_id), limit)))
                reply = await _read_message(callee)
            if not isinstance(reply, messages.Accepted):
                await callee.close()
                return await self._refuse(caller, "refused", f"{target} did not accept")
            await caller.write(messages.encode(messages.Connected(limit)))
            with trio.move_on_at(circuit.deadline) as timed:
                await self._splice(caller, callee, circuit)
            if timed.cancelled_caught:
                self.refused.inc(reason="limit")
                await callee.close()
        finally:
            self.budget.release(circuit)

    async def _splice(self, a: FramedStream, b: FramedStream, circuit: Circuit) -> None:
        """Copy both ways, each chunk as the budget allows, until either side ends or the
        circuit reaches its limit."""

        async def pump(src: FramedStream, dst: FramedStream) -> None:
            try:
                data = src.decoder.take_rest()
                while True:
                    if not data:
                        try:
                            data = await src.stream.read(COPY_CHUNK)
                        except StreamEOF:
                            break
                        if not data:
                            break
                    wait = self.budget.carry(circuit, len(data), trio.current_time())
                    if wait:
                        await trio.sleep(wait)
                    await dst.stream.write(data)
                    self.relayed_bytes.inc(len(data))
                    data = b""
            except RelayFull as e:
                self.refused.inc(reason=e.code)
                log.debug("relay circuit to %s: %s", circuit.callee, e)
            except Exception as e:  # noqa: BLE001 - either side may reset
                log.debug("relay: %s", e)
            nursery.cancel_scope.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump, a, b)
            nursery.start_soon(pump, b, a)
        await b.close()

    async def _stop(self, relay: FramedStream, relay_id: ID, incoming: messages.Incoming) -> None:
        caller = incoming.sender
        if not self.is_my_relay(relay_id):
            return await self._refuse(relay, "refused", "not one of my signalling nodes")
        await relay.write(messages.encode(messages.Accepted()))
        carried = StreamConnection(relay, incoming.limit)
        addr = multiaddr.Multiaddr(f"/p2p/{relay_id}/p2p-circuit/p2p/{caller}")
        conn = await self.host.get_network().add_raw_connection(RawConnection(carried, False), None, addr, relayed=True)
        if str(conn.muxed_conn.peer_id) != caller:
            log.warning("relayed caller said %s but authenticated as %s", caller, conn.muxed_conn.peer_id)
        await self._watch(conn, carried, "callee")  # the handler's stream lives as long as the connection

    async def _refuse(self, framed: FramedStream, code: str, reason: str) -> None:
        self.refused.inc(reason=code)
        with trio.move_on_after(1):
            try:
                await framed.write(messages.encode(messages.Error(code, reason)))
            except Exception:  # noqa: BLE001
                pass


async def _read_message(framed: FramedStream) -> messages.Message:
    data = await framed.read()
    if data is None:
        raise DecodeError("stream ended before a message")
    return messages.decode(data)
