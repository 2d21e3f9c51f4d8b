"""The main loop: sleep until the next fire time or a stop, poll, repeat; then shut down."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from kanidm_mail_sender import __version__
from kanidm_mail_sender.core.schedule import Schedule
from kanidm_mail_sender.engine.engine import CANCEL_DEADLINE, CutOff, Engine, HealthView, Tick
from kanidm_mail_sender.errors import ScheduleError
from kanidm_mail_sender.logs import get_logger
from kanidm_mail_sender.runtime.sdnotify import Notifier
from kanidm_mail_sender.runtime.signals import HardExit
from kanidm_mail_sender.state.journal import Journal
from kanidm_mail_sender.state.retries import apply_retries
from kanidm_mail_sender.state.status import publish

__all__ = ["STOP_MARGIN", "run_daemon"]

log = get_logger(__name__)

PRUNE_INTERVAL = 3600.0
# A stop takes at most the grace period plus this; past it, HardExit ends the process.
STOP_MARGIN = 2.0


async def _first(*events: asyncio.Event, within: float | None = None) -> None:
    """Return when any event is set, or after ``within`` seconds."""
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, timeout=within, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


async def _watchdog(notifier: Notifier, interval: float) -> None:
    while True:
        notifier.watchdog()
        await asyncio.sleep(interval)


def _seconds(delta: timedelta) -> float:
    return delta / timedelta(seconds=1)


async def _poll(
    engine: Engine, ended: tuple[asyncio.Event, ...], feed: float | None
) -> Tick | None:
    """One poll, cut short by a stop or a fatal error (then None)."""
    poll = asyncio.create_task(engine.poll(feed_seconds=feed), name="poll")
    stopped = [asyncio.ensure_future(event.wait()) for event in ended]
    await asyncio.wait([poll, *stopped], return_when=asyncio.FIRST_COMPLETED)
    for waiter in stopped:
        waiter.cancel()
    if poll.done():
        return poll.result()  # a bug in a poll should surface, not vanish
    poll.cancel()
    await asyncio.wait([poll], timeout=CANCEL_DEADLINE)
    return None


def snapshot(view: HealthView, *, started: float, running: bool) -> dict[str, Any]:
    """The daemon's state now, as plain JSON values (times in Unix seconds)."""
    now, last = time.time(), view.last_poll
    return {
        "pid": os.getpid(),
        "version": __version__,
        "running": running,
        "started": started,
        "written": now,
        "last_poll": None if last is None else {"at": last[0], "error": last[1]},
        "ready_at_last_poll": view.listed,
        "standby": {"delay_seconds": view.standby_delay, "held_for_primary": view.held},
        "relay": {
            "paused": view.paused,
            "paused_until": now + view.paused_for if view.paused_for > 0 else None,
            "concurrency": view.concurrency,
            "last_error": view.last_error,
            "cause": view.cause,
            "evidence": view.evidence,
        },
    }


async def run_daemon(
    engine: Engine,
    schedule: Schedule,
    stop: asyncio.Event,
    *,
    journal: Journal,
    grace: float,
    notifier: Notifier | None = None,
    hard_exit: HardExit | None = None,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> CutOff:
    """Poll at every fire time until ``stop`` is set or the engine hits a fatal error; then
    stop within ``grace`` seconds (plus :data:`STOP_MARGIN`, enforced by ``hard_exit``)."""
    notifier = notifier or Notifier({})
    engine.start()
    watchdog = (
        asyncio.create_task(_watchdog(notifier, notifier.watchdog_interval))
        if notifier.watchdog_interval
        else None
    )
    notifier.ready(f"polling on schedule {schedule.expression!r}")
    started = time.time()

    def published(running: bool = True) -> None:
        publish(journal.state_dir, snapshot(engine.view(), started=started, running=running))

    published()
    last_prune = -PRUNE_INTERVAL
    last_fire: datetime | None = None
    fire_at: datetime | None = None
    ended = (stop, engine.fatal_event)
    try:
        while not any(event.is_set() for event in ended):
            if fire_at is None:
                current = now()
                # Never fire twice for one instant, even if a poll ends within the second.
                after = max(current, last_fire) if last_fire else current
                fire_at = schedule.next_after(after)
                if fire_at is None:
                    raise ScheduleError(
                        f"schedule {schedule.expression!r} has no fire time after "
                        f"{after.isoformat()}; nothing would ever be sent, so the daemon stops"
                    )
                await _first(*ended, within=max(0.0, _seconds(fire_at - now())))
                if any(event.is_set() for event in ended):
                    break
            last_fire = fire_at
            if time.monotonic() - last_prune >= PRUNE_INTERVAL:
                last_prune = time.monotonic()
                pruned = journal.prune(time.time())
                if pruned:
                    log.info("journal.pruned", rows=pruned)
            # A poll may feed a full send queue until the next fire time, no longer.
            following = schedule.next_after(fire_at)
            feed = None if following is None else max(0.0, _seconds(following - now()))
            await apply_retries(journal)
            tick = await _poll(engine, ended, feed)
            published()
            owed = tick is not None and tick.owed
            fire_at = following if following is not None and owed and following <= now() else None
    finally:
        if watchdog is not None:
            watchdog.cancel()
        notifier.stopping()
        if hard_exit is not None:
            hard_exit.arm(grace + STOP_MARGIN, 1 if engine.fatal is not None else 0)
        log.info("daemon.stopping", grace_seconds=grace, busy=engine.busy)
        cut = await engine.shutdown(grace)
        published(running=False)
    return cut
