"""The metrics registry's text format: counters with labels, histogram buckets, gauges."""

from __future__ import annotations

from overlay.core.metrics import Registry


def test_metrics_text_format():
    r = Registry()
    c = r.counter("x_total", "things")
    c.inc(kind="a")
    c.inc(2, kind="a")
    h = r.histogram("lat_seconds", "latency", buckets=(0.1, 1.0))
    h.observe(0.05)
    h.observe(0.5)
    h.observe(5)
    r.gauge("g", "a gauge", lambda: 7)
    text = r.render()
    assert 'x_total{kind="a"} 3' in text
    assert 'lat_seconds_bucket{le="0.1"} 1' in text
    assert 'lat_seconds_bucket{le="1"} 2' in text
    assert 'lat_seconds_bucket{le="+Inf"} 3' in text
    assert "lat_seconds_count 3" in text and "g 7" in text
