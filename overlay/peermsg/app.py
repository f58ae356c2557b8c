"""The application protocol of `WS /peermsg` (typed peer messages, docs/protocols/convex.md), as a
codec without I/O.

Text frames, one JSON object each (at most MAX_APP_FRAME bytes); bodies are base64; `type` is
one of BELIEF DATA QUERY TRANSACT RESULT STATUS MISSING_DATA; `peer` a peer ID.

Application -> node:

    {"op": "register", "types": ["QUERY", ...]}     receive these types -> {"op": "registered", "types": [...]}
                                                    One application per type: a type another connected
                                                    application holds is refused with an error (and
                                                    nothing is registered); once it disconnects, anyone
                                                    may take it. Registering again is harmless.
    {"op": "send", "peer": id, "type": T, "body": b64}      -> {"op": "sent", "id": n}
    {"op": "broadcast", "type": T, "body": b64}             -> {"op": "sent", "peers": n}
    {"op": "answer", "peer": id, "ref": n, "code": C, "result": b64}   C: OK ERROR TEMPORARY_FAILURE ...

Node -> application:

    {"op": "message", "peer": id, "type": T, "id": n, "body": b64}
    {"op": "error", "error": "..."}   for a frame it could not take, a type another application holds,
                                      a peer it could not reach, or an answer to a message this
                                      application was not given (or already answered)

A message delivered here counts as handled for load shedding once it is written to the socket,
except QUERY and TRANSACT, which count until answered or until the application disconnects.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

from overlay.core.errors import DecodeError, RecordError
from overlay.core.jsonwire import base64_field, loads
from overlay.peermsg.core import Code
from overlay.peermsg.frames import PeerMessageType
from overlay.core.records import peer_id_from_str

MAX_APP_FRAME = 2 << 20  # room for a body of 1.5 MB in base64
OPS = ("register", "send", "broadcast", "answer")


@dataclass(frozen=True)
class AppRequest:
    op: str
    types: frozenset[PeerMessageType] = frozenset()
    peer: str = ""
    type: PeerMessageType | None = None
    body: bytes = b""
    ref: int = 0
    code: Code = Code.OK


def _type(value: Any) -> PeerMessageType:
    if not isinstance(value, str) or value not in PeerMessageType.__members__:
        raise DecodeError(f"type must be one of {', '.join(PeerMessageType.__members__)}")
    return PeerMessageType[value]


def _peer(obj: dict) -> str:
    value = obj.get("peer")
    try:
        peer_id_from_str(value if isinstance(value, str) else "")
    except RecordError as e:
        raise DecodeError(f"peer: {e}") from None
    return value


def decode_app(text: str | bytes) -> AppRequest:
    if len(text) > MAX_APP_FRAME:
        raise DecodeError(f"frame larger than {MAX_APP_FRAME} bytes")
    obj = loads(text, "frame", not_json="not JSON")
    if not isinstance(obj, dict) or obj.get("op") not in OPS:
        raise DecodeError(f"op must be one of {', '.join(OPS)}")
    op = obj["op"]
    if op == "register":
        types = obj.get("types")
        if not isinstance(types, list) or len(types) > len(PeerMessageType):
            raise DecodeError("types must be a list of message types")
        return AppRequest(op, types=frozenset(_type(t) for t in types))
    if op == "answer":
        ref, code = obj.get("ref"), obj.get("code")
        if not isinstance(ref, int) or isinstance(ref, bool) or not 0 <= ref < 2**64:
            raise DecodeError("ref must be a message id")
        if not isinstance(code, str) or code not in Code.__members__:
            raise DecodeError(f"code must be one of {', '.join(Code.__members__)}")
        return AppRequest(op, peer=_peer(obj), ref=ref, code=Code[code], body=base64_field(obj, "result"))
    peer = _peer(obj) if op == "send" else ""
    return AppRequest(op, peer=peer, type=_type(obj.get("type")), body=base64_field(obj, "body"))


def encode_app(obj: dict[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"))


def delivered(peer: str, tag: PeerMessageType, message_id: int, body: bytes) -> str:
    return encode_app({"op": "message", "peer": peer, "type": tag.name, "id": message_id, "body": base64.b64encode(body).decode()})
