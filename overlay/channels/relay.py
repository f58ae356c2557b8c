"""The channel relay (WSRelay) of one node, without I/O: the INM command protocol, link
handshakes, onboarding, reservations, channel membership and channel messages, as events in and
actions out.

The node's trio adapter (service.py) and the simulator (simulations/channels.py) both drive this
class; neither decides anything about the protocol itself. PROTOCOL.md is the wire format.

Events (each takes the explicit `now`, a monotonic clock; reservations carry wall-clock
milliseconds, the only time nodes compare, which the `wall_ms` collaborator gives):

    link_up(peer)            our stream to a neighbour is open -> onboarding commands to it
    link_down(peer)          that stream failed; it may come back
    link_gone(peer)          the link is given up: it is no channel's member any more
    receive(inm, came_from)  an envelope from a neighbour -> forwards, answers, deliveries
    subscribe / unsubscribe / drop_client / publish    a local client's requests
    tick                     give up on responses that did not come in time; look open
                             channels' reservations (KEEP) and members (MEMBERS_EVERY) up
                             again when due; mesh heartbeats and gaps (mesh.py); attach to
                             broadcast parents (behind NAT); `next_timer` says when to call it
    send / command / notify / broadcast / reply        envelopes made here (also for other
                             protocols riding on INM, through `register`)

Actions:

    SendEnvelope(inm, targets, channel)  queue the envelope on each target's link (the adapter
                                         dials a target that is not a neighbour)
    Deliver(clients, channel, message, nonce)   a channel message to local clients
    Answer(client, nonce, reason)        the answer to a subscribe (None: subscribed)
    ToClient(client, response)           an unsolicited response (an eviction)
    DhtGet(key, then)                    look a DHT record up; `then(values, now)` gives actions
    DhtPut(key, value)                   store a record on the DHT (a reservation, a release)
    Provide(key) / Unprovide(key)        be (no longer) a provider of a channel's members key
    FindProviders(key, then)             the providers of a key; `then(peer IDs, now)`
    AnswerLocally(inm)                   a command only the adapter can answer (node-stats,
                                         host-stats, get-latency): it calls `reply`
    CutLink(peer)                        close the stream `peer` writes to us on (it passed on
                                         a forged signature)

Reservations are signed DHT records (reservation.py: the format and the first-come rule): the
first subscriber of a channel on a node looks it up, and reserves it if nobody has, confirming
once concurrent reservations have settled (SETTLE); one node where it is open (its keeper:
`_keeper`) looks it up again every KEEP seconds and puts it again, so it lives while the channel
is open anywhere; a node that finds another reservation won evicts its subscribers. Only the
owner releases it, when its last subscriber leaves and it knows the channel open nowhere else.
Password channels' messages are sealed end to end (sealing.py).

Membership. The nodes where a channel is open are its members, and its messages go to them
only: from the publisher's node to each of a small channel's, over a mesh among a large
channel's (mesh.py: the structure, per-publisher order and once-only delivery, repair). A node
where a channel opens provides the channel's members key in the DHT, looks the other providers
up and sends each `channel-join`; a member that has the channel open answers with some members
it knows, which the joiner joins too (up to KNOW_ENOUGH), and adds the joiner. A password
channel's join carries a proof that the joiner holds the channel's key (`join_proof`), so only
nodes whose clients gave the password receive its boxes. A node whose channel closes sends
`channel-leave` to its members and stops providing; one whose link is given up stops being a
member; providers are looked up again after SETTLE and every MEMBERS_EVERY seconds, to repair
what a lost join missed. A node where a channel is closed carries nothing of it.

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
import random
import secrets
from collections.abc import Callable
from dataclasses import replace
from typing import NamedTuple

from overlay.channels import mesh as meshes
from overlay.channels.inm import BROADCAST, LEAF, MEMBERS, CommandHandler, Inm, new_nonce
from overlay.channels.mesh import ChannelMesh, Control, MeshAction, Release, Resend
from overlay.channels.router import InmRouter
from overlay.channels.stats import Traffic
from overlay.channels import reservation as reservations
from overlay.channels.reservation import KEEP, SETTLE, Reservation, reservation_key, resolve
from overlay.channels.sealing import ChannelSecret, open_sealed, seal
from overlay.channels.table import Change, ChannelTable, valid_channel_name
from overlay.core.errors import DecodeError
from overlay.core.jsonwire import loads
from overlay.core.metrics import Counter
from overlay.core.replay import ReplayWindow
from overlay.kademlia.store import provider_key

COMMAND_TIMEOUT = 5.0
TOKEN_TTL = 60.0
MAX_TOKENS = 1024
MAX_CHANNEL_TRAFFIC = 1000  # channels whose traffic is kept for node-stats
MAX_INTRODUCTIONS = 256  # get-node-connection commands waiting for their target's token
MAX_SKEW = 60.0  # seconds a signed envelope's time may differ from ours
MAX_SIGNED = 262_144  # (source, nonce) pairs of signed envelopes remembered, in all
MAX_SIGNED_PER_SOURCE = 65_536  # ... and per source (some 500 broadcasts a second sustained), so one identity cannot take them all
BAD_SIGNATURE = "bad signature"
JOIN, LEAVE = "channel-join", "channel-leave"  # our extensions: membership between member nodes
MEMBERS_EVERY = 600.0  # seconds between two lookups of an open channel's other members
MAX_JOINS = 64  # joins sent at once for one channel (more come from the next answers and lookups)
MEMBER_SAMPLE = 16  # members a join's answer names
JOIN_DOMAIN = b"overlay-channel-join-v1\0"
TREES = 2  # a broadcast travels two prefix trees, each to another contact of a bucket where it can
PARENTS = 2  # DHT servers a node outside the routing tables (behind NAT) takes broadcasts from
MAX_CHILDREN = 1_024  # nodes that take broadcasts from us; more are answered busy
ATTACH_EVERY = 120.0  # seconds between a child's attaches (a parent forgets it after three missed)
ATTACH_RETRY = 10.0
ATTACH = "broadcast-attach"
LOCAL_COMMANDS = frozenset({"node-stats", "host-stats", "get-latency"})
OWN_COMMANDS = meshes.COMMANDS | LOCAL_COMMANDS | frozenset({
    JOIN, LEAVE, ATTACH, "get-connection-token", "list-nodes", "list-channels", "list-reserved-channels", "reserve-channel",
    "unreserve-channel", "get-node-connection"})


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


class Answer(NamedTuple):
    client: object
    nonce: str
    reason: str | None  # None: subscribed


class ToClient(NamedTuple):
    client: object
    data: dict


class DhtGet(NamedTuple):
    key: bytes
    then: Callable[[list[bytes], float], "list[RelayAction]"]


class DhtPut(NamedTuple):
    key: bytes
    value: bytes


class Provide(NamedTuple):
    key: bytes


class Unprovide(NamedTuple):
    key: bytes


class FindProviders(NamedTuple):
    key: bytes
    then: Callable[[list[str], float], "list[RelayAction]"]


class AnswerLocally(NamedTuple):
    inm: Inm


class CutLink(NamedTuple):
    """Close the stream this neighbour writes to us on: it passed on a forged envelope."""

    peer: str


RelayAction = (SendEnvelope | Deliver | Answer | ToClient | DhtGet | DhtPut | Provide | Unprovide | FindProviders
               | AnswerLocally | CutLink)
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


MEMBERS_NAMESPACE = b"channel-members"


def members_key(name: str) -> bytes:
    """The provider key under which a channel's member nodes find each other."""
    return provider_key(MEMBERS_NAMESPACE, name.encode())


def join_proof(key: bytes, name: str, joiner: str, member: str) -> str:
    """HMAC-SHA256 under a password channel's key: the joiner shows the member it holds the key
    (its clients gave the password), for this channel and this pair only."""
    message = JOIN_DOMAIN + name.encode() + b"\0" + joiner.encode() + b"\0" + member.encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


class ChannelRelay:
    def __init__(self, me: str, wall_ms: Callable[[], int], sign: Callable[[Inm], str], verify: Callable[[Inm], bool],
                 sign_reservation: Callable[[Reservation], Reservation],
                 verify_reservation: Callable[[Reservation], bool] = reservations.verify,
                 network_token: str = "", received: Counter | None = None, dropped: Counter | None = None,
                 rng: random.Random | None = None,
                 tree: Callable[[int, int], list[tuple[int, list[str]]]] | None = None,
                 serving: Callable[[], bool] = lambda: True, linked: Callable[[str], bool] = lambda peer: False) -> None:
        """`sign` signs an envelope as this node (inm.sign with the identity key), `verify`
        checks a source's signature (inm.verify), and `sign_reservation`/`verify_reservation`
        the same for reservations; `received` counts envelopes handled here by type, `dropped`
        those refused by reason; `rng` picks mesh peers and member samples (the simulator's
        is seeded); `tree(scope, per_bucket)` is the DHT routing table's prefix tree
        (DhtService.tree), over which broadcasts go, and `serving` whether others' tables hold
        us (without `tree`, broadcasts are flooded over the links); `linked(peer)` whether a
        link to that node is up now (a message to it costs no dial)."""
        self.tree = tree
        self.linked = linked
        self.serving = serving
        self._parents: dict[str, None] = {}  # servers we take broadcasts from (not serving)
        self._children: dict[str, float] = {}  # nodes that take broadcasts from us -> until when
        self._attach_at: float | None = 0.0 if tree is not None else None
        self.me = me
        self.wall_ms = wall_ms
        self.sign = sign
        self.verify = verify
        self.sign_reservation = sign_reservation
        self.verify_reservation = verify_reservation
        self.replay = ReplayWindow(MAX_SKEW, MAX_SIGNED, MAX_SIGNED_PER_SOURCE)
        self.network_token = network_token
        self.table = ChannelTable(me)
        self.router = InmRouter(me)
        self.neighbours: list[str] = []
        self.traffic = Traffic()
        self.channel_traffic: dict[str, Traffic] = {}
        self.received = received if received is not None else Counter()
        self.dropped = dropped if dropped is not None else Counter()
        self.mesh = ChannelMesh(me, rng or random.Random(), lambda reason: self.dropped.inc(reason=reason))
        self._handlers: dict[str, CommandHandler] = {}
        # nonce -> (until, on_response, on_timeout, one answer only): a command's, or a broadcast's many
        self._waiting: dict[str, tuple[float, ResponseHandler, TimeoutHandler | None, bool]] = {}
        self._tokens: dict[str, tuple[str, float]] = {}  # token -> (node, expiry)
        self._introducing = 0  # get-node-connection commands in flight
        self._check_at: dict[str, float] = {}  # open channel -> when to look its reservation up again
        self._confirming: dict[str, bool] = {}  # ... and whether that is the check of our own new one
        self._members_at: dict[str, float] = {}  # open channel -> when to look its members up again
        self._joining: dict[str, set[str]] = {}  # open channel -> nodes whose answer to our join is awaited
        self._opening: dict[str, list[RelayAction]] = {}  # channel just opened -> its first clients' answers

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
        """A new neighbour: onboard, WSRelay-style, by asking which channels are open on it, and
        join it in those open here too (reservations are not copied: they are in the DHT)."""
        if peer not in self.neighbours:
            self.neighbours = [*self.neighbours, peer]
        return self.command(peer, {"command": "list-channels"}, now, self._onboarding(peer))

    def link_down(self, peer: str) -> None:
        if peer in self.neighbours:
            self.neighbours = [p for p in self.neighbours if p != peer]

    def link_gone(self, peer: str, now: float) -> None:
        self.link_down(peer)
        self.table.forget_node(peer)
        self.mesh.forget(peer, now)
        self._children.pop(peer, None)
        if peer in self._parents:  # attach to another soon
            del self._parents[peer]
            if self._attach_at is not None:
                self._attach_at = min(self._attach_at, now + 1.0)

    def _onboarding(self, peer: str) -> ResponseHandler:
        def on_listing(inm: Inm, now: float) -> list[RelayAction]:
            listing = inm.data.get("channels") if isinstance(inm.data, dict) else None
            out: list[RelayAction] = []
            for item in listing if isinstance(listing, list) else []:
                name = item.get("name") if isinstance(item, dict) else None
                if not valid_channel_name(name):
                    self.dropped.inc(reason="bad listing")
                elif self.table.secret(name) is not None and peer not in self.table.members(name):
                    out += self._join(name, [peer], now)
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
        COMMAND_TIMEOUT seconds (`answered=False` commands have none)."""
        nonce = new_nonce()
        if answered:
            self._waiting[nonce] = (now + COMMAND_TIMEOUT, on_response or (lambda inm, now: None), None, False)
        unsigned = Inm(self.me, BROADCAST, "command", nonce, data, self.wall_ms())
        signed = replace(unsigned, sig=self.sign(unsigned))  # passed on by every node: signed
        if self.tree is None:
            return self.send(signed, now)
        out: list[RelayAction] = []
        roots = list(self._parents) or self.neighbours[:TREES]  # no parent yet: neighbours are the roots
        for tree in range(TREES):
            copy = replace(signed, tree=tree)
            self.router.cover(copy, 0, now)
            if self.serving():
                out += self._pass_on(copy, (0, LEAF + 1), None, now, children=tree == 0)
            elif roots:
                out.append(SendEnvelope(replace(copy, scope=0), (roots[tree % len(roots)],)))
        return out

    def reply(self, command: Inm, data: dict, now: float) -> list[RelayAction]:
        return self.send(command.reply(self.me, data), now)

    def register(self, command: str, handler: CommandHandler) -> None:
        """Another protocol's INM command: `handler` takes each one addressed here and returns
        the response's data, or None for no response. One handler per command."""
        if command in self._handlers or command in OWN_COMMANDS:
            raise ValueError(f"INM command {command!r} is taken")
        self._handlers[command] = handler

    # ---- broadcasts over the DHT's prefix tree ----

    def _on_broadcast(self, inm: Inm, came_from: str, now: float) -> list[RelayAction]:
        """A broadcast reaches every node once, in about 2N envelopes (PROTOCOL.md, "Broadcasts"):
        it travels two prefix trees of the DHT. On each, a DHT server passes it on to one
        contact of each of its buckets from the envelope's `scope` down (another contact on
        each tree where the bucket has two), telling each the subtree it covers (its bucket
        + 1); on the first copy of either, also to the nodes attached to it. A node outside the
        routing tables passes nothing on. A later copy of a tree with a smaller scope is passed
        on to the buckets the first did not reach, checked again."""
        scope = inm.scope if inm.scope is not None else 0
        span = self.router.uncovered(inm, scope)
        if span is None:
            self.dropped.inc(reason="duplicate")
            return []
        first = not self.router.was_seen(inm)
        refused = self._unauthentic(inm, replays=first)  # a later copy: its signature again, not the replay window
        if refused:
            self.dropped.inc(reason=refused)
            return [CutLink(came_from)] if refused == BAD_SIGNATURE else []
        self.router.cover(inm, scope, now)
        out = self._pass_on(inm, span, came_from, now, children=first) if self.serving() else []
        if first:
            self.received.inc(type=inm.type)
            try:
                out += self._on_command(inm, now) if inm.type == "command" else []
            except (KeyError, TypeError, ValueError, AttributeError):
                self.dropped.inc(reason="bad data")
        return out

    def _pass_on(self, inm: Inm, span: tuple[int, int], came_from: str | None, now: float,
                 children: bool) -> list[RelayAction]:
        """Our buckets in [from, to) on the envelope's tree, and our children."""
        assert self.tree is not None
        low, high = span
        out: list[RelayAction] = []
        for bucket, peers in self.tree(low, TREES):
            if bucket >= high:
                break
            peer = peers[-1 - inm.tree] if len(peers) > inm.tree else peers[-1]
            if peer != came_from and peer != inm.source:
                out.append(SendEnvelope(replace(inm, scope=bucket + 1), (peer,)))
        attached = tuple(c for c, until in self._children.items() if until > now and c not in (came_from, inm.source))
        if children and attached:
            out.append(SendEnvelope(replace(inm, scope=LEAF), attached))
        return out

    def _on_attach(self, child: str, now: float) -> dict:
        """A node outside the routing tables takes our broadcasts (renewed every ATTACH_EVERY)."""
        if not self.serving():
            return {"ok": False, "reason": "not a DHT server"}
        if child not in self._children:
            self._children = {c: t for c, t in self._children.items() if t > now}
            if len(self._children) >= MAX_CHILDREN:
                self.dropped.inc(reason="children full")
                return {"ok": False, "reason": "busy"}
        self._children[child] = now + 3 * ATTACH_EVERY
        return {"ok": True}

    def _attach(self, now: float) -> list[RelayAction]:
        """Not serving: renew our parents and find new ones (neighbours first) up to PARENTS."""
        assert self.tree is not None
        self._children = {c: t for c, t in self._children.items() if t > now}
        self._attach_at = now + ATTACH_EVERY
        if self.serving():
            self._parents.clear()
            return []
        servers = [p for _, peers in self.tree(0, TREES) for p in peers if p not in self._parents]
        servers.sort(key=lambda p: p not in self.neighbours)
        wanted = [*self._parents, *servers[:PARENTS - len(self._parents)]]
        if len(wanted) < PARENTS:
            self._attach_at = now + ATTACH_RETRY
        out: list[RelayAction] = []
        for parent in wanted:
            out += self.command(parent, {"command": ATTACH}, now, lambda inm, now, p=parent: self._attached(p, inm, now),
                                on_timeout=lambda now, p=parent: self._attached(p, None, now))
        return out

    def _attached(self, parent: str, answer: Inm | None, now: float) -> list[RelayAction]:
        if answer is not None and isinstance(answer.data, dict) and answer.data.get("ok") is True:
            self._parents[parent] = None
        else:
            self._parents.pop(parent, None)
            if self._attach_at is not None:
                self._attach_at = min(self._attach_at, now + ATTACH_RETRY)
        return []

    # ---- envelopes received ----

    def receive(self, inm: Inm, came_from: str, now: float) -> list[RelayAction]:
        if inm.source == self.me:
            self.dropped.inc(reason="own")
            return []
        if inm.type == "message":
            try:
                return self._on_message(inm, came_from, now)
            except (KeyError, TypeError, ValueError, AttributeError):
                self.dropped.inc(reason="bad data")
                return []
        if inm.destination == BROADCAST and self.tree is not None:
            return self._on_broadcast(inm, came_from, now)
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
                if inm.type == "command":
                    out += self._on_command(inm, now)
                else:
                    out += self._on_response(inm, now)
            except (KeyError, TypeError, ValueError, AttributeError):
                self.dropped.inc(reason="bad data")
        return out

    def _unauthentic(self, inm: Inm, replays: bool = True) -> str | None:
        """Why a signed envelope, or one its source did not hand us itself, cannot be believed
        (None: it can): it must be signed by its source, made within MAX_SKEW of our clock, and
        new — by (source, nonce) in the replay window, or (`replays=False`, channel messages)
        by the mesh's per-origin sequence, which the caller checked."""
        if replays and self.router.was_seen(inm):
            return "duplicate"  # the flood's copies: not worth a verification
        if not inm.sig:
            return "unauthenticated source"
        if not self.verify(inm):
            return BAD_SIGNATURE
        if not replays:
            return "stale" if abs(inm.at - self.wall_ms()) > MAX_SKEW * 1000 else None
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
        if name == JOIN:
            return self.reply(inm, self._on_join(inm, now), now)
        if name == LEAVE:
            self.table.remove_member(data["channel"], inm.source)
            self.mesh.remove(data["channel"], inm.source, now)
            return []
        if name in meshes.COMMANDS:
            return self._mesh_actions(self._on_mesh_command(name, inm.source, data, now), now)
        if name == ATTACH:
            return self.reply(inm, self._on_attach(inm.source, now), now)
        if name in self._handlers:  # other protocols' commands (MessageNet, Degas)
            answer = self._handlers[name](inm)
            return self.reply(inm, answer, now) if answer is not None else []
        if name in LOCAL_COMMANDS:
            return [AnswerLocally(inm)]
        if name == "get-node-connection":
            return self._get_node_connection(inm, now)
        answers: dict[str, Callable[[], dict]] = {
            "get-connection-token": lambda: self._issue_token(inm, now),
            "list-nodes": lambda: {"nodes": sorted(self.neighbours)},
            "list-channels": lambda: {"channels": self.table.listing()},
            "list-reserved-channels": lambda: {"channels": self.table.listing()},
            "reserve-channel": lambda: _result(self._compare_reservation(data, released=False)),
            "unreserve-channel": lambda: _result(self._compare_reservation(data, released=True)),
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

    def _compare_reservation(self, data: dict, released: bool) -> str | None:
        """WSRelay's reserve-channel / unreserve-channel from another node: a signed record
        (a reservation, or its owner's release), compared with the one our clients proved. They
        change nothing here: reservations are DHT records, and a store applies the first-come
        rule to what is put there."""
        try:
            record = reservations.parse(data)
        except DecodeError as e:
            return str(e)
        if record.released != released or not self.verify_reservation(record):
            return "not signed by its owner"
        held = self.table.reservation(record.channel)
        if held is None:
            return None
        if released:
            return "channel still open"
        return None if held == record else "channel already reserved"

    # ---- reservations and table changes ----

    def _apply(self, name: str, change: Change, now: float) -> list[RelayAction]:
        """Act on a table change: answer, evict, look up, join, leave, release."""
        answers = [Answer(client, nonce, reason) for client, nonce, reason in change.answers]
        if change.opened:  # the first clients are answered once the members are joined: then a send reaches them
            self._opening[name] = [a for a in answers if a.reason is None]
            answers = [a for a in answers if a.reason is not None]
        out: list[RelayAction] = list(answers)
        out += [ToClient(client, {"ok": False, "reason": "channel reserved elsewhere", "channel": name})
                for client in change.evicted]
        if change.look:
            out.append(DhtGet(reservation_key(name), lambda values, now: self._found(name, values, now)))
        if change.opened:
            out += self._opened(name, now)
        if change.closed:
            out += self._closed(name, now)
        return out

    def _found(self, name: str, values: list[bytes], now: float) -> list[RelayAction]:
        """The lookup of a channel clients wait for: the DHT's reservation, or ours if none."""
        record, out = resolve(values, self.verify_reservation), []
        if record is None:
            secret = self.table.first_waiting(name)
            if secret is None:
                return []  # the clients left meanwhile
            record = self.sign_reservation(Reservation(name, self.me, self.wall_ms(), secret.verifier))
            out.append(DhtPut(reservation_key(name), record.encode()))
        change = self.table.found(name, record)
        if change.opened:  # ours: confirm once concurrent reservations have settled
            mine = record.owner == self.me
            self._check_at[name] = now + (SETTLE + 1 if mine else KEEP)
            self._confirming[name] = mine
        return out + self._apply(name, change, now)

    def _check(self, name: str, values: list[bytes], now: float) -> list[RelayAction]:
        """An open channel's reservation, looked up again: evict if another won; put the winner
        again to keep it alive; reserve anew (same password) if it lapsed or was released."""
        held = self.table.reservation(name)
        if held is None:
            return []
        winner = resolve(values, self.verify_reservation)
        if winner is None:
            winner = self.sign_reservation(Reservation(name, self.me, self.wall_ms(), held.verifier))
            self.table.readopt(name, winner)
        out = self._apply(name, self.table.checked(name, winner), now)
        if self.table.reservation(name) is not None:
            self._check_at[name] = now + KEEP
            out.append(DhtPut(reservation_key(name), winner.encode()))
        return out

    def _keeper(self, name: str) -> bool:
        """Who keeps an open channel's reservation alive (looks it up and puts it again every
        KEEP): its owner while the channel is open there, else the smallest peer ID among the
        nodes where it is open. One node per channel, so the DHT work does not grow with members."""
        held = self.table.reservation(name)
        if held is None:
            return False
        members = self.table.members(name)
        return held.owner == self.me or (held.owner not in members and self.me == min([self.me, *members]))

    def _closed(self, name: str, now: float) -> list[RelayAction]:
        """The last local subscriber left: leave the members, stop providing; the owner releases
        the reservation if no other member is known (others' stays until it lapses or its owner
        frees it)."""
        for timers in (self._check_at, self._confirming, self._members_at, self._joining, self._opening):
            timers.pop(name, None)
        self.mesh.close(name)
        record, members = self.table.closed(name)
        out: list[RelayAction] = [Unprovide(members_key(name))]
        for node in members:
            out += self.notify(node, {"command": LEAVE, "channel": name}, now)
        if record is not None and record.owner == self.me and not members:
            release = Reservation(name, self.me, max(self.wall_ms(), record.at + 1), record.verifier, released=True)
            out.append(DhtPut(reservation_key(name), self.sign_reservation(release).encode()))
        return out

    # ---- membership ----

    def _opened(self, name: str, now: float) -> list[RelayAction]:
        """The channel opened here: provide its members key and join the providers; look them up
        again once concurrent openers have provided too."""
        self._members_at[name] = now + SETTLE + 1
        self.mesh.open(name, self.wall_ms())
        return [Provide(members_key(name)), self._find_members(name)]

    def _find_members(self, name: str) -> FindProviders:
        def found(providers: list[str], now: float) -> list[RelayAction]:
            return self._join(name, providers, now) + self._opened_answers(name)

        return FindProviders(members_key(name), found)

    def _opened_answers(self, name: str) -> list[RelayAction]:
        """The answers of the clients that opened the channel, once no join of ours is awaited."""
        return [] if self._joining.get(name) else self._opening.pop(name, [])

    def _join(self, name: str, nodes: list[str], now: float) -> list[RelayAction]:
        """Ask these nodes to take us as a member of the channel (at most MAX_JOINS at once)."""
        secret = self.table.secret(name)
        if secret is None:
            return []
        joining = self._joining.setdefault(name, set())
        known = set(self.table.members(name)) | joining
        out: list[RelayAction] = []
        for node in [n for n in dict.fromkeys(nodes) if n not in known and n != self.me][:MAX_JOINS]:
            data = {"command": JOIN, "channel": name, "position": self.mesh.position(name)}
            if secret.key is not None:
                data["proof"] = join_proof(secret.key, name, self.me, node)
            joining.add(node)
            out += self.command(node, data, now, lambda inm, now, node=node: self._joined(name, node, inm, now),
                                on_timeout=lambda now, node=node: self._join_failed(name, node))
        return out

    def _join_failed(self, name: str, node: str) -> list[RelayAction]:
        self._joining.get(name, set()).discard(node)
        return self._opened_answers(name)

    def _joined(self, name: str, node: str, answer: Inm, now: float) -> list[RelayAction]:
        """A join's answer: the node is a member, and names some others, which we join too."""
        self._joining.get(name, set()).discard(node)
        data = answer.data if isinstance(answer.data, dict) else {}
        if data.get("ok") is not True or not self.table.add_member(name, node):
            return self._opened_answers(name)
        if data.get("large") is True:
            self.mesh.mark_large(name, now)
        self.mesh.start(name, node, data.get("position"), now)
        self.mesh.member_added(name, len(self.table.members(name)), now)
        listed = data.get("members")
        others = [m for m in listed[:MEMBER_SAMPLE] if isinstance(m, str)] if isinstance(listed, list) else []
        if len(self.table.members(name)) >= meshes.KNOW_ENOUGH:  # a mesh needs no more
            others = []
        return self._join(name, others, now) + self._opened_answers(name)

    def _on_join(self, inm: Inm, now: float) -> dict:
        """Another node has the channel open too: it becomes a member if the channel is open
        here and, for a password channel, it proves the key. The answer names a random sample
        of the other members (so joiners find all of a large channel), and whether the channel
        is large here (then the joiner keeps a mesh too); the join and its answer each tell the
        other where its own messages stand (`position`), so each expects all that follow."""
        name = inm.data["channel"]
        secret = self.table.secret(name) if isinstance(name, str) else None
        if secret is None:
            return {"ok": False, "reason": "channel not open here"}
        if secret.key is not None:
            proof = inm.data.get("proof")
            if not isinstance(proof, str) or not hmac.compare_digest(
                    proof.encode(), join_proof(secret.key, name, inm.source, self.me).encode()):
                self.dropped.inc(reason="join without the channel's key")
                return {"ok": False, "reason": "invalid password"}
        others = [m for m in self.table.members(name) if m != inm.source]
        if not self.table.add_member(name, inm.source):
            self.dropped.inc(reason="members full")
            return {"ok": False, "reason": "busy"}
        self.mesh.member_added(name, len(others) + 1, now)
        self.mesh.start(name, inm.source, inm.data.get("position"), now)
        return {"ok": True, "members": self.mesh.rng.sample(others, min(MEMBER_SAMPLE, len(others))),
                "large": self.mesh.large(name), "position": self.mesh.position(name)}

    # ---- time ----

    def next_timer(self) -> float | None:
        """When `tick` has something to do next (None: nothing scheduled)."""
        times = [*self._check_at.values(), *self._members_at.values(), *(w[0] for w in self._waiting.values())]
        times += [t for t in (self.mesh.next_timer(), self._attach_at) if t is not None]
        return min(times, default=None)

    def tick(self, now: float) -> list[RelayAction]:
        """Give up on responses that did not come in time; look reservations and members up
        again when due."""
        out: list[RelayAction] = self._mesh_actions(self.mesh.tick(now, self.table.members), now)
        if self._attach_at is not None and self._attach_at <= now:
            out += self._attach(now)
        for name in [n for n, t in self._members_at.items() if t <= now]:
            self._members_at[name] = now + MEMBERS_EVERY
            out.append(self._find_members(name))
        for name in [n for n, t in self._check_at.items() if t <= now]:
            self._check_at[name] = now + KEEP  # until the answer comes, or the next round
            if self._confirming.pop(name, False) or self._keeper(name):
                out.append(DhtGet(reservation_key(name), lambda values, now, name=name: self._check(name, values, now)))
        expired = [w for w in self._waiting.values() if w[0] <= now]
        if not expired:
            return out
        self._waiting = {nonce: w for nonce, w in self._waiting.items() if w[0] > now}
        return out + [action for _, _, on_timeout, _ in expired if on_timeout for action in on_timeout(now)]

    # ---- channel messages ----

    def _on_message(self, inm: Inm, came_from: str, now: float) -> list[RelayAction]:
        """A channel message (mesh.py: who sends it where, and the order rules). Duplicates are
        dropped before a signature is checked; only a signed one is passed on (its origin
        signed it: the next node can believe it too); nothing of a channel closed here is kept."""
        data, origin = inm.data, inm.source
        name = data["channel"]
        secret = self.table.secret(name) if isinstance(name, str) else None
        if secret is None or inm.destination != MEMBERS:
            self.dropped.inc(reason="channel not open here" if inm.destination == MEMBERS else "no route")
            return []
        epoch, seq = data["epoch"], data["seq"]
        if type(epoch) is not int or type(seq) is not int or not (0 <= epoch < 2**63 and 0 < seq < 2**63):
            raise ValueError("epoch and seq must be integers")
        if self.mesh.duplicate(name, origin, epoch, seq):
            self.dropped.inc(reason="duplicate")
            return []
        if inm.sig:
            refused = self._unauthentic(inm, replays=False)
            if refused:
                self.dropped.inc(reason=refused)
                return [CutLink(came_from)] if refused == BAD_SIGNATURE else []
            self.mesh.mark_large(name, now)
        elif origin != came_from:
            self.dropped.inc(reason="unauthenticated source")
            return []
        payload = self._open(name, secret.key, origin, data)
        if payload is None:
            return []
        self.received.inc(type="message")
        out: list[RelayAction] = []
        if inm.sig and (targets := self.mesh.targets(name, came_from, origin)):
            out.append(SendEnvelope(inm, targets, name))
        if inm.sig:  # kept for repair: an unsigned copy is believed only from its origin
            self.mesh.remember(name, origin, epoch, seq, inm, len(payload[0]), now)
        return out + self._deliver_all(name, self.mesh.accept(name, origin, epoch, seq, payload, came_from, now), now)

    def _open(self, name: str, key: bytes | None, origin: str, data: dict) -> tuple[str, str] | None:
        """(text, client nonce) of a message: a password channel's box must open, bound to
        this channel and its origin."""
        if key is None:
            text, nonce = data["message"], data["nonce"]
            if not isinstance(text, str) or not isinstance(nonce, str):
                raise ValueError("message and nonce must be strings")
            return text, nonce
        try:
            return open_sealed(key, name, origin, base64.b64decode(data.get("sealed"), validate=True))
        except (DecodeError, binascii.Error, TypeError):
            self.dropped.inc(reason="unauthentic channel message")
            return None

    def _deliver_all(self, name: str, payloads: list, now: float) -> list[RelayAction]:
        out: list[RelayAction] = []
        for message, nonce in payloads:
            self._count(name, len(message), now)
            out += self._deliver(name, message, nonce, None)
        return out

    def _on_mesh_command(self, command: str, peer: str, data: dict, now: float) -> list[MeshAction]:
        name = data["channel"]
        if not isinstance(name, str):
            raise ValueError("channel must be a string")
        if command == meshes.GRAFT:
            return self.mesh.on_graft(name, peer, self.table.is_member(name, peer), now)
        if command == meshes.PRUNE:
            self.mesh.on_prune(name, peer, now)
            return []
        if not self.table.is_member(name, peer):
            self.dropped.inc(reason="not a member")
            return []
        if command == meshes.IHAVE:
            return self.mesh.on_ihave(name, peer, data["have"], now)
        return self.mesh.on_iwant(name, peer, data["want"], now)

    def _mesh_actions(self, actions: list[MeshAction], now: float) -> list[RelayAction]:
        out: list[RelayAction] = []
        for action in actions:
            if type(action) is Control:
                out += self.notify(action.peer, action.data, now)
            elif type(action) is Resend:
                out.append(SendEnvelope(action.envelope, (action.peer,), action.envelope.data["channel"]))
            elif type(action) is Release:
                out += self._deliver_all(action.channel, action.payloads, now)
        return out

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
        """A local client sends to a channel: its other local subscribers, then the member
        nodes (mesh.py: every member of a small channel, the mesh of a large one), one envelope
        made and encoded once for all of them; a password channel's message sealed once."""
        secret = self.table.secret(name)
        if secret is None or not self.table.subscribed(client, name):
            return "not subscribed", []
        self._count(name, len(message), now)
        out = self._deliver(name, message, nonce, client)
        epoch, seq = self.mesh.stamp(name, now)
        if secret.key is not None:
            data = {"channel": name, "epoch": epoch, "seq": seq,
                    "sealed": base64.b64encode(seal(secret.key, name, self.me, message, nonce)).decode()}
        else:
            data = {"channel": name, "epoch": epoch, "seq": seq, "message": message, "nonce": nonce}
        members = self.table.members(name)
        inm = Inm(self.me, MEMBERS, "message", new_nonce(), data)
        if self.mesh.large(name) and not (len(members) <= meshes.LINKED_MAX and all(map(self.linked, members))):
            # passed on by other members: signed (with links up to all of a few, sent to each as to a small channel's)
            inm = replace(inm, at=self.wall_ms())
            inm, targets = replace(inm, sig=self.sign(inm)), self.mesh.publish_targets(name, members)
        else:
            targets = tuple(members)
        self.mesh.remember(name, self.me, epoch, seq, inm, len(message), now)
        return None, out + ([SendEnvelope(inm, targets, name)] if targets else [])

    def subscribe(self, client: object, name: str, secret: ChannelSecret, nonce: str, now: float) -> list[RelayAction]:
        """Answered with an Answer action: at once while the channel is open here, else once
        its reservation has been looked up."""
        return self._apply(name, self.table.subscribe(client, name, secret, nonce), now)

    def unsubscribe(self, client: object, name: str, now: float) -> tuple[str | None, list[RelayAction]]:
        reason, change = self.table.unsubscribe(client, name)
        return reason, self._apply(name, change, now)

    def drop_client(self, client: object, now: float) -> list[RelayAction]:
        return [action for name in self.table.drop_client(client) for action in self._closed(name, now)]


def _result(reason: str | None) -> dict:
    return {"ok": False, "reason": reason} if reason else {"ok": True}
