"""A read-only view of the delivery journal, for the operator commands."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from kanidm_mail_sender.errors import StateError

__all__ = ["HistoryRow", "JournalView"]


@dataclass(frozen=True, slots=True)
class HistoryRow:
    """One (message, destination) as the journal has it."""

    message_id: str
    destination: str
    state: str
    attempts: int
    next_attempt: float | None
    reply: str | None
    first_seen: float
    updated: float


_HISTORY = """
SELECT message_id, destination, state, attempts, next_attempt, reply, first_seen, updated
FROM delivery
WHERE (? IS NULL OR message_id = ?) AND (? IS NULL OR state = ?)
  AND (? IS NULL OR lower(destination) = lower(?)) AND (? IS NULL OR updated >= ?)
ORDER BY updated DESC
"""


class JournalView:
    """A read-only look at the journal, safe while the daemon writes (SQLite WAL readers)."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "journal.sqlite3"
        if not self.path.is_file():
            raise StateError(
                f"{self.path}: no delivery journal; has the daemon run with this state_dir?"
            )
        try:
            self._conn = sqlite3.connect(
                f"{self.path.absolute().as_uri()}?mode=ro", uri=True, timeout=5
            )
        except sqlite3.Error as exc:
            raise StateError(f"{self.path}: cannot read the delivery journal ({exc})") from None
        try:
            self._conn.execute("SELECT 1 FROM delivery LIMIT 1").fetchall()
        except sqlite3.Error as exc:
            self._conn.close()  # a journal without its table yet: nothing is left open
            raise StateError(f"{self.path}: cannot read the delivery journal ({exc})") from None

    def rows(
        self,
        *,
        message_id: str | None = None,
        state: str | None = None,
        since: float | None = None,
        destination: str | None = None,
    ) -> list[HistoryRow]:
        """Rows matching every given filter, newest first."""
        args = (message_id, message_id, state, state, destination, destination, since, since)
        try:
            found = self._conn.execute(_HISTORY, args).fetchall()
        except sqlite3.Error as exc:
            raise StateError(f"{self.path}: cannot read the delivery journal ({exc})") from None
        return [HistoryRow(*row) for row in found]

    def counts(self, since: float) -> dict[str, int]:
        """Rows per state updated since ``since``."""
        try:
            found = self._conn.execute(
                "SELECT state, count(*) FROM delivery WHERE updated >= ? GROUP BY state",
                (since,),
            ).fetchall()
        except sqlite3.Error as exc:
            raise StateError(f"{self.path}: cannot read the delivery journal ({exc})") from None
        return dict(found)

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()
