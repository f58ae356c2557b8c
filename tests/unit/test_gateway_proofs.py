"""Degas proofs without I/O (overlay/gateway/proofs.py): the one text form, what an instance's node
refuses and why, the sequence window, and the bounded memory that refuses rather than evicts."""

from __future__ import annotations

import pytest
from eth_account import Account
from eth_account.messages import encode_defunct
from hypothesis import given, settings
from hypothesis import strategies as st

from overlay.gateway.proofs import (
    BAD_SIGNATURE, EXPIRED, FULL, MALFORMED, MAX_TTL, OTHER_ACCOUNT, OTHER_NODE, OUTSIDE, OVER_QUOTA, REPLAYED, REUSED,
    SKEW, TOO_LONG, WINDOW, Proof, ProofBook, SeqWindow, parse_proof,
)
from overlay.gateway.session import recover_address

ACCOUNT = bytes.fromhex("11" * 20)
DEGAS = b"D" * 16
NOW = 1_000_000.0


def proof(gateway: str = "gwA", account: bytes = ACCOUNT, degas_ids=None, nonce: bytes = b"\x01" * 32,
          expires: int = int(NOW + 600)) -> str:
    return Proof(gateway, account, degas_ids, nonce, expires).text()


def signed_by(account: bytes = ACCOUNT) -> bytes:
    """For the stand-in recovery below: the signature is the signer's address."""
    return ("0x" + account.hex()).encode()


class Recover:
    """Recovery that reads the signer from the signature, counting its calls (the real one is
    eth-account's, tested below)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, text: str, signature: bytes) -> str:
        self.calls += 1
        try:
            return signature.decode()
        except UnicodeDecodeError:
            raise ValueError("bad signature") from None


def book(**kwargs) -> tuple[ProofBook, Recover]:
    recover = Recover()
    return ProofBook(recover, **kwargs), recover


def test_a_proof_has_one_text_and_names_gateway_account_instances_nonce_and_expiry():
    p = Proof("12D3KooWgw", ACCOUNT, frozenset({b"\x02" * 16, b"\x01" * 16}), b"\xab" * 32, 1234)
    text = p.text()
    assert text == ("overlay-node gateway 12D3KooWgw\naccount 0x" + "11" * 20 + "\ndegas " + "01" * 16 + "," + "02" * 16
                    + "\nchallenge " + "ab" * 32 + "\nexpires 1234")
    assert parse_proof(text) == p
    assert parse_proof(proof()).degas_ids is None
    for bad in (text + "\n", text.replace("01" * 16 + "," + "02" * 16, "02" * 16 + "," + "01" * 16),
                text.replace("02" * 16, "01" * 16), text.replace("ab" * 32, "AB" * 32), text.replace("expires 1234", "expires 01234"),
                "overlay-node gateway gwA\nchallenge " + "01" * 32,  # the old two-line challenge proves nothing now
                text.replace("0x" + "11" * 20, "0x" + "11" * 19), "x" * 2000):
        with pytest.raises(ValueError):
            parse_proof(bad)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400))
def test_any_text_is_a_canonical_proof_or_a_value_error(text):
    try:
        p = parse_proof(text)
    except ValueError:
        return
    assert p.text() == text


@settings(max_examples=200, deadline=None)
@given(st.text("123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz", min_size=1, max_size=60),
       st.binary(min_size=20, max_size=20), st.none() | st.frozensets(st.binary(min_size=16, max_size=16), min_size=1, max_size=8),
       st.binary(min_size=32, max_size=32), st.integers(0, 10**12 - 1))
def test_every_proof_round_trips(gateway, account, degas_ids, nonce, expires):
    p = Proof(gateway, account, degas_ids, nonce, expires)
    assert parse_proof(p.text()) == p


def test_a_proof_is_taken_from_the_node_it_names_for_its_account_and_instances_while_it_lives():
    proofs, _ = book()
    assert proofs.check("gwA", ACCOUNT, DEGAS, proof(), signed_by(), NOW, seq=1) is None
    assert proofs.check("gwB", ACCOUNT, DEGAS, proof(), signed_by(), NOW, seq=2) == OTHER_NODE
    assert proofs.check("gwA", b"\x22" * 20, DEGAS, proof(), signed_by(), NOW, seq=2) == OTHER_ACCOUNT
    assert proofs.check("gwA", ACCOUNT, DEGAS, "a signed text", signed_by(), NOW, seq=2) == MALFORMED
    assert proofs.check("gwA", ACCOUNT, DEGAS, proof(), signed_by(), NOW, seq=0) == MALFORMED
    only = proof(degas_ids=frozenset({b"E" * 16}), nonce=b"\x02" * 32)
    assert proofs.check("gwA", ACCOUNT, DEGAS, only, signed_by(), NOW, seq=1) == OUTSIDE
    assert proofs.check("gwA", ACCOUNT, b"E" * 16, only, signed_by(), NOW, seq=1) is None
    assert proofs.check("gwA", ACCOUNT, DEGAS, proof(nonce=b"\x03" * 32), signed_by(b"\x22" * 20), NOW, seq=1) == BAD_SIGNATURE
    assert proofs.check("gwA", ACCOUNT, DEGAS, proof(nonce=b"\x03" * 32), b"\xff", NOW, seq=1) == BAD_SIGNATURE
    expires = int(NOW + 600)
    assert proofs.check("gwA", ACCOUNT, DEGAS, proof(), signed_by(), expires + SKEW, seq=3) is None  # the skew allowed
    assert proofs.check("gwA", ACCOUNT, DEGAS, proof(), signed_by(), expires + SKEW + 1, seq=4) == EXPIRED
    lasting = proof(nonce=b"\x04" * 32, expires=int(NOW + MAX_TTL + SKEW + 1))
    assert proofs.check("gwA", ACCOUNT, DEGAS, lasting, signed_by(), NOW, seq=1) == TOO_LONG


def test_each_message_number_is_taken_once_and_a_nonce_belongs_to_one_proof():
    proofs, recover = book()
    for seq in (1, 2, 5, 3):
        assert proofs.check("gwA", ACCOUNT, DEGAS, proof(), signed_by(), NOW, seq=seq) is None
    for seq in (1, 2, 5, 3):
        assert proofs.check("gwA", ACCOUNT, DEGAS, proof(), signed_by(), NOW, seq=seq) == REPLAYED
    assert recover.calls == 1, "a proof is verified once"
    # the same nonce under another text (a later expiry): refused before any verification
    assert proofs.check("gwA", ACCOUNT, DEGAS, proof(expires=int(NOW + 500)), signed_by(), NOW, seq=9) == REUSED
    assert proofs.check("gwA", ACCOUNT, DEGAS, proof(), signed_by(), NOW) is None  # vouching only: no number taken
    assert recover.calls == 1


def test_the_window_takes_late_numbers_within_it_once_and_nothing_below_it():
    window = SeqWindow()
    assert [window.take(s) for s in (3, 1, 2, 3, 1)] == [True, True, True, False, False]
    assert window.take(WINDOW + 3) and window.take(4) and not window.take(3)  # 3 fell below the window
    assert window.take(2**52) and not window.take(WINDOW + 3) and window.take(2**52 - 1) and not window.take(2**52)


def test_memory_is_bounded_and_refuses_rather_than_evicts_until_proofs_expire():
    proofs, recover = book(max_proofs=3, max_per_gateway=2)
    nonce = lambda i: bytes([i]) * 32
    assert proofs.check("gwA", ACCOUNT, DEGAS, proof(nonce=nonce(1)), signed_by(), NOW, seq=1) is None
    assert proofs.check("gwA", ACCOUNT, DEGAS, proof(nonce=nonce(2)), signed_by(), NOW, seq=1) is None
    calls = recover.calls
    assert proofs.check("gwA", ACCOUNT, DEGAS, proof(nonce=nonce(3)), signed_by(), NOW, seq=1) == OVER_QUOTA
    assert recover.calls == calls, "refused before verifying"
    assert proofs.check("gwB", ACCOUNT, DEGAS, proof("gwB", nonce=nonce(3), expires=int(NOW + 60)), signed_by(), NOW, seq=1) is None
    assert proofs.check("gwC", ACCOUNT, DEGAS, proof("gwC", nonce=nonce(4)), signed_by(), NOW, seq=1) == FULL
    # the first proofs are still held: their numbers stay taken
    assert proofs.check("gwA", ACCOUNT, DEGAS, proof(nonce=nonce(1)), signed_by(), NOW, seq=1) == REPLAYED
    later = NOW + 60 + SKEW + 1  # gwB's proof has expired: it is forgotten, and refused by its time
    assert proofs.check("gwC", ACCOUNT, DEGAS, proof("gwC", nonce=nonce(4)), signed_by(), later, seq=1) is None
    assert len(proofs) == 3
    assert proofs.check("gwB", ACCOUNT, DEGAS, proof("gwB", nonce=nonce(3), expires=int(NOW + 60)), signed_by(), later, seq=2) == EXPIRED


def test_with_real_eip191_signatures():
    account = Account.from_key(b"\x11" * 32)
    account_id = bytes.fromhex(account.address[2:])
    text = proof(account=account_id)
    signature = bytes(account.sign_message(encode_defunct(text=text)).signature)
    proofs = ProofBook(recover_address)
    assert proofs.check("gwA", account_id, DEGAS, text, signature, NOW, seq=1) is None
    other = proof(account=account_id, nonce=b"\x09" * 32)  # a text the account did not sign
    assert proofs.check("gwA", account_id, DEGAS, other, signature, NOW, seq=1) == BAD_SIGNATURE
