"""The trio adapter of dial-back reachability (`/overlay/<network>/dialback/1.0.0`, nat/reachability.py):
asks peers to dial us back, and dials back those who ask.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import multiaddr
import trio
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.host.basic_host import BasicHost
from libp2p.peer.id import ID
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.transport.tcp.tcp import TCP
from libp2p.transport.upgrader import TransportUpgrader
from libp2p.transport.websocket.transport import WebsocketTransport

from nat.reachability import (
    ASK_TIMEOUT, DIAL_TIMEOUT, MAX_MESSAGE, RATE_INTERVAL, Verdict, decode_request, decode_response, dialback_protocol,
    encode_request, encode_response, verdict,
)
from overlay.core.errors import DecodeError
from overlay.core.metrics import Registry
from overlay.core.ratelimit import RateLimiter
from overlay.transport.framed import FramedStream

log = logging.getLogger(__name__)


def observed_ip(conn) -> str | None:
    """The remote IP of a direct connection as the socket sees it (not what the peer claims)."""
    try:
        address = conn.muxed_conn.secured_conn.get_remote_address()
    except Exception:  # noqa: BLE001 - muxers and secure sessions differ in what they keep
        return None
    return address[0] if address else None


class ReachabilityService:
    def __init__(self, host: BasicHost, network: str, metrics: Registry) -> None:
        self.host = host
        self.protocol = dialback_protocol(network)
        self._rate = RateLimiter(rate=1 / RATE_INTERVAL, burst=1)
        self.requests = metrics.counter("overlay_dialback_requests_total", "Dial-back requests served, by outcome")
        host.set_stream_handler(self.protocol, self._serve)

    async def ask(self, peers: Sequence[ID], ports: Sequence[tuple[str, int]]) -> Verdict:
        """Ask up to three peers to dial us back at `ports`."""
        answers: list[tuple[str, list[tuple[str, int, bool]]]] = []

        async def one(peer: ID) -> None:
            framed = None
            try:
                with trio.fail_after(ASK_TIMEOUT):
                    framed = FramedStream(await self.host.new_stream(peer, [self.protocol]), MAX_MESSAGE)
                    await framed.write(encode_request(ports))
                    data = await framed.read()
                if data is not None:
                    answers.append(decode_response(data))
            except Exception as e:  # noqa: BLE001 - a peer that cannot answer simply does not count
                log.debug("dial-back via %s: %s", peer, str(e) or type(e).__name__)
            finally:
                if framed is not None:
                    await framed.close()

        async with trio.open_nursery() as nursery:
            for peer in list(peers)[:3]:
                nursery.start_soon(one, peer)
        return verdict(answers)

    async def _serve(self, stream) -> None:
        framed = FramedStream(stream, MAX_MESSAGE)
        requester = stream.muxed_conn.peer_id
        try:
            conn = next((c for c in self.host.get_network().get_connections(requester) if c.muxed_conn is stream.muxed_conn), None)
            ip = observed_ip(conn) if conn is not None else None
            with trio.fail_after(DIAL_TIMEOUT):
                data = await framed.read()
            if data is None:
                return
            ports = decode_request(data)
            if ip is None:
                self.requests.inc(outcome="no-observed-address")
                return
            if not self._rate.allow(requester, trio.current_time()):
                self.requests.inc(outcome="rate-limited")
                return
            results = []
            async with trio.open_nursery() as nursery:
                for transport, port in ports:
                    nursery.start_soon(self._dial_back, requester, ip, transport, port, results)
            self.requests.inc(outcome="served")
            await framed.write(encode_response(ip, results))
        except DecodeError as e:
            self.requests.inc(outcome="bad-request")
            log.debug("dial-back request from %s: %s", requester, e)
        except Exception as e:  # noqa: BLE001 - a broken stream must not reach the swarm
            log.debug("dial-back for %s: %s", requester, e)
        finally:
            await framed.close()

    @staticmethod
    async def _dial_back(peer: ID, ip: str, transport: str, port: int, results: list) -> None:
        """A fresh connection as a throwaway identity, ended once Noise has authenticated `peer`."""
        family = "ip6" if ":" in ip else "ip4"
        addr = multiaddr.Multiaddr(f"/{family}/{ip}/tcp/{port}" + ("/ws" if transport == "ws" else ""))
        upgrader = TransportUpgrader(
            {NOISE_PROTOCOL_ID: NoiseTransport(create_new_key_pair(), noise_privkey=create_x25519_key_pair().private_key)}, {}
        )
        raw = None
        ok = False
        try:
            with trio.fail_after(DIAL_TIMEOUT):
                raw = await (WebsocketTransport(upgrader) if transport == "ws" else TCP()).dial(addr)
                secured = await upgrader.upgrade_security(raw, True, peer)
                ok = secured.get_remote_peer() == peer
        except Exception as e:  # noqa: BLE001 - unreachable is an answer, not an error
            log.debug("dial-back to %s failed: %s", addr, str(e) or type(e).__name__)
        finally:
            if raw is not None:
                with trio.move_on_after(1):
                    try:
                        await raw.close()
                    except Exception:  # noqa: BLE001
                        pass
        results.append((transport, port, ok))
