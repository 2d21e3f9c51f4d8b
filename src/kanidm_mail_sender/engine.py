"""The delivery engine: polls Kanidm, sends what is due, records it, marks it sent.

One poll streams the ready list; each message is checked against the journal and handed to
``mail_max_connections`` send workers through a bounded queue. A message is marked sent only
when every destination was accepted and that acceptance is on disk; marks run in their own
workers, so they are never stuck behind sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol
from uuid import UUID

import structlog

from kanidm_mail_sender.addresses import check_address
from kanidm_mail_sender.delivery import NO_DESTINATION, Action, Plan, backoff_delay, plan_message
from kanidm_mail_sender.errors import (
    DeliveryDeferred,
    DeliveryRejected,
    KanidmAuthError,
    KanidmError,
    KanidmNotFound,
    MailSenderError,
    RelayMisconfigured,
    StateError,
    TemplateError,
)
from kanidm_mail_sender.journal import ACCEPTED, DEFERRED, EXPIRED, REJECTED, Journal
from kanidm_mail_sender.mail import Envelope, MailIdentity, build_message
from kanidm_mail_sender.messages import MalformedMessage, QueuedMessage, parse_resource
from kanidm_mail_sender.metrics import Metrics
from kanidm_mail_sender.render import Renderer

__all__ = ["Engine", "EngineSettings", "MailTransport", "MessageSource"]

log = structlog.get_logger("kanidm_mail_sender.engine")


class MessageSource(Protocol):
    """Kanidm, as the engine sees it."""

    def ready(self) -> AsyncIterator[Any]: ...

    async def mark_sent(self, message_id: UUID) -> None: ...


class MailTransport(Protocol):
    """The relay, as the engine sees it."""

    async def send(self, envelope: Envelope) -> str: ...

    async def check(self) -> None: ...


@dataclass(frozen=True)
class EngineSettings:
    """Tuning of the engine; defaults match the config file's."""

    send_workers: int = 4
    mark_workers: int = 64  # marks are pipelined: a waiting mark costs a few hundred bytes
    queue_size: int = 256
    retry_initial: float = 30.0
    retry_max: float = 3600.0
    mark_retry_initial: float = 1.0
    mark_retry_max: float = 60.0
    list_retry_initial: float = 5.0
    list_retry_max: float = 300.0
    log_interval: float = 300.0  # repeated identical failures are logged at most this often
    relay_probe_interval: float | None = None  # probe an idle relay for /readyz


@dataclass(slots=True)
class _Incident:
    """A run of failures of one kind: counted, logged on the first and then at most once per
    ``interval`` seconds, so an outage cannot flood the log."""

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


@dataclass(slots=True)
class _Job:
    message: QueuedMessage
    plan: Plan


class Engine:
    """Owns the workers; ``poll()`` once per fire time, ``shutdown()`` at the end."""

    def __init__(
        self,
        *,
        source: MessageSource,
        transport: MailTransport,
        journal: Journal,
        renderer: Renderer,
        identity: MailIdentity,
        settings: EngineSettings,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._source = source
        self._transport = transport
        self._journal = journal
        self._renderer = renderer
        self._identity = identity
        self._settings = settings
        self.metrics = metrics or Metrics()
        self._clock = clock
        self._in_flight: set[UUID] = set()
        self._drained = asyncio.Event()
        self._drained.set()
        self._reported: set[str] = set()
        self._send_queue: asyncio.Queue[_Job] = asyncio.Queue(settings.queue_size)
        self._mark_queue: asyncio.Queue[UUID] = asyncio.Queue()
        self._workers: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self.fatal: MailSenderError | None = None
        self.fatal_event = asyncio.Event()
        self._relay_failures = 0
        self._relay_paused_until = 0.0
        self._list_retry_at = 0.0
        self._list_incident = _Incident(settings.log_interval)
        self._mark_incident = _Incident(settings.log_interval)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the send and mark workers."""
        s = self._settings
        self._workers = [asyncio.create_task(self._send_worker()) for _ in range(s.send_workers)]
        self._workers += [asyncio.create_task(self._mark_worker()) for _ in range(s.mark_workers)]

    @property
    def busy(self) -> bool:
        """Whether any message is queued, being sent or waiting for its mark."""
        return bool(self._in_flight)

    async def idle(self) -> None:
        """Wait until nothing is in flight, or a fatal error (tests and the benchmark)."""
        drained = asyncio.ensure_future(self._drained.wait())
        fatal = asyncio.ensure_future(self.fatal_event.wait())
        await asyncio.wait([drained, fatal], return_when=asyncio.FIRST_COMPLETED)
        drained.cancel()
        fatal.cancel()

    def _claim(self, message_id: UUID) -> None:
        self._in_flight.add(message_id)
        self._drained.clear()

    def _release(self, message_id: UUID) -> None:
        self._in_flight.discard(message_id)
        if not self._in_flight:
            self._drained.set()

    async def shutdown(self, grace: float) -> list[UUID]:
        """Stop taking work, let sends and marks in flight finish within ``grace`` seconds,
        then cancel the rest; returns the message ids that were cut off."""
        self._stopping.set()
        while not self._send_queue.empty():
            job = self._send_queue.get_nowait()
            self._release(job.message.id)
            self._send_queue.task_done()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                await self.idle()
        cut_off = sorted(self._in_flight)
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        await self._journal.drain()
        if cut_off:
            log.warning("shutdown.cut_off", count=len(cut_off),
                        note="accepted mails are in the journal and will be marked at next start")
        return cut_off

    def _fail(self, error: MailSenderError) -> None:
        if self.fatal is None:
            self.fatal = error
            log.error("daemon.fatal", error=str(error))
        self._stopping.set()
        self.fatal_event.set()

    # -- polling ---------------------------------------------------------------------------

    async def poll(self) -> None:
        """List ready messages and hand out what is due; returns when the list is consumed."""
        now = self._clock()
        if self._stopping.is_set() or now < self._list_retry_at:
            return
        await self._maybe_probe_relay()
        count = 0
        oldest: datetime | None = None
        try:
            async for resource in self._source.ready():
                if self._stopping.is_set():
                    return
                count += 1
                message = self._parse(resource)
                if message is None:
                    continue
                sent_after = message.send_after
                if sent_after is not None and (oldest is None or sent_after < oldest):
                    oldest = sent_after
                await self._dispatch(message)
        except KanidmAuthError as exc:
            self._fail(exc)
            return
        except KanidmNotFound as exc:
            self._fail(KanidmNotFound(
                f"{exc}; this server has no message queue (Kanidm too old?) "
                "or uri points somewhere else"))
            return
        except KanidmError as exc:
            self._list_failed(exc)
            return
        self._list_succeeded(count, oldest)

    def _list_failed(self, exc: KanidmError) -> None:
        self.metrics.poll_ok = False
        now = self._clock()
        incident = self._list_incident
        log_it = incident.failed(now)
        delay = backoff_delay(incident.failures, initial=self._settings.list_retry_initial,
                              maximum=self._settings.list_retry_max)
        self._list_retry_at = now + delay
        if log_it:
            log.error("kanidm.list_failed", error=str(exc), failures=incident.failures,
                      retry_in_seconds=round(delay, 1))

    def _list_succeeded(self, count: int, oldest: datetime | None) -> None:
        failures = self._list_incident.ended()
        if failures:
            log.info("kanidm.list_recovered", failures=failures)
        now = self._clock()
        self.metrics.poll_ok = True
        self.metrics.queue_size.set(count)
        self.metrics.last_poll.set(now)
        self.metrics.oldest_age.set(max(0.0, now - oldest.timestamp()) if oldest else 0)
        log.debug("kanidm.polled", ready=count)

    def _parse(self, resource: Any) -> QueuedMessage | None:
        try:
            return parse_resource(resource)
        except MalformedMessage as exc:
            key = f"{exc.message_id}:{exc.reason}"
            if key not in self._reported:
                self._reported.add(key)
                log.error("message.skipped", message_id=exc.message_id, reason=exc.reason,
                          note="this entry is skipped; the rest of the queue goes on")
            return None

    async def _dispatch(self, message: QueuedMessage) -> None:
        if message.id in self._in_flight:
            return
        now = self._clock()
        plan = plan_message(message, self._journal.states(message.id), now)
        if plan.action is Action.SEND:
            if now < self._relay_paused_until:
                return  # leave it for a poll after the pause; no attempt is spent
            self._claim(message.id)
            await self._send_queue.put(_Job(message, plan))
        elif plan.action is Action.MARK:
            self._claim(message.id)
            self._mark_queue.put_nowait(message.id)
        elif plan.action is Action.EXPIRE:
            await self._expire(message, plan, now)
        elif plan.action is Action.NO_DESTINATION:
            log.error("message.no_destination", message_id=str(message.id),
                      note="it has no mail_destination; left in Kanidm's queue")
            self.metrics.permanent_failures.inc()
            await self._journal.record(message.id, NO_DESTINATION, REJECTED, now=now,
                                       reply="no destination")

    async def _expire(self, message: QueuedMessage, plan: Plan, now: float) -> None:
        expiry = getattr(message.template, "expiry_time", None)
        log.error("message.expired", message_id=str(message.id),
                  destinations=list(message.destinations),
                  expired_at=expiry.isoformat() if expiry else None,
                  note="the reset link has expired, so it is not mailed; left in Kanidm's queue")
        self.metrics.expired.inc()
        for destination in message.destinations:
            if destination not in plan.accepted:
                await self._journal.record(message.id, destination, EXPIRED, now=now)

    async def _maybe_probe_relay(self) -> None:
        interval = self._settings.relay_probe_interval
        ok_at = self.metrics.relay_ok_at
        if interval is None or self._in_flight:
            return
        if ok_at is not None and time.monotonic() - ok_at < interval:
            return
        if self._clock() < self._relay_paused_until:
            return
        try:
            await self._transport.check()
        except RelayMisconfigured as exc:
            self._pause_relay(exc)
        except MailSenderError as exc:
            self.metrics.relay_ok_at = None
            log.warning("relay.probe_failed", error=str(exc))
        else:
            self.metrics.relay_ok()

    # -- sending ---------------------------------------------------------------------------

    async def _send_worker(self) -> None:
        while True:
            job = await self._send_queue.get()
            try:
                marked = await self._send_job(job)
            except StateError as exc:
                self._fail(exc)  # without a journal we cannot promise "never twice"
                marked = False
            except Exception as exc:  # a bug must not silently kill a worker
                log.exception("engine.worker_error", message_id=str(job.message.id),
                              error=repr(exc))
                marked = False
            finally:
                self._send_queue.task_done()
            if not marked:
                self._release(job.message.id)

    async def _send_job(self, job: _Job) -> bool:
        """Send every due destination; returns True when the message went to marking."""
        message, accepted = job.message, set(job.plan.accepted)
        for destination in job.plan.due:
            if self._stopping.is_set() or self._clock() < self._relay_paused_until:
                return False
            attempts = job.plan.attempts.get(destination, 0) + 1
            outcome = await self._send_one(message, destination, attempts)
            if outcome is None:
                return False  # relay-wide problem: the pause is set, nothing was spent
            if outcome:
                accepted.add(destination)
        if len(accepted) == len(message.destinations):
            self._mark_queue.put_nowait(message.id)
            return True
        return False

    async def _send_one(self, message: QueuedMessage, destination: str,
                        attempts: int) -> bool | None:
        """True if accepted, False if failed for this destination, None if the relay is down;
        ``attempts`` counts this one."""
        ids = {"message_id": str(message.id), "destination": destination}
        try:
            check_address(destination)
            rendered = self._renderer.render(message.template, message_id=message.id,
                                             destination=destination)
            envelope = build_message(rendered, identity=self._identity, destination=destination,
                                     message_id=message.id, date=datetime.now(UTC))
        except TemplateError as exc:
            log.error("message.render_failed", **ids, error=str(exc))
            await self._defer(message.id, destination, attempts, str(exc))
            return False
        except ValueError as exc:
            return await self._reject(message.id, destination, attempts,
                                      f"invalid address: {exc}", ids)
        started = time.monotonic()
        try:
            reply = await self._transport.send(envelope)
        except DeliveryRejected as exc:
            return await self._reject(message.id, destination, attempts, str(exc), ids)
        except DeliveryDeferred as exc:
            delay = await self._defer(message.id, destination, attempts, str(exc))
            log.warning("mail.deferred", **ids, error=str(exc), attempts=attempts,
                        retry_in_seconds=round(delay, 1))
            return False
        except RelayMisconfigured as exc:
            self._pause_relay(exc)
            return None
        await self._journal.record(message.id, destination, ACCEPTED, now=self._clock(),
                                   attempts=attempts, reply=reply[:500])
        self.metrics.delivered.inc()
        self.metrics.relay_ok()
        if self._relay_failures:
            log.info("relay.recovered", failures=self._relay_failures)
            self._relay_failures = 0
        log.info("mail.accepted", **ids, template=message.template.kind,
                 smtp_message_id=envelope.message_id,
                 duration_ms=round((time.monotonic() - started) * 1000, 1))
        return True

    async def _reject(self, message_id: UUID, destination: str, attempts: int, error: str,
                      ids: dict[str, str]) -> bool:
        log.error("mail.rejected", **ids, error=error,
                  note="permanent failure: not retried; the message stays in Kanidm's queue")
        self.metrics.permanent_failures.inc()
        await self._journal.record(message_id, destination, REJECTED, now=self._clock(),
                                   attempts=attempts, reply=error[:500])
        return False

    async def _defer(self, message_id: UUID, destination: str, attempts: int, error: str) -> float:
        self.metrics.transient_failures.inc()
        delay = backoff_delay(attempts, initial=self._settings.retry_initial,
                              maximum=self._settings.retry_max)
        now = self._clock()
        await self._journal.record(message_id, destination, DEFERRED, now=now, attempts=attempts,
                                   next_attempt=now + delay, reply=error[:500])
        return delay

    def _pause_relay(self, exc: RelayMisconfigured) -> None:
        now = self._clock()
        if now < self._relay_paused_until:
            return  # another worker already paused for the same incident
        self._relay_failures += 1
        delay = backoff_delay(self._relay_failures, initial=self._settings.retry_initial,
                              maximum=self._settings.retry_max)
        self._relay_paused_until = now + delay
        self.metrics.relay_paused = True
        log.error("relay.paused", error=str(exc), pause_seconds=round(delay, 1),
                  failures=self._relay_failures,
                  note="all sending is paused; no message attempts are spent")

    # -- marking ---------------------------------------------------------------------------

    async def _mark_worker(self) -> None:
        while True:
            message_id = await self._mark_queue.get()
            try:
                await self._mark(message_id)
            except Exception as exc:  # a bug must not silently kill a worker
                log.exception("engine.worker_error", message_id=str(message_id), error=repr(exc))
            finally:
                self._release(message_id)

    async def _mark(self, message_id: UUID) -> None:
        attempt = 0
        while True:
            try:
                await self._source.mark_sent(message_id)
            except KanidmNotFound:
                log.warning("message.gone", message_id=str(message_id),
                            note="Kanidm no longer has it (purged or deleted); nothing to mark")
                return
            except KanidmAuthError as exc:
                self._fail(exc)
                return
            except KanidmError as exc:
                attempt += 1
                # One line per incident, not per message: an outage with thousands of
                # accepted mails waiting must not flood the log.
                if self._mark_incident.failed(self._clock()):
                    log.warning("kanidm.mark_failed", message_id=str(message_id),
                                error=str(exc), attempts=attempt,
                                note="the mail is not sent again; only the mark is retried; "
                                "more failures are logged at most every "
                                f"{self._settings.log_interval:g} s")
                if self._stopping.is_set():
                    return
                delay = backoff_delay(attempt, initial=self._settings.mark_retry_initial,
                                      maximum=self._settings.mark_retry_max)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._stopping.wait()
                continue
            self.metrics.marked_sent.inc()
            log.info("message.marked_sent", message_id=str(message_id))
            failures = self._mark_incident.ended()
            if failures:
                log.info("kanidm.mark_recovered", failures=failures)
            return
