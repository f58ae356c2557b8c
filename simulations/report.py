"""Reports of a simulation run: metrics.json, PNG plots, summary.txt; and parameter sweeps.

    overlay-node simulate [SCENARIO] [--out DIR] [--seed N] [--sweep KEY=V1,V2,...]

One run writes to DIR: metrics.json (the summary below, the time series and the scenario),
summary.txt, and plots: lookup_latency_cdf.png, hops.png, lookup_success.png, paths.png,
first_stream_cdf.png, signaling_load.png, bytes_per_node.png, and with channels
channel_latency_cdf.png. A sweep runs the scenario once per
value, each into DIR/KEY=V, and plots the main metrics against the swept value
(sweep_KEY.png, sweep.json).
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from simulations.network import Simulation, percentile
from simulations.scenario import Scenario

WINDOW = 300.0  # seconds per point of the lookup-success series


def run(scenario: Scenario, out: Path, quiet: bool = False) -> dict[str, Any]:
    """Simulate, write the report into `out`, return the summary."""
    out.mkdir(parents=True, exist_ok=True)
    bar = None if quiet else ProgressBar(scenario.duration, scenario.name)
    started = time.perf_counter()
    sim = Simulation(scenario, progress=bar)
    sim.run()
    wall = time.perf_counter() - started
    if bar is not None:
        bar.done()
    summary = summarize(sim, wall)
    series = {"samples": sim.metrics.samples, "lookup_success": success_series(sim.metrics.dials)}
    scenario_json = {k: v for k, v in asdict(scenario).items() if k != "rtt"}
    (out / "metrics.json").write_text(json.dumps({"summary": summary, "series": series, "scenario": scenario_json}, indent=1))
    text = summary_text(summary)
    (out / "summary.txt").write_text(text + "\n")
    plot(sim, summary, series, out)
    if not quiet:
        print(text)
    return summary


def summarize(sim: Simulation, wall: float) -> dict[str, Any]:
    sc, dials = sim.scenario, sim.metrics.dials
    found = [d for d in dials if d["found"]]
    connected = [d for d in dials if d["connected"]]
    final = Counter(d["path"] for d in connected)
    public = [n for n in sim.nodes if n.public and (n.online or n.relayed)]
    node_bytes = [n.bytes_sent + n.bytes_received for n in sim.nodes if n.bytes_sent or n.bytes_received]
    hours = sc.duration / 3600
    pairs: dict[str, Counter] = {}
    for d in connected:
        pairs.setdefault(f"{d['source_nat']}->{d['target_nat']}", Counter())["relayed" if d["path"] in ("relayed", "cut") else "direct"] += 1

    def ms(values: list[float], q: float) -> float | None:
        v = percentile(values, q)
        return None if v is None else round(v * 1000, 1)

    return {
        "scenario": sc.name, "nodes": sc.nodes, "seed": sc.seed, "simulated_s": sc.duration,
        "wall_s": round(wall, 2), "events": sim.sched.events,
        "node_seconds_per_wall_second": round(sc.nodes * sc.duration / wall, 1) if wall else None,
        "joins": sim.metrics.joins, "leaves": sim.metrics.leaves,
        "dials": len(dials),
        "lookup_success": round(len(found) / len(dials), 4) if dials else None,
        "connect_success": round(len(connected) / len(dials), 4) if dials else None,
        "lookup_ms": {q: ms([d["lookup_s"] for d in found], q) for q in (50, 90, 99)},
        "hops": {"mean": round(sum(d["hops"] for d in found) / len(found), 2) if found else None,
                 "p50": percentile([d["hops"] for d in found], 50), "max": max((d["hops"] for d in found), default=None)},
        "paths": {"direct": final.get("direct", 0), "upgraded": final.get("upgraded", 0), "relayed": final.get("relayed", 0),
                  "cut": final.get("cut", 0)},
        "direct_share": round((final.get("direct", 0) + final.get("upgraded", 0)) / len(connected), 4) if connected else None,
        "first_stream_ms": {q: ms([d["first_stream_s"] for d in connected], q) for q in (50, 90, 99)},
        "direct_path_ms": {q: ms([d["direct_s"] for d in connected if d["direct_s"] is not None], q) for q in (50, 90)},
        "by_nat_pair": {k: dict(v) for k, v in sorted(pairs.items())},
        "signaling": {
            "nodes": len(public),
            "registrations_now": sorted((len(n.clients) for n in public if n.online), reverse=True)[:10],
            "registrations_mean": round(sum(loads) / len(loads), 2) if (loads := [len(n.clients) for n in public if n.online]) else None,
            "registrations_max_over_mean": round(max(loads) * len(loads) / sum(loads), 2) if loads and sum(loads) else None,
            "relayed_per_hour": {"mean": round(sum(n.relayed for n in public) / max(1, len(public)) / hours, 2),
                                 "max": round(max((n.relayed for n in public), default=0) / hours, 2)},
            "upgrades_signalled_per_hour": round(sum(n.upgrades_signalled for n in public) / max(1, len(public)) / hours, 2),
        },
        "relay": {  # each public node's RelayBudget, the node's own limits
            "circuits_peak": max((n.circuits_peak for n in public), default=0),
            "refused": dict(sum((n.relay_refused for n in public), Counter())),
        },
        "channels": channel_summary(sim),
        "bytes_per_node_per_hour": {"mean": round(sum(node_bytes) / max(1, len(node_bytes)) / hours),
                                    "p99": round((percentile(node_bytes, 99) or 0) / hours)},
    }


def channel_summary(sim: Simulation) -> dict[str, Any] | None:
    """Delivery ratio and latency of channel messages sent at least 10 s before the end."""
    if sim.channels is None:
        return None
    sent = [m for m in sim.channels.messages if m["t"] <= sim.scenario.duration - 10]
    expected = sum(m["expected"] for m in sent)
    latencies = [x for m in sent for x in m["latencies"]]
    node_seconds = sim.scenario.nodes * sim.scenario.duration
    return {"messages": len(sent), "deliveries_expected": expected,
            "delivery_ratio": round(len(latencies) / expected, 4) if expected else None,
            "latency_ms": {q: None if not latencies else round(percentile(latencies, q) * 1000, 1) for q in (50, 90, 99)},
            "within_2rtt_100ms": round(sum(m["within_bound"] for m in sent) / len(latencies), 4) if latencies else None,
            "envelopes": dict(sim.channels.envelopes),
            "envelopes_per_node_s": round(sum(sim.channels.envelopes.values()) / node_seconds, 4),
            "control_envelopes_per_node_s": round(sum(n for k, n in sim.channels.envelopes.items() if k != "message")
                                                  / node_seconds, 4),
            "non_member_messages": sim.channels.non_member_messages, "no_link_drops": sim.channels.no_link,
            "links_closed_for_room": sim.channels.links_closed}


def success_series(dials: list[dict]) -> list[dict]:
    windows: dict[int, list[bool]] = {}
    for d in dials:
        windows.setdefault(int(d["t"] // WINDOW), []).append(d["found"] and d["connected"])
    return [{"t": (w + 1) * WINDOW, "dials": len(v), "success": round(sum(v) / len(v), 4)} for w, v in sorted(windows.items())]


def summary_text(s: dict[str, Any]) -> str:
    lines = [
        f"{s['scenario']}: {s['nodes']} nodes, {s['simulated_s'] / 3600:g} h simulated in {s['wall_s']} s "
        f"({s['events']} events, {s['joins']} joins, {s['leaves']} leaves, seed {s['seed']})",
        f"dials by peer ID: {s['dials']}, record found {_pct(s['lookup_success'])}, connected {_pct(s['connect_success'])}",
        f"lookup: p50 {s['lookup_ms'][50]} ms, p99 {s['lookup_ms'][99]} ms; hops mean {s['hops']['mean']}, max {s['hops']['max']}",
        f"paths: {s['paths']['direct']} direct, {s['paths']['upgraded']} relayed then direct, {s['paths']['relayed']} relayed "
        f"(direct share {_pct(s['direct_share'])})",
        f"time to first stream: p50 {s['first_stream_ms'][50]} ms, p99 {s['first_stream_ms'][99]} ms; "
        f"to a direct path: p50 {s['direct_path_ms'][50]} ms",
        f"signalling nodes: {s['signaling']['nodes']}, most registrations now {s['signaling']['registrations_now'][:3]} "
        f"(mean {s['signaling']['registrations_mean']}, max/mean {s['signaling']['registrations_max_over_mean']}), "
        f"relayed connections per node-hour mean {s['signaling']['relayed_per_hour']['mean']} "
        f"(max {s['signaling']['relayed_per_hour']['max']})",
        f"relay circuits: at most {s['relay']['circuits_peak']} open on one node; refused: "
        f"{', '.join(f'{n} {k}' for k, n in sorted(s['relay']['refused'].items())) or 'none'}; "
        f"{s['paths']['cut']} connections cut at a first circuit's limit",
        *([f"channels: {c['messages']} messages, delivery ratio {_pct(c['delivery_ratio'])}, latency p50 "
           f"{c['latency_ms'][50]} ms, p99 {c['latency_ms'][99]} ms, within 2 RTT + 100 ms {_pct(c['within_2rtt_100ms'])}; "
           f"{c['envelopes_per_node_s']} envelopes per node-second ({c['control_envelopes_per_node_s']} control), "
           f"{c['non_member_messages']} messages at non-members"] if (c := s["channels"]) else []),
        f"DHT bytes per node-hour: mean {s['bytes_per_node_per_hour']['mean']}, p99 {s['bytes_per_node_per_hour']['p99']}",
    ]
    return "\n".join(lines)


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def plot(sim: Simulation, summary: dict[str, Any], series: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dials = sim.metrics.dials
    found = [d for d in dials if d["found"]]
    connected = [d for d in dials if d["connected"]]
    title = f"{summary['scenario']} ({summary['nodes']} nodes, seed {summary['seed']})"

    def cdf(name: str, values: list[float], xlabel: str) -> None:
        fig, ax = plt.subplots(figsize=(6, 4))
        if values:
            values = sorted(values)
            ax.plot(values, [(i + 1) / len(values) for i in range(len(values))])
        ax.set(xlabel=xlabel, ylabel="share of dials", title=title)
        ax.grid(alpha=0.3)
        fig.savefig(out / name, dpi=100, bbox_inches="tight")
        plt.close(fig)

    cdf("lookup_latency_cdf.png", [d["lookup_s"] * 1000 for d in found], "lookup latency (ms)")
    cdf("first_stream_cdf.png", [d["first_stream_s"] * 1000 for d in connected], "time to first stream (ms)")
    if sim.channels is not None:
        cdf("channel_latency_cdf.png", [x * 1000 for m in sim.channels.messages for x in m["latencies"]],
            "channel message latency (ms)")
    cdf("bytes_per_node.png", [n.bytes_sent + n.bytes_received for n in sim.nodes if n.bytes_sent], "DHT bytes per node")

    fig, ax = plt.subplots(figsize=(6, 4))
    hops = Counter(d["hops"] for d in found)
    ax.bar(list(hops), list(hops.values()))
    ax.set(xlabel="lookup hops", ylabel="dials", title=title)
    fig.savefig(out / "hops.png", dpi=100, bbox_inches="tight")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    points = series["lookup_success"]
    ax.plot([p["t"] / 60 for p in points], [p["success"] for p in points], marker="o")
    ax.set(xlabel="minutes", ylabel="dials that connected", ylim=(0, 1.05), title=title)
    ax.grid(alpha=0.3)
    fig.savefig(out / "lookup_success.png", dpi=100, bbox_inches="tight")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    paths = summary["paths"]
    ax.bar(["direct", "relayed, then direct", "relayed"], [paths["direct"], paths["upgraded"], paths["relayed"]])
    ax.set(ylabel="connections", title=title)
    fig.savefig(out / "paths.png", dpi=100, bbox_inches="tight")
    plt.close(fig)

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    public = [n for n in sim.nodes if n.public and (n.online or n.relayed)]
    left.hist([len(n.clients) for n in public if n.online], bins=20)
    left.set(xlabel="registered nodes behind NAT (end of run)", ylabel="signalling nodes")
    right.hist([n.relayed for n in public], bins=20)
    right.set(xlabel="connections relayed", ylabel="signalling nodes")
    fig.suptitle(title)
    fig.savefig(out / "signaling_load.png", dpi=100, bbox_inches="tight")
    plt.close(fig)


SWEPT = (("lookup_success", "record found"), ("direct_share", "direct share"),
         ("lookup_p50_ms", "lookup p50 (ms)"), ("first_stream_p50_ms", "first stream p50 (ms)"))


def sweep(scenario: Scenario, key: str, values: list[str], out: Path, quiet: bool = False) -> list[dict[str, Any]]:
    """Run the scenario once per value of `key`; plot the main metrics against it."""
    steps = [scenario.with_value(key, v) for v in values]  # every value checked before anything runs
    results = []
    for value, step in zip(values, steps):
        summary = run(replace(step, name=f"{scenario.name} {key}={value}"), out / f"{key}={value}", quiet)
        results.append({"value": value, "summary": summary,
                        "lookup_p50_ms": summary["lookup_ms"][50], "first_stream_p50_ms": summary["first_stream_ms"][50],
                        "lookup_success": summary["lookup_success"], "direct_share": summary["direct_share"]})
    (out / "sweep.json").write_text(json.dumps({"key": key, "steps": results}, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(SWEPT), figsize=(4 * len(SWEPT), 3.5))
    xs = [float(v) for v in values]
    for ax, (metric, label) in zip(axes, SWEPT):
        ax.plot(xs, [r[metric] if r[metric] is not None else float("nan") for r in results], marker="o")
        ax.set(xlabel=key, ylabel=label)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{scenario.name}: sweep of {key}")
    fig.tight_layout()
    fig.savefig(out / f"sweep_{key}.png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return results


class ProgressBar:
    """One line on stderr: share of simulated time done, and speed."""

    def __init__(self, total: float, label: str, width: int = 30) -> None:
        self.total, self.label, self.width = total, label, width
        self.started = time.perf_counter()
        self.drawn = -1.0

    def __call__(self, now: float) -> None:
        done = min(1.0, now / self.total)
        wall = time.perf_counter() - self.started
        if done < 1.0 and wall - self.drawn < 0.5:
            return
        self.drawn = wall
        filled = int(done * self.width)
        sys.stderr.write(f"\r{self.label} [{'#' * filled}{'.' * (self.width - filled)}] {100 * done:5.1f}% "
                         f"{now:,.0f}/{self.total:,.0f} s simulated, {wall:,.0f} s wall")
        sys.stderr.flush()

    def done(self) -> None:
        sys.stderr.write("\n")
