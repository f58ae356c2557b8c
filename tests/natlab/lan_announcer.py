"""A hostile process on a home's LAN: announces over mDNS many nodes that do not exist, at
addresses beyond the LAN (a reflection: would the node dial the internet for a stranger's claim?)
and on the LAN where nothing listens, each with a fresh peer ID, then waits to be stopped.

    python -m tests.natlab.lan_announcer --ip 100.64.1.3 --network natlab --count 40
"""

from __future__ import annotations

import argparse
import secrets
import time

import multiaddr
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from zeroconf import ServiceInfo, Zeroconf

from nat.lan import SERVICE, encode_txt
from overlay.core.records import peer_id_from_public_key, peer_id_to_str


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--ip", required=True, help="this host's LAN address: the interface to announce on")
    p.add_argument("--network", required=True)
    p.add_argument("--count", type=int, default=40)
    p.add_argument("--beyond", default="198.18.1.2", help="the address beyond the LAN that half the fakes claim")
    args = p.parse_args()
    zc = Zeroconf(interfaces=[args.ip])
    lan_ip = args.ip.rsplit(".", 1)[0] + ".250"  # nothing there
    for i in range(args.count):
        peer = peer_id_to_str(peer_id_from_public_key(Ed25519PrivateKey.generate().public_key()))
        where = args.beyond if i % 2 == 0 else lan_ip
        name = secrets.token_hex(16)
        info = ServiceInfo(SERVICE, f"{name}.{SERVICE}", port=4001, server=f"{name}.local.", parsed_addresses=[args.ip],
                           properties=encode_txt(peer, args.network, [multiaddr.Multiaddr(f"/ip4/{where}/tcp/4001")]))
        zc.register_service(info, cooperating_responders=True)
    print("announced", args.count, flush=True)
    while True:
        time.sleep(60)


if __name__ == "__main__":
    main()
