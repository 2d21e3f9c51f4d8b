"""Table tests of the pure planner: what to do with a queued message, and the backoff."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from uuid import uuid4

import pytest

from kanidm_mail_sender.core.messages import CredentialResetV1, QueuedMessage, TestMessageV1
from kanidm_mail_sender.core.planning import NO_DESTINATION, Action, backoff_delay, plan_message
from kanidm_mail_sender.core.states import ACCEPTED, DEFERRED, EXPIRED, REJECTED, DestinationState

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


def _ready_since(age: float | None, *destinations: str) -> QueuedMessage:
    ready = None if age is None else datetime.fromtimestamp(NOW - age, UTC)
    return replace(message(*destinations), send_after=ready)


@pytest.mark.parametrize(
    ("age", "destinations", "states", "delay", "action"),
    [
        (10, ("a",), {}, 0, Action.SEND),  # active: everything ready goes
        (10, ("a",), {}, 300, Action.HOLD),  # standby: fresh, left to the primary
        (299.9, ("a",), {}, 300, Action.HOLD),
        (300, ("a",), {}, 300, Action.SEND),  # ready for the whole delay: the primary is gone
        (900, ("a",), {}, 300, Action.SEND),
        (None, ("a",), {}, 300, Action.SEND),  # no known age: sent rather than never
        (10, ("a",), {"a": state(ACCEPTED)}, 300, Action.MARK),  # its own acceptance: marked
        (10, (), {}, 300, Action.HOLD),  # not even journalled while the primary may have it
        (900, (), {}, 300, Action.NO_DESTINATION),
        (10, ("a",), {"a": state(EXPIRED)}, 300, Action.DONE),
    ],
)
def test_standby_holds_what_the_primary_should_still_send(
    age: float | None,
    destinations: tuple[str, ...],
    states: dict[str, DestinationState],
    delay: float,
    action: Action,
) -> None:
    plan = plan_message(_ready_since(age, *destinations), states, NOW, standby_delay=delay)
    assert plan.action is action


def test_a_standby_holds_a_fresh_expired_reset_silently() -> None:
    """The primary journals and logs it; a standby says nothing about it until it is old."""
    fresh = replace(message("a", expires=NOW - 1), send_after=datetime.fromtimestamp(NOW, UTC))
    assert plan_message(fresh, {}, NOW, standby_delay=300).action is Action.HOLD
    assert plan_message(fresh, {}, NOW + 300, standby_delay=300).action is Action.EXPIRE


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
