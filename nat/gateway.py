"""What the port-mapping protocols share: the lease a gateway grants, the error it gives, where the
gateway is, and the UDP request/answer exchange NAT-PMP and PCP both use on port 5351.

Requests are retransmitted after 250 ms, doubling, only three times (NAT-PMP's schedule, used for
PCP too instead of RFC 6887's 3 s start: the gateway is one LAN hop away, and a node should not
wait half a minute to learn that its router maps nothing). Answers from anywhere but the gateway
are never seen (the socket is connected); garbage is skipped.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

import trio

from overlay.core.errors import DecodeError

PORT = 5351
PROTOCOLS = ("pcp", "nat-pmp", "upnp")  # every protocol `nat.portmap` speaks, in its default order
RETRIES = 3
FIRST_TIMEOUT = 0.25
MAX_DATAGRAM = 1100  # RFC 6887's largest PCP message; NAT-PMP's are smaller

T = TypeVar("T")


class PortMapError(Exception):
    """The gateway answered with an error, or did not answer; the message names the protocol."""


@dataclass(frozen=True)
class Lease:
    """A mapping the gateway granted: `external_ip:external_port` reaches our `internal_port`
    until `lifetime` seconds from now. `epoch` is the gateway's clock (NAT-PMP, PCP), None for
    UPnP: one that goes backwards says the gateway rebooted and lost its mappings."""

    protocol: str  # "tcp" or "udp"
    internal_port: int
    external_ip: str
    external_port: int
    lifetime: int
    epoch: int | None = None


class Mapper(Protocol):
    """One port-mapping protocol spoken to one gateway."""

    name: str

    async def map(self, protocol: str, port: int, lifetime: int) -> Lease:
        """Map (or renew) `port`, asking for the same external port; PortMapError if refused."""
        ...

    async def unmap(self, protocol: str, port: int) -> None:
        """Remove the mapping of `port`, if any; PortMapError if the gateway will not."""
        ...


def default_gateway(route_file: str = "/proc/net/route") -> str | None:
    """The IPv4 default gateway of this host (Linux), None when there is none."""
    try:
        with open(route_file) as f:
            next(f, None)
            for line in f:
                fields = line.split()
                if len(fields) > 3 and fields[1] == "00000000" and int(fields[3], 16) & 0x2:
                    return str(ipaddress.IPv4Address(struct.pack("<I", int(fields[2], 16))))
    except (OSError, ValueError):
        return None
    return None


async def udp_exchange(name: str, gateway: tuple[str, int], request: Callable[[str], bytes],
                       accept: Callable[[bytes], T | None]) -> T:
    """Send `request(our address towards the gateway)` (PCP puts it in the request) to `gateway`
    with the retransmission schedule above until `accept` returns an answer (None or DecodeError:
    not ours, keep waiting; PortMapError: the gateway's refusal). Every failure, the host's own
    (no descriptor, no route) included, is a PortMapError naming `name`: no mapping, never the
    node's end."""
    try:
        with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            await sock.connect(gateway)
            data = request(sock.getsockname()[0])
            timeout = FIRST_TIMEOUT
            for _ in range(RETRIES):
                await sock.send(data)
                with trio.move_on_after(timeout):
                    while True:
                        try:
                            answer = accept(await sock.recv(MAX_DATAGRAM))
                        except DecodeError:
                            continue
                        if answer is not None:
                            return answer
                timeout *= 2
    except OSError as e:  # EMFILE, no route, ICMP port unreachable (nothing listens on 5351)
        raise PortMapError(f"{name}: {e.strerror or e}") from None
    raise PortMapError(f"{name}: no answer from {gateway[0]}")
