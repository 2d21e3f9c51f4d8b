"""A run of failures of one kind, logged on its first failure and then at most once per
interval, so an outage cannot flood the log."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["LOG_INTERVAL", "Incident"]

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
