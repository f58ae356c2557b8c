"""LAN discovery's core (nat.lan): the announcement's TXT strings, and which LAN peers are dialed."""

from __future__ import annotations

import ipaddress

import multiaddr
import pytest
from hypothesis import given
from hypothesis import strategies as st

from nat.lan import (MAX_ADDRS, MAX_TXT, AnnouncementError, Dial, LanPeers, decode_txt, encode_txt, on_link)

ME = "12D3KooWQYhTNQdmr3ArTeUHRYzFg94BKyTkoWBDWez9kSCVe2Xo"
PEER = "12D3KooWRBhwfeP2Y4TCx1SM6s9rUoHhR5STiGwxBhgFRcw3UERE"
OTHER = "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N"
LAN = [ipaddress.ip_network("100.64.1.0/24")]


def addr(text: str) -> multiaddr.Multiaddr:
    return multiaddr.Multiaddr(text)


def txt(peer: str = PEER, network: str = "home", addrs=("/ip4/100.64.1.3/tcp/4001",)) -> bytes:
    return encode_txt(peer, network, [addr(a) for a in addrs])


def never(_peer: str) -> bool:
    return False


def test_an_announcement_round_trips_with_every_address():
    raw = txt(addrs=("/ip4/100.64.1.3/tcp/4001", "/ip4/100.64.1.3/tcp/4002/ws"))
    ann = decode_txt(raw)
    assert (ann.network, ann.peer_id) == ("home", PEER)
    assert [str(a) for a in ann.addrs] == ["/ip4/100.64.1.3/tcp/4001", "/ip4/100.64.1.3/tcp/4002/ws"]


@pytest.mark.parametrize("raw, why", [
    (b"", "no network"),
    (b"\x0cnetwork=home", "0 peer IDs"),
    (b"\x05abc", "runs past"),
    (encode_txt(PEER, "home", [addr("/ip4/100.64.1.3/tcp/1")]) + encode_txt(OTHER, "home", [addr("/ip4/100.64.1.4/tcp/1")]),
     "2 peer IDs"),
    (b"\x0cnetwork=home\x19dnsaddr=/ip4/1.2.3.4/tcp/1", "without /p2p"),
    (b"\x0cnetwork=home" + bytes([len(b"dnsaddr=/p2p/nonsense")]) + b"dnsaddr=/p2p/nonsense", "invalid peer ID"),
    (b"\x00" * (MAX_TXT + 1), "at most"),
])
def test_malformed_announcements_are_refused_with_the_reason(raw, why):
    with pytest.raises(AnnouncementError, match=why):
        decode_txt(raw)


@given(st.binary(max_size=600))
def test_no_bytes_break_the_decoder(raw):
    try:
        decode_txt(raw)
    except AnnouncementError:
        pass


def test_only_tcp_addresses_in_our_own_networks_count_as_on_the_lan():
    assert on_link(addr("/ip4/100.64.1.3/tcp/4001"), LAN)
    assert on_link(addr("/ip4/100.64.1.3/tcp/4001/ws"), LAN)
    assert not on_link(addr("/ip4/100.64.2.3/tcp/4001"), LAN), "another network"
    assert not on_link(addr("/ip4/198.18.1.2/tcp/4001"), LAN), "beyond the LAN: never dialed for a stranger's claim"
    assert not on_link(addr("/ip4/127.0.0.1/tcp/4001"), [ipaddress.ip_network("127.0.0.0/8")])
    assert not on_link(addr("/ip4/100.64.1.3/udp/4001/quic-v1"), LAN)


def test_a_new_lan_peer_is_dialed_once_and_again_only_after_the_retry_while_not_connected():
    core = LanPeers(ME, "home", LAN, retry=60.0)
    assert core.announced(0.0, txt(), never) == Dial(PEER, (addr("/ip4/100.64.1.3/tcp/4001"),))
    assert core.announced(1.0, txt(), never) is None, "its dial is under way"
    core.dialed(2.0, PEER, ok=True)
    assert core.announced(3.0, txt(), never) is None
    assert core.tick(61.0, lambda p: p == PEER) == [], "connected: nothing to do"
    assert core.tick(62.0, never) == [Dial(PEER, (addr("/ip4/100.64.1.3/tcp/4001"),))], "the connection went"
    assert core.dials == 2
    assert core.addrs(PEER) == (addr("/ip4/100.64.1.3/tcp/4001"),)


def test_claims_we_must_not_act_on_are_refused_and_counted():
    core = LanPeers(ME, "home", LAN)
    assert core.announced(0.0, txt(peer=ME), never) is None, "our own, looped back"
    assert core.announced(0.0, txt(network="elsewhere"), never) is None
    assert core.announced(0.0, txt(addrs=("/ip4/198.18.1.2/tcp/4001",)), never) is None
    assert core.announced(0.0, b"\x03abc", never) is None
    assert dict(core.refused) == {"other network": 1, "not on our LAN": 1, "malformed": 1}
    assert len(core) == 0


def test_at_most_max_peers_are_kept_and_a_failed_one_makes_room_for_a_new_one():
    core = LanPeers(ME, "home", LAN, max_peers=2)
    assert core.announced(0.0, txt(peer=PEER), never)
    assert core.announced(0.0, txt(peer=OTHER), never)
    third = "12D3KooWHcwSBvXnGu5bBTmEXJpwgGnBjNPgASaYrjQ7H5yHXkE9"
    assert core.announced(0.0, txt(peer=third), never) is None, "both still being dialed"
    assert core.refused["full"] == 1
    core.dialed(1.0, PEER, ok=False)
    assert core.announced(2.0, txt(peer=third), never) is not None
    assert core.refused["evicted"] == 1 and core.addrs(PEER) == ()


def test_an_announcement_carries_at_most_max_addrs_addresses():
    many = [f"/ip4/100.64.1.3/tcp/{4000 + i}" for i in range(MAX_ADDRS + 3)]
    assert len(decode_txt(txt(addrs=many)).addrs) == MAX_ADDRS
