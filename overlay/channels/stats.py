"""node-stats and host-stats figures (WSRelay): traffic over 1/15/60 s, host load, memory, disks, network.

A node keeps 60 s of history, in one-second buckets (traffic) and 15-second samples (host
network counters), so memory stays constant. Bandwidth is in kB/s (1000 bytes), averaged over
each window. Host network figures ("15s_in" ... "60s_out") are the bytes (packets) received and
sent over the last 15, 30, 45 and 60 seconds, from the 15-second samples (0 until a window has
been observed).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import psutil

WINDOWS = (1, 15, 60)
HOST_SAMPLE = 15.0


@dataclass
class Traffic:
    """Packets and bytes per whole second, the last 60 seconds."""

    buckets: deque[list[int]] = field(default_factory=lambda: deque(maxlen=61))  # [second, packets, bytes]

    def record(self, now: float, size: int) -> None:
        second = int(now)
        if not self.buckets or self.buckets[-1][0] != second:
            self.buckets.append([second, 0, 0])
        self.buckets[-1][1] += 1
        self.buckets[-1][2] += size

    def summary(self, now: float) -> dict:
        """WSRelay's network dictionary. Window w covers the w whole seconds before this one."""
        current = int(now)
        packets, bandwidth = {}, {}
        for w in WINDOWS:
            inside = [b for b in self.buckets if current - w <= b[0] < current]
            packets[f"{w}s"] = sum(b[1] for b in inside)
            bandwidth[f"{w}s"] = round(sum(b[2] for b in inside) / w / 1000, 3)
        return {"packets": packets, "bandwidth": bandwidth}


class HostStats:
    """psutil figures; call `sample(now)` every HOST_SAMPLE seconds for the network history."""

    def __init__(self) -> None:
        self._samples: deque[tuple[float, object]] = deque(maxlen=5)

    def sample(self, now: float) -> None:
        self._samples.append((now, psutil.net_io_counters()))

    def report(self) -> dict:
        load = psutil.getloadavg()
        mem = psutil.virtual_memory()
        disks = []
        for part in psutil.disk_partitions(all=False):
            try:
                usage = psutil.disk_usage(part.mountpoint)
            except OSError:
                continue
            disks.append({"mount": part.mountpoint, "used": usage.used, "free": usage.free, "total": usage.total})
        net: dict[str, dict[str, int]] = {"bytes": {}, "packets": {}}
        samples = list(self._samples)
        for steps in range(1, 5):
            seconds = int(steps * HOST_SAMPLE)
            if len(samples) > steps:
                new, old = samples[-1][1], samples[-1 - steps][1]
                net["bytes"][f"{seconds}s_in"] = new.bytes_recv - old.bytes_recv
                net["bytes"][f"{seconds}s_out"] = new.bytes_sent - old.bytes_sent
                net["packets"][f"{seconds}s_in"] = new.packets_recv - old.packets_recv
                net["packets"][f"{seconds}s_out"] = new.packets_sent - old.packets_sent
            else:
                for kind in ("bytes", "packets"):
                    net[kind][f"{seconds}s_in"] = net[kind][f"{seconds}s_out"] = 0
        return {
            "cpu": {"1m": round(load[0], 2), "5m": round(load[1], 2), "15m": round(load[2], 2)},
            "mem": {"used": mem.used, "free": mem.free, "cache": mem.available, "total": mem.total},
            "disk": disks,
            "network": net,
        }
