"""The description two WebRTC peers exchange through signalling instead of SDP, without I/O.

Wire form (a JSON object, at most MAX_DESCRIPTION bytes once encoded; the body of a signalling
`offer` or `answer`, signaling/PROTOCOL.md):

    {"ufrag": str, "pwd": str, "fingerprints": ["sha-256 AB:CD:...", ...],
     "candidates": ["candidate:<foundation> 1 udp <prio> <ip> <port> typ <type> ...", ...]}

Candidates use the candidate-attribute syntax of RFC 8839, UDP and IP literals only. They are
read here as aiortc's candidate_from_sdp reads them (nat/webrtc.py hands the same text to it),
so what is checked is what ICE uses; tests/interop/test_webrtc_candidates.py holds the two to it.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass
from typing import Any

from overlay.core.errors import DecodeError

MAX_DESCRIPTION = 8 * 1024
MAX_CANDIDATES = 16
MAX_FINGERPRINTS = 4
_ICE_CHARS = re.compile(r"^[A-Za-z0-9+/]+$")
_FINGERPRINT = re.compile(r"^([0-9A-Fa-f]{2}:){15,63}[0-9A-Fa-f]{2}$")
_HASHES = ("sha-256", "sha-384", "sha-512")
_CANDIDATE_TYPES = ("host", "srflx", "prflx", "relay")


@dataclass(frozen=True)
class Description:
    """What one side tells the other to connect: ICE credentials, DTLS fingerprints, candidates."""

    ufrag: str
    pwd: str
    fingerprints: tuple[tuple[str, str], ...]
    candidates: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "ufrag": self.ufrag,
            "pwd": self.pwd,
            "fingerprints": [f"{a} {v}" for a, v in self.fingerprints],
            "candidates": list(self.candidates),
        }


def parse_description(obj: Any, allow_loopback: bool = False) -> Description:
    """Validate a remote description; DecodeError names what is wrong.

    Candidates that a remote could use to aim our connectivity checks elsewhere are refused:
    hostnames (aioice would resolve them, mDNS included), TCP, unspecified, multicast and
    broadcast addresses, and loopback unless allowed.
    """
    if not isinstance(obj, dict):
        raise DecodeError("description: expected a JSON object")
    if len(json.dumps(obj)) > MAX_DESCRIPTION:
        raise DecodeError(f"description: larger than {MAX_DESCRIPTION} bytes")
    ufrag, pwd = obj.get("ufrag"), obj.get("pwd")
    if not isinstance(ufrag, str) or not 4 <= len(ufrag) <= 256 or not _ICE_CHARS.match(ufrag):
        raise DecodeError("description: ufrag must be 4-256 ICE characters")
    if not isinstance(pwd, str) or not 22 <= len(pwd) <= 256 or not _ICE_CHARS.match(pwd):
        raise DecodeError("description: pwd must be 22-256 ICE characters")
    fingerprints = obj.get("fingerprints")
    if not isinstance(fingerprints, list) or not 1 <= len(fingerprints) <= MAX_FINGERPRINTS:
        raise DecodeError(f"description: 1 to {MAX_FINGERPRINTS} fingerprints expected")
    parsed_fps = []
    for fp in fingerprints:
        algorithm, _, value = fp.partition(" ") if isinstance(fp, str) else ("", "", "")
        if algorithm not in _HASHES or not _FINGERPRINT.match(value):
            raise DecodeError(f"description: bad fingerprint {str(fp)[:80]!r}")
        parsed_fps.append((algorithm, value.upper()))
    candidates = obj.get("candidates")
    if not isinstance(candidates, list) or len(candidates) > MAX_CANDIDATES:
        raise DecodeError(f"description: at most {MAX_CANDIDATES} candidates expected")
    for text in candidates:
        check_candidate(text, allow_loopback)
    return Description(ufrag, pwd, tuple(parsed_fps), tuple(candidates))


def candidate_fields(sdp: str) -> tuple[str, str, int, str]:
    """(protocol, ip, port, type) of a candidate attribute without its "candidate:" prefix, read
    as aiortc.sdp.candidate_from_sdp reads it, which also converts component, priority and any
    rport to integers; ValueError where it would fail."""
    bits = sdp.split()
    if len(bits) < 8:
        raise ValueError("fewer than 8 fields")
    int(bits[1]), int(bits[3])
    for i in range(8, len(bits) - 1, 2):
        if bits[i] == "rport":
            int(bits[i + 1])
    return bits[2], bits[4], int(bits[5]), bits[7]


def check_candidate(text: Any, allow_loopback: bool = False) -> None:
    if not isinstance(text, str) or len(text) > 256:
        raise DecodeError("candidate: expected a string of at most 256 characters")
    try:
        protocol, host, port, kind = candidate_fields(text.removeprefix("candidate:"))
    except ValueError:
        raise DecodeError(f"candidate: cannot parse {text[:80]!r}") from None
    if protocol.lower() != "udp":
        raise DecodeError(f"candidate: only UDP is used, got {protocol!r}")
    if kind not in _CANDIDATE_TYPES:
        raise DecodeError(f"candidate: unknown type {kind!r}")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise DecodeError(f"candidate: {host!r} is not an IP address") from None
    if ip.is_unspecified or ip.is_multicast or (ip.version == 4 and ip == ipaddress.IPv4Address("255.255.255.255")):
        raise DecodeError(f"candidate: unusable address {ip}")
    if ip.is_loopback and not allow_loopback:
        raise DecodeError(f"candidate: loopback address {ip}")
    if not 1 <= port <= 65535:
        raise DecodeError(f"candidate: bad port {port}")
