"""Table tests of the pure decisions: delivery plans, backoff, SMTP reply classes, relay
health, and the bounded memory of reported entries."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from uuid import uuid4

import pytest

from kanidm_mail_sender.core.messages import CredentialResetV1, QueuedMessage, TestMessageV1
from kanidm_mail_sender.core.planning import NO_DESTINATION, Action, backoff_delay, plan_message
from kanidm_mail_sender.core.replies import redact_reply
from kanidm_mail_sender.core.states import ACCEPTED, DEFERRED, EXPIRED, REJECTED, DestinationState
from kanidm_mail_sender.engine.dispatch import ReportedOnce
from kanidm_mail_sender.engine.health import Change, HealthSettings, RelayHealth
from kanidm_mail_sender.engine.marking import RecentMarks

NOW = 1_800_000_000.0


def message(*destinations: str, expires: float | None = None) -> QueuedMessage:
    template = (
        TestMessageV1("Ann")
        if expires is None
        else CredentialResetV1("Ann", "k4p9x", datetime.fromtimestamp(expires, UTC))
    )
    return QueuedMessage(uuid4(), destinations, template)


def state(kind: str, attempts: int = 1, next_attempt: float | None = None) -> DestinationState:
    return DestinationState(kind, attempts, next_attempt, None)


@pytest.mark.parametrize(
    ("destinations", "states", "expires", "action", "due"),
    [
        (("a",), {}, None, Action.SEND, ("a",)),
        ((), {}, None, Action.NO_DESTINATION, ()),
        (("a",), {NO_DESTINATION: state(REJECTED)}, None, Action.DONE, ()),
        (("a", "b"), {"a": state(ACCEPTED)}, None, Action.SEND, ("b",)),
        (("a", "b"), {"a": state(ACCEPTED), "b": state(ACCEPTED)}, None, Action.MARK, ()),
        (("a",), {"a": state(DEFERRED, next_attempt=NOW + 10)}, None, Action.WAIT, ()),
        (("a",), {"a": state(DEFERRED, next_attempt=NOW - 1)}, None, Action.SEND, ("a",)),
        (("a",), {"a": state(REJECTED)}, None, Action.DONE, ()),
        (("a",), {"a": state(EXPIRED)}, None, Action.DONE, ()),
        (("a",), {}, NOW - 1, Action.EXPIRE, ()),
        (("a",), {}, NOW + 60, Action.SEND, ("a",)),
        # accepted everywhere: marked even if the link expired meanwhile
        (("a",), {"a": state(ACCEPTED)}, NOW - 1, Action.MARK, ()),
    ],
)
def test_plan(destinations, states, expires, action, due) -> None:
    plan = plan_message(message(*destinations, expires=expires), states, NOW)
    assert (plan.action, plan.due) == (action, due)


def test_plan_carries_attempts_of_due_destinations() -> None:
    states = {"a": state(DEFERRED, attempts=3, next_attempt=NOW - 1)}
    assert plan_message(message("a", "b"), states, NOW).attempts == {"a": 3}


@pytest.mark.parametrize(
    ("attempts", "rand", "expected"),
    [
        (1, 0.5, 30.0),
        (2, 0.5, 60.0),
        (3, 0.0, 90.0),  # 120 - 25 %
        (3, 1.0, 150.0),  # 120 + 25 %
        (20, 0.5, 3600.0),  # capped
        (20, 1.0, 3600.0),  # jitter never passes the cap
        (0, 0.5, 30.0),
    ],
)
def test_backoff(attempts: int, rand: float, expected: float) -> None:
    assert backoff_delay(attempts, initial=30, maximum=3600, rand=lambda: rand) == expected


@pytest.mark.parametrize(
    ("text", "secrets", "expected"),
    [
        ("5.7.8 bad credentials", (), "5.7.8 bad credentials"),
        ("5.7.8 AUTH PLAIN AG1haWxlcgBzM2NyZXQ= failed", (), "5.7.8 AUTH PLAIN [redacted] failed"),
        ("wrong password s3cret", ("s3cret",), "wrong password [redacted]"),
        (
            "5.2.0 SendAsDeniedException.MapiException",
            (),
            "5.2.0 SendAsDeniedException.MapiException",
        ),
        ("token ya29a0AfH6SMBx3kLmQpZ failed", (), "token [redacted] failed"),
        ("echo czNjcmV0", ("s3cret",), "echo [redacted]"),
        ("queued as 4FzKq1", (), "queued as 4FzKq1"),
    ],
)
def test_reply_redaction(text: str, secrets: tuple[str, ...], expected: str) -> None:
    assert redact_reply(text, secrets) == expected


def health(limit: int = 4) -> RelayHealth:
    return RelayHealth(
        HealthSettings(max_concurrency=limit, pause_initial=10, pause_max=40),
        rand=lambda: 0.5,
    )


def test_cold_start_sends_one_probe_then_opens_up() -> None:
    h = health()
    assert h.start(0)
    assert not h.start(0)  # the probe is alone until it succeeds
    assert math.isinf(h.wait_time(0))
    assert h.succeeded() is None
    assert [h.start(0) for _ in range(5)] == [True, True, True, True, False]


def test_relay_down_pauses_probes_once_per_pause_and_recovers() -> None:
    h = health()
    h.start(0)
    h.succeeded()
    for _ in range(3):
        assert h.start(0)
    assert h.relay_down(1, "421") is Change.PAUSED
    assert h.relay_down(1, "421") is None  # the other sends of the same incident
    assert h.relay_down(1, "421") is None
    assert h.paused
    assert h.wait_time(1) == 10
    assert not h.start(5)
    assert h.start(11)  # the probe
    assert not h.start(11)
    assert h.relay_down(11, "421") is None  # still the same incident: no second log line
    assert h.wait_time(11) == 20  # backoff doubled
    assert h.start(31)
    assert h.succeeded() is Change.RECOVERED
    assert (h.paused, h.start(31)) == (False, True)


def test_throttling_halves_concurrency_and_wins_it_back() -> None:
    h = health(limit=4)
    h.start(0)
    h.succeeded()
    h.start(0)
    assert h.throttled(0, "450 4.7.1") is Change.THROTTLED
    assert h.limit == 2
    assert not h.start(1)
    h.paused_until = 0
    assert [h.start(3) for _ in range(3)] == [True, True, False]
    for _ in range(2):
        h.succeeded()
    for _ in range(8):
        h.start(3)
        h.succeeded()
    assert h.limit == 3


def test_transport_failures_in_a_row_count_as_relay_down() -> None:
    h = RelayHealth(HealthSettings(max_concurrency=4, transport_failures_limit=3))
    h.start(0)
    h.succeeded()
    for _ in range(2):
        h.start(0)
        assert h.transport_failed(0, "timeout") is None
    h.start(0)
    assert h.transport_failed(0, "timeout") is Change.PAUSED


def test_a_cancelled_probe_lets_the_next_one_go() -> None:
    h = health()
    assert h.start(0)
    h.cancelled()
    assert h.start(0)
    assert not h.start(0)


def test_reported_once_is_bounded() -> None:
    seen = ReportedOnce(3)
    assert [seen.first_time(k) for k in "abca"] == [True, True, True, False]
    assert seen.first_time("d")  # "b" is forgotten now (least recently seen)
    assert len(seen) == 3
    assert seen.first_time("b")


def test_a_send_admitted_before_the_incident_does_not_end_it() -> None:
    """A mail already past MAIL FROM when the refusals began is accepted after the first
    refusal: that says nothing about the relay now, so the pause holds (one log line)."""
    h = health()
    h.start(0)
    h.succeeded(0)
    h.start(1)  # admitted before the incident
    h.start(2)
    assert h.relay_down(3, "553") is Change.PAUSED
    assert h.succeeded(1) is None
    assert h.paused
    assert not h.start(4)
    assert h.start(20)  # the probe, after the pause
    assert h.succeeded(20) is Change.RECOVERED


def test_recent_marks_are_bounded_in_number_and_time() -> None:
    now = [0.0]
    recent = RecentMarks(capacity=3, ttl=10, clock=lambda: now[0])
    ids = [uuid4() for _ in range(4)]
    for message_id in ids:
        recent.add(message_id)
    assert len(recent) == 3
    assert ids[0] not in recent  # the oldest went first
    assert all(message_id in recent for message_id in ids[1:])
    assert "not a uuid" not in recent
    now[0] = 10.5
    assert ids[1] not in recent  # too old: a lost mark is made again
    assert len(recent) == 2
    recent.add(ids[2])  # marked again: fresh
    now[0] = 20.6
    assert ids[2] not in recent
    assert ids[3] not in recent
