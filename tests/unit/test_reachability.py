"""Dial-back reachability without I/O (nat/reachability.py): the verdict from peers' answers, the
node's reachability as a state machine (its table, and the events it refuses), and the codec."""

from __future__ import annotations

import json
from itertools import product

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nat.reachability import (
    MAX_PORTS, TRANSITIONS, Reachability, ReachabilityMachine, decode_request, decode_response, encode_request,
    encode_response, verdict,
)
from overlay.core.errors import DecodeError, ProtocolError

UNKNOWN, PUBLIC, PRIVATE = Reachability.UNKNOWN, Reachability.PUBLIC, Reachability.PRIVATE


def test_the_states_show_as_the_strings_the_api_always_showed():
    assert json.dumps({"reachability": PUBLIC}) == '{"reachability": "public"}'
    assert f"{PRIVATE}" == str(PRIVATE) == "private" and UNKNOWN == "unknown"


def test_the_table_covers_every_state_and_verdict():
    assert set(TRANSITIONS) == set(product(Reachability, Reachability))


@pytest.mark.parametrize("state, seen, after", [
    (UNKNOWN, UNKNOWN, None), (UNKNOWN, PUBLIC, PUBLIC), (UNKNOWN, PRIVATE, PRIVATE),
    (PUBLIC, UNKNOWN, None), (PUBLIC, PUBLIC, None), (PUBLIC, PRIVATE, PRIVATE),
    (PRIVATE, UNKNOWN, None), (PRIVATE, PRIVATE, None), (PRIVATE, PUBLIC, PUBLIC),
])
def test_a_verdict_changes_the_role_only_when_the_state_changes(state, seen, after):
    machine = ReachabilityMachine()
    assert machine.start() is UNKNOWN
    if state is not UNKNOWN:
        machine.on_verdict(state)
    assert machine.on_verdict(seen) is after
    assert machine.state is (after or state)


def test_a_forced_reachability_is_never_measured():
    machine = ReachabilityMachine(PRIVATE)
    assert machine.start() is PRIVATE
    with pytest.raises(ProtocolError, match="forces private"):
        machine.on_verdict(PUBLIC)
    assert machine.state is PRIVATE


def test_events_out_of_order_raise():
    machine = ReachabilityMachine()
    with pytest.raises(ProtocolError, match="before start"):
        machine.on_verdict(PUBLIC)
    machine.start()
    with pytest.raises(ProtocolError, match="started twice"):
        machine.start()


def test_the_verdict_is_decided_by_tcp():
    assert verdict([]).reachability is UNKNOWN
    assert verdict([("198.18.0.1", [("ws", 4002, True)])]).reachability is UNKNOWN
    answers = [("198.18.0.1", [("tcp", 4001, False)]), ("198.18.0.2", [("tcp", 4001, True), ("ws", 4002, False)])]
    seen = verdict(answers)
    assert seen.reachability is PUBLIC and seen.transports == {"tcp": True, "ws": False}
    assert seen.observed == ("198.18.0.1", "198.18.0.2")
    assert verdict(answers[:1]).reachability is PRIVATE


PORTS = st.lists(st.tuples(st.sampled_from(["tcp", "ws"]), st.integers(1, 65535)), min_size=1, max_size=MAX_PORTS)


@settings(max_examples=100, deadline=None)
@given(PORTS, st.lists(st.booleans(), max_size=MAX_PORTS))
def test_the_codec_round_trips(ports, oks):
    assert decode_request(encode_request(ports)) == ports
    results = [(t, p, ok) for (t, p), ok in zip(ports, oks)]
    assert decode_response(encode_response("2001:db8::1", results)) == ("2001:db8::1", results)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_arbitrary_bytes_decode_or_raise_decode_error(data):
    for decode in (decode_request, decode_response):
        try:
            decode(data)
        except DecodeError:
            pass
