"""Real `overlay-node` processes on loopback, driven through the CLI and the local API."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(180)

CLI = str(Path(sys.executable).parent / "overlay-node")


class Proc:
    def __init__(self, args: list[str], data_dir: Path) -> None:
        self.popen = subprocess.Popen(
            [CLI, "run", "--data-dir", str(data_dir), "--listen", "/ip4/127.0.0.1/tcp/0",
             "--api", "127.0.0.1:0", "--network", "e2e", "--no-port-mapping", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.peer_id = ""
        self.addrs: list[str] = []
        self.api = ""
        self._read_banner()

    def _read_banner(self, timeout: float = 30.0) -> None:
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in self.popen.stdout], daemon=True).start()
        deadline = time.monotonic() + timeout
        while not self.api:
            if self.popen.poll() is not None:
                raise AssertionError(f"node exited {self.popen.returncode}: {self.popen.stderr.read()}")
            try:
                line = lines.get(timeout=max(0.0, min(0.5, deadline - time.monotonic()))).strip()
            except queue.Empty:
                if time.monotonic() > deadline:
                    raise AssertionError("node did not print its banner in time") from None
                continue
            if line.startswith("peer id: "):
                self.peer_id = line.removeprefix("peer id: ")
            elif line.startswith("listening on "):
                self.addrs.append(line.removeprefix("listening on "))
            elif line.startswith("api on "):
                self.api = line.removeprefix("api on ").removeprefix("http://")

    def stop(self) -> tuple[int, str]:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
        return self.popen.returncode, self.popen.stderr.read()


@pytest.fixture
def procs():
    started: list[Proc] = []

    def start(args: list[str], data_dir: Path) -> Proc:
        p = Proc(args, data_dir)
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop()


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=90)


def get_json(api: str, path: str) -> dict:
    with urllib.request.urlopen(f"http://{api}{path}", timeout=10) as r:
        return json.loads(r.read())


def wait_until(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.1)


def test_three_processes_find_and_ping_each_other(tmp_path, procs):
    a = procs([], tmp_path / "a")
    assert all(addr.endswith(f"/p2p/{a.peer_id}") for addr in a.addrs)
    b = procs(["--bootstrap", a.addrs[0]], tmp_path / "b")
    c = procs(["--bootstrap", a.addrs[0]], tmp_path / "c")
    for p in (b, c):
        wait_until(lambda p=p: get_json(p.api, "/v1/status")["routing_table"] >= 2)
    assert get_json(b.api, "/health") == {"healthy": "good", "reason": "healthy"}

    found = cli("find", c.peer_id, "--api", b.api, "--json")
    assert found.returncode == 0, found.stderr
    body = json.loads(found.stdout)
    assert body["peer_id"] == c.peer_id
    assert [f"{x}/p2p/{c.peer_id}" for x in body["addrs"]] == c.addrs

    pinged = cli("ping", c.peer_id, "--count", "2", "--api", b.api, "--json")
    assert pinged.returncode == 0, pinged.stderr
    assert len(json.loads(pinged.stdout)["rtt_ms"]) == 2

    human = cli("ping", a.peer_id, "--count", "1", "--api", c.api)
    assert human.returncode == 0 and "1 of 1 answered" in human.stdout

    status = cli("status", "--api", a.api, "--json")
    assert json.loads(status.stdout)["peer_id"] == a.peer_id
    peers = json.loads(cli("peers", "--api", a.api, "--json").stdout)
    assert {b.peer_id, c.peer_id} <= {p["peer_id"] for p in peers}

    metrics = urllib.request.urlopen(f"http://{a.api}/metrics", timeout=10).read().decode()
    assert "overlay_routing_table_size 2" in metrics
    b_metrics = urllib.request.urlopen(f"http://{b.api}/metrics", timeout=10).read().decode()
    assert 'overlay_dht_operations_total{kind="get_value",outcome="ok"}' in b_metrics

    for p in (a, b, c):
        code, err = p.stop()
        assert code == 0, err
        assert "Traceback" not in err


def test_channel_listen_and_send_across_two_processes(tmp_path, procs):
    a = procs([], tmp_path / "a")
    b = procs(["--bootstrap", a.addrs[0]], tmp_path / "b")
    wait_until(lambda: "overlay_inm_neighbours 1" in urllib.request.urlopen(f"http://{b.api}/metrics", timeout=10).read().decode())
    listener = subprocess.Popen([CLI, "channel", "listen", "news", "--password", "pw", "--api", a.api],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: get_json(b.api, "/v1/channels")["open_elsewhere"].get("news") == [a.peer_id])
        wrong = cli("channel", "send", "news", "hello", "--password", "nope", "--api", b.api)
        assert wrong.returncode == 1 and "invalid password" in wrong.stderr
        sent = cli("channel", "send", "news", "hello there", "--password", "pw", "--api", b.api)
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
    result = cli("status", "--api", "127.0.0.1:1")
    assert result.returncode == 1
    assert "cannot reach the node's API" in result.stderr
