"""The one logging setup of the process."""

from __future__ import annotations

import logging
import sys

NOISY = ("libp2p", "multiaddr", "hypercorn", "async_service")


def setup_logging(level: str = "info") -> None:
    """Log to stderr; py-libp2p's own chatter only from WARNING up unless we debug."""
    numeric = logging.getLevelName(level.upper())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    for name in NOISY:
        logging.getLogger(name).setLevel(numeric if numeric <= logging.DEBUG else logging.ERROR)
