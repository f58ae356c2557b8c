"""UPnP-IGD (v1 and v2): port mapping on the many home routers that speak neither PCP nor NAT-PMP.

The SOAP side (device description, WANIPConnection, AddPortMapping / AddAnyPortMapping,
DeletePortMapping, GetExternalIPAddress) goes through `miniupnpc`, the client maintained with
miniupnpd, the IGD most routers run: C, wheels for every platform, IGDv1 and v2. It blocks, so
each call runs in a worker thread, one at a time per gateway.

Discovery is ours, because miniupnpc's would believe any SSDP answer: any process on the LAN could
then point the node at a URL of its choosing and have it fetch and POST there (127.0.0.1
included). `discover` sends the M-SEARCH itself and keeps only an answer that comes from the
default gateway and whose LOCATION is an http URL on the gateway's own address; only that URL is
handed to miniupnpc.

Mapping: AddPortMapping of the same external port with a lease; on a conflict, IGDv2's
AddAnyPortMapping lets the gateway choose; on a gateway that takes only permanent leases (some
IGDv1), lease 0, deleted on stop like the others. Renewal is the same AddPortMapping again.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import miniupnpc
import trio

from nat.gateway import Lease, PortMapError

SSDP = ("239.255.255.250", 1900)
SEARCH_TARGETS = ("urn:schemas-upnp-org:device:InternetGatewayDevice:2",
                  "urn:schemas-upnp-org:device:InternetGatewayDevice:1")
DISCOVERY_TIMEOUT = 2.0
MAX_ANSWER = 2048
DESCRIPTION = "overlay-node"

T = TypeVar("T")


def search_request(target: str) -> bytes:
    return (f'M-SEARCH * HTTP/1.1\r\nHOST: {SSDP[0]}:{SSDP[1]}\r\nMAN: "ssdp:discover"\r\n'
            f"MX: 1\r\nST: {target}\r\n\r\n").encode()


def location_from(answer: bytes, gateway: str) -> str | None:
    """The LOCATION of an SSDP answer if it is an http URL on `gateway`'s address, else None."""
    try:
        lines = answer.decode("ascii").split("\r\n")
    except UnicodeDecodeError:
        return None
    if not lines[0].startswith("HTTP/1.1 200"):
        return None
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "location":
            location = value.strip()
            return location if _on_gateway(location, gateway) else None
    return None


def _on_gateway(url: str, gateway: str) -> bool:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - a malformed port raises ValueError
        return (parts.scheme == "http" and parts.hostname is not None
                and ipaddress.ip_address(parts.hostname) == ipaddress.ip_address(gateway))
    except ValueError:
        return False


async def discover(gateway: str, target: tuple[str, int] = SSDP, timeout: float = DISCOVERY_TIMEOUT) -> str:
    """The IGD description URL that `gateway` announces; PortMapError if it announces none."""
    try:
        with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            await sock.bind(("0.0.0.0", 0))
            for st in SEARCH_TARGETS:
                await sock.sendto(search_request(st), target)
            with trio.move_on_after(timeout):
                while True:
                    data, (source, _) = await sock.recvfrom(MAX_ANSWER)
                    if source == gateway and (location := location_from(data, gateway)):
                        return location
    except OSError as e:
        raise PortMapError(f"UPnP-IGD: {e.strerror or e}") from None
    raise PortMapError(f"UPnP-IGD: no answer from {gateway}")


class UpnpClient:
    """UPnP-IGD on one gateway, as a `nat.gateway.Mapper`."""

    name = "UPnP-IGD"

    def __init__(self, gateway: str, ssdp: tuple[str, int] = SSDP) -> None:
        self.gateway = gateway
        self.ssdp = ssdp
        self._upnp: Any = None
        self._limiter = trio.CapacityLimiter(1)  # the miniupnpc object is not thread-safe
        self._external: dict[tuple[str, int], int] = {}

    async def map(self, protocol: str, port: int, lifetime: int = 7200) -> Lease:
        u = await self._igd()
        proto = protocol.upper()
        external_port = self._external.get((protocol, port), port)
        try:
            await self._call(u.addportmapping, external_port, proto, u.lanaddr, port, DESCRIPTION, "", lifetime)
        except PortMapError as e:
            if "OnlyPermanentLeasesSupported" in str(e):
                lifetime = 0
                await self._call(u.addportmapping, external_port, proto, u.lanaddr, port, DESCRIPTION, "", 0)
            elif "Conflict" in str(e):  # the port is someone else's: IGDv2 picks another
                external_port = await self._call(u.addanyportmapping, port, proto, u.lanaddr, port, DESCRIPTION, "")
            else:
                raise
        self._external[(protocol, port)] = external_port
        address = await self._call(u.externalipaddress)
        try:
            ipaddress.IPv4Address(address)
        except ValueError:
            raise PortMapError(f"UPnP-IGD: the gateway has no usable external address ({address!r})") from None
        return Lease(protocol, port, address, external_port, lifetime)

    async def unmap(self, protocol: str, port: int) -> None:
        external_port = self._external.pop((protocol, port), None)
        if external_port is not None and self._upnp is not None:
            await self._call(self._upnp.deleteportmapping, external_port, protocol.upper())

    async def _igd(self) -> Any:
        if self._upnp is None:
            location = await discover(self.gateway, self.ssdp)
            u = miniupnpc.UPnP()
            await self._call(u.selectigd, location)
            self._upnp = u
        return self._upnp

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return await trio.to_thread.run_sync(lambda: fn(*args), limiter=self._limiter, abandon_on_cancel=True)
        except Exception as e:  # miniupnpc raises bare Exception with the IGD's error text
            raise PortMapError(f"UPnP-IGD: {e}") from None
