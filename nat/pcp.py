"""PCP (RFC 6887), the MAP opcode only: port mapping on gateways newer than NAT-PMP, on the same
UDP port 5351. No maintained Python PCP client exists, so this is ours: a codec without I/O and
`PcpClient`, its trio adapter (retransmission as in `nat.gateway`).

Wire (big-endian; addresses are 16 bytes, IPv4 as ::ffff:a.b.c.d):

    request header (24):  u8 version=2, u8 R=0|opcode, u16 0, u32 requested lifetime,
                          16 client address (our own, as the gateway sees it)
    response header (24): u8 version=2, u8 R=1|opcode, u8 0, u8 result, u32 lifetime,
                          u32 epoch, 12 zero
    MAP payload (36):     12 nonce, u8 protocol (6 TCP, 17 UDP), 3 zero, u16 internal port,
                          u16 suggested (request) / assigned (response) external port,
                          16 suggested / assigned external address

Options after the payload are ignored. A response is ours only if its nonce, protocol and
internal port are the request's; the nonce, random per mapping, stays the same for renewals and
the delete (lifetime 0), which the gateway requires. A NAT-PMP-only gateway answers a version-2
request with NAT-PMP's "unsupported version" (version 0): a PortMapError, so the caller moves on.
"""

from __future__ import annotations

import ipaddress
import os
import struct
from dataclasses import dataclass

from nat.gateway import PORT, Lease, PortMapError, udp_exchange
from overlay.core.errors import DecodeError

VERSION = 2
OP_MAP = 1
RESPONSE = 0x80
PROTOCOLS = {"tcp": 6, "udp": 17}
HEADER = 24
MAP_SIZE = 36
MAX_MESSAGE = 1100
RESULTS = {
    0: "success", 1: "unsupported version", 2: "not authorized", 3: "malformed request",
    4: "unsupported opcode", 5: "unsupported option", 6: "malformed option", 7: "network failure",
    8: "no resources", 9: "unsupported protocol", 10: "user exceeded quota",
    11: "cannot provide external", 12: "address mismatch", 13: "excessive remote peers",
}
ANY_IPV4 = ipaddress.IPv6Address("::ffff:0.0.0.0")


@dataclass(frozen=True)
class MapResponse:
    result: int
    nonce: bytes
    protocol: str
    internal_port: int
    external_port: int
    external_ip: str
    lifetime: int
    epoch: int


def _refusal(result: int) -> str:
    return f"PCP: {RESULTS.get(result, f'result {result}')}"


def _as_v6(address: str) -> bytes:
    ip = ipaddress.ip_address(address)
    return (ipaddress.IPv6Address(f"::ffff:{ip}") if ip.version == 4 else ip).packed


def encode_map_request(nonce: bytes, protocol: str, internal_port: int, lifetime: int,
                       client: str, suggested_port: int = 0) -> bytes:
    """A MAP request from `client` (our address towards the gateway) for `internal_port`."""
    if len(nonce) != 12:
        raise ValueError("a PCP nonce is 12 bytes")
    header = struct.pack(">BBHI", VERSION, OP_MAP, 0, lifetime) + _as_v6(client)
    payload = nonce + struct.pack(">B3xHH", PROTOCOLS[protocol], internal_port, suggested_port) + ANY_IPV4.packed
    return header + payload


def decode_map_response(data: bytes) -> MapResponse:
    """A gateway's answer to MAP, whatever its result; DecodeError for anything malformed,
    PortMapError for a NAT-PMP gateway's "unsupported version" or an error without a payload
    (neither says which request it answers)."""
    if len(data) < 4:
        raise DecodeError(f"PCP: {len(data)} bytes is too short")
    if data[0] == 0 and data[1] >= RESPONSE:
        raise PortMapError("PCP: the gateway speaks NAT-PMP only")
    if data[0] != VERSION:
        raise DecodeError(f"PCP: version {data[0]}")
    if len(data) > MAX_MESSAGE or len(data) % 4:
        raise DecodeError(f"PCP: a message of {len(data)} bytes")
    if data[1] != RESPONSE | OP_MAP:
        raise DecodeError(f"PCP: unexpected opcode byte {data[1]}")
    if len(data) < HEADER + MAP_SIZE:
        if len(data) >= HEADER and data[3] != 0:
            raise PortMapError(_refusal(data[3]))
        raise DecodeError(f"PCP: a MAP response of {len(data)} bytes")
    _, _, _, result, lifetime, epoch = struct.unpack(">BBBBII", data[:12])
    nonce = data[HEADER:HEADER + 12]
    number, internal, external = struct.unpack(">B3xHH", data[HEADER + 12:HEADER + 20])
    protocol = next((name for name, n in PROTOCOLS.items() if n == number), None)
    if protocol is None:
        raise DecodeError(f"PCP: protocol {number}")
    ip = ipaddress.IPv6Address(data[HEADER + 20:HEADER + 36])
    address = str(ip.ipv4_mapped) if ip.ipv4_mapped is not None else str(ip)
    return MapResponse(result, nonce, protocol, internal, external, address, lifetime, epoch)


class PcpClient:
    """PCP MAP to one gateway, as a `nat.gateway.Mapper`; keeps each mapping's nonce."""

    name = "PCP"

    def __init__(self, gateway: str, port: int = PORT) -> None:
        self.gateway = (gateway, port)
        self._nonces: dict[tuple[str, int], bytes] = {}

    async def map(self, protocol: str, port: int, lifetime: int = 7200) -> Lease:
        nonce = self._nonces.setdefault((protocol, port), os.urandom(12))
        answer = await self._ask(nonce, protocol, port, lifetime, suggested=port)
        return Lease(protocol, port, answer.external_ip, answer.external_port, answer.lifetime, answer.epoch)

    async def unmap(self, protocol: str, port: int) -> None:
        nonce = self._nonces.pop((protocol, port), None)
        if nonce is not None:
            await self._ask(nonce, protocol, port, 0, suggested=0)

    async def _ask(self, nonce: bytes, protocol: str, port: int, lifetime: int, suggested: int) -> MapResponse:
        def accept(data: bytes) -> MapResponse | None:
            answer = decode_map_response(data)
            if (answer.nonce, answer.protocol, answer.internal_port) != (nonce, protocol, port):
                return None  # a late answer to another request
            if answer.result != 0:
                raise PortMapError(_refusal(answer.result))
            return answer

        return await udp_exchange(
            self.name, self.gateway, lambda own: encode_map_request(nonce, protocol, port, lifetime, own, suggested), accept
        )
