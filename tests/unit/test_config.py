"""Config precedence and validation; identity persistence."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from overlay.node.config import Config, load_config
from overlay.core.errors import ConfigError
from overlay.core.identity import load_or_create_key
from overlay.core.records import peer_id_from_public_key
from overlay.core.resources import ResourceLimits
from overlay.kademlia.core import KadConfig

PEER = "12D3KooWHu5UDiWacaCzqtHboSFD2b212f53gR4F1NAmHuBtaYvk"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(text)
    return path


def test_defaults():
    config = load_config()
    assert config == Config()
    assert config.api == ("127.0.0.1", 4080)
    assert [str(a) for a in config.listen] == ["/ip4/0.0.0.0/tcp/4001", "/ip4/0.0.0.0/tcp/4002/ws", "/ip6/::/tcp/4001", "/ip6/::/tcp/4002/ws"]


def test_file_overrides_defaults_and_flags_override_file(tmp_path):
    path = write(tmp_path, f'''
network = "testnet"
api = "127.0.0.1:9000"
listen = ["/ip4/127.0.0.1/tcp/0"]
bootstrap = ["/ip4/127.0.0.1/tcp/5/p2p/{PEER}"]
max_connections = 10
''')
    config = load_config(path)
    assert config.network == "testnet"
    assert config.api == ("127.0.0.1", 9000)
    assert config.max_connections == 10
    assert len(config.bootstrap) == 1
    config = load_config(path, {"api": "127.0.0.1:9100", "network": None, "listen": ["/ip4/127.0.0.1/tcp/7"], "bootstrap": []})
    assert config.api == ("127.0.0.1", 9100)
    assert config.network == "testnet"  # not given on the command line
    assert [str(a) for a in config.listen] == ["/ip4/127.0.0.1/tcp/7"]  # a flag list replaces the file's
    assert len(config.bootstrap) == 1  # an empty flag list is "not given"


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        ({"listen": ["/ip4/999.1.1.1/tcp/1"]}, "listen"),
        ({"listen": ["not a multiaddr"]}, "listen"),
        ({"bootstrap": ["/ip4/127.0.0.1/tcp/5"]}, "/p2p/"),
        ({"bootstrap": ["/ip4/127.0.0.1/tcp/5/p2p/notapeerid"]}, "bootstrap"),
        ({"api": "localhost"}, "HOST:PORT"),
        ({"api": "127.0.0.1:70000"}, "HOST:PORT"),
        ({"network": "Has Spaces"}, "network"),
        ({"dht_mode": "sometimes"}, "dht_mode"),
        ({"max_connections": 0}, "max_connections"),
        ({"colour": "blue"}, "unknown config key"),
        ({"stun_servers": ["stun.example.org:3478"]}, "never looked up by name"),
        ({"stun_servers": ["198.18.1.2"]}, "HOST:PORT"),
        ({"turn_servers": ["stun:198.18.1.2:3478"]}, "turn_servers"),
        ({"reachability": "maybe"}, "reachability"),
        ({"signaling_nodes": 0}, "signaling_nodes"),
        ({"port_mapping": "yes"}, "port_mapping"),
        ({"api": "0.0.0.0:4080"}, "not a loopback address"),
        ({"api": "198.18.0.5:4080", "api_expose": "yes"}, "api_expose"),
        ({"api_allowed_origins": ["evil.example"]}, "api_allowed_origins"),
        ({"api_allowed_origins": ["http://a.example/path"]}, "api_allowed_origins"),
        ({"api_allowed_hosts": ["host:4080"]}, "api_allowed_hosts"),
        ({"client_queue": 8}, "client_queue"),
    ],
)
def test_bad_values_name_the_key(overrides, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_config(None, overrides)


def test_the_api_leaves_loopback_only_when_the_config_says_so():
    assert load_config(None, {"api": "[::1]:4080"}).api == ("::1", 4080)
    assert load_config(None, {"api": "localhost:4080"}).api == ("localhost", 4080)
    exposed = load_config(None, {"api": "0.0.0.0:4080", "api_expose": True})
    assert exposed.api == ("0.0.0.0", 4080) and exposed.api_expose
    allowed = load_config(None, {"api_allowed_origins": ["http://127.0.0.1:8000", "https://[::1]"],
                                 "api_allowed_hosts": ["mynode.lan", "198.18.0.5"]})
    assert allowed.api_allowed_origins == ("http://127.0.0.1:8000", "https://[::1]")
    assert allowed.api_allowed_hosts == ("mynode.lan", "198.18.0.5")


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "listen = ["))
    with pytest.raises(ConfigError, match="listen"):
        load_config(write(tmp_path, "listen = 5"))


def test_identity_is_created_0600_and_reused(tmp_path):
    data_dir = tmp_path / "data"
    key = load_or_create_key(data_dir)
    path = data_dir / "identity.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = load_or_create_key(data_dir)
    assert peer_id_from_public_key(key.public_key()) == peer_id_from_public_key(again.public_key())


def test_corrupt_identity_is_a_clear_error(tmp_path):
    (tmp_path / "identity.key").write_bytes(b"garbage")
    os.chmod(tmp_path / "identity.key", 0o600)
    with pytest.raises(ConfigError, match="cannot read identity key"):
        load_or_create_key(tmp_path)


def test_dht_limits_come_from_the_file_and_are_checked(tmp_path):
    path = tmp_path / "node.toml"
    path.write_text("[dht_limits]\nmax_records_per_peer = 300\npeer_requests = [50, 250]\n")
    kad = load_config(path).kad_config()
    assert (kad.max_records_per_peer, kad.peer_requests, kad.max_providers_per_peer) == (300, (50.0, 250.0), 256)
    for bad, fragment in (("bogus = 1", "dht_limits.bogus: unknown limit"), ("max_records = 0", "dht_limits.max_records"),
                          ("peer_requests = [5]", "dht_limits.peer_requests"), ("peer_requests = [5, true]", "peer_requests")):
        path.write_text(f"[dht_limits]\n{bad}\n")
        with pytest.raises(ConfigError, match=fragment.replace("[", r"\[")):
            load_config(path)
    path.write_text('dht_limits = "all"\n')
    with pytest.raises(ConfigError, match="dht_limits: expected a table"):
        load_config(path)


def test_resource_limits_come_from_the_file_and_are_checked(tmp_path):
    path = tmp_path / "node.toml"
    path.write_text('max_connections = 100\n[resource_limits]\nper_ip = 3\nhandshake_timeout = 2.5\n'
                    'accept_rate = [1, 4]\nexempt = ["2001:db8::/32"]\n')
    limits = load_config(path).limits()
    assert (limits.connections, limits.inbound, limits.per_ip, limits.handshake_timeout) == (100, 75, 3, 2.5)
    assert (limits.accept_rate, limits.exempt, limits.pending) == ((1.0, 4.0), ("2001:db8::/32",), 64)
    for bad, fragment in (("connections = 5", "resource_limits.connections: unknown limit"),
                          ("per_ip = 0", "resource_limits.per_ip"), ("handshake_timeout = -1", "seconds above 0"),
                          ('exempt = ["not a network"]', "resource_limits.exempt"),
                          ("accept_rate = 4", "resource_limits.accept_rate")):
        path.write_text(f"[resource_limits]\n{bad}\n")
        with pytest.raises(ConfigError, match=fragment):
            load_config(path)


def test_the_readme_config_example_is_the_defaults(tmp_path):
    """The README's example config file loads, and its limit tables say the defaults."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    example = readme.split("[dht_limits]", 1)[1].split("```", 1)[0]
    path = tmp_path / "node.toml"
    path.write_text("[dht_limits]" + example)
    config = load_config(path)
    assert config.limits() == ResourceLimits() and config.kad_config() == KadConfig()
