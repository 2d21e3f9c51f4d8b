"""The engine: owns the stages (dispatch, send, mark) and their queues, and stops them.

Each stage has its own bound: the send queue holds ``queue_size`` jobs, the marking stage at
most ``mark_capacity`` outstanding marks, the relay's health at most ``send_workers``
concurrent sends. A stalled relay never delays marks of accepted mail or the next poll; a
stalled Kanidm never delays sending what is already queued. ``shutdown()`` never waits on a
task without a deadline, whatever a library does with cancellation.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol
from uuid import UUID

from kanidm_mail_sender.core.mail import MailIdentity
from kanidm_mail_sender.core.ratelimit import Rate, SendLimiter
from kanidm_mail_sender.core.render import Renderer
from kanidm_mail_sender.engine.admission import Admission
from kanidm_mail_sender.engine.dispatch import Dispatcher, DispatchSettings, drain
from kanidm_mail_sender.engine.health import HealthSettings, RelayHealth
from kanidm_mail_sender.engine.inflight import InFlight, Phase, StageContext
from kanidm_mail_sender.engine.marking import MarkSettings, MarkStage
from kanidm_mail_sender.engine.metrics import Metrics
from kanidm_mail_sender.engine.sending import Job, MailTransport, SendSettings, SendStage
from kanidm_mail_sender.errors import MailSenderError, StateError
from kanidm_mail_sender.logs import get_logger
from kanidm_mail_sender.state.journal import Journal

__all__ = [
    "CANCEL_DEADLINE",
    "CutOff",
    "Engine",
    "EngineSettings",
    "HealthView",
    "MessageQueue",
    "Tick",
]

log = get_logger(__name__)

# After the grace period, cancelled tasks get this long to finish before they are abandoned.
CANCEL_DEADLINE = 1.0
_LISTED_IDS = 1000  # at most this many ids per list in the cut-off log line


class MessageQueue(Protocol):
    """Kanidm, as the engine sees it."""

    def ready(self) -> AsyncGenerator[Any, None]: ...

    async def mark_sent(self, message_id: UUID) -> None: ...


@dataclass(frozen=True, slots=True)
class Tick:
    """What a poll tells the daemon's loop (uvicorn's ``on_tick``: the loop asks, the tick
    answers): ``owed``, the send queue stayed full until the next fire time, so that fire
    time is owed a poll at once."""

    owed: bool


@dataclass(frozen=True)
class EngineSettings:
    """The engine's tuning: each stage's own settings, passed to it whole, and what the engine
    itself decides. Every default lives in the stage's settings class (httpx writes
    ``DEFAULT_TIMEOUT_CONFIG`` once in the same way)."""

    health: HealthSettings = field(default_factory=HealthSettings)
    send: SendSettings = field(default_factory=SendSettings)
    marks: MarkSettings = field(default_factory=MarkSettings)
    dispatch: DispatchSettings = field(default_factory=DispatchSettings)
    queue_size: int = 256
    rate_limits: tuple[Rate, ...] = ()
    relay_probe_interval: float | None = None  # probe an idle relay for /readyz

    @property
    def send_workers(self) -> int:
        """One worker per relay connection the health may allow at once."""
        return self.health.max_concurrency


@dataclass(frozen=True)
class CutOff:
    """What a stop left unfinished."""

    awaiting_mark: list[UUID] = field(default_factory=list)  # accepted, journalled, unmarked
    interrupted: list[UUID] = field(default_factory=list)  # a send was under way
    not_sent: list[UUID] = field(default_factory=list)  # still queued: never sent
    stuck_tasks: int = 0  # tasks that ignored cancellation and were abandoned

    def __bool__(self) -> bool:
        return bool(self.awaiting_mark or self.interrupted or self.not_sent)


@dataclass(frozen=True, slots=True)
class HealthView:
    """One look at the daemon's health (relay times in seconds from now)."""

    ready: bool
    why: str
    last_poll: tuple[float, str | None] | None  # Unix time, and the error if it failed
    listed: int  # ready messages the last successful poll listed
    paused: bool
    paused_for: float
    concurrency: int
    last_error: str | None
    cause: str | None
    evidence: str | None
    standby_delay: float = 0.0  # 0: active; else a standby with this delay
    held: int = 0  # ready messages a standby left to the primary at the last poll


class Engine:
    """``start()``, then ``poll()`` once per fire time, ``shutdown()`` at the end."""

    def __init__(
        self,
        *,
        source: MessageQueue,
        transport: MailTransport,
        journal: Journal,
        renderer: Renderer,
        identity: MailIdentity,
        settings: EngineSettings,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        s = settings
        self._settings = s
        self._transport = transport
        self._journal = journal
        self.metrics = metrics or Metrics()
        self._clock = clock
        self.fatal: MailSenderError | None = None
        self.fatal_event = asyncio.Event()
        self.stopping = asyncio.Event()
        self.inflight = InFlight()
        self._queue: asyncio.Queue[Job] = asyncio.Queue(s.queue_size)
        self.health = RelayHealth(s.health)
        context = StageContext(self.inflight, self.metrics, self.stopping, self._fail, clock)
        self.admission = Admission(
            health=self.health,
            metrics=self.metrics,
            stopping=self.stopping,
            clock=clock,
            limiter=_limiter(s.rate_limits, journal, clock()),
            log_interval=s.send.log_interval,
        )
        self.marks = MarkStage(context=context, marker=source, settings=s.marks)
        self.sending = SendStage(
            context=context,
            transport=transport,
            journal=journal,
            renderer=renderer,
            identity=identity,
            queue=self._queue,
            marks=self.marks,
            admission=self.admission,
            settings=s.send,
        )
        self.dispatcher = Dispatcher(
            context=context,
            source=source,
            journal=journal,
            queue=self._queue,
            marks=self.marks,
            settings=s.dispatch,
        )
        self._workers: list[asyncio.Task[None]] = []
        self._last_probe = -1e18

    def start(self) -> None:
        """Start the send workers."""
        self._workers = [
            asyncio.create_task(self.sending.worker(), name=f"send-{i}")
            for i in range(self._settings.send_workers)
        ]

    @property
    def busy(self) -> bool:
        """Whether any message is queued, being sent or waiting for its mark."""
        return bool(self.inflight)

    async def idle(self) -> None:
        """Wait until nothing is in flight, or a fatal error (tests and the benchmark)."""
        drained = asyncio.ensure_future(self.inflight.wait_empty())
        fatal = asyncio.ensure_future(self.fatal_event.wait())
        await asyncio.wait([drained, fatal], return_when=asyncio.FIRST_COMPLETED)
        drained.cancel()
        fatal.cancel()

    def _fail(self, error: MailSenderError) -> None:
        if self.fatal is None:
            self.fatal = error
            log.error("daemon.fatal", error=str(error))
        if isinstance(error, StateError):
            self.metrics.journal_failing = True
        self.fatal_event.set()
        self._begin_stop()

    def _begin_stop(self) -> None:
        self.stopping.set()
        self.metrics.stopping = True
        self.admission.wake()

    async def poll(self, *, feed_seconds: float | None = None) -> Tick:
        """One poll of the ready list (see :class:`Dispatcher`); says what the loop owes."""
        await self._maybe_probe_relay()
        await self.dispatcher.poll(feed_seconds=feed_seconds)
        return Tick(owed=self.dispatcher.overflowed > 0)

    async def _maybe_probe_relay(self) -> None:
        interval = self._settings.relay_probe_interval
        if interval is None or self.inflight or self.health.paused:
            return
        now = time.monotonic()
        ok_at = self.metrics.relay_ok_at
        if (ok_at is not None and now - ok_at < interval) or now - self._last_probe < interval:
            return
        self._last_probe = now
        try:
            await self._transport.check()
        except MailSenderError as exc:
            self.metrics.relay_ok_at = None
            log.warning("relay.probe_failed", error=str(exc))
        else:
            self.metrics.relay_ok()

    def view(self) -> HealthView:
        """The daemon's health now, as one value: read by ``/readyz``, ``status.json`` and,
        through that file, the probe."""
        health = self.health
        ready, why = self.metrics.ready()
        return HealthView(
            ready=ready,
            why=why,
            last_poll=self.dispatcher.last_poll,
            listed=self.dispatcher.listed,
            standby_delay=self._settings.dispatch.standby_delay,
            held=self.dispatcher.held,
            paused=health.paused,
            paused_for=max(0.0, health.paused_until - time.monotonic()),
            concurrency=health.limit,
            last_error=health.last_error or None,
            cause=health.cause.value if health.paused and health.cause else None,
            evidence=(health.reason or None) if health.paused else None,
        )

    async def shutdown(self, grace: float) -> CutOff:
        """Stop taking work; let sends and marks in flight finish within ``grace`` seconds
        (at once if there are none), cancel the rest, and report what was cut off."""
        self._begin_stop()
        not_sent = drain(self._queue, self.inflight)
        if self.inflight:
            waiter = asyncio.ensure_future(self.inflight.wait_empty())
            await asyncio.wait([waiter], timeout=grace)
            waiter.cancel()
        interrupted = self.inflight.in_phase(Phase.SENDING)
        awaiting = sorted({*self.inflight.in_phase(Phase.MARKING), *self.marks.given_up})
        tasks = [*self._workers, *self.marks.tasks]
        for task in tasks:
            task.cancel()
        stuck = 0
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=CANCEL_DEADLINE)
            stuck = len(pending)
        await self._journal.drain(within=CANCEL_DEADLINE)
        not_sent += [m for m in self.sending.abandoned if m not in awaiting]
        cut = CutOff(awaiting, interrupted, sorted(set(not_sent)), stuck)
        if cut or stuck:
            log.warning(
                "shutdown.cut_off",
                awaiting_mark=len(cut.awaiting_mark),
                interrupted=len(cut.interrupted),
                not_sent=len(cut.not_sent),
                stuck_tasks=stuck,
                awaiting_mark_ids=[str(m) for m in cut.awaiting_mark[:_LISTED_IDS]],
                interrupted_ids=[str(m) for m in cut.interrupted[:_LISTED_IDS]],
                not_sent_ids=[str(m) for m in cut.not_sent[:_LISTED_IDS]],
                note="awaiting_mark: accepted by the relay and journalled, marked at next "
                "start without mailing again; interrupted: a send was under way, retried at "
                "next start (a duplicate is possible if the relay had accepted it); not_sent: "
                "never sent, still in Kanidm's queue",
            )
        return cut


def _limiter(rates: tuple[Rate, ...], journal: Journal, now: float) -> SendLimiter | None:
    """The sending limits, with the sends the journal holds within the longest window: a
    restart (or a crash loop) starts from the day's count, not from zero."""
    if not rates:
        return None
    longest = max(rate.window for rate in rates)
    return SendLimiter(rates, journal.recent_sends(now - longest))
