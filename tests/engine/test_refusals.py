"""Refusals as providers word them, end to end: the engine against the Kanidm stand-in and an
aiosmtpd relay with scripted replies. One recipient never slows the rest; a refusal about our
sender or account never burns the queue."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from kanidm_mail_sender.core.states import ACCEPTED, DEFERRED, REJECTED
from kanidm_mail_sender.engine.metrics import PAUSE_CAUSES
from kanidm_mail_sender.sandbox.kanidm_server import KanidmStandIn
from kanidm_mail_sender.sandbox.smtp_server import SmtpStandIn
from tests.helpers import Harness, delivered

Factory = Callable[..., Harness]

POLICY_4_7_1 = (
    "451 4.7.1 <carol@example.com>: Recipient address rejected: Policy rejection, try again later"
)
GMAIL_4_2_1 = (
    "450 4.2.1 The user you are trying to contact is receiving mail at a rate that prevents "
    "additional messages from being delivered."
)
SEND_AS_DENIED = (
    "554 5.2.0 STOREDRV.Submission.Exception:SendAsDeniedException.MapiExceptionSendAsDenied; "
    "Failed to process message due to a permanent exception with message Cannot submit message."
)
UNKNOWN_SENDER_SIDE = "554 5.7.0 Message refused by policy engine"


def states(harness: Harness, kanidm: KanidmStandIn) -> Counter[str]:
    found: Counter[str] = Counter()
    for message_id in kanidm.messages:
        found.update(s.state for s in harness.journal.states(message_id).values())
    return found


@pytest.mark.parametrize("refusal", [POLICY_4_7_1, GMAIL_4_2_1], ids=["451-4.7.1", "gmail-4.2.1"])
async def test_one_refused_recipient_never_slows_the_others(
    harness_factory: Factory, kanidm: KanidmStandIn, relay: SmtpStandIn, refusal: str
) -> None:
    now = [time.time()]
    others = [kanidm.queue_test_message(f"user{i}@example.com") for i in range(300)]
    carol = kanidm.queue_test_message("carol@example.com")
    relay.faults.rcpt_replies["carol@example.com"] = [refusal] * 1000
    harness = harness_factory(clock=lambda: now[0])
    with capture_logs() as logs:
        await harness.cycle()
    assert set(kanidm.sent()) == set(others)
    assert len(relay.mails) == 300
    [state] = harness.journal.states(carol).values()
    assert (state.state, state.attempts) == (DEFERRED, 1)
    assert refusal.split(" ", 1)[1][:20] in (state.reply or "")
    events = {e["event"] for e in logs}
    assert not events & {"relay.paused", "relay.throttled"}
    assert harness.engine.health.limit == harness.engine.health._s.max_concurrency
    # At the next due time it is tried again, and the attempt is counted again.
    now[0] += 3600
    await harness.cycle()
    [state] = harness.journal.states(carol).values()
    assert (state.state, state.attempts) == (DEFERRED, 2)


async def test_the_same_deferral_across_domains_is_evidence_of_throttling(
    harness_factory: Factory, kanidm: KanidmStandIn, relay: SmtpStandIn
) -> None:
    """Per-recipient words, but the same refusal for several destinations in several domains:
    the relay limits us. The first ones are deferred (attempt spent) until the evidence is
    there; from then on sending slows down and no attempt is spent."""
    addresses = [f"user{i}@example{i}.test" for i in range(8)]
    for address in addresses:
        relay.faults.rcpt_replies[address] = [
            f"451 4.7.1 <{address}>: Recipient address rejected: Policy rejection, try again later"
        ]
    ids = [kanidm.queue_test_message(address) for address in addresses]
    harness = harness_factory()
    with capture_logs() as logs:
        await asyncio.wait_for(harness.cycle(), 30)
    found = Counter(s.state for i in ids for s in harness.journal.states(i).values())
    assert found[DEFERRED] == 2  # before the evidence
    assert found[ACCEPTED] == 6  # throttled, then retried free and accepted
    throttled = [e for e in logs if e["event"] == "relay.throttled"]
    assert throttled
    assert throttled[0]["evidence"].startswith("3 distinct destinations in 3 domains")


async def cycle_until(harness: Harness, done: Callable[[], bool]) -> None:
    """Polls until ``done()``; a hang guard bounds it, no speed is measured."""
    async with asyncio.timeout(20):
        while not done():
            await harness.cycle()
            await asyncio.sleep(0.05)


@pytest.mark.parametrize(
    ("refusal", "cause"),
    [(SEND_AS_DENIED, "sender"), (UNKNOWN_SENDER_SIDE, "burst")],
    ids=["send-as-denied", "unknown-text"],
)
async def test_a_refusal_of_our_sender_after_data_never_burns_the_queue(
    harness_factory: Factory,
    kanidm: KanidmStandIn,
    relay: SmtpStandIn,
    refusal: str,
    cause: str,
) -> None:
    """Every mail refused after DATA for a while, then accepted: the incident pauses all
    sending with one probe per pause, spends no attempt, and what the burst rejected before
    it was recognised is put back; afterwards every message is delivered once and marked."""
    ids = [kanidm.queue_test_message(f"user{i}@example{i % 4}.test") for i in range(40)]
    relay.faults.data_refusal = refusal
    harness = harness_factory()
    with capture_logs() as logs:
        await harness.engine.poll()
        await asyncio.sleep(2.0)
        assert harness.engine.health.paused
        assert harness.engine.health.cause == cause
        paused_on = harness.engine.metrics.registry.get_sample_value
        assert [
            paused_on("kanidm_mail_sender_relay_paused", {"cause": c}) for c in PAUSE_CAUSES
        ] == [1 if c == cause else 0 for c in PAUSE_CAUSES]
        rejected_during = states(harness, kanidm)[REJECTED]
        relay.faults.data_refusal = None
        await harness.engine.idle()
        await cycle_until(harness, lambda: set(kanidm.sent()) == set(ids))
    assert rejected_during == 0
    assert delivered(relay) == Counter(f"user{i}@example{i % 4}.test" for i in range(40))
    assert all(kanidm.mark_calls[i] == 1 for i in ids)
    assert states(harness, kanidm) == Counter({ACCEPTED: 40})
    assert all(s.attempts == 1 for i in ids for s in harness.journal.states(i).values())
    # One probe per pause: far fewer refusals than the queue holds.
    assert relay.data_refused < 25
    paused = [e for e in logs if e["event"] == "relay.paused"]
    assert len(paused) == 1
    assert paused[0]["cause"] == cause
    assert "sender" in paused[0]["likely_cause"]
    metrics = harness.engine.metrics.registry
    assert metrics.get_sample_value("kanidm_mail_sender_relay_pauses_total", {"cause": cause}) == 1
    assert metrics.get_sample_value("kanidm_mail_sender_relay_paused", {"cause": cause}) == 0
    if cause == "burst":
        assert paused[0]["evidence"].startswith("3 distinct destinations in a row")
        assert metrics.get_sample_value("kanidm_mail_sender_put_back_total") == 2
        assert any(e["event"] == "relay.burst_put_back" for e in logs)


async def test_genuine_per_address_refusals_after_data_are_not_a_burst(
    harness_factory: Factory, kanidm: KanidmStandIn, relay: SmtpStandIn
) -> None:
    unknown = [f"gone{i}@example{i}.test" for i in range(10)]
    for address in unknown:
        relay.faults.data_replies[address] = [
            f"550 5.1.1 <{address}>: Recipient address rejected: User unknown in virtual "
            "mailbox table"
        ]
    refused = [kanidm.queue_test_message(address) for address in unknown]
    others = [kanidm.queue_test_message(f"user{i}@example.com") for i in range(20)]
    harness = harness_factory()
    with capture_logs() as logs:
        await harness.cycle()
    assert set(kanidm.sent()) == set(others)
    assert all([s.state for s in harness.journal.states(i).values()] == [REJECTED] for i in refused)
    assert not any(e["event"] in ("relay.paused", "relay.burst_put_back") for e in logs)
    assert not harness.engine.health.paused


async def test_a_template_failing_on_one_message_defers_it_and_the_rest_go(
    harness_factory: Factory, kanidm: KanidmStandIn, relay: SmtpStandIn, tmp_path: Path
) -> None:
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "test_message_v1.txt.j2").write_text(
        "Hello {{ display_name }},\n"
        "{% if display_name == 'Mallory' %}{{ display_name.no_such_attribute }}{% endif %}\n"
    )
    bad = kanidm.queue_test_message("mallory@example.com", "Mallory")
    good = [kanidm.queue_test_message(f"user{i}@example.com") for i in range(5)]
    harness = harness_factory(template_dir=str(templates))
    with capture_logs() as logs:
        await harness.cycle()
    assert set(kanidm.sent()) == set(good)
    [state] = harness.journal.states(bad).values()
    assert (state.state, state.attempts) == (DEFERRED, 1)
    assert "test_message_v1.txt.j2" in (state.reply or "")
    [failed] = [e for e in logs if e["event"] == "message.render_failed"]
    assert failed["log_level"] == "error"
    assert not any(e["event"] == "mail.rejected" for e in logs)


async def test_a_destination_drawing_free_verdicts_while_others_go_is_counted_after_all(
    harness_factory: Factory, kanidm: KanidmStandIn, relay: SmtpStandIn
) -> None:
    """A rate reply after DATA for one destination only, forever: it slows the relay, but as
    other mail goes through meanwhile, after three free retries its attempt is spent."""
    relay.faults.data_replies["slow@example.com"] = [
        "454 Throttling failure: Maximum sending rate exceeded."
    ] * 100
    slow = kanidm.queue_test_message("slow@example.com")
    others = [kanidm.queue_test_message(f"user{i}@example.com") for i in range(30)]
    harness = harness_factory()
    with capture_logs() as logs:
        await asyncio.wait_for(harness.cycle(), 30)
    assert set(kanidm.sent()) == set(others)
    [state] = harness.journal.states(slow).values()
    assert (state.state, state.attempts) == (DEFERRED, 1)
    assert "while other mail went out" in (state.reply or "")
    assert any(e["event"] == "mail.deferred" for e in logs)
