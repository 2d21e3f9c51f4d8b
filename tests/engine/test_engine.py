"""The engine end to end against the Kanidm stand-in (HTTPS) and a real SMTP relay."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from uuid import UUID

import pytest
from structlog.testing import capture_logs

from kanidm_mail_sender.core.states import ACCEPTED, DEFERRED, EXPIRED, REJECTED
from kanidm_mail_sender.engine.engine import EngineSettings
from kanidm_mail_sender.engine.health import HealthSettings
from kanidm_mail_sender.errors import KanidmAuthError
from kanidm_mail_sender.sandbox.kanidm_server import KanidmStandIn
from kanidm_mail_sender.sandbox.smtp_server import SmtpStandIn
from tests.helpers import Harness, delivered, journal_counts, wait_for

RelayFactory = Callable[..., Awaitable[SmtpStandIn]]

Factory = Callable[..., Harness]


async def test_n_messages_become_n_mails_all_marked_then_nothing(
    harness_factory: Factory, kanidm: KanidmStandIn, relay: SmtpStandIn
) -> None:
    ids = [kanidm.queue_test_message(f"user{i}@example.com", f"User {i}") for i in range(20)]
    ids.append(kanidm.queue_credential_reset("alice@example.com"))
    harness = harness_factory()
    with capture_logs() as logs:
        await harness.cycle()
    assert len(relay.mails) == 21
    assert set(kanidm.sent()) == set(ids)
    assert all(kanidm.mark_calls[i] == 1 for i in ids)
    accepted = [e for e in logs if e["event"] == "mail.accepted"]
    assert {e["destination"] for e in accepted} >= {"alice@example.com", "user0@example.com"}
    assert all("message_id" in e for e in accepted)
    reset = next(m.message for m in relay.mails if m.rcpt_tos == ["alice@example.com"])
    assert reset["Subject"] == "Kanidm Sandbox: Credential Reset Link"
    assert "https://idm.example.com/ui/reset?token=" in reset.get_content()
    await harness.cycle()
    assert len(relay.mails) == 21


async def test_partial_transient_failure_retries_only_that_destination(
    harness_factory: Factory, kanidm: KanidmStandIn, relay: SmtpStandIn
) -> None:
    now = [time.time()]
    destinations = ["a@example.com", "b@example.com", "c@example.com"]
    message = kanidm.queue_test_message(destinations)
    relay.faults.rcpt_replies["b@example.com"] = ["451 4.3.0 greylisted"] * 2
    harness = harness_factory(clock=lambda: now[0])
    await harness.cycle()
    assert delivered(relay) == Counter({"a@example.com": 1, "c@example.com": 1})
    assert kanidm.unsent() == [message]
    assert harness.journal.states(message)["b@example.com"].state == DEFERRED
    await harness.cycle()  # not due yet: nothing happens at every poll
    assert len(relay.mails) == 2
    now[0] += 3600
    await harness.cycle()  # greylisted once more
    states = harness.journal.states(message)
    assert (states["b@example.com"].state, states["b@example.com"].attempts) == (DEFERRED, 2)
    now[0] += 3600
    await harness.cycle()
    assert delivered(relay) == Counter({d: 1 for d in destinations})
    assert kanidm.sent() == [message]
    assert harness.journal.states(message)["b@example.com"].attempts == 3
    assert harness.journal.states(message)["a@example.com"].attempts == 1


async def test_permanent_failures_are_journalled_and_never_retried(
    harness_factory: Factory, kanidm: KanidmStandIn, relay: SmtpStandIn
) -> None:
    now = [time.time()]
    bad = kanidm.queue_test_message(["gone@example.com", "ok@example.com"])
    invalid = kanidm.queue_test_message("not an address")
    good = kanidm.queue_test_message("fine@example.com")
    relay.faults.rcpt_replies["gone@example.com"] = ["550 5.1.1 no such user"] * 5
    harness = harness_factory(clock=lambda: now[0])
    with capture_logs() as logs:
        await harness.cycle()
        now[0] += 86400
        await harness.cycle()
    assert delivered(relay) == Counter({"ok@example.com": 1, "fine@example.com": 1})
    assert kanidm.sent() == [good]
    assert set(kanidm.unsent()) == {bad, invalid}
    assert harness.journal.states(bad)["gone@example.com"].state == REJECTED
    assert harness.journal.states(invalid)["not an address"].state == REJECTED
    rejected = [e for e in logs if e["event"] == "mail.rejected"]
    assert len(rejected) == 2  # each logged once, not once per poll
    assert relay.faults.rcpt_replies["gone@example.com"] == ["550 5.1.1 no such user"] * 4


async def test_expired_reset_is_never_mailed(
    harness_factory: Factory, kanidm: KanidmStandIn, relay: SmtpStandIn
) -> None:
    expired = kanidm.queue_credential_reset("late@example.com", expires_in=-60)
    fresh = kanidm.queue_credential_reset("early@example.com")
    harness = harness_factory()
    with capture_logs() as logs:
        await harness.cycle()
        await harness.cycle()
    assert delivered(relay) == Counter({"early@example.com": 1})
    assert kanidm.sent() == [fresh]
    assert kanidm.unsent() == [expired]
    assert harness.journal.states(expired)["late@example.com"].state == EXPIRED
    assert [e["message_id"] for e in logs if e["event"] == "message.expired"] == [str(expired)]


async def test_unknown_template_and_odd_entries_do_not_stop_the_rest(
    harness_factory: Factory, kanidm: KanidmStandIn, relay: SmtpStandIn
) -> None:
    kanidm.queue_raw({"PasswordExpiryV1": {"display_name": "x"}}, ["x@example.com"])
    kanidm.queue_raw({"TestMessageV1": {"display_name": 42}}, ["y@example.com"])
    empty = kanidm.queue_test_message([])
    dup = kanidm.queue_test_message(["twice@example.com", "twice@example.com"])
    long_name = kanidm.queue_test_message("long@example.com", "N" * 5000)
    crlf = kanidm.queue_test_message("crlf@example.com", "Eve\r\nBcc: victim@example.com")
    harness = harness_factory()
    with capture_logs() as logs:
        await harness.cycle()
        await harness.cycle()
    assert delivered(relay) == Counter(
        {"twice@example.com": 1, "long@example.com": 1, "crlf@example.com": 1}
    )
    assert set(kanidm.sent()) == {dup, long_name, crlf}
    assert empty in kanidm.unsent()
    skipped = [e for e in logs if e["event"] == "message.skipped"]
    assert len(skipped) == 2  # logged once each, although polled twice
    assert any("PasswordExpiryV1" in e["reason"] for e in skipped)
    # What the alerts read: one kind this version cannot render, one malformed entry.
    gauge = harness.engine.metrics.registry.get_sample_value
    assert gauge("kanidm_mail_sender_skipped_messages", {"reason": "unknown_kind"}) == 1
    assert gauge("kanidm_mail_sender_skipped_messages", {"reason": "malformed"}) == 1
    crlf_mail = next(m for m in relay.mails if m.rcpt_tos == ["crlf@example.com"])
    assert crlf_mail.message["Bcc"] is None


async def test_relay_wide_failure_pauses_without_spending_attempts(
    harness_factory: Factory, kanidm: KanidmStandIn, relay: SmtpStandIn
) -> None:
    """A wrong password pauses all sending: one connection attempt for the whole queue, one
    log line, no attempt journalled for any message."""
    ids = [kanidm.queue_test_message(f"u{i}@example.com") for i in range(5)]
    settings = EngineSettings(health=HealthSettings(pause_initial=30, pause_max=60))
    harness = harness_factory(mail_password="not-the-password", settings=settings)
    with capture_logs() as logs:
        await harness.engine.poll()
        await wait_for(lambda: harness.engine.health.paused)
        await asyncio.sleep(0.3)
    assert relay.mails == []
    assert harness.smtp.connection_attempts == 1
    assert relay.auth_failures == 1
    paused = [e for e in logs if e["event"] == "relay.paused"]
    assert len(paused) == 1
    assert "mail_password" in paused[0]["error"]
    assert all(harness.journal.states(i) == {} for i in ids)  # no attempt spent
    assert harness.engine.metrics.relay_paused
    assert not harness.engine.metrics.ready()[0]


async def test_dropped_connection_is_retried_once(
    harness_factory: Factory, kanidm: KanidmStandIn, relay: SmtpStandIn
) -> None:
    now = [time.time()]
    message = kanidm.queue_test_message("drop@example.com")
    relay.faults.drop_in_data["drop@example.com"] = 1
    harness = harness_factory(clock=lambda: now[0])
    await harness.cycle()
    assert relay.mails == []
    now[0] += 120
    await harness.cycle()
    assert delivered(relay) == Counter({"drop@example.com": 1})
    assert kanidm.sent() == [message]


async def test_stalled_relay_does_not_freeze_other_sends(
    harness_factory: Factory, kanidm: KanidmStandIn, relay: SmtpStandIn
) -> None:
    relay.faults.stall_in_data = 2.0
    slow = kanidm.queue_test_message("slow@example.com")
    harness = harness_factory(mail_timeout_seconds=0.5)
    await harness.cycle()  # returns at all (pytest-timeout guards a hang)
    state = harness.journal.states(slow)["slow@example.com"]
    assert state.state == DEFERRED
    assert state.reply is not None
    assert "in time" in state.reply
    assert relay.mails == []
    assert harness.engine.metrics.transient_failures._value.get() == 1


async def test_kanidm_list_errors_back_off_and_recover(
    harness_factory: Factory, kanidm: KanidmStandIn, relay: SmtpStandIn
) -> None:
    kanidm.queue_test_message("a@example.com")
    kanidm.faults.list_statuses = [500, 500]
    harness = harness_factory()
    sample = harness.engine.metrics.registry.get_sample_value
    failing = []
    with capture_logs() as logs:
        for _ in range(3):
            await harness.cycle()
            failing.append(sample("kanidm_mail_sender_kanidm_failing", {"call": "list"}))
            time.sleep(0.02)  # past the (test-sized) backoff
    assert kanidm.list_calls == 3
    assert failing == [1, 1, 0]
    assert sample("kanidm_mail_sender_kanidm_errors_total", {"call": "list"}) == 2
    assert len([e for e in logs if e["event"] == "kanidm.list_failed"]) == 1
    assert any(e["event"] == "kanidm.list_recovered" for e in logs)
    assert len(relay.mails) == 1


@pytest.mark.parametrize("pipelining", [True, False])
async def test_mark_sent_5xx_is_retried_without_resending(
    harness_factory: Factory, kanidm: KanidmStandIn, relay: SmtpStandIn, pipelining: bool
) -> None:
    """With pipelining, and with ``http_pipelining = false`` (marks through httpx)."""
    message = kanidm.queue_test_message("a@example.com")
    kanidm.faults.mark_statuses = [500, 503]
    harness = harness_factory(http_pipelining=pipelining)
    assert (harness.client._marker is not None) is pipelining  # the wiring chose right
    await harness.cycle()
    assert len(relay.mails) == 1
    assert kanidm.mark_calls[message] == 3
    assert kanidm.sent() == [message]
    if pipelining:
        # The list; the marks' connection; the 503 on a reused connection asked again alone.
        assert kanidm.connections_accepted == 3


async def test_a_mark_outage_is_logged_once_not_per_message(
    harness_factory: Factory, kanidm: KanidmStandIn, relay: SmtpStandIn
) -> None:
    messages = [kanidm.queue_test_message(f"u{i}@example.com") for i in range(6)]
    kanidm.faults.mark_statuses = [503] * 6
    harness = harness_factory()
    with capture_logs() as logs:
        await harness.cycle()
    assert sorted(kanidm.sent()) == sorted(messages)
    assert len(relay.mails) == 6
    events = [e["event"] for e in logs]
    assert events.count("kanidm.mark_failed") == 1
    assert events.count("kanidm.mark_recovered") == 1
    sample = harness.engine.metrics.registry.get_sample_value
    # Each failed attempt the stage saw (the pipeline asks a refused mark again itself).
    assert 1 <= (sample("kanidm_mail_sender_kanidm_errors_total", {"call": "mark"}) or 0) <= 6
    assert sample("kanidm_mail_sender_kanidm_failing", {"call": "mark"}) == 0


async def test_mark_sent_404_forgets_and_goes_on(
    harness_factory: Factory, kanidm: KanidmStandIn, relay: SmtpStandIn
) -> None:
    both = {kanidm.queue_test_message("a@example.com"), kanidm.queue_test_message("b@example.com")}
    kanidm.faults.mark_statuses = [404]  # whichever mark comes first
    harness = harness_factory()
    with capture_logs() as logs:
        await harness.cycle()
    assert len(relay.mails) == 2
    assert harness.engine.fatal is None
    (gone,) = [UUID(e["message_id"]) for e in logs if e["event"] == "message.gone"]
    # The other is marked; the one Kanidm no longer knows is asked once and forgotten.
    assert kanidm.sent() == list(both - {gone})
    assert kanidm.mark_calls[gone] == 1


@pytest.mark.parametrize(("status", "fragment"), [(401, "expired"), (403, "read-write")])
async def test_mark_sent_auth_errors_are_fatal(
    harness_factory: Factory,
    kanidm: KanidmStandIn,
    relay: SmtpStandIn,
    status: int,
    fragment: str,
) -> None:
    kanidm.queue_test_message("a@example.com")
    kanidm.faults.mark_statuses = [status]
    harness = harness_factory()
    await harness.cycle()
    assert isinstance(harness.engine.fatal, KanidmAuthError)
    assert fragment in str(harness.engine.fatal)


async def test_list_401_is_fatal(harness_factory: Factory, kanidm: KanidmStandIn) -> None:
    kanidm.faults.list_statuses = [401]
    harness = harness_factory()
    await harness.cycle()
    assert isinstance(harness.engine.fatal, KanidmAuthError)


@pytest.mark.timeout(180)  # about 30 s alone; twice that under coverage on a busy machine
async def test_ten_thousand_messages_in_one_poll(
    harness_factory: Factory, kanidm: KanidmStandIn, relay_factory: RelayFactory
) -> None:
    relay = await relay_factory(keep=False)
    ids = [kanidm.queue_test_message(f"u{i}@example.com") for i in range(10_000)]
    harness = harness_factory(
        relay=relay, settings=EngineSettings(health=HealthSettings(max_concurrency=8))
    )
    await harness.cycle()
    assert relay.count == 10_000
    assert len(kanidm.sent()) == 10_000
    assert max(kanidm.mark_calls[i] for i in ids) == 1
    assert journal_counts(harness.journal) == {ACCEPTED: 10_000}


async def test_kanidm_timeouts_are_survived(
    harness_factory: Factory, kanidm: KanidmStandIn, relay: SmtpStandIn
) -> None:
    kanidm.queue_test_message("a@example.com")
    kanidm.faults.list_delay = 1.0
    harness = harness_factory(http_timeout_seconds=0.3)
    with capture_logs() as logs:
        await harness.cycle()
    assert "timed out" in next(e for e in logs if e["event"] == "kanidm.list_failed")["error"]
    assert relay.mails == []
    kanidm.faults.list_delay = 0
    kanidm.faults.mark_delay = 1.0  # the first mark times out, and is retried
    time.sleep(0.02)
    cycle = asyncio.create_task(harness.cycle())
    while not kanidm.mark_calls:
        await asyncio.sleep(0.01)
    kanidm.faults.mark_delay = 0
    await cycle
    assert len(relay.mails) == 1
    assert len(kanidm.sent()) == 1


async def test_fault_campaign(
    harness_factory: Factory, kanidm: KanidmStandIn, relay: SmtpStandIn
) -> None:
    """Every fault at once: each deliverable message ends marked sent with exactly one mail per
    destination, no expired link is mailed, and every undelivered message is explained."""
    now = [time.time()]
    deliverable: dict[UUID, list[str]] = {}
    for i in range(10):
        deliverable[kanidm.queue_test_message(f"plain{i}@example.com")] = [f"plain{i}@example.com"]
    for i in range(5):
        # The test clock jumps an hour per poll: give these resets a day.
        deliverable[kanidm.queue_credential_reset(f"reset{i}@example.com", expires_in=86400)] = [
            f"reset{i}@example.com"
        ]
    for i in range(5):
        dests = [f"m{i}a@example.com", f"m{i}b@example.com", f"m{i}c@example.com"]
        relay.faults.rcpt_replies[dests[1]] = ["451 4.7.1 greylisted"]
        deliverable[kanidm.queue_test_message(dests)] = dests
    for i in range(3):
        relay.faults.drop_in_data[f"drop{i}@example.com"] = 1
        deliverable[kanidm.queue_test_message(f"drop{i}@example.com")] = [f"drop{i}@example.com"]
    for i in range(2):
        relay.faults.rcpt_replies[f"busy{i}@example.com"] = ["421 4.3.2 busy"]
        deliverable[kanidm.queue_test_message(f"busy{i}@example.com")] = [f"busy{i}@example.com"]
    expired = [
        kanidm.queue_credential_reset(f"late{i}@example.com", expires_in=-1) for i in range(3)
    ]
    rejected = []
    for i in range(3):
        relay.faults.rcpt_replies[f"nobody{i}@example.com"] = ["550 5.1.1 unknown"] * 9
        rejected.append(kanidm.queue_test_message(f"nobody{i}@example.com"))
    unknown = [kanidm.queue_raw({"FutureV9": {}}, ["f@example.com"]) for _ in range(2)]
    kanidm.faults.list_statuses = [500]
    kanidm.faults.mark_statuses = [500, 503, 404]
    harness = harness_factory(clock=lambda: now[0])
    with capture_logs() as logs:
        for _ in range(8):
            await harness.cycle()
            now[0] += 3600
    missing = set(deliverable) - set(kanidm.sent())
    assert not missing, [(m, harness.journal.states(m)) for m in missing]
    expected = Counter(d for dests in deliverable.values() for d in dests)
    assert delivered(relay) == expected  # exactly one mail per destination
    assert not any(d.startswith("late") for d in delivered(relay))
    assert set(kanidm.unsent()) == set(expired) | set(rejected) | set(unknown)
    explained = {
        e.get("message_id")
        for e in logs
        if e["event"] in ("message.expired", "mail.rejected", "message.skipped")
    }
    assert {str(i) for i in [*expired, *rejected, *unknown]} <= explained


async def test_a_list_made_before_the_marks_landed_marks_nothing_again(
    harness_factory: Factory, kanidm: KanidmStandIn, relay: SmtpStandIn
) -> None:
    ids = [kanidm.queue_test_message(f"user{i}@example.com") for i in range(5)]
    harness = harness_factory()
    await harness.cycle()
    assert all(kanidm.mark_calls[i] == 1 for i in ids)
    for message_id in ids:  # Kanidm answers the next list as if the marks had not landed
        kanidm.messages[message_id].sent_at = None
    await harness.cycle()
    assert all(kanidm.mark_calls[i] == 1 for i in ids)
    assert len(relay.mails) == 5
