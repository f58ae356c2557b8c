"""Scenarios: what to simulate, from a TOML file, checked whole before anything runs.

    [network]
    nodes = 300                 # nodes online at any time (leavers are replaced by fresh nodes)
    bootstrap = 3               # public, never leave, join first
    signaling_nodes = 3         # registrations each node behind NAT keeps
    duration = 3600             # simulated seconds
    join_window = 300           # the non-bootstrap nodes arrive evenly over this many seconds
    warmup = 600                # measurements start after this many seconds
    seed = 1
    regions = { eu-west = 0.5, na-east = 0.5 }       # shares, summing to 1 (built-in regions,
                                                      # or those of [latency])
    nat = { public = 0.4, full-cone = 0.1, port-restricted = 0.3, symmetric = 0.2 }
    inm_peers = 8               # channel-relay neighbours per node

    [latency]                   # optional: your own regions and round trips instead of the built-in set
    regions = ["here", "there"]
    rtt_ms = [[10, 80], [80, 10]]

    [links]
    loss = 0.0                  # per message; each loss costs one retransmission timeout
    jitter = 0.1                # share of the one-way delay added at random
    uplink_mbps = 20

    [churn]
    per_hour = 0.1              # share of the nodes that leave per hour (each is replaced)
    session = "exponential"     # or "pareto": session lengths, with mean 1/per_hour hours

    [workload]
    dials_per_node_hour = 6     # each online node dials a random online node by peer ID
    channels = 0                # channels of the channel relay (WSRelay)
    subscribers_per_channel = 10  # clients on random nodes; a leaver's place is taken elsewhere
    channel_sizes = "uniform"   # or "zipf": channel r (1, 2, ...) has max(2, subscribers_per_channel / r)
    messages_per_channel_hour = 60  # published by random subscribers
    connection_hold = 600       # seconds a dialed connection stays open (and its circuit, if relayed)

    [relay]                     # optional: each public node's relay limits (nat/circuits.py RelayLimits)
    per_peer = 32               # circuits to one registered node
    per_ip = 16                 # circuits from callers at one IP (each simulated home has its own)
    total = 512
    persistent_per_peer = 8     # circuits kept for pairs with no direct path, to one registered node

    [[partitions]]              # any number: a random share of the nodes is cut off for a while
    start = 1800
    end = 2100
    share = 0.3

Unknown keys, wrong types and impossible values raise ScenarioError naming the key.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from nat.circuits import RelayLimits
from simulations.internet import REGIONS, LinkModel, Nat, region_rtt_matrix

DEFAULT = Path(__file__).resolve().parent / "scenarios" / "default.toml"


class ScenarioError(ValueError):
    pass


@dataclass(frozen=True)
class Partition:
    start: float
    end: float
    share: float


@dataclass(frozen=True)
class Scenario:
    nodes: int = 100
    bootstrap: int = 3
    signaling_nodes: int = 3
    duration: float = 3600.0
    join_window: float = 300.0
    warmup: float = 600.0
    seed: int = 1
    regions: dict[str, float] = field(default_factory=lambda: {"eu-west": 1.0})
    nat: dict[str, float] = field(default_factory=lambda: {"public": 1.0})
    rtt: dict[tuple[str, str], float] = field(default_factory=region_rtt_matrix)
    loss: float = 0.0
    jitter: float = 0.1
    uplink_mbps: float = 20.0
    churn_per_hour: float = 0.0
    session: str = "exponential"
    dials_per_node_hour: float = 6.0
    channels: int = 0
    subscribers_per_channel: int = 10
    channel_sizes: str = "uniform"
    messages_per_channel_hour: float = 60.0
    inm_peers: int = 8
    connection_hold: float = 600.0  # seconds a dialed connection stays open (its circuit, if relayed)
    relay: tuple[tuple[str, int], ...] = ()  # [relay] table: nat.circuits.RelayLimits' counts, as (name, value)
    partitions: tuple[Partition, ...] = ()
    name: str = "scenario"

    def relay_limits(self) -> RelayLimits:
        """What each public node's relay admits: the node's own defaults, or the scenario's."""
        return replace(RelayLimits(), **dict(self.relay))

    def channel_size(self, rank: int) -> int:
        """Subscribers of channel `rank` (0-based): all alike, or Zipf (a few large, most small)."""
        if self.channel_sizes == "zipf":
            return max(2, round(self.subscribers_per_channel / (rank + 1)))
        return self.subscribers_per_channel

    def link_model(self) -> LinkModel:
        return LinkModel(self.rtt, jitter=self.jitter, loss=self.loss, uplink_bps=self.uplink_mbps * 1e6)

    def with_value(self, key: str, value: str) -> Scenario:
        """This scenario with one [network]/[links]/[churn]/[workload]/[relay] key changed (a sweep step)."""
        table = next((t for t, keys in _KEYS.items() if key in keys and t != "latency"), None)
        if table is None or key in ("regions", "nat"):
            raise ScenarioError(f"cannot sweep {key!r}: sweep a number of [network], [links], [churn], [workload] or [relay]")
        raw = _as_raw(self)
        raw[table][key] = float(value) if "." in value or "e" in value else int(value)
        return parse(raw, self.name)


_KEYS = {
    "network": {"nodes": int, "bootstrap": int, "signaling_nodes": int, "duration": float, "join_window": float,
                "warmup": float, "seed": int, "regions": dict, "nat": dict, "inm_peers": int},
    "latency": {"regions": list, "rtt_ms": list},
    "links": {"loss": float, "jitter": float, "uplink_mbps": float},
    "churn": {"per_hour": float, "session": str},
    "workload": {"dials_per_node_hour": float, "channels": int, "subscribers_per_channel": int,
                 "channel_sizes": str, "messages_per_channel_hour": float, "connection_hold": float},
    "relay": {"per_peer": int, "per_ip": int, "total": int, "persistent_per_peer": int},
    "partitions": {"start": float, "end": float, "share": float},
}


def load(path: Path | None = None) -> Scenario:
    path = path or DEFAULT
    try:
        raw = tomllib.loads(Path(path).read_text())
    except OSError as e:
        raise ScenarioError(f"{path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ScenarioError(f"{path}: {e}") from None
    return parse(raw, Path(path).stem)


def parse(raw: dict[str, Any], name: str = "scenario") -> Scenario:
    for table, body in raw.items():
        if table not in _KEYS:
            raise ScenarioError(f"unknown table [{table}] (known: {', '.join(_KEYS)})")
        for entry in body if table == "partitions" and isinstance(body, list) else [body]:
            if not isinstance(entry, dict):
                raise ScenarioError(f"[{table}] must be a table")
            for key, value in entry.items():
                _check_type(f"{table}.{key}", _KEYS[table].get(key), value)
    net, lat, links, churn, work, relay = (raw.get(t, {}) for t in ("network", "latency", "links", "churn", "workload", "relay"))
    rtt, names = region_rtt_matrix(), set(REGIONS)
    if lat:
        names, rtt = _latency(lat)
    regions = net.get("regions", {"eu-west": 1.0} if "eu-west" in names else {sorted(names)[0]: 1.0})
    nat = net.get("nat", {"public": 1.0})
    _shares("network.regions", regions, names)
    _shares("network.nat", nat, {n.value for n in Nat})
    sc = Scenario(
        nodes=net.get("nodes", 100), bootstrap=net.get("bootstrap", 3), signaling_nodes=net.get("signaling_nodes", 3),
        duration=float(net.get("duration", 3600)), join_window=float(net.get("join_window", 300)),
        warmup=float(net.get("warmup", 600)), seed=net.get("seed", 1), regions=dict(regions), nat=dict(nat), rtt=rtt,
        loss=float(links.get("loss", 0.0)), jitter=float(links.get("jitter", 0.1)),
        uplink_mbps=float(links.get("uplink_mbps", 20)), churn_per_hour=float(churn.get("per_hour", 0.0)),
        session=churn.get("session", "exponential"), dials_per_node_hour=float(work.get("dials_per_node_hour", 6)),
        channels=work.get("channels", 0), subscribers_per_channel=work.get("subscribers_per_channel", 10),
        channel_sizes=work.get("channel_sizes", "uniform"),
        messages_per_channel_hour=float(work.get("messages_per_channel_hour", 60)), inm_peers=net.get("inm_peers", 8),
        connection_hold=float(work.get("connection_hold", 600)), relay=tuple(sorted(relay.items())),
        partitions=tuple(Partition(float(p.get("start", 0)), float(p.get("end", 0)), float(p.get("share", 0)))
                         for p in raw.get("partitions", [])),
        name=name,
    )
    _check_values(sc)
    return sc


def _check_type(key: str, kind: type | None, value: Any) -> None:
    if kind is None:
        raise ScenarioError(f"unknown key {key}")
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) if kind is float else (
        isinstance(value, kind) and not isinstance(value, bool))
    if not ok:
        raise ScenarioError(f"{key} must be {'a number' if kind is float else 'a ' + kind.__name__}, not {value!r}")


def _shares(key: str, shares: dict, known: set[str]) -> None:
    if not shares:
        raise ScenarioError(f"{key} is empty")
    for name, share in shares.items():
        if name not in known:
            raise ScenarioError(f"{key}: unknown {name!r} (known: {', '.join(sorted(known))})")
        if not isinstance(share, (int, float)) or isinstance(share, bool) or share < 0:
            raise ScenarioError(f"{key}.{name} must be a share between 0 and 1")
    if abs(sum(shares.values()) - 1.0) > 1e-6:
        raise ScenarioError(f"{key}: shares sum to {sum(shares.values()):g}, not 1")


def _latency(lat: dict) -> tuple[set[str], dict[tuple[str, str], float]]:
    names, matrix = lat.get("regions"), lat.get("rtt_ms")
    if not names or not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
        raise ScenarioError("latency.regions must be a list of distinct names")
    if (not isinstance(matrix, list) or len(matrix) != len(names)
            or any(not isinstance(row, list) or len(row) != len(names) for row in matrix)):
        raise ScenarioError(f"latency.rtt_ms must be a {len(names)}x{len(names)} matrix")
    rtt = {}
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            ms = matrix[i][j]
            if not isinstance(ms, (int, float)) or isinstance(ms, bool) or ms < 0:
                raise ScenarioError(f"latency.rtt_ms[{i}][{j}] must be a number of ms >= 0")
            rtt[(a, b)] = ms / 1000
    return set(names), rtt


def _check_values(sc: Scenario) -> None:
    rules = [
        ("network.nodes", sc.nodes >= 1), ("network.bootstrap", 1 <= sc.bootstrap <= sc.nodes),
        ("network.signaling_nodes", 1 <= sc.signaling_nodes <= 16), ("network.duration", sc.duration > 0),
        ("network.join_window", sc.join_window >= 0), ("network.warmup", 0 <= sc.warmup < sc.duration),
        ("links.loss", 0 <= sc.loss < 1), ("links.jitter", sc.jitter >= 0), ("links.uplink_mbps", sc.uplink_mbps > 0),
        ("churn.per_hour", sc.churn_per_hour >= 0), ("churn.session", sc.session in ("exponential", "pareto")),
        ("workload.dials_per_node_hour", sc.dials_per_node_hour >= 0),
        ("workload.channels", sc.channels >= 0), ("workload.subscribers_per_channel", sc.subscribers_per_channel >= 1),
        ("workload.channel_sizes", sc.channel_sizes in ("uniform", "zipf")),
        ("workload.messages_per_channel_hour", sc.messages_per_channel_hour >= 0), ("network.inm_peers", sc.inm_peers >= 1),
        ("workload.connection_hold", sc.connection_hold > 0), *((f"relay.{k}", v >= 1) for k, v in sc.relay),
    ]
    for key, ok in rules:
        if not ok:
            value = {"network.bootstrap": f"{sc.bootstrap} with {sc.nodes} nodes"}.get(key, "")
            raise ScenarioError(f"{key}: impossible value{' ' + value if value else ''}")
    for i, p in enumerate(sc.partitions):
        if not (0 <= p.start < p.end and 0 < p.share < 1):
            raise ScenarioError(f"partitions[{i}]: needs 0 <= start < end and 0 < share < 1")


def _as_raw(sc: Scenario) -> dict[str, Any]:
    """The scenario back as TOML tables (what a sweep step edits)."""
    names = sorted({a for a, _ in sc.rtt})
    raw: dict[str, Any] = {
        "network": {"nodes": sc.nodes, "bootstrap": sc.bootstrap, "signaling_nodes": sc.signaling_nodes,
                    "duration": sc.duration, "join_window": sc.join_window, "warmup": sc.warmup, "seed": sc.seed,
                    "regions": dict(sc.regions), "nat": dict(sc.nat), "inm_peers": sc.inm_peers},
        "links": {"loss": sc.loss, "jitter": sc.jitter, "uplink_mbps": sc.uplink_mbps},
        "churn": {"per_hour": sc.churn_per_hour, "session": sc.session},
        "workload": {"dials_per_node_hour": sc.dials_per_node_hour, "channels": sc.channels,
                     "subscribers_per_channel": sc.subscribers_per_channel, "channel_sizes": sc.channel_sizes,
                     "messages_per_channel_hour": sc.messages_per_channel_hour, "connection_hold": sc.connection_hold},
        "relay": dict(sc.relay),
    }
    if sc.rtt != region_rtt_matrix():
        raw["latency"] = {"regions": names, "rtt_ms": [[sc.rtt[(a, b)] * 1000 for b in names] for a in names]}
    if sc.partitions:
        raw["partitions"] = [{"start": p.start, "end": p.end, "share": p.share} for p in sc.partitions]
    return raw
