"""The simulated internet under the protocol cores: regions and their round-trip times, links with
loss, bandwidth and partitions, and NAT types that decide which direct connections succeed.

Below the cores, a secured connection (TCP, Noise, Yamux) is a simulated authenticated link:
a message takes half the round trip between the two regions, plus jitter, plus its size over the
sender's uplink; a lost segment costs a retransmission timeout (TCP does not lose messages, it
delays them). WebRTC/ICE is a model whose outcome per NAT pair is the NAT lab's (docs/natlab.md)
and whose timings follow the NAT lab's measurements (docs/benchmarks.md, "Time to first stream
and to the direct path"), with the regions' round trips added.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import Enum


class Nat(str, Enum):
    PUBLIC = "public"
    FULL_CONE = "full-cone"
    PORT_RESTRICTED = "port-restricted"
    SYMMETRIC = "symmetric"


# docs/natlab.md: hole punching fails where one side maps per destination (symmetric) and the other
# filters by source port (port-restricted or symmetric); every other pair gets a direct path.
NO_DIRECT_PATH = {(Nat.PORT_RESTRICTED, Nat.SYMMETRIC), (Nat.SYMMETRIC, Nat.PORT_RESTRICTED), (Nat.SYMMETRIC, Nat.SYMMETRIC)}


def direct_path_possible(a: Nat, b: Nat) -> bool:
    """A direct connection between a and b: TCP when b is public, else a WebRTC hole punch."""
    return b is Nat.PUBLIC or a is Nat.PUBLIC or (a, b) not in NO_DIRECT_PATH


def dialable(b: Nat) -> bool:
    """Whether b accepts inbound TCP (in the lab every NAT drops unsolicited inbound)."""
    return b is Nat.PUBLIC


# Round-trip times in ms between regions: typical figures between well-connected hosts.
REGIONS = ("na-east", "na-west", "sa-east", "eu-west", "eu-central", "asia-east", "asia-south", "oceania")
_RTT_MS = {
    ("na-east", "na-west"): 65, ("na-east", "sa-east"): 120, ("na-east", "eu-west"): 75,
    ("na-east", "eu-central"): 90, ("na-east", "asia-east"): 170, ("na-east", "asia-south"): 200,
    ("na-east", "oceania"): 200, ("na-west", "sa-east"): 175, ("na-west", "eu-west"): 140,
    ("na-west", "eu-central"): 150, ("na-west", "asia-east"): 110, ("na-west", "asia-south"): 220,
    ("na-west", "oceania"): 140, ("sa-east", "eu-west"): 190, ("sa-east", "eu-central"): 200,
    ("sa-east", "asia-east"): 280, ("sa-east", "asia-south"): 300, ("sa-east", "oceania"): 310,
    ("eu-west", "eu-central"): 25, ("eu-west", "asia-east"): 220, ("eu-west", "asia-south"): 120,
    ("eu-west", "oceania"): 260, ("eu-central", "asia-east"): 210, ("eu-central", "asia-south"): 130,
    ("eu-central", "oceania"): 250, ("asia-east", "asia-south"): 90, ("asia-east", "oceania"): 120,
    ("asia-south", "oceania"): 150,
}
INTRA_REGION_MS = 15


def region_rtt_matrix() -> dict[tuple[str, str], float]:
    """Seconds, both directions, every pair of built-in regions."""
    out = {(r, r): INTRA_REGION_MS / 1000 for r in REGIONS}
    for (a, b), ms in _RTT_MS.items():
        out[(a, b)] = out[(b, a)] = ms / 1000
    return out


# WebRTC model (NAT lab, docs/benchmarks.md): ICE on the lab's near-zero-latency links took
# 80-115 ms; when the dialling side is port-restricted and the other side is behind NAT, its first
# checks are filtered until the other side's arrive, which took about 590 ms.
ICE_BASE = 0.09
ICE_FILTERED_EXTRA = 0.5
ICE_ROUND_TRIPS = 3  # STUN checks, DTLS, SCTP and the Noise handshake over the data channel


def upgrade_time(a: Nat, b: Nat, rtt: float) -> float:
    extra = ICE_FILTERED_EXTRA if a is Nat.PORT_RESTRICTED and b is not Nat.PUBLIC else 0.0
    return ICE_BASE + extra + ICE_ROUND_TRIPS * rtt


@dataclass(frozen=True)
class LinkModel:
    rtt: dict[tuple[str, str], float]
    jitter: float = 0.1  # up to this share of the one-way delay, uniformly
    loss: float = 0.0  # per message: each loss costs one retransmission timeout
    uplink_bps: float = 20e6  # every node's upload bandwidth
    rto_min: float = 0.2


class Internet:
    """One-way delays between nodes (by region), and partitions in force."""

    def __init__(self, model: LinkModel, rng: random.Random) -> None:
        self.model = model
        self.rng = rng
        self.partitions: list[tuple[float, float, frozenset[int]]] = []  # (from, until, one side's node indexes)

    def rtt(self, region_a: str, region_b: str) -> float:
        return self.model.rtt[(region_a, region_b)]

    def delay(self, region_a: str, region_b: str, size: int) -> float:
        """How long a message of `size` bytes takes from a to b over an established connection."""
        rtt = self.model.rtt[(region_a, region_b)]
        one_way = rtt / 2 * (1 + self.rng.random() * self.model.jitter)
        delay = one_way + size * 8 / self.model.uplink_bps
        while self.model.loss and self.rng.random() < self.model.loss:
            delay += max(self.model.rto_min, 2 * rtt)
        return delay

    def cut(self, a: int, b: int, now: float) -> bool:
        """Whether a partition separates node a from node b at `now`."""
        for start, end, side in self.partitions:
            if start <= now < end and ((a in side) != (b in side)):
                return True
        return False
