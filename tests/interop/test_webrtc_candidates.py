"""Our reading of ICE candidate attributes (nat/webrtc_description.py) against aiortc's, which the
session hands the same text to: the same fields, and a failure exactly where aiortc fails, so the
checks of a remote description apply to what ICE will use."""

from __future__ import annotations

from aiortc.sdp import candidate_from_sdp
from hypothesis import example, given, settings
from hypothesis import strategies as st

from nat.webrtc_description import candidate_fields

NUMBERS = st.one_of(st.integers(-5, 70000).map(str), st.sampled_from(["+1", "1_0", "٣", "0x10", "", "1.5", "x"]))
WORDS = st.one_of(st.sampled_from(["udp", "UDP", "tcp", "host", "srflx", "relay", "typ", "raddr", "rport", "generation",
                                   "198.18.1.2", "::1", "host.local"]), st.text("abc019:.", max_size=6))
FIELDS = st.lists(st.one_of(NUMBERS, WORDS), max_size=14)
SEPARATORS = st.sampled_from([" ", "  ", "\t", " \u00a0 "])


def aiortc_fields(sdp: str) -> tuple[str, str, int, str] | None:
    try:
        candidate = candidate_from_sdp(sdp)
    except (AssertionError, ValueError, IndexError):
        return None
    return candidate.protocol, candidate.ip, candidate.port, candidate.type


def ours(sdp: str) -> tuple[str, str, int, str] | None:
    try:
        return candidate_fields(sdp)
    except ValueError:
        return None


@settings(max_examples=1000, deadline=None)
@given(FIELDS, SEPARATORS)
@example(["1", "1", "udp", "2130706431", "198.18.1.2", "40000", "typ", "host"], " ")
@example(["1", "1", "udp", "1", "198.18.1.2", "9", "typ", "srflx", "raddr", "0.0.0.0", "rport", "x"], " ")
@example(["1", "1", "udp", "1", "198.18.1.2", "9", "typ", "srflx", "rport"], " ")
def test_we_read_candidates_as_aiortc_does(fields, separator):
    sdp = separator.join(fields)
    assert ours(sdp) == aiortc_fields(sdp)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=120))
def test_any_text_is_read_alike(sdp):
    assert ours(sdp) == aiortc_fields(sdp)
