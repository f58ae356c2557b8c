"""The one asyncio bridge of the process: aiortc runs on an asyncio loop in a dedicated thread.

The node runs on trio; aiortc and aioice run on asyncio. A dedicated asyncio thread measured
about 2.5x faster than trio-asyncio (which routes every asyncio callback, several per packet,
through trio's scheduler), so every aiortc object lives on that one loop, and trio code reaches
it only through this module:

- `await bridge.run(fn, *args)` runs the coroutine `fn(*args)` on the asyncio loop and returns its
  result to trio without a worker thread per call (trio's thread pool is capped at 40);
- `bridge.call_soon(fn, *args)` schedules a plain callback there (e.g. `channel.send`);
- asyncio-side code reports back with a `TrioCall` (trio's `run_sync_soon`), which swallows
  `RunFinishedError` so a callback arriving after trio has exited is dropped, not raised.

Never import `trio_asyncio` in this process: it replaces asyncio's loop functions globally.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio

T = TypeVar("T")

_lock = threading.Lock()
_bridge: AsyncioBridge | None = None


def tune_malloc() -> None:
    """Keep glibc from mmap/munmap-ing asyncio's 256 KiB datagram read buffer on every packet.

    asyncio reads each UDP packet into a fresh 256 KiB buffer; above glibc's dynamic mmap
    threshold every such buffer is an mmap + munmap pair, which cost about a quarter of the data
    channel's throughput when measured. A fixed threshold above that size keeps them in the heap.
    """
    name = ctypes.util.find_library("c")
    if not name:
        return
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt(-3, 1024 * 1024)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


class AsyncioBridge:
    """An asyncio event loop running forever in a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        started = threading.Event()

        def main() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.call_soon(started.set)
            self.loop.run_forever()

        self.thread = threading.Thread(target=main, name="overlay-asyncio", daemon=True)
        self.thread.start()
        started.wait()

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run `fn(*args)` on the asyncio loop soon (from any thread)."""
        self.loop.call_soon_threadsafe(fn, *args)

    async def run(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run `fn(*args)` on the asyncio loop and wait for its result in trio.

        Cancelling the trio task cancels the asyncio task; its exception, if any, is re-raised here.
        """
        done = trio.Event()
        call = TrioCall()
        future = asyncio.run_coroutine_threadsafe(fn(*args), self.loop)
        future.add_done_callback(lambda _: call(done.set))
        try:
            await done.wait()
        except trio.Cancelled:
            future.cancel()
            raise
        return future.result()


class TrioCall:
    """Calls into the trio run that created it, from the asyncio thread, never raising there."""

    def __init__(self) -> None:
        self._token = trio.lowlevel.current_trio_token()

    def __call__(self, fn: Callable[..., Any], *args: Any) -> None:
        try:
            self._token.run_sync_soon(fn, *args)
        except trio.RunFinishedError:
            pass


def get_bridge() -> AsyncioBridge:
    """The process's bridge, started on first use."""
    global _bridge
    with _lock:
        if _bridge is None:
            tune_malloc()
            _bridge = AsyncioBridge()
        return _bridge
