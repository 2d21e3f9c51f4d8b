"""The sending stage: workers take messages off the send queue and relay each due destination.

Before every attempt a worker asks the relay's health for a slot (so a relay that is down or
throttling us costs no attempts and a bounded number of connections), checks the reset link's
expiry (again right before DATA, inside the relay), and journals the outcome. A message whose
every destination is accepted goes to the marking stage.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol
from uuid import UUID

from kanidm_mail_sender.core.addresses import check_address
from kanidm_mail_sender.core.links import link_secrets
from kanidm_mail_sender.core.mail import Envelope, MailIdentity, build_message
from kanidm_mail_sender.core.messages import CredentialResetV1, QueuedMessage
from kanidm_mail_sender.core.planning import Plan, backoff_delay, expires_at, is_expired
from kanidm_mail_sender.core.ratelimit import Rate, SendLimiter
from kanidm_mail_sender.core.render import Renderer
from kanidm_mail_sender.core.replies import Receipt, Verdict, redact_reply
from kanidm_mail_sender.core.states import ACCEPTED, DEFERRED, EXPIRED, REJECTED
from kanidm_mail_sender.engine.evidence import Evidence, EvidenceRules, Judgement
from kanidm_mail_sender.engine.expiry import record_expired
from kanidm_mail_sender.engine.health import Change, PauseCause, RelayHealth
from kanidm_mail_sender.engine.incident import Incident
from kanidm_mail_sender.engine.inflight import Phase, StageContext
from kanidm_mail_sender.engine.marking import MarkStage
from kanidm_mail_sender.engine.outcomes import (
    HealthEvent,
    Next,
    Outcome,
    counted_after_all,
    escalated,
    outcome,
    spent_after_all,
)
from kanidm_mail_sender.errors import RelayError, RenderError, StateError
from kanidm_mail_sender.logs import get_logger
from kanidm_mail_sender.state.journal import Journal

__all__ = ["Job", "MailTransport", "SendSettings", "SendStage"]

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

# The refusals whose words name a party: they pause with that party as the cause.
_NAMED_CAUSES = frozenset({PauseCause.SENDER.value, PauseCause.QUOTA.value})

_RATE_QUIET = 60.0  # seconds without a wait for the limits that end a rate-limit incident


class MailTransport(Protocol):
    """The relay, as this stage sees it."""

    async def send(
        self,
        envelope: Envelope,
        *,
        not_after: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> Receipt: ...

    async def check(self) -> None: ...


@dataclass(slots=True)
class Job:
    """One message handed to the send queue, with the plan made for it."""

    message: QueuedMessage
    plan: Plan


@dataclass(frozen=True, slots=True)
class SendSettings:
    """Per-destination retry pacing."""

    retry_initial: float = 30.0
    retry_max: float = 3600.0
    log_interval: float = 300.0


class SendStage:
    """Runs the send workers' loop; owns nothing but its collaborators."""

    def __init__(
        self,
        *,
        context: StageContext,
        transport: MailTransport,
        journal: Journal,
        renderer: Renderer,
        identity: MailIdentity,
        queue: asyncio.Queue[Job],
        marks: MarkStage,
        health: RelayHealth,
        settings: SendSettings,
        limiter: SendLimiter | None = None,
        evidence: EvidenceRules | None = None,
    ) -> None:
        self._transport = transport
        self._journal = journal
        self._renderer = renderer
        self._identity = identity
        self._inflight = context.inflight
        self._queue = queue
        self._marks = marks
        self._health = health
        self._limiter = limiter
        self._limited_since: float | None = None  # a rate-limit incident is open
        self._rate_log = Incident(settings.log_interval)
        self._last_rate_wait = 0.0
        self._metrics = context.metrics
        self._metrics.relay_concurrency.set(health.limit)
        self._s = settings
        self._stopping = context.stopping
        self._on_fatal = context.on_fatal
        self._clock = context.clock
        self._changed = asyncio.Event()
        self._relay_log = Incident(settings.log_interval)
        self._evidence = Evidence(evidence)
        self._accepted = 0  # mails accepted since start: other mail went out meanwhile
        self.abandoned: list[UUID] = []  # taken off the queue, then not sent: we stopped

    def wake(self) -> None:
        """Wake every worker waiting for a slot (a health change, or the stop)."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def worker(self) -> None:
        """Take jobs until stopped."""
        while not self._stopping.is_set():
            job = await self._queue.get()
            message_id = job.message.id
            if self._stopping.is_set():
                self._inflight.release(message_id)
                self.abandoned.append(message_id)
                return
            self._inflight.hold(message_id, Phase.SENDING)
            marking = False
            try:
                marking = await self._send_job(job)
            except StateError as exc:
                self._on_fatal(exc)  # without a journal we cannot promise "never twice"
            except Exception as exc:  # a bug must not silently kill a worker
                log.exception("engine.worker_error", message_id=str(message_id), error=repr(exc))
            finally:
                if not marking:
                    self._inflight.release(message_id)

    async def _send_job(self, job: Job) -> bool:
        """Every due destination; True when the message went on (to its commit, then marking).

        The worker does not wait for the journal to commit an acceptance: the mark follows
        the commit (a callback), and the worker takes its next job at once, so one commit
        carries the acceptances of several connections. Until then the message stays in
        flight, so no poll can plan it again from a journal that lacks the row.
        """
        message, accepted = job.message, set(job.plan.accepted)
        commits: list[asyncio.Future[None]] = []
        for destination in job.plan.due:
            attempts = job.plan.attempts.get(destination, 0) + 1
            try:
                outcome = await self._deliver(message, destination, attempts, commits)
            except Exception:
                await _committed(commits)  # the worker lets the message go after this
                raise
            if outcome is None:  # stopping, or the link expired
                if self._stopping.is_set():
                    self.abandoned.append(message.id)
                await _committed(commits)
                return False
            if outcome:
                accepted.add(destination)
        if len(accepted) < len(message.destinations):
            await _committed(commits)
            return False
        if not commits:
            self._marks.submit(message.id)
        else:
            done = commits[0] if len(commits) == 1 else asyncio.gather(*commits)
            done.add_done_callback(functools.partial(self._commit_ended, message.id))
        return True

    def _commit_ended(self, message_id: UUID, commit: asyncio.Future[Any]) -> None:
        failure = commit.exception()
        if failure is None:
            self._marks.submit(message_id)
            return
        self._inflight.release(message_id)
        if isinstance(failure, StateError):
            self._on_fatal(failure)  # without a journal we cannot promise "never twice"
        else:  # pragma: no cover - the journal only fails with StateError
            log.error("engine.worker_error", message_id=str(message_id), error=repr(failure))

    async def _deliver(
        self,
        message: QueuedMessage,
        destination: str,
        attempts: int,
        commits: list[asyncio.Future[None]],
    ) -> bool | None:
        """True: accepted (its journal commit appended to ``commits``); False: failed for
        this destination; None: stop here."""
        ids = {"message_id": str(message.id), "destination": destination}
        secrets = _secrets_of(message)
        not_after = expires_at(message)
        free, accepted_before = 0, self._accepted
        while True:
            if self._stopping.is_set():
                return None
            if is_expired(message, self._clock()):
                await self._expire(message.id, ids)
                return None
            if not await self._admit():
                return None
            started = time.monotonic()
            try:
                envelope = self._envelope(message, destination)
                receipt = await self._transport.send(
                    envelope, not_after=not_after, clock=self._clock
                )
            except BaseException as exc:
                then = await self._failed(
                    exc,
                    (message.id, destination, attempts),
                    ids,
                    started,
                    (free, self._accepted - accepted_before),
                    secrets,
                )
                if then is Next.RETRY:
                    free += 1
                    continue
                return None if then is Next.STOP else False
            self._accepted += 1
            incident = self._health.incident_started
            if incident is None or started >= incident:  # it says something of the relay now
                self._evidence.accepted()
            self._report(self._health.succeeded(started), counted=True)
            commits.append(
                self._journal.submit(
                    message.id,
                    destination,
                    ACCEPTED,
                    now=self._clock(),
                    attempts=attempts,
                    reply=_without(receipt.reply, secrets)[:500],
                )
            )
            self._metrics.delivered.inc()
            self._metrics.relay_ok()
            log.info(
                "mail.accepted",
                **ids,
                template=message.template.kind,
                smtp_message_id=envelope.message_id,
                relay_queue_id=receipt.queue_id,
                duration_ms=round((time.monotonic() - started) * 1000, 1),
            )
            return True

    def _envelope(self, message: QueuedMessage, destination: str) -> Envelope:
        check_address(destination)
        rendered = self._renderer.render(
            message.template, message_id=message.id, destination=destination
        )
        return build_message(
            rendered,
            identity=self._identity,
            destination=destination,
            message_id=message.id,
            date=datetime.now(UTC),
        )

    async def _failed(
        self,
        exc: BaseException,
        job: tuple[UUID, str, int],
        ids: dict[str, str],
        started: float,
        free: tuple[int, int],
        secrets: tuple[str, ...] = (),
    ) -> Next:
        """Journal and report one failed attempt; returns what the worker does next.

        ``job``: message id, destination and this attempt's number; ``free``: the relay-wide
        verdicts this destination drew in a row, and the mails accepted meanwhile.
        """
        message_id, destination, attempts = job
        result = outcome(exc)
        if result is None:
            self._report(self._health.cancelled(), counted=True)  # cut off: it may have gone
            raise exc
        ours = isinstance(exc, RelayError | RenderError)
        # A reset link the relay quotes (a content filter naming the URL it refused) is
        # never journalled, logged, published or shown: the mail was refused, so the link
        # is still valid.
        # (The relay's own words were cleared of AUTH echoes where the reply was read.)
        error = _without(str(exc) if ours else f"invalid address: {exc}", secrets)
        refusal = exc.refusal if isinstance(exc, RelayError) else None
        if refusal is not None and secrets:
            refusal = dataclasses.replace(refusal, text=_without(refusal.text, secrets))
        cause = PauseCause.RELAY
        if refusal is not None and refusal.cause.value in _NAMED_CAUSES:
            cause = PauseCause(refusal.cause.value)
        judgement = None
        if refusal is not None and result.state is not None and result.state != EXPIRED:
            judgement = self._evidence.refused(
                time.monotonic(), message_id, destination, refusal, attempts - 1
            )
            if judgement.escalated:
                result = escalated(judgement.verdict is Verdict.RELAY_DOWN)
                if judgement.verdict is Verdict.RELAY_DOWN:  # else a throttle: no pause
                    cause = PauseCause.BURST
        if result.then is Next.RETRY and spent_after_all(free[0] + 1, free[1]):
            result = counted_after_all(result)
            error = f"{error} (relay-wide refusals for this destination while other mail went out)"
        self._tell_health(result, error, started, cause, judgement)
        if result.state == EXPIRED:
            await self._expire(message_id, ids)
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
                attempts=attempts,
                reply=error[:500],
            )
        elif result.state == DEFERRED:
            delay = await self._defer(message_id, destination, attempts, error)
            log.log(
                logging.ERROR if result.event == "message.render_failed" else logging.WARNING,
                result.event,
                **ids,
                error=error,
                attempts=attempts,
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
        self._report(change, error, counted=result.counted)

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

    async def _defer(self, message_id: UUID, destination: str, attempts: int, error: str) -> float:
        self._metrics.transient_failures.inc()
        delay = backoff_delay(attempts, initial=self._s.retry_initial, maximum=self._s.retry_max)
        now = self._clock()
        await self._journal.record(
            message_id,
            destination,
            DEFERRED,
            now=now,
            attempts=attempts,
            next_attempt=now + delay,
            reply=error[:500],
        )
        return delay

    async def _expire(self, message_id: UUID, ids: dict[str, str]) -> None:
        await record_expired(
            self._journal, self._metrics, message_id, [ids["destination"]], self._clock()
        )

    async def _admit(self) -> bool:
        """Wait for a send slot within the relay's health and the sending limits; False when
        stopping."""
        limiter = self._limiter
        while not self._stopping.is_set():
            now = time.monotonic()
            rate_wait, rate = limiter.wait_time(self._clock()) if limiter else (0.0, None)
            if rate_wait == 0.0 and self._health.start(now):
                if limiter is not None:
                    limiter.begin()
                    self._rate_ok(now)
                return True
            wait = max(rate_wait, self._health.wait_time(now))
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

    def _report(self, change: Change | None, error: str = "", *, counted: bool) -> None:
        """Every end of a send comes here: a freed slot must wake the waiting workers.

        ``counted``: a mail may have gone out, so the send counts against the limits.
        """
        if self._limiter is not None:
            self._limiter.end(self._clock(), counted=counted)
        self.wake()
        health = self._health
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


async def _committed(commits: list[asyncio.Future[None]]) -> None:
    """Wait for every commit in ``commits``, even if cancelled meanwhile: a message is only
    let go once the journal holds what was accepted of it."""
    if commits:
        await asyncio.shield(asyncio.gather(*commits))


def _secrets_of(message: QueuedMessage) -> tuple[str, ...]:
    """What must not be kept of this message's relay replies: its reset link's secret."""
    template = message.template
    return link_secrets(template.intent_id) if isinstance(template, CredentialResetV1) else ()


def _without(text: str, secrets: tuple[str, ...]) -> str:
    return redact_reply(text, secrets, base64_runs=False) if secrets else text
