"""Reaching peers behind NAT: the trio adapter of the dial strategy (`nat.strategy`).

It carries out the strategy's actions (direct dial, relayed connection, WebRTC upgrade through
the relay's signalling server), answers WebRTC offers that reach us through our own signalling
nodes, and retires a relayed connection once a direct one replaces it (new streams already
prefer the direct one; the relayed one closes when idle, or after RETIRE_AFTER).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from collections import OrderedDict
from dataclasses import dataclass, field, replace

import multiaddr
import trio
from aiortc import RTCIceServer
from libp2p.connection_types import ConnectionType
from libp2p.host.basic_host import BasicHost
from libp2p.peer.id import ID

from nat.plan import plan_for
from nat.relay import RelayService
from nat.strategy import (
    DialAction, DialConnected, DialDirect, DialRelay, DialStrategy, Failed, GaveUp, Upgrade, Upgraded,
)
from nat.webrtc import PathInfo, WebRtcConfig, WebRtcSession
from nat.webrtc_conn import add_webrtc_connection
from nat.webrtc_description import parse_description
from overlay.transport.dialer import Dialer
from overlay.core.errors import DecodeError, DialError
from overlay.core.metrics import Registry
from signaling import messages
from signaling.service import SignalingService

log = logging.getLogger(__name__)

UPGRADE_TIMEOUT = 15.0
RETIRE_AFTER = 30.0
MAX_ANSWERING = 8
MAX_HISTORY = 1024
DIAL_TIMEOUT = 10.0


def webrtc_addr(path: PathInfo) -> multiaddr.Multiaddr:
    ip, port = path.remote or ("0.0.0.0", 0)
    return multiaddr.Multiaddr(f"/{'ip6' if ':' in ip else 'ip4'}/{ip}/udp/{port}/webrtc")


def path_of(conn) -> str:
    """How a connection runs: "direct-tcp", "direct-udp" (WebRTC) or "relayed"."""
    if conn.get_connection_type() is ConnectionType.RELAYED:
        return "relayed"
    addrs = conn.get_transport_addresses()
    return "direct-udp" if addrs and "webrtc" in str(addrs[0]) else "direct-tcp"


@dataclass
class DialRecord:
    """The last dial of a peer, in seconds from its start: what status and the NAT lab report."""

    started: float
    first_path: str = ""
    first: float | None = None
    direct: float | None = None
    gave_up: bool = False

    def to_json(self) -> dict[str, object]:
        ms = lambda t: None if t is None else round((t - self.started) * 1000, 1)  # noqa: E731
        return {"first_path": self.first_path, "first_ms": ms(self.first), "direct_ms": ms(self.direct), "gave_up": self.gave_up}


@dataclass
class _Attempt:
    addrs: tuple[str, ...]  # the record's addresses it was started with
    connected: trio.Event = field(default_factory=trio.Event)
    path: str = ""
    error: str = ""


class Traversal:
    def __init__(
        self,
        host: BasicHost,
        dialer: Dialer,
        signaling: SignalingService,
        relay: RelayService,
        webrtc: WebRtcConfig,
        metrics: Registry,
        ice_servers_via: Callable[[ID, list[multiaddr.Multiaddr]], tuple[RTCIceServer, ...]],
    ) -> None:
        self.host = host
        self.dialer = dialer
        self.signaling = signaling
        self.relay = relay
        self.webrtc = webrtc
        self.ice_servers_via = ice_servers_via
        self._attempts: dict[ID, _Attempt] = {}
        self._relay_addrs: OrderedDict[bytes, list[multiaddr.Multiaddr]] = OrderedDict()  # as records name them
        self.history: OrderedDict[ID, DialRecord] = OrderedDict()
        self._answering = 0
        self._nursery: trio.Nursery | None = None
        self.paths = metrics.counter("overlay_connections_total", "Connections made by dialing a peer ID, by first path")
        self.upgrades = metrics.counter("overlay_upgrades_total", "Attempts to replace a relayed connection by a direct one, by outcome")
        self.upgrade_seconds = metrics.histogram("overlay_upgrade_seconds", "Time from the relayed connection to the direct one")
        self.offers_refused = metrics.counter("overlay_webrtc_offers_refused_total", "Incoming WebRTC offers refused, by reason")
        signaling.on_signal = self.answer

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    # ---- dialing -----------------------------------------------------------------------------

    async def connect(self, peer: ID, addrs: list[multiaddr.Multiaddr]) -> str:
        """Connect to `peer` from its record's addresses; returns the first path ("direct" or
        "relayed"). The strategy goes on in the background (upgrade, relay retirement)."""
        key = tuple(map(str, addrs))
        # A dial under way from other addresses (an older record, say: a peer whose address
        # changed) would fail where ours may not: let it end, and start ours if it found nothing.
        while (attempt := self._attempts.get(peer)) is not None and attempt.addrs != key:
            await attempt.connected.wait()
            if not attempt.error:
                return attempt.path
        if attempt is None:
            assert self._nursery is not None, "Traversal.run() must be started first"
            attempt = self._attempts[peer] = _Attempt(key)
            self._nursery.start_soon(self._drive, peer, DialStrategy(plan_for(addrs)), attempt)
        await attempt.connected.wait()
        if attempt.error:
            raise DialError(f"dial {peer}: {attempt.error}")
        return attempt.path

    async def _drive(self, peer: ID, strategy: DialStrategy, attempt: _Attempt) -> None:
        record = self.history[peer] = DialRecord(trio.current_time())
        self.history.move_to_end(peer)
        while len(self.history) > MAX_HISTORY:
            self.history.popitem(last=False)
        send, receive = trio.open_memory_channel[Callable[[float], list[DialAction]]](math.inf)
        relayed_at: list[float] = []
        relays: list[ID] = []  # those we got a relayed connection through

        async def direct(addrs: tuple[str, ...]) -> None:
            ok = await self._try(self.dialer.connect(peer, [multiaddr.Multiaddr(a) for a in addrs], DIAL_TIMEOUT, direct_only=True))
            await send.send(lambda now: strategy.direct_done(ok, now))

        async def relayed(relay: bytes, addrs: tuple[str, ...]) -> None:
            relay_id = ID(relay)
            self._relay_addrs[relay] = [multiaddr.Multiaddr(a) for a in addrs]
            self._relay_addrs.move_to_end(relay)
            while len(self._relay_addrs) > MAX_HISTORY:
                self._relay_addrs.popitem(last=False)

            async def go() -> None:
                await self.dialer.connect(relay_id, [multiaddr.Multiaddr(a) for a in addrs], DIAL_TIMEOUT)
                await self.relay.dial(relay_id, peer)

            ok = await self._try(go())
            if ok:
                relayed_at.append(trio.current_time())
                relays.append(relay_id)
            await send.send(lambda now: strategy.relay_done(relay, ok, now))

        async def upgrade(relay: bytes) -> None:
            ok = await self._try(self.upgrade(peer, ID(relay)))
            self.upgrades.inc(outcome="direct" if ok else "failed")
            if ok and relayed_at:
                self.upgrade_seconds.observe(trio.current_time() - relayed_at[0])
            await send.send(lambda now: strategy.upgrade_done(ok, now))

        def apply(actions: list[DialAction]) -> None:
            for action in actions:
                if isinstance(action, DialDirect):
                    nursery.start_soon(direct, action.addrs)
                elif isinstance(action, DialRelay):
                    nursery.start_soon(relayed, action.relay, action.addrs)
                elif isinstance(action, Upgrade):
                    nursery.start_soon(upgrade, action.relay)
                elif isinstance(action, DialConnected):
                    attempt.path = record.first_path = action.path
                    record.first = trio.current_time()
                    if action.path == "direct":
                        record.direct = record.first
                    self.paths.inc(path=action.path)
                    self._settle(peer, attempt, "")
                elif isinstance(action, Failed):
                    self._settle(peer, attempt, action.reason)
                elif isinstance(action, Upgraded):
                    record.direct = record.direct or trio.current_time()
                    nursery.start_soon(self._retire_relayed, peer)
                elif isinstance(action, GaveUp):
                    record.gave_up = True
                    log.info("no direct path to %s; staying relayed", peer)
                    if relays:
                        nursery.start_soon(self._stay_relayed, peer, relays[-1])

        try:
            async with trio.open_nursery() as nursery:
                apply(strategy.start(trio.current_time()))
                while not strategy.finished:
                    deadline = strategy.next_timer()
                    event = None
                    with trio.move_on_at(deadline if deadline is not None else math.inf):
                        event = await receive.receive()
                    now = trio.current_time()
                    apply(event(now) if event is not None else strategy.handle_timer(now))
        finally:
            self._settle(peer, attempt, "the dial ended")

    def _settle(self, peer: ID, attempt: _Attempt, error: str) -> None:
        """The caller may go on (with `error` unless empty); a later connect() starts afresh."""
        if not attempt.connected.is_set():
            attempt.error = error
            attempt.connected.set()
        if self._attempts.get(peer) is attempt:
            del self._attempts[peer]

    @staticmethod
    async def _try(work) -> bool:
        try:
            await work
            return True
        except Exception as e:  # noqa: BLE001 - each way a path can fail is one failure of it
            log.debug("path attempt failed: %s", e)
            return False

    # ---- WebRTC: offering and answering ------------------------------------------------------

    def _config(self, via: ID) -> WebRtcConfig:
        """STUN at the signalling node first (the record told us where it is), then ours."""
        via_addrs = self._relay_addrs.get(via.to_bytes(), [])
        return replace(self.webrtc, ice_servers=self.ice_servers_via(via, via_addrs) + self.webrtc.ice_servers)

    async def upgrade(self, peer: ID, via: ID) -> None:
        """A direct WebRTC connection to `peer`, set up through signalling node `via`."""
        session = WebRtcSession(self._config(via), controlling=True)
        try:
            with trio.fail_after(UPGRADE_TIMEOUT):
                local = await session.gather()
                answer = await self.signaling.call(via, peer, local.to_json())
                control = await session.connect(parse_description(answer, self.webrtc.allow_loopback_candidates))
                await add_webrtc_connection(
                    self.host.get_network(), session, control, peer, webrtc_addr(session.path), session.path.relayed
                )
        except BaseException:
            await session.close()
            raise
        log.info("direct WebRTC path to %s: %s -> %s", peer, session.path.local_type, session.path.remote_type)

    async def answer(self, via: ID, caller: ID, signal: messages.Signal) -> None:
        """An offer that reached us through signalling node `via`."""
        if signal.kind != "offer":
            return
        try:
            remote = parse_description(signal.body, self.webrtc.allow_loopback_candidates)
        except DecodeError as e:
            self.offers_refused.inc(reason="bad-description")
            await self._try(self.signaling.reply(via, caller, signal.session, "bye", {"reason": str(e)}))
            return
        if self._answering >= MAX_ANSWERING:
            self.offers_refused.inc(reason="busy")
            await self._try(self.signaling.reply(via, caller, signal.session, "bye", {"reason": "busy"}))
            return
        self._answering += 1
        session = WebRtcSession(self._config(via), controlling=False)
        try:
            with trio.fail_after(UPGRADE_TIMEOUT):
                local = await session.gather()
                await self.signaling.reply(via, caller, signal.session, "answer", local.to_json())
                control = await session.connect(remote)
                conn = await add_webrtc_connection(
                    self.host.get_network(), session, control, None, webrtc_addr(session.path), session.path.relayed
                )
            if conn.muxed_conn.peer_id != caller:
                log.warning("WebRTC offer from %s, but the peer authenticated as %s", caller, conn.muxed_conn.peer_id)
                await conn.close()
        except Exception as e:  # noqa: BLE001 - a failed answer costs only this session
            log.debug("answering %s failed: %s", caller, e)
            await session.close()
        finally:
            self._answering -= 1

    async def _stay_relayed(self, peer: ID, relay: ID) -> None:
        """No direct path: a persistent circuit through the same relay replaces the first one,
        which the relay caps in bytes and time (nat/relay.py, RelayLimits)."""
        try:
            kept = await self.relay.dial(relay, peer, persistent=True)
        except DialError as e:
            log.info("no persistent relayed connection to %s via %s: %s", peer, relay, e)
            return
        await self._retire_relayed(peer, keep=kept)

    async def _retire_relayed(self, peer: ID, keep: object = None) -> None:
        deadline = trio.current_time() + RETIRE_AFTER
        while True:
            relayed = [c for c in self.host.get_network().get_connections(peer)
                       if c.get_connection_type() is ConnectionType.RELAYED and c is not keep]
            if not relayed:
                return
            if trio.current_time() >= deadline or all(not c.get_streams() for c in relayed):
                for conn in relayed:
                    with trio.move_on_after(2):
                        await conn.close()
                return
            await trio.sleep(1.0)
