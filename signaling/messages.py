"""Signalling and relay control messages: one JSON object per frame (see PROTOCOL.md).

`decode` validates everything a handler relies on and raises DecodeError, naming the problem,
for anything else; `encode` is its inverse. Peer IDs travel as base58 strings and are checked.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Union

from overlay.core.errors import DecodeError, RecordError
from overlay.core.jsonwire import loads
from overlay.core.records import peer_id_from_str

MAX_FRAME = 16 * 1024
KINDS = ("offer", "answer", "candidate", "bye")
ERROR_CODES = ("bad-message", "too-large", "not-registered", "no-session", "rate-limited", "full", "refused", "limit")
MAX_LIMIT = 2**40
_SESSION = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True)
class Register:
    pass


@dataclass(frozen=True)
class Registered:
    ttl: int


@dataclass(frozen=True)
class Load:
    """Asked on a new stream (`registrations` None): how many registrations the server holds;
    answered with the count. A claim, used only to order the nodes a client may choose."""

    registrations: int | None = None


@dataclass(frozen=True)
class Ping:
    pass


@dataclass(frozen=True)
class Pong:
    pass


@dataclass(frozen=True)
class Signal:
    """A forwarded message: `to` when sent to the server, `sender` when the server delivers it."""

    session: str
    kind: str
    body: dict[str, Any] = field(hash=False, compare=True)
    to: str | None = None
    sender: str | None = None


@dataclass(frozen=True)
class Error:
    code: str
    reason: str = ""
    session: str | None = None


@dataclass(frozen=True)
class Limit:
    """A relayed circuit's limit, told to both its ends: a first connection's bytes (both ways
    together) and seconds, or a persistent circuit's rate in bytes a second; 0 is none."""

    bytes: int = 0
    seconds: int = 0
    rate: int = 0


@dataclass(frozen=True)
class Connect:
    to: str
    persistent: bool = False  # asked for by a caller that found no direct path


@dataclass(frozen=True)
class Incoming:
    sender: str
    limit: Limit | None = None


@dataclass(frozen=True)
class Accepted:
    pass


@dataclass(frozen=True)
class Connected:
    limit: Limit | None = None


Message = Union[Register, Registered, Load, Ping, Pong, Signal, Error, Connect, Incoming, Accepted, Connected]
_SIMPLE = {"register": Register, "ping": Ping, "pong": Pong, "accepted": Accepted}


def _limit_obj(limit: Limit) -> dict[str, int]:
    return {k: v for k, v in (("bytes", limit.bytes), ("seconds", limit.seconds), ("rate", limit.rate)) if v}


def _limit(obj: dict[str, Any]) -> Limit | None:
    value = obj.get("limit")
    if value is None:
        return None
    if not isinstance(value, dict) or not set(value) <= {"bytes", "seconds", "rate"} or not all(
            isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_LIMIT for v in value.values()):
        raise DecodeError(f"{obj['type']}: limit must be an object of whole numbers bytes, seconds, rate")
    return Limit(**value)


def encode(message: Message) -> bytes:
    if isinstance(message, Signal):
        obj: dict[str, Any] = {"type": "signal", "session": message.session, "kind": message.kind, "body": message.body}
        if message.to is not None:
            obj["to"] = message.to
        if message.sender is not None:
            obj["from"] = message.sender
    elif isinstance(message, Registered):
        obj = {"type": "registered", "ttl": message.ttl}
    elif isinstance(message, Load):
        obj = {"type": "load"}
        if message.registrations is not None:
            obj["registrations"] = message.registrations
    elif isinstance(message, Error):
        obj = {"type": "error", "code": message.code, "reason": message.reason[:256]}
        if message.session is not None:
            obj["session"] = message.session
    elif isinstance(message, Connect):
        obj = {"type": "connect", "to": message.to}
        if message.persistent:
            obj["persistent"] = True
    elif isinstance(message, Incoming):
        obj = {"type": "incoming", "from": message.sender}
        if message.limit is not None:
            obj["limit"] = _limit_obj(message.limit)
    elif isinstance(message, Connected):
        obj = {"type": "connected"}
        if message.limit is not None:
            obj["limit"] = _limit_obj(message.limit)
    else:
        obj = {"type": next(name for name, cls in _SIMPLE.items() if isinstance(message, cls))}
    data = json.dumps(obj, separators=(",", ":")).encode()
    if len(data) > MAX_FRAME:
        raise DecodeError(f"message of {len(data)} bytes exceeds {MAX_FRAME}")
    return data


def _peer(obj: dict[str, Any], key: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise DecodeError(f"{obj.get('type')}: {key!r} must be a peer ID string")
    try:
        peer_id_from_str(value)
    except RecordError as e:
        raise DecodeError(f"{obj.get('type')}: {key!r}: {e}") from None
    return value


def _session(obj: dict[str, Any], required: bool = True) -> str | None:
    value = obj.get("session")
    if value is None and not required:
        return None
    if not isinstance(value, str) or not _SESSION.match(value):
        raise DecodeError("session must be 1-64 characters of A-Z a-z 0-9 _ -")
    return value


def decode(data: bytes) -> Message:
    if len(data) > MAX_FRAME:
        raise DecodeError(f"message of {len(data)} bytes exceeds {MAX_FRAME}")
    obj = loads(data, "message", not_json="not a JSON document")
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        raise DecodeError("expected a JSON object with a string 'type'")
    kind = obj["type"]
    if kind in _SIMPLE:
        return _SIMPLE[kind]()
    if kind == "registered":
        ttl = obj.get("ttl")
        if not isinstance(ttl, int) or isinstance(ttl, bool) or not 1 <= ttl <= 3600:
            raise DecodeError("registered: ttl must be a whole number of seconds from 1 to 3600")
        return Registered(ttl)
    if kind == "load":
        count = obj.get("registrations")
        if count is not None and (not isinstance(count, int) or isinstance(count, bool) or not 0 <= count <= MAX_LIMIT):
            raise DecodeError("load: registrations must be a whole number")
        return Load(count)
    if kind == "signal":
        if obj.get("kind") not in KINDS:
            raise DecodeError(f"signal: kind must be one of {', '.join(KINDS)}")
        if not isinstance(obj.get("body"), dict):
            raise DecodeError("signal: body must be a JSON object")
        to = _peer(obj, "to") if "to" in obj else None
        sender = _peer(obj, "from") if "from" in obj else None
        if (to is None) == (sender is None):
            raise DecodeError("signal: exactly one of 'to' and 'from' is expected")
        return Signal(_session(obj), obj["kind"], obj["body"], to, sender)  # type: ignore[arg-type]
    if kind == "error":
        code, reason = obj.get("code"), obj.get("reason", "")
        if code not in ERROR_CODES or not isinstance(reason, str):
            raise DecodeError("error: unknown code or non-string reason")
        return Error(code, reason[:256], _session(obj, required=False))
    if kind == "connect":
        persistent = obj.get("persistent", False)
        if not isinstance(persistent, bool):
            raise DecodeError("connect: persistent must be true or false")
        return Connect(_peer(obj, "to"), persistent)
    if kind == "incoming":
        return Incoming(_peer(obj, "from"), _limit(obj))
    if kind == "connected":
        return Connected(_limit(obj))
    raise DecodeError(f"unknown message type {kind[:32]!r}")
