"""Multiaddrs as the node dials them, without I/O: which can be dialed over TCP, in which order;
which of those a DHT answer gave may be dialed at all; and the address group a connection's
remote IP belongs to."""

from __future__ import annotations

import functools
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


def _ip(ip: str | bytes) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP (an IPv4-mapped IPv6 address as the IPv4 one), or None for what is not one."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return None
    if address.version == 6 and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def address_group(ip: str) -> str:
    """The network a remote IP counts against in per-address quotas: its /24 (IPv4) or /48 (IPv6),
    what one home or one hosting customer usually holds. "" for what is not an IP."""
    address = _ip(ip)
    if address is None:
        return ""
    return str(ipaddress.ip_network(f"{address}/{24 if address.version == 4 else 48}", strict=False))


_SHARED = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT (RFC 6598): Python counts it neither private nor global


@functools.lru_cache(maxsize=4096)
def ip_scope(ip: str | bytes) -> str:
    """Where an IP is: "loopback"; "local" (private, shared, benchmarking and documentation
    ranges: a LAN, a carrier's NAT, a test network); "global"; or "" for what is never dialed
    (unspecified, multicast, link-local, not an IP)."""
    address = _ip(ip)
    if address is None:
        return ""
    if address.is_loopback:
        return "loopback"
    if address.is_unspecified or address.is_multicast or address.is_link_local:
        return ""
    if address.is_global:
        return "global"
    return "local" if address.is_private or address in _SHARED else ""


def addr_scope(addr: bytes) -> str:
    """`ip_scope` of a binary multiaddr's first component, read without parsing the whole address
    (a lookup meets hundreds): an IP is its scope; a DNS name or a /p2p/ relay circuit "global"
    (the name is resolved and the relay reached as any other); anything else ""."""
    if len(addr) >= 5 and addr[0] == 0x04:  # ip4
        return ip_scope(addr[1:5])
    if len(addr) >= 17 and addr[0] == 0x29:  # ip6
        return ip_scope(addr[1:17])
    if addr[:1] in (b"\x35", b"\x36", b"\x37", b"\x38") or addr[:2] == b"\xa5\x03":  # dns, dns4, dns6, dnsaddr; p2p
        return "global"
    return ""


def answer_addrs(addrs: Sequence[bytes], responder_scope: str, limit: int) -> tuple[bytes, ...]:
    """The addresses a DHT answer gave for a peer that the node may dial, at most `limit` of
    them: global ones, and loopback or local ones only when the answer came from that same
    scope (over the LAN, or from this machine). So a stranger on the internet cannot make the
    node dial into its own LAN or machine, nor hand it a long list to try."""
    kept = [a for a in addrs if (scope := addr_scope(a)) == "global" or (scope and scope == responder_scope)]
    return tuple(kept[:limit])
