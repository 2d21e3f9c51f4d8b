"""Sending limits (``mail_rate_limit``): sliding windows across all connections (pure state).

Each limit is "at most N mails in any window of W seconds". A send counts from the moment it
is admitted until it ends, and then with its end time for the rest of the window. A mail
reaches the relay between its send's start and end, so admitting a send only while fewer than
N sends are in flight or ended within the last W seconds guarantees that no window of W
seconds at the relay holds more than N mails: of any N + 1 of them, the last admitted saw one
that had ended at least W seconds before.

End times are kept in at most 1,000 buckets per limit, each rounded up to its bucket's end
(later, so never too few in a window): memory stays flat for 50,000 a day or a million.
Times are Unix seconds, so the day's sends can be read back from the journal after a restart.
"""

from __future__ import annotations

import math
import re
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["Rate", "SendLimiter", "parse_rates"]

_UNITS = {"second": 1.0, "minute": 60.0, "hour": 3600.0, "day": 86400.0}
_RATE = re.compile(r"\s*(\d{1,9})\s*/\s*(second|minute|hour|day)s?\s*", re.IGNORECASE)
_BUCKETS = 1000


@dataclass(frozen=True, slots=True)
class Rate:
    """At most ``count`` sends in any ``window`` seconds."""

    count: int
    window: float

    def __str__(self) -> str:
        unit = next(name for name, seconds in _UNITS.items() if seconds == self.window)
        return f"{self.count}/{unit}"


def parse_rates(value: str | list[str]) -> tuple[Rate, ...]:
    """``"14/second"`` or a list of such; raises ValueError naming the bad entry."""
    entries = [value] if isinstance(value, str) else value
    rates = []
    for entry in entries:
        match = _RATE.fullmatch(entry) if isinstance(entry, str) else None
        if match is None or int(match[1]) == 0:
            raise ValueError(
                f"{entry!r} is not a limit; write a positive count per second, minute, hour "
                'or day, such as ["14/second", "50000/day"]'
            )
        rates.append(Rate(int(match[1]), _UNITS[match[2].lower()]))
    if len({rate.window for rate in rates}) != len(rates):
        raise ValueError("has two limits for the same unit; keep one per unit")
    return tuple(sorted(rates, key=lambda rate: rate.window))


class _Window:
    """The sends that ended within one limit's window, bucketed."""

    def __init__(self, rate: Rate) -> None:
        self.rate = rate
        self._width = rate.window / _BUCKETS
        self._buckets: deque[list[float]] = deque()  # [bucket end, count], oldest first
        self.total = 0

    def add(self, at: float) -> None:
        end = math.ceil(at / self._width) * self._width
        if self._buckets and self._buckets[-1][0] >= end:
            self._buckets[-1][1] += 1  # a clock step back: count it in the newest bucket
        else:
            self._buckets.append([end, 1])
        self.total += 1

    def wait_time(self, now: float, in_flight: int) -> float:
        """Seconds until one more send fits; ``math.inf``: only a send's end can free room."""
        horizon = now - self.rate.window
        while self._buckets and self._buckets[0][0] <= horizon:
            self.total -= int(self._buckets.popleft()[1])
        excess = self.total + in_flight - self.rate.count + 1
        if excess <= 0:
            return 0.0
        if excess > self.total:
            return math.inf
        for end, count in self._buckets:
            excess -= int(count)
            if excess <= 0:
                return end + self.rate.window - now
        raise AssertionError("unreachable")  # pragma: no cover


class SendLimiter:
    """Admits sends within every limit; told when each admitted send ends."""

    def __init__(self, rates: Iterable[Rate], history: Iterable[float] = ()) -> None:
        self._windows = [_Window(rate) for rate in rates]
        self.rates = tuple(window.rate for window in self._windows)
        self.in_flight = 0
        for at in sorted(history):
            for window in self._windows:
                window.add(at)

    @property
    def longest(self) -> float:
        """The longest window, in seconds: how far back the journal must be read."""
        return max((rate.window for rate in self.rates), default=0.0)

    def wait_time(self, now: float) -> tuple[float, Rate | None]:
        """Seconds until a send may start (0: now) and the limit that holds it back."""
        worst, binding = 0.0, None
        for window in self._windows:
            wait = window.wait_time(now, self.in_flight)
            if wait > worst:
                worst, binding = wait, window.rate
        return worst, binding

    def begin(self) -> None:
        """An admitted send starts."""
        self.in_flight += 1

    def end(self, now: float, *, counted: bool = True) -> None:
        """An admitted send ended; ``counted=False`` when no mail can have gone out."""
        self.in_flight -= 1
        if counted:
            for window in self._windows:
                window.add(now)
