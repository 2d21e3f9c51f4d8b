"""Sending limits (mail_rate_limit): parsing, and the limiter's counting of sends and their ends."""

from __future__ import annotations

import math
from typing import Any

import pytest

from kanidm_mail_sender.core.ratelimit import Rate, SendLimiter, parse_rates


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("14/second", (Rate(14, 1.0),)),
        (["50000/day", "14/second"], (Rate(14, 1.0), Rate(50000, 86400.0))),
        (["30/Minutes", "1000/hour"], (Rate(30, 60.0), Rate(1000, 3600.0))),
    ],
)
def test_rates_parse(value: Any, expected: tuple[Rate, ...]) -> None:
    assert parse_rates(value) == expected


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("14 per second", "not a limit"),
        ("0/second", "not a limit"),
        ("5/week", "not a limit"),
        (["1/second", "2/seconds"], "same unit"),
        ([3], "not a limit"),
    ],
)
def test_bad_rates(value: Any, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        parse_rates(value)


def test_limiter_counts_in_flight_sends_and_their_ends() -> None:
    two = Rate(2, 1.0)
    limiter = SendLimiter([two])
    assert limiter.wait_time(100.0) == (0.0, None)
    limiter.begin()
    limiter.begin()
    assert limiter.wait_time(100.0) == (math.inf, two)  # only an end can make room
    limiter.end(100.2)
    # One in flight and one ended within the second: room when the ended one leaves it.
    wait, rate = limiter.wait_time(100.3)
    assert rate == two
    assert wait == pytest.approx(0.9, abs=0.002)
    limiter.end(100.4, counted=False)  # no mail can have gone out: not counted
    assert limiter.wait_time(100.4) == (0.0, None)
    assert limiter.wait_time(101.2)[0] == 0.0


def test_limiter_starts_from_history_and_stays_small() -> None:
    day = Rate(3, 86400.0)
    limiter = SendLimiter([day], history=[1000.0, 2000.0, 3000.0])
    wait, rate = limiter.wait_time(4000.0)
    assert rate == day
    assert wait == pytest.approx(1000.0 + 86400.0 - 4000.0, abs=100)
    big = SendLimiter([Rate(1_000_000, 86400.0)])
    for i in range(20_000):
        big.begin()
        big.end(i * 0.5)
    assert len(big._windows[0]._buckets) <= 1001
