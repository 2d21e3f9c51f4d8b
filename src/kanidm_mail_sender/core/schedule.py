"""The upstream cron dialect (Rust ``cron`` 0.17), evaluated in UTC with croniter.

Expressions are ``sec min hour day-of-month month day-of-week [year]`` with day-of-week
1 = Sunday, or one of ``@yearly @monthly @weekly @daily @hourly``. We validate with our own
parser, which accepts exactly what the Rust crate accepts, expand every field to its set of
values, and hand croniter only plain comma lists, so none of croniter's own rules (0-based
weekdays, OR of day fields, wrap-around ranges) can change the meaning.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from croniter import CroniterBadDateError, croniter

from kanidm_mail_sender.errors import ScheduleError

__all__ = ["DEFAULT_SCHEDULE", "Schedule", "parse_schedule"]

DEFAULT_SCHEDULE = "*/5 * * * * * *"

_SHORTHANDS = {
    "@yearly": "0 0 0 1 1 *",
    "@monthly": "0 0 0 1 * *",
    "@weekly": "0 0 0 * * 1",
    "@daily": "0 0 0 * * *",
    "@hourly": "0 0 * * * *",
}
_MONTHS = {
    name: number
    for number, names in enumerate(
        [
            ("jan", "january"),
            ("feb", "february"),
            ("mar", "march"),
            ("apr", "april"),
            ("may",),
            ("jun", "june"),
            ("jul", "july"),
            ("aug", "august"),
            ("sep", "september"),
            ("oct", "october"),
            ("nov", "november"),
            ("dec", "december"),
        ],
        start=1,
    )
    for name in names
}
_WEEKDAYS = {
    name: number
    for number, names in enumerate(
        [
            ("sun", "sunday"),
            ("mon", "monday"),
            ("tue", "tues", "tuesday"),
            ("wed", "wednesday"),
            ("thu", "thurs", "thursday"),
            ("fri", "friday"),
            ("sat", "saturday"),
        ],
        start=1,
    )
    for name in names
}


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: dict[str, int]
    question_mark: bool = False


_FIELDS = (
    _Field("seconds", 0, 59, {}),
    _Field("minutes", 0, 59, {}),
    _Field("hours", 0, 23, {}),
    _Field("day of month", 1, 31, {}, question_mark=True),
    _Field("month", 1, 12, _MONTHS),
    _Field("day of week", 1, 7, _WEEKDAYS, question_mark=True),
    _Field("year", 1970, 2100, {}),
)
# The Rust parser lets numbers and names swallow the whitespace around them, so "1 - 5" is one
# range and "0, 30" one list; "*" and "?" do not, so "* /5" is rejected. Only the ASCII
# whitespace the Rust parser knows counts.
_GLUE = re.compile(r"(?<=[0-9A-Za-z])[ \t\r\n]+(?=[-,/])|(?<=[-,/])[ \t\r\n]+(?=[0-9A-Za-z])")
_SPLIT = re.compile(r"[ \t\r\n]+")
_ATOM = re.compile(r"[0-9]+|[A-Za-z]+")


def _value(token: str, field: _Field, expression: str) -> tuple[int, bool]:
    """Return (value, was_a_name) for one number or name."""
    if not _ATOM.fullmatch(token):
        raise ScheduleError(f"schedule {expression!r}: {token!r} is not valid in {field.name}")
    if token.isdigit():
        value = int(token)
        named = False
    else:
        found = field.names.get(token.lower())
        if found is None:
            raise ScheduleError(
                f"schedule {expression!r}: {token!r} is not a known name in {field.name}"
            )
        value, named = found, True
    if not field.low <= value <= field.high:
        raise ScheduleError(
            f"schedule {expression!r}: {value} is outside {field.name} ({field.low}-{field.high})"
        )
    return value, named


def _expand_item(item: str, field: _Field, expression: str) -> set[int]:
    base, slash, step_text = item.partition("/")
    step = 1
    if slash:
        step, _ = _value(step_text, _Field(field.name, 0, field.high, {}), expression)
        if step == 0:
            raise ScheduleError(f"schedule {expression!r}: a step in {field.name} cannot be 0")
    if base == "*" or (base == "?" and field.question_mark):
        start, end = field.low, field.high
    elif "-" in base:
        left, _, right = base.partition("-")
        start, _ = _value(left, field, expression)
        end, _ = _value(right, field, expression)
        if start > end:
            raise ScheduleError(
                f"schedule {expression!r}: range {base!r} in {field.name} runs backwards; "
                "wrap-around ranges are not supported"
            )
    else:
        start, named = _value(base, field, expression)
        if not slash:
            return {start}
        if named:
            raise ScheduleError(
                f"schedule {expression!r}: a step needs a range, not the name {base!r}"
            )
        end = field.high
    return set(range(start, end + 1, step))


def _expand_field(text: str, field: _Field, expression: str) -> frozenset[int]:
    values: set[int] = set()
    for item in text.split(","):
        values |= _expand_item(item, field, expression)
    return frozenset(values)


def _croniter_field(values: frozenset[int], field: _Field, shift: int = 0) -> str:
    if len(values) == field.high - field.low + 1:
        return "*"
    return ",".join(str(v - shift) for v in sorted(values))


@dataclass(frozen=True)
class Schedule:
    """A parsed schedule; ``next_after`` gives the next whole-second fire time in UTC."""

    expression: str
    _croniter_expression: str | None

    def require_future(self, now: datetime) -> Schedule:
        """This schedule, or ScheduleError when it has no fire time after ``now``."""
        if self.next_after(now) is None:
            raise ScheduleError(
                f"schedule {self.expression!r} has no fire time in the future, so nothing "
                "would ever be sent; give one that fires again (the default is "
                f"{DEFAULT_SCHEDULE!r})"
            )
        return self

    def next_after(self, after: datetime) -> datetime | None:
        """The first fire time strictly after ``after`` (an aware datetime), or None."""
        if self._croniter_expression is None:
            return None
        try:
            result = croniter(
                self._croniter_expression,
                after.astimezone(UTC),
                ret_type=datetime,
                second_at_beginning=True,
                day_or=False,
                max_years_between_matches=200,
            ).get_next()
        except CroniterBadDateError:
            return None
        assert isinstance(result, datetime)
        return result


def parse_schedule(expression: str) -> Schedule:
    """Parse ``expression`` as the Rust ``cron`` 0.17 crate would, or raise ScheduleError."""
    text = expression.strip(" \t\r\n")
    if text.startswith("@"):
        expanded = _SHORTHANDS.get(text)
        if expanded is None:
            raise ScheduleError(
                f"schedule {expression!r} is not one of {', '.join(_SHORTHANDS)} "
                "(names are case-sensitive)"
            )
        text = expanded
    fields = _SPLIT.split(_GLUE.sub("", text)) if text else []
    if len(fields) not in (6, 7):
        raise ScheduleError(
            f"schedule {expression!r} has {len(fields)} fields; expected 6 or 7: "
            "seconds minutes hours day-of-month month day-of-week [year]"
        )
    sets = [_expand_field(f, spec, expression) for f, spec in zip(fields, _FIELDS, strict=False)]
    # croniter cannot express 2100; only fire times inside that final year are lost.
    years = sorted(y for y in sets[6] if y < 2100) if len(sets) == 7 else None
    if years == []:
        return Schedule(expression, None)
    parts = [_croniter_field(s, spec) for s, spec in zip(sets[:5], _FIELDS, strict=False)]
    parts.append(_croniter_field(sets[5], _FIELDS[5], shift=1))
    parts.append("*" if years is None or len(years) == 130 else ",".join(map(str, years)))
    return Schedule(expression, " ".join(parts))
