"""Signals and the hard exit.

SIGINT/SIGTERM ask for a graceful stop; a second one exits at once. SIGHUP, SIGALRM, SIGUSR1
and SIGUSR2 are ignored (as upstream: there is no reload). Whatever a library does with
cancellation, :class:`HardExit` ends the process once a stop has taken longer than its bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator

from kanidm_mail_sender.logs import get_logger

__all__ = ["STOP_SIGNALS", "HardExit", "handle_signals"]

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
IGNORED_SIGNALS = (signal.SIGHUP, signal.SIGALRM, signal.SIGUSR1, signal.SIGUSR2)

log = get_logger(__name__)


class HardExit:
    """Ends the process with ``os._exit`` when armed and its time is up, or when forced.

    A thread, not a task: it fires even if the event loop is stuck or a task swallows its
    cancellation (``asyncio.wait_for`` inside a library on Python 3.11 can).
    """

    def __init__(self, exit_func: Callable[[int], object] = os._exit) -> None:
        self._exit = exit_func
        self._timer: threading.Timer | None = None
        self.code = 0

    def arm(self, seconds: float, code: int) -> None:
        """Exit with ``code`` in ``seconds`` unless the process ends first (first arm wins)."""
        self.code = max(self.code, code)
        if self._timer is None:
            self._timer = threading.Timer(
                seconds, self.force, args=(f"the stop took longer than its bound of {seconds:g} s",)
            )
            self._timer.daemon = True
            self._timer.start()

    def force(self, reason: str) -> None:
        """Exit now, with the armed code."""
        log.error("daemon.forced_exit", reason=reason, exit_code=self.code)
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        self._exit(self.code)

    def disarm(self) -> None:
        """The process is ending by itself."""
        if self._timer is not None:
            self._timer.cancel()


@contextlib.contextmanager
def handle_signals(
    stop: asyncio.Event, on_repeat: Callable[[str], object] | None = None
) -> Iterator[list[int]]:
    """Within the block, stop signals set ``stop``, and a second one calls ``on_repeat``;
    yields the list of signals received."""
    loop = asyncio.get_running_loop()
    received: list[int] = []

    def on_signal(signum: int) -> None:
        received.append(signum)
        if len(received) > 1 and on_repeat is not None:
            on_repeat(f"a second {signal.Signals(signum).name}")
        stop.set()

    previous = {sig: signal.getsignal(sig) for sig in IGNORED_SIGNALS}
    for sig in IGNORED_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        yield received
    finally:
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
