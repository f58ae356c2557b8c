"""NAT behaviour classification from STUN observations, and the probes to make them. No I/O.

Terms are RFC 4787's, tests RFC 5780's. A NAT's *mapping* is how it picks the public address of
outgoing packets; its *filtering* is which inbound packets it lets through to that address.

- Mapping, from binding answers on ONE local socket:
  every mapped address is one of our local addresses -> "none" (no NAT; one answer suffices);
  two destinations with the same IP and different ports saw different mapped addresses ->
  "address-and-port-dependent"; destinations with different IPs saw different mapped addresses ->
  "address-dependent" if some same-IP pair saw the same one, else "address-and-port-dependent"
  (the stricter of the two the observations allow, with a note); all equal and some pair differs
  in IP -> "endpoint-independent"; fewer than two answers, or no pair differing in IP -> "unknown".
- Filtering, from answers the server sends from an address we never sent to (CHANGE-REQUEST):
  one from another IP got through -> "endpoint-independent"; only one from the same IP but another
  port got through -> "address-dependent"; none from another port got through ->
  "address-and-port-dependent". When only one of the two tests ran and proved nothing, the
  stricter possibility is reported, with a note. No test -> "unknown".
- Type (the RFC 3489 names people use): no answer at all -> "udp-blocked"; mapping "none" ->
  "public"; address(-and-port)-dependent mapping -> "symmetric"; endpoint-independent mapping
  with endpoint-independent / address-dependent / address-and-port-dependent filtering ->
  "full-cone" / "restricted-cone" / "port-restricted-cone"; anything else -> "unknown".

A lost packet can only make a test look stricter, never looser, so an answer that got through
is always believed over one that did not.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from nat.stun import Addr, normalize_addr

MAPPINGS = ("none", "endpoint-independent", "address-dependent", "address-and-port-dependent", "unknown")
FILTERINGS = ("endpoint-independent", "address-dependent", "address-and-port-dependent", "unknown")
NAT_TYPES = ("public", "full-cone", "restricted-cone", "port-restricted-cone", "symmetric", "udp-blocked",
             "unknown")


@dataclass(frozen=True)
class MappingObservation:
    """A Binding request sent to `server` from our one probe socket; `mapped` None = no answer."""

    server: Addr
    mapped: Addr | None


@dataclass(frozen=True)
class FilteringObservation:
    """A CHANGE-REQUEST test: the answer was to come from another IP and/or another port than the
    address we sent to (and had never sent to); `reached` says whether it arrived."""

    other_ip: bool
    other_port: bool
    reached: bool


@dataclass(frozen=True)
class NatClassification:
    nat_type: str
    mapping: str
    filtering: str
    udp: bool
    """True when any STUN answer reached us."""
    public_addrs: tuple[Addr, ...]
    """Distinct mapped addresses seen, in order of first sight."""
    notes: tuple[str, ...] = ()
    """Why a field is 'unknown' or a guess; for logs and humans."""


def _classify_mapping(local: set[Addr], answered: list[tuple[Addr, Addr]], notes: list[str]) -> str:
    if not answered:
        notes.append("mapping: no server answered")
        return "unknown"
    if all(mapped in local for _, mapped in answered):
        return "none"
    if len({server for server, _ in answered}) < 2:
        notes.append("mapping: only one server answered; need two to compare")
        return "unknown"
    same_ip_differs = same_ip_equal = other_ip_differs = other_ip_equal = False
    for (s1, m1), (s2, m2) in itertools.combinations(answered, 2):
        if s1 == s2:
            continue
        if s1[0] == s2[0]:
            same_ip_differs |= m1 != m2
            same_ip_equal |= m1 == m2
        else:
            other_ip_differs |= m1 != m2
            other_ip_equal |= m1 == m2
    if same_ip_differs:
        return "address-and-port-dependent"
    if other_ip_differs:
        if same_ip_equal:
            return "address-dependent"
        notes.append("mapping: depends on the destination; no two servers shared an IP to tell address-"
                     "from address-and-port-dependent, reporting the stricter")
        return "address-and-port-dependent"
    if other_ip_equal:
        return "endpoint-independent"
    notes.append("mapping: all servers answering share one IP; cannot tell endpoint-independent from "
                 "address-dependent")
    return "unknown"


def _classify_filtering(tests: Sequence[FilteringObservation], notes: list[str]) -> str:
    tests = [t for t in tests if t.other_ip or t.other_port]
    if not tests:
        notes.append("filtering: not tested (no server offered OTHER-ADDRESS)")
        return "unknown"
    if any(t.reached and t.other_ip for t in tests):
        return "endpoint-independent"
    port_only_reached = any(t.reached for t in tests if not t.other_ip)
    ip_tested = any(t.other_ip for t in tests)
    port_only_tested = any(not t.other_ip for t in tests)
    if port_only_reached:
        if not ip_tested:
            notes.append("filtering: the other-IP test did not run, reporting the stricter")
        return "address-dependent"
    if not port_only_tested:
        notes.append("filtering: the same-IP-other-port test did not run, reporting the stricter")
    return "address-and-port-dependent"


_CONES = {
    "endpoint-independent": "full-cone",
    "address-dependent": "restricted-cone",
    "address-and-port-dependent": "port-restricted-cone",
}


def classify(
    local: Sequence[Addr],
    mappings: Sequence[MappingObservation],
    filtering: Sequence[FilteringObservation] = (),
) -> NatClassification:
    """Name the NAT behaviour the observations show (rules in the module docstring).

    `local` is the probe socket's own address(es): when the server sees one of them, there is no
    NAT on the path.
    """
    notes: list[str] = []
    local_set = {normalize_addr(a) for a in local}
    answered = [(normalize_addr(o.server), normalize_addr(o.mapped)) for o in mappings if o.mapped is not None]
    public: list[Addr] = []
    for _, mapped in answered:
        if mapped not in public:
            public.append(mapped)
    udp = bool(answered) or any(t.reached for t in filtering)
    mapping = _classify_mapping(local_set, answered, notes)
    filter_kind = _classify_filtering(filtering, notes)
    if not mappings:
        nat_type = "unknown"
        notes.append("no server was asked")
    elif not udp:
        nat_type = "udp-blocked"
    elif mapping == "none":
        nat_type = "public"
    elif mapping in ("address-dependent", "address-and-port-dependent"):
        nat_type = "symmetric"
    elif mapping == "endpoint-independent" and filter_kind in _CONES:
        nat_type = _CONES[filter_kind]
    else:
        nat_type = "unknown"
    return NatClassification(nat_type, mapping, filter_kind, udp, tuple(public), tuple(notes))


# ---- planning -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    """One Binding request to send from the probe socket.

    `stage` orders them: 0 plain bindings to the given servers, 1 CHANGE-REQUEST filtering tests,
    2 bindings to alternate addresses for the mapping test. Filtering runs before stage 2 because
    once we have sent to an address, a NAT lets its answers in whatever its filtering is.
    `expect_from` is where a strict RFC 5780 server answers from.
    """

    stage: int
    server: Addr
    change_ip: bool = False
    change_port: bool = False
    expect_from: Addr | None = None


def plan_probes(servers: Sequence[tuple[Addr, Addr | None]]) -> list[Probe]:
    """Probes for these servers, given their OTHER-ADDRESS where known (stage 0 never needs it).

    Call once with no other addresses to get stage 0, again with what stage 0 learnt for the rest.
    A filtering test whose answer would come from an address stage 0 already contacted is left
    out (it would prove nothing); a mapping binding to an alternate address is planned only when
    the given servers do not already span two IPs. Caveat: a router that keeps conntrack state
    for a filtered inbound answer may give the later stage-2 binding a new port, which reads as
    destination-dependent mapping (docs/natlab.md: Linux does, without the INPUT drop rule).
    """
    primaries = list(dict.fromkeys(normalize_addr(s) for s, _ in servers))
    probes = [Probe(0, s) for s in primaries]
    contacted = set(primaries)
    spans_two_ips = len({ip for ip, _ in primaries}) >= 2
    alternates: list[Addr] = []
    for server, other in servers:
        if other is None:
            continue
        server, other = normalize_addr(server), normalize_addr(other)
        ip_differs, port_differs = other[0] != server[0], other[1] != server[1]
        tests = []
        if ip_differs:
            tests.append((True, port_differs, (other[0], other[1] if port_differs else server[1])))
        if port_differs:
            tests.append((False, True, (server[0], other[1])))
        for change_ip, change_port, source in tests:
            if source not in contacted:
                probes.append(Probe(1, server, change_ip, change_port, source))
        if ip_differs and not spans_two_ips and other not in contacted and other not in alternates:
            alternates.append(other)
    probes += [Probe(2, a) for a in alternates]
    return probes
