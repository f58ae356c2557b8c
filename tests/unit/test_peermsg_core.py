"""The seven message types of Convex peer messaging as a core: beliefs once, missing data asked for and timed
out, signed transactions with fresh sequence numbers, STATUS from the cache, load shedding with
trusted peers last, and arbitrary payloads (hypothesis)."""

from __future__ import annotations

import struct

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given, settings
from hypothesis import strategies as st

from overlay.peermsg.core import (
    SUSPEND_FOR, Code, DeliverPeerMessage, PeerMessages, SendPeerMessage, digest, message, signed_part, transaction, with_refs,
)
from overlay.peermsg.frames import PeerMessageType

KEY = Ed25519PrivateKey.generate()
RAW = KEY.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def tx(seq: int, body: bytes = b"pay 5", key=KEY) -> bytes:
    return with_refs([], transaction(RAW, seq, body, key.sign(signed_part(seq, body))))


def result_code(action: SendPeerMessage) -> Code:
    assert action.tag is PeerMessageType.RESULT
    return Code(struct.unpack_from(">QQB", action.payload)[2])


def test_a_belief_reaches_the_application_once():
    core = PeerMessages()
    first = core.on_message("p", *message(PeerMessageType.BELIEF, 1, with_refs([], b"belief")), now=0)
    assert first == [DeliverPeerMessage("p", PeerMessageType.BELIEF, 1, b"belief")]
    assert core.on_message("q", *message(PeerMessageType.BELIEF, 2, with_refs([], b"belief")), now=0) == []
    assert core.counters.duplicate_beliefs == 1


def test_missing_data_is_asked_for_and_the_message_resumes_or_times_out():
    core = PeerMessages()
    value = b"a cell"
    actions = core.on_message("p", *message(PeerMessageType.QUERY, 7, with_refs([digest(value)], b"q?")), now=0)
    assert actions == [SendPeerMessage("p", *message(PeerMessageType.MISSING_DATA, 7, digest(value)))]
    assert core.on_message("p", *message(PeerMessageType.DATA, 8, value), now=1) == [DeliverPeerMessage("p", PeerMessageType.QUERY, 7, b"q?")]
    # the same again, but the data comes too late
    other = b"another cell"
    core.on_message("p", *message(PeerMessageType.BELIEF, 9, with_refs([digest(other)], b"b")), now=10)
    core.tick(now=10 + SUSPEND_FOR + 1)
    assert core.counters.discarded_missing_data == 1
    assert core.on_message("p", *message(PeerMessageType.DATA, 10, other), now=20) == []


def test_missing_data_is_answered_from_the_store():
    core = PeerMessages()
    key = core.put(b"value")
    assert core.on_message("p", *message(PeerMessageType.MISSING_DATA, 3, key), now=0) == [SendPeerMessage("p", *message(PeerMessageType.DATA, 3, b"value"))]
    assert core.on_message("p", *message(PeerMessageType.MISSING_DATA, 4, b"\0" * 32), now=0) == []


def test_transactions_need_a_good_signature_and_a_fresh_sequence_number():
    core = PeerMessages()
    assert core.on_message("p", *message(PeerMessageType.TRANSACT, 1, tx(5)), now=0)[0].tag is PeerMessageType.TRANSACT
    assert result_code(core.on_message("p", *message(PeerMessageType.TRANSACT, 2, tx(5)), now=0)[0]) is Code.SEQUENCE_USED
    assert result_code(core.on_message("p", *message(PeerMessageType.TRANSACT, 3, tx(4)), now=0)[0]) is Code.SEQUENCE_USED
    forged = tx(6, key=Ed25519PrivateKey.generate())
    assert result_code(core.on_message("p", *message(PeerMessageType.TRANSACT, 4, forged), now=0)[0]) is Code.BAD_SIGNATURE
    assert core.on_message("p", *message(PeerMessageType.TRANSACT, 5, tx(6)), now=0)[0].tag is PeerMessageType.TRANSACT
    assert core.counters.refused_transactions == 3


def test_status_is_answered_at_once_from_the_cache():
    core = PeerMessages()
    core.set_status(b"height 42")
    (answer,) = core.on_message("p", *message(PeerMessageType.STATUS, 11, b""), now=0)
    assert answer.peer == "p" and result_code(answer) is Code.OK and answer.payload.endswith(b"height 42")


def test_under_load_queries_get_a_temporary_failure_and_trusted_peers_are_shed_last():
    core = PeerMessages(trusted=frozenset({"friend"}), max_pending=2, trusted_reserve=1)
    for i in range(2):
        assert isinstance(core.on_message("p", *message(PeerMessageType.QUERY, i, with_refs([], b"q")), now=0)[0], DeliverPeerMessage)
    (refused,) = core.on_message("p", *message(PeerMessageType.QUERY, 5, with_refs([], b"q")), now=0)
    assert result_code(refused) is Code.TEMPORARY_FAILURE
    assert core.on_message("p", *message(PeerMessageType.BELIEF, 6, with_refs([], b"b1")), now=0) == []
    assert isinstance(core.on_message("friend", *message(PeerMessageType.QUERY, 7, with_refs([], b"q")), now=0)[0], DeliverPeerMessage)
    assert core.counters.shed == 2
    reply = core.result("p", 0, Code.OK, b"42", id=100)
    assert result_code(reply) is Code.OK and core.pending == 2


@settings(max_examples=500, deadline=None)
@given(st.integers(0, 255), st.binary(max_size=400))
def test_any_payload_under_any_tag_is_handled_or_counted(tag, payload):
    core = PeerMessages()
    before = core.counters.malformed
    actions = core.on_message("p", tag, payload, now=0)
    assert all(isinstance(a, (SendPeerMessage, DeliverPeerMessage)) for a in actions)
    # nothing to do is right only for stored data and for data nobody holds; else it was counted
    assert actions or tag in (PeerMessageType.DATA, PeerMessageType.MISSING_DATA) or core.counters.malformed == before + 1
