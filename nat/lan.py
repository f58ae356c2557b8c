"""Two machines in one home: which LAN peers to dial, from what they announce over mDNS.

A home router that does not hairpin drops a host's packets to its own WAN address, so two nodes
behind it cannot reach each other at the addresses their records give; nor can two nodes on a LAN
without a bootstrap find each other at all. Like kubo and iroh, a node announces itself on its LAN
with multicast DNS and dials the nodes it hears there at their LAN addresses (libp2p's mDNS
discovery spec: a PTR record `_p2p._udp.local` -> a random instance name, whose TXT strings are
`dnsaddr=<multiaddr>/p2p/<peer id>`; the wire and the multicast sockets are the zeroconf
library's, in nat.lan_io).

Everything in an announcement is a claim from anyone on the LAN, so: a peer ID counts only once
Noise has proved it on a connection; an address is dialed only when it lies in one of our own
interfaces' networks (an announcement cannot make us dial beyond the LAN); the TXT strings must
name one peer ID and our network (`network=<name>`, beside the spec's dnsaddr strings, which
other libp2p nodes ignore); at most MAX_ADDRS addresses per peer and MAX_PEERS peers are kept,
failed ones first to go; a peer is dialed again at most each RETRY seconds. Every refusal is
counted by reason.

Per announced peer (the core, `LanPeers`; no I/O, times passed in):

    (new)     --announced, valid, room-->          DIALING   (Dial)
    DIALING   --dialed(ok)-->                      DIALED
    DIALING   --dialed(failed)-->                  WAITING   (retry at now + RETRY)
    DIALED    --announced/tick, not connected,
                due-->                              DIALING   (Dial)
    WAITING   --announced/tick, due-->             DIALING   (Dial)
    WAITING   --a new peer while full-->           gone      (the oldest waiting one)
"""

from __future__ import annotations

import ipaddress
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import multiaddr

from overlay.core.errors import RecordError
from overlay.core.records import peer_id_from_str

SERVICE = "_p2p._udp.local."
MAX_PEERS = 64
MAX_ADDRS = 8
MAX_TXT = 2048  # bytes of TXT strings per announcement (8 addresses and the network fit easily)
RETRY = 60.0
NETWORK_KEY = b"network="
DNSADDR_KEY = b"dnsaddr="

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class AnnouncementError(ValueError):
    """An announcement that does not say one peer, its addresses and a network."""


@dataclass(frozen=True)
class Announcement:
    network: str
    peer_id: str
    addrs: tuple[multiaddr.Multiaddr, ...]  # without their /p2p part


def encode_txt(peer_id: str, network: str, addrs: Iterable[multiaddr.Multiaddr]) -> bytes:
    """TXT strings (each a length byte and the text): our network, then a dnsaddr per address."""
    strings = [NETWORK_KEY + network.encode()] + [DNSADDR_KEY + f"{a}/p2p/{peer_id}".encode() for a in addrs]
    strings = strings[: MAX_ADDRS + 1]
    if any(len(s) > 255 for s in strings):
        raise ValueError("a TXT string is at most 255 bytes")
    return b"".join(bytes([len(s)]) + s for s in strings)


def decode_txt(raw: bytes) -> Announcement:
    """The announcement in a TXT record's strings. zeroconf's `properties` would keep one value
    per key, and the spec repeats `dnsaddr=`: we read the strings ourselves."""
    if len(raw) > MAX_TXT:
        raise AnnouncementError(f"TXT record of {len(raw)} bytes (at most {MAX_TXT})")
    network, peers, addrs, i = None, set(), [], 0
    while i < len(raw):
        n = raw[i]
        text = raw[i + 1:i + 1 + n]
        if len(text) != n:
            raise AnnouncementError("a TXT string runs past the record's end")
        i += 1 + n
        if text.startswith(NETWORK_KEY):
            network = text[len(NETWORK_KEY):].decode("ascii", "replace")
        elif text.startswith(DNSADDR_KEY):
            if len(addrs) == MAX_ADDRS:
                continue  # further addresses are left out, as our own announcement leaves them out
            addr, sep, peer = text[len(DNSADDR_KEY):].decode("ascii", "replace").rpartition("/p2p/")
            if not sep or not peer:
                raise AnnouncementError("a dnsaddr string without /p2p/<peer id>")
            try:
                addrs.append(multiaddr.Multiaddr(addr))
            except Exception as e:  # the multiaddr package raises several unrelated types
                raise AnnouncementError(f"bad multiaddr {addr!r}: {e}") from None
            peers.add(peer)
    if network is None:
        raise AnnouncementError("no network= string")
    if len(peers) != 1:
        raise AnnouncementError(f"{len(peers)} peer IDs in one announcement (one expected)")
    peer = peers.pop()
    try:
        peer_id_from_str(peer)
    except RecordError as e:
        raise AnnouncementError(str(e)) from None
    return Announcement(network, peer, tuple(addrs))


def on_link(addr: multiaddr.Multiaddr, networks: Sequence[IpNetwork]) -> bool:
    """Whether `addr` is TCP (or WebSocket over it) to an IP inside one of `networks`."""
    parts = str(addr).split("/")
    if len(parts) < 5 or parts[1] not in ("ip4", "ip6") or parts[3] != "tcp" or parts[5:] not in ([], ["ws"]):
        return False
    try:
        ip = ipaddress.ip_address(parts[2])
    except ValueError:
        return False
    return not ip.is_loopback and not ip.is_multicast and not ip.is_unspecified and any(ip in n for n in networks)


@dataclass(frozen=True)
class Dial:
    peer_id: str
    addrs: tuple[multiaddr.Multiaddr, ...]


@dataclass
class _Peer:
    addrs: tuple[multiaddr.Multiaddr, ...]
    due: float  # when it may be dialed again
    state: str = "dialing"  # dialing | dialed | waiting


@dataclass
class LanPeers:
    own_peer_id: str
    network: str
    networks: Sequence[IpNetwork] = ()  # our interfaces' networks: the only ones dialed
    max_peers: int = MAX_PEERS
    retry: float = RETRY
    refused: Counter[str] = field(default_factory=Counter)
    dials: int = 0
    _peers: OrderedDict[str, _Peer] = field(default_factory=OrderedDict)

    def announced(self, now: float, raw_txt: bytes, connected: Callable[[str], bool]) -> Dial | None:
        """An announcement heard (its TXT strings); `connected(peer)`: whether we have a connection."""
        try:
            ann = decode_txt(raw_txt)
        except AnnouncementError:
            self.refused["malformed"] += 1
            return None
        if ann.peer_id == self.own_peer_id:
            return None  # our own, looped back
        if ann.network != self.network:
            self.refused["other network"] += 1
            return None
        addrs = tuple(a for a in ann.addrs if on_link(a, self.networks))
        if not addrs:
            self.refused["not on our LAN"] += 1
            return None
        peer = self._peers.get(ann.peer_id)
        if peer is None:
            if len(self._peers) >= self.max_peers and not self._evict():
                self.refused["full"] += 1
                return None
            peer = self._peers[ann.peer_id] = _Peer(addrs, now, "waiting")
        peer.addrs = addrs
        return self._due(now, ann.peer_id, peer, connected)

    def tick(self, now: float, connected: Callable[[str], bool]) -> list[Dial]:
        """The peers due for another dial (each RETRY seconds, when not connected)."""
        return [d for pid, peer in list(self._peers.items()) if (d := self._due(now, pid, peer, connected))]

    def dialed(self, now: float, peer_id: str, ok: bool) -> None:
        if (peer := self._peers.get(peer_id)) is not None:
            peer.state = "dialed" if ok else "waiting"
            peer.due = now + self.retry

    def addrs(self, peer_id: str) -> tuple[multiaddr.Multiaddr, ...]:
        """The LAN addresses a peer announced (none if it did not)."""
        peer = self._peers.get(peer_id)
        return peer.addrs if peer is not None else ()

    def __len__(self) -> int:
        return len(self._peers)

    def _due(self, now: float, peer_id: str, peer: _Peer, connected: Callable[[str], bool]) -> Dial | None:
        if peer.state == "dialing" or now < peer.due or connected(peer_id):
            return None
        peer.state = "dialing"
        self.dials += 1
        return Dial(peer_id, peer.addrs)

    def _evict(self) -> bool:
        """Make room for a new peer: drop the oldest one whose last dial failed."""
        victim = next((pid for pid, peer in self._peers.items() if peer.state == "waiting"), None)
        if victim is None:
            return False
        del self._peers[victim]
        self.refused["evicted"] += 1
        return True
