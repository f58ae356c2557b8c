"""The channel relay (WSRelay) of one node, without I/O: the INM command protocol, link
handshakes, onboarding, announcements and channel messages, as events in and actions out.

The node's trio adapter (service.py) and the simulator (simulations/channels.py) both drive this
class; neither decides anything about the protocol itself. PROTOCOL.md is the wire format.

Events (each takes the explicit `now`, a monotonic clock; reservations carry wall-clock
milliseconds, the only time nodes compare, which the `wall_ms` collaborator gives):

    link_up(peer)            our stream to a neighbour is open -> onboarding commands to it
    link_down(peer)          that stream failed; it may come back
    link_gone(peer)          the link is given up: forget where it said channels were open
    receive(inm, came_from)  an envelope from a neighbour -> forwards, answers, deliveries
    subscribe / unsubscribe / drop_client / publish    a local client's requests
    refresh                  re-announce open channels (every REFRESH seconds)
    tick                     give up on responses that did not come in time
    send / command / notify / broadcast / reply        envelopes made here (also for other
                             protocols riding on INM, through `register`)

Actions:

    SendEnvelope(inm, targets, channel)  queue the envelope on each target's link (the adapter
                                         dials a target that is not a neighbour)
    Deliver(clients, channel, message, nonce)   a channel message to local clients
    ToClient(client, response)           an unsolicited response (an eviction)
    AnswerLocally(inm)                   a command only the adapter can answer (node-stats,
                                         host-stats, get-latency): it calls `reply`
    CutLink(peer)                        close the stream `peer` writes to us on (it passed on
                                         a forged signature)

A command's response is matched by nonce to what sent the command, for COMMAND_TIMEOUT seconds:
a response nobody waits for is dropped and counted, as is a duplicate or unroutable envelope.
An envelope is believed only from its source's own stream, or signed by its source, recent and
new; a signature is checked whenever there is one, and only signed envelopes are passed on
(`_unauthentic`; the signed format is in inm.py): nothing acts on a claimed source.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from collections.abc import Callable
from dataclasses import replace
from typing import NamedTuple

from overlay.channels.inm import BROADCAST, CommandHandler, Inm, new_nonce
from overlay.channels.router import InmRouter
from overlay.channels.stats import Traffic
from overlay.channels.table import Change, ChannelTable, Reservation, valid_channel_name, valid_hash
from overlay.core.errors import DecodeError
from overlay.core.jsonwire import loads
from overlay.core.metrics import Counter
from overlay.core.replay import ReplayWindow

COMMAND_TIMEOUT = 5.0
TOKEN_TTL = 60.0
MAX_TOKENS = 1024
MAX_CHANNEL_TRAFFIC = 1000  # channels whose traffic is kept for node-stats
MAX_INTRODUCTIONS = 256  # get-node-connection commands waiting for their target's token
MAX_SKEW = 60.0  # seconds a signed envelope's time may differ from ours
MAX_SIGNED = 262_144  # (source, nonce) pairs of signed envelopes remembered, in all
MAX_SIGNED_PER_SOURCE = 65_536  # ... and per source (some 500 broadcasts a second sustained), so one identity cannot take them all
BAD_SIGNATURE = "bad signature"
ANNOUNCE = "channel-open"  # our extension: where a channel is open (no response)
LOCAL_COMMANDS = frozenset({"node-stats", "host-stats", "get-latency"})
OWN_COMMANDS = frozenset({ANNOUNCE, "get-connection-token", "list-nodes", "list-channels", "list-reserved-channels",
                          "reserve-channel", "unreserve-channel", "get-node-connection"}) | LOCAL_COMMANDS


# Actions are named tuples, not frozen dataclasses: one is made per envelope and hop, and a
# frozen dataclass costs several times as much to build (the simulator's floods make millions).


class SendEnvelope(NamedTuple):
    inm: Inm
    targets: tuple[str, ...]
    channel: str = ""  # the channel of a channel message ("" for control), for per-channel drop counts


class Deliver(NamedTuple):
    clients: tuple[object, ...]
    channel: str
    message: str
    nonce: str


class ToClient(NamedTuple):
    client: object
    data: dict


class AnswerLocally(NamedTuple):
    inm: Inm


class CutLink(NamedTuple):
    """Close the stream this neighbour writes to us on: it passed on a forged envelope."""

    peer: str


RelayAction = SendEnvelope | Deliver | ToClient | AnswerLocally | CutLink
ResponseHandler = Callable[[Inm, float], "list[RelayAction] | None"]
TimeoutHandler = Callable[[float], "list[RelayAction]"]


LINK_PROOF_DOMAIN = b"overlay-inm-link-proof-v1\0"


def link_proof(token: str, sender: str, receiver: str) -> str:
    """HMAC-SHA256 under a private network's token over the domain and both peer IDs: it shows
    the receiver that the sender holds the token, and admits only that sender to that receiver,
    so a stranger that collects proofs by being linked to can use none of them elsewhere. A
    guessable token can be guessed offline from a proof: it must be random."""
    message = LINK_PROOF_DOMAIN + sender.encode() + b"\0" + receiver.encode()
    return hmac.new(token.encode(), message, hashlib.sha256).hexdigest()


class ChannelRelay:
    def __init__(self, me: str, wall_ms: Callable[[], int], sign: Callable[[Inm], str], verify: Callable[[Inm], bool],
                 network_token: str = "", received: Counter | None = None, dropped: Counter | None = None) -> None:
        """`sign` signs an envelope as this node (inm.sign with the identity key), `verify`
        checks a source's signature (inm.verify); `received` counts envelopes handled here by
        type, `dropped` those refused by reason."""
        self.me = me
        self.wall_ms = wall_ms
        self.sign = sign
        self.verify = verify
        self.replay = ReplayWindow(MAX_SKEW, MAX_SIGNED, MAX_SIGNED_PER_SOURCE)
        self.network_token = network_token
        self.table = ChannelTable(me)
        self.router = InmRouter(me)
        self.neighbours: list[str] = []
        self.traffic = Traffic()
        self.channel_traffic: dict[str, Traffic] = {}
        self.received = received if received is not None else Counter()
        self.dropped = dropped if dropped is not None else Counter()
        self._handlers: dict[str, CommandHandler] = {}
        # nonce -> (until, on_response, on_timeout, one answer only): a command's, or a broadcast's many
        self._waiting: dict[str, tuple[float, ResponseHandler, TimeoutHandler | None, bool]] = {}
        self._tokens: dict[str, tuple[str, float]] = {}  # token -> (node, expiry)
        self._introducing = 0  # get-node-connection commands in flight

    # ---- links ----

    def hello(self, peer: str) -> bytes:
        """Our side of the link handshake (WSRelay's `WS /node` one) to `peer`: in a private
        network, a proof that we hold its token, never the token itself."""
        data: dict = {"name": self.me}
        if self.network_token:
            data["proof"] = link_proof(self.network_token, self.me, peer)
        return json.dumps({"command": "handshake", "data": data}).encode()

    def accept_handshake(self, peer: str, raw: bytes | None, now: float) -> bool:
        """The name must be the Noise-authenticated peer; in a private network the hello must
        prove the network's token for this sender and this receiver, or carry a one-time token
        issued to that name (single use: a failed attempt wipes it)."""
        try:
            hello = loads(raw or b"", "INM link hello")
            data = hello["data"]
            name, token, proof = data["name"], data.get("token", ""), data.get("proof", "")
        except (DecodeError, TypeError, KeyError):
            return False
        if hello.get("command") != "handshake" or name != peer:
            return False
        if not self.network_token:
            return True
        if isinstance(proof, str) and hmac.compare_digest(proof.encode(), link_proof(self.network_token, peer, self.me).encode()):
            return True
        issued = self._tokens.pop(str(token), None)
        return issued is not None and issued[0] == peer and issued[1] > now

    def link_up(self, peer: str, now: float) -> list[RelayAction]:
        """A new neighbour: onboard, WSRelay-style, by taking its open and reserved channels."""
        if peer not in self.neighbours:
            self.neighbours = [*self.neighbours, peer]
        out: list[RelayAction] = []
        for command, is_open in (("list-channels", True), ("list-reserved-channels", False)):
            out += self.command(peer, {"command": command}, now, self._onboarding(peer, is_open))
        return out

    def link_down(self, peer: str) -> None:
        if peer in self.neighbours:
            self.neighbours = [p for p in self.neighbours if p != peer]

    def link_gone(self, peer: str) -> None:
        self.link_down(peer)
        self.table.forget_node(peer)

    def _onboarding(self, peer: str, is_open: bool) -> ResponseHandler:
        def on_listing(inm: Inm, now: float) -> list[RelayAction]:
            listing = inm.data.get("channels") if isinstance(inm.data, dict) else None
            out: list[RelayAction] = []
            for item in listing if isinstance(listing, list) else []:
                try:
                    name, reservation = self._reservation(peer, {"channel": item["name"], **item})
                except (KeyError, TypeError, ValueError):
                    self.dropped.inc(reason="bad listing")
                    continue
                if is_open:
                    out += self._apply(name, self.table.announce(peer, name, reservation, True, now), now)
                else:
                    out += self._apply(name, self.table.reserve(name, reservation, now)[1], now)
            return out

        return on_listing

    # ---- envelopes made here ----

    def send(self, inm: Inm, now: float, channel: str = "") -> list[RelayAction]:
        """An envelope we made: unicast, or "*" to every neighbour."""
        route = self.router.route(inm, None, self.neighbours, now)
        return [SendEnvelope(inm, route.forward, channel)] if route.forward else []

    def command(self, node: str, data: dict, now: float, on_response: ResponseHandler,
                timeout: float = COMMAND_TIMEOUT, on_timeout: TimeoutHandler | None = None) -> list[RelayAction]:
        """A command to one node; its response goes to `on_response` for `timeout` seconds,
        after which `tick` calls `on_timeout`."""
        nonce = new_nonce()
        self._waiting[nonce] = (now + timeout, on_response, on_timeout, True)
        return self.send(Inm(self.me, node, "command", nonce, data), now)

    def notify(self, node: str, data: dict, now: float) -> list[RelayAction]:
        """A command that is not answered (the receiver may send one of its own)."""
        return self.send(Inm(self.me, node, "command", new_nonce(), data), now)

    def broadcast(self, data: dict, now: float, on_response: ResponseHandler | None = None,
                  answered: bool = True) -> list[RelayAction]:
        """A command to every node, each once; responses go to `on_response` for
        COMMAND_TIMEOUT seconds (announcements and `answered=False` commands have none)."""
        nonce = new_nonce()
        if answered and data.get("command") != ANNOUNCE:
            self._waiting[nonce] = (now + COMMAND_TIMEOUT, on_response or (lambda inm, now: None), None, False)
        unsigned = Inm(self.me, BROADCAST, "command", nonce, data, self.wall_ms())
        return self.send(replace(unsigned, sig=self.sign(unsigned)), now)  # passed on by every node: signed

    def reply(self, command: Inm, data: dict, now: float) -> list[RelayAction]:
        return self.send(command.reply(self.me, data), now)

    def register(self, command: str, handler: CommandHandler) -> None:
        """Another protocol's INM command: `handler` takes each one addressed here and returns
        the response's data, or None for no response. One handler per command."""
        if command in self._handlers or command in OWN_COMMANDS:
            raise ValueError(f"INM command {command!r} is taken")
        self._handlers[command] = handler

    # ---- envelopes received ----

    def receive(self, inm: Inm, came_from: str, now: float) -> list[RelayAction]:
        if inm.source == self.me:
            self.dropped.inc(reason="own")
            return []
        if inm.source != came_from or inm.sig:
            refused = self._unauthentic(inm)
            if refused == BAD_SIGNATURE:
                # Every node verifies what it passes on, and a source signs its own: a neighbour
                # that hands us a bad signature is lying. Cut its link, or it could make us verify
                # forever.
                self.dropped.inc(reason=refused)
                return [CutLink(came_from)]
            if refused:
                self.dropped.inc(reason=refused)
                return []
        route = self.router.route(inm, came_from, self.neighbours, now)
        if route.dropped:
            self.dropped.inc(reason=route.dropped)
            return []
        # only what the next node can believe is passed on: a signed envelope (unsigned, only
        # its source's own stream vouches for it)
        out: list[RelayAction] = [SendEnvelope(inm, route.forward)] if route.forward and inm.sig else []
        if route.handle:
            self.received.inc(type=inm.type)
            try:
                if inm.type == "message":
                    out += self._on_message(inm, now)
                elif inm.type == "command":
                    out += self._on_command(inm, now)
                else:
                    out += self._on_response(inm, now)
            except (KeyError, TypeError, ValueError, AttributeError):
                self.dropped.inc(reason="bad data")
        return out

    def _unauthentic(self, inm: Inm) -> str | None:
        """Why a signed envelope, or one its source did not hand us itself, cannot be believed
        (None: it can): it must be signed by its source, made within MAX_SKEW of our clock, and
        new."""
        if self.router.was_seen(inm):
            return "duplicate"  # the flood's copies: not worth a verification
        if not inm.sig:
            return "unauthenticated source"
        if not self.verify(inm):
            return BAD_SIGNATURE
        return self.replay.check(inm.source.encode(), inm.nonce.encode(), inm.at / 1000, self.wall_ms() / 1000)

    def _on_response(self, inm: Inm, now: float) -> list[RelayAction]:
        waiting = self._waiting.get(inm.nonce)
        if waiting is None or waiting[0] <= now:
            self.dropped.inc(reason="unexpected response")
            return []
        if waiting[3]:  # a command's one answer: its timeout must not fire as well
            del self._waiting[inm.nonce]
        return waiting[1](inm, now) or []

    def _on_command(self, inm: Inm, now: float) -> list[RelayAction]:
        data = inm.data
        name = data.get("command") if isinstance(data, dict) else None
        if name == ANNOUNCE:
            reservation_name, reservation = self._reservation(inm.source, data)
            change = self.table.announce(inm.source, reservation_name, reservation, bool(data.get("open")), now)
            return self._apply(reservation_name, change, now)
        if name in self._handlers:  # other protocols' commands (MessageNet, Degas)
            answer = self._handlers[name](inm)
            return self.reply(inm, answer, now) if answer is not None else []
        if name in LOCAL_COMMANDS:
            return [AnswerLocally(inm)]
        if name == "get-node-connection":
            return self._get_node_connection(inm, now)
        if name == "reserve-channel":
            channel, reservation = self._reservation(inm.source, data)
            reason, change = self.table.reserve(channel, reservation, now)
            return self._apply(channel, change, now) + self.reply(inm, _result(reason), now)
        if name == "unreserve-channel":
            return self.reply(inm, _result(self.table.unreserve(data["channel"], now)), now)
        answers: dict[str, Callable[[], dict]] = {
            "get-connection-token": lambda: self._issue_token(inm, now),
            "list-nodes": lambda: {"nodes": sorted(self.neighbours)},
            "list-channels": lambda: {"channels": self.table.listing(open_only=True)},
            "list-reserved-channels": lambda: {"channels": self.table.listing(open_only=False)},
        }
        answer = answers.get(name)
        return self.reply(inm, answer() if answer else {"ok": False, "reason": "unknown command"}, now)

    def _get_node_connection(self, inm: Inm, now: float) -> list[RelayAction]:
        """WSRelay's introduction: a one-time token from the target, for the asking node."""
        target = inm.data.get("node")
        if not isinstance(target, str) or target not in self.neighbours:
            return self.reply(inm, {"ok": False, "reason": "target not connected"}, now)
        if self._introducing >= MAX_INTRODUCTIONS:  # each holds a waiting response and costs a command
            self.dropped.inc(reason="introductions busy")
            return self.reply(inm, {"ok": False, "reason": "busy"}, now)
        self._introducing += 1

        def unanswered(now: float) -> list[RelayAction]:
            self._introducing -= 1
            return self.reply(inm, {"ok": False, "reason": "target not connected"}, now)

        def on_token(answer: Inm, now: float) -> list[RelayAction]:
            token = answer.data.get("token") if isinstance(answer.data, dict) else None
            if not isinstance(token, str):
                return unanswered(now)
            self._introducing -= 1
            return self.reply(inm, {"ok": True, "host": f"/p2p/{target}", "token": token}, now)

        return self.command(target, {"command": "get-connection-token", "node": inm.source}, now, on_token,
                            on_timeout=unanswered)

    def _issue_token(self, inm: Inm, now: float) -> dict:
        """A one-time token that lets `node` (only) complete the INM handshake with us."""
        node = inm.data.get("node")
        if not isinstance(node, str):
            return {"ok": False, "reason": "node missing"}
        self._tokens = {t: v for t, v in self._tokens.items() if v[1] > now}
        while len(self._tokens) >= MAX_TOKENS:
            self._tokens.pop(next(iter(self._tokens)))
        token = secrets.token_urlsafe(24)
        self._tokens[token] = (node, now + TOKEN_TTL)
        return {"token": token}

    def _reservation(self, source: str, data: dict) -> tuple[str, Reservation]:
        name, password = data["channel"], data.get("password", "")
        if not valid_channel_name(name) or not valid_hash(password):
            raise ValueError("invalid channel or password hash")
        owner, at = data.get("owner", source), data.get("at")
        if not isinstance(owner, str) or not isinstance(at, int):
            owner, at = source, self.wall_ms()  # a WSRelay-style command without our fields
        return name, Reservation(at, owner, password)

    # ---- table changes ----

    def _apply(self, name: str, change: Change, now: float) -> list[RelayAction]:
        """Act on a table change: evict, announce, unreserve."""
        out: list[RelayAction] = [ToClient(client, {"ok": False, "reason": "channel reserved elsewhere", "channel": name})
                                  for client in change.evicted]
        if change.reserved is not None:
            out += self.broadcast({"command": "reserve-channel", **change.reserved.to_json(name)}, now)
        if change.opened:
            out += self._announce(name, True, now)
        if change.closed:
            out += self._closed(name, now)
        return out

    def _announce(self, name: str, is_open: bool, now: float) -> list[RelayAction]:
        reservation = self.table.reservation(name)
        if reservation is None:
            return []
        return self.broadcast({"command": ANNOUNCE, "open": is_open, **reservation.to_json(name)}, now)

    def _closed(self, name: str, now: float) -> list[RelayAction]:
        """The last local subscriber left: announce it; if the channel is open nowhere else,
        unreserve it, and reserve it again if a node answers that it still has clients."""
        reservation = self.table.reservation(name)
        if reservation is None:
            return []
        out = self._announce(name, False, now)
        if self.table.open_elsewhere(name) or self.table.subscribers(name):
            return out

        def on_answer(inm: Inm, now: float) -> list[RelayAction]:
            if isinstance(inm.data, dict) and inm.data.get("reason") == "channel still open":
                self.table.reserve(name, reservation, now)
                return self.broadcast({"command": "reserve-channel", **reservation.to_json(name)}, now)
            return []

        self.table.unreserve(name, now)
        return out + self.broadcast({"command": "unreserve-channel", "channel": name}, now, on_answer)

    def refresh(self, now: float) -> list[RelayAction]:
        """Re-announce open channels and expire what lapsed (table.py's soft state)."""
        return [action for name in self.table.expire(now) for action in self._announce(name, True, now)]

    def tick(self, now: float) -> list[RelayAction]:
        """Give up on responses that did not come in time."""
        expired = [w for w in self._waiting.values() if w[0] <= now]
        if not expired:
            return []
        self._waiting = {nonce: w for nonce, w in self._waiting.items() if w[0] > now}
        return [action for _, _, on_timeout, _ in expired if on_timeout for action in on_timeout(now)]

    # ---- channel messages ----

    def _on_message(self, inm: Inm, now: float) -> list[RelayAction]:
        name, text = inm.data["channel"], inm.data["message"]
        if not isinstance(name, str) or not isinstance(text, str):
            raise ValueError("channel and message must be strings")
        try:
            message = base64.b64decode(text, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise ValueError("message is not base64 of UTF-8") from None
        nonce = inm.data.get("nonce", inm.nonce)
        self._count(name, len(message), now)
        return self._deliver(name, message, nonce if isinstance(nonce, str) else inm.nonce, None)

    def _deliver(self, name: str, message: str, nonce: str, sender: object | None) -> list[RelayAction]:
        clients = tuple(c for c in self.table.subscribers(name) if c != sender)
        return [Deliver(clients, name, message, nonce)] if clients else []

    def _count(self, name: str, size: int, now: float) -> None:
        self.traffic.record(now, size)
        traffic = self.channel_traffic.get(name)
        if traffic is None:
            if len(self.channel_traffic) >= MAX_CHANNEL_TRAFFIC:
                self.channel_traffic = {n: t for n, t in self.channel_traffic.items() if n in self.table.channels}
            traffic = self.channel_traffic[name] = Traffic()
        traffic.record(now, size)

    # ---- local clients ----

    def publish(self, client: object, name: str, message: str, nonce: str, now: float) -> tuple[str | None, list[RelayAction]]:
        """A local client sends to a channel: its other local subscribers, then each node where
        the channel is open, one unicast each over that node's link (so in order)."""
        if not self.table.subscribed(client, name):
            return "not subscribed", []
        self._count(name, len(message), now)
        out = self._deliver(name, message, nonce, client)
        data = {"message": base64.b64encode(message.encode()).decode(), "channel": name, "nonce": nonce}
        for node in self.table.open_elsewhere(name):  # each envelope its own nonce: clients reuse theirs
            out += self.send(Inm(self.me, node, "message", new_nonce(), data), now, channel=name)
        return None, out

    def subscribe(self, client: object, name: str, password_hash: str, now: float) -> tuple[str | None, list[RelayAction]]:
        reason, change = self.table.subscribe(client, name, password_hash, now, self.wall_ms())
        return reason, self._apply(name, change, now)

    def unsubscribe(self, client: object, name: str, now: float) -> tuple[str | None, list[RelayAction]]:
        reason, change = self.table.unsubscribe(client, name, now)
        return reason, self._apply(name, change, now)

    def drop_client(self, client: object, now: float) -> list[RelayAction]:
        return [action for name in self.table.drop_client(client, now) for action in self._closed(name, now)]


def _result(reason: str | None) -> dict:
    return {"ok": False, "reason": reason} if reason else {"ok": True}
