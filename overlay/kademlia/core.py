"""The Kademlia node as a state machine without I/O: the one DHT that the node and simulator run.

Inputs are method calls with an explicit `now` (seconds on any monotonic clock, real or
virtual): inbound requests, responses and failures of our own requests, timers, and commands
(bootstrap, find, get, put, provide). Outputs are actions: `Send` (ask a peer something and
report back with `handle_response`/`handle_failure` under the same request id) and `QueryDone`.
Request timeouts are the core's own timers, so a simulated network that drops a message and a
real peer that hangs look the same.

Messages are libp2p Kademlia messages (`overlay.kademlia.wire`). Routing follows libp2p's
Kademlia: only peers that answered a request of ours (server-mode peers) enter the table;
an unknown peer that asks us something is pinged once before it is added.

A query is of one `QueryKind` and moves through `QueryPhase`s; these are the only changes
(anything else is a bug in the core and raises ProtocolError):

    LOOKUP -> STORE   put_value, provide: the lookup found the k closest peers; store on them
    LOOKUP -> DONE    every kind: the lookup ended, or the query timed out or was withdrawn
    STORE  -> DONE    put_value, provide: every store was answered, failed or timed out
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections import OrderedDict
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Union

from overlay.core.addrs import answer_addrs
from overlay.core.errors import ProtocolError, RecordError
from overlay.core.peer import PeerInfo
from overlay.core.ratelimit import RateLimiter
from overlay.kademlia.lookup import Lookup, LookupResult
from overlay.kademlia.routing import RoutingTable, key_position
from overlay.kademlia.store import ProviderStore, RecordStore, Validator, provider_namespace
from overlay.kademlia.wire import Message, MessageType, Record


MAX_NOT_SERVERS = 4096


class QueryKind(Enum):
    FIND_NODE = "find_node"
    GET_VALUE = "get_value"
    GET_PROVIDERS = "get_providers"
    PUT_VALUE = "put_value"
    PROVIDE = "provide"
    BOOTSTRAP = "bootstrap"


class QueryPhase(Enum):
    LOOKUP = "lookup"
    STORE = "store"
    DONE = "done"


_STORING = frozenset({QueryKind.PUT_VALUE, QueryKind.PROVIDE})
# (from, to) -> the kinds that may make that change: the table in the module docstring
PHASE_CHANGES: dict[tuple[QueryPhase, QueryPhase], frozenset[QueryKind]] = {
    (QueryPhase.LOOKUP, QueryPhase.STORE): _STORING,
    (QueryPhase.LOOKUP, QueryPhase.DONE): frozenset(QueryKind),
    (QueryPhase.STORE, QueryPhase.DONE): _STORING,
}


@dataclass(frozen=True)
class KadConfig:
    k: int = 20
    alpha: int = 3
    request_timeout: float = 5.0
    query_timeout: float = 30.0
    refresh_interval: float = 600.0
    refresh_max_cpl: int = 15
    record_ttl: float = 2 * 3600.0
    republish_interval: float = 1800.0
    republish_retry: float = 5.0  # first retry of a publish that reached too few peers; doubles
    provider_ttl: float = 2 * 3600.0
    stale_after: float = 60.0
    max_records: int = 10_000
    max_provider_keys: int = 10_000
    max_providers: int = 20_000  # provider entries in all
    max_records_per_peer: int = 256  # records one peer may have stored here
    max_providers_per_peer: int = 256  # keys one peer may provide here
    max_provider_addrs: int = 8  # addresses kept per provider
    max_records_per_group: int = 1024  # records peers of one address group (a /24 or /48) may have stored here
    max_providers_per_group: int = 1024  # provider entries of one address group
    peer_requests: tuple[float, float] = (20.0, 100.0)  # requests a second, and burst, one peer may make of us
    group_requests: tuple[float, float] = (500.0, 2000.0)  # the same for all peers of one address group
    table_per_group_bucket: int = 2  # routing-table contacts of one address group in one bucket
    table_per_group: int = 6  # ... in the whole table
    max_answer_addrs: int = 8  # addresses taken per peer from a DHT answer
    max_stream_idle: float = 30.0  # seconds an inbound DHT stream may stay silent before it is closed


@dataclass(frozen=True)
class Send:
    request_id: int
    peer: PeerInfo
    message: Message

    @property
    def expects_response(self) -> bool:
        """ADD_PROVIDER has no response in libp2p: every driver sends it and forgets it."""
        return self.message.type is not MessageType.ADD_PROVIDER


@dataclass(frozen=True)
class QueryDone:
    query_id: int
    kind: QueryKind
    result: LookupResult
    stored: int = 0  # PUT_VALUE / ADD_PROVIDER: how many peers accepted
    duration: float = 0.0


DhtAction = Union[Send, QueryDone]


@dataclass
class _Query:
    id: int
    kind: QueryKind
    lookup: Lookup
    started: float
    deadline: float
    message_type: MessageType
    value: bytes | None = None  # the record to store (put_value) once the lookup is done
    phase: QueryPhase = QueryPhase.LOOKUP
    store_waiting: set[int] = field(default_factory=set)
    stored: int = 0

    def enter(self, phase: QueryPhase) -> None:
        """Move to `phase`; ProtocolError unless PHASE_CHANGES allows it for this kind."""
        if self.kind not in PHASE_CHANGES.get((self.phase, phase), ()):
            raise ProtocolError(f"{self.kind.value} query {self.id}: no change from {self.phase.value} to {phase.value}")
        self.phase = phase


@dataclass
class _Request:
    peer: PeerInfo
    message: Message
    deadline: float
    query_id: int | None  # None: a liveness ping


@dataclass
class DhtCounters:
    requests_sent: int = 0
    responses: int = 0
    failures: int = 0
    requests_handled: int = 0
    records_rejected: int = 0
    providers_rejected: int = 0
    refused: dict[str, int] = field(default_factory=dict)  # what the stores refused, by reason

    def refuse(self, what: str) -> None:
        self.refused[what] = self.refused.get(what, 0) + 1


class Kademlia:
    def __init__(
        self,
        local: PeerInfo,
        validator: Validator,
        config: KadConfig = KadConfig(),
        server: bool = True,
        rng: random.Random | None = None,
        provider_namespaces: Collection[bytes] | None = None,
    ) -> None:
        """`server` says whether we answer DHT requests (reachable node) or only ask (client);
        `provider_namespaces`: the only namespaces (store.provider_key) whose provider records
        we take from others, None for any key."""
        self.local = local
        self.provider_namespaces = provider_namespaces
        self.config = config
        self.server = server
        self.rng = rng or random.Random()
        self.table = RoutingTable(local.peer_id, config.k, stale_after=config.stale_after,
                                  max_per_group_bucket=config.table_per_group_bucket, max_per_group=config.table_per_group)
        self.records = RecordStore(validator, config.record_ttl, config.max_records, config.max_records_per_peer,
                                   config.max_records_per_group)
        self.providers = ProviderStore(config.provider_ttl, config.max_provider_keys, max_per_peer=config.max_providers_per_peer,
                                       max_addrs=config.max_provider_addrs, local=local.peer_id,
                                       max_entries=config.max_providers, max_per_group=config.max_providers_per_group)
        self.counters = DhtCounters()
        self._peer_rate, self._group_rate = RateLimiter(*config.peer_requests), RateLimiter(*config.group_requests)
        self._ids = itertools.count(1)
        self._queries: dict[int, _Query] = {}
        self._requests: dict[int, _Request] = {}
        self._timeouts: list[tuple[float, int]] = []  # heap of (deadline, request id)
        self._verifying: set[bytes] = set()
        self._not_servers: OrderedDict[bytes, float] = OrderedDict()  # failed verification, until
        self._published: dict[bytes, bytes] = {}  # our own records, republished periodically
        self._provided: set[bytes] = set()
        self._size_at_publish = 1  # routing-table size when we last published (see _republish_if_grown)
        self._next_refresh: float | None = None
        self._next_republish: float | None = None
        self._next_retry: float | None = None
        self._retry_backoff = config.republish_retry

    # ---- commands -------------------------------------------------------------------------

    def add_address(self, peer: PeerInfo, now: float) -> list[DhtAction]:
        """A peer we were told about (a bootstrap): ping it; it joins the table if it answers."""
        return self._send(peer, Message(MessageType.PING), now, None)

    def bootstrap(self, now: float) -> tuple[int, list[DhtAction]]:
        """Look up our own ID, then refresh the buckets none of whose peers answered us within
        `refresh_interval` (as libp2p does); repeats every `refresh_interval`."""
        self._next_refresh = now + self.config.refresh_interval
        return self._start(QueryKind.BOOTSTRAP, self.local.peer_id, MessageType.FIND_NODE, now)

    def find_node(self, key: bytes, now: float) -> tuple[int, list[DhtAction]]:
        return self._start(QueryKind.FIND_NODE, key, MessageType.FIND_NODE, now)

    def get_value(self, key: bytes, now: float, quorum: int = 0) -> tuple[int, list[DhtAction]]:
        """Look a value up; `quorum` > 0 stops after that many valid values (0: full lookup)."""
        return self._start(QueryKind.GET_VALUE, key, MessageType.GET_VALUE, now, quorum=quorum)

    def get_providers(self, key: bytes, now: float, quorum: int = 0) -> tuple[int, list[DhtAction]]:
        return self._start(QueryKind.GET_PROVIDERS, key, MessageType.GET_PROVIDERS, now, quorum=quorum)

    def put_value(self, key: bytes, value: bytes, now: float) -> tuple[int, list[DhtAction]]:
        """Store locally and on the k closest peers. Raises RecordError for an invalid value."""
        self.records.put(key, value, now)
        return self._start(QueryKind.PUT_VALUE, key, MessageType.FIND_NODE, now, value=value)

    def publish(self, key: bytes, value: bytes, now: float) -> tuple[int, list[DhtAction]]:
        """put_value, and keep republishing it every `republish_interval` until replaced."""
        self._published[key] = value
        self._size_at_publish = max(1, len(self.table))
        if self._next_republish is None:
            self._next_republish = now + self.config.republish_interval
        return self.put_value(key, value, now)

    def provide(self, key: bytes, now: float) -> tuple[int, list[DhtAction]]:
        """Announce that we provide `key` to the k closest peers, and keep announcing it."""
        self._provided.add(key)
        self.providers.add(key, self.local, now)
        if self._next_republish is None:
            self._next_republish = now + self.config.republish_interval
        return self._start(QueryKind.PROVIDE, key, MessageType.FIND_NODE, now)

    def unprovide(self, key: bytes, now: float) -> list[DhtAction]:
        """Stop announcing `key`, ending announcements under way (the records others already
        hold expire with their TTL)."""
        self._provided.discard(key)
        self.providers.remove(key, self.local.peer_id)
        actions: list[DhtAction] = []
        for query in [q for q in self._queries.values() if q.kind is QueryKind.PROVIDE and q.lookup.key == key]:
            actions += self._finish(query, now)
        return actions

    def set_addrs(self, addrs: tuple[bytes, ...]) -> None:
        self.local = PeerInfo(self.local.peer_id, addrs)

    # ---- inputs from the network ----------------------------------------------------------

    def handle_request(
        self, peer: PeerInfo, msg: Message, now: float, group: str | None = None
    ) -> tuple[Message | None, list[DhtAction]]:
        """Answer an inbound request. None: refuse it (the adapter resets the stream). `group`:
        the address group of the connection's remote IP (overlay.core.addrs.address_group), for
        the stores' quotas and the request rate per network; None where it is not known.
        Beyond its request rate a peer is answered nothing (counted `rate`, `group rate`)."""
        if not self._peer_rate.allow(peer.peer_id, now):
            self.counters.refuse("rate")
            return None, []
        if group is not None and not self._group_rate.allow(group, now):
            self.counters.refuse("group rate")
            return None, []
        self.counters.requests_handled += 1
        actions = self._verify_unknown(peer, now)
        self.table.update_addrs(peer.peer_id, peer.addrs)
        position = key_position(msg.key)
        closer = tuple(self._peer_infos(self.table.closest(position, self.config.k, exclude=peer.peer_id)))
        t = msg.type
        if t is MessageType.PING:
            return Message(MessageType.PING), actions
        if t is MessageType.FIND_NODE:
            return Message(MessageType.FIND_NODE, key=msg.key, closer_peers=closer), actions
        if t is MessageType.GET_VALUE:
            value = self.records.get(msg.key, now)
            record = Record(msg.key, value) if value is not None else None
            return Message(MessageType.GET_VALUE, key=msg.key, record=record, closer_peers=closer), actions
        if t is MessageType.GET_PROVIDERS:
            providers = tuple(self.providers.get(msg.key, now, self.config.k))
            return (
                Message(MessageType.GET_PROVIDERS, key=msg.key, closer_peers=closer, provider_peers=providers),
                actions,
            )
        if t is MessageType.PUT_VALUE:
            if msg.record is None or msg.record.key != msg.key:
                self.counters.records_rejected += 1
                return None, actions
            try:
                accepted = self.records.put(msg.key, msg.record.value, now, owner=peer.peer_id, group=group)
            except RecordError:
                self.counters.records_rejected += 1
                return None, actions
            if not accepted:  # answered without the record, which is not the echo that means stored
                self.counters.refuse(f"record {self.records.refusal}")
                return Message(MessageType.PUT_VALUE, key=msg.key), actions
            return msg, actions
        if t is MessageType.ADD_PROVIDER:
            own = [p for p in msg.provider_peers if p.peer_id == peer.peer_id]
            if not own or not msg.key:
                self.counters.providers_rejected += 1
                return None, actions
            if self.provider_namespaces is not None and provider_namespace(msg.key) not in self.provider_namespaces:
                self.counters.refuse("provider namespace")
                return None, actions
            addrs = own[0].addrs or peer.addrs
            if not self.providers.add(msg.key, PeerInfo(peer.peer_id, addrs), now, group):
                self.counters.refuse(f"provider {self.providers.refusal}")
            return None, actions  # ADD_PROVIDER has no response in libp2p
        return None, actions

    def handle_response(
        self, request_id: int, msg: Message, now: float, addrs: tuple[bytes, ...] = (),
        group: str = "", scope: str | None = None,
    ) -> list[DhtAction]:
        """`addrs`: the responder's addresses as the transport knows them now, if fresher.
        `group`: the address group of the connection the answer came on, for the routing table's
        diversity ("" if unknown or exempt). `scope`: that connection's `ip_scope` ("global" if
        relayed): the peers the answer names keep only the addresses `answer_addrs` allows
        (None: not filtered, as in the simulator, whose nodes have one address each)."""
        request = self._requests.pop(request_id, None)
        if request is None:
            return []  # late answer to a timed-out request
        self.counters.responses += 1
        actions: list[DhtAction] = []
        to_ping = None
        if self.table.admits(request.peer.peer_id, group):
            to_ping = self.table.observe(request.peer.peer_id, addrs or request.peer.addrs, now, group)
        else:
            self.counters.refuse("table group")
            self._skip_verifying(request.peer.peer_id, now)  # its requests cost no more pings for a while
        self._verifying.discard(request.peer.peer_id)
        if to_ping is not None:
            actions += self._ping_contact(to_ping, now)
        actions += self._republish_if_grown(now)
        query = self._queries.get(request.query_id) if request.query_id is not None else None
        if query is None:
            return actions
        if query.phase is QueryPhase.STORE:
            if request_id in query.store_waiting:
                query.store_waiting.discard(request_id)
                sent = request.message.record  # what our STORE phase sent: a PUT_VALUE always has one
                query.stored += msg.record is not None and msg.record.value == sent.value  # only the echo means stored
            return actions + self._advance(query, now)
        value = None
        if msg.record is not None and msg.record.key == query.lookup.key:
            try:
                self.records.validator.validate(msg.record.key, msg.record.value)
                value = msg.record.value
            except RecordError:
                self.counters.records_rejected += 1
        closer, providers = msg.closer_peers, msg.provider_peers
        if scope is not None:
            closer, providers = self._dialable(closer, scope), self._dialable(providers, scope)
        query.lookup.on_response(request.peer.peer_id, closer, value, providers)
        return actions + self._advance(query, now)

    def handle_failure(self, request_id: int, now: float) -> list[DhtAction]:
        request = self._requests.pop(request_id, None)
        if request is None:
            return []
        self.counters.failures += 1
        self.table.fail(request.peer.peer_id)
        if request.query_id is None:
            pid = request.peer.peer_id
            if pid in self._verifying and pid not in self.table:
                self._skip_verifying(pid, now)
            self._verifying.discard(pid)
            return []
        query = self._queries.get(request.query_id)
        if query is None:
            return []
        if query.phase is QueryPhase.STORE:
            query.store_waiting.discard(request_id)
        else:
            query.lookup.on_failure(request.peer.peer_id)
        return self._advance(query, now)

    def handle_timer(self, now: float) -> list[DhtAction]:
        actions: list[DhtAction] = []
        while self._timeouts and self._timeouts[0][0] <= now:
            _, request_id = heapq.heappop(self._timeouts)
            if request_id in self._requests:
                actions += self.handle_failure(request_id, now)
        for query in [q for q in self._queries.values() if q.deadline <= now]:
            actions += self._finish(query, now)
        if self._next_refresh is not None and now >= self._next_refresh:
            _, more = self.bootstrap(now)
            actions += more
        if self._next_republish is not None and now >= self._next_republish:
            self._next_republish = now + self.config.republish_interval
            self.records.expire(now)
            self.providers.expire(now)
            actions += self._republish_all(now)
        elif self._next_retry is not None and now >= self._next_retry:
            self._next_retry = None
            actions += self._republish_all(now)
        return actions

    def _republish_all(self, now: float) -> list[DhtAction]:
        self._size_at_publish = max(1, len(self.table))
        actions: list[DhtAction] = []
        for key, value in list(self._published.items()):
            try:
                actions += self.put_value(key, value, now)[1]
            except RecordError:
                del self._published[key]
        for key in list(self._provided):
            actions += self.provide(key, now)[1]
        return actions

    def _schedule_retry(self, stored: int, now: float) -> None:
        """Publish again soon, with backoff, when a publish reached fewer than half the peers it
        should have (at start, an overloaded bootstrap or a lost first answer would otherwise
        leave the record unfindable until the periodic republish)."""
        wanted = min(self.config.k, len(self.table))
        if wanted and stored * 2 < wanted:
            if self._next_retry is None:
                self._next_retry = now + self._retry_backoff
                self._retry_backoff = min(self._retry_backoff * 2, self.config.republish_interval)
        else:
            self._retry_backoff = self.config.republish_retry

    def _republish_if_grown(self, now: float) -> list[DhtAction]:
        """Republish when our routing table has doubled since the last publish.

        A node that published while the network (or its view of it) was small stored its
        records on the few peers it knew; nodes that join later may be closer to the keys,
        and lookups, which only ask the k closest, would miss the records until the periodic
        republish. Doubling keeps this to about log2(table size) extra publishes per node.
        """
        if not (self._published or self._provided) or len(self.table) < 2 * self._size_at_publish:
            return []
        return self._republish_all(now)

    def next_timer(self) -> float | None:
        """When handle_timer must be called next (None: nothing scheduled)."""
        while self._timeouts and self._timeouts[0][1] not in self._requests:
            heapq.heappop(self._timeouts)
        times = [t for t in (self._next_refresh, self._next_republish, self._next_retry) if t is not None]
        if self._timeouts:
            times.append(self._timeouts[0][0])
        if self._queries:  # started in time order with one timeout: the oldest ends first
            times.append(next(iter(self._queries.values())).deadline)
        return min(times, default=None)

    # ---- internals ------------------------------------------------------------------------

    def _start(
        self,
        kind: QueryKind,
        key: bytes,
        message_type: MessageType,
        now: float,
        quorum: int = 0,
        value: bytes | None = None,
    ) -> tuple[int, list[DhtAction]]:
        seeds = self._peer_infos(self.table.closest(key_position(key), self.config.k))
        lookup = Lookup(key, self.local.peer_id, seeds, self.config.k, self.config.alpha, quorum)
        query = _Query(
            next(self._ids), kind, lookup, now, now + self.config.query_timeout, message_type, value
        )
        if message_type is MessageType.GET_VALUE:
            local = self.records.get(key, now)
            if local is not None:
                lookup.result.values.append((self.local.peer_id, local))
        if message_type is MessageType.GET_PROVIDERS:
            lookup.add_providers(self.providers.get(key, now, self.config.k))
        self._queries[query.id] = query
        return query.id, self._advance(query, now)

    def _advance(self, query: _Query, now: float) -> list[DhtAction]:
        if query.phase is QueryPhase.STORE:
            return self._finish(query, now) if not query.store_waiting else []
        actions: list[DhtAction] = []
        for peer in query.lookup.next_peers():
            msg = Message(query.message_type, key=query.lookup.key)
            actions += self._send(peer, msg, now, query.id)
        if query.lookup.done() or query.lookup.waiting == 0:
            actions += self._lookup_done(query, now)
        return actions

    def _lookup_done(self, query: _Query, now: float) -> list[DhtAction]:
        result = query.lookup.finish()
        if query.kind is QueryKind.BOOTSTRAP:
            query.enter(QueryPhase.DONE)
            del self._queries[query.id]
            actions: list[DhtAction] = [QueryDone(query.id, query.kind, result, duration=now - query.started)]
            for cpl in range(min(self.table.deepest_bucket(), self.config.refresh_max_cpl)):
                if now - self.table.last_useful.get(cpl, -math.inf) >= self.config.refresh_interval:
                    actions += self.find_node(self._random_key_in_bucket(cpl), now)[1]
            return actions
        if query.kind is QueryKind.PUT_VALUE and query.value is not None:
            msg = Message(MessageType.PUT_VALUE, key=query.lookup.key, record=Record(query.lookup.key, query.value))
        elif query.kind is QueryKind.PROVIDE:
            msg = Message(MessageType.ADD_PROVIDER, key=query.lookup.key, provider_peers=(self.local,))
        else:
            return self._finish(query, now)
        query.enter(QueryPhase.STORE)
        actions = []
        for peer in result.closest:
            request_id = next(self._ids)
            if query.kind is QueryKind.PUT_VALUE:
                query.store_waiting.add(request_id)
                actions += self._send(peer, msg, now, query.id, request_id)
            else:
                actions.append(Send(request_id, peer, msg))  # no response expected
                query.stored += 1
        if not query.store_waiting:
            actions += self._finish(query, now)
        return actions

    def _finish(self, query: _Query, now: float) -> list[DhtAction]:
        query.enter(QueryPhase.DONE)  # a query finished twice is a bug, no longer passed over
        del self._queries[query.id]
        result = query.lookup.finish()
        if query.kind is QueryKind.PUT_VALUE and query.lookup.key in self._published:
            self._schedule_retry(query.stored, now)
        return [QueryDone(query.id, query.kind, result, query.stored, now - query.started)]

    def _send(
        self,
        peer: PeerInfo,
        msg: Message,
        now: float,
        query_id: int | None,
        request_id: int | None = None,
    ) -> list[DhtAction]:
        request_id = request_id or next(self._ids)
        deadline = now + self.config.request_timeout
        self._requests[request_id] = _Request(peer, msg, deadline, query_id)
        heapq.heappush(self._timeouts, (deadline, request_id))
        self.counters.requests_sent += 1
        return [Send(request_id, peer, msg)]

    def _verify_unknown(self, peer: PeerInfo, now: float) -> list[DhtAction]:
        """Ping a peer that asked us something before it may enter the table (it may be a client).

        A peer whose ping failed is not pinged again for `refresh_interval`.
        """
        pid = peer.peer_id
        if pid in self.table or pid in self._verifying or self._not_servers.get(pid, 0.0) > now:
            return []
        self._verifying.add(pid)
        return self._send(peer, Message(MessageType.PING), now, None)

    def _skip_verifying(self, peer_id: bytes, now: float) -> None:
        """Not a peer for our table (its ping failed, or its network has its places): its requests
        are answered, but not pinged again for `refresh_interval`."""
        self._not_servers[peer_id] = now + self.config.refresh_interval
        self._not_servers.move_to_end(peer_id)
        while len(self._not_servers) > MAX_NOT_SERVERS:
            self._not_servers.popitem(last=False)

    def _ping_contact(self, peer_id: bytes, now: float) -> list[DhtAction]:
        contact = self.table.get(peer_id)
        if contact is None or peer_id in self._verifying:
            return []
        self._verifying.add(peer_id)
        return self._send(contact.info, Message(MessageType.PING), now, None)

    def _dialable(self, peers: Sequence[PeerInfo], scope: str) -> tuple[PeerInfo, ...]:
        limit = self.config.max_answer_addrs
        return tuple(PeerInfo(p.peer_id, answer_addrs(p.addrs, scope, limit)) for p in peers)

    def _peer_infos(self, contacts: list) -> list[PeerInfo]:
        return [c.info for c in contacts]

    def _random_key_in_bucket(self, cpl: int) -> bytes:
        """A key whose position shares exactly `cpl` leading bits with ours (expected 2^(cpl+1) tries;
        hashed past key_position's cache, which the tries would only flush)."""
        while True:
            key = self.rng.getrandbits(64).to_bytes(8, "big")
            if self.table.bucket_index(key_position.__wrapped__(key)) == cpl:
                return key
