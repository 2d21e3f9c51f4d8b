"""Times as a reader reads them: a date and time in their language and zone, from CLDR's
formats (Babel), and how long a link has left.

Formatting a date with Babel costs more than rendering a whole mail; a campaign's links
expire within a few minutes of one another, so each text is cached by the minute.
"""

from __future__ import annotations

from collections import OrderedDict
from datetime import datetime, timedelta, tzinfo

from babel import Locale
from babel.dates import format_date, format_datetime, format_time, format_timedelta

__all__ = ["Clock"]

_CACHED = 4096  # texts per kind kept: minutes of expiry, or of time left


class Clock:
    """One language's and zone's way of writing times."""

    def __init__(self, locale: str, zone: tzinfo) -> None:
        self.locale = Locale.parse(locale)
        self.zone = zone
        self._at: OrderedDict[int, str] = OrderedDict()
        self._left: OrderedDict[int, str] = OrderedDict()

    def local(self, moment: datetime) -> datetime:
        """``moment`` in this zone."""
        return moment.astimezone(self.zone)

    def at(self, moment: datetime) -> str:
        """Date and time to the minute, with the zone: ``6. Dezember 2026, 20:45 MEZ``."""
        key = int(moment.timestamp()) // 60
        text = self._at.get(key)
        if text is None:
            text = _remember(self._at, key, self._format_at(moment))
        return text

    def left(self, until: datetime, now: datetime) -> str:
        """How long until ``until``, as a phrase: ``in 1 hour``, ``in 1 Stunde``."""
        seconds = max(0, int((until - now).total_seconds()))
        key = seconds if seconds < 120 else seconds // 60 * 60  # minutes once past two
        text = self._left.get(key)
        if text is None:
            phrase = format_timedelta(
                timedelta(seconds=key), add_direction=True, locale=self.locale
            )
            text = _remember(self._left, key, phrase)
        return text

    def format(self, moment: datetime, form: str = "medium") -> str:
        """Any datetime in this language and zone; ``form`` is short, medium, long, full or a
        CLDR pattern (``d MMMM y``)."""
        return format_datetime(moment, form, tzinfo=self.zone, locale=self.locale)

    def _format_at(self, moment: datetime) -> str:
        glue = self.locale.datetime_formats["long"]
        day = format_date(moment.astimezone(self.zone), "long", locale=self.locale)
        time = format_time(moment, "short", tzinfo=self.zone, locale=self.locale)
        zone = format_datetime(moment, "z", tzinfo=self.zone, locale=self.locale)
        return str(glue).replace("{1}", day).replace("{0}", f"{time} {zone}")


def _remember(cache: OrderedDict[int, str], key: int, text: str) -> str:
    cache[key] = text
    if len(cache) > _CACHED:
        cache.popitem(last=False)
    return text
