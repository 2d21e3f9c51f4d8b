"""The dispatching stage: one poll of Kanidm's ready list, each entry routed to its stage.

Entries due for sending go into the bounded send queue; accepted ones go straight to marking;
expired resets and entries without a destination are journalled. A flowing relay takes the
whole list through the queue in one poll. A stuck one (no room in the queue for a whole fire
interval) does not hold the poll: the rest of the list is gone through without queueing sends
(marks and expiries still go out), and the next poll comes at its time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol
from uuid import UUID

from kanidm_mail_sender.core.messages import (
    MalformedMessage,
    QueuedMessage,
    UnknownTemplate,
    parse_resource,
)
from kanidm_mail_sender.core.planning import NO_DESTINATION, Action, backoff_delay, plan_message
from kanidm_mail_sender.core.states import REJECTED, DestinationState
from kanidm_mail_sender.engine.expiry import record_expired
from kanidm_mail_sender.engine.incident import LOG_INTERVAL, Incident, ReportedOnce
from kanidm_mail_sender.engine.inflight import InFlight, Phase, StageContext
from kanidm_mail_sender.engine.marking import MarkStage
from kanidm_mail_sender.engine.metrics import SKIP_REASONS
from kanidm_mail_sender.engine.sending import Job
from kanidm_mail_sender.errors import KanidmAuthError, KanidmError, KanidmNotFound
from kanidm_mail_sender.logs import get_logger
from kanidm_mail_sender.state.journal import STATES_BATCH, Journal

__all__ = ["DispatchSettings", "Dispatcher", "ReadyList", "drain"]

log = get_logger(__name__)


class ReadyList(Protocol):
    """Kanidm's ready list, as this stage sees it: resources, or entries already found bad."""

    def ready(self) -> AsyncGenerator[Any, None]: ...


@dataclass(frozen=True, slots=True)
class DispatchSettings:
    """List retry pacing, and how many bad entries are remembered as already reported."""

    list_retry_initial: float = 5.0
    list_retry_max: float = 300.0
    log_interval: float = LOG_INTERVAL
    reported_capacity: int = 10_000
    skipped_lines_per_poll: int = 20
    standby_delay: float = 0.0  # > 0: a standby, leaving fresher messages to the primary


class Dispatcher:
    """Runs one poll at a time; ``poll(feed_seconds=...)`` is called by the daemon loop."""

    def __init__(
        self,
        *,
        context: StageContext,
        source: ReadyList,
        journal: Journal,
        queue: asyncio.Queue[Job],
        marks: MarkStage,
        settings: DispatchSettings,
    ) -> None:
        self._source = source
        self._journal = journal
        self._inflight = context.inflight
        self._queue = queue
        self._marks = marks
        self._metrics = context.metrics
        self._s = settings
        self._stopping = context.stopping
        self._on_fatal = context.on_fatal
        self._clock = context.clock
        self._retry_at = 0.0
        self._incident = Incident(settings.log_interval)
        self.reported = ReportedOnce(settings.reported_capacity)
        self.overflowed = 0  # entries due for sending that the last poll could not queue
        self._held = 0  # entries the current poll left to the primary
        self._metrics.standby_delay.set(settings.standby_delay)

    #: When the last poll ended (Unix time) and its error, None when it succeeded.
    last_poll: tuple[float, str | None] | None = None
    listed = 0  # ready messages the last successful poll listed
    held = 0  # of those, left to the primary (a standby's)

    async def poll(self, *, feed_seconds: float | None = None) -> None:
        """List ready messages and route each; returns when the list is consumed.

        ``feed_seconds``: how long one entry may wait for room in a full send queue (None:
        as long as it takes); the daemon passes the time to the next fire time. A queue that
        makes no room for that long means the senders are stuck, not slow: the rest of the
        list is then gone through for marks and expiries only.
        """
        now = self._clock()
        if self._stopping.is_set() or now < self._retry_at:
            return
        count = 0
        batch: list[QueuedMessage] = []  # routed together: one journal query for them all
        batch_started = 0.0
        self.overflowed = self._held = 0
        oldest: datetime | None = None
        skips = _Skips(self._s.skipped_lines_per_poll)
        try:
            async with aclosing(self._source.ready()) as items:
                async for item in items:
                    if self._stopping.is_set():
                        return
                    count += 1
                    message = self._parse(item)
                    if isinstance(message, MalformedMessage):
                        self._skip(message, skips)
                        continue
                    sent_after = message.send_after
                    if sent_after is not None and (oldest is None or sent_after < oldest):
                        oldest = sent_after
                    if not batch:
                        batch_started = time.monotonic()
                    batch.append(message)
                    # A slow list must not hold entries back: a batch waits 50 ms at most.
                    if len(batch) == STATES_BATCH or time.monotonic() - batch_started > 0.05:
                        await self._route_batch(batch, feed_seconds)
                        batch.clear()
                if batch:
                    await self._route_batch(batch, feed_seconds)
        except KanidmAuthError as exc:
            self._on_fatal(exc)
            return
        except KanidmNotFound as exc:
            self._on_fatal(
                KanidmNotFound(
                    f"{exc}; this server has no message queue (Kanidm too old?) "
                    "or uri points somewhere else"
                )
            )
            return
        except KanidmError as exc:
            # The entries read before the list broke off still go (as without batching).
            await self._route_batch(batch, feed_seconds)
            self._failed(exc)
            return
        self._succeeded(count, oldest, skips)

    def _failed(self, exc: KanidmError) -> None:
        self._metrics.poll_ok = False
        self._metrics.kanidm_call("list", failed=True)
        now = self._clock()
        self.last_poll = (now, str(exc))
        log_it = self._incident.failed(now)
        delay = backoff_delay(
            self._incident.failures,
            initial=self._s.list_retry_initial,
            maximum=self._s.list_retry_max,
        )
        self._retry_at = now + delay
        if log_it:
            log.error(
                "kanidm.list_failed",
                error=str(exc),
                failures=self._incident.failures,
                retry_in_seconds=round(delay, 1),
            )

    def _succeeded(self, count: int, oldest: datetime | None, skips: _Skips) -> None:
        failures = self._incident.ended()
        if failures:
            log.info("kanidm.list_recovered", failures=failures)
        for reason, number in skips.by_reason.items():
            self._metrics.skipped.labels(reason=reason).set(number)
        if skips.suppressed:
            log.warning(
                "message.skipped_more",
                count=skips.suppressed,
                note="more bad entries than are logged per poll",
            )
        now = self._clock()
        self.last_poll = (now, None)
        self._metrics.poll_ok = True
        self._metrics.kanidm_call("list", failed=False)
        self.listed, self.held = count, self._held
        self._metrics.queue_size.set(count)
        self._metrics.held.set(self._held)
        self._metrics.last_poll.set(now)
        self._metrics.oldest_age.set(max(0.0, now - oldest.timestamp()) if oldest else 0)
        log.debug(
            "kanidm.polled", ready=count, not_queued=self.overflowed, held_for_primary=self._held
        )

    @staticmethod
    def _parse(item: Any) -> QueuedMessage | MalformedMessage:
        if isinstance(item, MalformedMessage):
            return item
        try:
            return parse_resource(item)
        except MalformedMessage as exc:
            return exc

    def _skip(self, bad: MalformedMessage, skips: _Skips) -> None:
        skips.by_reason[_skip_reason(bad)] += 1
        if self._report(bad, skips.logged < skips.budget):
            skips.logged += 1
        elif bad.key not in self.reported:
            skips.suppressed += 1

    def _report(self, bad: MalformedMessage, may_log: bool) -> bool:
        """Log a bad entry the first time it is seen; True if this call logged it. Past the
        per-poll budget it is not remembered, so a later poll still logs it."""
        if not may_log or bad.key in self.reported:
            return False
        self.reported.first_time(bad.key)
        log.error(
            "message.skipped",
            message_id=bad.message_id,
            reason=bad.reason,
            note="this entry is skipped; the rest of the queue goes on",
        )
        return True

    async def _route_batch(self, batch: list[QueuedMessage], feed_seconds: float | None) -> None:
        inflight, marked = self._inflight, self._marks.recent
        # Marked a moment ago: the list was made before the mark landed.
        waiting = [m for m in batch if m.id not in inflight and m.id not in marked]
        if not waiting:
            return
        states = self._journal.states_of([message.id for message in waiting])
        for message in waiting:
            if self._stopping.is_set():
                return
            await self._route(message, states.get(message.id, {}), feed_seconds)

    async def _route(
        self,
        message: QueuedMessage,
        journal: dict[str, DestinationState],
        feed_seconds: float | None,
    ) -> None:
        if message.id in self._inflight:  # listed twice, or taken meanwhile
            return
        now = self._clock()
        plan = plan_message(message, journal, now, standby_delay=self._s.standby_delay)
        if plan.action is Action.HOLD:
            self._held += 1
        elif plan.action is Action.SEND:
            await self._enqueue(Job(message, plan), feed_seconds)
        elif plan.action is Action.MARK:
            self._marks.submit(message.id)
        elif plan.action is Action.EXPIRE:
            left = [d for d in message.destinations if d not in plan.accepted]
            await record_expired(self._journal, self._metrics, message.id, left, now)
        elif plan.action is Action.NO_DESTINATION:
            log.error(
                "message.no_destination",
                message_id=str(message.id),
                note="it has no mail_destination; left in Kanidm's queue",
            )
            self._metrics.permanent_failures.inc()
            await self._journal.record(
                message.id, NO_DESTINATION, REJECTED, now=now, reply="no destination"
            )

    async def _enqueue(self, job: Job, feed_seconds: float | None) -> None:
        message_id: UUID = job.message.id
        if self.overflowed:
            self.overflowed += 1  # past the feed deadline: left for the next poll
            return
        self._inflight.hold(message_id, Phase.QUEUED)
        try:
            self._queue.put_nowait(job)
            return
        except asyncio.QueueFull:
            pass
        try:
            # No room for a whole interval: the senders are stuck, not slow.
            async with asyncio.timeout(feed_seconds):
                await self._queue.put(job)
        except TimeoutError:
            self._inflight.release(message_id)
            self.overflowed = 1
        except BaseException:
            self._inflight.release(message_id)
            raise


def drain(queue: asyncio.Queue[Job], inflight: InFlight) -> list[UUID]:
    """Empty the send queue, releasing each job; returns their ids."""
    dropped = []
    while not queue.empty():
        job = queue.get_nowait()
        inflight.release(job.message.id)
        dropped.append(job.message.id)
    return dropped


@dataclass
class _Skips:
    """The entries one poll skipped: how many it logged (up to ``budget``), left unlogged,
    and why, for the ``skipped_messages`` gauge."""

    budget: int
    logged: int = 0
    suppressed: int = 0
    by_reason: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SKIP_REASONS, 0))


def _skip_reason(bad: MalformedMessage) -> str:
    """The ``skipped_messages`` label: a kind this version cannot render is an upgrade to
    make, not bad data."""
    return "unknown_kind" if isinstance(bad, UnknownTemplate) else "malformed"
