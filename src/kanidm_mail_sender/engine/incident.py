"""A run of failures of one kind, logged on its first failure and then at most once per
interval, so an outage cannot flood the log."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

__all__ = ["LOG_INTERVAL", "Incident", "ReportedOnce"]

# Repeated identical failures are logged at most this often, by every stage.
LOG_INTERVAL = 300.0


@dataclass(slots=True)
class Incident:
    """Counts failures; ``failed()`` says when one should be logged."""

    interval: float
    failures: int = 0
    logged_at: float = -1e18

    def failed(self, now: float) -> bool:
        """Count one failure; True when this one should be logged."""
        self.failures += 1
        if now - self.logged_at < self.interval:
            return False
        self.logged_at = now
        return True

    def ended(self) -> int:
        """Close the incident; returns how many failures it had (0: there was none)."""
        failures, self.failures, self.logged_at = self.failures, 0, -1e18
        return failures


class ReportedOnce:
    """A bounded memory of what was already logged: the oldest entries are forgotten first."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._seen: OrderedDict[str, None] = OrderedDict()

    def first_time(self, key: str) -> bool:
        """True the first time ``key`` is seen (or after it was forgotten)."""
        if key in self._seen:
            self._seen.move_to_end(key)
            return False
        self._seen[key] = None
        if len(self._seen) > self._capacity:
            self._seen.popitem(last=False)
        return True

    def __len__(self) -> int:
        return len(self._seen)

    def __contains__(self, key: object) -> bool:
        return key in self._seen
