"""Reconnect pacing for the live source: exponential backoff with full jitter, and a token
bucket that bounds the reconnect rate.

`Backoff` and `TokenBucket` are pure: time is passed in and randomness is injected, so
tests drive them with a fake clock (STYLE §6); `RequestGate` puts a lock and an
injected clock and sleep around the bucket. `watch` combines them: after a failure a
watcher sleeps the backoff delay, and *every* request it makes (list, watch, relist)
first waits its turn at one gate shared by all watchers of an agent.

Backoff alone does not bound load: full jitter draws delays near zero, and a dozen
watchers failing together multiply the rate. The bucket is the hard bound on what one
agent — times every node of a DaemonSet — sends to an API server that is failing.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class BackoffPolicy:
    """Exponential backoff parameters (client-go's reflector uses 0.8 s growing to 30 s)."""

    initial: float = 0.8
    """Upper bound of the first delay, in seconds."""
    cap: float = 30.0
    """No delay is ever longer than this."""
    factor: float = 2.0
    reset_after: float = 60.0
    """A watch that stays up this long counts as recovered: the next failure starts over."""

    def __post_init__(self) -> None:
        if self.initial <= 0 or self.cap < self.initial or self.factor < 1:
            raise ValueError(f"invalid backoff policy {self}")


class Backoff:
    """Delays for consecutive failures: uniform in [0, min(cap, initial·factor^n)].

    "Full jitter" (AWS architecture blog, "Exponential Backoff And Jitter"): spreading the
    whole interval de-synchronises the agents of a DaemonSet that lost the API server at
    the same moment, which a fixed exponential schedule would keep in lock-step.
    """

    def __init__(self, policy: BackoffPolicy, *, uniform: Callable[[], float]) -> None:
        """`uniform` returns a float in [0, 1), e.g. `random.Random().random`."""
        self.policy = policy
        self._uniform = uniform
        self.failures = 0

    def ceiling(self) -> float:
        """The upper bound of the next delay."""
        p = self.policy
        # Cap the exponent too, so a long outage does not overflow the float.
        exponent = min(self.failures, 64)
        return min(p.cap, p.initial * p.factor**exponent)

    def next_delay(self) -> float:
        """The delay before the next attempt; counts one more failure."""
        delay = self.ceiling() * self._uniform()
        self.failures += 1
        return delay

    def reset(self) -> None:
        self.failures = 0


def jittered(value: float, *, spread: float, uniform: Callable[[], float]) -> float:
    """`value` scaled by a factor in [1, 1 + spread): client-go spreads watch timeouts so."""
    return value * (1.0 + spread * uniform())


class TokenBucket:
    """At most `burst` requests at once, refilled at `rate` per second.

    `reserve` takes a token and returns how long the caller must wait before using it —
    possibly going into debt, like golang.org/x/time/rate's `Reserve` — so concurrent
    callers queue up fairly instead of spinning, and the long-run rate never exceeds
    `rate`. Not thread-safe: callers serialise `reserve` (it is cheap).
    """

    def __init__(self, *, rate: float, burst: int, now: float) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"invalid token bucket: rate={rate}, burst={burst}")
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._at = now

    def _refill(self, now: float) -> None:
        # A clock that went backwards (wall clock adjusted) refills nothing.
        elapsed = max(0.0, now - self._at)
        self._tokens = min(float(self.burst), self._tokens + elapsed * self.rate)
        self._at = max(self._at, now)

    def available(self, now: float) -> float:
        """Tokens available at `now` (negative while reservations are queued)."""
        self._refill(now)
        return self._tokens

    def reserve(self, now: float) -> float:
        """Take one token; return the seconds to wait before acting on it (0 if none)."""
        self._refill(now)
        self._tokens -= 1.0
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate


class RequestGate:
    """The shared token bucket every request waits on (thread-safe)."""

    def __init__(
        self, bucket: TokenBucket, *, clock: Callable[[], float], sleep: Callable[[float], None]
    ) -> None:
        self._bucket = bucket
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()

    def wait_turn(self) -> None:
        with self._lock:
            delay = self._bucket.reserve(self._clock())
        if delay > 0:
            self._sleep(delay)


def default_uniform() -> Callable[[], float]:
    """A jitter source for production; tests pass a seeded or scripted one."""
    return random.Random().random
