"""The client protocol of `WS /connect` (WSRelay: docs/protocols/wsrelay.md), as a codec without
I/O.

Client -> node, one JSON text frame each (at most MAX_CLIENT_FRAME bytes):

    {"command": "subscribe",   "data": {"topic": "<channel>", "password": "<optional>"}, "nonce": "..."}
    {"command": "unsubscribe", "data": {"topic": "<channel>"}, "nonce": "..."}
    {"command": "list",        "data": {}, "nonce": "..."}
    {"command": "send",        "data": {"channel": "<channel>", "message": "<text>"}, "nonce": "..."}

Node -> client:

    {"type": "response", "data": {"ok": true} | {"ok": false, "reason": "..."} | {"channels": [...]}, "nonce": "..."}
    {"type": "message",  "data": {"channel": "<channel>", "message": "<text>"}, "nonce": "<the sender's nonce>"}

A client that connects to `WS /connect?batch=1` gets, instead, one text frame per write holding
a JSON array of one or more of those objects, in order: all that waited for it, up to MAX_BATCH
of them and some MAX_BATCH_BYTES (one object beyond at most). Under load this saves a frame, a
write and the server's per-frame work per message.

`topic` and `channel` name the same thing: WSRelay says `topic` when subscribing and `channel`
when sending; both keys are accepted in every command (`channel` wins if both are given), and
the node always answers with `channel`. `nonce` is optional (at most 64 characters) and echoed.
A message is text, at most MAX_MESSAGE bytes in UTF-8 (WSRelay's examples are text; binary
payloads travel base64-encoded by the client).

Failure reasons: "invalid password", "not subscribed", "malformed json" (also "malformed json:
nested deeper than 16", see overlay/core/jsonwire.py), "unknown command",
"invalid channel", "invalid password field", "message too large", "invalid message",
"too many channels", "rate limited".
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from overlay.channels.table import MAX_PASSWORD, valid_channel_name
from overlay.core.errors import DecodeError
from overlay.core.jsonwire import loads

MAX_CLIENT_FRAME = 96 * 1024
MAX_MESSAGE = 64 * 1024
MAX_NONCE = 64
MAX_BATCH = 256  # objects in one frame of a batch=1 client
MAX_BATCH_BYTES = 256 * 1024  # ... and about this many bytes (one object more at most)
COMMANDS = ("subscribe", "unsubscribe", "list", "send")


@dataclass(frozen=True)
class Request:
    command: str
    nonce: str | None
    channel: str = ""
    password: str | None = None
    message: str = ""


class ClientError(Exception):
    """A request the node answers with {"ok": false, "reason": str(e)}, echoing `nonce`."""

    def __init__(self, reason: str, nonce: str | None = None) -> None:
        super().__init__(reason)
        self.nonce = nonce


def decode_request(text: str | bytes) -> Request:
    if len(text) > MAX_CLIENT_FRAME:
        raise ClientError("message too large")
    try:
        obj = loads(text, "malformed json", not_json="malformed json")
    except DecodeError as e:
        raise ClientError(str(e)) from None
    if not isinstance(obj, dict):
        raise ClientError("malformed json")
    nonce = obj.get("nonce")
    if nonce is not None and not (isinstance(nonce, str) and len(nonce) <= MAX_NONCE):
        raise ClientError(f"nonce must be a string of at most {MAX_NONCE} characters")
    command = obj.get("command")
    if command not in COMMANDS:
        raise ClientError("unknown command", nonce)
    data = obj.get("data", {})
    if not isinstance(data, dict):
        raise ClientError("malformed json", nonce)
    if command == "list":
        return Request(command, nonce)
    channel = data.get("channel", data.get("topic"))
    if not valid_channel_name(channel):
        raise ClientError("invalid channel", nonce)
    if command == "send":
        message = data.get("message")
        if not isinstance(message, str):
            raise ClientError("invalid message", nonce)
        if len(message.encode()) > MAX_MESSAGE:
            raise ClientError("message too large", nonce)
        return Request(command, nonce, channel, message=message)
    password = data.get("password")
    if password is not None and not (isinstance(password, str) and len(password) <= MAX_PASSWORD):
        raise ClientError("invalid password field", nonce)
    return Request(command, nonce, channel, password=password or None)


def response(nonce: str | None, data: dict[str, Any]) -> str:
    out: dict[str, Any] = {"type": "response", "data": data}
    if nonce is not None:
        out["nonce"] = nonce
    return json.dumps(out, separators=(",", ":"))


def ok(nonce: str | None) -> str:
    return response(nonce, {"ok": True})


def failure(nonce: str | None, reason: str) -> str:
    return response(nonce, {"ok": False, "reason": reason})


def message(channel: str, text: str, nonce: str) -> str:
    return json.dumps({"type": "message", "data": {"channel": channel, "message": text}, "nonce": nonce}, separators=(",", ":"))


def batch(frames: list[str]) -> str:
    """One frame of a batch=1 client: the objects (each already JSON) as one array."""
    return "[" + ",".join(frames) + "]"
