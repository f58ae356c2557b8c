"""The signalling server's forwarding rules, as a state machine without I/O (PROTOCOL.md).

The adapter numbers each inbound stream and reports what happens on it, with the sender's
authenticated peer ID and `now`; the server answers with actions: `Write` a message to a
stream, `CloseStream`. It forwards a caller's messages only to a peer registered here and
a registered peer's messages only to a caller with a live session to it, rate-limits every
sender, bounds every table, and counts each drop by reason.

A stream's role, and what moves it (everything is in `message`):

    NEW           --register-->                REGISTRATION  (Registered; an older registration
                                                               of the peer is closed)
    NEW           --load-->                    NEW           (Load: how many registrations are held)
    NEW, SESSION  --signal to a peer-->        SESSION       (forwarded to that registered peer)
    REGISTRATION  --ping-->                    REGISTRATION  (Pong; the registration is renewed)
    REGISTRATION  --signal to a caller-->      REGISTRATION  (forwarded to the caller's session)
    any           --any other message-->       closed        (Error bad-message, CloseStream)

Refusals that keep the stream (rate-limited, no-session, not-registered) leave its role as it
was. The adapter reports `opened` once per stream: a second `opened` is a bug and raises
ProtocolError. Messages on a stream the server has closed itself (a replaced registration) can
still arrive from the adapter's reader and are dropped.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from enum import Enum
from typing import Union

from overlay.core.errors import ProtocolError
from overlay.core.ratelimit import RateLimiter
from signaling.messages import Error, Load, Message, Ping, Pong, Register, Registered, Signal

StreamId = int


class StreamRole(Enum):
    NEW = "new"  # nothing said yet
    REGISTRATION = "registration"  # its peer is registered here for as long as it lives
    SESSION = "session"  # a caller's signalling sessions


@dataclass(frozen=True)
class ServerLimits:
    ttl: int = 60  # a registration must show life this often
    session_timeout: float = 30.0
    max_registrations: int = 1024
    max_registrations_per_ip: int = 8  # registrations over connections from one IP (a home holds a few nodes)
    max_sessions: int = 4096
    max_sessions_per_caller: int = 16
    rate: float = 5.0  # signal messages per second per peer, after
    burst: float = 20.0  # this many at once
    sweep_interval: float = 1.0


@dataclass(frozen=True)
class Write:
    stream: StreamId
    message: Message


@dataclass(frozen=True)
class CloseStream:
    stream: StreamId
    reason: str


ServerAction = Union[Write, CloseStream]


@dataclass
class _Stream:
    peer: str
    ip: str = ""  # the connection's remote IP; "" over a relayed connection (no IP to count)
    role: StreamRole = StreamRole.NEW


@dataclass
class _Registration:
    stream: StreamId
    expires: float
    ip: str = ""


@dataclass
class _Session:
    stream: StreamId
    callee: str
    expires: float


@dataclass
class ServerCounters:
    forwarded: int = 0
    dropped: Counter[str] = field(default_factory=Counter)


class SignalingServer:
    def __init__(self, limits: ServerLimits = ServerLimits()) -> None:
        self.limits = limits
        self.counters = ServerCounters()
        self._streams: dict[StreamId, _Stream] = {}
        self._registrations: dict[str, _Registration] = {}
        self._sessions: dict[tuple[str, str], _Session] = {}
        self._per_caller: Counter[str] = Counter()
        self._per_ip: Counter[str] = Counter()  # registrations by remote IP
        self._rate = RateLimiter(limits.rate, limits.burst, max_keys=limits.max_registrations + limits.max_sessions)
        self._next_sweep: float | None = None

    # ---- queries ---------------------------------------------------------------------------

    def is_registered(self, peer: str) -> bool:
        return peer in self._registrations

    @property
    def registrations(self) -> list[str]:
        return list(self._registrations)

    @property
    def sessions(self) -> int:
        return len(self._sessions)

    # ---- inputs ----------------------------------------------------------------------------

    def opened(self, stream: StreamId, peer: str, now: float, ip: str = "") -> list[ServerAction]:
        """`ip`: the remote IP of the stream's connection ("" if relayed or unknown)."""
        if stream in self._streams:
            raise ProtocolError(f"signalling server: stream {stream} opened twice")
        self._streams[stream] = _Stream(peer, ip)
        return []

    def message(self, stream: StreamId, msg: Message, now: float) -> list[ServerAction]:
        state = self._streams.get(stream)
        if state is None:
            return []  # closed by the server itself; the adapter's reader had it already
        if isinstance(msg, Register) and state.role is StreamRole.NEW:
            return self._register(stream, state, now)
        if isinstance(msg, Load) and msg.registrations is None and state.role is StreamRole.NEW:
            if not self._rate.allow(state.peer, now):
                return self._refuse(stream, "rate-limited", "too many signalling messages")
            return [Write(stream, Load(len(self._registrations)))]
        if isinstance(msg, Ping) and state.role is StreamRole.REGISTRATION:
            self._registrations[state.peer].expires = now + self.limits.ttl
            return [Write(stream, Pong())]
        if isinstance(msg, Signal) and msg.to is not None and state.role is not StreamRole.REGISTRATION:
            state.role = StreamRole.SESSION
            return self._from_caller(stream, state.peer, msg, now)
        if isinstance(msg, Signal) and msg.to is not None:
            self._registrations[state.peer].expires = now + self.limits.ttl
            return self._from_registered(stream, state.peer, msg, now)
        return self._refuse(stream, "bad-message", f"{type(msg).__name__} is not expected here", close=True)

    def bad_input(self, stream: StreamId, code: str, reason: str) -> list[ServerAction]:
        """The adapter could not decode a frame (`bad-message`) or it was too large (`too-large`)."""
        return self._refuse(stream, code, reason, close=True)

    def closed(self, stream: StreamId, now: float) -> list[ServerAction]:
        state = self._streams.pop(stream, None)
        if state is None:
            return []
        actions: list[ServerAction] = []
        reg = self._registrations.get(state.peer)
        if reg is not None and reg.stream == stream:
            del self._registrations[state.peer]
            if reg.ip:
                self._per_ip[reg.ip] -= 1
                if self._per_ip[reg.ip] <= 0:
                    del self._per_ip[reg.ip]
            for key, session in list(self._sessions.items()):
                if session.callee == state.peer:
                    self._end_session(key)
                    actions.append(Write(session.stream, Error("not-registered", "the peer left", key[1])))
        for key, session in list(self._sessions.items()):
            if session.stream == stream:
                self._end_session(key)
        return actions

    def handle_timer(self, now: float) -> list[ServerAction]:
        actions: list[ServerAction] = []
        for peer, reg in list(self._registrations.items()):
            if reg.expires <= now:
                self.counters.dropped["expired"] += 1
                actions += [CloseStream(reg.stream, "registration expired")] + self.closed(reg.stream, now)
        for key, session in list(self._sessions.items()):
            if session.expires <= now:
                self._end_session(key)
        self._next_sweep = now + self.limits.sweep_interval if (self._registrations or self._sessions) else None
        return actions

    def next_timer(self) -> float | None:
        return self._next_sweep

    # ---- rules -----------------------------------------------------------------------------

    def _register(self, stream: StreamId, state: _Stream, now: float) -> list[ServerAction]:
        actions: list[ServerAction] = []
        old = self._registrations.get(state.peer)
        if old is None and len(self._registrations) >= self.limits.max_registrations:
            return self._refuse(stream, "full", "no room for more registrations", close=True)
        if state.ip and (old is None or old.ip != state.ip) and self._per_ip[state.ip] >= self.limits.max_registrations_per_ip:
            return self._refuse(stream, "full", f"{self.limits.max_registrations_per_ip} registrations from {state.ip} already", close=True)
        if old is not None:
            actions += [CloseStream(old.stream, "registered again on another stream")] + self.closed(old.stream, now)
        state.role = StreamRole.REGISTRATION
        self._registrations[state.peer] = _Registration(stream, now + self.limits.ttl, state.ip)
        if state.ip:
            self._per_ip[state.ip] += 1
        self._arm(now)
        return actions + [Write(stream, Registered(self.limits.ttl))]

    def _from_caller(self, stream: StreamId, caller: str, msg: Signal, now: float) -> list[ServerAction]:
        assert msg.to is not None
        if not self._rate.allow(caller, now):
            return self._refuse(stream, "rate-limited", "too many signalling messages", session=msg.session)
        key = (caller, msg.session)
        session = self._sessions.get(key)
        if session is None:
            if msg.kind != "offer":
                return self._refuse(stream, "no-session", "a session starts with an offer", session=msg.session)
            if msg.to not in self._registrations:
                return self._refuse(stream, "not-registered", f"{msg.to} is not registered here", session=msg.session)
            if len(self._sessions) >= self.limits.max_sessions or self._per_caller[caller] >= self.limits.max_sessions_per_caller:
                return self._refuse(stream, "full", "too many open sessions", session=msg.session)
            session = self._sessions[key] = _Session(stream, msg.to, now)
            self._per_caller[caller] += 1
        elif session.stream != stream or session.callee != msg.to:
            return self._refuse(stream, "no-session", "that session belongs to another stream or peer", session=msg.session)
        reg = self._registrations.get(session.callee)
        if reg is None:
            self._end_session(key)
            return self._refuse(stream, "not-registered", f"{msg.to} is not registered here", session=msg.session)
        return self._forward(key, session, reg.stream, Signal(msg.session, msg.kind, msg.body, sender=caller), now)

    def _from_registered(self, stream: StreamId, peer: str, msg: Signal, now: float) -> list[ServerAction]:
        assert msg.to is not None
        if not self._rate.allow(peer, now):
            return self._refuse(stream, "rate-limited", "too many signalling messages", session=msg.session)
        key = (msg.to, msg.session)
        session = self._sessions.get(key)
        if session is None or session.callee != peer:
            return self._refuse(stream, "no-session", "no such session with that caller", session=msg.session)
        return self._forward(key, session, session.stream, Signal(msg.session, msg.kind, msg.body, sender=peer), now)

    def _forward(self, key: tuple[str, str], session: _Session, to: StreamId, msg: Signal, now: float) -> list[ServerAction]:
        self.counters.forwarded += 1
        session.expires = now + self.limits.session_timeout
        self._arm(now)
        if msg.kind == "bye":
            self._end_session(key)
        return [Write(to, msg)]

    def _end_session(self, key: tuple[str, str]) -> None:
        if self._sessions.pop(key, None) is not None:
            self._per_caller[key[0]] -= 1
            if self._per_caller[key[0]] <= 0:
                del self._per_caller[key[0]]

    def _refuse(self, stream: StreamId, code: str, reason: str, session: str | None = None, close: bool = False) -> list[ServerAction]:
        self.counters.dropped[code] += 1
        actions: list[ServerAction] = [Write(stream, Error(code, reason, session))]
        if close:
            actions.append(CloseStream(stream, reason))
        return actions

    def _arm(self, now: float) -> None:
        if self._next_sweep is None:
            self._next_sweep = now + self.limits.sweep_interval
