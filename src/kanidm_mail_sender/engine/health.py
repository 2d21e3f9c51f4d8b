"""Relay health: one circuit breaker and one rate governor for all sends (pure state).

Relay-wide failures (refused, 421, TLS, AUTH, MAIL FROM refused) open the breaker: nothing is
sent until the pause ends, then a single probe send goes out; its success closes the breaker,
its failure pauses again for longer. So a relay that is down costs one connection attempt per
pause, not one per queued message. Throttling replies halve the number of concurrent sends
and pause briefly; successes win the concurrency back one step at a time.

Times are passed in (monotonic seconds); the sending stage does the waiting.
"""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Callable
from dataclasses import dataclass

from kanidm_mail_sender.core.defaults import SEND_WORKERS
from kanidm_mail_sender.core.planning import backoff_delay

__all__ = ["Change", "HealthSettings", "PauseCause", "RelayHealth"]


class Change(enum.Enum):
    """What a report changed, for the one log line per incident."""

    PAUSED = "paused"  # a relay-wide incident began
    THROTTLED = "throttled"  # a throttling incident began
    RECOVERED = "recovered"  # the relay works again after an incident


class PauseCause(enum.StrEnum):
    """Whose problem a relay-wide pause is: the label of its metrics and log lines."""

    RELAY = "relay"  # down, closing, refusing connections, our credentials
    SENDER = "sender"  # our From address or account may not send
    QUOTA = "quota"  # our account's sending quota is used up
    BURST = "burst"  # the same refusal after DATA for several destinations in a row


@dataclass(frozen=True, slots=True)
class HealthSettings:
    """Limits and pauses; the defaults suit a relay across a network."""

    max_concurrency: int = SEND_WORKERS
    pause_initial: float = 5.0
    pause_max: float = 300.0
    throttle_initial: float = 2.0
    throttle_max: float = 120.0
    # Lost connections and timeouts in a row, with no success between, that count as the
    # relay being down rather than one destination's bad luck.
    transport_failures_limit: int = 4


class RelayHealth:
    """Decides when a send may start; told the outcome of every send."""

    def __init__(self, settings: HealthSettings, rand: Callable[[], float] = random.random) -> None:
        self._s = settings
        self._rand = rand
        self.limit = settings.max_concurrency
        self.active = 0
        self.paused_until = 0.0
        self.pauses = 0  # consecutive relay-wide pauses of the current incident
        self.throttles = 0
        # One send alone first, at start and after every pause: until it succeeds nothing is
        # known about the relay, and a dead one must cost one connection, not one per worker.
        self._probing = False
        self._needs_probe = True
        self._transport_failures = 0
        self._successes_at_limit = 0
        self.incident_started: float | None = None
        self.last_error = ""
        # Of the open pause: whose problem it is, and the evidence that made it relay-wide.
        self.cause: PauseCause | None = None
        self.reason = ""

    @property
    def paused(self) -> bool:
        """Whether a relay-wide incident is open (paused, or waiting for its probe)."""
        return self.pauses > 0

    def wait_time(self, now: float) -> float:
        """Seconds until a send may start (0: now); ``math.inf``: wait for a probe's end."""
        if now < self.paused_until:
            return self.paused_until - now
        if self._probing or self.active >= self.limit:
            return math.inf
        return 0.0

    def start(self, now: float) -> bool:
        """Take a slot if a send may start now; returns False otherwise."""
        if self.wait_time(now) != 0.0:
            return False
        self.active += 1
        if self._needs_probe:
            self._needs_probe, self._probing = False, True
        return True

    def cancelled(self) -> Change | None:
        """A started send ended without a verdict (stop, cancellation, a local error)."""
        self.active -= 1
        if self._probing:
            self._probing, self._needs_probe = False, True
        return None

    def succeeded(self, started: float | None = None) -> Change | None:
        """A send was accepted (or the relay answered); ``started``: when it was admitted.

        A send admitted before the current incident began says nothing about the relay now
        (it was past MAIL FROM when the refusals started): it neither ends the incident nor
        lets the waiting sends go.
        """
        self.active -= 1
        if (
            started is not None
            and self.incident_started is not None
            and started < self.incident_started
        ):
            return None
        self._probing = self._needs_probe = False
        self._transport_failures = 0
        if self.limit < self._s.max_concurrency:
            self._successes_at_limit += 1
            if self._successes_at_limit >= self.limit * 4:
                self.limit += 1
                self._successes_at_limit = 0
        if self.incident_started is None:
            return None
        self.incident_started = None
        self.pauses = self.throttles = 0
        self.cause, self.reason = None, ""
        return Change.RECOVERED

    def relay_down(
        self,
        now: float,
        error: str,
        *,
        cause: PauseCause = PauseCause.RELAY,
        reason: str = "",
    ) -> Change | None:
        """A relay-wide failure; returns PAUSED when it begins a new incident."""
        self.active -= 1
        self._probing = False
        if now < self.paused_until or (self._needs_probe and self.pauses):
            return None  # an in-flight send of the same incident
        self.pauses += 1
        self._needs_probe = True
        self.paused_until = now + backoff_delay(
            self.pauses, initial=self._s.pause_initial, maximum=self._s.pause_max, rand=self._rand
        )
        self.last_error, self.cause, self.reason = error, cause, reason
        new = self.incident_started is None
        if new:
            self.incident_started = now
        return Change.PAUSED if new else None

    def transport_failed(self, now: float, error: str) -> Change | None:
        """A lost connection or timeout mid-transaction (the destination is deferred too);
        enough of them in a row count as the relay being down."""
        self._transport_failures += 1
        if self._transport_failures >= self._s.transport_failures_limit:
            self._transport_failures = 0
            return self.relay_down(now, error)
        self.active -= 1
        if self._probing:  # a probe that fails this way leaves the incident open
            self._probing, self._needs_probe = False, True
        return None

    def throttled(self, now: float, error: str, *, reason: str = "") -> Change | None:
        """A throttling reply: halve the concurrency and pause a little; ``reason``: the
        evidence that made a destination's refusal ours, if any."""
        self.active -= 1
        self._probing = False
        if now < self.paused_until:
            return None
        self.throttles += 1
        self.limit = max(1, self.limit // 2)
        self._successes_at_limit = 0
        self.paused_until = now + backoff_delay(
            self.throttles,
            initial=self._s.throttle_initial,
            maximum=self._s.throttle_max,
            rand=self._rand,
        )
        self.last_error, self.reason = error, reason
        new = self.incident_started is None
        if new:
            self.incident_started = now
        return Change.THROTTLED if new else None
