"""The main loop: sleep until the next fire time or a stop, poll, repeat; then shut down."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import structlog

from kanidm_mail_sender.engine import Engine
from kanidm_mail_sender.errors import ScheduleError
from kanidm_mail_sender.journal import Journal
from kanidm_mail_sender.schedule import Schedule
from kanidm_mail_sender.sdnotify import Notifier

__all__ = ["run_daemon"]

log = structlog.get_logger("kanidm_mail_sender.daemon")

PRUNE_INTERVAL = 3600.0


async def _wait(stop: asyncio.Event, fatal: asyncio.Event, seconds: float) -> None:
    waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(fatal.wait())]
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


async def _watchdog(notifier: Notifier, interval: float) -> None:
    while True:
        notifier.watchdog()
        await asyncio.sleep(interval)


async def run_daemon(
    engine: Engine,
    schedule: Schedule,
    stop: asyncio.Event,
    *,
    journal: Journal,
    grace: float,
    notifier: Notifier | None = None,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> None:
    """Poll at every fire time until ``stop`` is set or the engine hits a fatal error."""
    notifier = notifier or Notifier({})
    engine.start()
    watchdog = (
        asyncio.create_task(_watchdog(notifier, notifier.watchdog_interval))
        if notifier.watchdog_interval
        else None
    )
    notifier.ready(f"polling on schedule {schedule.expression!r}")
    last_prune = -PRUNE_INTERVAL
    last_fire: datetime | None = None
    try:
        while not stop.is_set() and not engine.fatal_event.is_set():
            current = now()
            # Never fire twice for one instant, even if a poll ends within the same second.
            after = max(current, last_fire) if last_fire else current
            fire_at = schedule.next_after(after)
            if fire_at is None:
                raise ScheduleError(
                    f"schedule {schedule.expression!r} has no fire time after "
                    f"{after.isoformat()}; nothing would ever be sent, so the daemon stops"
                )
            await _wait(stop, engine.fatal_event, (fire_at - now()) / timedelta(seconds=1))
            if stop.is_set() or engine.fatal_event.is_set():
                break
            last_fire = fire_at
            if time.monotonic() - last_prune >= PRUNE_INTERVAL:
                last_prune = time.monotonic()
                pruned = journal.prune(time.time())
                if pruned:
                    log.info("journal.pruned", rows=pruned)
            poll = asyncio.create_task(engine.poll())
            stopped = asyncio.ensure_future(stop.wait())
            await asyncio.wait([poll, stopped], return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            if poll.done():
                poll.result()  # a bug in a poll should surface, not vanish
            else:
                poll.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await poll
    finally:
        notifier.stopping()
        log.info("daemon.stopping", grace_seconds=grace)
        await engine.shutdown(grace)
        if watchdog is not None:
            watchdog.cancel()
