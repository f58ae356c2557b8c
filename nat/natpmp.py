"""NAT-PMP (RFC 6886): port mapping on the home gateway, the oldest of the three protocols
`nat.portmap` tries (PCP's predecessor, still what many routers answer).

Wire (UDP to the gateway's port 5351, big-endian):

    external address request:  u8 version=0, u8 opcode=0
    external address response: u8 0, u8 128, u16 result, u32 epoch, 4 bytes IPv4 address
    mapping request:           u8 0, u8 opcode (1 UDP, 2 TCP), u16 0, u16 internal port,
                               u16 suggested external port, u32 lifetime (s; 0 deletes)
    mapping response:          u8 0, u8 128+opcode, u16 result, u32 epoch, u16 internal port,
                               u16 external port, u32 lifetime

Result codes: 0 success, 1 unsupported version, 2 refused, 3 network failure, 4 out of
resources, 5 unsupported opcode. The codec has no I/O; `NatPmpClient` is its trio adapter
(retransmission as in `nat.gateway`).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from nat.gateway import PORT, Lease, PortMapError, udp_exchange
from overlay.core.errors import DecodeError

OP_EXTERNAL, OP_UDP, OP_TCP = 0, 1, 2
RESULTS = {0: "success", 1: "unsupported version", 2: "refused", 3: "network failure",
           4: "out of resources", 5: "unsupported opcode"}


@dataclass(frozen=True)
class ExternalAddress:
    epoch: int
    address: str


@dataclass(frozen=True)
class Mapping:
    protocol: str  # "udp" or "tcp"
    epoch: int
    internal_port: int
    external_port: int
    lifetime: int


def encode_external_request() -> bytes:
    return bytes([0, OP_EXTERNAL])


def encode_mapping_request(protocol: str, internal_port: int, external_port: int, lifetime: int) -> bytes:
    opcode = OP_TCP if protocol == "tcp" else OP_UDP
    return struct.pack(">BBHHHI", 0, opcode, 0, internal_port, external_port, lifetime)


def decode_response(data: bytes) -> ExternalAddress | Mapping:
    """A gateway's answer; DecodeError for anything malformed, PortMapError for an error result."""
    if len(data) < 8:
        raise DecodeError(f"NAT-PMP: {len(data)} bytes is too short")
    version, opcode, result, epoch = struct.unpack(">BBHI", data[:8])
    if version != 0:
        raise DecodeError(f"NAT-PMP: version {version}")
    if opcode not in (128 + OP_EXTERNAL, 128 + OP_UDP, 128 + OP_TCP):
        raise DecodeError(f"NAT-PMP: unexpected opcode {opcode}")
    if result != 0:
        raise PortMapError(f"NAT-PMP: {RESULTS.get(result, f'result {result}')}")
    if opcode == 128 + OP_EXTERNAL:
        if len(data) != 12:
            raise DecodeError(f"NAT-PMP: address response of {len(data)} bytes")
        return ExternalAddress(epoch, str(ipaddress.IPv4Address(data[8:12])))
    if len(data) != 16:
        raise DecodeError(f"NAT-PMP: mapping response of {len(data)} bytes")
    internal, external, lifetime = struct.unpack(">HHI", data[8:16])
    return Mapping("tcp" if opcode == 128 + OP_TCP else "udp", epoch, internal, external, lifetime)


class NatPmpClient:
    """NAT-PMP to one gateway, as a `nat.gateway.Mapper`."""

    name = "NAT-PMP"

    def __init__(self, gateway: str, port: int = PORT) -> None:
        self.gateway = (gateway, port)

    async def external_address(self) -> ExternalAddress:
        answer = await self._ask(encode_external_request())
        assert isinstance(answer, ExternalAddress)
        return answer

    async def map(self, protocol: str, port: int, lifetime: int = 7200) -> Lease:
        """Map `port` (asking for the same external port); lifetime 0 removes it."""
        external = await self.external_address()
        answer = await self._ask(encode_mapping_request(protocol, port, port, lifetime))
        assert isinstance(answer, Mapping)
        return Lease(protocol, port, external.address, answer.external_port, answer.lifetime, answer.epoch)

    async def unmap(self, protocol: str, port: int) -> None:
        await self._ask(encode_mapping_request(protocol, port, 0, 0))

    async def _ask(self, request: bytes) -> ExternalAddress | Mapping:
        def accept(data: bytes) -> ExternalAddress | Mapping | None:
            if len(data) > 1 and data[1] != 128 + request[1]:
                return None  # a late answer to another request
            return decode_response(data)

        return await udp_exchange(self.name, self.gateway, lambda _: request, accept)
