"""STUN on trio UDP sockets: a discovery server, a client transaction, and the NAT probe.

Thin on purpose: messages are `nat.stun`, the verdict is `nat.classify`, and the two pure pieces
that decide what a server does (`answer_request`, and the rate limiter of `overlay.core.ratelimit`) take their inputs, `now`
included, as arguments.

Server behaviour (RFC 5389 Binding, RFC 5780 discovery):
- answers from the socket that differs from the receiving one in exactly what CHANGE-REQUEST
  asks (other IP, other port, or both); when no such socket exists it answers 420 listing
  CHANGE-REQUEST, which RFC 5780 asks of a server without that alternate address, so a client
  can tell "not supported" from "filtered". A CHANGE-REQUEST asking for no change is answered
  normally.
- includes RESPONSE-ORIGIN (the sending socket) and, when an alternate socket exists, OTHER-ADDRESS
  (the socket differing in IP and port from the receiving one, else in either).
- answers 420 to unknown comprehension-required attributes, 400 to methods other than Binding,
  ignores indications and responses, and drops undecodable datagrams (RFC 5389 7.3).
- rate-limits per source IP before decoding, so a flood costs a dictionary lookup, not a parse.
  Every drop is counted in `StunServerCounters`.
"""

from __future__ import annotations

import dataclasses
import errno
import ipaddress
import logging
import math
import secrets
import socket as stdlib_socket
from collections.abc import Sequence
from dataclasses import dataclass

import multiaddr
import trio

from nat.classify import (
    FilteringObservation,
    MappingObservation,
    NatClassification,
    Probe,
    classify,
    plan_probes,
)
from nat.stun import (
    BINDING,
    CHANGE_REQUEST,
    MAX_MESSAGE_SIZE,
    TRANSACTION_ID_SIZE,
    Addr,
    MessageClass,
    StunMessage,
    decode,
    encode_binding_request,
    encode_binding_success,
    encode_error_response,
    is_stun,
    normalize_addr,
)
from overlay.core.errors import DecodeError
from overlay.core.ratelimit import RateLimiter

log = logging.getLogger(__name__)

DEFAULT_RATE = 20.0
DEFAULT_BURST = 40.0
DEFAULT_MAX_SOURCES = 10_000
_RECV_SIZE = MAX_MESSAGE_SIZE + 1  # one byte more, so an oversized datagram shows as oversized
_FATAL_ERRNOS = (errno.EBADF, errno.ENOTSOCK)


# ---- pure pieces ----------------------------------------------------------------------------


@dataclass(frozen=True)
class StunAnswer:
    """What a server sends: `data` from `endpoints[endpoint]`; `error` for error responses."""

    endpoint: int
    data: bytes
    error: bool


def _unspecified(addr: Addr) -> bool:
    return ipaddress.ip_address(addr[0]).is_unspecified


def _changed(endpoints: Sequence[Addr], arrived_on: int, change_ip: bool, change_port: bool) -> int | None:
    here = endpoints[arrived_on]
    for index, there in enumerate(endpoints):
        if (there[0] != here[0]) == change_ip and (there[1] != here[1]) == change_port:
            return index
    return None


def _other(endpoints: Sequence[Addr], arrived_on: int) -> Addr | None:
    here = endpoints[arrived_on]
    both = [e for e in endpoints if e[0] != here[0] and e[1] != here[1]]
    either = [e for e in endpoints if e != here]
    return (both or either or [None])[0]


def answer_request(data: bytes, source: Addr, arrived_on: int, endpoints: Sequence[Addr],
                   software: str | None = None) -> StunAnswer | None:
    """The server's answer to one datagram, or None when nothing is to be sent.

    `endpoints` are the server's socket addresses, `arrived_on` the index of the receiving one.
    DecodeError when the datagram is not a valid STUN message (the caller drops and counts it).
    """
    message = decode(data)
    if message.message_class != MessageClass.REQUEST:
        return None
    txid = message.transaction_id
    if message.method != BINDING:
        error = encode_error_response(txid, 400, f"unsupported method 0x{message.method:03x}",
                                      method=message.method, software=software)
        return StunAnswer(arrived_on, error, True)
    if message.unknown_attributes:
        error = encode_error_response(txid, 420, unknown_attributes=message.unknown_attributes,
                                      software=software)
        return StunAnswer(arrived_on, error, True)
    target = _changed(endpoints, arrived_on, message.change_ip, message.change_port)
    if target is None:
        error = encode_error_response(txid, 420, "no alternate address for CHANGE-REQUEST",
                                      unknown_attributes=[CHANGE_REQUEST], software=software)
        return StunAnswer(arrived_on, error, True)
    origin = endpoints[target]
    success = encode_binding_success(
        txid, normalize_addr(source),
        response_origin=None if _unspecified(origin) else origin,
        other_address=_other(endpoints, arrived_on),
        software=software,
    )
    return StunAnswer(target, success, False)


# ---- server ---------------------------------------------------------------------------------


@dataclass
class StunServerCounters:
    received: int = 0
    answered: int = 0
    """Success responses sent."""
    rejected: int = 0
    """Error responses sent (400, 420)."""
    ignored: int = 0
    """Valid STUN that asks for no answer (indications, responses)."""
    dropped_malformed: int = 0
    dropped_rate: int = 0
    socket_errors: int = 0


async def serve_stun(
    sock: trio.socket.SocketType,
    alt_sock: trio.socket.SocketType | None = None,
    *,
    extra_socks: Sequence[trio.socket.SocketType] = (),
    limiter: RateLimiter | None = None,
    counters: StunServerCounters | None = None,
    software: str | None = None,
    task_status: trio.TaskStatus[StunServerCounters] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Answer STUN Binding requests on bound UDP sockets until cancelled.

    `alt_sock` is bound on another IP and/or port of this host; `extra_socks` may complete the
    RFC 5780 set (primary IP with alternate port, alternate IP with primary port) so every
    CHANGE-REQUEST can be honoured. Every socket answers requests; the limiter is shared.
    `nursery.start(serve_stun, ...)` returns the counters.
    """
    socks = [sock] + ([alt_sock] if alt_sock is not None else []) + list(extra_socks)
    endpoints = [normalize_addr(s.getsockname()) for s in socks]
    if len(socks) > 1 and any(_unspecified(e) for e in endpoints):
        raise ValueError("with alternate sockets, every socket must be bound to a specific IP")
    if len(set(endpoints)) != len(endpoints):
        raise ValueError(f"two sockets share an address: {endpoints}")
    limiter = limiter if limiter is not None else RateLimiter(DEFAULT_RATE, DEFAULT_BURST, DEFAULT_MAX_SOURCES)
    counters = counters if counters is not None else StunServerCounters()
    async with trio.open_nursery() as nursery:
        for index in range(len(socks)):
            nursery.start_soon(_serve_socket, socks, endpoints, index, limiter, counters, software)
        task_status.started(counters)


async def _serve_socket(socks: list[trio.socket.SocketType], endpoints: list[Addr], index: int,
                        limiter: RateLimiter, counters: StunServerCounters, software: str | None) -> None:
    sock = socks[index]
    while True:
        try:
            data, source = await sock.recvfrom(_RECV_SIZE)
        except OSError as exc:
            if exc.errno in _FATAL_ERRNOS:
                raise
            counters.socket_errors += 1
            continue
        counters.received += 1
        try:
            src = normalize_addr(source)
        except ValueError:
            counters.dropped_malformed += 1
            continue
        if not limiter.allow(src[0], trio.current_time()):
            counters.dropped_rate += 1
            continue
        try:
            reply = answer_request(data, src, index, endpoints, software)
        except DecodeError as exc:
            counters.dropped_malformed += 1
            log.debug("dropped datagram from %s: %s", src, exc)
            continue
        if reply is None:
            counters.ignored += 1
            continue
        try:
            await socks[reply.endpoint].sendto(reply.data, source)
        except OSError:
            counters.socket_errors += 1
            continue
        if reply.error:
            counters.rejected += 1
        else:
            counters.answered += 1


async def serve_stun_on_tcp_ports(tcp_addrs: Sequence[multiaddr.Multiaddr], counters: StunServerCounters) -> None:
    """Answer STUN on the UDP port numbered like the first TCP address's port, on each of their
    IPv4 addresses (every public node does, so peers know where to ask): with two addresses,
    CHANGE-REQUEST can answer from the other (RFC 5780). Ports that cannot be bound are skipped."""
    if not tcp_addrs:
        return
    port = int(tcp_addrs[0].value_for_protocol("tcp"))
    socks = []
    for ip in dict.fromkeys(a.value_for_protocol("ip4") for a in tcp_addrs):
        sock = trio.socket.socket(stdlib_socket.AF_INET, stdlib_socket.SOCK_DGRAM)
        try:
            await sock.bind((ip, port))
        except OSError as e:
            log.warning("STUN not served on %s:%d: %s", ip, port, e.strerror)
            sock.close()
            continue
        socks.append(sock)
    if not socks:
        return
    try:
        await serve_stun(socks[0], socks[1] if len(socks) > 1 else None, extra_socks=socks[2:], counters=counters)
    finally:
        for sock in socks:
            sock.close()


# ---- client ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class StunReply:
    """A response matched to our request, and the address it actually came from."""

    message: StunMessage
    source: Addr


def _mapped(reply: StunReply | None) -> Addr | None:
    """The mapped address of a usable success response; RFC 5389 7.3.3 fails a response carrying
    comprehension-required attributes we do not know."""
    if reply is None or reply.message.message_class != MessageClass.SUCCESS or reply.message.unknown_attributes:
        return None
    return reply.message.mapped_address


class _Transactions:
    """Matches responses on one socket to pending requests by transaction id.

    One reader task owns the socket (trio allows one waiter per socket), so several requests can
    be in flight on the same socket; everything unrelated is ignored.
    """

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self._sock = sock
        self._pending: dict[bytes, trio.MemorySendChannel[StunReply]] = {}

    async def read_forever(self) -> None:
        while True:
            try:
                data, source = await self._sock.recvfrom(_RECV_SIZE)
            except OSError as exc:
                if exc.errno in _FATAL_ERRNOS:
                    raise
                continue
            if not is_stun(data):
                continue
            try:
                message = decode(data)
                src = normalize_addr(source)
            except (DecodeError, ValueError):
                continue
            if message.message_class not in (MessageClass.SUCCESS, MessageClass.ERROR):
                continue
            waiter = self._pending.get(message.transaction_id)
            if waiter is not None and message.method == BINDING:
                try:
                    waiter.send_nowait(StunReply(message, src))
                except trio.WouldBlock:
                    pass

    async def request(self, server: Addr, change_ip: bool, change_port: bool, timeout: float,
                      retransmits: int, initial_rto: float) -> StunReply | None:
        txid = secrets.token_bytes(TRANSACTION_ID_SIZE)
        while txid in self._pending:
            txid = secrets.token_bytes(TRANSACTION_ID_SIZE)
        data = encode_binding_request(txid, change_ip=change_ip, change_port=change_port)
        send, receive = trio.open_memory_channel[StunReply](1)
        self._pending[txid] = send
        try:
            with trio.move_on_after(timeout):
                rto = initial_rto
                for attempt in range(retransmits + 1):
                    try:
                        await self._sock.sendto(data, server)
                    except OSError:
                        pass
                    with trio.move_on_after(rto if attempt < retransmits else math.inf):
                        return await receive.receive()
                    rto *= 2
            return None
        finally:
            del self._pending[txid]


async def stun_request(
    sock: trio.socket.SocketType,
    server: Addr,
    *,
    change_ip: bool = False,
    change_port: bool = False,
    timeout: float = 2.0,
    retransmits: int = 6,
    initial_rto: float = 0.1,
) -> StunReply | None:
    """One Binding transaction from `sock` (bound, UDP; nobody else reading it meanwhile).

    Retransmits after `initial_rto`, doubling, at most `retransmits` times, all within `timeout`
    (RFC 5389's schedule, shortened for interactive use). None when nothing matching came back.
    """
    transactions = _Transactions(sock)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(transactions.read_forever)
        reply = await transactions.request(normalize_addr(server), change_ip, change_port, timeout,
                                           retransmits, initial_rto)
        nursery.cancel_scope.cancel()
    return reply


async def stun_probe(
    sock: trio.socket.SocketType,
    server: Addr,
    change_ip: bool = False,
    change_port: bool = False,
    timeout: float = 2.0,
    retransmits: int = 6,
) -> Addr | None:
    """The address `server` saw our request come from, or None (no answer or an error answer)."""
    reply = await stun_request(sock, server, change_ip=change_ip, change_port=change_port, timeout=timeout,
                               retransmits=retransmits)
    return _mapped(reply)


# ---- NAT probe ------------------------------------------------------------------------------


async def _run_stage(transactions: _Transactions, probes: Sequence[Probe], timeout: float,
                     retransmits: int) -> list[StunReply | None]:
    replies: list[StunReply | None] = [None] * len(probes)

    async def one(i: int, probe: Probe) -> None:
        replies[i] = await transactions.request(probe.server, probe.change_ip, probe.change_port, timeout,
                                                retransmits, 0.1)

    async with trio.open_nursery() as nursery:
        for i, probe in enumerate(probes):
            nursery.start_soon(one, i, probe)
    return replies


async def _route_sources(family: int, servers: Sequence[Addr], port: int) -> list[Addr]:
    """Our source address towards each server, asked of the routing table (connect sends nothing)."""
    local: list[Addr] = []
    for server in servers:
        with trio.socket.socket(family, stdlib_socket.SOCK_DGRAM) as s:
            try:
                await s.connect(server)
            except OSError:
                continue
            addr = (normalize_addr(s.getsockname())[0], port)
        if addr not in local:
            local.append(addr)
    return local




async def probe_nat(
    servers: Sequence[Addr],
    local_ip: str | None = None,
    *,
    port: int = 0,
    timeout: float = 1.5,
    retransmits: int = 5,
) -> NatClassification:
    """Classify the NAT between us and `servers` (IP literals; no other server is ever contacted).

    One address family per probe: `local_ip`'s, else IPv4 when any server is IPv4; servers of the
    other family are skipped, with a note. A host name raises ValueError: nothing is resolved.

    One UDP socket for everything, so mapped addresses are comparable: stage 0 asks every server,
    stage 1 runs CHANGE-REQUEST filtering tests where a server gave OTHER-ADDRESS, stage 2 asks
    alternate addresses when the servers alone do not span two IPs (see `plan_probes`). Each
    stage takes at most `timeout`.
    """
    given = list(dict.fromkeys(normalize_addr(s) for s in servers))
    versions = [ipaddress.ip_address(ip).version for ip, _ in given]
    if local_ip is not None:
        version = ipaddress.ip_address(local_ip).version
    else:
        version = 6 if versions and 4 not in versions else 4
    targets = [s for s, v in zip(given, versions) if v == version]
    skipped = [f"skipped {len(given) - len(targets)} server(s) not on IPv{version}"] if len(targets) < len(given) else []
    if not targets:
        result = classify([], [])
        return dataclasses.replace(result, notes=tuple(skipped) + result.notes)
    family = stdlib_socket.AF_INET6 if version == 6 else stdlib_socket.AF_INET
    wildcard = "::" if family == stdlib_socket.AF_INET6 else "0.0.0.0"
    mappings: list[MappingObservation] = []
    filtering: list[FilteringObservation] = []
    with trio.socket.socket(family, stdlib_socket.SOCK_DGRAM) as sock:
        await sock.bind((local_ip or wildcard, port))
        bound_port = sock.getsockname()[1]
        if local_ip is not None:
            local = [normalize_addr((local_ip, bound_port))]
        else:
            local = await _route_sources(family, targets, bound_port)
        transactions = _Transactions(sock)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(transactions.read_forever)
            stage0 = plan_probes([(s, None) for s in targets])
            replies = await _run_stage(transactions, stage0, timeout, retransmits)
            mappings += [MappingObservation(p.server, _mapped(r)) for p, r in zip(stage0, replies)]
            answered = [(p.server, r.message.other_address) for p, r in zip(stage0, replies)
                        if r is not None and _mapped(r) is not None]
            later = [p for p in plan_probes(answered) if p.stage > 0]
            contacted = {p.server for p in stage0}
            for stage in (1, 2):
                probes = [p for p in later if p.stage == stage]
                if not probes:
                    continue
                replies = await _run_stage(transactions, probes, timeout, retransmits)
                for probe, reply in zip(probes, replies):
                    if stage == 2:
                        mappings.append(MappingObservation(probe.server, _mapped(reply)))
                    elif reply is None:
                        filtering.append(FilteringObservation(probe.change_ip, probe.change_port, False))
                    elif _mapped(reply) is not None and reply.source not in contacted:
                        other_ip = reply.source[0] != probe.server[0]
                        other_port = reply.source[1] != probe.server[1]
                        filtering.append(FilteringObservation(other_ip, other_port, True))
                contacted |= {p.server for p in probes}
            nursery.cancel_scope.cancel()
    result = classify(local, mappings, filtering)
    return dataclasses.replace(result, notes=tuple(skipped) + result.notes) if skipped else result
