"""The one config loader: defaults, then a TOML file, then command-line flags (flags win).

The file uses the flags' names with underscores (`data_dir`, `listen`, `bootstrap`, `api`,
`network`, ...). A list given by flag replaces the file's list rather than extending it, so a
command line always says the whole truth. Every value is validated here, once, with an error
that names the key; nothing downstream re-parses user strings.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import multiaddr

from nat.gateway import PROTOCOLS as PORT_MAPPING_PROTOCOLS
from overlay.node.apiauth import is_loopback
from overlay.core.errors import ConfigError
from overlay.core.records import peer_id_from_str
from overlay.core.resources import ResourceLimits
from overlay.kademlia.core import KadConfig

# Both families; where IPv6 is off the /ip6 ones are left out at start (overlay.transport.host.listenable)
DEFAULT_LISTEN = ("/ip4/0.0.0.0/tcp/4001", "/ip4/0.0.0.0/tcp/4002/ws", "/ip6/::/tcp/4001", "/ip6/::/tcp/4002/ws")
DEFAULT_API = "127.0.0.1:4080"
DEFAULT_NETWORK = "overlay"
NETWORK_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
DHT_MODES = ("auto", "server", "client")
REACHABILITY = ("auto", "public", "private")
ICE_URL_RE = re.compile(r"^(stun|turn):[A-Za-z0-9.\-\[\]:]+(\?transport=(udp|tcp))?$")
LOG_LEVELS = ("debug", "info", "warning", "error")
ORIGIN_RE = re.compile(r"^https?://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?$")
HOST_RE = re.compile(r"^(\[?[0-9A-Fa-f:.]+\]?|[A-Za-z0-9][A-Za-z0-9.-]{0,252})$")


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "overlay-node"


@dataclass(frozen=True)
class Config:
    data_dir: Path = field(default_factory=default_data_dir)
    listen: tuple[multiaddr.Multiaddr, ...] = tuple(multiaddr.Multiaddr(a) for a in DEFAULT_LISTEN)
    bootstrap: tuple[multiaddr.Multiaddr, ...] = ()
    api: tuple[str, int] = ("127.0.0.1", 4080)
    network: str = DEFAULT_NETWORK
    dht_mode: str = "auto"
    max_connections: int = 256
    log_level: str = "info"
    reachability: str = "auto"  # "auto": measured by dial-back; or forced
    signaling_nodes: int = 3  # how many signalling nodes a node behind NAT registers with
    stun_servers: tuple[str, ...] = ()  # "host:port", used besides the overlay's public nodes
    turn_servers: tuple[str, ...] = ()  # "turn:host:port?transport=udp", the last fallback
    turn_username: str = ""
    turn_password: str = ""
    webrtc_interfaces: tuple[str, ...] = ()  # interface names or IPs; empty: all but loopback
    port_mapping: bool = True  # ask the gateway to forward our TCP port
    port_mapping_protocols: tuple[str, ...] = PORT_MAPPING_PROTOCOLS  # tried in this order
    mdns: bool = True  # announce this node on the LAN (mDNS) and dial the nodes heard there
    inm_peers: int = 8  # nodes to keep an INM link with (WSRelay channels)
    network_token: str = ""  # if set, a private network: INM handshakes prove it (never send it)
    relayer_hold: int = 60  # seconds a message waits for a MessageNet relayer that is not connected
    client_queue: int = 1024  # messages waiting for one slow API client (channels, relayers); beyond: dropped, counted
    trusted_peers: tuple[str, ...] = ()  # peer IDs whose typed messages are shed last under load
    api_allowed_origins: tuple[str, ...] = ()  # web origins whose pages may use the API (with the token)
    api_allowed_hosts: tuple[str, ...] = ()  # Host names besides 127.0.0.1, localhost and [::1]
    api_expose: bool = False  # allow a non-loopback API address (the LAN can then try the token)
    dht_limits: tuple[tuple[str, Any], ...] = ()  # [dht_limits] table: KadConfig's limits, as (name, value)
    relay_bandwidth: int = 2**20  # bytes a second this node relays for others, over all circuits
    peer_ping_interval: int = 15  # seconds between liveness pings on each connection (dead ones closed)
    resource_limits: tuple[tuple[str, Any], ...] = ()  # [resource_limits] table: ResourceLimits', as (name, value)

    def kad_config(self) -> KadConfig:
        return replace(KadConfig(), **dict(self.dht_limits))

    def limits(self) -> ResourceLimits:
        return replace(ResourceLimits(), connections=self.max_connections, **dict(self.resource_limits))

    @property
    def api_url(self) -> str:
        host, port = self.api
        return f"http://{host}:{port}"


def parse_multiaddr(text: str, what: str) -> multiaddr.Multiaddr:
    try:
        return multiaddr.Multiaddr(text)
    except Exception as e:  # the multiaddr package raises several unrelated types
        raise ConfigError(f"{what}: invalid multiaddr {text!r}: {e}") from None


def parse_bootstrap(text: str) -> multiaddr.Multiaddr:
    addr = parse_multiaddr(text, "bootstrap")
    try:
        pid = addr.value_for_protocol("p2p")
    except Exception:
        pid = None
    if not pid:
        raise ConfigError(f"bootstrap: {text!r} lacks the /p2p/<peer-id> part")
    peer_id_from_str(str(pid))
    return addr


def parse_host_port(text: str, what: str = "api") -> tuple[str, int]:
    host, sep, port = str(text).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{what}: expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def _as_list(value: Any, key: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    raise ConfigError(f"{key}: expected a string or a list of strings")


def _whole(key: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ConfigError(f"{key}: expected a whole number from {low} to {high}, got {value!r}")
    return value


def _convert(key: str, value: Any) -> Any:
    if key == "data_dir":
        if not isinstance(value, (str, Path)) or not str(value):
            raise ConfigError("data_dir: expected a path")
        return Path(value).expanduser()
    if key == "listen":
        addrs = tuple(parse_multiaddr(v, "listen") for v in _as_list(value, key))
        if not addrs:
            raise ConfigError("listen: at least one address is needed")
        return addrs
    if key == "bootstrap":
        return tuple(parse_bootstrap(v) for v in _as_list(value, key))
    if key == "api":
        return parse_host_port(value)
    if key == "network":
        if not isinstance(value, str) or not NETWORK_RE.match(value):
            raise ConfigError(f"network: {value!r} must be 1-64 of a-z 0-9 . _ - (lower case)")
        return value
    if key == "dht_mode":
        if value not in DHT_MODES:
            raise ConfigError(f"dht_mode: {value!r} is not one of {', '.join(DHT_MODES)}")
        return value
    if key == "log_level":
        if value not in LOG_LEVELS:
            raise ConfigError(f"log_level: {value!r} is not one of {', '.join(LOG_LEVELS)}")
        return value
    if key == "reachability":
        if value not in REACHABILITY:
            raise ConfigError(f"reachability: {value!r} is not one of {', '.join(REACHABILITY)}")
        return value
    if key == "signaling_nodes":
        return _whole(key, value, 1, 16)
    if key == "stun_servers":
        servers = tuple(_as_list(value, key))
        for server in servers:
            host, _ = parse_host_port(server, "stun_servers")
            try:
                ipaddress.ip_address(host)
            except ValueError:
                raise ConfigError(f"stun_servers: {server!r}: give an IP address (STUN servers are never looked up by name)") from None
        return servers
    if key == "turn_servers":
        servers = tuple(_as_list(value, key))
        for url in servers:
            if not url.startswith("turn:") or not ICE_URL_RE.match(url):
                raise ConfigError(f"turn_servers: {url!r} is not a turn:HOST:PORT[?transport=udp|tcp] URL")
        return servers
    if key in ("turn_username", "turn_password"):
        if not isinstance(value, str) or len(value) > 256:
            raise ConfigError(f"{key}: expected a string of at most 256 characters")
        return value
    if key == "webrtc_interfaces":
        return tuple(_as_list(value, key))
    if key == "port_mapping_protocols":
        protocols = tuple(_as_list(value, key))
        if not protocols or len(set(protocols)) != len(protocols) or not set(protocols) <= set(PORT_MAPPING_PROTOCOLS):
            raise ConfigError(f"{key}: a list of distinct names out of {', '.join(PORT_MAPPING_PROTOCOLS)}")
        return protocols
    if key in ("port_mapping", "api_expose", "mdns"):
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false")
        return value
    if key == "api_allowed_origins":
        origins = tuple(_as_list(value, key))
        for origin in origins:
            if not ORIGIN_RE.match(origin):
                raise ConfigError(f"api_allowed_origins: {origin!r} is not an origin like http://127.0.0.1:8000")
        return origins
    if key == "api_allowed_hosts":
        hosts = tuple(_as_list(value, key))
        for host in hosts:
            if not HOST_RE.match(host):
                raise ConfigError(f"api_allowed_hosts: {host!r} is not a host name or IP address (no port)")
        return hosts
    if key == "trusted_peers":
        peers = tuple(_as_list(value, key))
        for peer in peers:
            peer_id_from_str(peer)
        return peers
    if key == "relayer_hold":
        return _whole(key, value, 0, 86_400)
    if key == "client_queue":
        return _whole(key, value, 16, 65_536)
    if key == "inm_peers":
        return _whole(key, value, 1, 64)
    if key == "network_token":
        if not isinstance(value, str) or len(value) > 256 or not value.isprintable():
            raise ConfigError("network_token: expected printable text of at most 256 characters")
        return value
    if key == "max_connections":
        return _whole(key, value, 1, 100_000)
    if key == "relay_bandwidth":
        return _whole(key, value, 1024, 2**40)
    if key == "peer_ping_interval":
        return _whole(key, value, 1, 3600)
    if key == "dht_limits":
        return _limits(key, value, DHT_LIMITS)
    if key == "resource_limits":
        return _limits(key, value, RESOURCE_LIMITS)
    raise ConfigError(f"unknown config key {key!r}")


# The limit tables: each name with its default, whose type says what the file may give.
DHT_LIMITS = {f.name: f.default for f in fields(KadConfig) if f.name.startswith(("max_", "table_")) or f.name.endswith("_requests")}
RESOURCE_LIMITS = {f.name: f.default for f in fields(ResourceLimits) if f.name != "connections"}  # that one is max_connections


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and 0 < x <= 1e6


def _limits(table: str, value: Any, known: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    """A table of limits: whole numbers, seconds, [a rate a second, burst], or lists of networks."""
    if not isinstance(value, dict):
        raise ConfigError(f"{table}: expected a table of limits")
    limits = []
    for name, limit in sorted(value.items()):
        what = f"{table}.{name}"
        if name not in known:
            raise ConfigError(f"{what}: unknown limit (known: {', '.join(known)})")
        default = known[name]
        if isinstance(default, int):
            limits.append((name, _whole(what, limit, 1, 10_000_000)))
        elif isinstance(default, float):
            if not _number(limit):
                raise ConfigError(f"{what}: expected a number of seconds above 0")
            limits.append((name, float(limit)))
        elif isinstance(default, tuple) and default and isinstance(default[0], str):
            try:
                networks = tuple(str(ipaddress.ip_network(n, strict=False)) for n in _as_list(limit, what))
            except ValueError as e:
                raise ConfigError(f"{what}: {e}") from None
            limits.append((name, networks))
        else:
            if not isinstance(limit, list) or len(limit) != 2 or not all(_number(x) for x in limit):
                raise ConfigError(f"{what}: expected [a rate a second, burst], each above 0")
            limits.append((name, (float(limit[0]), float(limit[1]))))
    return tuple(limits)


def load_config(path: Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Defaults < file < overrides (flags). Overrides whose value is None are not given."""
    values: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as f:
                raw = tomllib.load(f)
        except OSError as e:
            raise ConfigError(f"config: cannot read {path}: {e.strerror}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config: {path} is not valid TOML: {e}") from None
        for key, value in raw.items():
            values[key] = _convert(key, value)
    for key, value in (overrides or {}).items():
        if value is None or value == []:
            continue
        values[key] = _convert(key, value)
    known = {f.name for f in fields(Config)}
    config = replace(Config(), **{k: v for k, v in values.items() if k in known})
    if not is_loopback(config.api[0]) and not config.api_expose:
        raise ConfigError(f"api: {config.api[0]} is not a loopback address; the API would be open to the network "
                          "(set api_expose = true in the config file to allow it)")
    return config
