"""The Kademlia core driven directly: routing table, lookups, timeouts, records, providers."""

from __future__ import annotations

import random

import multiaddr
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from overlay.core.errors import ProtocolError
from overlay.core.peer import PeerInfo
from overlay.kademlia.core import PHASE_CHANGES, KadConfig, Kademlia, QueryKind, QueryPhase, Send
from overlay.kademlia.lookup import Lookup
from overlay.kademlia.routing import RoutingTable, key_position
from overlay.kademlia.store import ProviderStore, RecordStore, provider_key, provider_namespace
from overlay.kademlia.wire import Message, MessageType, Record
from tests.kadnet import KadNet, int_validator


def pid(i: int) -> bytes:
    return b"\x00\x24" + i.to_bytes(36, "big")


# ---- routing table ---------------------------------------------------------------------------


def bucket_peers(table: RoutingTable, bucket: int, count: int) -> list[bytes]:
    found, i = [], 0
    while len(found) < count:
        i += 1
        if table.bucket_index(key_position(pid(i))) == bucket:
            found.append(pid(i))
    return found


def test_table_fills_bucket_then_queues_replacements():
    table = RoutingTable(pid(0), k=3, stale_after=60)
    peers = bucket_peers(table, 0, 5)
    for i, p in enumerate(peers[:3]):
        assert table.observe(p, (), now=i) is None
    assert len(table) == 3
    # full bucket, oldest not stale yet: newcomer waits, nothing to ping
    assert table.observe(peers[3], (), now=10) is None
    assert peers[3] not in table
    # oldest stale: the table asks for it to be pinged
    assert table.observe(peers[4], (), now=100) == peers[0]


def test_seen_contact_moves_to_tail_and_keeps_addrs():
    table = RoutingTable(pid(0), k=3, stale_after=60)
    a, b, c, d = bucket_peers(table, 0, 4)
    table.observe(a, (b"x",), 0)
    table.observe(b, (), 1)
    table.observe(c, (), 2)
    table.observe(a, (), 3)  # a is fresh again
    assert table.observe(d, (), 100) == b  # b is now the least recently seen
    assert table.get(a).addrs == (b"x",)


def test_two_failures_evict_and_promote_replacement():
    table = RoutingTable(pid(0), k=2, max_failures=2)
    a, b, c = bucket_peers(table, 0, 3)
    table.observe(a, (), 0)
    table.observe(b, (), 0)
    table.observe(c, (), 0)
    assert c not in table
    assert table.fail(a) is False and a in table
    assert table.fail(a) is True
    assert a not in table and c in table and len(table) == 2


def test_one_network_holds_at_most_two_places_in_a_bucket_and_six_in_the_table():
    table = RoutingTable(pid(0), k=20, max_per_group_bucket=2, max_per_group=6)
    sybils = [p for b in range(4) for p in bucket_peers(table, b, 5)]  # 5 in each of buckets 0-3
    for p in sybils:
        table.observe(p, (), 0.0, group="198.51.100.0/24")
    held = [p for p in sybils if p in table]
    assert len(held) == 6 and max(list(table.bucket_sizes().values())) == 2
    honest = bucket_peers(table, 0, 10)[5:]
    for i, p in enumerate(honest):
        table.observe(p, (), 0.0, group=f"203.0.{i}.0/24")
    assert all(p in table for p in honest), "other networks still enter"
    table.observe(bucket_peers(table, 5, 1)[0], (), 0.0, group="")
    assert len(table) == 12, "a contact of no known group is not limited"
    table.remove(held[0])
    late = next(p for p in sybils if p not in table and table.bucket_index(key_position(p)) == table.bucket_index(key_position(held[0])))
    table.observe(late, (), 1.0, group="198.51.100.0/24")
    assert late in table, "a place a network gave up is its own again"


def test_a_replacement_enters_only_within_the_limits():
    table = RoutingTable(pid(0), k=2, max_failures=1, max_per_group_bucket=1)
    a, b, c, d = bucket_peers(table, 0, 4)
    table.observe(a, (), 0.0, group="g1")
    table.observe(b, (), 0.0, group="g2")
    table.observe(c, (), 1.0, group="g3")  # waits as a replacement
    table.observe(d, (), 2.0, group="g1")  # refused: g1 has its place in this bucket
    table.fail(b)
    assert c in table and d not in table


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["observe", "fail", "remove"]), st.integers(0, 40), st.sampled_from(["", "a", "b", "c"])), max_size=200))
def test_group_counts_follow_the_contacts_under_any_events(events):
    table = RoutingTable(pid(0), k=4, max_failures=1, max_per_group_bucket=2, max_per_group=5)
    for t, (kind, i, group) in enumerate(events):
        p = pid(i + 1)
        if kind == "observe":
            table.observe(p, (), float(t), group)
        elif kind == "fail":
            table.fail(p)
        else:
            table.remove(p)
        contacts = table.contacts()
        for g in "abc":
            assert sum(c.group == g for c in contacts) == table._groups[g] <= 5
        assert len(contacts) == len(table)


def test_an_answer_makes_the_node_dial_only_addresses_of_its_scope_and_a_crowded_network_stays_out():
    lan = multiaddr.Multiaddr("/ip4/100.64.1.9/tcp/1").to_bytes()
    wide = [multiaddr.Multiaddr(f"/dns4/peer{i}.example.org/tcp/1").to_bytes() for i in range(12)]  # global scope
    node = Kademlia(PeerInfo(pid(0)), int_validator(), KadConfig(max_answer_addrs=4, table_per_group=1))
    node.table.observe(pid(1), (wide[0],), 0.0, group="peers-network")
    _, actions = node.find_node(pid(99), 0.0)
    (ask,) = [a for a in actions if isinstance(a, Send)]
    named = PeerInfo(pid(2), (lan, *wide[1:]))
    answer = Message(MessageType.FIND_NODE, key=pid(99), closer_peers=(named,))
    nxt = node.handle_response(ask.request_id, answer, 0.1, group="peers-network", scope="global")
    (ask2,) = [a for a in nxt if isinstance(a, Send)]
    assert ask2.peer.peer_id == pid(2) and ask2.peer.addrs == tuple(wide[1:5]), "no LAN address, at most 4"
    node.handle_response(ask2.request_id, Message(MessageType.FIND_NODE, key=pid(99)), 0.2, group="peers-network", scope="global")
    assert pid(2) not in node.table and node.counters.refused == {"table group": 1}, "its network has its place"


def test_success_resets_failures():
    table = RoutingTable(pid(0), k=2, max_failures=2)
    a = bucket_peers(table, 0, 1)[0]
    table.observe(a, (), 0)
    table.fail(a)
    table.observe(a, (), 1)
    assert table.fail(a) is False and a in table


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(1, 10_000), min_size=1, max_size=120, unique=True),
    st.integers(2, 20),
    st.integers(1, 40),
    st.one_of(st.integers(0, 10**6).map(lambda t: key_position(t.to_bytes(8, "big"))),
              st.integers(0, 2**40).map(lambda d: key_position(pid(0)) ^ d)),
    st.booleans(),
)
def test_closest_is_sorted_by_xor_distance(ids, k, count, position, exclude_one):
    """Against a sort of the whole table, with small buckets (so the walk stops early), targets
    near our own position (deep buckets) and far from it, and an excluded peer."""
    table = RoutingTable(pid(0), k=k)
    for i in ids:
        table.observe(pid(i), (), 0)
    exclude = pid(ids[0]) if exclude_one else None
    contacts = [c for c in table.contacts() if c.peer_id != exclude]
    expected = sorted(contacts, key=lambda c: c.position ^ position)[:count]
    assert [c.peer_id for c in table.closest(position, count, exclude)] == [c.peer_id for c in expected]
    assert pid(0) not in table


# ---- one lookup ------------------------------------------------------------------------------


def test_lookup_asks_alpha_at_a_time_and_ends_when_k_closest_answered():
    seeds = [PeerInfo(pid(i)) for i in range(1, 6)]
    lookup = Lookup(b"target", pid(0), seeds, k=3, alpha=2)
    first = lookup.next_peers()
    assert len(first) == 2 and lookup.next_peers() == []  # saturated
    for p in first:
        lookup.on_response(p.peer_id, ())
    while not lookup.done():
        batch = lookup.next_peers()
        assert batch, "a lookup that is not done must have someone to ask"
        for p in batch:
            lookup.on_response(p.peer_id, ())
    result = lookup.finish()
    expected = sorted(seeds, key=lambda s: key_position(s.peer_id) ^ key_position(b"target"))[:3]
    assert [p.peer_id for p in result.closest] == [p.peer_id for p in expected]


def test_lookup_replaces_failed_peers_with_next_closest():
    seeds = [PeerInfo(pid(i)) for i in range(1, 5)]
    lookup = Lookup(b"t", pid(0), seeds, k=2, alpha=2)
    for p in lookup.next_peers():
        lookup.on_failure(p.peer_id)
    second = lookup.next_peers()
    assert len(second) == 2
    for p in second:
        lookup.on_response(p.peer_id, ())
    assert lookup.done()
    assert lookup.finish().failures == 2


def test_lookup_quorum_ends_early():
    seeds = [PeerInfo(pid(i)) for i in range(1, 10)]
    lookup = Lookup(b"t", pid(0), seeds, k=5, alpha=3, quorum=1)
    peer = lookup.next_peers()[0]
    lookup.on_response(peer.peer_id, (), value=b"7")
    assert lookup.done()
    assert lookup.finish().values == [(peer.peer_id, b"7")]


# ---- networks of cores -----------------------------------------------------------------------


def true_closest(nodes: list[Kademlia], key: bytes, k: int, exclude: bytes) -> list[bytes]:
    ids = [n.local.peer_id for n in nodes if n.local.peer_id != exclude]
    return sorted(ids, key=lambda p: key_position(p) ^ key_position(key))[:k]


def test_lookups_find_the_true_k_closest_in_200_nodes():
    net = KadNet(seed=7)
    nodes = net.build(200)
    rng = random.Random(3)
    hops = []
    for _ in range(30):
        source = rng.choice(nodes)
        key = rng.getrandbits(64).to_bytes(8, "big")
        done = net.run_query(source, source.find_node(key, net.now))
        found = [p.peer_id for p in done.result.closest]
        assert found == true_closest(nodes, key, 20, source.local.peer_id)
        hops.append(done.result.hops)
    assert max(hops) <= 6


def test_every_node_finds_every_record():
    net = KadNet(seed=11)
    nodes = net.build(40)
    for i, node in enumerate(nodes):
        done = net.run_query(node, node.publish(b"/t/" + node.local.peer_id, str(i).encode(), net.now))
        assert done.stored >= 1
    for i, node in enumerate(nodes):
        reader = nodes[(i * 7 + 3) % len(nodes)]
        done = net.run_query(reader, reader.get_value(b"/t/" + node.local.peer_id, net.now, quorum=1))
        assert [v for _, v in done.result.values] == [str(i).encode()]


def test_dead_peers_time_out_are_evicted_and_lookups_still_finish():
    config = KadConfig(request_timeout=1.0, query_timeout=20.0)
    net = KadNet(seed=5, config=config)
    nodes = net.build(60)
    dead = nodes[10:40]
    net.dead.update(n.local.peer_id for n in dead)
    source = nodes[0]
    for _ in range(3):  # two failures each evict a contact
        key = random.Random(len(net.done)).getrandbits(64).to_bytes(8, "big")
        start = net.now
        done = net.run_query(source, source.find_node(key, net.now))
        assert net.now - start <= config.query_timeout
        alive = [n for n in nodes if n.local.peer_id not in net.dead]
        assert {p.peer_id for p in done.result.closest} <= {n.local.peer_id for n in alive}
    dead_ids = {n.local.peer_id for n in dead}
    remaining = [c for c in source.table.contacts() if c.peer_id in dead_ids]
    assert len(remaining) < len(dead)


def test_query_timeout_bounds_a_lookup_whose_peers_never_answer():
    config = KadConfig(request_timeout=100.0, query_timeout=3.0)
    net = KadNet(seed=2, config=config)
    nodes = net.build(10)
    net.dead.update(n.local.peer_id for n in nodes[1:])
    done = net.run_query(nodes[0], nodes[0].find_node(b"x", net.now))
    assert done.duration == 3.0
    assert done.result.closest == []


def test_highest_value_wins_and_invalid_records_are_rejected():
    net = KadNet(seed=3)
    nodes = net.build(25)
    key = b"/t/thing"
    net.run_query(nodes[1], nodes[1].put_value(key, b"5", net.now))
    net.run_query(nodes[2], nodes[2].put_value(key, b"9", net.now))
    # an older value does not replace the newer one anywhere
    net.run_query(nodes[3], nodes[3].put_value(key, b"4", net.now))
    done = net.run_query(nodes[4], nodes[4].get_value(key, net.now))
    values = {v for _, v in done.result.values}
    assert values == {b"9"}
    # a peer sending an invalid record by PUT_VALUE is refused and counted
    target = nodes[5]
    response, _ = target.handle_request(nodes[6].local, Message(MessageType.PUT_VALUE, key=key, record=Record(key, b"bad")), net.now)
    assert response is None and target.counters.records_rejected == 1
    # a record whose key differs from the message key is refused
    response, _ = target.handle_request(nodes[6].local, Message(MessageType.PUT_VALUE, key=key, record=Record(b"/t/other", b"1")), net.now)
    assert response is None and target.counters.records_rejected == 2
    # unknown namespaces are refused
    response, _ = target.handle_request(nodes[6].local, Message(MessageType.PUT_VALUE, key=b"/zz/a", record=Record(b"/zz/a", b"1")), net.now)
    assert response is None


def test_invalid_values_in_get_responses_are_not_believed():
    net = KadNet(seed=4)
    nodes = net.build(6)
    liar, reader = nodes[1], nodes[2]
    key = b"/t/k"
    original = liar.handle_request

    def lying(peer, msg, now):
        response, actions = original(peer, msg, now)
        if msg.type is MessageType.GET_VALUE:
            response = Message(MessageType.GET_VALUE, key=msg.key, record=Record(msg.key, b"bad"), closer_peers=response.closer_peers)
        return response, actions

    liar.handle_request = lying
    done = net.run_query(reader, reader.get_value(key, net.now))
    assert done.result.values == []
    assert reader.counters.records_rejected >= 1


def test_client_nodes_ask_but_never_enter_routing_tables():
    net = KadNet(seed=9)
    nodes = net.build(15)
    client = net.add_node(server=False)
    net.apply(client.local.peer_id, client.add_address(nodes[0].local, net.now))
    net.run_until(lambda: nodes[0].local.peer_id in client.table)
    net.run_query(client, client.bootstrap(net.now))
    assert len(client.table) == 15
    net.run_until(lambda: not any(n._verifying for n in nodes), limit=30)
    assert all(client.local.peer_id not in n.table for n in nodes)


def test_providers_are_announced_and_found():
    net = KadNet(seed=12)
    nodes = net.build(30)
    key = b"service-x"
    done = net.run_query(nodes[3], nodes[3].provide(key, net.now))
    assert done.stored >= 1
    net.run_until(lambda: any(n.providers.get(key, net.now, 20) for n in nodes if n is not nodes[3]), limit=5)
    found = net.run_query(nodes[20], nodes[20].get_providers(key, net.now, quorum=1))
    assert [p.peer_id for p in found.result.providers] == [nodes[3].local.peer_id]


def test_add_provider_for_someone_else_is_refused():
    node = Kademlia(PeerInfo(pid(0)), int_validator())
    msg = Message(MessageType.ADD_PROVIDER, key=b"k", provider_peers=(PeerInfo(pid(2), (b"a",)),))
    node.handle_request(PeerInfo(pid(1)), msg, 0.0)
    assert node.providers.get(b"k", 0.0, 20) == []
    assert node.counters.providers_rejected == 1


def test_records_republish_and_expire():
    config = KadConfig(record_ttl=100.0, republish_interval=40.0)
    net = KadNet(seed=13, config=config)
    nodes = net.build(8)
    net.run_query(nodes[0], nodes[0].publish(b"/t/a", b"1", net.now))
    net.run_query(nodes[1], nodes[1].put_value(b"/t/b", b"1", net.now))
    t0 = net.now
    net.run_until(lambda: net.now > t0 + 150, limit=200)
    holders_a = [n for n in nodes[1:] if n.records.get(b"/t/a", net.now)]
    holders_b = [n for n in nodes[2:] if n.records.get(b"/t/b", net.now)]
    assert holders_a, "a published record is kept alive by republishing"
    assert not holders_b, "a record put once expires after its TTL"


def test_stores_are_bounded():
    store = RecordStore(int_validator(), ttl=10, max_records=3)
    for i in range(3):
        assert store.put(b"/t/%d" % i, b"1", now=0)
    assert not store.put(b"/t/9", b"1", now=0)
    assert store.put(b"/t/9", b"1", now=11)  # expired ones make room
    providers = ProviderStore(ttl=10, max_keys=2, max_per_key=2)
    for i in range(3):
        providers.add(b"k", PeerInfo(pid(i)), now=0)
    assert [p.peer_id for p in providers.get(b"k", 0, 10)] == [pid(2), pid(1)]
    assert providers.add(b"k2", PeerInfo(pid(1)), 0)
    assert not providers.add(b"k3", PeerInfo(pid(1)), 0)


def test_record_published_in_a_small_network_is_found_after_it_grows():
    net = KadNet(seed=21)
    nodes = net.build(3)
    keys = {}
    for n, early in enumerate(nodes):
        for i in range(5):
            key = b"/t/early-%d-%d" % (n, i)
            keys[key] = str(n).encode()
            net.run_query(early, early.publish(key, keys[key], net.now))
    first = nodes[0]
    for _ in range(80):
        node = net.add_node()
        net.apply(node.local.peer_id, node.add_address(first.local, net.now))
        net.run_until(lambda: first.local.peer_id in node.table)
        net.run_query(node, node.bootstrap(net.now))
        nodes.append(node)
    net.run_until(lambda: not any(n._queries for n in nodes), limit=60)
    reader = nodes[-1]
    for key, value in keys.items():
        done = net.run_query(reader, reader.get_value(key, net.now, quorum=1))
        assert [v for _, v in done.result.values] == [value], key


def test_publish_that_reached_too_few_peers_is_retried_with_backoff():
    net = KadNet(seed=5)
    nodes = net.build(12)
    publisher, others = nodes[0], nodes[1:]
    net.dead.update(n.local.peer_id for n in others)  # an overloaded or cut-off start
    done = net.run_query(publisher, publisher.publish(b"/t/p", b"7", net.now))
    assert done.stored == 0
    retry_at = publisher.next_timer()
    assert retry_at is not None and retry_at - net.now <= publisher.config.republish_retry + 1e-9
    net.dead.clear()
    net.run_until(lambda: sum(bool(n.records.get(b"/t/p", net.now)) for n in others) >= 6, limit=60)
    assert net.now < publisher.config.republish_interval, "found well before the periodic republish"


def test_unprovide_stops_announcing():
    net = KadNet(seed=8)
    nodes = net.build(6)
    net.run_query(nodes[0], nodes[0].provide(b"k", net.now))
    net.apply(nodes[0].local.peer_id, nodes[0].unprovide(b"k", net.now))
    assert nodes[0].providers.get(b"k", net.now, 20) == []
    later = net.now + nodes[0].config.republish_interval
    actions = nodes[0].handle_timer(later)
    lookups = [a for a in actions if isinstance(a, Send) and a.message.key == b"k"]
    assert lookups == [], "nothing is republished for a key we stopped providing"


def test_query_phases_change_only_as_the_table_allows():
    """A query's phase changes only along PHASE_CHANGES; anything else is a bug and raises."""
    net = KadNet(seed=4)
    nodes = net.build(5)
    put = net.run_query(nodes[0], nodes[0].put_value(b"/t/x", b"1", net.now))
    provide = net.run_query(nodes[0], nodes[0].provide(b"p", net.now))
    find = net.run_query(nodes[0], nodes[0].find_node(b"q", net.now))
    assert (put.kind, provide.kind, find.kind) == (QueryKind.PUT_VALUE, QueryKind.PROVIDE, QueryKind.FIND_NODE)
    assert put.stored >= 1 and provide.stored >= 1
    assert PHASE_CHANGES[(QueryPhase.LOOKUP, QueryPhase.STORE)] == {QueryKind.PUT_VALUE, QueryKind.PROVIDE}

    query_id, _ = nodes[1].find_node(b"r", net.now)
    query = nodes[1]._queries[query_id]
    with pytest.raises(ProtocolError, match="find_node .* lookup to store"):
        query.enter(QueryPhase.STORE)  # only put_value and provide store
    nodes[1]._finish(query, net.now)
    assert query.phase is QueryPhase.DONE
    with pytest.raises(ProtocolError, match="done to done"):
        nodes[1]._finish(query, net.now)  # finished twice: no longer passed over


def put(node: Kademlia, sender: int, key: bytes, value: bytes, now: float = 0.0) -> bool:
    """Whether the node answered the PUT_VALUE as stored: with the echo of the record."""
    msg = Message(MessageType.PUT_VALUE, key=key, record=Record(key, value))
    answer = node.handle_request(PeerInfo(pid(sender)), msg, now)[0]
    assert answer is not None and answer.type is MessageType.PUT_VALUE
    return answer.record == msg.record


def test_a_peer_stores_at_most_its_quota_of_records_and_a_refused_put_is_not_answered_as_stored():
    node = Kademlia(PeerInfo(pid(0)), int_validator(), KadConfig(max_records_per_peer=3))
    for i in range(3):
        assert put(node, 1, b"/t/%d" % i, b"1")
    assert not put(node, 1, b"/t/9", b"1"), "over its quota: refused, and not echoed as if stored"
    assert put(node, 2, b"/t/9", b"1"), "another peer still stores"
    assert put(node, 1, b"/t/0", b"2"), "a newer value of a record the peer holds is no new record"
    assert not put(node, 3, b"/t/0", b"1"), "an older value is refused, not answered as stored"
    assert node.records.get(b"/t/0", 0.0) == b"2"
    assert node.counters.refused == {"record quota": 1, "record older": 1}
    assert put(node, 1, b"/t/9", b"1", now=7201.0), "expired records give the quota back"


def test_a_peer_provides_at_most_its_quota_of_keys_with_a_few_short_addresses():
    node = Kademlia(PeerInfo(pid(0)), int_validator(), KadConfig(max_providers_per_peer=2, max_provider_addrs=2))
    addrs = (b"a" * 300, b"b", b"c", b"d")

    def add(sender: int, key: bytes) -> None:
        msg = Message(MessageType.ADD_PROVIDER, key=key, provider_peers=(PeerInfo(pid(sender), addrs),))
        assert node.handle_request(PeerInfo(pid(sender)), msg, 0.0)[0] is None  # ADD_PROVIDER has no answer

    for key in (b"k1", b"k2", b"k3"):
        add(1, key)
    assert [len(node.providers.get(k, 0.0, 20)) for k in (b"k1", b"k2", b"k3")] == [1, 1, 0]
    assert node.providers.get(b"k1", 0.0, 20)[0].addrs == (b"b", b"c"), "an overlong address dropped, two kept"
    add(2, b"k3")
    assert [p.peer_id for p in node.providers.get(b"k3", 0.0, 20)] == [pid(2)]
    assert node.counters.refused == {"provider quota": 1}
    node.provide(b"k4", 0.0)  # our own entries are not limited per peer
    assert len(node.providers) == 4


def test_providers_are_taken_only_in_the_given_namespaces():
    node = Kademlia(PeerInfo(pid(0)), int_validator(), provider_namespaces={b"ours"})
    keys = {provider_key(b"ours", b"x"): True, provider_key(b"theirs", b"x"): False, b"k1": False,
            b"/ours/short": False, b"/ours/" + b"/" * 32: True}
    for key in keys:
        msg = Message(MessageType.ADD_PROVIDER, key=key, provider_peers=(PeerInfo(pid(1)),))
        node.handle_request(PeerInfo(pid(1)), msg, 0.0)
    assert {key: bool(node.providers.get(key, 0.0, 20)) for key in keys} == keys
    assert node.counters.refused == {"provider namespace": 3}
    assert provider_namespace(provider_key(b"ours", b"y")) == b"ours"


def test_the_provider_store_holds_at_most_max_entries_in_all():
    providers = ProviderStore(ttl=10, max_entries=3)
    for i in range(3):
        assert providers.add(b"k%d" % i, PeerInfo(pid(i)), now=0)
    assert not providers.add(b"k0", PeerInfo(pid(9)), now=0) and providers.refusal == "full"
    assert providers.add(b"k0", PeerInfo(pid(0)), now=1), "refreshing a held entry takes no room"
    assert len(providers) == 3
    assert providers.add(b"k9", PeerInfo(pid(9)), now=10.5) and len(providers) == 2, "expired entries make room"


def test_a_put_that_peers_refuse_is_not_counted_as_stored():
    net = KadNet(seed=14)
    nodes = net.build(6)
    for n in nodes[1:]:
        assert n.records.put(b"/t/x", b"9", net.now)  # each holds a better value
    done = net.run_query(nodes[0], nodes[0].put_value(b"/t/x", b"1", net.now))
    assert done.stored == 0
    assert all(n.records.get(b"/t/x", net.now) == b"9" for n in nodes[1:])
    assert net.run_query(nodes[0], nodes[0].put_value(b"/t/x", b"10", net.now)).stored == 5


def test_peers_of_one_address_group_share_a_quota():
    node = Kademlia(PeerInfo(pid(0)), int_validator(),
                    KadConfig(max_records_per_peer=2, max_records_per_group=3, max_providers_per_group=3))

    def put_from(sender: int, key: bytes, group: str) -> bool:
        msg = Message(MessageType.PUT_VALUE, key=key, record=Record(key, b"1"))
        return node.handle_request(PeerInfo(pid(sender)), msg, 0.0, group)[0].record is not None

    assert [put_from(i, b"/t/%d" % i, "198.18.0.0/24") for i in range(1, 5)] == [True, True, True, False]
    assert put_from(5, b"/t/5", "198.18.1.0/24"), "another network still stores"
    assert put_from(1, b"/t/1", "198.18.0.0/24"), "putting again what the group holds takes no more room"
    for i in range(1, 5):
        msg = Message(MessageType.ADD_PROVIDER, key=b"k", provider_peers=(PeerInfo(pid(i)),))
        node.handle_request(PeerInfo(pid(i)), msg, 0.0, "2001:db8::/48")
    assert len(node.providers.get(b"k", 0.0, 20)) == 3
    assert node.counters.refused == {"record group quota": 1, "provider group quota": 1}


def test_address_groups_are_a_24_or_a_48():
    from overlay.core.addrs import address_group

    assert address_group("198.18.7.9") == "198.18.7.0/24"
    assert address_group("::ffff:198.18.7.9") == "198.18.7.0/24"
    assert address_group("2001:db8:1:2::5") == "2001:db8:1::/48"
    assert address_group("not an ip") == ""
