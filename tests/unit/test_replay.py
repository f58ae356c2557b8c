"""The replay window: pairs seen within the window are refused, memory stays within its bounds."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from overlay.core.replay import FULL, FUTURE, REPLAY, SIGNER_FULL, STALE, ReplayWindow


def test_each_refusal_has_its_reason():
    w = ReplayWindow(60, max_entries=3, max_per_signer=2)
    assert w.check(b"a", b"n1", 1000, 1000) is None
    assert w.check(b"a", b"n1", 1000, 1010) == REPLAY
    assert w.check(b"a", b"n2", 1000, 1000) is None
    assert w.check(b"a", b"n3", 1000, 1000) == SIGNER_FULL
    assert w.check(b"b", b"n1", 1000, 1000) is None  # nonces are per signer
    assert w.check(b"c", b"n1", 1000, 1000) == FULL
    assert w.check(b"c", b"n1", 900, 1000) == STALE
    assert w.check(b"c", b"n1", 1100, 1000) == FUTURE


def test_expired_pairs_free_their_room_but_are_then_refused_as_stale():
    w = ReplayWindow(60, max_entries=2, max_per_signer=2)
    assert w.check(b"a", b"n1", 1000, 1000) is None
    assert w.check(b"a", b"n2", 1000, 1000) is None
    assert w.check(b"a", b"n1", 1000, 1200) == STALE
    assert w.check(b"a", b"n3", 1200, 1200) is None and w.entries == 1


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([b"a", b"b", b"c"]), st.binary(min_size=1, max_size=2),
                          st.floats(0, 300), st.floats(0, 5)), max_size=80))
def test_no_pair_is_accepted_twice_while_acceptable_and_the_bounds_hold(events):
    """Against a model that remembers everything: an accepted pair is never accepted again while
    its timestamp is still inside the window, and entries never pass their bounds."""
    w = ReplayWindow(30, max_entries=20, max_per_signer=8)
    accepted: set[tuple[bytes, bytes, float]] = set()
    now = 0.0
    for signer, nonce, offset, step in events:
        now += step
        timestamp = now - 30 + offset * (60 / 300)
        if w.check(signer, nonce, timestamp, now) is None:
            assert (signer, nonce, timestamp) not in accepted
            accepted.add((signer, nonce, timestamp))
        assert w.entries <= 20 and all(count <= 8 for count in w._per_signer.values())
        assert w.entries == sum(w._per_signer.values())
