"""The engine's pure judgements: evidence across destinations (throttling on evidence, the
burn guard) and the outcome table of a failed send."""

from __future__ import annotations

from uuid import UUID, uuid4

import pytest

from kanidm_mail_sender.core.replies import Refusal, Stage, Verdict, read_reply
from kanidm_mail_sender.core.states import DEFERRED, EXPIRED, REJECTED
from kanidm_mail_sender.engine.evidence import Evidence, EvidenceRules, Seen, judge
from kanidm_mail_sender.engine.outcomes import (
    HealthEvent,
    Next,
    counted_after_all,
    outcome,
    spent_after_all,
)
from kanidm_mail_sender.errors import (
    DeliveryDeferred,
    DeliveryRejected,
    LinkExpired,
    RelayThrottled,
    RelayUnavailable,
    RenderError,
)

DEFER, REJECT, DOWN, SLOW = Verdict.DEFER, Verdict.REJECT, Verdict.RELAY_DOWN, Verdict.THROTTLE


RULES = EvidenceRules(window=60, throttle_destinations=3, burn_destinations=3)
ID = UUID(int=1)


def refusal_of(reply: str) -> Refusal:
    code, text = reply.split(" ", 1)
    return read_reply(Stage.DATA if code.startswith("5") else Stage.RCPT, int(code), text)


def seen(destination: str, reply: str, at: float = 0.0, acceptances: int = 0) -> Seen:
    refusal = refusal_of(reply)
    return Seen(at, ID, destination, refusal.shape, refusal.verdict, 0, acceptances)


CONTENT = "554 5.7.0 Message refused by policy engine [id 123]"
UNKNOWN = "550 5.1.1 <{}>: Recipient address rejected: User unknown"
POLICY = "451 4.7.1 <{}>: Recipient address rejected: Policy rejection, try again later"


@pytest.mark.parametrize(
    ("recent", "new", "verdict", "burst"),
    [
        # The burn guard: the third distinct destination in a row is the incident.
        ([seen("a@x.org", CONTENT), seen("b@y.org", CONTENT)], ("c@z.org", CONTENT, 0, 0), DOWN, 2),
        # Two are not enough.
        ([seen("a@x.org", CONTENT)], ("b@y.org", CONTENT, 0, 0), REJECT, 0),
        # The same destination three times is one destination.
        (
            [seen("a@x.org", CONTENT), seen("a@x.org", CONTENT)],
            ("a@x.org", CONTENT, 0, 0),
            REJECT,
            0,
        ),
        # An acceptance between ends the run.
        (
            [seen("a@x.org", CONTENT), seen("b@y.org", CONTENT)],
            ("c@z.org", CONTENT, 0, 1),
            REJECT,
            0,
        ),
        # A different refusal between ends the run.
        (
            [
                seen("a@x.org", CONTENT),
                seen("b@y.org", "554 5.6.0 other"),
                seen("c@z.org", CONTENT),
            ],
            ("d@w.org", CONTENT, 0, 0),
            REJECT,
            0,
        ),
        # Per-address refusals after DATA are never a burst.
        (
            [
                seen("a@x.org", UNKNOWN.format("a@x.org")),
                seen("b@y.org", UNKNOWN.format("b@y.org")),
            ],
            ("c@z.org", UNKNOWN.format("c@z.org"), 0, 0),
            REJECT,
            0,
        ),
        # Throttling on evidence: three destinations in two domains, deferred alike.
        (
            [seen("a@x.org", POLICY.format("a@x.org")), seen("b@y.org", POLICY.format("b@y.org"))],
            ("c@y.org", POLICY.format("c@y.org"), 30, 0),
            SLOW,
            0,
        ),
        # All in one domain: that domain's, not ours.
        (
            [seen("a@x.org", POLICY.format("a@x.org")), seen("b@x.org", POLICY.format("b@x.org"))],
            ("c@x.org", POLICY.format("c@x.org"), 0, 0),
            DEFER,
            0,
        ),
        # Outside the window.
        (
            [seen("a@x.org", POLICY.format("a@x.org")), seen("b@y.org", POLICY.format("b@y.org"))],
            ("c@z.org", POLICY.format("c@z.org"), 61, 0),
            DEFER,
            0,
        ),
        # One recipient refused again and again is never evidence.
        (
            [seen("a@x.org", POLICY.format("a@x.org"), at=i) for i in range(10)],
            ("a@x.org", POLICY.format("a@x.org"), 11, 0),
            DEFER,
            0,
        ),
        # Acceptances between do not end the throttling window.
        (
            [
                seen("a@x.org", POLICY.format("a@x.org")),
                seen("b@y.org", POLICY.format("b@y.org"), acceptances=5),
            ],
            ("c@z.org", POLICY.format("c@z.org"), 0, 9),
            SLOW,
            0,
        ),
    ],
)
def test_evidence(
    recent: list[Seen], new: tuple[str, str, float, int], verdict: Verdict, burst: int
) -> None:
    refusal = refusal_of(new[1])
    judgement = judge(recent, seen(*new), refusal, rules=RULES)
    assert judgement.verdict is verdict
    assert len(judgement.burst) == burst
    assert bool(judgement.reason) is (verdict is not refusal.verdict)


def test_an_open_burst_takes_the_same_refusal_until_an_acceptance() -> None:
    evidence = Evidence(RULES)
    refusal = read_reply(Stage.DATA, 554, "5.7.0 Message refused by policy engine")
    ids = [uuid4() for _ in range(5)]
    verdicts = [evidence.refused(i, ids[i], f"u{i}@d{i}.org", refusal, 0).verdict for i in range(5)]
    assert verdicts == [REJECT, REJECT, DOWN, DOWN, DOWN]
    evidence.accepted()
    assert evidence.refused(9, uuid4(), "v@e.org", refusal, 0).verdict is REJECT


@pytest.mark.parametrize(
    ("exc", "state", "attempt", "health", "then"),
    [
        (RelayThrottled("slow"), None, False, HealthEvent.THROTTLED, Next.RETRY),
        (RelayUnavailable("down"), None, False, HealthEvent.RELAY_DOWN, Next.RETRY),
        (LinkExpired("late"), EXPIRED, False, HealthEvent.CANCELLED, Next.STOP),
        (DeliveryRejected("550"), REJECTED, True, HealthEvent.SUCCEEDED, Next.FAILED),
        (RenderError("bad"), DEFERRED, True, HealthEvent.CANCELLED, Next.FAILED),
        (ValueError("bad address"), REJECTED, True, HealthEvent.CANCELLED, Next.FAILED),
        (DeliveryDeferred("451"), DEFERRED, True, HealthEvent.SUCCEEDED, Next.FAILED),
        (
            DeliveryDeferred("lost", transport=True),
            DEFERRED,
            True,
            HealthEvent.TRANSPORT_FAILED,
            Next.FAILED,
        ),
    ],
)
def test_outcome_table(
    exc: BaseException, state: str | None, attempt: bool, health: HealthEvent, then: Next
) -> None:
    result = outcome(exc)
    assert result is not None
    assert (result.state, result.attempt, result.health, result.then) == (
        state,
        attempt,
        health,
        then,
    )


def test_render_failures_are_deferrals_not_rejections() -> None:
    result = outcome(RenderError("'dict object' has no attribute 'x'"))
    assert result is not None
    assert result.event == "message.render_failed"
    assert result.state == DEFERRED


def test_not_a_delivery_outcome() -> None:
    assert outcome(RuntimeError("bug")) is None
    assert outcome(KeyboardInterrupt()) is None


@pytest.mark.parametrize(
    ("free", "accepted", "spent"), [(1, 10, False), (2, 10, False), (3, 10, True), (9, 0, False)]
)
def test_free_retries_are_bounded_while_other_mail_goes_out(
    free: int, accepted: int, spent: bool
) -> None:
    assert spent_after_all(free, accepted) is spent


def test_a_free_outcome_counted_after_all_is_a_deferral() -> None:
    free = outcome(RelayThrottled("slow"))
    assert free is not None
    counted = counted_after_all(free)
    assert (counted.state, counted.attempt, counted.then) == (DEFERRED, True, Next.FAILED)
    assert counted.health is HealthEvent.THROTTLED
