"""Intra-node messages (INM, from WSRelay): the envelope nodes exchange, and its codec with limits.

    {"source": "<peer id>", "destination": "<peer id>" | "*", "type": "message" | "command" | "response",
     "nonce": "<1-64 printable ASCII>", "data": <any JSON>}

One envelope per frame (unsigned-varint length, then UTF-8 JSON) on the stream protocol
`/overlay/<network>/inm/1.0.0`; PROTOCOL.md in this directory has the whole protocol. Node names
are peer IDs. The stream is Noise-authenticated, but `source` is not yet compared with the peer
an envelope came from, and forwarded envelopes keep their original source: today `source` is a
claim (docs/security.md, "Not yet defended"). What must be believed is signed by its author, as
MessageNet's SignedMessage is.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from overlay.core.errors import DecodeError
from overlay.core.jsonwire import loads

MAX_INM = 256 * 1024  # one encoded envelope
MAX_NAME = 128
MAX_NONCE = 64
TYPES = ("message", "command", "response")
BROADCAST = "*"


@dataclass(frozen=True)
class Inm:
    source: str
    destination: str
    type: str
    nonce: str
    data: Any

    def encode(self) -> bytes:
        out = json.dumps(
            {"source": self.source, "destination": self.destination, "type": self.type, "nonce": self.nonce, "data": self.data},
            separators=(",", ":"),
        ).encode()
        if len(out) > MAX_INM:
            raise DecodeError(f"INM of {len(out)} bytes exceeds the limit of {MAX_INM}")
        return out

    def reply(self, source: str, data: dict[str, Any]) -> Inm:
        """The response to this command: back to its source, with its nonce."""
        return Inm(source, self.source, "response", self.nonce, data)


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
    return Inm(_name(obj.get("source"), "source"), _name(obj.get("destination"), "destination", broadcast=True), kind, nonce, obj["data"])
