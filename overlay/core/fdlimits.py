"""File descriptors: the process's limit, and what happens when it runs out.

Every socket and file holds a descriptor, and RLIMIT_NOFILE (often 1,024 by default) bounds how
many the process may hold. Two things follow:

- `overlay-node run` raises its soft limit to the hard one at start (`raise_fd_limit`): the soft
  limit is a default for programs that never ask, the hard one what the owner allows.
- Running out (EMFILE for the process, ENFILE for the system; ENOBUFS and ENOMEM are the kernel's
  memory) is a load condition, never a reason to exit. Each place that can meet it retries or
  falls back, and reports to `FD_EXHAUSTION`: counted in `overlay_fd_exhausted_total{where,errno}`,
  logged once per episode, since the place that fails usually retries within a second and would
  otherwise log a line (trio's accept loop: a traceback) at every retry.

The limit and the condition belong to the process, not to one node, so the tracker is one per
process; each node's registry shows it (in-process test clusters share the descriptor table too).
"""

from __future__ import annotations

import errno
import logging
import os
import resource
import time
import weakref
from dataclasses import dataclass

from overlay.core.metrics import Counter

log = logging.getLogger(__name__)

CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
EPISODE_QUIET = 60.0  # seconds without a failure at a place before its next failure is logged again
FD_METRIC = "overlay_fd_exhausted_total"
FD_METRIC_HELP = "Operations refused for lack of file descriptors or kernel memory, retried (by where, errno)"


def is_capacity_error(error: BaseException) -> bool:
    """An OSError that says the process or the system is out of descriptors or buffers."""
    return isinstance(error, OSError) and error.errno in CAPACITY_ERRNOS


def fd_limit() -> tuple[int, int]:
    """(soft, hard) RLIMIT_NOFILE; an unlimited value as `resource.RLIM_INFINITY`."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def raise_fd_limit() -> int:
    """Raise the soft RLIMIT_NOFILE as far as the hard limit allows; returns the soft limit now.

    An unlimited hard limit cannot be the soft one on Linux (it is capped by fs.nr_open) nor on
    macOS (OPEN_MAX), so smaller values are tried in turn.
    """
    soft, hard = fd_limit()
    if soft != resource.RLIM_INFINITY:
        ceiling = [hard] if hard != resource.RLIM_INFINITY else []
        for target in ceiling + [n for n in (1 << 20, 1 << 16, 10240) if hard == resource.RLIM_INFINITY or n < hard]:
            if target <= soft:
                break
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            except (ValueError, OSError):
                continue
            soft = target
            break
    log.debug("open-file limit: %s (hard %s)", _show(soft), _show(hard))
    return soft


def _show(limit: int) -> str:
    return "unlimited" if limit == resource.RLIM_INFINITY else str(limit)


class FdExhaustion:
    """Counts capacity failures by place and logs the first of each episode."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], int] = {}
        self._last_failure: dict[str, float] = {}
        self._sinks: weakref.WeakSet[Counter] = weakref.WeakSet()

    def note(self, where: str, error: OSError, retry: str = "retrying") -> None:
        """Record one failure at `where`; `retry` says, for the log, what happens next."""
        name = errno.errorcode.get(error.errno or 0, str(error.errno))
        key = (where, name)
        self.counts[key] = self.counts.get(key, 0) + 1
        for sink in list(self._sinks):
            sink.inc(where=where, errno=name)
        now = time.monotonic()
        last = self._last_failure.get(where)
        self._last_failure[where] = now
        if last is None or now - last >= EPISODE_QUIET:
            soft, _ = fd_limit()
            log.warning("%s: %s (%s, open-file limit %s); %s. Counted in %s; not logged again until %.0fs "
                        "pass without it", where, name, os.strerror(error.errno or 0), _show(soft), retry,
                        FD_METRIC, EPISODE_QUIET)

    def total(self, where: str | None = None) -> int:
        return sum(n for (w, _), n in self.counts.items() if where is None or w == where)

    def attach(self, counter: Counter) -> None:
        """Also count into `counter` (a node registry's), starting from what was counted so far."""
        for (where, name), n in self.counts.items():
            counter.inc(n, where=where, errno=name)
        self._sinks.add(counter)


FD_EXHAUSTION = FdExhaustion()


class AcceptCapacityFilter(logging.Filter):
    """trio's `serve_listeners` (py-libp2p's TCP and WebSocket listeners use it) already sleeps
    100 ms and retries when accept() meets EMFILE, but logs an error with a traceback each time:
    this turns each such record into one count at `where` (and one log line per episode)."""

    def __init__(self, where: str) -> None:
        super().__init__()
        self.where = where

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, OSError) and is_capacity_error(error):
            FD_EXHAUSTION.note(self.where, error, "the listener retries every 0.1s")
            return False
        return True


def quiet_trio_accept_errors(where: str = "p2p-accept") -> None:
    """Install `AcceptCapacityFilter` on trio's listener logger once per process. Our own API
    accept loop (overlay/node/apilimits.py) handles the condition itself, so what reaches trio's
    logger in a node process is py-libp2p's listeners."""
    logger = logging.getLogger("trio.serve_listeners")
    if not any(isinstance(f, AcceptCapacityFilter) for f in logger.filters):
        logger.addFilter(AcceptCapacityFilter(where))


# ---- the local API's share of the limit ----

FD_RESERVE = 128  # the interpreter, libraries, listeners, STUN sockets, the asyncio bridge, files
FDS_PER_PEER = 2  # a peer's TCP socket, or a WebRTC session's UDP sockets and its share of ICE gathering
MIN_CONNECTIONS = 16
MAX_CONNECTIONS = 4096  # a local API serving more clients than this is not what it is for


@dataclass(frozen=True)
class ApiCaps:
    connections: int  # TCP connections open at once, each one descriptor
    websockets: int  # WebSocket sessions open at once, fewer: the rest is the reserve for HTTP


def api_caps(soft_limit: int, max_peers: int) -> ApiCaps:
    """The API's share of the open-file limit:

        spare       = soft_limit - FD_RESERVE - FDS_PER_PEER * max_peers
        connections = spare // 2, within [MIN_CONNECTIONS, MAX_CONNECTIONS]
        websockets  = connections - max(4, connections // 8)

    `max_peers` is the swarm's `max_connections`. Half of what peers and the reserve leave goes to
    the API; the other half stays free for bursts (dials, STUN probes, WebRTC gathering, the
    accept() of a connection that is then refused). At the common default limit of 1,024 with 256
    peers: 192 connections, 168 WebSockets.
    """
    if soft_limit == resource.RLIM_INFINITY:
        connections = MAX_CONNECTIONS
    else:
        spare = soft_limit - FD_RESERVE - FDS_PER_PEER * max_peers
        connections = min(MAX_CONNECTIONS, max(MIN_CONNECTIONS, spare // 2))
    return ApiCaps(connections, connections - max(4, connections // 8))
