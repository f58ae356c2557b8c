"""Counters, gauges and histograms rendered in the Prometheus text format (version 0.0.4).

Small on purpose: the node needs a handful of series and no client library's global registry.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from typing import Any

import trio

Labels = tuple[tuple[str, str], ...]
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{v}"' for k, v in labels)
    return "{" + inner + "}"


class Counter:
    def __init__(self) -> None:
        self.values: dict[Labels, float] = {}

    def inc(self, amount: float = 1, **labels: str) -> None:
        key = tuple(labels.items())
        if len(key) > 1:  # one label or none is already in order (a hot path: every envelope)
            key = tuple(sorted(key))
        self.values[key] = self.values.get(key, 0) + amount

    def get(self, **labels: str) -> float:
        return self.values.get(tuple(sorted(labels.items())), 0)


def offer(send: trio.MemorySendChannel, item: Any, dropped: Counter, who: str) -> bool:
    """Queue `item` for a socket without waiting; what a full queue or a gone socket refuses
    is counted in `dropped` ("<who> too slow" / "<who> gone")."""
    try:
        send.send_nowait(item)
        return True
    except trio.WouldBlock:
        dropped.inc(reason=f"{who} too slow")
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        dropped.inc(reason=f"{who} gone")
    return False


def trio_tasks() -> int:
    """Tasks alive in the current trio run (the root task's tree, walked): a task leak shows here."""
    count, stack = 0, [trio.lowlevel.current_root_task()]
    while stack:
        task = stack.pop()
        count += 1
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return count


class Histogram:
    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.buckets = buckets
        self.series: dict[Labels, tuple[list[int], list[float]]] = {}  # counts, [sum, count]

    def observe(self, value: float, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        counts, totals = self.series.setdefault(key, ([0] * (len(self.buckets) + 1), [0.0, 0]))
        counts[bisect.bisect_left(self.buckets, value)] += 1
        totals[0] += value
        totals[1] += 1


class Registry:
    def __init__(self) -> None:
        self._metrics: list[tuple[str, str, str, object]] = []

    def counter(self, name: str, help: str) -> Counter:
        c = Counter()
        self._metrics.append((name, help, "counter", c))
        return c

    def histogram(self, name: str, help: str, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> Histogram:
        h = Histogram(buckets)
        self._metrics.append((name, help, "histogram", h))
        return h

    def gauge(self, name: str, help: str, read: Callable[[], float]) -> None:
        self._metrics.append((name, help, "gauge", read))

    def counts(self, name: str, help: str, label: str, read: Callable[[], dict[str, int]]) -> None:
        """A counter kept elsewhere (a core's, without I/O) as {label value: count}."""
        self._metrics.append((name, help, "counter", (label, read)))

    def render(self) -> str:
        lines: list[str] = []
        for name, help, kind, metric in self._metrics:
            lines.append(f"# HELP {name} {help}")
            lines.append(f"# TYPE {name} {kind}")
            if isinstance(metric, Counter):
                for labels, value in sorted(metric.values.items()):
                    lines.append(f"{name}{_labels(labels)} {value:g}")
            elif isinstance(metric, Histogram):
                for labels, (counts, (total, count)) in sorted(metric.series.items()):
                    running = 0
                    for bound, n in zip(metric.buckets + (float("inf"),), counts):
                        running += n
                        le = "+Inf" if bound == float("inf") else f"{bound:g}"
                        lines.append(f"{name}_bucket{_labels(labels + (('le', le),))} {running}")
                    lines.append(f"{name}_sum{_labels(labels)} {total:g}")
                    lines.append(f"{name}_count{_labels(labels)} {count}")
            elif isinstance(metric, tuple):
                label, read = metric
                for value, count in sorted(read().items()):
                    lines.append(f"{name}{_labels(((label, value),))} {count:g}")
            else:
                lines.append(f"{name} {metric():g}")  # type: ignore[operator]
        return "\n".join(lines) + "\n"
