"""IANA time zones by name, without loading a date-formatting library."""

from __future__ import annotations

from datetime import UTC, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = ["DEFAULT_TIMEZONE", "zone_named"]

DEFAULT_TIMEZONE = "UTC"


def zone_named(name: str) -> tzinfo:
    """The IANA zone ``name`` (``Europe/Berlin``); ValueError naming it when unknown."""
    if name == DEFAULT_TIMEZONE:
        return UTC  # needs no zone database
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(
            f"{name!r} is not an IANA time zone; give one such as Europe/Berlin or UTC"
        ) from exc
