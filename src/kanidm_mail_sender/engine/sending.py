"""The sending stage: workers take messages off the send queue and relay each due destination.

Before every attempt a worker asks the relay's health for a slot (so a relay that is down or
throttling us costs no attempts and a bounded number of connections), checks the reset link's
expiry (again right before DATA, inside the relay), and journals an acceptance; a failed
attempt goes to ``engine.attempts``. A message whose every destination is accepted goes to the
marking stage.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol
from uuid import UUID

from kanidm_mail_sender.core.addresses import check_address
from kanidm_mail_sender.core.defaults import RETRY_INITIAL_SECONDS, RETRY_MAX_SECONDS
from kanidm_mail_sender.core.links import link_secrets
from kanidm_mail_sender.core.mail import Envelope, MailIdentity, build_message
from kanidm_mail_sender.core.messages import CredentialResetV1, QueuedMessage
from kanidm_mail_sender.core.planning import Plan, expires_at, is_expired
from kanidm_mail_sender.core.render import Renderer
from kanidm_mail_sender.core.replies import Receipt
from kanidm_mail_sender.core.states import ACCEPTED
from kanidm_mail_sender.engine.admission import Admission
from kanidm_mail_sender.engine.attempts import Attempt, Failures
from kanidm_mail_sender.engine.evidence import Evidence, EvidenceRules
from kanidm_mail_sender.engine.incident import LOG_INTERVAL, ReportedOnce
from kanidm_mail_sender.engine.inflight import Phase, StageContext
from kanidm_mail_sender.engine.marking import MarkStage
from kanidm_mail_sender.engine.outcomes import (
    Next,
)
from kanidm_mail_sender.errors import StateError
from kanidm_mail_sender.logs import get_logger, printable
from kanidm_mail_sender.state.journal import Journal

__all__ = ["Job", "MailTransport", "SendSettings", "SendStage"]

log = get_logger(__name__)


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

    retry_initial: float = RETRY_INITIAL_SECONDS
    retry_max: float = RETRY_MAX_SECONDS
    log_interval: float = LOG_INTERVAL


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
        admission: Admission,
        settings: SendSettings,
        evidence: EvidenceRules | None = None,
    ) -> None:
        self._transport = transport
        self._journal = journal
        self._renderer = renderer
        self._identity = identity
        self._queue = queue
        self._marks = marks
        self._admission = admission
        self._health = admission.health
        self._inflight = context.inflight
        self._metrics = context.metrics
        self._stopping = context.stopping
        self._on_fatal = context.on_fatal
        self._clock = context.clock
        self._s = settings
        self._evidence = Evidence(evidence)
        self._failures = Failures(
            journal=journal,
            metrics=context.metrics,
            admission=admission,
            evidence=self._evidence,
            retry_initial=settings.retry_initial,
            retry_max=settings.retry_max,
            clock=context.clock,
        )
        self._accepted = 0  # mails accepted since start: other mail went out meanwhile
        self._unserved = ReportedOnce(256)  # languages asked for that no catalog serves
        self.abandoned: list[UUID] = []  # taken off the queue, then not sent: we stopped

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
        secrets = _secrets_of(message)
        for destination in job.plan.due:
            attempt = Attempt(
                message=message,
                destination=destination,
                number=job.plan.attempts.get(destination, 0) + 1,
                secrets=secrets,
                accepted_before=self._accepted,
            )
            try:
                outcome = await self._deliver(attempt, commits)
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

    async def _deliver(self, attempt: Attempt, commits: list[asyncio.Future[None]]) -> bool | None:
        """True: accepted (its journal commit appended to ``commits``); False: failed for
        this destination; None: stop here."""
        message, destination = attempt.message, attempt.destination
        not_after = expires_at(message)
        while True:
            if self._stopping.is_set():
                return None
            if is_expired(message, self._clock()):
                await self._failures.expire(attempt)
                return None
            if not await self._admission.admit():
                return None
            attempt.started = time.monotonic()
            try:
                envelope = self._envelope(message, destination)
                receipt = await self._transport.send(
                    envelope, not_after=not_after, clock=self._clock
                )
            except BaseException as exc:
                then = await self._failures.apply(
                    exc, attempt, self._accepted - attempt.accepted_before
                )
                if then is Next.RETRY:
                    attempt.free += 1
                    continue
                return None if then is Next.STOP else False
            self._accepted += 1
            incident = self._health.incident_started
            if (
                incident is None or attempt.started >= incident
            ):  # it says something of the relay now
                self._evidence.accepted()
            self._admission.report(self._health.succeeded(attempt.started), counted=True)
            commits.append(
                self._journal.submit(
                    message.id,
                    destination,
                    ACCEPTED,
                    now=self._clock(),
                    attempts=attempt.number,
                    reply=attempt.redact(receipt.reply)[:500],
                )
            )
            self._metrics.delivered.inc()
            self._metrics.relay_ok()
            log.info(
                "mail.accepted",
                **attempt.ids,
                template=message.template.kind,
                smtp_message_id=envelope.message_id,
                relay_queue_id=receipt.queue_id,
                duration_ms=round((time.monotonic() - attempt.started) * 1000, 1),
            )
            return True

    def _envelope(self, message: QueuedMessage, destination: str) -> Envelope:
        check_address(destination)
        rendered = self._renderer.render(
            message.template,
            message_id=message.id,
            destination=destination,
            language=message.language,
        )
        if rendered.unserved is not None and self._unserved.first_time(rendered.unserved):
            log.warning(
                "message.language_unserved",
                message_id=str(message.id),
                language=printable(rendered.unserved),
                sent_in=rendered.language,
                note="no catalog serves this language; its mails go in mail_language (add a "
                "catalog in mail_catalog_dir); logged once per language",
            )
        return build_message(
            rendered,
            identity=self._identity,
            destination=destination,
            message_id=message.id,
            date=datetime.now(UTC),
        )


async def _committed(commits: list[asyncio.Future[None]]) -> None:
    """Wait for every commit in ``commits``, even if cancelled meanwhile: a message is only
    let go once the journal holds what was accepted of it."""
    if commits:
        await asyncio.shield(asyncio.gather(*commits))


def _secrets_of(message: QueuedMessage) -> tuple[str, ...]:
    """What must not be kept of this message's relay replies: its reset link's secret."""
    template = message.template
    return link_secrets(template.intent_id) if isinstance(template, CredentialResetV1) else ()
