"""The per-node WebRTC signalling server and its client (registrations, offer/answer forwarding)."""
