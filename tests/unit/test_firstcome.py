"""The first-come rule of signed claims (overlay/core/firstcome.py), which channel reservations
and Degas host records share: what a store keeps and what a reader believes."""

from __future__ import annotations

from typing import NamedTuple

from overlay.core.firstcome import SETTLE, SKEW, ahead, choose, replaces, resolve

T = 1_700_000_000_000  # ms


class Claim(NamedTuple):
    owner: str
    at: int
    released: bool = False


def test_a_settled_claim_yields_only_to_its_owner_and_a_release_to_a_fresh_claim():
    now = T + 3600_000  # an hour after d claimed
    settled = Claim("d", T)
    assert not replaces(settled, Claim("b", now), now), "a later claim"
    assert not replaces(settled, Claim("b", T - 1000), now), "backdated past a settled claim"
    assert not replaces(settled, Claim("b", now, released=True), now), "another owner's release"
    assert replaces(settled, Claim("d", now, released=True), now), "the owner's release"
    assert not replaces(Claim("d", now, released=True), settled, now), "the owner's older word"
    assert replaces(Claim("d", now, released=True), Claim("b", now), now), "a fresh claim after a release"
    assert not replaces(Claim("d", now, released=True), Claim("b", now - int(SKEW * 1000) - 1), now), "a stale one"
    assert not replaces(Claim("d", now, released=True), Claim("b", 0), now), "a backdated one"


def test_concurrent_claims_end_on_the_earlier_whatever_the_order():
    now = T
    young, earlier, tie = Claim("d", now - 2000), Claim("b", now - 3000), Claim("a", now - 3000)
    assert replaces(young, earlier, now) and not replaces(earlier, young, now)
    assert replaces(earlier, tie, now), "same time: the smaller owner"
    for order in ([young, earlier, tie], [tie, young, earlier], [earlier, tie, young]):
        assert order[choose(order, now)] == tie
    assert not replaces(Claim("d", now - int(SETTLE * 1000)), Claim("b", now - int(SETTLE * 1000) - 1), now), "settled"
    assert not replaces(young, Claim("b", now - int(SKEW * 1000) - 1), now), "outside the skew: no backdating"
    assert choose([None, young, None], now) == 1 and choose([None], now) == -1
    assert ahead(Claim("x", now + int(SKEW * 1000) + 1), now) and not ahead(Claim("x", now + int(SKEW * 1000)), now)


def test_a_reader_believes_the_owner_most_stores_name_and_its_latest_word():
    d, backdated = Claim("d", T), Claim("b", T - 60_000)
    assert resolve([d, backdated, d]) == (d, 1)
    assert resolve([backdated, d]) == (backdated, 1), "a tie goes to the earlier claim"
    release, again = Claim("d", T + 5, released=True), Claim("d", T + 6)
    assert resolve([d, release]) == (release, 0), "one owner: its latest word"
    assert resolve([release, release, again, backdated]) == (again, 1), \
        "stores that have not yet taken the owner's newest word still vote for the owner"
    assert resolve([]) == (None, 0)
