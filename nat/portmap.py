"""Port mapping on the home gateway, so a node behind NAT can be reached directly where its router
allows it: PCP (`nat.pcp`), NAT-PMP (`nat.natpmp`) and UPnP-IGD (`nat.upnp`), tried in that order
(the order of `port_mapping_protocols`; newest first, as iroh and Tailscale do). The first that
maps the TCP port holds it: renewed every CHECK_INTERVAL (or at half its lifetime, if sooner),
so that a new WAN address or a gateway that rebooted and forgot the mapping shows within that
time; removed when the node stops. Turned off with `port_mapping = false`.

The UDP port of the same number is mapped too where the gateway allows (best effort: WebRTC finds
its own way). A renewal that fails starts the search again from the first protocol: the gateway
may have rebooted and come back speaking something else.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence

import multiaddr
import trio

from nat.gateway import PROTOCOLS, Lease, Mapper, PortMapError
from nat.natpmp import NatPmpClient
from nat.pcp import PcpClient
from nat.upnp import UpnpClient

log = logging.getLogger(__name__)

LIFETIME = 7200
CHECK_INTERVAL = 30.0
MIN_RENEW = 5.0  # however short a lease the gateway grants
UNMAP_TIMEOUT = 2.0
CLIENTS: dict[str, Callable[[str], Mapper]] = {"pcp": PcpClient, "nat-pmp": NatPmpClient, "upnp": UpnpClient}

Changed = Callable[[dict[str, object], multiaddr.Multiaddr | None], None]


def mappers_for(gateway: str, protocols: Sequence[str] = PROTOCOLS) -> list[Mapper]:
    return [CLIENTS[name](gateway) for name in protocols]


async def keep_port_mapping(port: int, changed: Changed, gateway: str, mappers: Sequence[Mapper]) -> None:
    """Keep TCP `port` mapped on `gateway` with the first of `mappers` that maps it, and report
    each state and the mapped address. Returns when none does."""
    errors: list[str] = []
    while True:
        for mapper in mappers:
            try:
                lease = await mapper.map("tcp", port, LIFETIME)
            except PortMapError as e:
                errors.append(str(e))
                continue
            errors.clear()
            try:
                await _hold(mapper, lease, gateway, changed)
            except PortMapError as e:
                log.info("port mapping lost: %s", e)
                errors.append(str(e))
            break
        else:
            log.info("no port mapping: %s", "; ".join(errors))
            changed({"state": "none", "gateway": gateway, "error": "; ".join(errors)}, None)
            return


async def _hold(mapper: Mapper, lease: Lease, gateway: str, changed: Changed) -> None:
    """Renew `lease` (and its UDP twin) until a renewal fails (PortMapError); on cancellation (the
    node stops) remove both from the gateway."""
    port = lease.internal_port
    try:
        while True:
            udp: Lease | None = None
            with contextlib.suppress(PortMapError):
                udp = await mapper.map("udp", port, LIFETIME)
            changed({"state": "mapped", "protocol": mapper.name, "gateway": gateway,
                     "external": f"{lease.external_ip}:{lease.external_port}", "lifetime": lease.lifetime,
                     "udp": f"{udp.external_ip}:{udp.external_port}" if udp else None},
                    multiaddr.Multiaddr(f"/ip4/{lease.external_ip}/tcp/{lease.external_port}"))
            await trio.sleep(max(min(lease.lifetime / 2 or CHECK_INTERVAL, CHECK_INTERVAL), MIN_RENEW))
            lease = await mapper.map("tcp", port, LIFETIME)
    except trio.Cancelled:
        with trio.CancelScope(shield=True), trio.move_on_after(UNMAP_TIMEOUT):
            for protocol in ("tcp", "udp"):
                with contextlib.suppress(PortMapError):
                    await mapper.unmap(protocol, port)
        raise
