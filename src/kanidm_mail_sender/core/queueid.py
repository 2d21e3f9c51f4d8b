"""The relay's own queue id in its 250 reply to DATA, so a mail can be followed in the relay's
logs (pure)."""

from __future__ import annotations

import re

__all__ = ["relay_queue_id"]

_FORMS = (
    # Postfix: "2.0.0 Ok: queued as 4ZxY3b0kQJz9tVb"
    re.compile(r"\bqueued as ([A-Za-z0-9]+)\b", re.IGNORECASE),
    # Exim: "OK id=1tK9Xy-000AbC-2d"
    re.compile(r"\bid=([A-Za-z0-9][A-Za-z0-9-]+)"),
    # Exchange Online: "2.6.0 <...@...> [InternalId=12345, Hostname=...] Queued mail for delivery"
    re.compile(r"\[InternalId=(\d+)"),
    # Amazon SES: "Ok 010701938a1b2c3d-4e5f...-000000"
    re.compile(r"^(?:2\.0\.0 )?Ok ([0-9a-f]{16}-[0-9a-f-]{20,})", re.IGNORECASE),
    # Gmail and others: "2.0.0 OK  1733050000 a640c23a62f3a-aa5f3b0c1d2si.42 - gsmtp"
    re.compile(r"^2\.0\.0 OK\s+\d+ (\S+) - gsmtp"),
)


def relay_queue_id(reply: str) -> str | None:
    """The queue id in ``reply`` (the relay's answer to DATA), or None when it has none we know."""
    text = reply.strip()
    for form in _FORMS:
        found = form.search(text)
        if found:
            return found[1]
    return None
