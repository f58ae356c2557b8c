"""STUN messages (RFC 5389, with the RFC 5780 NAT-discovery attributes): encoding and decoding.

Pure functions, no I/O: `nat/stun_io.py` puts them on sockets, tests and the simulator call them
directly. Only what NAT discovery needs is built: Binding requests, success and error responses.
Authentication (MESSAGE-INTEGRITY) is recognised but neither produced nor checked, since a
discovery server has no credentials to check it against.

Wire format (all integers big-endian)::

    header, 20 bytes:
      0                   1                   2                   3
      0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
     +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
     |0 0|     message type (14 bits) |   message length (bytes)      |
     +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
     |                  magic cookie 0x2112A442                        |
     +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
     |                  transaction id (96 bits)                       |
     +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+

    message type bits: M11..M7 C1 M6..M4 C0 M3..M0 (method M, class C: 0 request,
      1 indication, 2 success response, 3 error response); Binding is method 1, so
      0x0001 request, 0x0101 success, 0x0111 error.
    message length: bytes after the header, a multiple of 4.

    then attributes, each: type u16, length u16 (value only), value, zero padding to 4 bytes.
    Types 0x0000-0x7FFF are comprehension-required, 0x8000-0xFFFF optional.

      0x0001 MAPPED-ADDRESS       0, family u8 (1 IPv4, 2 IPv6), port u16, address (4 or 16)
      0x0020 XOR-MAPPED-ADDRESS   as MAPPED-ADDRESS, port xor cookie>>16, address xor
                                  cookie (IPv4) or cookie||transaction id (IPv6)
      0x802B RESPONSE-ORIGIN      as MAPPED-ADDRESS: where the response was sent from
      0x802C OTHER-ADDRESS        as MAPPED-ADDRESS: the server's alternate IP and port
      0x0003 CHANGE-REQUEST       u32 flags: 0x4 answer from the other IP, 0x2 from the other port
      0x0009 ERROR-CODE           u16 0, u8 class (3-6, low 3 bits), u8 number (0-99), UTF-8 reason
      0x000A UNKNOWN-ATTRIBUTES   u16 types of the refused attributes
      0x8022 SOFTWARE             UTF-8 text
      0x8028 FINGERPRINT          u32 CRC-32 of the message before it, xor 0x5354554E; last
      0x0006 USERNAME, 0x0008 MESSAGE-INTEGRITY, 0x0014 REALM, 0x0015 NONCE,
      0x8023 ALTERNATE-SERVER     recognised, not used

Decoding is strict about structure and refuses, with a DecodeError saying why: datagrams over
1500 bytes (one Ethernet MTU; STUN over UDP should stay below the path MTU), a non-zero first
two bits, a wrong magic cookie, a length that is no multiple of 4 (so the last attribute lacks
its padding) or disagrees with the datagram, attributes running past the end, a FINGERPRINT that
is wrong or not last, and malformed values of the attributes it reads. Padding bytes may hold any value
(RFC 5389 15: ignored by the receiver; the RFC 5769 vectors pad with spaces). Only the first
occurrence of an attribute counts; attributes after MESSAGE-INTEGRITY other than FINGERPRINT are
ignored (RFC 5389 15.4). Unknown comprehension-required attributes are not an error here: they
are listed in `StunMessage.unknown_attributes` so a server can answer 420.
"""

from __future__ import annotations

import enum
import ipaddress
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

from overlay.core.errors import DecodeError

Addr = tuple[str, int]
"""An (IP literal, port) pair, IP in the compressed form `ipaddress` prints."""

MAGIC_COOKIE = 0x2112A442
HEADER_SIZE = 20
TRANSACTION_ID_SIZE = 12
MAX_MESSAGE_SIZE = 1500
FINGERPRINT_XOR = 0x5354554E

BINDING = 0x001

MAPPED_ADDRESS = 0x0001
CHANGE_REQUEST = 0x0003
USERNAME = 0x0006
MESSAGE_INTEGRITY = 0x0008
ERROR_CODE = 0x0009
UNKNOWN_ATTRIBUTES = 0x000A
REALM = 0x0014
NONCE = 0x0015
XOR_MAPPED_ADDRESS = 0x0020
SOFTWARE = 0x8022
ALTERNATE_SERVER = 0x8023
FINGERPRINT = 0x8028
RESPONSE_ORIGIN = 0x802B
OTHER_ADDRESS = 0x802C

CHANGE_IP_FLAG = 0x4
CHANGE_PORT_FLAG = 0x2

UNDERSTOOD = frozenset(
    {MAPPED_ADDRESS, CHANGE_REQUEST, USERNAME, MESSAGE_INTEGRITY, ERROR_CODE, UNKNOWN_ATTRIBUTES,
     REALM, NONCE, XOR_MAPPED_ADDRESS}
)
"""Comprehension-required types this module knows; any other below 0x8000 is 'unknown'."""

_FAMILY_IPV4, _FAMILY_IPV6 = 1, 2
_MAX_REASON_BYTES = 763


class MessageClass(enum.IntEnum):
    REQUEST = 0
    INDICATION = 1
    SUCCESS = 2
    ERROR = 3


@dataclass(frozen=True)
class StunMessage:
    """A decoded STUN message: the fields NAT discovery reads, nothing else."""

    message_class: MessageClass
    method: int
    transaction_id: bytes
    mapped_address: Addr | None = None
    """From XOR-MAPPED-ADDRESS, or from MAPPED-ADDRESS when only that is present (old servers)."""
    other_address: Addr | None = None
    response_origin: Addr | None = None
    change_ip: bool = False
    change_port: bool = False
    error_code: int | None = None
    error_reason: str = ""
    unknown_attributes: tuple[int, ...] = ()
    """Comprehension-required attribute types in this message that this module does not know."""
    listed_unknown: tuple[int, ...] = ()
    """The types an error response's UNKNOWN-ATTRIBUTES names (what the peer refused)."""
    software: str = ""
    fingerprint: bool = False
    """True when a FINGERPRINT was present (and, having decoded, correct)."""


def normalize_addr(addr: tuple) -> Addr:
    """(ip, port) in canonical form: compressed IP text, IPv4-mapped IPv6 as IPv4, no scope.

    Accepts the 4-tuples IPv6 sockets return. ValueError when the IP is not a literal.
    """
    ip = ipaddress.ip_address(str(addr[0]).split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    port = int(addr[1])
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"port {port} out of range")
    return str(ip), port


# ---- message type ---------------------------------------------------------------------------


def message_type(message_class: MessageClass, method: int) -> int:
    """Interleave class and method bits as the header's 14-bit message type has them."""
    if not 0 <= method < 1 << 12:
        raise ValueError(f"method {method} does not fit in 12 bits")
    c = int(message_class)
    return (method & 0x00F) | (method & 0x070) << 1 | (method & 0xF80) << 2 | (c & 1) << 4 | (c & 2) << 7


def split_message_type(value: int) -> tuple[MessageClass, int]:
    """(class, method) of a 14-bit message type."""
    method = (value & 0x000F) | (value >> 1 & 0x0070) | (value >> 2 & 0x0F80)
    return MessageClass((value >> 4 & 1) | (value >> 7 & 2)), method


# ---- encoding -------------------------------------------------------------------------------


def _attribute(attr_type: int, value: bytes) -> bytes:
    return struct.pack("!HH", attr_type, len(value)) + value + bytes(-len(value) % 4)


def _pack_address(addr: Addr) -> tuple[int, int, bytes]:
    ip, port = addr
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"port {port} out of range")
    packed = ipaddress.ip_address(ip).packed
    return (_FAMILY_IPV4 if len(packed) == 4 else _FAMILY_IPV6), port, packed


def _address_value(addr: Addr) -> bytes:
    family, port, packed = _pack_address(addr)
    return struct.pack("!BBH", 0, family, port) + packed


def _xor_address_value(addr: Addr, transaction_id: bytes) -> bytes:
    family, port, packed = _pack_address(addr)
    mask = struct.pack("!I", MAGIC_COOKIE) + transaction_id
    xored = bytes(a ^ b for a, b in zip(packed, mask))
    return struct.pack("!BBH", 0, family, port ^ MAGIC_COOKIE >> 16) + xored


def _fingerprint(data: bytes) -> int:
    return (zlib.crc32(data) ^ FINGERPRINT_XOR) & 0xFFFFFFFF


def _encode(message_class: MessageClass, method: int, transaction_id: bytes,
            attributes: Iterable[tuple[int, bytes]], fingerprint: bool) -> bytes:
    if len(transaction_id) != TRANSACTION_ID_SIZE:
        raise ValueError(f"transaction id must be {TRANSACTION_ID_SIZE} bytes, got {len(transaction_id)}")
    body = b"".join(_attribute(t, v) for t, v in attributes)
    length = len(body) + (8 if fingerprint else 0)
    header = struct.pack("!HHI", message_type(message_class, method), length, MAGIC_COOKIE) + transaction_id
    message = header + body
    if fingerprint:
        message += _attribute(FINGERPRINT, struct.pack("!I", _fingerprint(message)))
    if len(message) > MAX_MESSAGE_SIZE:
        raise ValueError(f"message of {len(message)} bytes exceeds the limit of {MAX_MESSAGE_SIZE}")
    return message


def _software(software: str | None) -> list[tuple[int, bytes]]:
    if not software:
        return []
    value = software.encode()
    if len(value) > _MAX_REASON_BYTES:
        raise ValueError("SOFTWARE longer than 763 bytes")
    return [(SOFTWARE, value)]


def encode_binding_request(transaction_id: bytes, *, change_ip: bool = False, change_port: bool = False,
                           fingerprint: bool = True, software: str | None = None) -> bytes:
    """A Binding request; CHANGE-REQUEST only when a change is asked (RFC 5780 filtering tests).

    FINGERPRINT is on by default so a socket shared with other protocols can tell STUN apart.
    """
    attributes = _software(software)
    if change_ip or change_port:
        flags = (CHANGE_IP_FLAG if change_ip else 0) | (CHANGE_PORT_FLAG if change_port else 0)
        attributes.append((CHANGE_REQUEST, struct.pack("!I", flags)))
    return _encode(MessageClass.REQUEST, BINDING, transaction_id, attributes, fingerprint)


def encode_binding_success(transaction_id: bytes, mapped: Addr, *, response_origin: Addr | None = None,
                           other_address: Addr | None = None, software: str | None = None,
                           fingerprint: bool = True) -> bytes:
    """A Binding success response telling the client the address its request came from."""
    attributes = [(XOR_MAPPED_ADDRESS, _xor_address_value(mapped, transaction_id))]
    if response_origin is not None:
        attributes.append((RESPONSE_ORIGIN, _address_value(response_origin)))
    if other_address is not None:
        attributes.append((OTHER_ADDRESS, _address_value(other_address)))
    attributes += _software(software)
    return _encode(MessageClass.SUCCESS, BINDING, transaction_id, attributes, fingerprint)


def encode_error_response(transaction_id: bytes, code: int, reason: str = "", *, method: int = BINDING,
                          unknown_attributes: Iterable[int] = (), software: str | None = None,
                          fingerprint: bool = True) -> bytes:
    """An error response, e.g. 400 (bad request) or 420 (unknown attribute, listing the types)."""
    if not 300 <= code <= 699:
        raise ValueError(f"error code {code} out of range 300-699")
    reason_bytes = (reason or _REASONS.get(code, "")).encode()
    if len(reason_bytes) > _MAX_REASON_BYTES:
        raise ValueError("error reason longer than 763 bytes")
    attributes = [(ERROR_CODE, struct.pack("!HBB", 0, code // 100, code % 100) + reason_bytes)]
    unknown = list(unknown_attributes)
    if unknown:
        attributes.append((UNKNOWN_ATTRIBUTES, struct.pack(f"!{len(unknown)}H", *unknown)))
    attributes += _software(software)
    return _encode(MessageClass.ERROR, method, transaction_id, attributes, fingerprint)


_REASONS = {400: "Bad Request", 420: "Unknown Attribute", 500: "Server Error"}


# ---- decoding -------------------------------------------------------------------------------


def is_stun(data: bytes) -> bool:
    """Cheap demultiplexing check: could this datagram be STUN (RFC 5389 / RFC 7983)?

    Checks the two zero bits, the magic cookie and that the length field matches the datagram;
    it does not parse attributes, so `decode` can still refuse what passes here.
    """
    return (
        HEADER_SIZE <= len(data) <= MAX_MESSAGE_SIZE
        and data[0] & 0xC0 == 0
        and data[4:8] == b"\x21\x12\xa4\x42"
        and data[3] & 3 == 0
        and HEADER_SIZE + (data[2] << 8 | data[3]) == len(data)
    )


def _name(attr_type: int) -> str:
    return _NAMES.get(attr_type, f"0x{attr_type:04x}")


_NAMES = {
    MAPPED_ADDRESS: "MAPPED-ADDRESS", CHANGE_REQUEST: "CHANGE-REQUEST", USERNAME: "USERNAME",
    MESSAGE_INTEGRITY: "MESSAGE-INTEGRITY", ERROR_CODE: "ERROR-CODE",
    UNKNOWN_ATTRIBUTES: "UNKNOWN-ATTRIBUTES", REALM: "REALM", NONCE: "NONCE",
    XOR_MAPPED_ADDRESS: "XOR-MAPPED-ADDRESS", SOFTWARE: "SOFTWARE", ALTERNATE_SERVER: "ALTERNATE-SERVER",
    FINGERPRINT: "FINGERPRINT", RESPONSE_ORIGIN: "RESPONSE-ORIGIN", OTHER_ADDRESS: "OTHER-ADDRESS",
}


def _decode_address(attr_type: int, value: bytes, xor_mask: bytes | None = None) -> Addr:
    if len(value) < 4:
        raise DecodeError(f"{_name(attr_type)}: {len(value)} bytes, too short for an address")
    family, port = value[1], value[2] << 8 | value[3]
    expected = {_FAMILY_IPV4: 8, _FAMILY_IPV6: 20}.get(family)
    if expected is None:
        raise DecodeError(f"{_name(attr_type)}: unknown address family {family}")
    if len(value) != expected:
        raise DecodeError(f"{_name(attr_type)}: length {len(value)} does not match family "
                          f"{'IPv4' if family == _FAMILY_IPV4 else 'IPv6'} ({expected})")
    raw = value[4:]
    if xor_mask is not None:
        port ^= MAGIC_COOKIE >> 16
        raw = bytes(a ^ b for a, b in zip(raw, xor_mask))
    return str(ipaddress.ip_address(raw)), port


def _decode_text(value: bytes) -> str:
    return value.decode("utf-8", errors="replace")


def decode(data: bytes) -> StunMessage:
    """Decode one STUN message; DecodeError (and nothing else) for anything refused."""
    try:
        data = memoryview(data).tobytes()
    except TypeError:
        raise DecodeError(f"expected bytes, got {type(data).__name__}") from None
    if len(data) > MAX_MESSAGE_SIZE:
        raise DecodeError(f"message of {len(data)} bytes exceeds the limit of {MAX_MESSAGE_SIZE}")
    if len(data) < HEADER_SIZE:
        raise DecodeError(f"{len(data)} bytes, shorter than the {HEADER_SIZE}-byte header")
    type_value, length, cookie = struct.unpack_from("!HHI", data)
    if type_value & 0xC000:
        raise DecodeError("first two bits are not zero (not a STUN message)")
    if cookie != MAGIC_COOKIE:
        raise DecodeError(f"wrong magic cookie 0x{cookie:08x}")
    if length % 4:
        raise DecodeError(f"message length {length} is not a multiple of 4 (attributes are padded to 4 bytes)")
    if HEADER_SIZE + length != len(data):
        raise DecodeError(f"header declares {length} bytes of attributes, datagram has {len(data) - HEADER_SIZE}")
    message_class, method = split_message_type(type_value)
    transaction_id = data[8:HEADER_SIZE]

    seen: dict[int, bytes] = {}
    unknown: list[int] = []
    has_fingerprint = after_integrity = False
    pos = HEADER_SIZE
    while pos < len(data):
        if len(data) - pos < 4:
            raise DecodeError(f"truncated attribute header at offset {pos}")
        attr_type, attr_len = struct.unpack_from("!HH", data, pos)
        start, end = pos + 4, pos + 4 + attr_len
        if end > len(data):
            raise DecodeError(f"{_name(attr_type)}: length {attr_len} runs past the end of the message")
        padded_end = end + (-attr_len % 4)  # fits: the total and every start are multiples of 4
        value = data[start:end]
        if attr_type == FINGERPRINT:
            if attr_len != 4:
                raise DecodeError(f"FINGERPRINT: length {attr_len}, expected 4")
            if padded_end != len(data):
                raise DecodeError("FINGERPRINT is not the last attribute")
            if struct.unpack("!I", value)[0] != _fingerprint(data[:pos]):
                raise DecodeError("FINGERPRINT does not match the message (corrupted or not STUN)")
            has_fingerprint = True
        elif not after_integrity:
            if attr_type < 0x8000 and attr_type not in UNDERSTOOD:
                if attr_type not in unknown:
                    unknown.append(attr_type)
            else:
                seen.setdefault(attr_type, value)
            if attr_type == MESSAGE_INTEGRITY:
                if attr_len != 20:
                    raise DecodeError(f"MESSAGE-INTEGRITY: length {attr_len}, expected 20")
                after_integrity = True
        pos = padded_end

    mask = data[4:HEADER_SIZE]
    mapped = other = origin = None
    if XOR_MAPPED_ADDRESS in seen:
        mapped = _decode_address(XOR_MAPPED_ADDRESS, seen[XOR_MAPPED_ADDRESS], mask)
    elif MAPPED_ADDRESS in seen:
        mapped = _decode_address(MAPPED_ADDRESS, seen[MAPPED_ADDRESS])
    if OTHER_ADDRESS in seen:
        other = _decode_address(OTHER_ADDRESS, seen[OTHER_ADDRESS])
    if RESPONSE_ORIGIN in seen:
        origin = _decode_address(RESPONSE_ORIGIN, seen[RESPONSE_ORIGIN])
    flags = 0
    if CHANGE_REQUEST in seen:
        value = seen[CHANGE_REQUEST]
        if len(value) != 4:
            raise DecodeError(f"CHANGE-REQUEST: length {len(value)}, expected 4")
        flags = struct.unpack("!I", value)[0]
    error_code, reason = None, ""
    if ERROR_CODE in seen:
        error_code, reason = _decode_error_code(seen[ERROR_CODE])
    elif message_class == MessageClass.ERROR:
        raise DecodeError("error response without ERROR-CODE")
    listed: tuple[int, ...] = ()
    if UNKNOWN_ATTRIBUTES in seen:
        value = seen[UNKNOWN_ATTRIBUTES]
        if len(value) % 2:
            raise DecodeError(f"UNKNOWN-ATTRIBUTES: odd length {len(value)}")
        listed = struct.unpack(f"!{len(value) // 2}H", value)
    return StunMessage(
        message_class, method, transaction_id,
        mapped_address=mapped, other_address=other, response_origin=origin,
        change_ip=bool(flags & CHANGE_IP_FLAG), change_port=bool(flags & CHANGE_PORT_FLAG),
        error_code=error_code, error_reason=reason, unknown_attributes=tuple(unknown),
        listed_unknown=listed, software=_decode_text(seen.get(SOFTWARE, b"")), fingerprint=has_fingerprint,
    )


def _decode_error_code(value: bytes) -> tuple[int, str]:
    if len(value) < 4:
        raise DecodeError(f"ERROR-CODE: length {len(value)}, shorter than 4")
    error_class, number = value[2] & 0x07, value[3]
    if not 3 <= error_class <= 6:
        raise DecodeError(f"ERROR-CODE: class {error_class} out of range 3-6")
    if number > 99:
        raise DecodeError(f"ERROR-CODE: number {number} out of range 0-99")
    return error_class * 100 + number, _decode_text(value[4:])
