"""systemd's notify protocol: messages reach the socket, and nothing happens without one."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from kanidm_mail_sender.runtime.sdnotify import Notifier


def test_sd_notify_messages_reach_the_socket(tmp_path: Path) -> None:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(2)
        notifier = Notifier(
            {
                "NOTIFY_SOCKET": str(path),
                "WATCHDOG_USEC": "4000000",
                "WATCHDOG_PID": str(os.getpid()),
            }
        )
        assert notifier.watchdog_interval == 2.0
        notifier.ready("polling")
        notifier.watchdog()
        notifier.stopping()
        got = [sock.recv(1024).decode() for _ in range(3)]
    assert got == ["READY=1\nSTATUS=polling", "WATCHDOG=1", "STOPPING=1"]


def test_sd_notify_is_silent_without_systemd() -> None:
    notifier = Notifier({})
    assert not notifier.enabled
    notifier.ready("x")  # must not raise
