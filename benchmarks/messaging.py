"""Messaging benchmark: unicast and broadcast between applications on N node processes, for
MessageNet relayers and for typed peer messages.

    python benchmarks/messaging.py [--nodes 10] [--seconds 5] [--window 64] [--rates 100,250,...]
                                   [--systems messagenet,peermsg] [--out FILE]

N `overlay-node run` processes on loopback (the first is every other's bootstrap), one application
on each: a relayer (`WS /relayer`, ID 1) or a typed-message application (`WS /peermsg`). The one
on node 0 sends:

- unicast: to nodes 1..N-1 in turn, as fast as answers come back with at most `--window`
  unanswered: messages/s answered, and the latency from send to the receiving application. The
  answer is MessageNet's delivery report (ok), or the RESULT (OK) of the remote application to a
  QUERY;
- broadcast (SendToPeers, or a BELIEF to every peer) paced at each of `--rates` for `--seconds`:
  the highest rate at which every other application got every message with p99 at most 250 ms.

256-byte payloads carry a sequence number and the send time. Prints a table, writes JSON.
Roles (internal): `--role receivers|sender`.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.channels import Proc, Tally, paced, payload, report, settle, start_nodes, ws_headers  # noqa: E402
from benchmarks.common import machine, write_result  # noqa: E402

RELAYER_ID = 1
SEND_TO_VALIDATOR, SEND_TO_PEERS, REGISTER, SEND_TO_CLIENT, DELIVERY = 0x02, 0x03, 0x01, 0x10, 0x11
SUSTAINED_P99_MS = 250.0


def frame(action: int, **body: Any) -> bytes:
    return bytes([action]) + json.dumps(body).encode()


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class Relayers:
    """MessageNet (WS /relayer): SendToValidator answered by a delivery report, SendToPeers."""

    path = "relayer"

    def register(self) -> list:
        return [frame(REGISTER, relayer_id=RELAYER_ID)]

    def unicast(self, seq: int, target: str, text: str) -> bytes:
        return frame(SEND_TO_VALIDATOR, relayer_id=RELAYER_ID, node_id=target, raw_data=b64(text), id=seq)

    def broadcast(self, text: str) -> bytes:
        return frame(SEND_TO_PEERS, relayer_id=RELAYER_ID, raw_data=b64(text))

    def received(self, data: bytes) -> tuple[str | None, Any]:
        """(payload text or None, what to send back or None)"""
        if data[0] == SEND_TO_CLIENT:
            return base64.b64decode(json.loads(data[1:])["data"]).decode(), None
        return None, None

    def outcome(self, data: bytes) -> bool | None:
        """True/False for an answer to a unicast (ok or not), None for anything else."""
        return json.loads(data[1:])["ok"] if data[0] == DELIVERY else None


class TypedMessages:
    """Typed peer messages (WS /peermsg): QUERY answered by the remote application's RESULT,
    BELIEF to every peer. Bodies carry an empty refs list."""

    path = "peermsg"

    def register(self) -> list:
        return [json.dumps({"op": "register", "types": ["QUERY", "BELIEF", "RESULT"]})]

    def unicast(self, seq: int, target: str, text: str) -> str:
        return json.dumps({"op": "send", "peer": target, "type": "QUERY", "body": b64("\0" + text)})

    def broadcast(self, text: str) -> str:
        return json.dumps({"op": "broadcast", "type": "BELIEF", "body": b64("\0" + text)})

    def received(self, data: str) -> tuple[str | None, Any]:
        msg = json.loads(data)
        if msg["op"] != "message" or msg["type"] == "RESULT":
            return None, None
        text = base64.b64decode(msg["body"]).decode()
        answer = None
        if msg["type"] == "QUERY":
            answer = json.dumps({"op": "answer", "peer": msg["peer"], "ref": msg["id"], "code": "OK", "result": ""})
        return text, answer

    def outcome(self, data: str) -> bool | None:
        msg = json.loads(data)
        if msg["op"] == "message" and msg["type"] == "RESULT":
            return base64.b64decode(msg["body"])[8] == 0  # code OK
        return False if msg["op"] == "error" else None


SYSTEMS = {"messagenet": Relayers(), "peermsg": TypedMessages()}


def role_receivers(args: argparse.Namespace) -> None:
    import trio
    from trio_websocket import open_websocket_url

    system = SYSTEMS[args.system]

    async def main() -> None:
        urls = args.urls.split(",")
        tallies = [Tally() for _ in urls]
        async with trio.open_nursery() as nursery:
            for url, tally in zip(urls, tallies):
                ready = trio.Event()
                nursery.start_soon(receive, url, tally, ready)
                await ready.wait()
            print(json.dumps({"ready": True}), flush=True)
            while True:
                line = await trio.to_thread.run_sync(sys.stdin.readline)
                if not line:
                    nursery.cancel_scope.cancel()
                    return
                if json.loads(line)["cmd"] == "reset":
                    for tally in tallies:
                        tally.reset()
                print(json.dumps(report(tallies)), flush=True)

    async def receive(url: str, tally: Tally, ready) -> None:
        async with open_websocket_url(url, message_queue_size=100_000, extra_headers=ws_headers()) as ws:
            for message in system.register():
                await ws.send_message(message)
            await trio.sleep(0.2)  # the registration is taken before the first message
            ready.set()
            while True:
                text, answer = system.received(await ws.get_message())
                if text is not None:
                    tally.add(text)
                if answer is not None:
                    await ws.send_message(answer)

    trio.run(main)


def role_sender(args: argparse.Namespace) -> None:
    import trio
    from trio_websocket import open_websocket_url

    system = SYSTEMS[args.system]
    targets = args.targets.split(",") if args.targets else []

    async def main() -> None:
        async with open_websocket_url(args.url, message_queue_size=100_000, extra_headers=ws_headers()) as ws:
            for message in system.register():
                await ws.send_message(message)
            if args.mode == "unicast":
                window = trio.Semaphore(args.window)
                answers = {"ok": 0, "failed": 0}
                async with trio.open_nursery() as nursery:
                    async def reports() -> None:
                        while True:
                            ok = system.outcome(await ws.get_message())
                            if ok is not None:
                                answers["ok" if ok else "failed"] += 1
                                window.release()
                    nursery.start_soon(reports)
                    start, seq = trio.current_time(), 0
                    while trio.current_time() - start < args.seconds:
                        await window.acquire()
                        await ws.send_message(system.unicast(seq, targets[seq % len(targets)], payload(seq)))
                        seq += 1
                    with trio.move_on_after(30):
                        while answers["ok"] + answers["failed"] < seq:
                            await trio.sleep(0.05)
                    elapsed = trio.current_time() - start
                    print(json.dumps({"sent": seq, **answers, "seconds": elapsed}), flush=True)
                    nursery.cancel_scope.cancel()
            else:
                sent = await paced(args.rate, args.seconds, lambda seq: ws.send_message(system.broadcast(payload(seq))))
                await trio.sleep(0.5)
                print(json.dumps({"sent": sent}), flush=True)

    trio.run(main)


def measure(name: str, args: argparse.Namespace, nodes: list[dict], procs: list[Proc]) -> dict[str, Any]:
    """Unicast and broadcast figures for one messaging system on the running nodes."""
    script = [sys.executable, str(Path(__file__).resolve()), "--system", name]
    path = SYSTEMS[name].path
    receivers = Proc(script + ["--role", "receivers", "--urls", ",".join(f"ws://{n['api']}/{path}" for n in nodes[1:])])
    procs.append(receivers)
    receivers.read(60)
    own = script + ["--role", "sender", "--url", f"ws://{nodes[0]['api']}/{path}", "--seconds", str(args.seconds)]
    result: dict[str, Any] = {}

    receivers.ask({"cmd": "reset"})
    sender = Proc(own + ["--mode", "unicast", "--window", str(args.window), "--targets", ",".join(n["peer_id"] for n in nodes[1:])])
    sent = json.loads(sender.read(args.seconds + 60))
    sender.stop()
    got = settle(lambda: receivers.ask({"cmd": "report"}), sent["ok"], 1)
    result["unicast"] = {**sent, "msg_s": round(sent["ok"] / sent["seconds"], 1), "received": sum(got["received"]),
                         "p50_ms": got["p50_ms"], "p99_ms": got["p99_ms"]}
    print(f"{name} unicast: {result['unicast']['msg_s']} msg/s answered, p50 {got['p50_ms']} ms, p99 {got['p99_ms']} ms, "
          f"{sent['failed']} failed", flush=True)

    steps = []
    for rate in [int(x) for x in args.rates.split(",")]:
        receivers.ask({"cmd": "reset"})
        sender = Proc(own + ["--mode", "broadcast", "--rate", str(rate)])
        count = json.loads(sender.read(args.seconds + 60))["sent"]
        sender.stop()
        got = settle(lambda: receivers.ask({"cmd": "report"}), count, args.nodes - 1)
        delivered = sum(min(n, count) for n in got["received"]) / (count * (args.nodes - 1))
        sustained = delivered >= 1.0 and (got["p99_ms"] or 0) <= SUSTAINED_P99_MS
        steps.append({"rate": rate, "sent": count, "delivered": round(delivered, 6), "duplicates": got["duplicates"],
                      "p50_ms": got["p50_ms"], "p99_ms": got["p99_ms"], "sustained": sustained})
        print(f"{name} broadcast {rate:>5} msg/s: delivered {delivered:.4f}, p50 {got['p50_ms']} ms, p99 {got['p99_ms']} ms"
              f"{'' if sustained else ' (not sustained)'}", flush=True)
        if not sustained and len(steps) >= 2 and not steps[-2]["sustained"]:
            break
    result["broadcast"] = {"steps": steps, "max_sustained_rate": max([s["rate"] for s in steps if s["sustained"]] or [0])}
    print(f"{name} broadcast: {result['broadcast']['max_sustained_rate']} msg/s sustained to {args.nodes - 1} nodes", flush=True)
    receivers.stop()
    procs.remove(receivers)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, default=10)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--window", type=int, default=64)
    p.add_argument("--rates", default="100,250,500,750,1000,1500")
    p.add_argument("--systems", default="messagenet,peermsg")
    p.add_argument("--out", type=Path)
    p.add_argument("--system", help=argparse.SUPPRESS)
    p.add_argument("--role", help=argparse.SUPPRESS)
    p.add_argument("--mode", help=argparse.SUPPRESS)
    p.add_argument("--url", help=argparse.SUPPRESS)
    p.add_argument("--urls", help=argparse.SUPPRESS)
    p.add_argument("--targets", help=argparse.SUPPRESS)
    p.add_argument("--rate", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.role == "receivers":
        return role_receivers(args)
    if args.role == "sender":
        return role_sender(args)
    procs: list[Proc] = []
    result: dict[str, Any] = {"machine": machine(), "command": sys.argv, "nodes": args.nodes}
    try:
        nodes = start_nodes(args.nodes, procs, "messaging-bench-")
        for name in args.systems.split(","):
            result[name] = measure(name, args, nodes, procs)
    finally:
        for proc in reversed(procs):
            proc.stop()
    write_result("messaging", result, args.out)


if __name__ == "__main__":
    main()
