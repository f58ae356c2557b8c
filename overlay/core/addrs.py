"""Multiaddrs as the node dials them, without I/O: which can be dialed over TCP, in which order;
and the address group a connection's remote IP belongs to."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

import multiaddr


def dialable(addr: multiaddr.Multiaddr) -> bool:
    """A TCP (or WebSocket) address of a host, not a relay circuit."""
    names = [p.name for p in addr.protocols()]
    return bool(names) and names[0] in ("ip4", "ip6", "dns", "dns4", "dns6") and "tcp" in names and "p2p-circuit" not in names


def strip_p2p(addr: multiaddr.Multiaddr) -> multiaddr.Multiaddr:
    """The address without a trailing /p2p/<peer-id>."""
    protocols = list(addr.protocols())
    if protocols and protocols[-1].code == multiaddr.protocols.P_P2P:
        return addr.decapsulate_code(multiaddr.protocols.P_P2P)
    return addr


def plan_dial(addrs: Sequence[multiaddr.Multiaddr], last_good: multiaddr.Multiaddr | None) -> list[multiaddr.Multiaddr]:
    """The order in which to try `addrs`: the one that worked before first (if still listed),
    then the rest in the record's order; duplicates and undialable addresses dropped."""
    ordered: list[multiaddr.Multiaddr] = []
    for addr in addrs:
        addr = strip_p2p(addr) if dialable(addr) else None
        if addr is not None and addr not in ordered:
            ordered.append(addr)
    if last_good in ordered:
        ordered.remove(last_good)
        ordered.insert(0, last_good)
    return ordered


def address_group(ip: str) -> str:
    """The network a remote IP counts against in per-address quotas: its /24 (IPv4) or /48 (IPv6),
    what one home or one hosting customer usually holds. "" for what is not an IP."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ""
    if address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return str(ipaddress.ip_network(f"{address}/{24 if address.version == 4 else 48}", strict=False))
