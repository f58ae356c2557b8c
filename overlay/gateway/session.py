"""One client connection to the Degas gateway (`WS /gateway`, docs/protocols/degas.md) as a state
machine without I/O: frames and `now` (wall-clock seconds) in, actions out. The frames are
degas.proto's.

    HELLO --ClientHello--> AUTH --ClientEthAuth (signature of the challenge)--> READY --ClientDegas...

- HELLO: the first frame must be a ClientHello with an Ethereum signer whose 20-byte address is
  the account_id. The gateway answers with an auth request carrying a fresh challenge: the text
  of a proof (proofs.py) naming this gateway node, the account, any degas_id, a random nonce
  and an expiry PROOF_TTL ahead.
- AUTH: the client signs the challenge string with EIP-191 personal_sign. The address recovered
  from the signature must be the hello's; the challenge is used once (whatever the outcome) and
  expires CHALLENGE_TTL seconds after it was sent. Success: GatewayMessage.auth_ok, and the
  connection is bound to the account; the signed challenge is the proof the gateway node shows
  the instances' nodes. Failure: AUTH_FAIL, then close.
- READY: ClientDegas messages (degas_id of 16 bytes, payload of at most MAX_PAYLOAD bytes) are
  forwarded; a bad one gets an error frame and the connection stays. From RENEW_AHEAD seconds
  before the proof expires, the next message also brings a new auth request; the client's
  ClientEthAuth answer renews the proof (auth_ok again; a wrong one: AUTH_FAIL and close). Once
  the proof has expired, messages get AUTH_FAIL (the connection stays) until it is renewed.

Anything before READY that is not the expected message gets an error frame and a close (1008);
a frame over MAX_CLIENT_FRAME bytes closes with 1009; a text frame closes with 1002 (Degas
allows binary frames only).
"""

from __future__ import annotations

import re
import secrets
import sys
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from google.protobuf.message import DecodeError as ProtobufDecodeError

from overlay.gateway import degas_pb2 as pb
from overlay.gateway.proofs import PROOF_TTL, Proof, Recover

CHALLENGE_TTL = 60.0
RENEW_AHEAD = 120.0  # seconds before the proof expires when the gateway asks for a new one
MAX_PAYLOAD = 65_536
DEGAS_ID_SIZE = 16
MAX_CLIENT_FRAME = 128 * 1024  # the largest valid ClientMessage is about 65.6 KB
ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")

Code = pb.GatewayErrorMessage.ERROR_CODE
CLOSE_PROTOCOL_ERROR, CLOSE_POLICY, CLOSE_TOO_BIG = 1002, 1008, 1009


@dataclass(frozen=True)
class GatewayReply:
    """A GatewayMessage to the client."""

    frame: bytes


@dataclass(frozen=True)
class GatewayClose:
    code: int
    reason: str


@dataclass(frozen=True)
class Bound:
    """The connection now speaks for this account."""

    account_id: bytes


@dataclass(frozen=True)
class Forward:
    """A ClientDegas message to deliver to instance `degas_id`."""

    degas_id: bytes
    payload: bytes


GatewayAction = GatewayReply | GatewayClose | Bound | Forward


class State(Enum):
    HELLO = "hello"
    AUTH = "auth"
    READY = "ready"
    CLOSED = "closed"


def error(code: int, reason: str, degas_id: bytes = b"", account_id: bytes = b"") -> pb.GatewayErrorMessage:
    return pb.GatewayErrorMessage(code=code, reason=reason, degas_id=degas_id, account_id=account_id)


def client_error(code: int, reason: str, degas_id: bytes = b"", account_id: bytes = b"") -> bytes:
    return pb.GatewayMessage(error=error(code, reason, degas_id, account_id)).SerializeToString()


def parse_client(frame: bytes) -> pb.ClientMessage:
    """Raises ValueError for anything that is not a ClientMessage with a payload set."""
    message = pb.ClientMessage()
    try:
        message.ParseFromString(frame)
    except ProtobufDecodeError:
        raise ValueError("not a ClientMessage") from None
    if message.WhichOneof("payload") is None:
        raise ValueError("ClientMessage without a payload")
    return message


def parse_degas(frame: bytes) -> pb.DegasMessage:
    """Raises ValueError for anything that is not a DegasMessage with a payload set."""
    message = pb.DegasMessage()
    try:
        message.ParseFromString(frame)
    except ProtobufDecodeError:
        raise ValueError("not a DegasMessage") from None
    if message.WhichOneof("payload") is None:
        raise ValueError("DegasMessage without a payload")
    return message


class ClientSession:
    def __init__(self, gateway: str, recover: Recover, nonces: Callable[[], bytes] = lambda: secrets.token_bytes(32)) -> None:
        """`gateway`: this node's peer ID, named in every challenge; `nonces`: a proof's nonce each."""
        self.state = State.HELLO
        self.account_id = b""
        self._gateway = gateway
        self._address = ""
        self._nonces = nonces
        self._challenge: Proof | None = None  # the challenge waiting for its signature, if any
        self._challenge_expires = 0.0
        self._recover = recover
        self.proof = ("", b"")  # once READY: the signed challenge (proof text) and the signature
        self.proof_expires = 0.0

    def on_text(self) -> list[GatewayAction]:
        return self._close(CLOSE_PROTOCOL_ERROR, "binary frames only", Code.MALFORMED)

    def on_frame(self, frame: bytes, now: float) -> list[GatewayAction]:
        if self.state is State.CLOSED:
            return []
        if len(frame) > MAX_CLIENT_FRAME:
            return self._close(CLOSE_TOO_BIG, f"frame over {MAX_CLIENT_FRAME} bytes", Code.MALFORMED)
        try:
            message = parse_client(frame)
        except ValueError as e:
            if self.state is State.READY:
                return [GatewayReply(client_error(Code.MALFORMED, str(e)))]
            return self._close(CLOSE_POLICY, str(e), Code.MALFORMED)
        kind = message.WhichOneof("payload")
        if self.state is State.HELLO:
            if kind != "hello":
                return self._close(CLOSE_POLICY, "ClientHello must come first", Code.NOT_AUTHENTICATED)
            return self._hello(message.hello, now)
        if self.state is State.AUTH:
            if kind != "eth_auth":
                return self._close(CLOSE_POLICY, "authentication must come next", Code.NOT_AUTHENTICATED)
            return self._auth(message.eth_auth.signature, now)
        if kind == "eth_auth" and self._challenge is not None:  # a renewal
            return self._auth(message.eth_auth.signature, now)
        if kind != "degas":
            return [GatewayReply(client_error(Code.MALFORMED, "already authenticated"))]
        degas = message.degas
        if len(degas.degas_id) != DEGAS_ID_SIZE:
            return [GatewayReply(client_error(Code.MALFORMED, f"degas_id must be {DEGAS_ID_SIZE} bytes"))]
        if len(degas.payload) > MAX_PAYLOAD:
            return [GatewayReply(client_error(Code.PAYLOAD_TOO_LARGE, f"payload over {MAX_PAYLOAD} bytes", degas.degas_id))]
        actions: list[GatewayAction] = []
        if now >= self.proof_expires - RENEW_AHEAD and (not self._challenge or now > self._challenge_expires):
            actions.append(self._auth_request(now))
        if now >= self.proof_expires:
            reason = "authentication expired: sign the new challenge"
            return actions + [GatewayReply(client_error(Code.AUTH_FAIL, reason, degas.degas_id))]
        return actions + [Forward(degas.degas_id, degas.payload)]

    def _hello(self, hello: pb.ClientHelloMessage, now: float) -> list[GatewayAction]:
        if hello.WhichOneof("signer") != "ethereum_signer":
            return self._close(CLOSE_POLICY, "an Ethereum signer is required", Code.MALFORMED)
        address = hello.ethereum_signer.address
        if not ADDRESS.fullmatch(address):
            return self._close(CLOSE_POLICY, "address must be 0x and 40 hex digits", Code.MALFORMED)
        if hello.account_id != bytes.fromhex(address[2:]):
            return self._close(CLOSE_POLICY, "account_id must be the signer's 20-byte address", Code.AUTH_FAIL)
        self.state, self.account_id, self._address = State.AUTH, hello.account_id, address.lower()
        return [self._auth_request(now)]

    def _auth_request(self, now: float) -> GatewayReply:
        """A fresh challenge: the text of the proof that its signature will make."""
        self._challenge = Proof(self._gateway, self.account_id, None, self._nonces(), int(now + PROOF_TTL))
        self._challenge_expires = now + CHALLENGE_TTL
        request = pb.GatewayAuthRequestMessage(ethereum_auth=pb.EthereumAuthMessage(challenge=self._challenge.text()))
        return GatewayReply(pb.GatewayMessage(auth_request=request).SerializeToString())

    def _auth(self, signature: bytes, now: float) -> list[GatewayAction]:
        challenge, self._challenge = self._challenge, None  # single-use, whatever the outcome
        if challenge is None or now > self._challenge_expires:
            return self._close(CLOSE_POLICY, "challenge expired", Code.AUTH_FAIL)
        try:
            recovered = self._recover(challenge.text(), signature).lower()
        except ValueError:
            recovered = ""
        if recovered != self._address:
            return self._close(CLOSE_POLICY, "signature does not match the address", Code.AUTH_FAIL)
        renewal = self.state is State.READY
        self.state, self.proof, self.proof_expires = State.READY, (challenge.text(), signature), float(challenge.expires)
        ok = GatewayReply(pb.GatewayMessage(auth_ok=pb.GatewayAuthOkMessage(account_id=self.account_id)).SerializeToString())
        return [ok] if renewal else [Bound(self.account_id), ok]

    def _close(self, code: int, reason: str, error_code: int) -> list[GatewayAction]:
        self.state = State.CLOSED
        return [GatewayReply(client_error(error_code, reason)), GatewayClose(code, reason)]


def _eth_account() -> tuple[type, Callable[..., object]]:
    """eth-account, imported on first use, with the interpreter's recursion limit put back.

    Importing it imports py_ecc (through eth-keyfile), which raises the limit to 100,000 for its
    own recursive arithmetic. At that limit deep recursion in C (json.loads of a deeply nested
    document) overflows the thread's stack and kills the node with SIGSEGV instead of raising
    RecursionError; jsonwire's depth check is the defence, this keeps a miss survivable. Nothing
    the node calls needs the higher limit: recovery goes through eth-keys' coincurve backend
    (tests/unit/test_gateway_codec.py signs and recovers at the restored limit).

    Not imported at start: it costs 0.7 s and 18 MB that a node without Degas clients need not
    spend. The import runs on the event loop's thread, so no decoder runs while the limit is up.
    """
    limit = sys.getrecursionlimit()
    try:
        from eth_account import Account
        from eth_account.messages import encode_defunct
    finally:
        sys.setrecursionlimit(limit)
    return Account, encode_defunct


def recover_address(challenge: str, signature: bytes) -> str:
    """EIP-191 personal_sign recovery, by eth-account (secp256k1 recovery is not ours to write)."""
    Account, encode_defunct = _eth_account()
    if len(signature) != 65:
        raise ValueError("signature must be 65 bytes")
    try:
        return Account.recover_message(encode_defunct(text=challenge), signature=signature)
    except Exception as e:  # noqa: BLE001 - eth-account raises several types for a bad signature
        raise ValueError(f"bad signature: {e}") from None
