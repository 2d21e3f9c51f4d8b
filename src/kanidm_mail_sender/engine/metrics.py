"""Prometheus metrics and the readiness state that ``/readyz`` reports."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from kanidm_mail_sender.engine.health import PauseCause

__all__ = ["KANIDM_CALLS", "PAUSE_CAUSES", "RELAY_FRESHNESS_SECONDS", "SKIP_REASONS", "Metrics"]

# Ready means: the last poll succeeded, and the relay worked (or was checked) this recently.
RELAY_FRESHNESS_SECONDS = 300.0

# Every label value is fixed here, and each series exists from the start: an alert on a
# series that appears only on the first failure cannot tell "fine" from "not scraped".
PAUSE_CAUSES = tuple(cause.value for cause in PauseCause)
KANIDM_CALLS = ("list", "mark")
SKIP_REASONS = ("unknown_kind", "malformed")


class Metrics:
    """Counters and gauges of one daemon, in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.delivered = Counter(
            "kanidm_mail_sender_delivered", "Mails accepted by the relay.", registry=r
        )
        self.transient_failures = Counter(
            "kanidm_mail_sender_transient_failures",
            "Deliveries deferred (4xx, timeouts, lost connections).",
            registry=r,
        )
        self.permanent_failures = Counter(
            "kanidm_mail_sender_permanent_failures",
            "Deliveries refused for good (5xx, invalid address, no destination).",
            registry=r,
        )
        self.expired = Counter(
            "kanidm_mail_sender_expired",
            "Credential resets not mailed because expired.",
            registry=r,
        )
        self.marked_sent = Counter(
            "kanidm_mail_sender_marked_sent", "Messages marked sent in Kanidm.", registry=r
        )
        self.queue_size = Gauge(
            "kanidm_mail_sender_queue_size", "Ready messages listed by the last poll.", registry=r
        )
        self.last_poll = Gauge(
            "kanidm_mail_sender_last_successful_poll_timestamp_seconds",
            "Unix time of the last successful poll.",
            registry=r,
        )
        self.oldest_age = Gauge(
            "kanidm_mail_sender_oldest_ready_message_age_seconds",
            "Age of the oldest ready message at the last poll.",
            registry=r,
        )
        self.rate_limited = Gauge(
            "kanidm_mail_sender_rate_limited_sends",
            "Sends waiting now because mail_rate_limit is reached.",
            registry=r,
        )
        self.rate_limit_wait = Counter(
            "kanidm_mail_sender_rate_limit_wait_seconds",
            "Seconds sends spent waiting for mail_rate_limit, summed over the workers.",
            registry=r,
        )
        self.relay_incidents = Counter(
            "kanidm_mail_sender_relay_pauses",
            "Relay-wide pauses begun, by cause: relay (down or closing), sender (our From "
            "or account refused), quota (sending quota reached), burst (the same refusal "
            "after DATA for several destinations in a row).",
            ["cause"],
            registry=r,
        )
        self.pause_cause = Gauge(
            "kanidm_mail_sender_relay_paused",
            "1 while all sending is paused after a relay-wide failure, on the pause's cause; "
            "it stays 1 until a probe send succeeds.",
            ["cause"],
            registry=r,
        )
        for cause in PAUSE_CAUSES:
            self.relay_incidents.labels(cause=cause)
            self.pause_cause.labels(cause=cause).set(0)
        self.relay_throttled = Gauge(
            "kanidm_mail_sender_relay_throttled",
            "1 while the relay throttles our rate (fewer sends at once, short pauses), until a "
            "send succeeds again.",
            registry=r,
        )
        self.relay_concurrency = Gauge(
            "kanidm_mail_sender_relay_concurrency",
            "Sends allowed at once now: lowered while the relay throttles.",
            registry=r,
        )
        self.kanidm_errors = Counter(
            "kanidm_mail_sender_kanidm_errors",
            "Failed calls to Kanidm's API, by call: list (a poll) or mark (a mark-sent "
            "attempt, retried).",
            ["call"],
            registry=r,
        )
        self.kanidm_failing = Gauge(
            "kanidm_mail_sender_kanidm_failing",
            "1 while calls of this kind to Kanidm fail: list, since the last poll failed; "
            "mark, while mark-sent calls are being retried.",
            ["call"],
            registry=r,
        )
        for call in KANIDM_CALLS:
            self.kanidm_errors.labels(call=call)
            self.kanidm_failing.labels(call=call).set(0)
        self.skipped = Gauge(
            "kanidm_mail_sender_skipped_messages",
            "Queue entries the last poll skipped, by reason: unknown_kind (a message kind or "
            "variant this sender cannot render: upgrade it) or malformed.",
            ["reason"],
            registry=r,
        )
        for reason in SKIP_REASONS:
            self.skipped.labels(reason=reason).set(0)
        self.put_back = Counter(
            "kanidm_mail_sender_put_back",
            "Destinations rejected in a burst, then deferred again when it was recognised.",
            registry=r,
        )
        self.standby_delay = Gauge(
            "kanidm_mail_sender_standby_delay_seconds",
            "standby_delay_seconds: 0 for an active sender; a standby sends only messages "
            "ready for at least this long.",
            registry=r,
        )
        self.held = Gauge(
            "kanidm_mail_sender_standby_held_messages",
            "Ready messages a standby left to the primary at the last poll (always 0 on an "
            "active sender).",
            registry=r,
        )
        self._relay_shown: tuple[str | None, bool, int] | None = None
        self.poll_ok = False
        self.relay_ok_at: float | None = None
        self.relay_paused = False
        self.journal_failing = False
        self.stopping = False  # stopping or fatal: both probes answer 503

    def relay_state(self, *, paused_on: str | None, throttled: bool, concurrency: int) -> None:
        """The relay's state after a send ended: the open pause's cause, if any. Called for
        every send; the gauges are written only when the state changed."""
        state = (paused_on, throttled, concurrency)
        if state == self._relay_shown:
            return
        self._relay_shown = state
        for cause in PAUSE_CAUSES:
            self.pause_cause.labels(cause=cause).set(1 if cause == paused_on else 0)
        self.relay_throttled.set(1 if throttled else 0)
        self.relay_concurrency.set(concurrency)

    def kanidm_call(self, call: str, *, failed: bool) -> None:
        """A call to Kanidm ended (``call``: one of KANIDM_CALLS)."""
        if failed:
            self.kanidm_errors.labels(call=call).inc()
        self.kanidm_failing.labels(call=call).set(1 if failed else 0)

    def relay_ok(self) -> None:
        """The relay accepted a mail or a check just now."""
        self.relay_ok_at = time.monotonic()
        self.relay_paused = False

    def ready(self) -> tuple[bool, str]:
        """Whether to report ready, and why not."""
        if self.stopping:
            return False, "the daemon is stopping"
        if self.journal_failing:
            return False, "the delivery journal cannot be written"
        if not self.poll_ok:
            return False, "the last poll of Kanidm failed or none has run yet"
        if self.relay_paused:
            return False, "sending is paused after a relay-wide failure"
        ok_at = self.relay_ok_at
        if ok_at is None or time.monotonic() - ok_at > RELAY_FRESHNESS_SECONDS:
            return False, "the relay has not been reached recently"
        return True, "ok"

    def exposition(self) -> bytes:
        """The Prometheus text format."""
        return generate_latest(self.registry)
