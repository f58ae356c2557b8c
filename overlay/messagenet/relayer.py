"""MessageNet relayer frames and signed messages, as a codec without I/O.

A relayer talks to its node over `WS /relayer` in binary frames: a dispatch byte, then a UTF-8
JSON object with MessageNet's field names (byte strings in base64, `node_id` a peer ID). The
frames, the SignedMessage a SignAndSend carries, the bytes its signature covers and the checks a
receiver makes are specified in docs/protocols/messagenet.md.

The node's identity key signs no bytes a relayer chose: the signature covers a structure that
starts with SIGNED_DOMAIN and binds sender, recipient, relayer, time and nonce, so it means one
thing only. `verify` checks the signature and the key; `accept` checks the rest against the
receiver's expectations and its replay memory (overlay/core/replay.py).
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from overlay.channels.inm import MAX_INM
from overlay.core.errors import DecodeError, RecordError
from overlay.core.jsonwire import base64_field, loads
from overlay.core.records import public_key_from_protobuf, peer_id_from_public_key, peer_id_from_str, peer_id_to_str, public_key_bytes
from overlay.core.replay import ReplayWindow

REGISTER, SEND_TO_VALIDATOR, SEND_TO_PEERS, SIGN_AND_SEND_TO_VALIDATOR, SIGN_AND_SEND_TO_PEERS = 0x01, 0x02, 0x03, 0x04, 0x05
SEND_TO_CLIENT, DELIVERY, ERROR = 0x10, 0x11, 0x12
MAX_RELAYER_FRAME = MAX_INM  # what the INM envelope that carries a message between nodes can hold anyway
MAX_RELAYER_ID = 2**63 - 1
ACTIONS = {
    REGISTER: "register",
    SEND_TO_VALIDATOR: "SendToValidator",
    SEND_TO_PEERS: "SendToPeers",
    SIGN_AND_SEND_TO_VALIDATOR: "SignAndSendToValidator",
    SIGN_AND_SEND_TO_PEERS: "SignAndSendToPeers",
}


@dataclass(frozen=True)
class RelayerRequest:
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


def decode_request(frame: bytes) -> RelayerRequest:
    """One relayer frame; DecodeError names what is wrong (answered with an ERROR frame)."""
    if not isinstance(frame, (bytes, bytearray)) or not frame:
        raise DecodeError("expected a binary frame with a dispatch byte")
    if len(frame) > MAX_RELAYER_FRAME:
        raise DecodeError(f"frame larger than {MAX_RELAYER_FRAME} bytes")
    action = frame[0]
    if action not in ACTIONS:
        raise DecodeError(f"unknown dispatch byte 0x{action:02x}")
    body = loads(bytes(frame[1:]), f"{ACTIONS[action]}: body", not_json=f"{ACTIONS[action]}: body is not JSON")
    if not isinstance(body, dict):
        raise DecodeError(f"{ACTIONS[action]}: body must be a JSON object")
    relayer_id = _int(body, "relayer_id", 0, MAX_RELAYER_ID)
    if action == REGISTER:
        return RelayerRequest(action, relayer_id)
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
    return RelayerRequest(action, relayer_id, node_id, data, request_id)


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

SIGNED_DOMAIN = b"overlay-messagenet-signed-message-v1\x00"
BROADCAST_RECIPIENT = "*"
NONCE_SIZE = 16
REPLAY_WINDOW = 60.0  # seconds either side of the receiver's clock
MAX_REPLAY_ENTRIES = 262_144  # (signer, nonce) pairs remembered, in all (about 20 MB at most)
MAX_REPLAY_PER_SIGNER = 65_536  # ... for one signer: about 500 signed messages a second, sustained


@dataclass(frozen=True)
class SignedMessage:
    """What a receiver learns from a verified SignedMessage."""

    unsigned: bytes  # identification byte + msg_bytes
    sender: bytes  # binary peer ID of the signer
    recipient: bytes | None  # binary peer ID; None: every node
    relayer_id: int
    timestamp_ms: int
    nonce: bytes


def _signed_bytes(m: SignedMessage) -> bytes:
    fields = (m.unsigned, m.sender, m.recipient or b"", m.relayer_id.to_bytes(8, "big"),
              m.timestamp_ms.to_bytes(8, "big"), m.nonce)
    return SIGNED_DOMAIN + b"".join(len(f).to_bytes(4, "big") + f for f in fields)


def sign(key: Ed25519PrivateKey, message: SignedMessage) -> bytes:
    """The SignedMessage JSON for `message`, signed by `key` (the sender's identity key)."""
    if peer_id_from_public_key(key.public_key()) != message.sender:
        raise RecordError("a SignedMessage is signed by its sender's key")
    return json.dumps({
        "publicKeyBytes": base64.b64encode(public_key_bytes(key.public_key())).decode(),
        "signature": base64.b64encode(key.sign(_signed_bytes(message))).decode(),
        "unsignedMessage": base64.b64encode(message.unsigned).decode(),
        "sender": peer_id_to_str(message.sender),
        "recipient": peer_id_to_str(message.recipient) if message.recipient else BROADCAST_RECIPIENT,
        "relayer_id": message.relayer_id,
        "timestamp": message.timestamp_ms,
        "nonce": base64.b64encode(message.nonce).decode(),
    }, separators=(",", ":")).encode()


def new_message(unsigned: bytes, sender: bytes, recipient: bytes | None, relayer_id: int, now: float) -> SignedMessage:
    """A message to sign now, with a fresh random nonce."""
    return SignedMessage(unsigned, sender, recipient, relayer_id, int(now * 1000), os.urandom(NONCE_SIZE))


def verify(signed: bytes) -> SignedMessage:
    """The SignedMessage, if its signature by the key it carries verifies and that key is its
    sender's; DecodeError otherwise. Whether sender, recipient, relayer, time and nonce are the
    expected ones is the receiver's to check (`accept`)."""
    body = loads(signed, "SignedMessage")
    if not isinstance(body, dict):
        raise DecodeError("SignedMessage: expected a JSON object")
    key_bytes, signature, unsigned = base64_field(body, "publicKeyBytes"), base64_field(body, "signature"), base64_field(body, "unsignedMessage")
    nonce = base64_field(body, "nonce")
    sender, recipient = body.get("sender"), body.get("recipient")
    if not isinstance(sender, str) or not isinstance(recipient, str):
        raise DecodeError("SignedMessage: sender and recipient must be peer IDs")
    try:
        key = public_key_from_protobuf(key_bytes)
        message = SignedMessage(
            unsigned, peer_id_from_str(sender),
            None if recipient == BROADCAST_RECIPIENT else peer_id_from_str(recipient),
            _int(body, "relayer_id", 0, MAX_RELAYER_ID), _int(body, "timestamp", 0, 2**63 - 1), nonce,
        )
    except (RecordError, DecodeError) as e:
        raise DecodeError(f"SignedMessage: {e}") from None
    if len(nonce) != NONCE_SIZE:
        raise DecodeError(f"SignedMessage: nonce must be {NONCE_SIZE} bytes")
    if not unsigned:
        raise DecodeError("SignedMessage: no identification byte")
    if peer_id_from_public_key(key) != message.sender:
        raise DecodeError("SignedMessage: the key is not the sender's")
    try:
        key.verify(signature, _signed_bytes(message))
    except InvalidSignature:
        raise DecodeError("SignedMessage: bad signature") from None
    return message


def accept(message: SignedMessage, sender: bytes, me: bytes, broadcast: bool, relayer_id: int,
           replays: ReplayWindow, now: float) -> str | None:
    """Why a verified message must not be delivered here, or None. `sender` is the node the
    overlay says it came from, `broadcast` whether it came as one; a replay within the window
    (the `replays` memory) is refused."""
    if message.sender != sender:
        return "not from its signer"
    if message.recipient != (None if broadcast else me):
        return "for another recipient"
    if message.relayer_id != relayer_id:
        return "for another relayer"
    return replays.check(message.sender, message.nonce, message.timestamp_ms / 1000, now)
