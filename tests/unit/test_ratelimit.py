"""Token buckets: refill, cap, clocks going backwards, bounded memory."""

from __future__ import annotations

from overlay.core.ratelimit import RateLimiter


def test_token_bucket():
    limiter = RateLimiter(rate=2.0, burst=3, max_keys=2)
    assert [limiter.allow("a", 0.0) for _ in range(4)] == [True, True, True, False]
    assert limiter.allow("b", 0.0)
    assert not limiter.allow("a", 0.4) and limiter.allow("a", 0.5)  # one token per 0.5 s
    assert not limiter.allow("a", 0.1)  # time going backwards gives nothing
    assert limiter.allow("a", 100.0) and limiter.allow("a", 100.0) and limiter.allow("a", 100.0)
    assert not limiter.allow("a", 100.0)  # refill capped at burst
    limiter.allow("c", 100.0)
    assert len(limiter) == 2  # "b", least recently seen, was forgotten
