"""STUN wire format, NAT classification core, and the server's decisions, without I/O.

Independent check: the RFC 5769 test vectors. aioice's STUN codec (another implementation of the
same wire format) is checked against ours in tests/interop/test_stun.py; the trio server and
probes run on loopback in tests/loopback/test_stun.py.
"""

from __future__ import annotations

import struct
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nat import stun
from nat.classify import (
    NAT_TYPES,
    FilteringObservation,
    MappingObservation,
    Probe,
    classify,
    plan_probes,
)
from nat.stun import (
    BINDING,
    MAX_MESSAGE_SIZE,
    MessageClass,
    StunMessage,
    decode,
    encode_binding_request,
    encode_binding_success,
    encode_error_response,
    is_stun,
)
from nat.stun_io import answer_request
from overlay.core.errors import DecodeError

TXID = bytes(range(1, 13))


def unhex(text: str) -> bytes:
    return bytes.fromhex("".join(text.split()))


# RFC 5769 section 2: the same transaction id throughout; attribute padding is 0x20, not zero.
RFC5769_TXID = unhex("b7 e7 a7 01 bc 34 d6 86 fa 87 df ae")
RFC5769_REQUEST = unhex("""
    00 01 00 58 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
    80 22 00 10 53 54 55 4e 20 74 65 73 74 20 63 6c 69 65 6e 74
    00 24 00 04 6e 00 01 ff
    80 29 00 08 93 2f f9 b1 51 26 3b 36
    00 06 00 09 65 76 74 6a 3a 68 36 76 59 20 20 20
    00 08 00 14 9a ea a7 0c bf d8 cb 56 78 1e f2 b5 b2 d3 f2 49 c1 b5 71 a2
    80 28 00 04 e5 7a 3b cf""")
RFC5769_IPV4_RESPONSE = unhex("""
    01 01 00 3c 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
    80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20
    00 20 00 08 00 01 a1 47 e1 12 a6 43
    00 08 00 14 2b 91 f5 99 fd 9e 90 c3 8c 74 89 f9 2a f9 ba 53 f0 6b e7 d7
    80 28 00 04 c0 7d 4c 96""")
RFC5769_IPV6_RESPONSE = unhex("""
    01 01 00 48 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
    80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20
    00 20 00 14 00 02 a1 47 01 13 a9 fa a5 d3 f1 79 bc 25 f4 b5 be d2 b9 d9
    00 08 00 14 a3 82 95 4e 4b e6 7b f1 17 84 c9 7c 82 92 c2 75 bf e3 ed 41
    80 28 00 04 c8 fb 0b 4c""")


def attr(attr_type: int, value: bytes, pad: bytes = b"\x00") -> bytes:
    return struct.pack("!HH", attr_type, len(value)) + value + pad * (-len(value) % 4)


def raw(attrs: bytes = b"", *, type_value: int = 0x0001, txid: bytes = TXID, length: int | None = None,
        cookie: int = stun.MAGIC_COOKIE, fingerprint: bool = False) -> bytes:
    """A message built by hand, so that the decoder is tested against bytes it did not write."""
    body_len = len(attrs) + (8 if fingerprint else 0)
    header = struct.pack("!HHI", type_value, body_len if length is None else length, cookie) + txid
    data = header + attrs
    if fingerprint:
        data += attr(stun.FINGERPRINT, struct.pack("!I", (zlib.crc32(data) ^ 0x5354554E) & 0xFFFFFFFF))
    return data


# ---- RFC 5769 vectors -----------------------------------------------------------------------


def test_rfc5769_request():
    m = decode(RFC5769_REQUEST)
    assert (m.message_class, m.method, m.transaction_id) == (MessageClass.REQUEST, BINDING, RFC5769_TXID)
    assert m.software == "STUN test client"
    assert m.fingerprint
    assert m.unknown_attributes == (0x0024,)  # PRIORITY is ICE's, comprehension-required, unknown here


@pytest.mark.parametrize("vector, mapped", [
    (RFC5769_IPV4_RESPONSE, ("192.0.2.1", 32853)),
    (RFC5769_IPV6_RESPONSE, ("2001:db8:1234:5678:11:2233:4455:6677", 32853)),
])
def test_rfc5769_responses(vector, mapped):
    m = decode(vector)
    assert (m.message_class, m.transaction_id, m.mapped_address) == (MessageClass.SUCCESS, RFC5769_TXID, mapped)
    assert m.software == "test vector" and m.fingerprint and m.unknown_attributes == ()


@pytest.mark.parametrize("vector, mapped", [
    (RFC5769_IPV4_RESPONSE, ("192.0.2.1", 32853)),
    (RFC5769_IPV6_RESPONSE, ("2001:db8:1234:5678:11:2233:4455:6677", 32853)),
])
def test_xor_mapped_address_bytes_match_rfc5769(vector, mapped):
    ours = encode_binding_success(RFC5769_TXID, mapped, fingerprint=False)
    value_len = 8 if ":" not in mapped[0] else 20
    expected = vector[vector.index(b"\x00\x20\x00"):][: 4 + value_len]
    assert ours[20:] == expected


@pytest.mark.parametrize("vector", [RFC5769_REQUEST, RFC5769_IPV4_RESPONSE, RFC5769_IPV6_RESPONSE])
def test_rfc5769_corrupted_byte_fails_fingerprint(vector):
    corrupted = bytearray(vector)
    corrupted[30] ^= 0x01
    with pytest.raises(DecodeError, match="FINGERPRINT does not match"):
        decode(bytes(corrupted))


# ---- encoding round trips and interop -------------------------------------------------------

ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(lambda a: str(a.ipv4_mapped) if a.ipv4_mapped else str(a))
addrs = st.tuples(ipv4 | ipv6, st.integers(0, 65535))
txids = st.binary(min_size=12, max_size=12)


@settings(max_examples=200, deadline=None)
@given(txids, st.booleans(), st.booleans(), st.booleans(), st.none() | st.text(max_size=40))
def test_request_round_trip(txid, change_ip, change_port, fingerprint, software):
    data = encode_binding_request(txid, change_ip=change_ip, change_port=change_port, fingerprint=fingerprint,
                                  software=software)
    m = decode(data)
    assert is_stun(data)
    assert m == StunMessage(MessageClass.REQUEST, BINDING, txid, change_ip=change_ip, change_port=change_port,
                            software=software or "", fingerprint=fingerprint)


@settings(max_examples=200, deadline=None)
@given(txids, addrs, st.none() | addrs, st.none() | addrs, st.booleans())
def test_success_round_trip(txid, mapped, origin, other, fingerprint):
    data = encode_binding_success(txid, mapped, response_origin=origin, other_address=other, fingerprint=fingerprint)
    m = decode(data)
    assert (m.message_class, m.transaction_id) == (MessageClass.SUCCESS, txid)
    assert (m.mapped_address, m.response_origin, m.other_address) == (mapped, origin, other)


@settings(max_examples=200, deadline=None)
@given(txids, st.integers(300, 699), st.text(max_size=60), st.lists(st.integers(0, 0xFFFF), max_size=20))
def test_error_round_trip(txid, code, reason, unknown):
    m = decode(encode_error_response(txid, code, reason, unknown_attributes=unknown))
    assert (m.message_class, m.error_code, m.listed_unknown) == (MessageClass.ERROR, code, tuple(unknown))
    assert m.error_reason == (reason or stun._REASONS.get(code, ""))


@pytest.mark.parametrize("cls, method, value", [
    (MessageClass.REQUEST, BINDING, 0x0001),
    (MessageClass.INDICATION, BINDING, 0x0011),
    (MessageClass.SUCCESS, BINDING, 0x0101),
    (MessageClass.ERROR, BINDING, 0x0111),
    (MessageClass.REQUEST, 0x003, 0x0003),  # TURN Allocate
    (MessageClass.ERROR, 0xFFF, 0x3FFF),
])
def test_message_type_bits(cls, method, value):
    assert stun.message_type(cls, method) == value
    assert stun.split_message_type(value) == (cls, method)


# ---- attribute handling ---------------------------------------------------------------------


def test_mapped_address_used_when_no_xor_mapped():
    m = decode(raw(attr(stun.MAPPED_ADDRESS, bytes([0, 1]) + struct.pack("!H", 1234) + bytes([198, 18, 0, 1])),
                   type_value=0x0101))
    assert m.mapped_address == ("198.18.0.1", 1234)


def test_xor_mapped_preferred_and_first_occurrence_wins():
    first = encode_binding_success(TXID, ("198.18.0.1", 1), fingerprint=False)[20:]
    second = encode_binding_success(TXID, ("198.18.0.2", 2), fingerprint=False)[20:]
    plain = attr(stun.MAPPED_ADDRESS, bytes([0, 1]) + struct.pack("!H", 9) + bytes([198, 18, 0, 9]))
    m = decode(raw(plain + first + second, type_value=0x0101))
    assert m.mapped_address == ("198.18.0.1", 1)


def test_unknown_attributes_listed_only_when_comprehension_required():
    m = decode(raw(attr(0x7F01, b"x") + attr(0xC001, b"y") + attr(0x7F01, b"z") + attr(0x0030, b""),
                   fingerprint=True))
    assert m.unknown_attributes == (0x7F01, 0x0030)


def test_attributes_after_message_integrity_are_ignored():
    m = decode(raw(attr(stun.MESSAGE_INTEGRITY, bytes(20)) + attr(0x7F01, b"x")
                   + attr(stun.CHANGE_REQUEST, struct.pack("!I", 6)), fingerprint=True))
    assert m.unknown_attributes == () and not m.change_ip


def test_padding_may_hold_any_value():
    m = decode(raw(attr(stun.SOFTWARE, b"abcde", pad=b"\xff"), type_value=0x0101))
    assert m.software == "abcde"


def test_encoder_refuses_bad_arguments():
    with pytest.raises(ValueError):
        encode_binding_request(b"short")
    with pytest.raises(ValueError):
        encode_error_response(TXID, 200)
    with pytest.raises(ValueError):
        encode_binding_success(TXID, ("198.18.0.1", 70000))
    with pytest.raises(ValueError, match="exceeds the limit"):
        encode_error_response(TXID, 420, unknown_attributes=range(800))


# ---- refusals -------------------------------------------------------------------------------

GOOD = encode_binding_request(TXID)
V4 = bytes([0, 1]) + struct.pack("!H", 1) + bytes(4)


@pytest.mark.parametrize("data, reason", [
    (b"", "shorter than the 20-byte header"),
    (GOOD[:19], "shorter than the 20-byte header"),
    (b"\x40" + GOOD[1:], "first two bits are not zero"),
    (raw(cookie=0x2112A443), "wrong magic cookie 0x2112a443"),
    (raw(b"\x00" * 2, length=2), "not a multiple of 4"),
    (raw(attr(stun.SOFTWARE, b"abcd"), length=4), "header declares 4 bytes"),
    (raw(b"\x80\x22\x00"), "not a multiple of 4"),
    (raw(b"\x80\x22\x00\x08abcd"), "SOFTWARE: length 8 runs past the end"),
    (raw(b"\x80\x22\x00\x05abcd"), "SOFTWARE: length 5 runs past the end"),
    (raw(b"\x80\x22\x00\x05abcde"), "not a multiple of 4 \\(attributes are padded"),
    (raw(attr(0x8028, b"\x00\x00\x00\x00")), "FINGERPRINT does not match"),
    (raw(attr(0x8028, b"\x00\x00")), "FINGERPRINT: length 2"),
    (raw(fingerprint=True) + attr(stun.SOFTWARE, b"late"), "header declares"),
    (raw(attr(stun.XOR_MAPPED_ADDRESS, bytes([0, 3, 0, 1, 1, 2, 3, 4])), type_value=0x0101), "unknown address family 3"),
    (raw(attr(stun.XOR_MAPPED_ADDRESS, bytes([0, 2, 0, 1, 1, 2, 3, 4])), type_value=0x0101), "length 8 does not match family IPv6"),
    (raw(attr(stun.OTHER_ADDRESS, V4 + b"\x00\x00"), type_value=0x0101), "OTHER-ADDRESS: length 10"),
    (raw(attr(stun.RESPONSE_ORIGIN, b"\x00\x01"), type_value=0x0101), "too short for an address"),
    (raw(attr(stun.CHANGE_REQUEST, b"\x00\x00\x06")), "CHANGE-REQUEST: length 3"),
    (raw(attr(stun.ERROR_CODE, b"\x00\x00\x02\x00"), type_value=0x0111), "class 2 out of range"),
    (raw(attr(stun.ERROR_CODE, b"\x00\x00\x04\x64"), type_value=0x0111), "number 100 out of range"),
    (raw(attr(stun.ERROR_CODE, b"\x00\x04"), type_value=0x0111), "ERROR-CODE: length 2"),
    (raw(type_value=0x0111), "error response without ERROR-CODE"),
    (raw(attr(stun.UNKNOWN_ATTRIBUTES, b"\x00\x24\x00"), type_value=0x0101), "odd length 3"),
    (raw(attr(stun.MESSAGE_INTEGRITY, bytes(16))), "MESSAGE-INTEGRITY: length 16"),
    ("not bytes", "expected bytes"),
])
def test_refusals_say_why(data, reason):
    with pytest.raises(DecodeError, match=reason):
        decode(data)


def test_fingerprint_must_be_last():
    data = raw(fingerprint=True)
    fp = data[20:]
    moved = raw(fp + attr(stun.SOFTWARE, b"late"))
    with pytest.raises(DecodeError, match="not the last attribute"):
        decode(moved)


def _filler(total: int) -> bytes:
    """A request of exactly `total` bytes, filled with an optional attribute."""
    return raw(attr(0x8FFF, bytes(total - 24)))


def test_size_limit_is_exact():
    assert decode(_filler(MAX_MESSAGE_SIZE)).method == BINDING
    assert is_stun(_filler(MAX_MESSAGE_SIZE))
    with pytest.raises(DecodeError, match="1504 bytes exceeds the limit of 1500"):
        decode(_filler(MAX_MESSAGE_SIZE + 4))
    with pytest.raises(DecodeError, match="1501 bytes exceeds"):
        decode(_filler(MAX_MESSAGE_SIZE) + b"\x00")
    assert not is_stun(_filler(MAX_MESSAGE_SIZE + 4))


@pytest.mark.parametrize("data", [
    b"", b"\x16\xfe\xfd" + bytes(30),  # DTLS
    b"\x80\x60" + bytes(30),  # RTP
    GOOD[:-1], GOOD + b"\x00\x00\x00\x00", raw(cookie=0),
])
def test_is_stun_rejects_other_traffic(data):
    assert not is_stun(data)


# ---- arbitrary and mutated input ------------------------------------------------------------


def decodes_or_refuses(data: bytes) -> None:
    try:
        m = decode(data)
    except DecodeError as exc:
        assert str(exc)
        return
    assert isinstance(m, StunMessage) and len(data) <= MAX_MESSAGE_SIZE and is_stun(data)


def answers_or_refuses(data: bytes) -> None:
    endpoints = [("127.0.0.1", 3478), ("127.0.0.2", 3479)]
    try:
        reply = answer_request(data, ("198.18.0.1", 5000), 0, endpoints)
    except DecodeError:
        return
    if reply is not None:
        assert decode(reply.data).message_class in (MessageClass.SUCCESS, MessageClass.ERROR)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=1600))
def test_arbitrary_bytes(data):
    decodes_or_refuses(data)
    answers_or_refuses(data)


@st.composite
def plausible(draw):
    """Bytes with a well-formed header and random attributes, so the attribute reader is reached."""
    body = draw(st.lists(st.tuples(st.sampled_from(sorted(stun._NAMES) + [0x0024, 0x7F00, 0xC000]),
                                   st.binary(max_size=24)), max_size=8))
    attrs = b"".join(attr(t, v) for t, v in body)
    if draw(st.booleans()):
        attrs = draw(st.binary(max_size=64))
    type_value = draw(st.sampled_from([0x0001, 0x0101, 0x0111, 0x0011, 0x0003]) | st.integers(0, 0x3FFF))
    data = raw(attrs, type_value=type_value, length=len(attrs) + (-len(attrs) % 4))
    return data + bytes(-len(attrs) % 4)


@settings(max_examples=500, deadline=None)
@given(plausible(), st.booleans())
def test_plausible_messages(data, with_fingerprint):
    if with_fingerprint:
        data = raw(data[20:], type_value=struct.unpack("!H", data[:2])[0], fingerprint=True)
    decodes_or_refuses(data)
    answers_or_refuses(data)


VALID = [
    GOOD,
    encode_binding_request(TXID, change_ip=True, change_port=True, software="probe"),
    encode_binding_success(TXID, ("198.18.0.1", 1), response_origin=("198.18.1.2", 3478),
                           other_address=("2001:db8::1", 3479)),
    encode_error_response(TXID, 420, unknown_attributes=[1, 2, 3]),
    RFC5769_REQUEST, RFC5769_IPV4_RESPONSE, RFC5769_IPV6_RESPONSE,
]


@settings(max_examples=600, deadline=None)
@given(st.sampled_from(VALID),
       st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)), min_size=1, max_size=4),
       st.integers(0, 200), st.booleans())
def test_mutated_valid_messages(data, flips, cut, fix_fingerprint):
    mutated = bytearray(data)
    for pos, value in flips:
        mutated[pos % len(mutated)] = value
    mutated = bytes(mutated[: max(0, len(mutated) - cut)]) if cut % 3 == 0 else bytes(mutated)
    decodes_or_refuses(mutated)
    answers_or_refuses(mutated)
    if fix_fingerprint and len(mutated) >= 28:
        # Recompute the FINGERPRINT so mutations reach the attribute parser.
        body = mutated[20:-8]
        type_value = struct.unpack("!H", mutated[:2])[0] & 0x3FFF
        decodes_or_refuses(raw(body, type_value=type_value, txid=mutated[8:20], fingerprint=True))


# ---- classification -------------------------------------------------------------------------

S1, S1_ALT, S2 = ("198.18.1.2", 3478), ("198.18.1.3", 3479), ("198.18.5.2", 3478)
S1_PORT2 = ("198.18.1.2", 3479)
LOCAL = [("100.64.1.2", 50000)]
PUB = ("198.18.2.2", 50000)
PUB2 = ("198.18.2.2", 50001)


def obs(*pairs):
    return [MappingObservation(server, mapped) for server, mapped in pairs]


EIF = [FilteringObservation(True, True, True)]
ADF = [FilteringObservation(True, True, False), FilteringObservation(False, True, True)]
APDF = [FilteringObservation(True, True, False), FilteringObservation(False, True, False)]


CLASSIFY_TABLE = [
    ([("198.18.4.2", 4000)], obs((S1, ("198.18.4.2", 4000))), [], "public", "none", "unknown"),
    ([("198.18.4.2", 4000)], obs((S1, ("198.18.4.2", 4000)), (S2, ("198.18.4.2", 4000))), EIF, "public", "none",
     "endpoint-independent"),
    (LOCAL, obs((S1, PUB), (S2, PUB)), EIF, "full-cone", "endpoint-independent", "endpoint-independent"),
    (LOCAL, obs((S1, PUB), (S1_ALT, PUB)), ADF, "restricted-cone", "endpoint-independent", "address-dependent"),
    (LOCAL, obs((S1, PUB), (S2, PUB)), APDF, "port-restricted-cone", "endpoint-independent",
     "address-and-port-dependent"),
    (LOCAL, obs((S1, PUB), (S2, PUB2)), APDF, "symmetric", "address-and-port-dependent", "address-and-port-dependent"),
    (LOCAL, obs((S1, PUB), (S1_PORT2, PUB2)), [], "symmetric", "address-and-port-dependent", "unknown"),
    (LOCAL, obs((S1, PUB), (S1_PORT2, PUB), (S2, PUB2)), EIF, "symmetric", "address-dependent",
     "endpoint-independent"),
    (LOCAL, obs((S1, None), (S2, None)), [], "udp-blocked", "unknown", "unknown"),
    (LOCAL, obs((S1, PUB), (S2, None)), EIF, "unknown", "unknown", "endpoint-independent"),
    (LOCAL, obs((S1, PUB), (S2, PUB)), [], "unknown", "endpoint-independent", "unknown"),
    (LOCAL, obs((S1, PUB), (S1_PORT2, PUB)), APDF, "unknown", "unknown", "address-and-port-dependent"),
    (LOCAL, [], [], "unknown", "unknown", "unknown"),
]


@pytest.mark.parametrize("local, mappings, filtering, nat_type, mapping, filtering_kind", CLASSIFY_TABLE)
def test_classify_table(local, mappings, filtering, nat_type, mapping, filtering_kind):
    result = classify(local, mappings, filtering)
    assert (result.nat_type, result.mapping, result.filtering) == (nat_type, mapping, filtering_kind)
    assert result.nat_type in NAT_TYPES
    if "unknown" in (result.nat_type, result.mapping, result.filtering):
        assert result.notes


def test_classify_covers_every_type():
    assert {row[3] for row in CLASSIFY_TABLE} == set(NAT_TYPES)


def test_one_server_is_unknown_and_says_so():
    result = classify(LOCAL, obs((S1, PUB)))
    assert result.mapping == "unknown" and result.udp and result.public_addrs == (PUB,)
    assert any("only one server answered" in n for n in result.notes)


@pytest.mark.parametrize("tests, kind, noted", [
    ([FilteringObservation(True, True, False)], "address-and-port-dependent", True),
    ([FilteringObservation(False, True, True)], "address-dependent", True),
    ([FilteringObservation(False, True, False)], "address-and-port-dependent", False),
    ([FilteringObservation(True, False, True)], "endpoint-independent", False),
    # A lost packet never outweighs one that arrived.
    ([FilteringObservation(True, True, False), FilteringObservation(True, True, True)], "endpoint-independent", False),
    ([FilteringObservation(False, False, True)], "unknown", True),
])
def test_filtering_rules(tests, kind, noted):
    result = classify(LOCAL, obs((S1, PUB), (S2, PUB)), tests)
    assert result.filtering == kind
    assert any(n.startswith("filtering") for n in result.notes) == noted


def test_ipv4_mapped_and_public_addrs_order():
    result = classify([("::ffff:100.64.1.2", 50000)], obs((S1, PUB2), (S2, PUB), (S2, PUB2)))
    assert result.public_addrs == (PUB2, PUB)
    assert classify([("::ffff:198.18.4.2", 1)], obs((S1, ("198.18.4.2", 1)))).mapping == "none"


def test_plan_stage0_only_without_other_addresses():
    assert plan_probes([(S1, None), (S2, None), (S1, None)]) == [Probe(0, S1), Probe(0, S2)]


def test_plan_single_server_with_other_address():
    assert plan_probes([(S1, S1_ALT)]) == [
        Probe(0, S1),
        Probe(1, S1, True, True, S1_ALT),
        Probe(1, S1, False, True, S1_PORT2),
        Probe(2, S1_ALT),
    ]


def test_plan_two_ips_need_no_alternate_binding_and_skip_contacted_sources():
    probes = plan_probes([(S1, S1_ALT), (S1_ALT, S1)])
    assert Probe(2, S1_ALT) not in probes
    # Answers from S1_ALT (or S1) would prove nothing: we already sent there in stage 0.
    assert all(p.expect_from not in (S1, S1_ALT) for p in probes if p.stage == 1)
    assert plan_probes([(S1, S1_PORT2)]) == [Probe(0, S1), Probe(1, S1, False, True, S1_PORT2)]


# ---- server decisions (pure) ----------------------------------------------------------------

P, A = ("127.0.0.1", 3478), ("127.0.0.2", 3479)
P_PORT2, A_PORT1 = ("127.0.0.1", 3479), ("127.0.0.2", 3478)
FOUR = [P, A, P_PORT2, A_PORT1]
CLIENT = ("198.18.0.1", 5000)


@pytest.mark.parametrize("change_ip, change_port, arrived_on, sent_from", [
    (False, False, 0, P), (True, True, 0, A), (False, True, 0, P_PORT2), (True, False, 0, A_PORT1),
    (False, False, 1, A), (True, True, 1, P), (False, True, 1, A_PORT1), (True, False, 1, P_PORT2),
])
def test_change_request_answered_from_the_right_endpoint(change_ip, change_port, arrived_on, sent_from):
    reply = answer_request(encode_binding_request(TXID, change_ip=change_ip, change_port=change_port), CLIENT,
                           arrived_on, FOUR)
    m = decode(reply.data)
    assert FOUR[reply.endpoint] == sent_from and not reply.error
    assert (m.mapped_address, m.response_origin) == (CLIENT, sent_from)
    assert m.other_address == FOUR[1 - arrived_on]


def test_change_request_without_alternate_is_420():
    for endpoints in ([P], [P, A]):
        reply = answer_request(encode_binding_request(TXID, change_port=True), CLIENT, 0, endpoints)
        m = decode(reply.data)
        assert reply.error and (m.error_code, m.listed_unknown) == (420, (stun.CHANGE_REQUEST,))
    plain = decode(answer_request(encode_binding_request(TXID), CLIENT, 0, [P]).data)
    assert plain.other_address is None and plain.response_origin == P


def test_other_requests():
    unknown = answer_request(RFC5769_REQUEST, CLIENT, 0, [P])
    assert unknown.error and decode(unknown.data).listed_unknown == (0x0024,)
    allocate = decode(answer_request(raw(type_value=0x0003), CLIENT, 0, [P]).data)
    assert (allocate.error_code, allocate.method, allocate.transaction_id) == (400, 0x003, TXID)
    assert answer_request(RFC5769_IPV4_RESPONSE, CLIENT, 0, [P]) is None
    assert answer_request(raw(type_value=0x0011), CLIENT, 0, [P]) is None
    wildcard = decode(answer_request(GOOD, ("::ffff:198.18.0.1", 5000, 0, 0), 0, [("0.0.0.0", 3478)]).data)
    assert (wildcard.mapped_address, wildcard.response_origin) == (CLIENT, None)
