"""One attempt at one destination, and what a failed one leaves behind: the journal's row,
what the relay's health and the evidence across destinations learn from it, the log line,
and a burst's rejections put back."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from kanidm_mail_sender.core.messages import QueuedMessage
from kanidm_mail_sender.core.planning import backoff_delay
from kanidm_mail_sender.core.replies import Verdict, redact_reply
from kanidm_mail_sender.core.states import DEFERRED, EXPIRED, REJECTED
from kanidm_mail_sender.engine.admission import Admission
from kanidm_mail_sender.engine.evidence import Evidence, Judgement
from kanidm_mail_sender.engine.expiry import record_expired
from kanidm_mail_sender.engine.health import PauseCause
from kanidm_mail_sender.engine.metrics import Metrics
from kanidm_mail_sender.engine.outcomes import (
    HealthEvent,
    Next,
    Outcome,
    counted_after_all,
    escalated,
    outcome,
    spent_after_all,
)
from kanidm_mail_sender.errors import RelayError, RenderError
from kanidm_mail_sender.logs import get_logger
from kanidm_mail_sender.state.journal import Journal

__all__ = ["Attempt", "Failures"]

log = get_logger(__name__)

# The refusals whose words name a party: they pause with that party as the cause.
_NAMED_CAUSES = frozenset({PauseCause.SENDER.value, PauseCause.QUOTA.value})


@dataclass(slots=True)
class Attempt:
    """One destination of one message, over the tries a worker makes of it in one job."""

    message: QueuedMessage
    destination: str
    number: int  # the attempt number the journal records for it
    secrets: tuple[str, ...]  # the reset link's secret: never kept from a relay reply
    accepted_before: int  # the stage's acceptances when this destination began
    free: int = 0  # relay-wide verdicts drawn in a row, which spent no attempt
    started: float = 0.0  # monotonic time the current try began

    @property
    def ids(self) -> dict[str, str]:
        """The attempt's keys in a log line."""
        return {"message_id": str(self.message.id), "destination": self.destination}

    def redact(self, text: str) -> str:
        """``text`` without this message's link secrets."""
        return redact_reply(text, self.secrets, base64_runs=False) if self.secrets else text


class Failures:
    """Applies failed attempts; owns nothing but its collaborators."""

    def __init__(
        self,
        *,
        journal: Journal,
        metrics: Metrics,
        admission: Admission,
        evidence: Evidence,
        retry_initial: float,
        retry_max: float,
        clock: Callable[[], float],
    ) -> None:
        self._journal = journal
        self._metrics = metrics
        self._admission = admission
        self._health = admission.health
        self._evidence = evidence
        self._retry = (retry_initial, retry_max)
        self._clock = clock

    async def apply(self, exc: BaseException, attempt: Attempt, meanwhile: int) -> Next:
        """Journal and report one failed attempt; returns what the worker does next.
        ``meanwhile``: mails the stage had accepted since this destination began."""
        message_id, destination, ids = attempt.message.id, attempt.destination, attempt.ids
        result = outcome(exc)
        if result is None:
            self._admission.report(
                self._health.cancelled(), counted=True
            )  # cut off: it may have gone
            raise exc
        ours = isinstance(exc, RelayError | RenderError)
        # A reset link the relay quotes (a content filter naming the URL it refused) is
        # never journalled, logged, published or shown: the mail was refused, so the link
        # is still valid.
        # (The relay's own words were cleared of AUTH echoes where the reply was read.)
        error = attempt.redact(str(exc) if ours else f"invalid address: {exc}")
        refusal = exc.refusal if isinstance(exc, RelayError) else None
        if refusal is not None and attempt.secrets:
            refusal = dataclasses.replace(refusal, text=attempt.redact(refusal.text))
        cause = PauseCause.RELAY
        if refusal is not None and refusal.cause.value in _NAMED_CAUSES:
            cause = PauseCause(refusal.cause.value)
        judgement = None
        if refusal is not None and result.state is not None and result.state != EXPIRED:
            judgement = self._evidence.refused(
                time.monotonic(), message_id, destination, refusal, attempt.number - 1
            )
            if judgement.escalated:
                result = escalated(judgement.verdict is Verdict.RELAY_DOWN)
                if judgement.verdict is Verdict.RELAY_DOWN:  # else a throttle: no pause
                    cause = PauseCause.BURST
        if result.then is Next.RETRY and spent_after_all(attempt.free + 1, meanwhile):
            result = counted_after_all(result)
            error = f"{error} (relay-wide refusals for this destination while other mail went out)"
        self._tell_health(result, error, attempt.started, cause, judgement)
        if result.state == EXPIRED:
            await self.expire(attempt)
        elif result.state == REJECTED:
            log.error(
                result.event,
                **ids,
                error=error,
                note="permanent failure: not retried; the message stays in Kanidm's queue",
            )
            self._metrics.permanent_failures.inc()
            await self._journal.record(
                message_id,
                destination,
                REJECTED,
                now=self._clock(),
                attempts=attempt.number,
                reply=error[:500],
            )
        elif result.state == DEFERRED:
            delay = await self._defer(attempt, error)
            log.log(
                logging.ERROR if result.event == "message.render_failed" else logging.WARNING,
                result.event,
                **ids,
                error=error,
                attempts=attempt.number,
                retry_in_seconds=round(delay, 1),
            )
        if judgement is not None and judgement.burst:
            await self._put_back(judgement, error)
        return result.then

    def _tell_health(
        self,
        result: Outcome,
        error: str,
        started: float,
        cause: PauseCause,
        judgement: Judgement | None,
    ) -> None:
        health, now = self._health, time.monotonic()
        event = result.health
        reason = judgement.reason if judgement is not None else ""
        if event is HealthEvent.THROTTLED:
            change = health.throttled(now, error, reason=reason)
        elif event is HealthEvent.RELAY_DOWN:
            change = health.relay_down(now, error, cause=cause, reason=reason)
        elif event is HealthEvent.TRANSPORT_FAILED:
            change = health.transport_failed(now, error)
        elif event is HealthEvent.SUCCEEDED:
            change = health.succeeded(started)
        else:
            change = health.cancelled()
        self._admission.report(change, error, counted=result.counted)

    async def _put_back(self, judgement: Judgement, error: str) -> None:
        """The destinations a burst rejected before it was seen for what it is: deferred
        again, their attempts as before, due when the pause ends."""
        now = self._clock()
        due = now + max(0.0, self._health.paused_until - time.monotonic())
        for seen in judgement.burst:
            await self._journal.record(
                seen.message_id,
                seen.destination,
                DEFERRED,
                now=now,
                attempts=seen.attempts_before,
                next_attempt=due,
                reply=f"put back after a relay-wide refusal: {error}"[:500],
            )
        self._metrics.put_back.inc(len(judgement.burst))
        log.warning(
            "relay.burst_put_back",
            destinations=len(judgement.burst),
            message_ids=sorted({str(seen.message_id) for seen in judgement.burst}),
            note="rejected in the burst before it was recognised; deferred again, no attempt spent",
        )

    async def _defer(self, attempt: Attempt, error: str) -> float:
        self._metrics.transient_failures.inc()
        initial, maximum = self._retry
        delay = backoff_delay(attempt.number, initial=initial, maximum=maximum)
        now = self._clock()
        await self._journal.record(
            attempt.message.id,
            attempt.destination,
            DEFERRED,
            now=now,
            attempts=attempt.number,
            next_attempt=now + delay,
            reply=error[:500],
        )
        return delay

    async def expire(self, attempt: Attempt) -> None:
        """Journal the destination as expired: its link is dead, it is never mailed."""
        await record_expired(
            self._journal, self._metrics, attempt.message.id, [attempt.destination], self._clock()
        )
