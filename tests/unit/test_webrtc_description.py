"""The WebRTC description exchanged through signalling (nat/webrtc_description.py): the good one
round-trips, each bad field is refused with its reason, and nothing else escapes the parser."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nat.webrtc_description import candidate_fields, check_candidate, parse_description
from overlay.core.errors import DecodeError

# ---- descriptions -------------------------------------------------------------------------------

GOOD = {
    "ufrag": "abcd",
    "pwd": "a" * 22,
    "fingerprints": ["sha-256 " + ":".join(["AB"] * 32)],
    "candidates": ["candidate:1 1 udp 2130706431 198.18.1.2 40000 typ host"],
}


def test_good_description_round_trips():
    d = parse_description(GOOD)
    assert parse_description(d.to_json()) == d


@pytest.mark.parametrize(
    "change, reason",
    [
        ({"ufrag": "ab"}, "ufrag"),
        ({"pwd": "short"}, "pwd"),
        ({"fingerprints": []}, "fingerprints"),
        ({"fingerprints": ["md5 AB:CD"]}, "fingerprint"),
        ({"candidates": ["candidate:1 1 tcp 1 198.18.1.2 1 typ host"]}, "only UDP"),
        ({"candidates": ["candidate:1 1 udp 1 victim.example 1 typ host"]}, "not an IP"),
        ({"candidates": ["candidate:1 1 udp 1 host.local 1 typ host"]}, "not an IP"),
        ({"candidates": ["candidate:1 1 udp 1 0.0.0.0 9 typ host"]}, "unusable"),
        ({"candidates": ["candidate:1 1 udp 1 224.0.0.1 9 typ host"]}, "unusable"),
        ({"candidates": ["candidate:1 1 udp 1 127.0.0.1 9 typ host"]}, "loopback"),
        ({"candidates": ["candidate:1 1 udp 1 198.18.1.2 9 typ weird"]}, "unknown type"),
        ({"candidates": ["garbage"]}, "cannot parse"),
        ({"candidates": GOOD["candidates"] * 17}, "at most 16"),
        ({"ufrag": "x" * 9000}, "larger than"),
    ],
)
def test_bad_descriptions_are_refused_with_the_reason(change, reason):
    with pytest.raises(DecodeError, match=reason):
        parse_description({**GOOD, **change})


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_arbitrary_json_parses_or_raises_decode_error(obj):
    try:
        parse_description(obj)
    except DecodeError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(GOOD)), json_values)
def test_a_good_description_with_one_field_replaced_parses_or_raises_decode_error(key, value):
    try:
        parse_description({**GOOD, key: value})
    except DecodeError:
        pass


@pytest.mark.parametrize(
    "text, reason",
    [
        ("candidate:1 1 udp 1 198.18.1.2 9 typ", "cannot parse"),  # seven fields
        ("candidate:1 x udp 1 198.18.1.2 9 typ host", "cannot parse"),  # component
        ("candidate:1 1 udp p 198.18.1.2 9 typ host", "cannot parse"),  # priority
        ("candidate:1 1 udp 1 198.18.1.2 nine typ host", "cannot parse"),
        ("candidate:1 1 udp 1 198.18.1.2 9 typ srflx raddr 198.18.0.1 rport x", "cannot parse"),
        ("candidate:1 1 udp 1 198.18.1.2 0 typ host", "bad port"),
        ("candidate:1 1 udp 1 255.255.255.255 9 typ host", "unusable"),
        ("candidate:1 1 udp 1 ::1 9 typ host", "loopback"),
        ("x" * 257, "at most 256"),
        (7, "expected a string"),
    ],
)
def test_bad_candidates_are_refused_with_the_reason(text, reason):
    with pytest.raises(DecodeError, match=reason):
        check_candidate(text)


def test_candidate_fields_are_read_by_position_like_aiortc():
    assert candidate_fields("f 1 UDP 7 2001:db8::1 40000 typ srflx raddr 198.18.0.1 rport 9 generation 0") == \
        ("UDP", "2001:db8::1", 40000, "srflx")
    check_candidate("candidate:f 1 UDP 7 2001:db8::1 40000 typ srflx raddr 198.18.0.1 rport 9")
    check_candidate("candidate:1 1 udp 1 127.0.0.1 9 typ host", allow_loopback=True)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_arbitrary_candidate_text_parses_or_raises_decode_error(text):
    try:
        check_candidate(text)
    except DecodeError:
        pass
