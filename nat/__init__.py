"""NAT classification, port mapping, WebRTC (aiortc) connections and relay fallback."""
