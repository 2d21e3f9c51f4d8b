"""The upstream cron dialect: the fire times of the Rust ``cron`` 0.17 crate (spec §A.7)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from kanidm_mail_sender.core.schedule import DEFAULT_SCHEDULE, parse_schedule
from kanidm_mail_sender.errors import ScheduleError

START = datetime(2025, 2, 27, 23, 59, 58, 300000, tzinfo=UTC)

# (expression, the next three fire times the Rust crate gives after START)
RUST_TABLE = [
    ("*/5 * * * * * *", ["2025-02-28 00:00:00", "2025-02-28 00:00:05", "2025-02-28 00:00:10"]),
    ("*/5 * * * * *", ["2025-02-28 00:00:00", "2025-02-28 00:00:05", "2025-02-28 00:00:10"]),
    ("0 * * * * *", ["2025-02-28 00:00:00", "2025-02-28 00:01:00", "2025-02-28 00:02:00"]),
    # kaniop's spec.mailSender.schedule default, as its Secret writes it.
    ("0 */1 * * * * *", ["2025-02-28 00:00:00", "2025-02-28 00:01:00", "2025-02-28 00:02:00"]),
    ("0 */15 * * * *", ["2025-02-28 00:00:00", "2025-02-28 00:15:00", "2025-02-28 00:30:00"]),
    ("10/20 * * * * *", ["2025-02-28 00:00:10", "2025-02-28 00:00:30", "2025-02-28 00:00:50"]),
    ("30 0 9 * * Mon-Fri", ["2025-02-28 09:00:30", "2025-03-03 09:00:30", "2025-03-04 09:00:30"]),
    ("0 0 12 * * 2-6", ["2025-02-28 12:00:00", "2025-03-03 12:00:00", "2025-03-04 12:00:00"]),
    ("0 0 0 * * 1", ["2025-03-02 00:00:00", "2025-03-09 00:00:00", "2025-03-16 00:00:00"]),
    ("0 0 0 * * 7", ["2025-03-01 00:00:00", "2025-03-08 00:00:00", "2025-03-15 00:00:00"]),
    ("0 0 8 * * 2/2", ["2025-02-28 08:00:00", "2025-03-03 08:00:00", "2025-03-05 08:00:00"]),
    ("0 0 0 * * */2", ["2025-03-01 00:00:00", "2025-03-02 00:00:00", "2025-03-04 00:00:00"]),
    ("0 0 0 1 * Mon", ["2025-09-01 00:00:00", "2025-12-01 00:00:00", "2026-06-01 00:00:00"]),
    ("0 0 0 1,15 * ?", ["2025-03-01 00:00:00", "2025-03-15 00:00:00", "2025-04-01 00:00:00"]),
    ("0 0 9 ? * Tues,Thurs", ["2025-03-04 09:00:00", "2025-03-06 09:00:00", "2025-03-11 09:00:00"]),
    (
        "0 0 0 1 January-March *",
        ["2025-03-01 00:00:00", "2026-01-01 00:00:00", "2026-02-01 00:00:00"],
    ),
    ("0 0 0 5-5 * *", ["2025-03-05 00:00:00", "2025-04-05 00:00:00", "2025-05-05 00:00:00"]),
    ("0 0 0 31 * *", ["2025-03-31 00:00:00", "2025-05-31 00:00:00", "2025-07-31 00:00:00"]),
    ("0 0 0 29 2 * *", ["2028-02-29 00:00:00", "2032-02-29 00:00:00", "2036-02-29 00:00:00"]),
    ("0 0 0 * * * 2030", ["2030-01-01 00:00:00", "2030-01-02 00:00:00", "2030-01-03 00:00:00"]),
    ("0 0 0 * * * 2027/2", ["2027-01-01 00:00:00", "2027-01-02 00:00:00", "2027-01-03 00:00:00"]),
    ("@weekly", ["2025-03-02 00:00:00", "2025-03-09 00:00:00", "2025-03-16 00:00:00"]),
    ("@hourly", ["2025-02-28 00:00:00", "2025-02-28 01:00:00", "2025-02-28 02:00:00"]),
    ("@yearly", ["2026-01-01 00:00:00", "2027-01-01 00:00:00", "2028-01-01 00:00:00"]),
    ("0 0 0 ? * ?/2", ["2025-03-01 00:00:00", "2025-03-02 00:00:00", "2025-03-04 00:00:00"]),
    ("0 0 0 * Jan-Mar/2 *", ["2025-03-01 00:00:00", "2025-03-02 00:00:00", "2025-03-03 00:00:00"]),
    ("0 1 - 5 * * * *", ["2025-02-28 00:01:00", "2025-02-28 00:02:00", "2025-02-28 00:03:00"]),
    ("0 0, 30 * * * *", ["2025-02-28 00:00:00", "2025-02-28 00:30:00", "2025-02-28 01:00:00"]),
    (" */5 * * * * * ", ["2025-02-28 00:00:00", "2025-02-28 00:00:05", "2025-02-28 00:00:10"]),
    ("0 0 0 * * mon,FRI", ["2025-02-28 00:00:00", "2025-03-03 00:00:00", "2025-03-07 00:00:00"]),
    # Rows 33 and 34: no future fire time at all.
    ("0 0 0 30 2 *", []),
    ("0 0 0 1 1 ? 2020", []),
]

REJECTED = [
    "0 0 22-2 * * *",
    "0 0 0 * * Sat-Sun",
    "*/60 * * * * *",
    "0 0 0 L * *",
    "0 0 0 * * 0",
    "0 0 0 * * 6#3",
    "* * * * *",
    "@annually",
    "@midnight",
    "@DAILY",
    "0 0 0 * JAN/3 *",
    "0 0 0 * * Mon/2",
    "*/5 * * * * * * *",
    "* /5 * * * * *",
    "*/0 * * * * *",
    "0 0 25 * * *",
    "0 0 0 * Sept *",
    "0 0 0 * * tu",
    "@dailyBla",
    "",
    "0 0 0 * * * 1969",
]


def fire_times(expression: str, count: int = 3) -> list[str]:
    schedule = parse_schedule(expression)
    out, at = [], START
    for _ in range(count):
        found = schedule.next_after(at)
        if found is None:
            break
        out.append(found.strftime("%Y-%m-%d %H:%M:%S"))
        at = found
    return out


@pytest.mark.parametrize(("expression", "expected"), RUST_TABLE)
def test_fire_times_match_the_rust_crate(expression: str, expected: list[str]) -> None:
    assert fire_times(expression) == expected


@pytest.mark.parametrize("expression", REJECTED)
def test_expressions_rust_rejects_are_rejected(expression: str) -> None:
    with pytest.raises(ScheduleError, match="schedule"):
        parse_schedule(expression)


def test_year_2100_only_schedule_has_no_fire_time() -> None:
    """croniter stops at 2099; the only Rust fire time of this row (2100) is lost, documented."""
    assert fire_times("0 0 12 1 1 * 2100") == []


def test_default_is_every_five_seconds_not_every_second() -> None:
    schedule = parse_schedule(DEFAULT_SCHEDULE)
    first = schedule.next_after(START)
    assert first is not None
    second = schedule.next_after(first)
    assert second is not None
    assert (second - first).total_seconds() == 5


def test_results_are_whole_seconds_strictly_after_start() -> None:
    schedule = parse_schedule("* * * * * *")
    at = datetime(2025, 1, 1, 0, 0, 4, 999999, tzinfo=UTC)
    assert schedule.next_after(at) == datetime(2025, 1, 1, 0, 0, 5, tzinfo=UTC)
    exact = datetime(2025, 1, 1, 0, 0, 5, tzinfo=UTC)
    assert schedule.next_after(exact) == datetime(2025, 1, 1, 0, 0, 6, tzinfo=UTC)
    following = schedule.next_after(at)
    assert following is not None
    assert (following - at).total_seconds() == pytest.approx(0.000001, abs=1e-5)
