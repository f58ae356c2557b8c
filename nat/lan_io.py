"""LAN discovery on the network: announce this node over mDNS and dial the LAN peers it hears
(what is dialed, and why it is safe: nat.lan).

The mDNS wire, the multicast sockets and the record cache are python-zeroconf's (maintained,
the library Home Assistant runs on). py-libp2p's own mDNS module wraps the same library, but we
do not use it: its listener sleeps in zeroconf's thread while it retries (stalling every other
announcement), keeps each announced address with no bound, filter or proof, reads TXT records
through zeroconf's `properties`, which keep one value per key (the spec repeats `dnsaddr=`, so
only one address survives), and clears a peer's addresses on a goodbye packet anyone can send.

zeroconf runs its own thread; its browser's callbacks only hand names to trio
(`TrioToken.run_sync_soon`, which never blocks that thread), into a bounded queue whose
overflow is counted; lookups of the names run in worker threads.
"""

from __future__ import annotations

import ipaddress
import logging
import secrets
import string
from collections.abc import Awaitable, Callable
from typing import Any

import ifaddr
import multiaddr
import trio
from libp2p.peer.id import ID
from zeroconf import ServiceBrowser, ServiceInfo, ServiceStateChange, Zeroconf

from nat.lan import MAX_ADDRS, RETRY, SERVICE, Dial, IpNetwork, LanPeers, encode_txt, on_link
from overlay.core.errors import DialError
from overlay.transport.dialer import Dialer

log = logging.getLogger(__name__)

QUEUE = 64  # names heard, waiting to be looked up
MAX_LOOKUPS = 4  # at once (zeroconf answers most from its cache: responders send every record at once)
LOOKUP_TIMEOUT_MS = 3000
DIAL_TIMEOUT = 5.0
MAX_DIALS = 4  # at once
CHECK_INTERVAL = 30.0  # our addresses, and the peers due for another dial
CLOSE_TIMEOUT = 3.0


def local_networks(last: list[IpNetwork] | None = None) -> list[IpNetwork]:
    """The networks of this machine's interfaces, less loopback and link-local; `last` (the
    previous answer) while they cannot be listed: getifaddrs() opens a netlink socket, which
    fails while the process is out of descriptors, and that must not end LAN discovery."""
    try:
        adapters = ifaddr.get_adapters()
    except OSError as e:
        log.info("LAN discovery: cannot list the interfaces (%s); the last known networks stand in", e)
        return list(last or [])
    nets = []
    for adapter in adapters:
        for ip in adapter.ips:
            if isinstance(ip.ip, str):
                net = ipaddress.ip_network(f"{ip.ip}/{ip.network_prefix}", strict=False)
                if not net.is_loopback and not net.is_link_local:
                    nets.append(net)
    return nets


class LanDiscovery:
    """Announces `addrs()`'s LAN addresses and dials the peers heard; `on_peer(peer, addrs)`
    after each dial that Noise proved, so that the DHT can take the peer in."""

    def __init__(self, peer_id: ID, network: str, dialer: Dialer, addrs: Callable[[], list[multiaddr.Multiaddr]],
                 on_peer: Callable[[ID, tuple[multiaddr.Multiaddr, ...]], Awaitable[None]]) -> None:
        self.peer_id = peer_id
        self.dialer = dialer
        self.own_addrs = addrs
        self.on_peer = on_peer
        self.core = LanPeers(str(peer_id), network)
        self.announced: tuple[multiaddr.Multiaddr, ...] = ()
        self.state = "not started"
        self.queue_dropped = 0
        self._instance = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(32))
        self._names_in, self._names_out = trio.open_memory_channel[str](QUEUE)
        self._dial_limiter = trio.CapacityLimiter(MAX_DIALS)

    def status(self) -> dict[str, Any]:
        return {"state": self.state, "announced": [str(a) for a in self.announced], "peers": len(self.core),
                "dials": self.core.dials, "refused": dict(self.core.refused), "queue_dropped": self.queue_dropped}

    def addrs(self, peer: ID) -> tuple[multiaddr.Multiaddr, ...]:
        return self.core.addrs(str(peer))

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        self.core.networks = local_networks()
        ours = self._lan_addrs()
        if not ours:
            self.state = "off: no LAN address to announce"
            log.info("LAN discovery: %s", self.state)
            return
        ips = sorted({str(a).split("/")[2] for a in ours})
        try:
            zc = await trio.to_thread.run_sync(lambda: Zeroconf(interfaces=ips))
        except Exception as e:  # noqa: BLE001 - no multicast here (sockets, permissions): the node runs on without
            self.state = f"off: {type(e).__name__}: {e}"
            log.warning("LAN discovery: %s", self.state)
            return
        browser = None
        try:
            await trio.to_thread.run_sync(zc.register_service, self._info(ours))
            self.announced, self.state = ours, "on"
            token = trio.lowlevel.current_trio_token()
            browser = ServiceBrowser(zc, SERVICE, handlers=[lambda **kw: self._heard(token, **kw)])
            async with trio.open_nursery() as nursery:
                for _ in range(MAX_LOOKUPS):
                    nursery.start_soon(self._look_up, zc, nursery)
                while True:
                    await trio.sleep(CHECK_INTERVAL)
                    self.core.networks = local_networks(list(self.core.networks))
                    now_ours = self._lan_addrs()
                    if now_ours and now_ours != self.announced:
                        await trio.to_thread.run_sync(zc.update_service, self._info(now_ours))
                        self.announced = now_ours
                    for dial in self.core.tick(trio.current_time(), self._connected):
                        nursery.start_soon(self._dial, dial)
        finally:
            self.state = "stopped"

            def close() -> None:
                if browser is not None:
                    browser.cancel()
                zc.close()  # sends our goodbye

            with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT):
                await trio.to_thread.run_sync(close, abandon_on_cancel=True)

    def _lan_addrs(self) -> tuple[multiaddr.Multiaddr, ...]:
        return tuple(a for a in self.own_addrs() if on_link(a, self.core.networks))[:MAX_ADDRS]

    def _info(self, addrs: tuple[multiaddr.Multiaddr, ...]) -> ServiceInfo:
        port = int(addrs[0].value_for_protocol("tcp"))
        ips = sorted({str(a).split("/")[2] for a in addrs})
        return ServiceInfo(SERVICE, f"{self._instance}.{SERVICE}", port=port,
                           properties=encode_txt(str(self.peer_id), self.core.network, addrs),
                           server=f"{self._instance}.local.", parsed_addresses=ips)

    def _heard(self, token: trio.lowlevel.TrioToken, *, zeroconf: Zeroconf, service_type: str, name: str,
               state_change: ServiceStateChange) -> None:
        """zeroconf's thread: hand the name to trio, never wait. A goodbye (Removed) changes
        nothing: anyone can send one, and a gone peer's connection ends by itself."""
        if state_change in (ServiceStateChange.Added, ServiceStateChange.Updated) and name != f"{self._instance}.{SERVICE}":
            try:
                token.run_sync_soon(self._enqueue, name)
            except trio.RunFinishedError:
                pass

    def _enqueue(self, name: str) -> None:
        try:
            self._names_in.send_nowait(name)
        except trio.WouldBlock:
            self.queue_dropped += 1

    async def _look_up(self, zc: Zeroconf, nursery: trio.Nursery) -> None:
        async for name in self._names_out:
            info = await trio.to_thread.run_sync(zc.get_service_info, SERVICE, name, LOOKUP_TIMEOUT_MS,
                                                 abandon_on_cancel=True)
            if info is None:
                continue
            dial = self.core.announced(trio.current_time(), info.text or b"", self._connected)
            if dial is not None:
                nursery.start_soon(self._dial, dial)

    def _connected(self, peer: str) -> bool:
        return self.dialer.connected(ID.from_base58(peer), direct_only=True)

    async def _dial(self, dial: Dial) -> None:
        peer = ID.from_base58(dial.peer_id)
        async with self._dial_limiter:
            try:
                await self.dialer.connect(peer, dial.addrs, timeout=DIAL_TIMEOUT, direct_only=True)
            except (DialError, ValueError) as e:
                log.info("LAN peer %s not reached (again in %.0fs): %s", peer, RETRY, e)
                self.core.dialed(trio.current_time(), dial.peer_id, ok=False)
                return
        self.core.dialed(trio.current_time(), dial.peer_id, ok=True)
        log.info("LAN peer %s connected at %s", peer, ", ".join(map(str, dial.addrs)))
        await self.on_peer(peer, dial.addrs)
