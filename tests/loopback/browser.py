"""A headless Chromium driven over the DevTools protocol, for tests of what a real page can do.

Enough of the protocol for tests: load a page (`navigate`) and run JavaScript in it
(`evaluate`). Each browser gets a fresh profile, is killed (its whole process group) and has
its profile removed on exit, also when the test fails.

The browser is kept on this machine: background networking, updates, pings, sync and the like
are off; only the names given as `loopback_names` resolve (to 127.0.0.1), every other name fails
to resolve, and any request to a non-loopback address goes to a closed loopback port posing as
its proxy.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import urllib.request
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio
from trio_websocket import WebSocketConnection, open_websocket_url

CHROMIUM = "/usr/bin/chromium"
DEAD_PROXY = "127.0.0.1:9"  # the discard port, normally closed; whatever listens there is on this machine
START_TIMEOUT = 30.0
CALL_TIMEOUT = 30.0
OFFLINE_FLAGS = (
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-domain-reliability",
    "--disable-client-side-phishing-detection",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--disable-breakpad",
    "--disable-crash-reporter",
    "--no-pings",
    "--no-service-autorun",
    "--metrics-recording-only",
    "--safebrowsing-disable-auto-update",
    "--password-store=basic",
    "--use-mock-keychain",
    "--disable-features=MediaRouter,OptimizationHints,Translate,AutofillServerCommunication,"
    "CertificateTransparencyComponentUpdater,InterestFeedContentSuggestions,HttpsUpgrades",
)


class BrowserError(Exception):
    """The browser did not start, or a DevTools call failed or threw in the page."""


class Browser:
    """One page target; calls run one at a time, reading replies (and the events waited for) inline."""

    WANTED_EVENTS = frozenset({"Page.loadEventFired"})

    def __init__(self, ws: WebSocketConnection) -> None:
        self._ws = ws
        self._ids = itertools.count(1)
        self._events: list[str] = []

    async def _next(self) -> dict:
        message = json.loads(await self._ws.get_message())
        if message.get("method") in self.WANTED_EVENTS:
            self._events.append(message["method"])
        return message

    async def call(self, method: str, **params: Any) -> dict:
        """One DevTools command's result; its error raises BrowserError."""
        call_id = next(self._ids)
        await self._ws.send_message(json.dumps({"id": call_id, "method": method, "params": params}))
        with trio.fail_after(CALL_TIMEOUT):
            while (reply := await self._next()).get("id") != call_id:
                pass
        if "error" in reply:
            raise BrowserError(f"{method}: {reply['error'].get('message')}")
        return reply.get("result", {})

    async def navigate(self, url: str) -> None:
        """Load `url` in the page and wait for its load event (at once for a same-document move)."""
        self._events.clear()
        result = await self.call("Page.navigate", url=url)
        if "errorText" in result:
            raise BrowserError(f"navigate {url}: {result['errorText']}")
        if "loaderId" in result:
            with trio.fail_after(CALL_TIMEOUT):
                while "Page.loadEventFired" not in self._events:
                    await self._next()

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page, a promise awaited; a throw raises."""
        result = await self.call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise BrowserError(f"the page threw: {details.get('exception', {}).get('description') or details.get('text')}")
        return result["result"].get("value")


def chromium_flags(profile: Path, loopback_names: Iterable[str] = ()) -> list[str]:
    names = list(loopback_names)
    rules = [f"MAP {name} 127.0.0.1" for name in names] + ["MAP * ~NOTFOUND", "EXCLUDE localhost", "EXCLUDE 127.0.0.1"]
    return [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        f"--user-data-dir={profile}", "--remote-debugging-port=0", "--no-first-run", "--no-default-browser-check",
        *OFFLINE_FLAGS,
        f"--host-resolver-rules={', '.join(rules)}",
        f"--proxy-server=http://{DEAD_PROXY}",
        *([f"--proxy-bypass-list={';'.join(names)}"] if names else []),  # loopback addresses bypass it anyway
    ]


@asynccontextmanager
async def open_browser(loopback_names: Iterable[str] = (), *, chromium: str = CHROMIUM) -> AsyncIterator[Browser]:
    """A headless Chromium on about:blank, its page attached; killed and its profile removed on exit."""
    profile = Path(tempfile.mkdtemp(prefix="overlay-chromium-"))
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen([chromium, *chromium_flags(profile, loopback_names), "about:blank"],
                            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    try:
        try:
            ws_url = await _page_target(await _devtools_port(profile, proc))
        except (BrowserError, OSError, trio.TooSlowError) as e:
            log.seek(0)
            raise BrowserError(f"chromium did not start: {e}\n{log.read().decode(errors='replace')[-2000:]}") from None
        async with open_websocket_url(ws_url, max_message_size=64 * 1024 * 1024) as ws:
            browser = Browser(ws)
            await browser.call("Page.enable")
            yield browser
    finally:
        _kill(proc)
        log.close()
        shutil.rmtree(profile, ignore_errors=True)


def _kill(proc: subprocess.Popen) -> None:
    """SIGKILL the browser's process group (it leads its own session), then reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


async def _devtools_port(profile: Path, proc: subprocess.Popen) -> int:
    path = profile / "DevToolsActivePort"
    with trio.fail_after(START_TIMEOUT):
        while True:
            if proc.poll() is not None:
                raise BrowserError(f"chromium exited with {proc.returncode}")
            try:
                lines = path.read_text().splitlines()
            except FileNotFoundError:
                lines = []
            if len(lines) >= 2 and lines[0].isdigit():  # port, then the browser's path: written in full
                return int(lines[0])
            await trio.sleep(0.05)


async def _page_target(port: int) -> str:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def targets() -> list[dict]:
        with opener.open(f"http://127.0.0.1:{port}/json/list", timeout=CALL_TIMEOUT) as r:
            return json.loads(r.read())

    with trio.fail_after(START_TIMEOUT):
        while True:
            pages = [t for t in await trio.to_thread.run_sync(targets) if t.get("type") == "page"]
            if pages:
                return pages[0]["webSocketDebuggerUrl"]
            await trio.sleep(0.05)
