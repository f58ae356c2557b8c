"""Simulator scale: simulated node-seconds per wall-second and peak memory per simulated node.

    python benchmarks/simulation.py [--nodes 100,1000,10000,100000] [--duration 3600]
                                    [--churn 0.1] [--limit 7200] [--engines] [--out FILE]

Each N runs in a child process of its own (so its peak RSS is its own) on the shipped default
scenario's region and NAT mix, with `--churn` of the nodes leaving per hour (each replaced), 6
dials by peer ID per node-hour and no channels, for `--duration` simulated seconds. A child that
has used `--limit` seconds of CPU, or is sent SIGUSR1, stops at its next progress report (every
simulated minute) and reports, as not finished, what it measured up to the simulated second it
reached. CPU rather than wall time, so that a run paused with SIGSTOP (to give a benchmark a quiet
machine) keeps its budget. Memory per node is
(peak RSS - the RSS of the same child with everything imported and nothing simulated) / N.

`--channels K` adds the channel relay: K channels with Zipf sizes (channel r has
max(2, round(L / r)) subscribers, L = `--largest`, 500 by default: one of 500, most of 2-10), each subscriber's place taken
elsewhere when its node leaves, 60 messages per channel-hour by random subscribers. Reported:
delivery (of message and subscriber online when it was sent), latency and the share within
twice the publisher-to-subscriber round trip plus 100 ms, envelopes per node-second (all, and
control: joins, leaves, answers, commands), channel messages that reached a node without the
channel open, and bytes per node-hour of channel envelopes and of the DHT. `--baseline TREE
--baseline-nodes N` runs the same workload at N nodes on another checkout of the project (an
earlier design) in the same run; envelopes are counted the same way for both.

`--engines` first measures the scheduler choice (simulations/engine.py): the same event load -
K timers, each re-arming itself after an exponential delay - on our heap scheduler and on simpy
(`pip install -e '.[bench]'`), in this process, as events per second and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import machine, write_result  # noqa: E402


def peak_rss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


LARGEST = 500
CHANNEL_MESSAGES_PER_HOUR = 60.0


def count_channel_envelopes(sim: Any) -> dict[str, int]:
    """Envelopes and bytes the channel workload sends, counted alike in any tree's simulator
    (its carrier's `_act` sees every SendEnvelope)."""
    from simulations import channels

    counts = {"envelopes": 0, "control": 0, "bytes": 0}
    carry = sim.channels._act

    def act(src: Any, actions: list) -> None:
        for action in actions:
            if type(action) is channels.SendEnvelope:
                n = len(action.targets)
                counts["envelopes"] += n
                counts["control"] += 0 if action.channel else n
                counts["bytes"] += n * (channels.MESSAGE_BYTES if action.channel else channels.CONTROL_BYTES)
        carry(src, actions)

    sim.channels._act = act
    return counts


class StopRun(Exception):
    """Raised from the progress callback when a child has used its CPU budget or was told to stop."""


BY_SIZE = ((2, 8), (9, 32), (33, 64), (65, 10**9))


def by_size(sim: Any, zipf: list[int], until: float) -> dict[str, Any]:
    """Latency p99 and the share within 2 x RTT + 100 ms by channel size, for messages sent at
    least 10 s before `until` (large channels carry most deliveries and hide the small ones)."""
    from simulations.network import percentile

    size = dict(zip(sim.channels.names, zipf))
    out = {}
    for lo, hi in BY_SIZE:
        sent = [m for m in sim.channels.messages if m["t"] <= until - 10 and lo <= size.get(m["channel"], 0) <= hi]
        lat = [x for m in sent for x in m["latencies"]]
        expected = sum(m["expected"] for m in sent)
        out[f"{lo}-{hi}" if hi < 10**9 else f"{lo}+"] = {
            "messages": len(sent), "delivery_ratio": round(len(lat) / expected, 4) if expected else None,
            "p99_ms": round(percentile(lat, 99) * 1000, 1) if lat else None,
            "within_2rtt_100ms": round(sum(m["within_bound"] for m in sent) / len(lat), 4) if lat else None}
    return out


def child(nodes: int, duration: float, churn: float, channel_count: int = 0, largest: int = LARGEST,
          cpu_limit: float = float("inf")) -> None:
    """One run; prints a JSON line. OVERLAY_SIM_TREE: simulate another checkout's cores.
    After `cpu_limit` seconds of CPU, or on SIGUSR1, it stops and reports what it measured so far."""
    import signal
    import os

    if os.environ.get("OVERLAY_SIM_TREE"):
        sys.path.insert(0, os.environ["OVERLAY_SIM_TREE"])
    from simulations.network import Simulation
    from simulations.report import summarize
    from simulations.scenario import load

    base = peak_rss_kib()
    sc = replace(load(), nodes=nodes, duration=duration, churn_per_hour=churn, channels=channel_count,
                 join_window=min(300.0, duration / 4), warmup=min(600.0, duration / 2),
                 subscribers_per_channel=largest, messages_per_channel_hour=CHANNEL_MESSAGES_PER_HOUR)
    zipf = [max(2, round(largest / (rank + 1))) for rank in range(channel_count)]
    if hasattr(sc, "channel_sizes"):
        sc = replace(sc, channel_sizes="zipf")
    started = time.perf_counter()
    told = []
    signal.signal(signal.SIGUSR1, lambda *_: told.append(True))

    def progress(now: float) -> None:  # to stderr, which the parent passes through; stops here if told
        print(json.dumps({"simulated_s": round(now), "wall_s": round(time.perf_counter() - started, 1),
                          "events": sim.sched.events, "peak_rss_kib": peak_rss_kib()}), file=sys.stderr, flush=True)
        if told or time.process_time() > cpu_limit:
            raise StopRun

    sim = Simulation(sc, progress)
    counts = None
    if channel_count:
        counts = count_channel_envelopes(sim)
        if not hasattr(sc, "channel_sizes"):  # an earlier tree: the same Zipf audience
            def subscribe_all() -> None:
                for name, size in zip(sim.channels.names, zipf):
                    for _ in range(size):
                        sim._subscribe_one(name)
            sim._subscribe_all = subscribe_all
    try:
        sim.run()
        finished = True
    except StopRun:  # measure the simulated time it reached, as if that were the run's duration
        finished, duration = False, sim.sched.now
        sim.scenario = replace(sim.scenario, duration=duration)
    wall = time.perf_counter() - started
    summary = summarize(sim, wall)
    out = {"nodes": nodes, "finished": finished, "duration": duration, "wall_s": round(wall, 2),
           "cpu_s": round(time.process_time(), 1), "events": sim.sched.events,
           "node_s_per_wall_s": round(nodes * duration / wall, 1), "events_per_s": round(sim.sched.events / wall),
           "base_rss_kib": base, "peak_rss_kib": peak_rss_kib(),
           "kib_per_node": round((peak_rss_kib() - base) / nodes, 1),
           "lookup_success": summary["lookup_success"], "hops_mean": summary["hops"]["mean"],
           "lookup_p50_ms": summary["lookup_ms"][50]}
    if counts is not None:
        c, node_hours = summary["channels"], nodes * duration / 3600
        out["channels"] = {
            "channels": channel_count, "subscriptions": sum(zipf), "messages": c["messages"],
            "delivery_ratio": c["delivery_ratio"], "latency_ms": c["latency_ms"],
            "within_2rtt_100ms": c.get("within_2rtt_100ms"), "non_member_messages": c.get("non_member_messages"),
            "no_link_drops": c.get("no_link_drops"), "links_closed_for_room": c.get("links_closed_for_room"),
            "envelopes_per_node_s": round(counts["envelopes"] / (node_hours * 3600), 4),
            "control_envelopes_per_node_s": round(counts["control"] / (node_hours * 3600), 4),
            "channel_bytes_per_node_hour": round(counts["bytes"] / node_hours),
            "dht_bytes_per_node_hour": round(sum(n.bytes_sent for n in sim.nodes) / node_hours),
            "envelopes_by_kind": dict(getattr(sim.channels, "envelopes", {})),
            "by_size": by_size(sim, zipf, duration),
        }
    print(json.dumps(out), flush=True)


def engines(timers: int = 1000, events: int = 300_000) -> dict[str, Any]:
    """The same event load on our scheduler and on simpy."""
    from simulations.engine import Scheduler

    rng = random.Random(1)
    sched = Scheduler()
    count = [0]

    def fire() -> None:
        count[0] += 1
        if count[0] + timers <= events:
            sched.after(rng.expovariate(1.0), fire)

    for _ in range(timers):
        sched.after(rng.expovariate(1.0), fire)
    started = time.perf_counter()
    sched.run(float("inf"))
    ours = count[0] / (time.perf_counter() - started)
    result: dict[str, Any] = {"timers": timers, "events": count[0], "heap_events_per_s": round(ours)}
    try:
        import simpy
    except ImportError:
        result["simpy"] = "not installed (pip install -e '.[bench]')"
        return result
    rng = random.Random(1)
    env = simpy.Environment()
    done = [0]

    def process():
        while done[0] < events:
            yield env.timeout(rng.expovariate(1.0))
            done[0] += 1

    for _ in range(timers):
        env.process(process())
    started = time.perf_counter()
    env.run()
    theirs = done[0] / (time.perf_counter() - started)
    result.update(simpy_events_per_s=round(theirs), simpy_version=simpy.__version__, heap_vs_simpy=round(ours / theirs, 2))
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", default="100,1000,10000,100000")
    p.add_argument("--duration", type=float, default=3600.0)
    p.add_argument("--churn", type=float, default=0.1)
    p.add_argument("--limit", type=float, default=7200.0, help="CPU seconds per run before it stops itself")
    p.add_argument("--engines", action="store_true")
    p.add_argument("--channels", type=int, default=0, help="channels with Zipf sizes (the channel workload)")
    p.add_argument("--largest", type=int, default=LARGEST, help="subscribers of the largest channel")
    p.add_argument("--baseline", type=Path, help="another checkout whose cores to run at --baseline-nodes too")
    p.add_argument("--baseline-nodes", type=int, default=1000)
    p.add_argument("--out", type=Path)
    p.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child is not None:
        return child(args.child, args.duration, args.churn, args.channels, args.largest, args.limit)
    result: dict[str, Any] = {"machine": machine(), "command": sys.argv, "runs": []}
    if args.engines:
        result["engines"] = engines()
        print(f"engines: {json.dumps(result['engines'])}", flush=True)
    plan = [(int(x), None) for x in args.nodes.split(",")]
    if args.baseline is not None:
        plan.insert(0, (args.baseline_nodes, args.baseline.resolve()))
    for n, tree in plan:
        argv = [sys.executable, str(Path(__file__).resolve()), "--child", str(n), "--duration", str(args.duration),
                "--churn", str(args.churn), "--channels", str(args.channels), "--largest", str(args.largest),
                "--limit", str(args.limit)]
        env = {**os.environ, "OVERLAY_SIM_TREE": str(tree)} if tree else None
        started = time.perf_counter()
        try:
            # progress and errors go to our stderr; the child stops itself at its limit
            out = subprocess.run(argv, stdout=subprocess.PIPE, text=True, check=True, env=env).stdout
            run = json.loads(out.strip().splitlines()[-1])
        except subprocess.CalledProcessError as e:
            run = {"nodes": n, "finished": False, "error": f"exit status {e.returncode} (its stderr is above)"}
        run.setdefault("finished", True)
        run["tree"] = str(tree) if tree else "this checkout"
        run["child_wall_s"] = round(time.perf_counter() - started, 1)
        result["runs"].append(run)
        print(json.dumps(run), flush=True)
        if not run["finished"] and tree is None:
            break  # larger N will not finish either
    finished = [r["nodes"] for r in result["runs"] if r["finished"]]
    result["largest_finished"] = max(finished, default=None)
    write_result("simulation", result, args.out)


if __name__ == "__main__":
    main()
