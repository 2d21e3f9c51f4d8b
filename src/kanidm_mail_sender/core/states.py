"""The words of the delivery journal, shared by the pure planner and the journal itself.

Each (message, destination) is in one state: accepted by the relay, rejected for good,
deferred (retried at ``next_attempt``) or expired (a reset link that died before it went
out). No row at all: never tried.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ACCEPTED", "DEFERRED", "EXPIRED", "REJECTED", "DestinationState", "storable"]

ACCEPTED = "accepted"
REJECTED = "rejected"
DEFERRED = "deferred"
EXPIRED = "expired"


@dataclass(frozen=True, slots=True)
class DestinationState:
    """What the journal knows about one destination of one message."""

    state: str
    attempts: int
    next_attempt: float | None
    reply: str | None


def storable(text: str) -> str:
    """``text`` as SQLite can store it: lone surrogates (from JSON escapes) backslash-escaped."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text
