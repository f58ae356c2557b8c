"""Port mapping on the home gateway with NAT-PMP (RFC 6886), so a node behind NAT can be reached
directly where its router allows it. Turned off with `port_mapping = false`.

Wire (UDP to the gateway's port 5351, big-endian):

    external address request:  u8 version=0, u8 opcode=0
    external address response: u8 0, u8 128, u16 result, u32 epoch, 4 bytes IPv4 address
    mapping request:           u8 0, u8 opcode (1 UDP, 2 TCP), u16 0, u16 internal port,
                               u16 suggested external port, u32 lifetime (s; 0 deletes)
    mapping response:          u8 0, u8 128+opcode, u16 result, u32 epoch, u16 internal port,
                               u16 external port, u32 lifetime

Result codes: 0 success, 1 unsupported version, 2 refused, 3 network failure, 4 out of
resources, 5 unsupported opcode. Requests are retransmitted after 250 ms, doubling, as the RFC
says, but only three times: a gateway that does not answer within ~2 s offers no mapping.
The codec has no I/O; `NatPmpClient` is its trio adapter; the gateway is the default route's.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass

import multiaddr
import trio

from overlay.core.errors import DecodeError

log = logging.getLogger(__name__)

PORT = 5351
LIFETIME = 7200
OP_EXTERNAL, OP_UDP, OP_TCP = 0, 1, 2
RESULTS = {0: "success", 1: "unsupported version", 2: "refused", 3: "network failure",
           4: "out of resources", 5: "unsupported opcode"}
RETRIES = 3
FIRST_TIMEOUT = 0.25


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


class PortMapError(Exception):
    """The gateway answered with an error, or did not answer."""


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


def default_gateway(route_file: str = "/proc/net/route") -> str | None:
    """The IPv4 default gateway of this host (Linux), None when there is none."""
    try:
        with open(route_file) as f:
            next(f, None)
            for line in f:
                fields = line.split()
                if len(fields) > 3 and fields[1] == "00000000" and int(fields[3], 16) & 0x2:
                    return str(ipaddress.IPv4Address(struct.pack("<I", int(fields[2], 16))))
    except (OSError, ValueError):
        return None
    return None


class NatPmpClient:
    def __init__(self, gateway: str, port: int = PORT) -> None:
        self.gateway = (gateway, port)

    async def external_address(self) -> ExternalAddress:
        answer = await self._ask(encode_external_request(), 128 + OP_EXTERNAL)
        assert isinstance(answer, ExternalAddress)
        return answer

    async def map(self, protocol: str, internal_port: int, lifetime: int = 7200) -> Mapping:
        """Map `internal_port` (asking for the same external port); lifetime 0 removes it."""
        opcode = OP_TCP if protocol == "tcp" else OP_UDP
        answer = await self._ask(encode_mapping_request(protocol, internal_port, internal_port, lifetime), 128 + opcode)
        assert isinstance(answer, Mapping)
        return answer

    async def _ask(self, request: bytes, expected_opcode: int) -> ExternalAddress | Mapping:
        try:
            return await self._exchange(request, expected_opcode)
        except OSError as e:  # no descriptor left (EMFILE), no route: no mapping, never the node's end
            raise PortMapError(f"NAT-PMP: {e.strerror or e}") from None

    async def _exchange(self, request: bytes, expected_opcode: int) -> ExternalAddress | Mapping:
        with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            await sock.connect(self.gateway)  # answers from anywhere else are never seen
            timeout = FIRST_TIMEOUT
            for _ in range(RETRIES):
                await sock.send(request)
                with trio.move_on_after(timeout):
                    while True:
                        try:
                            data = await sock.recv(64)
                        except OSError as e:  # ICMP port unreachable: no NAT-PMP here
                            raise PortMapError(f"NAT-PMP: {e.strerror or e}") from None
                        try:
                            answer = decode_response(data)
                        except DecodeError:
                            continue
                        if data[1] == expected_opcode:
                            return answer
                timeout *= 2
        raise PortMapError(f"NAT-PMP: no answer from {self.gateway[0]}")


async def keep_port_mapping(
    port: int, changed: Callable[[dict[str, object], multiaddr.Multiaddr | None], None], client: NatPmpClient | None = None
) -> None:
    """Keep TCP `port` (and the UDP port numbered like it, where STUN answers) mapped on the
    gateway (the default route's unless `client` says otherwise), renewing at half the lifetime;
    report each state and the mapped address. Returns when the gateway offers no mapping."""
    if client is None:
        gateway = default_gateway()
        if gateway is None:
            changed({"state": "no gateway"}, None)
            return
        client = NatPmpClient(gateway)
    gateway = client.gateway[0]
    while True:
        try:
            external = await client.external_address()
            mapping = await client.map("tcp", port, LIFETIME)
            with contextlib.suppress(PortMapError):
                await client.map("udp", port, LIFETIME)
        except PortMapError as e:
            log.info("no port mapping: %s", e)
            changed({"state": "none", "protocol": "NAT-PMP", "gateway": gateway, "error": str(e)}, None)
            return
        changed({"state": "mapped", "protocol": "NAT-PMP", "gateway": gateway,
                 "external": f"{external.address}:{mapping.external_port}", "lifetime": mapping.lifetime},
                multiaddr.Multiaddr(f"/ip4/{external.address}/tcp/{mapping.external_port}"))
        await trio.sleep(max(mapping.lifetime / 2, 60))
