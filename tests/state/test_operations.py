"""Operator-facing pieces: metrics and health over HTTP, sd_notify, the journal, preflight."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from uuid import uuid4

import httpx
import pytest

from kanidm_mail_sender.config import ListenAddress
from kanidm_mail_sender.config.preflight import Identity, check_config_file, check_not_root
from kanidm_mail_sender.core.states import ACCEPTED, DEFERRED, REJECTED
from kanidm_mail_sender.errors import AlreadyRunning, ConfigError, PreflightError, StateError
from kanidm_mail_sender.runtime.listener import start_metrics_server
from kanidm_mail_sender.runtime.sdnotify import Notifier
from kanidm_mail_sender.sandbox.kanidm_server import KanidmStandIn
from kanidm_mail_sender.sandbox.smtp_server import SmtpStandIn
from kanidm_mail_sender.state.journal import RETENTION_SECONDS, STATES_BATCH, Journal
from tests.helpers import Harness


async def test_metrics_scraped_after_a_real_delivery(
    harness_factory: Callable[..., Harness], kanidm: KanidmStandIn, relay: SmtpStandIn
) -> None:
    kanidm.queue_test_message("a@example.com")
    kanidm.queue_credential_reset("late@example.com", expires_in=-5)
    harness = harness_factory()
    server = await start_metrics_server(
        harness.engine.metrics, harness.engine.view, ListenAddress("127.0.0.1", 0)
    )
    try:
        await harness.cycle()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as http:
            text = (await http.get("/metrics")).text
            assert (await http.get("/healthz")).status_code == 200
            assert (await http.get("/readyz")).status_code == 200
    finally:
        await server.close()
    assert "kanidm_mail_sender_delivered_total 1.0" in text
    assert "kanidm_mail_sender_marked_sent_total 1.0" in text
    assert "kanidm_mail_sender_expired_total 1.0" in text
    assert "kanidm_mail_sender_queue_size 2.0" in text
    assert "kanidm_mail_sender_last_successful_poll_timestamp_seconds" in text


async def test_readiness_flips_when_the_relay_goes_away(
    harness_factory: Callable[..., Harness], kanidm: KanidmStandIn, relay: SmtpStandIn
) -> None:
    from kanidm_mail_sender.engine.engine import EngineSettings

    harness = harness_factory(settings=EngineSettings(relay_probe_interval=0.0))
    metrics = harness.engine.metrics
    await harness.cycle()
    assert metrics.ready() == (True, "ok")
    await relay.stop()
    await harness.smtp.close()  # drop pooled connections, as an idle timeout would
    await harness.cycle()
    ready, why = metrics.ready()
    assert not ready
    assert "relay" in why
    kanidm.faults.list_statuses = [500]
    await relay.start()
    await asyncio.sleep(0.05)  # past the list's backoff (10 ms in tests)
    await harness.cycle()
    assert metrics.ready()[0] is False  # the poll failed


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


async def test_journal_is_durable_locked_and_pruned(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "state")
    message = uuid4()
    old = uuid4()
    await journal.record(message, "a@example.com", ACCEPTED, now=time.time(), reply="250 ok")
    await journal.record(old, "b@example.com", ACCEPTED, now=time.time() - RETENTION_SECONDS - 1)
    with pytest.raises(AlreadyRunning, match="already uses"):
        Journal(tmp_path / "state")
    assert journal.prune(time.time()) == 1
    journal.close()
    reopened = Journal(tmp_path / "state")
    assert reopened.states(message)["a@example.com"].reply == "250 ok"
    assert reopened.states(old) == {}
    reopened.close()


def test_unwritable_state_dir_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StateError, match="not writable"):
        Journal(blocker / "state")


@pytest.mark.parametrize(
    ("ids", "skip", "refused"),
    [
        (Identity(1000, 1000, 1000, 1000), False, False),
        (Identity(0, 0, 0, 0), False, True),
        (Identity(1000, 1000, 0, 1000), False, True),
        (Identity(1000, 0, 1000, 1000), True, False),
    ],
)
def test_root_refusal(ids: Identity, skip: bool, refused: bool) -> None:
    if refused:
        with pytest.raises(PreflightError, match="refusing to run as root"):
            check_not_root(ids, skip=skip)
    else:
        warnings = check_not_root(ids, skip=skip)
        assert bool(warnings) == skip


@pytest.mark.parametrize(
    ("mode", "owner", "fragment"),
    [
        (0o600, "self", "modify its own config"),
        (0o400, "self", None),
        (0o644, "other", "readable by all users"),
        (0o666, "other", "modify its own config"),
    ],
)
def test_config_permission_warnings(
    tmp_path: Path, mode: int, owner: str, fragment: str | None
) -> None:
    path = tmp_path / "mail-sender"
    path.write_text("")
    path.chmod(mode)
    uid = os.stat(path).st_uid
    ids = Identity(uid, uid if owner == "self" else uid + 1, 4242, 4242)
    warnings = check_config_file(path, ids, holds_secrets=True)
    if fragment is None:
        assert warnings == []
    else:
        assert any(fragment in w for w in warnings)


def test_missing_config_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file missing"):
        check_config_file(tmp_path / "nope", Identity(1, 1, 1, 1), holds_secrets=False)


async def test_graceful_stop_finishes_in_flight_send_and_mark(
    harness_factory: Callable[..., Harness], kanidm: KanidmStandIn, relay: SmtpStandIn
) -> None:
    message = kanidm.queue_test_message("slow@example.com")
    relay.faults.stall_in_data = 0.5
    harness = harness_factory()
    poll = asyncio.create_task(harness.engine.poll())
    while not harness.engine.busy:
        await asyncio.sleep(0.01)
    await poll
    cut_off = await harness.engine.shutdown(5)
    assert not cut_off
    assert len(relay.mails) == 1
    assert kanidm.sent() == [message]


async def test_states_of_reads_many_messages_in_one_query(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    try:
        ids = [uuid4() for _ in range(STATES_BATCH)]
        await journal.record(ids[0], "a@example.com", ACCEPTED, now=1.0, attempts=1)
        await journal.record(ids[0], "b@example.com", DEFERRED, now=1.0, attempts=2)
        await journal.record(ids[-1], "c@example.com", REJECTED, now=1.0, reply="550 no")
        found = journal.states_of(ids)
        assert set(found) == {ids[0], ids[-1]}
        assert found[ids[0]] == journal.states(ids[0])
        assert found[ids[-1]]["c@example.com"].reply == "550 no"
        assert journal.states_of([]) == {}
        with pytest.raises(ValueError, match="at most"):
            journal.states_of([*ids, uuid4()])
    finally:
        journal.close()
