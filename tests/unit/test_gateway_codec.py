"""The Degas gateway's frames and client session without I/O: the generated code is current, the
authentication rules (EIP-191 signatures through eth-account), size limits, and any bytes at all
in every state (hypothesis)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from eth_account import Account
from eth_account.messages import encode_defunct
from hypothesis import given, settings
from hypothesis import strategies as st

from overlay.gateway import degas_pb2 as pb
from overlay.gateway.proofs import PROOF_TTL, parse_proof
from overlay.gateway.session import (
    CHALLENGE_TTL,
    MAX_CLIENT_FRAME,
    MAX_PAYLOAD,
    RENEW_AHEAD,
    Bound,
    ClientSession,
    Code,
    Forward,
    GatewayClose,
    GatewayReply,
    State,
    parse_degas,
    recover_address,
)

GATEWAY = Path(__file__).resolve().parents[2] / "overlay" / "gateway"
ACCOUNT = Account.from_key(b"\x11" * 32)
OTHER = Account.from_key(b"\x22" * 32)
DEGAS = b"D" * 16


def hello(account=ACCOUNT, account_id: bytes | None = None) -> bytes:
    account_id = bytes.fromhex(account.address[2:]) if account_id is None else account_id
    signer = pb.EthereumSingerMessage(address=account.address)
    return pb.ClientMessage(hello=pb.ClientHelloMessage(account_id=account_id, ethereum_signer=signer)).SerializeToString()


def sign(challenge: str, account=ACCOUNT) -> bytes:
    signature = account.sign_message(encode_defunct(text=challenge)).signature
    return pb.ClientMessage(eth_auth=pb.ClientEthAuthMessage(signature=bytes(signature))).SerializeToString()


def degas(payload: bytes, degas_id: bytes = DEGAS) -> bytes:
    return pb.ClientMessage(degas=pb.ClientDegasMessage(degas_id=degas_id, payload=payload)).SerializeToString()


def gateway_message(action: GatewayReply) -> pb.GatewayMessage:
    message = pb.GatewayMessage()
    message.ParseFromString(action.frame)
    return message


def challenged(session: ClientSession, now: float = 0.0) -> str:
    (reply,) = session.on_frame(hello(), now)
    return gateway_message(reply).auth_request.ethereum_auth.challenge


def ready() -> ClientSession:
    session = ClientSession("gw", recover_address, lambda: b"\x01" * 32)
    session.on_frame(sign(challenged(session)), 1.0)
    assert session.state is State.READY
    return session


def error_of(actions: list) -> tuple[int, GatewayClose | None]:
    reply = gateway_message(actions[0])
    close = actions[1] if len(actions) > 1 and isinstance(actions[1], GatewayClose) else None
    return reply.error.code, close


def test_generated_code_is_current(tmp_path):
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{GATEWAY}", f"--python_out={tmp_path}",
                    str(GATEWAY / "degas.proto")], check=True)
    assert (tmp_path / "degas_pb2.py").read_text() == (GATEWAY / "degas_pb2.py").read_text()


def test_hello_challenge_signature_binds_the_account():
    session = ClientSession("gw", recover_address, lambda: b"\x01" * 32)
    challenge = challenged(session)
    assert challenge.startswith("overlay-node gateway gw\n") and session.state is State.AUTH
    bound, ok = session.on_frame(sign(challenge), 1.0)
    assert bound == Bound(bytes.fromhex(ACCOUNT.address[2:]))
    assert gateway_message(ok).auth_ok.account_id == bound.account_id
    assert session.on_frame(degas(b"x" * MAX_PAYLOAD), 2.0) == [Forward(DEGAS, b"x" * MAX_PAYLOAD)]


def test_the_challenge_is_a_proof_naming_this_gateway_the_account_and_an_expiry():
    session = ClientSession("gw", recover_address, lambda: b"\x01" * 32)
    proof = parse_proof(challenged(session, now=1000.0))
    assert (proof.gateway, proof.account, proof.degas_ids, proof.nonce) == ("gw", bytes.fromhex(ACCOUNT.address[2:]), None, b"\x01" * 32)
    assert proof.expires == 1000 + PROOF_TTL
    session.on_frame(sign(proof.text()), 1001.0)
    assert session.proof[0] == proof.text() and session.proof_expires == proof.expires


def test_the_gateway_asks_for_a_new_proof_before_the_old_one_expires():
    session = ClientSession("gw", recover_address, iter(bytes([i]) * 32 for i in range(1, 9)).__next__)
    session.on_frame(sign(challenged(session, now=0.0)), 1.0)
    expires = session.proof_expires
    assert session.on_frame(degas(b"early"), expires - RENEW_AHEAD - 1) == [Forward(DEGAS, b"early")]
    request, forward = session.on_frame(degas(b"soon"), expires - RENEW_AHEAD)
    renewal = gateway_message(request).auth_request.ethereum_auth.challenge
    assert forward == Forward(DEGAS, b"soon") and parse_proof(renewal).nonce == b"\x02" * 32
    assert session.on_frame(degas(b"again"), expires - RENEW_AHEAD + 1) == [Forward(DEGAS, b"again")], "asked once"
    (ok,) = session.on_frame(sign(renewal), expires - RENEW_AHEAD + 2)
    assert gateway_message(ok).WhichOneof("payload") == "auth_ok"
    assert session.proof[0] == renewal and session.proof_expires == parse_proof(renewal).expires
    assert session.on_frame(degas(b"later"), expires + 1) == [Forward(DEGAS, b"later")]


def test_an_expired_proof_forwards_nothing_until_renewed_and_a_wrong_renewal_closes():
    session = ready()
    expires = session.proof_expires
    request, refused = session.on_frame(degas(b"late"), expires)
    assert error_of([refused]) == (Code.AUTH_FAIL, None) and session.state is State.READY
    renewal = gateway_message(request).auth_request.ethereum_auth.challenge
    assert session.on_frame(sign(renewal), expires + 1)[0].frame  # auth_ok
    assert session.on_frame(degas(b"now"), expires + 2) == [Forward(DEGAS, b"now")]
    other = ready()
    request, _ = other.on_frame(degas(b"late"), other.proof_expires)
    renewal = gateway_message(request).auth_request.ethereum_auth.challenge
    code, close = error_of(other.on_frame(sign(renewal, OTHER), other.proof_expires + 1))
    assert code == Code.AUTH_FAIL and close.code == 1008 and other.state is State.CLOSED


def test_eth_account_leaves_the_recursion_limit_as_it_was_and_still_signs_and_recovers():
    """In a fresh interpreter: the node's first recovery imports eth-account (and py_ecc), puts the
    limit back, and eth-account still signs and recovers at that limit."""
    program = """
import sys
from overlay.gateway.session import recover_address
limit = sys.getrecursionlimit()
try:
    recover_address("challenge", bytes(65))
except ValueError:
    pass
assert "py_ecc" in sys.modules and sys.getrecursionlimit() == limit, sys.getrecursionlimit()
from eth_account import Account
from eth_account.messages import encode_defunct
account = Account.from_key(b"\\x11" * 32)
signature = bytes(account.sign_message(encode_defunct(text="a challenge")).signature)
assert recover_address("a challenge", signature) == account.address
assert sys.getrecursionlimit() == limit
print("ok", limit)
"""
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0 and done.stdout.startswith("ok "), done.stderr


@pytest.mark.parametrize("case", ["wrong key", "garbage", "expired", "not the address"])
def test_failed_authentication_answers_auth_fail_and_closes(case):
    session = ClientSession("gw", recover_address, lambda: b"\x01" * 32)
    if case == "not the address":  # claims someone else's account_id
        actions = session.on_frame(hello(account_id=bytes.fromhex(OTHER.address[2:])), 0.0)
    else:
        challenge = challenged(session)
        frame = {"wrong key": sign(challenge, OTHER), "garbage": pb.ClientMessage(
            eth_auth=pb.ClientEthAuthMessage(signature=b"\x00" * 65)).SerializeToString(), "expired": sign(challenge)}[case]
        actions = session.on_frame(frame, CHALLENGE_TTL + 1.0 if case == "expired" else 1.0)
    code, close = error_of(actions)
    assert code == Code.AUTH_FAIL and close is not None and close.code == 1008
    assert session.state is State.CLOSED and session.on_frame(degas(b"x"), 2.0) == []


def test_a_challenge_is_used_once_and_names_its_gateway():
    first = ClientSession("gw", recover_address, lambda: b"\x01" * 32)
    old = sign(challenged(first))
    again = ClientSession("gw", recover_address, lambda: b"\x02" * 32)  # a new connection, a new challenge
    challenged(again)
    assert error_of(again.on_frame(old, 1.0))[0] == Code.AUTH_FAIL
    elsewhere = ClientSession("otherGw", recover_address, lambda: b"\x01" * 32)  # same nonce, other gateway
    challenged(elsewhere)
    assert error_of(elsewhere.on_frame(old, 1.0))[0] == Code.AUTH_FAIL


def test_messages_before_authentication_close_the_connection():
    session = ClientSession("gw", recover_address, lambda: b"\x01" * 32)
    code, close = error_of(session.on_frame(degas(b"early"), 0.0))
    assert code == Code.NOT_AUTHENTICATED and close.code == 1008
    session = ClientSession("gw", recover_address, lambda: b"\x01" * 32)
    challenged(session)
    code, close = error_of(session.on_frame(degas(b"early"), 0.0))
    assert code == Code.NOT_AUTHENTICATED and close.code == 1008


def test_limits_and_bad_frames_once_authenticated_keep_the_connection():
    session = ready()
    assert error_of(session.on_frame(degas(b"x" * (MAX_PAYLOAD + 1)), 2.0)) == (Code.PAYLOAD_TOO_LARGE, None)
    assert error_of(session.on_frame(degas(b"x", degas_id=b"short"), 2.0)) == (Code.MALFORMED, None)
    assert error_of(session.on_frame(b"\xff\xff\xff", 2.0)) == (Code.MALFORMED, None)
    assert error_of(session.on_frame(hello(), 2.0)) == (Code.MALFORMED, None)
    assert session.state is State.READY
    code, close = error_of(session.on_frame(b"\x00" * (MAX_CLIENT_FRAME + 1), 2.0))
    assert close.code == 1009
    assert ready().on_text()[1].code == 1002


@settings(max_examples=400, deadline=None)
@given(st.integers(0, 2), st.binary(max_size=300))
def test_any_bytes_in_any_state_give_actions_not_exceptions(state, frame):
    session = ClientSession("gw", recover_address, lambda: b"\x01" * 32)
    if state >= 1:
        challenged(session)
    if state == 2:
        session.on_frame(sign(session._challenge.text()), 1.0)
    for action in session.on_frame(frame, 2.0):
        assert isinstance(action, (GatewayReply, GatewayClose, Forward, Bound))
        if isinstance(action, Forward):
            assert len(action.degas_id) == 16 and len(action.payload) <= MAX_PAYLOAD


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_parse_as_a_degas_message_or_raise_value_error(frame):
    try:
        message = parse_degas(frame)
    except ValueError:
        return
    assert message.WhichOneof("payload") in ("degas_to_client", "register")
