"""Real `overlay-node run` processes on loopback for tests, and token-carrying API calls to them."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trio_websocket import open_websocket_url

from overlay.node.apiauth import auth_headers, read_token

CLI = str(Path(sys.executable).parent / "overlay-node")


class Proc:
    """One node process: its banner read (peer ID, addresses, API), its token from its data dir."""

    def __init__(self, args: list[str], data_dir: Path, network: str = "e2e",
                 preexec_fn: Callable[[], None] | None = None, cli: str = CLI, cwd: Path | None = None,
                 log: Path | None = None) -> None:
        """`cli`: the overlay-node executable (by default this venv's), run in `cwd`; `log`: a
        file for its stderr (a node that runs long would fill an unread pipe and block)."""
        self.data_dir = data_dir
        self.network = network
        self.log = log
        stderr = open(log, "w") if log else subprocess.PIPE
        try:
            self.popen = subprocess.Popen(
                [cli, "run", "--data-dir", str(data_dir), "--listen", "/ip4/127.0.0.1/tcp/0",
                 "--api", "127.0.0.1:0", "--network", network, "--no-port-mapping", "--no-mdns", *args],
                stdout=subprocess.PIPE, stderr=stderr, text=True, preexec_fn=preexec_fn, cwd=cwd,
            )
        finally:
            if log:
                stderr.close()  # the child has its own copy
        self.peer_id = ""
        self.addrs: list[str] = []
        self.api = ""
        try:
            self._read_banner()
        except BaseException:  # no banner, no Proc for the caller to stop: stop it here
            self.popen.kill()
            self.popen.wait()
            raise
        self.token = read_token(data_dir)

    def _read_banner(self, timeout: float = 30.0) -> None:
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in self.popen.stdout], daemon=True).start()
        deadline = time.monotonic() + timeout
        while not self.api:
            if self.popen.poll() is not None:
                raise AssertionError(f"node exited {self.popen.returncode}: {self.errors()}")
            try:
                line = lines.get(timeout=max(0.0, min(0.5, deadline - time.monotonic()))).strip()
            except queue.Empty:
                if time.monotonic() > deadline:
                    raise AssertionError("node did not print its banner in time") from None
                continue
            take_banner_line(self, line)

    def request(self, method: str, path: str, headers: dict[str, str] | None = None, token: bool = True,
                data: bytes | None = None) -> tuple[int, Any]:
        """(status, parsed JSON or text) of one API call, with the token unless `token` is False."""
        return http(self.api, method, path, {**(dict(auth_headers(self.token)) if token else {}), **(headers or {})}, data)

    def metric(self, series: str) -> float:
        """One series' value in /metrics, named with its labels as rendered (0 when absent)."""
        status, text = self.request("GET", "/metrics")
        assert status == 200, (status, text)
        return next((float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.rsplit(" ", 1)[0] == series), 0.0)

    def websocket(self, path: str, **kwargs: Any):
        """open_websocket_url to one of the node's API WebSockets, with its token."""
        return open_websocket_url(f"ws://{self.api}{path}", extra_headers=auth_headers(self.token), **kwargs)

    def get_json(self, path: str) -> Any:
        status, body = self.request("GET", path)
        assert status == 200, (status, body)
        return body

    def stop(self) -> tuple[int, str]:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
        return self.popen.returncode, self.errors()

    def errors(self) -> str:
        """What the node wrote to stderr (all of it: call once it has exited)."""
        return self.log.read_text() if self.log else self.popen.stderr.read()


def take_banner_line(proc: Any, line: str) -> None:
    """Set `proc`'s peer_id, addrs or api from one line of the banner `overlay-node run` prints."""
    if line.startswith("peer id: "):
        proc.peer_id = line.removeprefix("peer id: ")
    elif line.startswith("listening on "):
        proc.addrs.append(line.removeprefix("listening on "))
    elif line.startswith("api on "):
        proc.api = line.removeprefix("api on ").removeprefix("http://")


def http(api: str, method: str, path: str, headers: dict[str, str], data: bytes | None = None,
         timeout: float = 30.0) -> tuple[int, Any]:
    request = urllib.request.Request(f"http://{api}{path}", method=method, headers=headers, data=data)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            status, raw, kind = r.status, r.read(), r.headers.get("content-type", "")
    except urllib.error.HTTPError as e:
        status, raw, kind = e.code, e.read(), e.headers.get("content-type", "")
    return status, json.loads(raw) if "json" in kind and raw else raw.decode()


def cli(*args: str, timeout: float = 90, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=timeout, env=env)


def wait_until(condition: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met in {timeout}s")
        time.sleep(0.1)
