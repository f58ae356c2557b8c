"""MessageNet relayer frames (seed 000) and signed messages, as a codec without I/O.

A relayer talks to its node over `WS /relayer` in binary frames. The first byte says what the
frame is (seed 000: "actions based on first byte of data"); the rest is a UTF-8 JSON object with
the seed's field names. Byte strings (Go `[]byte`) are base64, as Go's encoding/json writes them;
`node_id` is a peer ID (base58).

Relayer -> node:

| byte | action | body |
|---|---|---|
| 0x01 | register | {"relayer_id": int} (one socket may register several IDs) |
| 0x02 | SendToValidator | {"relayer_id", "node_id", "raw_data", "id"?} |
| 0x03 | SendToPeers | {"relayer_id", "raw_data"} |
| 0x04 | SignAndSendToValidator | {"relayer_id", "node_id", "identification_byte": 0-255, "msg_bytes", "id"?} |
| 0x05 | SignAndSendToPeers | {"relayer_id", "identification_byte", "msg_bytes"} |

Node -> relayer:

| byte | frame | body |
|---|---|---|
| 0x10 | SendToClient | {"relayer_id", "node_id": the sender, "data"} |
| 0x11 | delivery report | {"id", "ok": bool, "error"?: "no such relayer" / "peer unreachable" / ...} |
| 0x12 | error | {"error": "..."} for a frame the node could not take |

`id` (an addition: any integer the relayer picks) ties a unicast to its delivery report, which
says whether the remote node took the message for a registered relayer, not only that it left.

SignedMessage (seed 000), what a SignAndSend carries as the delivered `data` (JSON, base64 bytes):
{"publicKeyBytes": libp2p protobuf key, "signature": Ed25519 over unsignedMessage,
 "unsignedMessage": identification_byte followed by msg_bytes}. A receiver accepts it only if
the signature verifies and the key is the one of the peer ID that sent it.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from overlay.errors import DecodeError, RecordError
from overlay.jsonwire import base64_field
from overlay.records import public_key_from_protobuf, peer_id_from_public_key, peer_id_from_str, public_key_bytes

REGISTER, SEND_TO_VALIDATOR, SEND_TO_PEERS, SIGN_AND_SEND_TO_VALIDATOR, SIGN_AND_SEND_TO_PEERS = 0x01, 0x02, 0x03, 0x04, 0x05
SEND_TO_CLIENT, DELIVERY, ERROR = 0x10, 0x11, 0x12
MAX_RELAYER_FRAME = 1 << 20
MAX_RELAYER_ID = 2**63 - 1
ACTIONS = {
    REGISTER: "register",
    SEND_TO_VALIDATOR: "SendToValidator",
    SEND_TO_PEERS: "SendToPeers",
    SIGN_AND_SEND_TO_VALIDATOR: "SignAndSendToValidator",
    SIGN_AND_SEND_TO_PEERS: "SignAndSendToPeers",
}


@dataclass(frozen=True)
class Request:
    action: int
    relayer_id: int
    node_id: bytes | None = None  # binary peer ID, for the unicasts
    data: bytes = b""  # raw_data, or identification_byte + msg_bytes for the signed ones
    id: int | None = None

    @property
    def signed(self) -> bool:
        return self.action in (SIGN_AND_SEND_TO_VALIDATOR, SIGN_AND_SEND_TO_PEERS)

    @property
    def unicast(self) -> bool:
        return self.action in (SEND_TO_VALIDATOR, SIGN_AND_SEND_TO_VALIDATOR)


def _int(body: dict, key: str, low: int, high: int) -> int:
    value = body.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise DecodeError(f"{key} must be an integer from {low} to {high}")
    return value


def decode_request(frame: bytes) -> Request:
    """One relayer frame; DecodeError names what is wrong (answered with an ERROR frame)."""
    if not isinstance(frame, (bytes, bytearray)) or not frame:
        raise DecodeError("expected a binary frame with a dispatch byte")
    if len(frame) > MAX_RELAYER_FRAME:
        raise DecodeError(f"frame larger than {MAX_RELAYER_FRAME} bytes")
    action = frame[0]
    if action not in ACTIONS:
        raise DecodeError(f"unknown dispatch byte 0x{action:02x}")
    try:
        body = json.loads(bytes(frame[1:]))
    except (UnicodeDecodeError, ValueError):
        raise DecodeError(f"{ACTIONS[action]}: body is not JSON") from None
    if not isinstance(body, dict):
        raise DecodeError(f"{ACTIONS[action]}: body must be a JSON object")
    relayer_id = _int(body, "relayer_id", 0, MAX_RELAYER_ID)
    if action == REGISTER:
        return Request(action, relayer_id)
    node_id = None
    if action in (SEND_TO_VALIDATOR, SIGN_AND_SEND_TO_VALIDATOR):
        text = body.get("node_id")
        if not isinstance(text, str):
            raise DecodeError(f"{ACTIONS[action]}: node_id must be a peer ID")
        try:
            node_id = peer_id_from_str(text)
        except RecordError as e:
            raise DecodeError(f"{ACTIONS[action]}: {e}") from None
    if action in (SEND_TO_VALIDATOR, SEND_TO_PEERS):
        data = base64_field(body, "raw_data")
    else:
        data = bytes([_int(body, "identification_byte", 0, 255)]) + base64_field(body, "msg_bytes")
    request_id = body.get("id")
    if request_id is not None:
        request_id = _int(body, "id", -(2**63), 2**63 - 1)
    return Request(action, relayer_id, node_id, data, request_id)


def _frame(kind: int, body: dict[str, Any]) -> bytes:
    return bytes([kind]) + json.dumps(body, separators=(",", ":")).encode()


def to_client(relayer_id: int, sender: str, data: bytes) -> bytes:
    return _frame(SEND_TO_CLIENT, {"relayer_id": relayer_id, "node_id": sender, "data": base64.b64encode(data).decode()})


def delivery(request_id: int | None, error: str | None) -> bytes:
    body: dict[str, Any] = {"id": request_id, "ok": error is None}
    if error is not None:
        body["error"] = error
    return _frame(DELIVERY, body)


def error(reason: str) -> bytes:
    return _frame(ERROR, {"error": reason})


# ---- SignedMessage --------------------------------------------------------------------------------


def sign(key: Ed25519PrivateKey, unsigned: bytes) -> bytes:
    """The SignedMessage JSON for `unsigned` (identification byte first)."""
    return json.dumps({
        "publicKeyBytes": base64.b64encode(public_key_bytes(key.public_key())).decode(),
        "signature": base64.b64encode(key.sign(unsigned)).decode(),
        "unsignedMessage": base64.b64encode(unsigned).decode(),
    }, separators=(",", ":")).encode()


def verify(signed: bytes, sender: bytes) -> bytes:
    """The unsigned message, if `signed` is a SignedMessage by the key of peer ID `sender`;
    DecodeError otherwise (the receiver drops and counts it)."""
    try:
        body = json.loads(signed)
    except (UnicodeDecodeError, ValueError):
        raise DecodeError("SignedMessage: not JSON") from None
    if not isinstance(body, dict):
        raise DecodeError("SignedMessage: expected a JSON object")
    key_bytes, signature, unsigned = base64_field(body, "publicKeyBytes"), base64_field(body, "signature"), base64_field(body, "unsignedMessage")
    try:
        key = public_key_from_protobuf(key_bytes)
    except (RecordError, DecodeError) as e:
        raise DecodeError(f"SignedMessage: {e}") from None
    if peer_id_from_public_key(key) != sender:
        raise DecodeError("SignedMessage: the key is not the sender's")
    if not unsigned:
        raise DecodeError("SignedMessage: no identification byte")
    try:
        key.verify(signature, unsigned)
    except InvalidSignature:
        raise DecodeError("SignedMessage: bad signature") from None
    return unsigned
