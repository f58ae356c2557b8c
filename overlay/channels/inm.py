"""Intra-node messages (INM, from WSRelay): the envelope nodes exchange, and its codec with limits.

    {"source": "<peer id>", "destination": "<peer id>" | "*" | "+", "type": "message" | "command" | "response",
     "nonce": "<1-64 printable ASCII>", "data": <any JSON>, "at": <ms>, "sig": "<base64>", "scope": <0-257>,
     "tree": 0 | 1}

One envelope per frame (unsigned-varint length, then UTF-8 JSON) on the stream protocol
`/overlay/<network>/inm/1.0.0`; PROTOCOL.md in this directory has the whole protocol. Node names
are peer IDs.

Who sent an envelope is evidence, not a claim: on its first hop the source must be the
Noise-authenticated peer of the stream it came on; an envelope passed on for another node (a
broadcast, flooded) carries its source's Ed25519 signature over `signed_bytes`, with the
wall-clock time `at` it was made, which receivers check (the relay core, relay.py). `at` and
`sig` are absent from envelopes that travel one hop only. `scope` and `tree` say, on a broadcast,
which of its two trees the envelope travels and which part of the DHT's prefix tree the receiver
passes it on to (relay.py); they are not signed, as they change at every hop, and a lie in them
costs at most one more pass over the receiver's buckets.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from overlay.core.errors import DecodeError, RecordError
from overlay.core.jsonwire import loads
from overlay.core.records import peer_id_from_str, public_key_from_peer_id

MAX_INM = 256 * 1024  # one encoded envelope
MAX_NAME = 128
MAX_NONCE = 64
TYPES = ("message", "command", "response")
BROADCAST = "*"
MEMBERS = "+"  # a channel message's destination: the channel's member nodes (mesh.py says which)
SIGNED_DOMAIN = b"overlay-inm-envelope-v1\0"
MAX_SIG = 100  # base64 of a 64-byte Ed25519 signature is 88
LEAF = 257  # the scope of a broadcast to a node that passes it on to no one (beyond every bucket)


@dataclass(frozen=True)
class Inm:
    source: str
    destination: str
    type: str
    nonce: str
    data: Any
    at: int | None = None  # wall-clock ms when signed
    sig: str = ""  # the source's signature over signed_bytes, base64
    scope: int | None = None  # a broadcast's part of the prefix tree (not signed)
    tree: int = 0  # ... and which of its two trees

    def encode(self) -> bytes:
        envelope = {"source": self.source, "destination": self.destination, "type": self.type, "nonce": self.nonce,
                    "data": self.data}
        if self.sig:
            envelope["at"], envelope["sig"] = self.at, self.sig
        if self.scope is not None:
            envelope["scope"], envelope["tree"] = self.scope, self.tree
        out = json.dumps(envelope, separators=(",", ":")).encode()
        if len(out) > MAX_INM:
            raise DecodeError(f"INM of {len(out)} bytes exceeds the limit of {MAX_INM}")
        return out

    def reply(self, source: str, data: dict[str, Any]) -> Inm:
        """The response to this command: back to its source, with its nonce."""
        return Inm(source, self.source, "response", self.nonce, data)


def signed_bytes(inm: Inm) -> bytes:
    """What the source signs: the domain, then each field length-prefixed, `data` as canonical
    JSON (sorted keys, no spaces), which the receiver rebuilds from what it parsed."""
    data = json.dumps(inm.data, sort_keys=True, separators=(",", ":"))
    fields = (inm.source, inm.destination, inm.type, inm.nonce, str(inm.at), data)
    return SIGNED_DOMAIN + b"".join(len(f).to_bytes(4, "big") + f for f in (x.encode() for x in fields))


def sign(key: Ed25519PrivateKey, inm: Inm) -> str:
    return base64.b64encode(key.sign(signed_bytes(inm))).decode()


def verify(inm: Inm) -> bool:
    """Whether `sig` is the source's signature (the key its peer ID embeds) over the envelope."""
    try:
        key = public_key_from_peer_id(peer_id_from_str(inm.source))
        key.verify(base64.b64decode(inm.sig, validate=True), signed_bytes(inm))
    except (RecordError, InvalidSignature, binascii.Error, ValueError):
        return False
    return True


CommandHandler = Callable[[Inm], "dict | None"]  # a command's response data, or None for no response


class InmBus(Protocol):
    """What a protocol riding on INM (MessageNet, Degas) uses of the node's links: its commands
    registered once, envelopes to one node or every node. The channel service implements it."""

    me: str

    def register(self, command: str, handler: CommandHandler) -> None: ...

    def notify(self, node: str, data: dict) -> None: ...

    def broadcast(self, data: dict, on_response: Callable[[Inm], None] | None = None, answered: bool = True) -> None: ...

    def command(self, node: str, data: dict, timeout: float = ...) -> Awaitable[dict]: ...


def new_nonce() -> str:
    return secrets.token_urlsafe(12)


def _name(value: Any, what: str, broadcast: bool = False) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_NAME or not value.isascii() or not value.isprintable():
        raise DecodeError(f"INM: {what} must be a node name (1-{MAX_NAME} printable ASCII)")
    if value == BROADCAST and not broadcast:
        raise DecodeError(f"INM: {what} cannot be {BROADCAST!r}")
    return value


def decode(raw: bytes) -> Inm:
    """Parse one envelope; DecodeError says what is wrong (the caller counts and drops it)."""
    if len(raw) > MAX_INM:
        raise DecodeError(f"INM of {len(raw)} bytes exceeds the limit of {MAX_INM}")
    obj = loads(raw, "INM")
    if not isinstance(obj, dict):
        raise DecodeError("INM: expected a JSON object")
    kind = obj.get("type")
    if kind not in TYPES:
        raise DecodeError(f"INM: type must be one of {', '.join(TYPES)}")
    nonce = obj.get("nonce")
    if not isinstance(nonce, str) or not 1 <= len(nonce) <= MAX_NONCE or not nonce.isascii() or not nonce.isprintable():
        raise DecodeError(f"INM: nonce must be 1-{MAX_NONCE} printable ASCII")
    if "data" not in obj:
        raise DecodeError("INM: data is missing")
    at, sig = obj.get("at"), obj.get("sig", "")
    if sig != "" and (not isinstance(sig, str) or len(sig) > MAX_SIG or not isinstance(at, int) or isinstance(at, bool)
                      or not 0 <= at < 2**63):
        raise DecodeError(f"INM: sig must be base64 of at most {MAX_SIG} characters, with at in ms")
    scope, tree = obj.get("scope"), obj.get("tree", 0)
    if scope is not None and (type(scope) is not int or not 0 <= scope <= LEAF):
        raise DecodeError(f"INM: scope must be an integer from 0 to {LEAF}")
    if tree not in (0, 1) or type(tree) is not int:
        raise DecodeError("INM: tree must be 0 or 1")
    return Inm(_name(obj.get("source"), "source"), _name(obj.get("destination"), "destination", broadcast=True), kind, nonce,
               obj["data"], at if sig else None, sig, scope, tree)
