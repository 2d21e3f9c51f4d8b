"""How the operator commands present what they found: times, ages, tables, short
texts, journal rows, and what Kanidm holds (never a reset's intent id)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from kanidm_mail_sender.core.messages import CredentialResetV1, parse_resource
from kanidm_mail_sender.core.queueid import relay_queue_id
from kanidm_mail_sender.core.states import ACCEPTED, DestinationState
from kanidm_mail_sender.logs import printable
from kanidm_mail_sender.state.view import HistoryRow

__all__ = [
    "age",
    "format_table",
    "journal_states",
    "kanidm_entry",
    "queue_id",
    "row_json",
    "short",
    "when",
]


def when(moment: float | None) -> str:
    """A Unix time as UTC to the second, or ``-``."""
    if moment is None:
        return "-"
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def age(seconds: float) -> str:
    """A duration as its two largest units (``1h5m``, ``42s``)."""
    whole = max(0, int(seconds))
    for size, unit, smaller, rest in (
        (86400, "d", 3600, "h"),
        (3600, "h", 60, "m"),
        (60, "m", 1, "s"),
    ):
        if whole >= size:
            return f"{whole // size}{unit}{(whole % size) // smaller}{rest}"
    return f"{whole}s"


def format_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Aligned columns, each cell escaped for the terminal (a line break included)."""
    rows = [list(headers), *[[printable(str(cell)) for cell in row] for row in rows]]
    widths = [max(len(row[i]) for row in rows) for i in range(len(headers))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def short(text: str | None, size: int = 60) -> str:
    """``text`` cut to ``size`` characters with an ellipsis, or ``-``."""
    if not text:
        return "-"
    return text if len(text) <= size else text[: size - 1] + "…"


def journal_states(rows: Iterable[HistoryRow]) -> dict[str, DestinationState]:
    """The journal's rows of one message as the planner's states, by destination."""
    return {
        row.destination: DestinationState(row.state, row.attempts, row.next_attempt, row.reply)
        for row in rows
    }


def _timestamp(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def kanidm_entry(resource: Any) -> dict[str, Any]:
    """What an operator may see of one Kanidm message: never the reset's intent id."""
    parsed = parse_resource(resource)
    template = parsed.template
    entry: dict[str, Any] = {
        "id": str(parsed.id),
        "template": template.kind,
        "display_name": template.display_name,
        "destinations": list(parsed.destinations),
        "send_after": _timestamp(resource.get("send_after")),
        "sent_at": _timestamp(resource.get("sent_at")),
        "delete_after": _timestamp(resource.get("delete_after")),
    }
    if isinstance(template, CredentialResetV1):
        entry["expires"] = template.expiry_time.timestamp()
    return entry


def row_json(row: HistoryRow) -> dict[str, Any]:
    """One journal row for ``--json``, with the relay's queue id read from its reply."""
    return {**asdict(row), "relay_queue_id": queue_id(row)}


def queue_id(row: HistoryRow) -> str | None:
    """The relay's queue id in an accepted row's reply, if it names one."""
    return relay_queue_id(row.reply) if row.state == ACCEPTED and row.reply else None
