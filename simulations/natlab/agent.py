"""Runs inside a lab namespace and talks to that namespace's node over its local API.

Standard library only, so it starts fast. Prints one JSON object:

    python -m simulations.natlab.agent ready --api 127.0.0.1:4080 --data-dir DIR --timeout 60
        waits until the node has published a record with addresses and knows its reachability
        (a node without bootstraps, the first of a network, cannot ask anyone); with --public,
        until it is public (a node behind a router that maps its port)
    python -m simulations.natlab.agent pair --peer ID [--wait 12]
        closes any connection to ID, dials it by peer ID with a first stream, then waits up to
        --wait seconds for a direct path
    python -m simulations.natlab.agent get --path /v1/netcheck
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from overlay.node.apiauth import TOKEN_FILE, auth_headers, read_token

POLL = 0.05


TOKEN: dict[str, str] = {}  # the Authorization header, from the node's data dir (main)


def call(api: str, method: str, path: str, timeout: float = 30.0) -> tuple[int, Any]:
    request = urllib.request.Request(f"http://{api}{path}", method=method, headers=TOKEN)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def until(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(POLL)
    return condition()


def ready(api: str, timeout: float, public: bool = False) -> dict[str, Any]:
    status: dict[str, Any] = {}

    def done() -> bool:
        nonlocal status
        try:
            _, status = call(api, "GET", "/v1/status", timeout=5)
        except OSError:
            return False
        wanted = ("public",) if public else ("public", "private")
        known = status.get("reachability") in wanted or not status.get("bootstraps")
        return known and bool(status.get("record_addrs"))

    return {"ready": until(done, timeout), "status": status}


def peer_entry(api: str, peer: str) -> dict[str, Any] | None:
    _, peers = call(api, "GET", "/v1/peers")
    return next((p for p in peers if p["peer_id"] == peer), None)


def pair(api: str, peer: str, wait: float) -> dict[str, Any]:
    call(api, "DELETE", f"/v1/peers/{peer}")
    if not until(lambda: peer_entry(api, peer) is None, 10):
        return {"ok": False, "error": "could not close the existing connection first"}
    status, report = call(api, "POST", f"/v1/connect/{peer}")
    if status != 200:
        return {"ok": False, "error": report.get("error", status)}
    out: dict[str, Any] = {"ok": True, **report}
    if wait > 0:
        until(lambda: (peer_entry(api, peer) or {}).get("path", "").startswith("direct"), wait)
        entry = peer_entry(api, peer) or {}
        out["final_path"] = entry.get("path", "gone")
        out["dial"] = entry.get("dial")
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("command", choices=("ready", "pair", "get"))
    p.add_argument("--api", default="127.0.0.1:4080")
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--peer")
    p.add_argument("--wait", type=float, default=0.0)
    p.add_argument("--path", default="/v1/status")
    p.add_argument("--method", default="GET", choices=("GET", "POST"), help="get: the HTTP method")
    p.add_argument("--public", action="store_true", help="ready: wait until the node is reachable from outside")
    p.add_argument("--data-dir", type=Path, required=True, help="the node's data dir, where its API token is")
    args = p.parse_args()
    until(lambda: (args.data_dir / TOKEN_FILE).exists(), args.timeout)  # the node makes it when its API starts
    TOKEN.update(auth_headers(read_token(args.data_dir)))
    if args.command == "ready":
        result = ready(args.api, args.timeout, args.public)
    elif args.command == "pair":
        result = pair(args.api, args.peer, args.wait)
    else:
        result = call(args.api, args.method, args.path, timeout=args.timeout)[1]
    json.dump(result, sys.stdout)
    print()


if __name__ == "__main__":
    main()
