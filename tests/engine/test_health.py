"""The relay's health (probe, pauses, throttling), and the bounded memories of reported
entries and recent marks: pure state, times passed in."""

from __future__ import annotations

import math
from uuid import uuid4

from kanidm_mail_sender.engine.health import Change, HealthSettings, RelayHealth
from kanidm_mail_sender.engine.incident import ReportedOnce
from kanidm_mail_sender.engine.marking import RecentMarks


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
