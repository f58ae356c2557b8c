"""Password channels sealed end to end: readable and writable only with the password.

Construction (PROTOCOL.md, "Password channels", states its limits):

    stretched = PBKDF2-HMAC-SHA256(password, salt = channel name, 32768 iterations)   (WSRelay's hash)
    okm       = HKDF-SHA256(stretched, salt = none, info = "overlay-channel-v1" 0x00 name, 64 bytes)
    key       = okm[0:32]        ChaCha20-Poly1305 key of the channel's messages
    verifier  = hex(okm[32:64])  what the reservation carries, so nodes check a client's password

A message is sealed once by the publisher's node:

    box = nonce (12 random bytes) || ChaCha20-Poly1305(key, nonce, JSON {"message", "nonce"},
          aad = "overlay-channel-message-v1" 0x00 channel 0x00 publisher node)

and each member node opens it before delivering; one that does not authenticate is dropped and
counted. The verifier and the key are independent HKDF outputs: knowing the verifier opens no
message, and no node ever sends the key, the password or the stretched hash to another.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from overlay.core.errors import DecodeError
from overlay.core.jsonwire import loads

PBKDF2_ITERATIONS = 32768
KEY_INFO = b"overlay-channel-v1\0"
MESSAGE_AAD = b"overlay-channel-message-v1\0"
NONCE = 12


@dataclass(frozen=True)
class ChannelSecret:
    """What a node holds for a channel its clients opened: the verifier to check further clients'
    passwords, and the key of its messages (None: a channel without password)."""

    verifier: str = ""
    key: bytes | None = None


PUBLIC = ChannelSecret()


def channel_secret(name: str, password: str | None) -> ChannelSecret:
    """About 15 ms of CPU (the PBKDF2): callers on the event loop run it in a worker thread."""
    if not password:
        return PUBLIC
    stretched = hashlib.pbkdf2_hmac("sha256", password.encode(), name.encode(), PBKDF2_ITERATIONS)
    okm = HKDF(hashes.SHA256(), 64, None, KEY_INFO + name.encode()).derive(stretched)
    return ChannelSecret(okm[32:].hex(), okm[:32])


def _aad(name: str, publisher: str) -> bytes:
    return MESSAGE_AAD + name.encode() + b"\0" + publisher.encode()


def seal(key: bytes, name: str, publisher: str, message: str, nonce: str) -> bytes:
    plain = json.dumps({"message": message, "nonce": nonce}, separators=(",", ":")).encode()
    iv = os.urandom(NONCE)
    return iv + ChaCha20Poly1305(key).encrypt(iv, plain, _aad(name, publisher))


def open_sealed(key: bytes, name: str, publisher: str, box: bytes) -> tuple[str, str]:
    """(message, client nonce); DecodeError when the box does not authenticate under this
    channel, this publisher and this key."""
    try:
        plain = ChaCha20Poly1305(key).decrypt(box[:NONCE], box[NONCE:], _aad(name, publisher))
    except (InvalidTag, ValueError):
        raise DecodeError("sealed channel message does not authenticate") from None
    obj = loads(plain, "sealed channel message")
    if not isinstance(obj, dict) or not isinstance(obj.get("message"), str) or not isinstance(obj.get("nonce"), str):
        raise DecodeError("sealed channel message: expected message and nonce")
    return obj["message"], obj["nonce"]
