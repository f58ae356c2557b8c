"""First come, for names a node claims with a record it signs in its own name (channel
reservations, Degas hosts): the rule every DHT store applies and the reader's choice, without I/O
(times are explicit wall-clock milliseconds).

A claim has an owner (whose key signed it), `at` (the owner's clock when it made it) and may be
a *release* (the owner's word that the name is free again). The stores' rule (`replaces`):
- a claim whose `at` is more than SKEW ahead of the store's clock is invalid (`ahead`);
- a store holding nothing for the name takes any valid claim (claims put again are old);
- the owner's own later claim (a release, or a new claim after its release) replaces its earlier;
- another owner's claim replaces a held one only while that one is unsettled (its `at` less than
  SETTLE before the store's clock), and only with an `at` within SKEW of the store's clock and a
  smaller (at, owner): concurrent claims end on the same winner on every store, and nobody
  backdates past a claim that has settled;
- a fresh claim replaces another owner's release.
A reader asks the k closest stores and believes the owner most of them name, and of that owner's
claims the latest (`resolve`): a backdated claim slipped onto a store that held nothing (one that
only just became close to the key) is outvoted by the stores holding the settled one, and a store
that has not yet taken the owner's newest word still votes for the owner.

Limits: a name can be contested in the SETTLE seconds after it is first claimed (that is how
concurrent claims resolve), and whoever holds most of a key's closest stores decides it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Iterable, Sequence
from typing import Protocol, TypeVar

SKEW = 10.0  # seconds a claim's `at` may be from the store's clock when it competes
SETTLE = 15.0  # seconds after its `at` when a claim yields only to its own owner


class Claim(Protocol):
    @property
    def owner(self) -> Hashable: ...

    @property
    def at(self) -> int: ...

    @property
    def released(self) -> bool: ...


C = TypeVar("C", bound=Claim)


def rank(claim: Claim) -> tuple:
    """Of two owners' claims, the smaller rank came first."""
    return claim.at, claim.owner


def ahead(claim: Claim, now_ms: int) -> bool:
    """Made further in the future than clocks differ: invalid."""
    return claim.at > now_ms + SKEW * 1000


def replaces(held: Claim, new: Claim, now_ms: int) -> bool:
    """Whether a store holding `held` takes `new` in its place (the module docstring's rule)."""
    fresh = abs(new.at - now_ms) <= SKEW * 1000
    if new.owner == held.owner:
        return new.at > held.at  # the owner's latest word
    if held.released:
        return fresh and not new.released
    unsettled = now_ms - held.at < SETTLE * 1000
    return fresh and unsettled and not new.released and rank(new) < rank(held)


def choose(claims: Sequence[Claim | None], now_ms: int) -> int:
    """Which of several claims a store keeps, in the order it got them (None: an invalid value):
    each later one replaces the best so far only by `replaces`. -1 when none is valid."""
    best = -1
    for i, claim in enumerate(claims):
        if claim is not None and (best < 0 or replaces(claims[best], claim, now_ms)):  # type: ignore[arg-type]
            best = i
    return best


def resolve(claims: Iterable[C]) -> tuple[C | None, int]:
    """What a reader believes of the valid claims a lookup found: the latest claim of the owner
    most of them name (ties: the owner whose latest claim ranks first), None when there is none;
    and how many named another owner (outvoted). A release is returned as such."""
    votes: Counter[Hashable] = Counter()
    latest: dict[Hashable, C] = {}
    for claim in claims:
        votes[claim.owner] += 1
        if claim.owner not in latest or claim.at > latest[claim.owner].at:
            latest[claim.owner] = claim
    if not votes:
        return None, 0
    top = max(votes.values())
    best = min((latest[owner] for owner, n in votes.items() if n == top), key=rank)
    return best, sum(votes.values()) - votes[best.owner]
