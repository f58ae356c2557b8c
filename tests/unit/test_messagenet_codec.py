"""MessageNet relayer frames and SignedMessage: dispatch bytes, MessageNet's JSON, bad
input with its reason, signatures over a domain-separated structure bound to sender, recipient,
relayer, time and nonce, replays refused (hypothesis on the decoders)."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from overlay.core.errors import DecodeError
from overlay.messagenet import relayer
from overlay.core.records import peer_id_from_public_key, peer_id_to_str
from overlay.core.replay import ReplayWindow

KEY = Ed25519PrivateKey.generate()
ME = peer_id_from_public_key(KEY.public_key())
OTHER = peer_id_from_public_key(Ed25519PrivateKey.generate().public_key())
B64 = lambda data: base64.b64encode(data).decode()


def frame(action: int, **body) -> bytes:
    return bytes([action]) + json.dumps(body).encode()


def test_each_action_decodes_with_the_seeds_field_names():
    node = peer_id_to_str(OTHER)
    assert relayer.decode_request(frame(relayer.REGISTER, relayer_id=7)) == relayer.RelayerRequest(relayer.REGISTER, 7)
    assert relayer.decode_request(frame(relayer.SEND_TO_VALIDATOR, relayer_id=7, node_id=node, raw_data=B64(b"hi"), id=3)) == \
        relayer.RelayerRequest(relayer.SEND_TO_VALIDATOR, 7, OTHER, b"hi", 3)
    assert relayer.decode_request(frame(relayer.SEND_TO_PEERS, relayer_id=7, raw_data=B64(b"all"))) == relayer.RelayerRequest(relayer.SEND_TO_PEERS, 7, None, b"all")
    signed = relayer.decode_request(frame(relayer.SIGN_AND_SEND_TO_VALIDATOR, relayer_id=1, node_id=node, identification_byte=9, msg_bytes=B64(b"m")))
    assert signed.data == b"\x09m" and signed.signed and signed.unicast
    broadcast = relayer.decode_request(frame(relayer.SIGN_AND_SEND_TO_PEERS, relayer_id=1, identification_byte=255, msg_bytes=B64(b"")))
    assert broadcast.data == b"\xff" and broadcast.signed and not broadcast.unicast


@pytest.mark.parametrize(
    "raw, reason",
    [
        (b"", "dispatch byte"),
        (b"\x99{}", "unknown dispatch byte 0x99"),
        (b"\x01not json", "not JSON"),
        (b"\x01[1]", "JSON object"),
        (frame(relayer.REGISTER, relayer_id="7"), "relayer_id must be an integer"),
        (frame(relayer.REGISTER, relayer_id=1.5), "relayer_id must be an integer"),
        (frame(relayer.REGISTER, relayer_id=True), "relayer_id must be an integer"),
        (frame(relayer.REGISTER, relayer_id=-1), "relayer_id must be an integer"),
        (frame(relayer.SEND_TO_VALIDATOR, relayer_id=1, node_id="nope", raw_data="aGk="), "invalid peer ID"),
        (frame(relayer.SEND_TO_PEERS, relayer_id=1, raw_data="!!"), "raw_data is not valid base64"),
        (frame(relayer.SIGN_AND_SEND_TO_PEERS, relayer_id=1, identification_byte=256, msg_bytes=""), "identification_byte"),
        (b"\x01" + b" " * relayer.MAX_RELAYER_FRAME, "larger than"),
    ],
)
def test_bad_frames_say_why(raw, reason):
    with pytest.raises(DecodeError, match=reason):
        relayer.decode_request(raw)


def test_node_frames_are_dispatch_byte_and_json():
    sent = relayer.to_client(7, "12D3KooWsender", b"\x00\xff")
    assert sent[0] == relayer.SEND_TO_CLIENT and json.loads(sent[1:]) == {"relayer_id": 7, "node_id": "12D3KooWsender", "data": "AP8="}
    assert json.loads(relayer.delivery(3, None)[1:]) == {"id": 3, "ok": True}
    assert json.loads(relayer.delivery(3, "no such relayer")[1:]) == {"id": 3, "ok": False, "error": "no such relayer"}
    assert relayer.error("x")[0] == relayer.ERROR


NOW = 1_800_000_000.0


def signed_by(key, unsigned: bytes = b"\x07payload", recipient: bytes | None = OTHER, relayer_id: int = 3,
              now: float = NOW) -> bytes:
    sender = peer_id_from_public_key(key.public_key())
    return relayer.sign(key, relayer.new_message(unsigned, sender, recipient, relayer_id, now))


def window() -> ReplayWindow:
    return ReplayWindow(relayer.REPLAY_WINDOW, relayer.MAX_REPLAY_ENTRIES, relayer.MAX_REPLAY_PER_SIGNER)


def test_a_signed_message_binds_its_sender_recipient_relayer_time_and_nonce():
    signed = signed_by(KEY)
    message = relayer.verify(signed)
    assert (message.unsigned, message.sender, message.recipient, message.relayer_id) == (b"\x07payload", ME, OTHER, 3)
    assert relayer.accept(message, ME, OTHER, False, 3, window(), NOW) is None
    assert relayer.accept(message, OTHER, OTHER, False, 3, window(), NOW) == "not from its signer"
    assert relayer.accept(message, ME, ME, False, 3, window(), NOW) == "for another recipient"
    assert relayer.accept(message, ME, OTHER, True, 3, window(), NOW) == "for another recipient"  # a unicast is no broadcast
    assert relayer.accept(message, ME, OTHER, False, 4, window(), NOW) == "for another relayer"
    assert relayer.accept(message, ME, OTHER, False, 3, window(), NOW + relayer.REPLAY_WINDOW + 1) == "stale"
    assert relayer.accept(message, ME, OTHER, False, 3, window(), NOW - relayer.REPLAY_WINDOW - 1) == "from the future"
    broadcast = relayer.verify(signed_by(KEY, recipient=None))
    assert broadcast.recipient is None and relayer.accept(broadcast, ME, OTHER, True, 3, window(), NOW) is None
    assert json.loads(signed_by(KEY, recipient=None))["recipient"] == "*"


@pytest.mark.parametrize("field, value", [
    ("unsignedMessage", B64(b"\x07tampered")), ("recipient", peer_id_to_str(ME)), ("relayer_id", 4),
    ("timestamp", int(NOW * 1000) + 1), ("nonce", B64(bytes(16))), ("sender", peer_id_to_str(OTHER)),
])
def test_changing_any_signed_field_breaks_the_signature(field, value):
    body = json.loads(signed_by(KEY))
    body[field] = value
    with pytest.raises(DecodeError, match="bad signature|not the sender's"):
        relayer.verify(json.dumps(body).encode())


def test_a_replay_within_the_window_is_refused_and_one_after_it_is_stale():
    replays = window()
    message = relayer.verify(signed_by(KEY))
    assert relayer.accept(message, ME, OTHER, False, 3, replays, NOW) is None
    assert relayer.accept(message, ME, OTHER, False, 3, replays, NOW + 30) == "replay"
    assert relayer.accept(message, ME, OTHER, False, 3, replays, NOW + relayer.REPLAY_WINDOW + 1) == "stale"
    assert relayer.accept(relayer.verify(signed_by(KEY)), ME, OTHER, False, 3, replays, NOW) is None  # a fresh nonce passes


def test_the_signature_covers_a_domain_so_no_relayer_bytes_are_signed_bare():
    """Whatever a relayer asks to be signed, the signed bytes start with the MessageNet domain:
    the signature never verifies over the bare bytes (a peer record's, a Noise payload's)."""
    from overlay.core.records import PAYLOAD_TYPE, DOMAIN, _signed_bytes as record_signed_bytes

    chosen = record_signed_bytes(b"anything")
    body = json.loads(signed_by(KEY, unsigned=chosen))
    signature = base64.b64decode(body["signature"])
    with pytest.raises(InvalidSignature):
        KEY.public_key().verify(signature, chosen)
    assert relayer._signed_bytes(relayer.verify(json.dumps(body).encode())).startswith(relayer.SIGNED_DOMAIN)
    assert not relayer.SIGNED_DOMAIN.startswith((DOMAIN, PAYLOAD_TYPE, b"noise-libp2p-static-key:"))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_decode_or_raise_decode_error(raw):
    for decoder in (relayer.decode_request, relayer.verify):
        try:
            decoder(raw)
        except DecodeError:
            pass


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(relayer.ACTIONS)), st.dictionaries(st.sampled_from(
    ["relayer_id", "node_id", "raw_data", "identification_byte", "msg_bytes", "id"]), json_values))
def test_any_json_under_a_known_dispatch_byte_decodes_or_raises_decode_error(action, body):
    try:
        request = relayer.decode_request(bytes([action]) + json.dumps(body).encode())
    except DecodeError:
        return
    assert request.action == action and isinstance(request.relayer_id, int)
