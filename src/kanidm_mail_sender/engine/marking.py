"""The marking stage: tells Kanidm that a message whose every destination was accepted (and
journalled) is sent.

Each mark is one task awaiting the Kanidm client, whose pipeline batches them; there is no
queue of our own in between. The number of marks outstanding is capped: past the cap, the
message is released and the next poll finds it accepted in the journal and marks it then.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol
from uuid import UUID

from kanidm_mail_sender.core.planning import backoff_delay
from kanidm_mail_sender.engine.incident import LOG_INTERVAL, Incident
from kanidm_mail_sender.engine.inflight import Phase, StageContext
from kanidm_mail_sender.errors import KanidmAuthError, KanidmError, KanidmNotFound
from kanidm_mail_sender.logs import get_logger

__all__ = ["MarkSettings", "MarkStage", "Marker", "RecentMarks"]

log = get_logger(__name__)


class Marker(Protocol):
    """Kanidm's mark-sent call, as this stage sees it."""

    async def mark_sent(self, message_id: UUID) -> None: ...


class RecentMarks:
    """The ids marked sent in the last ``ttl`` seconds, at most ``capacity`` of them.

    A ready list that Kanidm made before a mark landed still lists that message; the poll
    reading it must not mark it again (harmless, but a request per message of a backlog).
    Past ``ttl`` an id counts as unmarked again, so a mark Kanidm lost is made once more.
    """

    def __init__(
        self, capacity: int, ttl: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._capacity = capacity
        self._ttl = ttl
        self._clock = clock
        self._marked: OrderedDict[UUID, float] = OrderedDict()

    def add(self, message_id: UUID) -> None:
        """Remember that ``message_id`` was just marked."""
        self._marked[message_id] = self._clock()
        self._marked.move_to_end(message_id)
        while len(self._marked) > self._capacity:
            self._marked.popitem(last=False)

    def __contains__(self, message_id: object) -> bool:
        if not isinstance(message_id, UUID):
            return False
        marked_at = self._marked.get(message_id)
        if marked_at is None:
            return False
        if self._clock() - marked_at > self._ttl:
            del self._marked[message_id]
            return False
        return True

    def __len__(self) -> int:
        return len(self._marked)


@dataclass(frozen=True, slots=True)
class MarkSettings:
    """Retry pacing and the cap on outstanding marks."""

    capacity: int = 20_000
    # A stale list holds what was in flight when Kanidm made it: the send queue, the sends
    # and the marks under way, a few hundred messages; their marks are remembered a while.
    recent_capacity: int = 4096
    recent_ttl: float = 300.0
    retry_initial: float = 1.0
    retry_max: float = 60.0
    log_interval: float = LOG_INTERVAL


class MarkStage:
    """Submits marks without blocking the caller; retries transient failures with backoff."""

    def __init__(
        self,
        *,
        context: StageContext,
        marker: Marker,
        settings: MarkSettings,
    ) -> None:
        self._marker = marker
        self._inflight = context.inflight
        self._metrics = context.metrics
        self._s = settings
        self._stopping = context.stopping
        self._on_fatal = context.on_fatal
        self._clock = context.clock
        self._tasks: set[asyncio.Task[None]] = set()
        self._incident = Incident(settings.log_interval)
        self._overflow = Incident(settings.log_interval)
        self.given_up: list[UUID] = []  # accepted, not marked because we stopped
        self.recent = RecentMarks(settings.recent_capacity, settings.recent_ttl)

    @property
    def tasks(self) -> set[asyncio.Task[None]]:
        """The marks outstanding."""
        return self._tasks

    def submit(self, message_id: UUID) -> None:
        """Start marking ``message_id``; never waits."""
        if len(self._tasks) >= self._s.capacity:
            self._inflight.release(message_id)
            if self._overflow.failed(self._clock()):
                log.warning(
                    "kanidm.mark_backlog",
                    outstanding=len(self._tasks),
                    note="more accepted mails wait for their mark than the cap; they "
                    "are journalled and the next polls mark them",
                )
            return
        self._inflight.hold(message_id, Phase.MARKING)
        task = asyncio.create_task(self._mark(message_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _mark(self, message_id: UUID) -> None:
        try:
            await self._mark_until_done(message_id)
        finally:
            self._inflight.release(message_id)

    async def _mark_until_done(self, message_id: UUID) -> None:
        attempt = 0
        while True:
            try:
                await self._marker.mark_sent(message_id)
            except KanidmNotFound:
                log.warning(
                    "message.gone",
                    message_id=str(message_id),
                    note="Kanidm no longer has it (purged or deleted); nothing to mark",
                )
                return
            except KanidmAuthError as exc:
                self.given_up.append(message_id)
                self._on_fatal(exc)
                return
            except KanidmError as exc:
                attempt += 1
                self._metrics.kanidm_call("mark", failed=True)
                if self._incident.failed(self._clock()):
                    log.warning(
                        "kanidm.mark_failed",
                        message_id=str(message_id),
                        error=str(exc),
                        attempts=attempt,
                        note="the mail is not sent again; only the mark is retried; "
                        "more failures are logged at most every "
                        f"{self._s.log_interval:g} s",
                    )
                if self._stopping.is_set():
                    self.given_up.append(message_id)
                    return
                delay = backoff_delay(
                    attempt, initial=self._s.retry_initial, maximum=self._s.retry_max
                )
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._stopping.wait()
                if self._stopping.is_set():
                    self.given_up.append(message_id)
                    return
                continue
            self._metrics.marked_sent.inc()
            self._metrics.kanidm_call("mark", failed=False)
            self.recent.add(message_id)
            log.debug("message.marked_sent", message_id=str(message_id))
            failures = self._incident.ended()
            if failures:
                log.info("kanidm.mark_recovered", failures=failures)
            if self._overflow.ended():
                log.info("kanidm.mark_backlog_cleared")
            return
