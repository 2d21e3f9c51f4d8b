"""Signal handling: SIGINT/SIGTERM ask for a graceful stop; SIGHUP, SIGALRM, SIGUSR1 and
SIGUSR2 are ignored (as upstream: there is no reload)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Iterator

__all__ = ["STOP_SIGNALS", "handle_signals"]

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
IGNORED_SIGNALS = (signal.SIGHUP, signal.SIGALRM, signal.SIGUSR1, signal.SIGUSR2)


@contextlib.contextmanager
def handle_signals(stop: asyncio.Event) -> Iterator[list[int]]:
    """Within the block, stop signals set ``stop``; yields the list of signals received."""
    loop = asyncio.get_running_loop()
    received: list[int] = []

    def on_signal(signum: int) -> None:
        received.append(signum)
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
