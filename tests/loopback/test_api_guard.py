"""The local API is the owner's: real node processes, real HTTP and WebSocket clients.

A foreign Host (DNS rebinding), a foreign Origin (a page) and a missing or wrong token are refused
on every route and every WebSocket endpoint; a cross-site simple request changes nothing; the CLI
and the examples find the token in the data dir; no route shows a password hash; the node does not
dial itself; the relayer API yields no signature that verifies over bytes a relayer chose.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from cryptography.exceptions import InvalidSignature
from trio_websocket import open_websocket_url

from overlay.node.apiauth import SUBPROTOCOL, TOKEN_PROTOCOL, auth_headers
from overlay.channels.sealing import channel_secret
from overlay.core.errors import RecordError
from overlay.messagenet import relayer
from overlay.core.protobuf import field_bytes
from overlay.core.records import PAYLOAD_TYPE, _signed_bytes, open_peer_record, public_key_from_protobuf
from tests.loopback.nodeproc import Proc, cli, wait_until

pytestmark = pytest.mark.timeout(180)

PEER = "12D3KooWHu5UDiWacaCzqtHboSFD2b212f53gR4F1NAmHuBtaYvk"
ROUTES = [("GET", "/metrics"), ("GET", "/v1/status"), ("GET", "/v1/peers"), ("GET", "/v1/netcheck"),
          ("GET", "/v1/channels"), ("GET", f"/v1/find/{PEER}"), ("POST", f"/v1/ping/{PEER}"),
          ("POST", f"/v1/connect/{PEER}"), ("DELETE", f"/v1/peers/{PEER}")]
SOCKETS = ["/connect", "/relayer", "/peermsg", "/gateway", "/service"]
EVIL = "http://evil.example"


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """a, and b joined to it (connected): the refused requests below would change that."""
    root = tmp_path_factory.mktemp("guard")
    a = Proc([], root / "a")
    b = None
    try:
        b = Proc(["--bootstrap", a.addrs[0]], root / "b")
        wait_until(lambda: b.peer_id in {p["peer_id"] for p in a.get_json("/v1/peers")}, what="b connected to a")
        yield a, b
    finally:
        for p in (b, a):
            if p is not None:
                p.stop()


def upgrade(api: str, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str]]:
    """A raw WebSocket handshake with exactly these headers: the status and response headers."""
    host, port = api.rsplit(":", 1)
    lines = [f"GET {path} HTTP/1.1", *(f"{k}: {v}" for k, v in headers.items()), "Upgrade: websocket",
             "Connection: Upgrade", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version: 13", "", ""]
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall("\r\n".join(lines).encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    fields = dict(line.split(": ", 1) for line in head[1:] if ": " in line)
    return int(head[0].split()[1]), {k.lower(): v for k, v in fields.items()}


def refused(proc: Proc, reason: str) -> float:
    return proc.metric(f'overlay_api_refused_total{{reason="{reason}"}}')


def test_every_route_and_socket_refuses_a_foreign_host_origin_or_token(pair):
    a, _ = pair
    own = a.api
    good = {"Host": own, "Authorization": f"Bearer {a.token}"}
    cases = {
        "host": ({**good, "Host": f"evil.example:{own.rsplit(':', 1)[1]}"}, 403),
        "host port": ({**good, "Host": "127.0.0.1:1"}, 403),
        "origin": ({**good, "Origin": EVIL}, 403),
        "same-site page": ({**good, "Origin": "http://127.0.0.1:8000"}, 403),
        "no token": ({"Host": own}, 401),
        "wrong token": ({"Host": own, "Authorization": "Bearer " + "x" * 43}, 401),
    }
    before = {reason: refused(a, reason) for reason in ("host", "origin", "token")}
    for name, (headers, status) in cases.items():
        for method, path in ROUTES:
            got, _ = a.request(method, path, headers=headers, token=False)
            assert got == status, (name, method, path, got)
        for path in SOCKETS:
            got, _ = upgrade(own, path, headers)
            assert got == 403, (name, path, got)
    counted = {reason: refused(a, reason) - before[reason] for reason in before}
    per_case = len(ROUTES) + len(SOCKETS)
    assert counted == {"host": 2 * per_case, "origin": 2 * per_case, "token": 2 * per_case}
    for path in SOCKETS:  # the same handshakes with the right headers succeed
        assert upgrade(own, path, good)[0] == 101, path


def test_health_alone_is_open_and_still_host_checked(pair):
    a, _ = pair
    assert a.request("GET", "/health", token=False) == (200, {"healthy": "good", "reason": "healthy"})
    assert a.request("GET", "/health", headers={"Host": "evil.example"}, token=False)[0] == 403
    assert a.request("GET", "/health", headers={"Origin": EVIL}, token=False)[0] == 403
    assert a.request("POST", "/health", token=False)[0] == 401


def test_the_token_travels_as_a_subprotocol_for_pages(pair):
    a, _ = pair
    offered = {"Host": a.api, "Sec-WebSocket-Protocol": f"{SUBPROTOCOL}, {TOKEN_PROTOCOL}{a.token}"}
    status, headers = upgrade(a.api, "/connect", offered)
    assert status == 101 and headers["sec-websocket-protocol"] == SUBPROTOCOL
    wrong = {"Host": a.api, "Sec-WebSocket-Protocol": f"{SUBPROTOCOL}, {TOKEN_PROTOCOL}{'y' * 43}"}
    assert upgrade(a.api, "/connect", wrong)[0] == 403


def test_a_cross_site_simple_request_changes_nothing(pair):
    a, b = pair
    simple = {"Origin": EVIL, "Content-Type": "text/plain"}
    for method, path in (("POST", f"/v1/ping/{b.peer_id}"), ("POST", f"/v1/connect/{b.peer_id}"),
                         ("DELETE", f"/v1/peers/{b.peer_id}")):
        assert a.request(method, path, headers=simple, token=False, data=b"x")[0] == 403
        assert a.request(method, path, headers={"Content-Type": "text/plain"}, token=False, data=b"x")[0] == 401
        assert a.request(method, path, headers={"Sec-Fetch-Site": "cross-site"}, token=False)[0] == 403
    assert b.peer_id in {p["peer_id"] for p in a.get_json("/v1/peers")}, "the refused DELETE closed nothing"
    ping_metrics = [x for x in a.request("GET", "/metrics")[1].splitlines() if x.startswith("overlay_dial")]
    assert all(float(x.split()[-1]) == 0 for x in ping_metrics if "failures" in x)


def test_no_state_changes_on_get(pair):
    a, b = pair
    for path in (f"/v1/ping/{b.peer_id}", f"/v1/connect/{b.peer_id}"):
        assert a.request("GET", path)[0] == 405
    assert a.request("GET", f"/v1/peers/{b.peer_id}")[0] == 405


def test_a_node_does_not_dial_itself(pair):
    a, _ = pair
    peers_before = a.get_json("/v1/peers")
    for method, path in (("POST", f"/v1/ping/{a.peer_id}"), ("POST", f"/v1/connect/{a.peer_id}")):
        status, body = a.request(method, path)
        assert status == 400 and "own peer ID" in body["error"], body
    assert a.get_json("/v1/peers") == peers_before
    assert a.peer_id not in {p["peer_id"] for p in peers_before}


def test_the_cli_finds_the_token_in_the_data_dir_or_the_environment(pair):
    a, _ = pair
    shown = cli("status", "--api", a.api, "--data-dir", str(a.data_dir), "--json")
    assert shown.returncode == 0 and json.loads(shown.stdout)["peer_id"] == a.peer_id, shown.stderr
    from_env = cli("peers", "--api", a.api, "--data-dir", "/nonexistent", env={**os.environ, "OVERLAY_API_TOKEN": a.token})
    assert from_env.returncode == 0, from_env.stderr
    wrong = cli("status", "--api", a.api, "--token", "z" * 43)
    assert wrong.returncode == 1 and "token is missing or wrong" in wrong.stderr
    rejected = cli("channel", "send", "news", "hi", "--api", a.api, "--token", "z" * 43)
    assert rejected.returncode == 1 and "refused WS /connect (HTTP 403): is the API token right?" in rejected.stderr
    missing = cli("status", "--api", a.api, "--data-dir", "/nonexistent")
    assert missing.returncode == 2 and "cannot read the API token" in missing.stderr
    assert oct(os.stat(a.data_dir / "api.token").st_mode & 0o777) == "0o600"


def test_no_route_shows_a_password_hash(pair):
    a, b = pair

    async def subscribe_and_look() -> str:
        async with open_websocket_url(f"ws://{a.api}/connect", extra_headers=auth_headers(a.token)) as ws:
            await ws.send_message(json.dumps({"command": "subscribe", "data": {"topic": "vault", "password": "pw"}, "nonce": "n"}))
            while json.loads(await ws.get_message()).get("type") != "response":
                pass
            return json.dumps(a.get_json("/v1/channels"))

    listing = trio.run(subscribe_and_look)
    stretched = hashlib.pbkdf2_hmac("sha256", b"pw", b"vault", 32768).hex()
    assert '"vault"' in listing and stretched not in listing and '"password"' not in listing
    assert channel_secret("vault", "pw").verifier not in listing, "not even the verifier"
    assert {"name": "vault", "protected": True}.items() <= next(
        e for e in json.loads(listing)["reserved"] if e["name"] == "vault").items()


def test_the_relayer_api_signs_nothing_that_verifies_as_a_record_or_a_noise_handshake(pair):
    """A relayer asks its node to sign exactly the bytes of a peer record envelope and of a Noise
    static-key payload (identification byte + message = those bytes): neither signature verifies
    over them, and no peer record can be made from it."""
    a, _ = pair
    record_payload = b"\x0a\x26" + bytes(38)  # any payload: the envelope's signed bytes are prefix + payload
    record_bytes = _signed_bytes(record_payload)
    noise_bytes = b"noise-libp2p-static-key:" + bytes(32)

    async def ask_to_sign(chosen: bytes) -> dict:
        async with open_websocket_url(f"ws://{a.api}/relayer", extra_headers=auth_headers(a.token)) as ws:
            await ws.send_message(bytes([relayer.REGISTER]) + json.dumps({"relayer_id": 5}).encode())
            body = {"relayer_id": 5, "node_id": a.peer_id, "identification_byte": chosen[0],
                    "msg_bytes": base64.b64encode(chosen[1:]).decode(), "id": 1}
            await ws.send_message(bytes([relayer.SIGN_AND_SEND_TO_VALIDATOR]) + json.dumps(body).encode())
            with trio.fail_after(15):
                while True:
                    frame = await ws.get_message()
                    if frame[0] == relayer.SEND_TO_CLIENT:
                        return json.loads(base64.b64decode(json.loads(frame[1:])["data"]))

    for chosen in (record_bytes, noise_bytes):
        signed = trio.run(ask_to_sign, chosen)
        key = public_key_from_protobuf(base64.b64decode(signed["publicKeyBytes"]))
        signature = base64.b64decode(signed["signature"])
        assert base64.b64decode(signed["unsignedMessage"]) == chosen
        with pytest.raises(InvalidSignature):
            key.verify(signature, chosen)
        envelope = b"".join((field_bytes(1, base64.b64decode(signed["publicKeyBytes"])), field_bytes(2, PAYLOAD_TYPE),
                             field_bytes(3, record_payload), field_bytes(5, signature)))
        with pytest.raises(RecordError):
            open_peer_record(envelope)


def test_examples_use_the_token_from_the_data_dir(pair):
    a, _ = pair
    root = Path(__file__).resolve().parents[2]
    run = [sys.executable, str(root / "examples" / "degas_client.py"), "--api", a.api, "--data-dir", str(a.data_dir),
           "--degas-id", "ff" * 16, "hello"]
    done = subprocess.run(run, capture_output=True, text=True, timeout=60)
    # authenticated with the node (so the token was right), then told no instance has that ID
    assert "authenticated as 0x" in done.stdout, done.stdout + done.stderr
    wrong = subprocess.run(run[:4] + ["--token", "q" * 43] + run[6:], capture_output=True, text=True, timeout=60)
    assert wrong.returncode != 0 and "authenticated" not in wrong.stdout
