"""Admission: when a send may start, within the relay's health and the sending limits, and
what the end of each send tells them, logged once per incident.

The send workers ask ``admit()`` before every attempt and ``report()`` after it; a freed
slot or a health change wakes the workers that wait (httpcore keeps its pool's admission
apart from the protocol in the same way).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable

from kanidm_mail_sender.core.ratelimit import Rate, SendLimiter
from kanidm_mail_sender.engine.health import Change, PauseCause, RelayHealth
from kanidm_mail_sender.engine.incident import LOG_INTERVAL, Incident
from kanidm_mail_sender.engine.metrics import Metrics
from kanidm_mail_sender.logs import get_logger

__all__ = ["LIKELY_CAUSES", "Admission"]

log = get_logger(__name__)

# What an operator should look at first, by the cause of a relay-wide pause.
LIKELY_CAUSES = {
    PauseCause.RELAY: "the relay is unreachable, refuses connections or closes them; check it and "
    "the network",
    PauseCause.SENDER: "sender not allowed: the relay does not let this account send as "
    "mail_from_address; check the account's send-as rights and the From address",
    PauseCause.QUOTA: "quota reached: the account's sending quota is used up; sending resumes when "
    "the provider's window resets, or raise the quota",
    PauseCause.BURST: "the relay refuses every mail with the same reply after DATA: most "
    "likely our sender is not allowed or a sending quota is reached; read the reply",
}

_RATE_QUIET = 60.0  # seconds without a wait for the limits that end a rate-limit incident


class Admission:
    """Send slots: the relay's health and the sending limits, and their incidents' log."""

    def __init__(
        self,
        *,
        health: RelayHealth,
        metrics: Metrics,
        stopping: asyncio.Event,
        clock: Callable[[], float],
        limiter: SendLimiter | None = None,
        log_interval: float = LOG_INTERVAL,
    ) -> None:
        self.health = health
        self._metrics = metrics
        self._stopping = stopping
        self._clock = clock
        self._limiter = limiter
        self._changed = asyncio.Event()
        self._relay_log = Incident(log_interval)
        self._rate_log = Incident(log_interval)
        self._limited_since: float | None = None  # a rate-limit incident is open
        self._last_rate_wait = 0.0
        metrics.relay_concurrency.set(health.limit)

    def wake(self) -> None:
        """Wake every worker waiting for a slot (a health change, or the stop)."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def admit(self) -> bool:
        """Wait for a send slot within the relay's health and the sending limits; False when
        stopping."""
        limiter = self._limiter
        while not self._stopping.is_set():
            now = time.monotonic()
            rate_wait, rate = limiter.wait_time(self._clock()) if limiter else (0.0, None)
            if rate_wait == 0.0 and self.health.start(now):
                if limiter is not None:
                    limiter.begin()
                    self._rate_ok(now)
                return True
            wait = max(rate_wait, self.health.wait_time(now))
            if rate is None:
                await self._wait_for_change(wait)
                continue
            self._rate_limited(now, rate, rate_wait)
            self._metrics.rate_limited.inc()
            try:
                await self._wait_for_change(wait)
            finally:
                self._metrics.rate_limited.dec()
                self._metrics.rate_limit_wait.inc(time.monotonic() - now)
        return False

    def report(self, change: Change | None, error: str = "", *, counted: bool) -> None:
        """Every end of a send comes here: a freed slot must wake the waiting workers.

        ``counted``: a mail may have gone out, so the send counts against the limits.
        """
        if self._limiter is not None:
            self._limiter.end(self._clock(), counted=counted)
        self.wake()
        health = self.health
        self._metrics.relay_paused = health.paused
        self._metrics.relay_state(
            paused_on=(health.cause or PauseCause.RELAY).value if health.paused else None,
            throttled=health.throttles > 0 and not health.paused,
            concurrency=health.limit,
        )
        if change is Change.PAUSED:
            self._metrics.relay_incidents.labels(cause=health.cause or PauseCause.RELAY).inc()
        if change is Change.PAUSED and self._relay_log.failed(time.monotonic()):
            log.error(
                "relay.paused",
                error=error,
                cause=health.cause,
                likely_cause=LIKELY_CAUSES[health.cause or PauseCause.RELAY],
                evidence=health.reason or None,
                pause_seconds=round(health.paused_until - time.monotonic(), 1),
                note="all sending is paused; one probe per pause, no attempts spent; "
                "logged once per incident",
            )
        elif change is Change.THROTTLED and self._relay_log.failed(time.monotonic()):
            log.warning(
                "relay.throttled",
                error=error,
                concurrency=health.limit,
                evidence=health.reason or None,
                pause_seconds=round(health.paused_until - time.monotonic(), 1),
                note="the relay limits our rate; sending slows down, no attempts spent",
            )
        elif change is Change.RECOVERED:
            failures = self._relay_log.ended()
            log.info("relay.recovered", incidents=failures, concurrency=health.limit)

    async def _wait_for_change(self, wait: float) -> None:
        """Up to ``wait`` seconds (``math.inf``: no bound), or until ``wake()``."""
        changed = self._changed
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(None if math.isinf(wait) else wait):
                await changed.wait()

    def _rate_limited(self, now: float, rate: Rate, wait: float) -> None:
        """A send waits for the sending limits: logged once per incident."""
        if self._limited_since is None:
            self._limited_since = now
        if self._rate_log.failed(now):
            log.warning(
                "relay.rate_limited",
                limit=str(rate),
                wait_seconds=None if math.isinf(wait) else round(wait, 1),
                note="mail over mail_rate_limit waits; no attempt is spent; logged once per "
                "incident",
            )
        self._last_rate_wait = now

    def _rate_ok(self, now: float) -> None:
        """Admitted without waiting: a minute of that closes the incident."""
        since = self._limited_since
        if since is not None and now - self._last_rate_wait > _RATE_QUIET:
            self._limited_since = None
            log.info(
                "relay.rate_limit_over",
                waits=self._rate_log.ended(),
                lasted_seconds=round(self._last_rate_wait - since, 1),
            )
