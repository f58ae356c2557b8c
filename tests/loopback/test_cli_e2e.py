"""Real `overlay-node` processes on loopback, driven through the CLI and the local API."""

from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest

from tests.loopback.nodeproc import CLI, cli, wait_until

pytestmark = pytest.mark.timeout(180)

def test_three_processes_find_and_ping_each_other(tmp_path, procs):
    a = procs([], tmp_path / "a")
    assert all(addr.endswith(f"/p2p/{a.peer_id}") for addr in a.addrs)
    b = procs(["--bootstrap", a.addrs[0]], tmp_path / "b")
    c = procs(["--bootstrap", a.addrs[0]], tmp_path / "c")
    for p in (b, c):
        wait_until(lambda p=p: p.get_json("/v1/status")["routing_table"] >= 2)
    assert b.get_json("/health") == {"healthy": "good", "reason": "healthy"}

    found = cli("find", c.peer_id, "--api", b.api, "--data-dir", str(b.data_dir), "--json")
    assert found.returncode == 0, found.stderr
    body = json.loads(found.stdout)
    assert body["peer_id"] == c.peer_id
    assert [f"{x}/p2p/{c.peer_id}" for x in body["addrs"]] == c.addrs

    pinged = cli("ping", c.peer_id, "--count", "2", "--api", b.api, "--token", b.token, "--json")
    assert pinged.returncode == 0, pinged.stderr
    assert len(json.loads(pinged.stdout)["rtt_ms"]) == 2

    human = cli("ping", a.peer_id, "--count", "1", "--api", c.api, "--data-dir", str(c.data_dir))
    assert human.returncode == 0 and "1 of 1 answered" in human.stdout

    status = cli("status", "--api", a.api, "--data-dir", str(a.data_dir), "--json")
    assert json.loads(status.stdout)["peer_id"] == a.peer_id
    peers = json.loads(cli("peers", "--api", a.api, "--data-dir", str(a.data_dir), "--json").stdout)
    assert {b.peer_id, c.peer_id} <= {p["peer_id"] for p in peers}

    metrics = a.request("GET", "/metrics")[1]
    assert "overlay_routing_table_size 2" in metrics
    b_metrics = b.request("GET", "/metrics")[1]
    assert 'overlay_dht_operations_total{kind="get_value",outcome="ok"}' in b_metrics

    for p in (a, b, c):
        code, err = p.stop()
        assert code == 0, err
        assert "Traceback" not in err


def test_channel_listen_and_send_across_two_processes(tmp_path, procs):
    a = procs([], tmp_path / "a")
    b = procs(["--bootstrap", a.addrs[0]], tmp_path / "b")
    wait_until(lambda: "overlay_inm_neighbours 1" in b.request("GET", "/metrics")[1])
    listener = subprocess.Popen([CLI, "channel", "listen", "news", "--password", "pw", "--api", a.api, "--data-dir", str(a.data_dir)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: [r["name"] for r in a.get_json("/v1/channels")["reserved"]] == ["news"])  # the listener is in
        wrong = cli("channel", "send", "news", "hello", "--password", "nope", "--api", b.api, "--data-dir", str(b.data_dir))
        assert wrong.returncode == 1 and "invalid password" in wrong.stderr
        sent = cli("channel", "send", "news", "hello there", "--password", "pw", "--api", b.api, "--data-dir", str(b.data_dir))
        assert sent.returncode == 0, sent.stderr
        line = listener.stdout.readline()
        assert line == "hello there\n"
    finally:
        listener.send_signal(signal.SIGINT)
        assert listener.wait(timeout=20) == 0, listener.stderr.read()


def test_restart_keeps_peer_id_and_id_command_agrees(tmp_path, procs):
    first = procs([], tmp_path / "n")
    code, err = first.stop()
    assert code == 0 and "Traceback" not in err
    second = procs([], tmp_path / "n")
    assert second.peer_id == first.peer_id
    shown = cli("id", "--data-dir", str(tmp_path / "n"))
    assert shown.stdout.strip() == first.peer_id
    assert oct(os.stat(tmp_path / "n" / "identity.key").st_mode & 0o777) == "0o600"


@pytest.mark.parametrize(
    "args",
    [
        ["run", "--listen", "/ip4/1.2.3/tcp/1"],
        ["run", "--bootstrap", "/ip4/127.0.0.1/tcp/1"],
        ["run", "--api", "nope"],
        ["run", "--api", "0.0.0.0:4080"],  # beyond loopback without api_expose in the config
        ["run", "--network", "UPPER"],
        ["find", "not-a-peer-id"],
        ["ping", "12D3KooWHu5UDiWacaCzqtHboSFD2b212f53gR4F1NAmHuBtaYvk", "--count", "0"],
        ["run", "--no-such-flag"],
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, tmp_path):
    result = cli(*args, *(["--data-dir", str(tmp_path)] if args[0] == "run" else []))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("overlay-node: error:"), result.stderr


def test_api_down_is_a_clear_error():
    result = cli("status", "--api", "127.0.0.1:1", "--token", "t" * 43)
    assert result.returncode == 1
    assert "cannot reach the node's API" in result.stderr
