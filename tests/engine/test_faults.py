"""The engine on a relay's bad day: stalls, held mails with expiring links, refused senders,
421 at connect, and hostile destinations; real aiosmtpd relays and the Kanidm stand-in."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path

from structlog.testing import capture_logs

from kanidm_mail_sender.core.states import ACCEPTED, EXPIRED, REJECTED
from kanidm_mail_sender.engine.dispatch import DispatchSettings
from kanidm_mail_sender.engine.engine import EngineSettings
from kanidm_mail_sender.engine.marking import MarkSettings
from kanidm_mail_sender.engine.sending import SendSettings
from kanidm_mail_sender.sandbox.kanidm_server import KanidmStandIn
from kanidm_mail_sender.sandbox.smtp_server import GreetingGate, SmtpStandIn
from kanidm_mail_sender.state.journal import Journal
from tests.helpers import (
    Harness,
    delivered,
    journal_counts,
    wait_for,
    with_workers,
)

Factory = Callable[..., Harness]
RelayFactory = Callable[..., Awaitable[SmtpStandIn]]

# Fast marks and polls; the relay's pauses as in production.
FAST = EngineSettings(
    send=SendSettings(retry_initial=30),
    marks=MarkSettings(retry_initial=0.05, retry_max=0.2),
    dispatch=DispatchSettings(list_retry_initial=0.01, list_retry_max=0.01),
)


async def test_a_stalled_relay_delays_neither_marks_nor_the_next_poll(
    harness_factory: Factory, kanidm: KanidmStandIn, relay: SmtpStandIn, tmp_path: Path
) -> None:
    """The relay takes mails and never answers DATA. Messages the journal already holds as
    accepted (a crash before their mark) are marked at once, and the next poll runs at its
    time, although the send queue is full behind the stall."""
    relay.faults.stall_in_data = 60
    accepted = [kanidm.queue_test_message(f"done{i}@example.com") for i in range(5)]
    stuck = [kanidm.queue_test_message(f"s{i}@example.com") for i in range(50)]
    journal = Journal(tmp_path / "config" / "state")
    for i, message in enumerate(accepted):
        await journal.record(message, f"done{i}@example.com", ACCEPTED, now=time.time())
    journal.close()
    kanidm.messages = dict(  # the accepted ones last, behind the stuck backlog
        sorted(kanidm.messages.items(), key=lambda item: item[0] in accepted)
    )
    settings = replace(with_workers(FAST, 2), queue_size=4)
    harness = harness_factory(settings=settings, mail_timeout_seconds=120)
    await asyncio.wait_for(harness.engine.poll(feed_seconds=0.5), 5)
    await wait_for(lambda: set(accepted) <= set(kanidm.sent()), timeout=5)
    await asyncio.wait_for(harness.engine.poll(feed_seconds=0.5), 5)
    assert kanidm.list_calls == 2
    assert relay.mails == []
    assert not set(stuck) & set(kanidm.sent())


async def test_resets_expiring_behind_a_slow_relay_are_never_mailed(
    harness_factory: Factory, kanidm: KanidmStandIn, relay: SmtpStandIn
) -> None:
    """One connection, 0.4 s per mail, resets whose links expire within 1-2 s: the ones
    whose turn comes after their expiry are journalled expired and never reach the relay."""
    relay.faults.stall_in_data = 0.4
    arrivals: list[float] = []
    relay.on_mail = lambda mail: arrivals.append(time.time() - 0.4)  # when DATA began
    ids = [kanidm.queue_credential_reset(f"r{i}@example.com", expires_in=2) for i in range(10)]
    expiry = {m: kanidm.messages[m].template["CredentialResetV1"]["expiry_time"] for m in ids}
    settings = with_workers(FAST, 1)
    harness = harness_factory(settings=settings)
    with capture_logs() as logs:
        await harness.cycle()
    states = {m: harness.journal.states(m)[f"r{i}@example.com"].state for i, m in enumerate(ids)}
    mailed = [m for m in ids if states[m] == ACCEPTED]
    expired = [m for m in ids if states[m] == EXPIRED]
    assert len(mailed) + len(expired) == 10
    assert expired, "the relay was fast enough for every link; the test proves nothing"
    assert len(relay.mails) == len(mailed)
    latest_expiry = max(expiry[m] for m in mailed) if mailed else 0
    assert all(arrival <= latest_expiry + 0.05 for arrival in arrivals)
    assert set(kanidm.sent()) == set(mailed)
    assert sum(e["event"] == "message.expired" for e in logs) == len(expired)


async def test_a_burst_of_553_to_mail_from_pauses_and_fails_no_message(
    harness_factory: Factory, kanidm: KanidmStandIn, relay: SmtpStandIn
) -> None:
    """A few seconds of the relay refusing our sender: no message is failed for good, all are
    mailed once afterwards, and the incident is logged once."""
    ids = [kanidm.queue_test_message(f"u{i}@example.com") for i in range(60)]
    relay.faults.mail_replies = ["553 5.7.1 Sender address rejected: not owned by user"] * 6
    harness = harness_factory()
    with capture_logs() as logs:
        await asyncio.wait_for(harness.cycle(), 30)
    assert set(kanidm.sent()) == set(ids)
    assert delivered(relay) == Counter({f"u{i}@example.com": 1 for i in range(60)})
    assert journal_counts(harness.journal) == {ACCEPTED: 60}
    assert sum(e["event"] == "relay.paused" for e in logs) == 1
    assert any(e["event"] == "relay.recovered" for e in logs)
    assert relay.mail_commands == 66  # six refused probes, then one MAIL per message


async def test_421_at_connect_costs_one_attempt_per_pause_not_per_message(
    harness_factory: Factory,
    kanidm: KanidmStandIn,
    relay_factory: RelayFactory,
) -> None:
    relay = await relay_factory(mode="starttls")
    gate = GreetingGate(relay.port)
    await gate.start()
    try:
        ids = [kanidm.queue_test_message(f"u{i}@example.com") for i in range(100)]
        settings = replace(FAST, health=replace(FAST.health, pause_initial=0.2, pause_max=0.4))
        harness = harness_factory(relay=relay, mail_relay=gate.url, settings=settings)
        with capture_logs() as logs:
            poll = asyncio.create_task(harness.cycle())
            await asyncio.sleep(1.5)
            refused = gate.connections
            assert harness.engine.health.paused
            assert not harness.engine.metrics.ready()[0]
            gate.refusing = False
            await asyncio.wait_for(poll, 30)
        assert 2 <= refused <= 10, refused  # about one per pause, nowhere near 100
        assert set(kanidm.sent()) == set(ids)
        assert journal_counts(harness.journal) == {ACCEPTED: 100}
        assert sum(e["event"] == "relay.paused" for e in logs) == 1
        assert sum(e["event"] == "mail.deferred" for e in logs) == 0
    finally:
        await gate.stop()


async def test_throttling_replies_slow_the_relay_without_spending_attempts(
    harness_factory: Factory, kanidm: KanidmStandIn, relay: SmtpStandIn
) -> None:
    ids = [kanidm.queue_test_message(f"u{i}@example.com") for i in range(20)]
    for i in range(0, 20, 4):  # SES's wording, after DATA
        relay.faults.data_replies[f"u{i}@example.com"] = [
            "454 Throttling failure: Maximum sending rate exceeded."
        ]
    harness = harness_factory()
    with capture_logs() as logs:
        await asyncio.wait_for(harness.cycle(), 30)
    assert set(kanidm.sent()) == set(ids)
    assert all(s.attempts == 1 for m in ids for s in harness.journal.states(m).values())
    assert any(e["event"] == "relay.throttled" for e in logs)
    assert not any(e["event"] == "mail.deferred" for e in logs)


async def test_an_unencodable_destination_poisons_nothing(
    harness_factory: Factory, kanidm: KanidmStandIn, relay: SmtpStandIn, tmp_path: Path
) -> None:
    """A lone surrogate from a JSON escape, among good messages and in the same group commit:
    no stall, the good ones mailed and marked, the bad one journalled (escaped) and refused,
    and after a restart nothing is mailed again."""
    good = [kanidm.queue_test_message(f"g{i}@example.com") for i in range(20)]
    mixed = kanidm.queue_test_message(["ok@example.com", "bad\udc80@example.com"])
    harness = harness_factory()
    await asyncio.wait_for(harness.cycle(), 20)
    assert set(kanidm.sent()) == set(good)
    states = harness.journal.states(mixed)
    assert states["ok@example.com"].state == ACCEPTED
    assert states["bad\\udc80@example.com"].state == REJECTED
    mails = len(relay.mails)
    assert mails == 21
    await harness.engine.shutdown(0.5)
    harness.journal.close()
    again = harness_factory()
    await asyncio.wait_for(again.cycle(), 20)
    assert len(relay.mails) == mails
    assert harness.journal.path == again.journal.path
