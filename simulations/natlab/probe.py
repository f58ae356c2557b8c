"""UDP probes for the NAT lab: what a NAT does to one socket's packets, as the server sees them.

Standard library only, run as a script inside lab namespaces
(`lab.popen(lab.srv, [sys.executable, probe.__file__, "serve", ...])`), so that it tests the lab and
nothing of the node. Every message is one JSON datagram.

    serve  --addr IP... --port N...   bind every (IP, port); print `ready`; answer each request
           {"id", "pokes": [[ip, port, tag], ...]} from the socket it came to with
           {"id", "seen": [ip, port]}, then send {"poke": tag} from each requested local socket
           to the seen address: those are the unsolicited packets a NAT's filtering decides on.
    map    --server IP:PORT...        one socket asks each server; prints
           {"local": [ip, port], "seen": [[ip, port], ...]}: the NAT's mapping per destination.
    filter --server IP:PORT --poke IP:PORT:TAG... --wait S
           one socket asks for pokes, then waits up to S s; prints {"local", "seen", "arrived": [tags]}.

A request is retried (TRIES x TRY_TIMEOUT) so a lost datagram cannot fail a probe; retries from
the same socket to the same server keep the same NAT mapping.
"""

from __future__ import annotations

import argparse
import json
import selectors
import socket
import sys
import time
from typing import Any

TRIES = 6
TRY_TIMEOUT = 0.5


def _addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def serve(addrs: list[str], ports: list[int]) -> None:
    """Answer requests until killed."""
    sel = selectors.DefaultSelector()
    socks: dict[tuple[str, int], socket.socket] = {}
    for ip in addrs:
        for port in ports:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((ip, port))
            socks[(ip, port)] = s
            sel.register(s, selectors.EVENT_READ)
    print("ready", flush=True)
    while True:
        for key, _ in sel.select():
            sock: socket.socket = key.fileobj  # type: ignore[assignment]
            data, peer = sock.recvfrom(2048)
            try:
                request = json.loads(data)
            except ValueError:
                continue
            sock.sendto(json.dumps({"id": request.get("id"), "seen": list(peer)}).encode(), peer)
            for ip, port, tag in request.get("pokes", []):
                sender = socks.get((ip, port))
                if sender is not None:
                    sender.sendto(json.dumps({"poke": tag}).encode(), peer)


def _ask(sock: socket.socket, server: tuple[str, int], request: dict[str, Any]) -> tuple[list[Any], list[str]]:
    """Send `request` until its answer comes; returns the seen address and any pokes read meanwhile."""
    pokes: list[str] = []
    for _ in range(TRIES):
        sock.sendto(json.dumps(request).encode(), server)
        deadline = time.monotonic() + TRY_TIMEOUT
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                data, source = sock.recvfrom(2048)
            except TimeoutError:
                break
            message = json.loads(data)
            if "poke" in message:
                pokes.append(message["poke"])
            elif message.get("id") == request["id"] and source == server:
                return message["seen"], pokes
    raise TimeoutError(f"no answer from {server[0]}:{server[1]} after {TRIES} tries")


def probe_map(servers: list[tuple[str, int]]) -> dict[str, Any]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("0.0.0.0", 0))
        seen = [_ask(sock, server, {"id": i})[0] for i, server in enumerate(servers)]
        return {"local": list(sock.getsockname()), "seen": seen}


def probe_filter(server: tuple[str, int], pokes: list[tuple[str, int, str]], wait: float) -> dict[str, Any]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("0.0.0.0", 0))
        seen, arrived = _ask(sock, server, {"id": 0, "pokes": [list(p) for p in pokes]})
        wanted = {tag for _, _, tag in pokes}
        deadline = time.monotonic() + wait
        while not wanted <= set(arrived) and (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                data, _ = sock.recvfrom(2048)
            except TimeoutError:
                break
            message = json.loads(data)
            if "poke" in message:
                arrived.append(message["poke"])
        return {"local": list(sock.getsockname()), "seen": seen, "arrived": sorted(set(arrived))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="probe", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_serve = sub.add_parser("serve")
    p_serve.add_argument("--addr", action="append", required=True)
    p_serve.add_argument("--port", action="append", type=int, required=True)
    p_map = sub.add_parser("map")
    p_map.add_argument("--server", action="append", type=_addr, required=True)
    p_filter = sub.add_parser("filter")
    p_filter.add_argument("--server", type=_addr, required=True)
    p_filter.add_argument("--poke", action="append", default=[])
    p_filter.add_argument("--wait", type=float, default=1.0)
    args = parser.parse_args(argv)
    try:
        if args.cmd == "serve":
            serve(args.addr, args.port)
            return 0
        if args.cmd == "map":
            result = probe_map(args.server)
        else:
            pokes = []
            for text in args.poke:
                ip, port, tag = text.split(":", 2)
                pokes.append((ip, int(port), tag))
            result = probe_filter(args.server, pokes, args.wait)
    except (OSError, TimeoutError) as e:
        print(json.dumps({"error": str(e)}), flush=True)
        return 1
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
