"""Backoff with full jitter and the token bucket, on a fake clock and scripted randomness."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator

import pytest

from netwatch.k8s.backoff import Backoff, BackoffPolicy, RequestGate, TokenBucket, jittered


def scripted(*values: float) -> Iterator[float]:
    yield from values


def test_ceiling_doubles_per_failure_up_to_the_cap() -> None:
    backoff = Backoff(BackoffPolicy(initial=1.0, cap=10.0), uniform=lambda: 0.999999)
    ceilings = []
    for _ in range(6):
        ceilings.append(backoff.ceiling())
        backoff.next_delay()
    assert ceilings == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


@pytest.mark.parametrize(("draw", "expected"), [(0.0, 0.0), (0.5, 2.0), (0.25, 1.0)])
def test_full_jitter_spreads_over_the_whole_interval(draw: float, expected: float) -> None:
    backoff = Backoff(BackoffPolicy(initial=1.0, cap=30.0), uniform=lambda: draw)
    backoff.next_delay()
    backoff.next_delay()  # third failure: interval [0, 4)
    assert backoff.next_delay() == expected


def test_delays_stay_within_bounds_for_any_draws() -> None:
    rng = random.Random(7)
    policy = BackoffPolicy(initial=0.5, cap=8.0)
    backoff = Backoff(policy, uniform=rng.random)
    for n in range(2000):  # long outages must neither overflow nor exceed the cap
        ceiling = policy.cap if n >= 4 else policy.initial * 2**n
        assert 0.0 <= backoff.next_delay() <= ceiling


def test_reset_starts_the_schedule_over() -> None:
    backoff = Backoff(BackoffPolicy(initial=1.0, cap=30.0), uniform=lambda: 0.5)
    for _ in range(4):
        backoff.next_delay()
    backoff.reset()
    assert backoff.failures == 0
    assert backoff.next_delay() == 0.5


def test_jittered_timeout_spreads_upwards_only() -> None:
    draws = scripted(0.0, 0.5, 0.999)
    values = [jittered(300.0, spread=1.0, uniform=lambda: next(draws)) for _ in range(3)]
    assert values == [300.0, 450.0, pytest.approx(599.7)]


@pytest.mark.parametrize(
    "policy",
    [
        {"initial": 0.0},
        {"initial": 2.0, "cap": 1.0},
        {"factor": 0.5},
    ],
)
def test_invalid_backoff_policy_is_rejected(policy: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="invalid backoff"):
        BackoffPolicy(**policy)


def test_bucket_allows_a_burst_then_queues_at_the_rate() -> None:
    bucket = TokenBucket(rate=2.0, burst=3, now=100.0)
    delays = [bucket.reserve(100.0) for _ in range(6)]
    # Three at once, then one every half second: reservations queue, they do not spin.
    assert delays == [0.0, 0.0, 0.0, 0.5, 1.0, 1.5]


def test_bucket_refills_over_time_but_never_beyond_the_burst() -> None:
    bucket = TokenBucket(rate=1.0, burst=2, now=0.0)
    bucket.reserve(0.0)
    bucket.reserve(0.0)
    assert bucket.available(1.5) == pytest.approx(1.5)
    assert bucket.available(1000.0) == 2.0
    assert [bucket.reserve(1000.0) for _ in range(3)] == [0.0, 0.0, 1.0]


def test_bucket_ignores_a_clock_that_goes_backwards() -> None:
    bucket = TokenBucket(rate=1.0, burst=1, now=50.0)
    assert bucket.reserve(50.0) == 0.0
    assert bucket.reserve(10.0) == pytest.approx(1.0)  # no refill from the jump back
    assert bucket.available(51.0) == pytest.approx(0.0)


@pytest.mark.parametrize(("rate", "burst"), [(0.0, 1), (1.0, 0), (-1.0, 5)])
def test_invalid_bucket_is_rejected(rate: float, burst: int) -> None:
    with pytest.raises(ValueError, match="invalid token bucket"):
        TokenBucket(rate=rate, burst=burst, now=0.0)


@pytest.mark.parametrize("window", [1.0, 10.0, 60.0])
def test_attempts_in_any_window_are_bounded_by_burst_plus_rate(window: float) -> None:
    """A flood of failures with zero backoff: the gate alone bounds the attempts."""
    now = [0.0]
    attempts: list[float] = []
    gate = RequestGate(
        TokenBucket(rate=5.0, burst=10, now=0.0),
        clock=lambda: now[0],
        sleep=lambda seconds: now.__setitem__(0, now[0] + seconds),
    )
    while now[0] < 120.0:  # one caller retrying instantly for two minutes
        gate.wait_turn()
        attempts.append(now[0])
    for start in [0.0, 3.3, 50.0, 100.0]:
        inside = [t for t in attempts if start <= t < start + window]
        assert len(inside) <= 10 + 5.0 * window
    assert len(attempts) == pytest.approx(10 + 5.0 * 120.0, abs=1)


def test_gate_is_shared_fairly_between_threads() -> None:
    now = [0.0]
    lock = threading.Lock()
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        with lock:
            slept.append(seconds)

    gate = RequestGate(TokenBucket(rate=10.0, burst=4, now=0.0), clock=lambda: now[0], sleep=sleep)
    threads = [threading.Thread(target=gate.wait_turn) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Four went at once; the other eight queued 0.1 s apart, each with its own slot.
    assert sorted(slept) == pytest.approx([0.1 * i for i in range(1, 9)])
