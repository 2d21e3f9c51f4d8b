"""Stopping the real daemon in a subprocess: every stop and fatal path ends within a bound.

The bound is the grace period plus the daemon's fixed margin (2 s), plus what starting a
Python process costs here; each test asserts the exit code and the time from the signal (or
the fault) to the exit.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from kanidm_mail_sender.exitcodes import ExitCode
from kanidm_mail_sender.sandbox.kanidm_server import KanidmStandIn
from kanidm_mail_sender.sandbox.smtp_server import SmtpStandIn
from tests.helpers import start, wait_for

ConfigFiles = Callable[..., tuple[Path, Path]]
Command = Callable[..., list[str]]

MARGIN = 2.0  # the daemon's own STOP_MARGIN
SLACK = 1.5  # scheduling noise on a loaded 2-core machine


async def exit_within(proc: asyncio.subprocess.Process, bound: float) -> tuple[int, str, float]:
    """Wait for the process to end; fail if it takes longer than ``bound`` seconds."""
    started = time.monotonic()
    try:
        _, err = await asyncio.wait_for(proc.communicate(), bound + 10)
    except TimeoutError:
        proc.kill()
        raise AssertionError(f"the daemon did not exit within {bound + 10:g} s") from None
    took = time.monotonic() - started
    assert proc.returncode is not None
    assert took <= bound, f"exit took {took:.1f} s, more than {bound:g} s"
    return proc.returncode, err.decode(), took


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_sigterm_idle_exits_at_once(
    config_files: ConfigFiles, daemon_command: Command, kanidm: KanidmStandIn
) -> None:
    client, mail = config_files(shutdown_grace_seconds=30)
    proc = await start(daemon_command(client, mail))
    await wait_for(lambda: kanidm.list_calls > 0)
    proc.send_signal(signal.SIGTERM)
    code, err, _ = await exit_within(proc, SLACK)  # nothing in flight: no grace is waited
    assert code == ExitCode.OK, err
    assert "shutdown.cut_off" not in err


async def test_sigterm_busy_waits_only_for_the_sends_in_flight(
    config_files: ConfigFiles,
    daemon_command: Command,
    kanidm: KanidmStandIn,
    relay: SmtpStandIn,
) -> None:
    """A backlog behind a relay that takes 1 s per mail: the stop waits for the mails on the
    wire (about 1 s), not for the 30 s grace, and names what it left unsent."""
    for i in range(40):
        kanidm.queue_test_message(f"u{i}@example.com")
    relay.faults.stall_in_data = 1.0
    client, mail = config_files(shutdown_grace_seconds=30, mail_max_connections=2)
    proc = await start(daemon_command(client, mail))
    await wait_for(lambda: len(relay.mails) >= 2)
    proc.send_signal(signal.SIGTERM)
    code, err, _ = await exit_within(proc, 1.0 + MARGIN + SLACK)
    assert code == ExitCode.OK, err
    cut = next(line for line in err.splitlines() if "shutdown.cut_off" in line)
    assert "not_sent=" in cut
    assert "not_sent=0" not in cut
    # Whatever was accepted was marked before the exit, or is listed as awaiting its mark.
    assert len(kanidm.sent()) == len(relay.mails) or "awaiting_mark=0" not in cut


async def test_sigterm_with_grace_zero_and_sends_in_flight(
    config_files: ConfigFiles,
    daemon_command: Command,
    kanidm: KanidmStandIn,
    relay: SmtpStandIn,
) -> None:
    """Sends stalled in DATA are cut at once; the process exits within the margin even if a
    library swallows the cancellation."""
    for i in range(10):
        kanidm.queue_test_message(f"u{i}@example.com")
    relay.faults.stall_in_data = 60
    client, mail = config_files(shutdown_grace_seconds=0, mail_timeout_seconds=120)
    proc = await start(daemon_command(client, mail))
    await wait_for(lambda: relay.data_started >= 1)
    await asyncio.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    code, err, _ = await exit_within(proc, MARGIN + SLACK)
    assert code == ExitCode.OK, err
    assert "interrupted=" in err
    assert relay.mails == []


async def test_second_sigterm_exits_at_once_and_probes_say_stopping(
    config_files: ConfigFiles,
    daemon_command: Command,
    kanidm: KanidmStandIn,
    relay: SmtpStandIn,
) -> None:
    kanidm.queue_test_message("stuck@example.com")
    relay.faults.stall_in_data = 60
    port = free_port()
    client, mail = config_files(
        shutdown_grace_seconds=60, mail_timeout_seconds=120, metrics_listen=f"127.0.0.1:{port}"
    )
    proc = await start(daemon_command(client, mail))
    await wait_for(lambda: relay.data_started >= 1)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
        assert (await http.get("/healthz")).status_code == 200
        proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.5)
        assert proc.returncode is None  # waiting for the send in flight, within its grace
        assert (await http.get("/healthz")).status_code == 503
        assert (await http.get("/readyz")).status_code == 503
    proc.send_signal(signal.SIGTERM)
    code, err, _ = await exit_within(proc, SLACK)
    assert code == ExitCode.OK, err
    assert "daemon.forced_exit" in err
    assert "a second SIGTERM" in err


async def test_mark_401_with_sends_in_flight_exits_1_within_the_bound(
    config_files: ConfigFiles,
    daemon_command: Command,
    kanidm: KanidmStandIn,
    relay: SmtpStandIn,
) -> None:
    """A token revoked mid-run: the first mark gets 401 while other sends are on the wire;
    the daemon says why and exits 1 within the grace (3 s) and the margin."""
    for i in range(30):
        kanidm.queue_test_message(f"u{i}@example.com")
    kanidm.faults.mark_statuses = [401] * 100
    relay.faults.stall_in_data = 0.5
    client, mail = config_files(shutdown_grace_seconds=3, mail_max_connections=4)
    proc = await start(daemon_command(client, mail))
    await wait_for(lambda: sum(kanidm.mark_calls.values()) >= 1)
    code, err, _ = await exit_within(proc, 3 + MARGIN + SLACK)
    assert code == ExitCode.FATAL, err
    assert "token is not accepted" in err
    assert kanidm.sent() == []
