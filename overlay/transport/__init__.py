"""The py-libp2p host as the node assembles it (Noise only, Yamux, TCP and WebSocket) and the
dialer that tries a peer's addresses in turn. Imports only overlay.core."""
