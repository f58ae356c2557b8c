"""The one error hierarchy of the `overlay` package.

Every error a user or a remote peer can cause derives from `OverlayError`, so that adapters can
catch exactly what is expected (bad input, unreachable peers) and let programming errors surface.
"""


class OverlayError(Exception):
    """Base of every expected failure in the node."""


class ConfigError(OverlayError):
    """A configuration value (flag, file, environment) is invalid."""


class DecodeError(OverlayError):
    """Bytes from the network or a client do not form a valid message, or exceed a size limit."""


class ProtocolError(OverlayError):
    """An event a protocol's state machine does not allow in its state: from a peer, a violation
    of the protocol; from the adapter that drives the machine, a bug in it."""


class RecordError(OverlayError):
    """A signed record is malformed, forged, or does not match its key."""


class DialError(OverlayError):
    """No address of a peer could be reached."""


class SelfDialError(DialError):
    """A dial of this node's own peer ID: refused at once, so no connection to itself is made."""


class NotFoundError(OverlayError):
    """A DHT lookup ended without the wanted record or peer."""
