"""WebRTC benchmark in the NAT lab: the overlay's WebRTC path against a bare aiortc data channel.

    python benchmarks/webrtc.py [--mib 40] [--seconds 3] [--runs 3] [--matrix] [--out FILE]

Needs root (network namespaces). Builds a lab with `srv` (bootstrap, signalling, STUN) and two
homes behind full-cone NATs, A and B, so that the overlay's path between them ends on WebRTC
(UDP). In the same run, between the same two namespaces:

- ours: two nodes (`overlay.node.node.Node`, in-process in each namespace) connect by peer ID; once
  the path is direct-udp, A opens libp2p streams to B (a data channel each, after one Noise
  handshake; trio, the asyncio bridge) and measures bulk throughput (`--mib` MiB, B checks a
  SHA-256 of what it got) and 64-byte round trips for `--seconds`; then a transfer during which B stops reading for
  3 s, to show no byte is lost behind a paused reader;
- bare: plain asyncio aiortc (RTCPeerConnection, one data channel, the same STUN server, the
  same malloc setting), bufferedAmount flow control, the same measures, with 16 KiB messages
  (the interoperable size) and with 64 KiB messages (the size ours sends); the faster of the two
  is the baseline;
- py-libp2p's WebRTC-direct transport (hosts from its `new_host`, B listening on UDP 9090, which
  B's full-cone NAT forwards), the same stream measures as ours: the peer figure.

Each measure runs `--runs` times, alternating the paths; medians are reported, and the ratio
ours/bare, with the ratio of each run of ours to the bare run next to it. `--matrix` also runs the 16-pair NAT matrix for time to first stream and to the direct
path per pair. Prints a table, writes JSON (default benchmarks/results/webrtc-<date>.json).

Roles (internal): `--role ours-b|ours-a|bare-answer|bare-offer|libp2p-b|libp2p-a` run inside a namespace and
talk to this script over stdin/stdout, one JSON line per message.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import machine, write_result  # noqa: E402 - after the path is set

CHUNK = 64 * 1024
PAUSE_AFTER = 8 * 1024 * 1024
PAUSE = 3.0
SINK, ECHO = "/bench/sink/1.0.0", "/bench/echo/1.0.0"


def emit(obj: dict[str, Any]) -> None:
    print(json.dumps(obj), flush=True)


# ---- libp2p streams: the measures ours and py-libp2p's WebRTC-direct share ---------------------


async def read_exactly(stream, n: int) -> bytes:
    out = b""
    while len(out) < n:
        out += await stream.read(n - len(out))
    return out


async def sink(stream) -> None:
    """8-byte length and a pause flag, then that many bytes; answers their SHA-256."""
    import trio

    header = await read_exactly(stream, 9)
    total, pause = int.from_bytes(header[:8], "big"), header[8]
    digest, got, paused = hashlib.sha256(), 0, False
    while got < total:
        if pause and not paused and got >= PAUSE_AFTER:
            paused = True
            await trio.sleep(PAUSE)
        data = await stream.read(min(CHUNK, total - got))
        digest.update(data)
        got += len(data)
    await stream.write(digest.digest())


async def echo(stream) -> None:
    while True:
        await stream.write(await read_exactly(stream, 64))


async def bulk(host, peer, total: int, pause: bool) -> dict[str, Any]:
    data = os.urandom(CHUNK)
    digest = hashlib.sha256()
    stream = await host.new_stream(peer, [SINK])
    start = time.perf_counter()
    await stream.write(total.to_bytes(8, "big") + bytes([pause]))
    sent = 0
    while sent < total:
        piece = data[: min(CHUNK, total - sent)]
        await stream.write(piece)
        digest.update(piece)
        sent += len(piece)
    answer = await read_exactly(stream, 32)
    seconds = time.perf_counter() - start
    await stream.close()
    return {"measure": "paused" if pause else "bulk", "bytes": total, "seconds": seconds,
            "mb_s": total / seconds / 1e6, "intact": answer == digest.digest()}


async def rtt(host, peer, seconds: float) -> dict[str, Any]:
    stream = await host.new_stream(peer, [ECHO])
    payload = os.urandom(64)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        await stream.write(payload)
        assert await read_exactly(stream, 64) == payload
        count += 1
    await stream.reset()
    return {"measure": "rtt", "round_trips_s": count / (time.perf_counter() - start)}


async def serve_measures(host, peer, args: argparse.Namespace, paused: bool = True) -> None:
    """Run the measures the orchestrator asks for (bulk or rtt, 2 x --runs), then a paused one."""
    import trio

    for _ in range(2 * args.runs):
        command = json.loads(await trio.to_thread.run_sync(sys.stdin.readline))
        if command["measure"] == "bulk":
            emit(await bulk(host, peer, args.mib * 1024 * 1024, pause=False))
        elif command["measure"] == "rtt":
            emit(await rtt(host, peer, args.seconds))
    if paused:
        emit(await bulk(host, peer, 32 * 1024 * 1024, pause=True))


# ---- ours: a node in each namespace ---------------------------------------------------------------


def role_ours(args: argparse.Namespace) -> None:
    import multiaddr
    import trio

    from overlay.node.config import Config
    from overlay.core.log import setup_logging
    from overlay.node.node import Node

    setup_logging("warning")

    async def main() -> None:
        config = Config(data_dir=Path(args.data_dir), listen=(multiaddr.Multiaddr("/ip4/0.0.0.0/tcp/4001"),),
                        bootstrap=(multiaddr.Multiaddr(args.bootstrap),), network="natlab", api=("127.0.0.1", 0))
        node = Node(config)
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            node.host.set_stream_handler(SINK, sink)
            node.host.set_stream_handler(ECHO, echo)
            with trio.fail_after(60):
                await node.joined.wait()
                while not (node.record and node.record.addrs and node.reachability == "private"):
                    await trio.sleep(0.05)
            emit({"peer_id": str(node.peer_id)})
            if args.role == "ours-a":
                from libp2p.peer.id import ID

                peer = ID.from_base58(args.peer)
                await wait_direct(node, peer)
                emit({"ready": True, "path": "direct-udp"})
                await serve_measures(node.host, peer, args)
            await trio.to_thread.run_sync(sys.stdin.readline)  # until the orchestrator says stop
            nursery.cancel_scope.cancel()

    async def wait_direct(node, peer) -> None:
        with trio.fail_after(60):
            await node.connect(peer)
            while not any(p["peer_id"] == str(peer) and p["path"] == "direct-udp" for p in node.peers()):
                await trio.sleep(0.05)
            while "relayed" in next(p["paths"] for p in node.peers() if p["peer_id"] == str(peer)):
                await trio.sleep(0.1)  # measure on the WebRTC connection alone

    trio.run(main)


# ---- py-libp2p's WebRTC-direct transport (the peer figure) ---------------------------------------


def role_libp2p(args: argparse.Namespace) -> None:
    """A py-libp2p host with its own WebRTC-direct transport, as its `new_host` builds it."""
    import logging

    import multiaddr
    import trio
    from libp2p import new_host
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.peer.id import ID
    from libp2p.peer.peerinfo import PeerInfo

    logging.getLogger("libp2p").setLevel(logging.ERROR)

    async def main() -> None:
        listen = [multiaddr.Multiaddr("/ip4/0.0.0.0/udp/9090/webrtc-direct")] if args.role == "libp2p-b" else []
        host = new_host(key_pair=create_new_key_pair(), listen_addrs=listen, enable_tcp=False, enable_webrtc=True)
        async with host.run(listen_addrs=listen):
            if args.role == "libp2p-b":
                host.set_stream_handler(SINK, sink)
                host.set_stream_handler(ECHO, echo)
                emit({"addrs": [str(a) for a in host.get_addrs()]})
            else:
                target = multiaddr.Multiaddr(args.peer)
                peer = ID.from_base58(target.value_for_protocol("p2p"))
                with trio.fail_after(30):
                    await host.connect(PeerInfo(peer, [target]))
                emit({"ready": True})
                await serve_measures(host, peer, args, paused=False)
            await trio.to_thread.run_sync(sys.stdin.readline)

    trio.run(main)


# ---- bare: plain asyncio aiortc ------------------------------------------------------------------


def role_bare(args: argparse.Namespace) -> None:
    import asyncio

    from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription

    from nat.bridge import tune_malloc

    tune_malloc()
    loop_input = asyncio.Queue()

    async def stdin_lines() -> None:
        loop = asyncio.get_running_loop()
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            await loop_input.put(line)
            if not line:
                return

    async def main() -> None:
        asyncio.ensure_future(stdin_lines())
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[RTCIceServer(f"stun:{args.stun}")]))
        inbox: asyncio.Queue = asyncio.Queue()
        opened = asyncio.Event()
        channel_box: list = []

        def use(channel) -> None:
            channel_box.append(channel)
            channel.on("message", inbox.put_nowait)
            if channel.readyState == "open":
                opened.set()
            channel.on("open", opened.set)

        if args.role == "bare-offer":
            use(pc.createDataChannel("bench"))
            await pc.setLocalDescription(await pc.createOffer())
            emit({"sdp": pc.localDescription.sdp, "type": pc.localDescription.type})
            answer = json.loads(await loop_input.get())
            await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
        else:
            pc.on("datachannel", use)
            offer = json.loads(await loop_input.get())
            await pc.setRemoteDescription(RTCSessionDescription(offer["sdp"], offer["type"]))
            await pc.setLocalDescription(await pc.createAnswer())
            emit({"sdp": pc.localDescription.sdp, "type": pc.localDescription.type})
        await asyncio.wait_for(opened.wait(), 30)
        channel = channel_box[0]
        if args.role == "bare-answer":
            await serve(channel, inbox)
        else:
            emit({"ready": True})
            for _ in range(3 * args.runs):  # bulk runs (two message sizes), then round-trip runs
                command = json.loads(await loop_input.get())
                if command["measure"] == "bulk":
                    emit(await bulk(channel, inbox, args.mib * 1024 * 1024, command["message"]))
                elif command["measure"] == "rtt":
                    emit(await rtt(channel, inbox, args.seconds))
            await loop_input.get()
        await pc.close()

    async def serve(channel, inbox: asyncio.Queue) -> None:
        """Bulk: b"B" + 8-byte total opens a transfer, answered with the SHA-256 at its end;
        anything else is echoed."""
        while True:
            message = await inbox.get()
            if message[:1] == b"B":
                total, got, digest = int.from_bytes(message[1:9], "big"), 0, hashlib.sha256()
                while got < total:
                    data = await inbox.get()
                    digest.update(data)
                    got += len(data)
                channel.send(digest.digest())
            else:
                channel.send(message)

    async def bulk(channel, inbox: asyncio.Queue, total: int, message: int) -> dict[str, Any]:
        data, digest = os.urandom(message), hashlib.sha256()
        low = asyncio.Event()
        channel.bufferedAmountLowThreshold = 256 * 1024
        channel.on("bufferedamountlow", low.set)
        start = time.perf_counter()
        channel.send(b"B" + total.to_bytes(8, "big"))
        sent = 0
        while sent < total:
            if channel.bufferedAmount > 1024 * 1024:
                low.clear()
                await low.wait()
            piece = data[: min(len(data), total - sent)]
            channel.send(piece)
            digest.update(piece)
            sent += len(piece)
        answer = await inbox.get()
        seconds = time.perf_counter() - start
        return {"measure": "bulk", "bytes": total, "message": message, "seconds": seconds,
                "mb_s": total / seconds / 1e6, "intact": answer == digest.digest()}

    async def rtt(channel, inbox: asyncio.Queue, seconds: float) -> dict[str, Any]:
        payload = b"E" + os.urandom(63)
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            channel.send(payload)
            assert await inbox.get() == payload
            count += 1
        return {"measure": "rtt", "round_trips_s": count / (time.perf_counter() - start)}

    asyncio.run(main())


# ---- orchestrator ---------------------------------------------------------------------------------


class Role:
    """A role process in a namespace, spoken to by JSON lines."""

    def __init__(self, lab, where, argv: list[str]) -> None:
        self.proc = lab.popen(where, [sys.executable, str(Path(__file__).resolve()), *argv],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=str(ROOT))

    def read(self, timeout: float = 120.0) -> dict[str, Any]:
        import select

        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            ready, _, _ = select.select([self.proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
            line = self.proc.stdout.readline() if ready else ""
            if not line:
                raise RuntimeError(f"{self.proc.args[3:5]} said nothing (exit {self.proc.poll()})")
            if line.startswith("{"):  # anything else on stdout is not for us
                return json.loads(line)

    def send(self, obj: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(obj) + "\n")
        self.proc.stdin.flush()




def median(results: list[dict[str, Any]], key: str) -> float:
    return round(statistics.median(r[key] for r in results), 2)


def orchestrate(args: argparse.Namespace) -> dict[str, Any]:
    from simulations.natlab.topology import SRV_ADDRS, Lab, NatType

    root = Path(tempfile.mkdtemp(prefix="webrtc-bench-"))
    binary = str(Path(sys.executable).parent / "overlay-node")
    srv_id = subprocess.run([binary, "id", "--data-dir", str(root / "srv")], capture_output=True, text=True, check=True).stdout.strip()
    bootstrap = f"/ip4/{SRV_ADDRS[0]}/tcp/4001/p2p/{srv_id}"
    common = ["--mib", str(args.mib), "--seconds", str(args.seconds), "--runs", str(args.runs)]
    with Lab(homes={"a": NatType.FULL_CONE, "b": NatType.FULL_CONE}) as lab:
        log = open(root / "srv.log", "wb")
        lab.popen("srv", [binary, "run", "--data-dir", str(root / "srv"), "--listen", "/ip4/0.0.0.0/tcp/4001",
                          "--api", "127.0.0.1:4080", "--network", "natlab"], stdout=log, stderr=subprocess.STDOUT)
        b = Role(lab, lab.host("b"), ["--role", "ours-b", "--data-dir", str(root / "b"), "--bootstrap", bootstrap, *common])
        b_id = b.read()["peer_id"]
        a = Role(lab, lab.host("a"), ["--role", "ours-a", "--data-dir", str(root / "a"), "--bootstrap", bootstrap,
                                      "--peer", b_id, *common])
        a.read()
        assert a.read()["ready"]
        stun = f"{SRV_ADDRS[0]}:4001"
        answer = Role(lab, lab.host("b"), ["--role", "bare-answer", "--stun", stun, *common])
        offer = Role(lab, lab.host("a"), ["--role", "bare-offer", "--stun", stun, *common])
        answer.send(offer.read())
        offer.send(answer.read())
        assert offer.read()["ready"]
        # (role, its results, the command's extra fields); bare runs once per message size
        roles = [(a, ours := [], {}), (offer, bare := [], {"message": 16 * 1024}),
                 (offer, bare, {"message": 64 * 1024})]
        peer_error = ""
        try:  # py-libp2p's own WebRTC-direct, B's listener reached through its full-cone NAT
            listener = Role(lab, lab.host("b"), ["--role", "libp2p-b", *common])
            addr = listener.read(timeout=60)["addrs"][0]
            addr = "/ip4/" + lab.host("b").public_ip + "/" + addr.split("/", 3)[3]
            dialer = Role(lab, lab.host("a"), ["--role", "libp2p-a", "--peer", addr, *common])
            assert dialer.read(timeout=60).get("ready")
            roles.append((dialer, libp2p := [], {}))
        except (RuntimeError, AssertionError, KeyError) as e:
            peer_error, libp2p = f"py-libp2p WebRTC-direct did not connect: {e}", []
        for measure in ("bulk", "rtt"):
            for _ in range(args.runs):
                for entry in list(roles):
                    role, results, extra = entry
                    if measure == "rtt" and extra.get("message") == 64 * 1024:
                        continue  # round trips carry 64 bytes whatever the bulk message size
                    role.send({"measure": measure, **extra})
                    try:
                        results.append(role.read())
                    except RuntimeError as e:  # the peer figure may fail; ours and bare may not
                        if role is a or role is offer:
                            raise
                        peer_error = f"py-libp2p WebRTC-direct failed during {measure}: {e}"
                        roles.remove(entry)
        paused = a.read(timeout=300)
        for role in {entry[0] for entry in roles}:
            role.send({"stop": True})
        b.send({"stop": True})
    bulk_ours = [r for r in ours if r["measure"] == "bulk"]
    bare_by_size = {size: [r for r in bare if r["measure"] == "bulk" and r["message"] == size]
                    for size in (16 * 1024, 64 * 1024)}
    baseline = max(bare_by_size, key=lambda size: median(bare_by_size[size], "mb_s"))
    bulk_bare = bare_by_size[baseline]
    rtt_ours = [r for r in ours if r["measure"] == "rtt"]
    rtt_bare = [r for r in bare if r["measure"] == "rtt"]
    summary = {
        "ours_mb_s": median(bulk_ours, "mb_s"), "bare_mb_s": median(bulk_bare, "mb_s"),
        "bare_mb_s_by_message": {str(size): median(runs, "mb_s") for size, runs in bare_by_size.items()},
        "bare_baseline_message": baseline,
        "run_ratios": [round(o["mb_s"] / b["mb_s"], 2) for o, b in zip(bulk_ours, bulk_bare)],
        "ours_round_trips_s": median(rtt_ours, "round_trips_s"), "bare_round_trips_s": median(rtt_bare, "round_trips_s"),
        "all_intact": all(r["intact"] for r in ours + bare if r["measure"] == "bulk"),
        "paused_reader": {"bytes": paused["bytes"], "pause_s": PAUSE, "intact": paused["intact"], "mb_s": round(paused["mb_s"], 2)},
    }
    summary["throughput_ratio"] = round(summary["ours_mb_s"] / summary["bare_mb_s"], 3)
    summary["round_trip_ratio"] = round(summary["ours_round_trips_s"] / summary["bare_round_trips_s"], 3)
    bulk_peer = [r for r in libp2p if r["measure"] == "bulk"]
    rtt_peer = [r for r in libp2p if r["measure"] == "rtt"]
    summary["py_libp2p_webrtc_direct"] = {
        "mb_s": median(bulk_peer, "mb_s") if bulk_peer else None,
        "round_trips_s": median(rtt_peer, "round_trips_s") if rtt_peer else None,
        "intact": [r["intact"] for r in bulk_peer],
        "error": peer_error,
    }
    return {"summary": summary, "ours": ours, "bare": bare, "py_libp2p": libp2p, "paused": paused}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mib", type=int, default=40)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--matrix", action="store_true", help="also run the 16-pair NAT matrix")
    p.add_argument("--out", type=Path)
    p.add_argument("--role", help=argparse.SUPPRESS)
    p.add_argument("--data-dir", help=argparse.SUPPRESS)
    p.add_argument("--bootstrap", help=argparse.SUPPRESS)
    p.add_argument("--peer", help=argparse.SUPPRESS)
    p.add_argument("--stun", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.role in ("ours-a", "ours-b"):
        return role_ours(args)
    if args.role in ("bare-offer", "bare-answer"):
        return role_bare(args)
    if args.role in ("libp2p-a", "libp2p-b"):
        return role_libp2p(args)
    result = {"machine": machine(), "command": sys.argv, **orchestrate(args)}
    if args.matrix:
        from simulations.natlab.matrix import Matrix

        result["matrix"] = Matrix(trials=3, log=lambda line: None).run()
    s = result["summary"]
    print(f"{'path':<28} {'MB/s':>8} {'round trips/s':>14}")
    print(f"{'overlay WebRTC stream':<28} {s['ours_mb_s']:>8} {s['ours_round_trips_s']:>14}")
    for size, mb_s in s["bare_mb_s_by_message"].items():
        label = f"bare aiortc, {int(size) // 1024} KiB messages"
        print(f"{label:<28} {mb_s:>8} {s['bare_round_trips_s'] if int(size) == 16 * 1024 else '':>14}")
    peer = s["py_libp2p_webrtc_direct"]
    print(f"{'py-libp2p WebRTC-direct':<28} {peer['mb_s'] or '-':>8} {peer['round_trips_s'] or '-':>14}  "
          f"intact {peer['intact']} {peer['error']}")
    print(f"ratio ours/bare (bare's faster size, {s['bare_baseline_message'] // 1024} KiB): throughput "
          f"{s['throughput_ratio']}x (runs {s['run_ratios']}), round trips {s['round_trip_ratio']}x; "
          f"every transfer intact: {s['all_intact']}; reader paused {PAUSE:.0f}s: intact {s['paused_reader']['intact']}")
    write_result("webrtc", result, args.out)


if __name__ == "__main__":
    main()
