"""Reachability by dial-back (`/overlay/<network>/dialback/1.0.0`).

Why not py-libp2p's AutoNAT: its server dials back over the connection the request came in on,
so it answers PUBLIC even for a closed port. Here the asked peer dials the requester back over
a fresh TCP (or WebSocket) connection, as a throwaway identity, at the address it observed the
request coming from and the ports the requester names, and reports whether a Noise handshake
with the requester's peer ID completed. It dials only the observed address (it cannot be aimed
at a third party), at most MAX_PORTS ports, at most once per RATE_INTERVAL per requester.

Wire (framed JSON, one message each way):
    request:  {"ports": [["tcp", 4001], ["ws", 4002]]}
    response: {"observed": "198.18.2.2", "results": [["tcp", 4001, true], ["ws", 4002, false]]}

This module is the codec, the verdict and the node's reachability as a state machine, without
I/O; nat/reachability_io.py asks and answers on libp2p streams.

States (what `status` and `netcheck` show) and what moves them (everything is in TRANSITIONS):

    UNKNOWN  --verdict public-->     PUBLIC    (take the public role)
    UNKNOWN  --verdict private-->    PRIVATE   (take the private role)
    PUBLIC   --verdict private-->    PRIVATE
    PRIVATE  --verdict public-->     PUBLIC    (a gateway mapped our port, say)
    any      --verdict unknown-->    unchanged (nobody answered: the last answer stands)
    any      --verdict of itself-->  unchanged (a re-check confirmed it)

A configured reachability is forced: the machine starts in it and takes no verdict. A verdict
before `start`, a second `start` or a verdict for a forced machine is an adapter bug and raises
ProtocolError.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from overlay.core.errors import DecodeError, ProtocolError
from overlay.core.jsonwire import loads


class Reachability(StrEnum):
    """A str, so JSON and logs show the value ("public") as before."""

    UNKNOWN = "unknown"
    PUBLIC = "public"
    PRIVATE = "private"


UNKNOWN, PUBLIC, PRIVATE = Reachability.UNKNOWN, Reachability.PUBLIC, Reachability.PRIVATE
TRANSITIONS: dict[tuple[Reachability, Reachability], Reachability] = {  # (state, verdict) -> next state
    (UNKNOWN, UNKNOWN): UNKNOWN, (UNKNOWN, PUBLIC): PUBLIC, (UNKNOWN, PRIVATE): PRIVATE,
    (PUBLIC, UNKNOWN): PUBLIC, (PUBLIC, PUBLIC): PUBLIC, (PUBLIC, PRIVATE): PRIVATE,
    (PRIVATE, UNKNOWN): PRIVATE, (PRIVATE, PUBLIC): PUBLIC, (PRIVATE, PRIVATE): PRIVATE,
}

MAX_PORTS = 4
MAX_MESSAGE = 1024
DIAL_TIMEOUT = 5.0
ASK_TIMEOUT = 12.0
RATE_INTERVAL = 10.0
TRANSPORTS = ("tcp", "ws")


def dialback_protocol(network: str) -> str:
    return f"/overlay/{network}/dialback/1.0.0"


# ---- wire ---------------------------------------------------------------------------------------


def encode_request(ports: Sequence[tuple[str, int]]) -> bytes:
    return json.dumps({"ports": [list(p) for p in ports]}).encode()


def decode_request(data: bytes) -> list[tuple[str, int]]:
    obj = _json(data)
    ports = obj.get("ports")
    if not isinstance(ports, list) or not 1 <= len(ports) <= MAX_PORTS:
        raise DecodeError(f"dialback: 1 to {MAX_PORTS} ports expected")
    out = []
    for item in ports:
        if not (isinstance(item, list) and len(item) == 2 and item[0] in TRANSPORTS and _port(item[1])):
            raise DecodeError("dialback: each port is [\"tcp\" or \"ws\", 1-65535]")
        out.append((item[0], item[1]))
    return out


def encode_response(observed: str, results: Sequence[tuple[str, int, bool]]) -> bytes:
    return json.dumps({"observed": observed, "results": [list(r) for r in results]}).encode()


def decode_response(data: bytes) -> tuple[str, list[tuple[str, int, bool]]]:
    obj = _json(data)
    observed, results = obj.get("observed"), obj.get("results")
    try:
        ipaddress.ip_address(observed)
    except (TypeError, ValueError):
        raise DecodeError("dialback: 'observed' must be an IP address") from None
    if not isinstance(results, list) or len(results) > MAX_PORTS:
        raise DecodeError("dialback: bad results")
    out = []
    for item in results:
        if not (isinstance(item, list) and len(item) == 3 and item[0] in TRANSPORTS and _port(item[1]) and isinstance(item[2], bool)):
            raise DecodeError("dialback: each result is [transport, port, reachable]")
        out.append((item[0], item[1], item[2]))
    return observed, out


def _json(data: bytes) -> dict:
    if len(data) > MAX_MESSAGE:
        raise DecodeError(f"dialback: message over {MAX_MESSAGE} bytes")
    obj = loads(data, "dialback")
    if not isinstance(obj, dict):
        raise DecodeError("dialback: expected a JSON object")
    return obj


def _port(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535


# ---- verdict (no I/O) ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    reachability: Reachability
    transports: dict[str, bool]  # per transport: reachable by someone
    observed: tuple[str, ...]  # our addresses as others saw them


def verdict(answers: Sequence[tuple[str, list[tuple[str, int, bool]]]]) -> Verdict:
    """Public when any peer reached us over TCP; private when peers answered and none did."""
    transports: dict[str, bool] = {}
    observed: list[str] = []
    for seen, results in answers:
        if seen not in observed:
            observed.append(seen)
        for transport, _, ok in results:
            transports[transport] = transports.get(transport, False) or ok
    if "tcp" not in transports:
        state = UNKNOWN
    else:
        state = PUBLIC if transports["tcp"] else PRIVATE
    return Verdict(state, transports, tuple(observed))


# ---- the node's reachability over time (no I/O) -------------------------------------------------


class ReachabilityMachine:
    """The reachability the node acts on; `start` and `on_verdict` say when its role changes."""

    def __init__(self, forced: Reachability | None = None) -> None:
        self.forced = forced
        self.state = forced or UNKNOWN
        self.started = False

    def start(self) -> Reachability:
        """The state whose role the node takes first."""
        if self.started:
            raise ProtocolError("reachability: started twice")
        self.started = True
        return self.state

    def on_verdict(self, verdict: Reachability) -> Reachability | None:
        """The new state when the node must change its role, None when it keeps it."""
        if not self.started:
            raise ProtocolError("reachability: a verdict before start")
        if self.forced is not None:
            raise ProtocolError(f"reachability: a verdict ({verdict}), but the configuration forces {self.forced}")
        after = TRANSITIONS[self.state, Reachability(verdict)]
        if after is self.state:
            return None
        self.state = after
        return after
