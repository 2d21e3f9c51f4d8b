"""The delivery journal: a SQLite file in the state directory that survives crashes.

For each (message id, destination) it records the relay's acceptance, permanent failures,
attempts and the next attempt time. Writes are group-committed in a worker thread with
``synchronous=FULL``: when ``await journal.accepted(...)`` returns, the row is on disk, so a
mail accepted by the relay is never sent again, whatever happens before mark-sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from uuid import UUID

from kanidm_mail_sender.core.states import ACCEPTED, DEFERRED, REJECTED, DestinationState, storable
from kanidm_mail_sender.errors import JournalFailed, StateError
from kanidm_mail_sender.state.lock import take_lock

__all__ = ["RETENTION_SECONDS", "STATES_BATCH", "Journal"]

# Kanidm deletes every message 7 days after creation; a day more covers clock skew.
RETENTION_SECONDS = 8 * 86400

_SCHEMA = """
CREATE TABLE IF NOT EXISTS delivery (
    message_id   TEXT NOT NULL,
    destination  TEXT NOT NULL,
    state        TEXT NOT NULL,
    attempts     INTEGER NOT NULL,
    next_attempt REAL,
    reply        TEXT,
    first_seen   REAL NOT NULL,
    updated      REAL NOT NULL,
    PRIMARY KEY (message_id, destination)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS delivery_first_seen ON delivery (first_seen);
"""
_UPSERT = """
INSERT INTO delivery (message_id, destination, state, attempts, next_attempt, reply,
                      first_seen, updated)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (message_id, destination) DO UPDATE SET
    state = excluded.state, attempts = excluded.attempts,
    next_attempt = excluded.next_attempt, reply = excluded.reply, updated = excluded.updated
"""


STATES_BATCH = 64
# A fixed number of placeholders and no data in the text.

_STATES_OF = (
    "SELECT message_id, destination, state, attempts, next_attempt, reply FROM delivery "  # noqa: S608
    f"WHERE message_id IN ({', '.join('?' * STATES_BATCH)})"
)


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    # Overwritten rows (an old reply, a destination) leave no bytes behind, on purpose rather
    # than by the build's default.
    conn.execute("PRAGMA secure_delete=ON")
    return conn


def _private_files(path: Path) -> None:
    """The journal and its -wal and -shm, 0600 whatever the umask: they hold every
    destination address and relay reply. SQLite gives -wal and -shm the database file's
    mode, so creating that one private is enough; files left by an older version are
    tightened."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        for name in (path.name, f"{path.name}-wal", f"{path.name}-shm"):
            found = path.with_name(name)
            if found.exists() and found.stat().st_mode & 0o077:
                found.chmod(0o600)
    except OSError as exc:
        raise StateError(f"{path}: cannot make the journal private ({exc.strerror})") from None


class Journal:
    """Durable per-destination delivery state, and the single-instance lock."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.path = state_dir / "journal.sqlite3"
        self._lock_fd = take_lock(state_dir)
        try:
            _private_files(self.path)
            self._writer = _connect(self.path)
            self._writer.executescript(_SCHEMA)
            self._reader = _connect(self.path)
        except StateError:
            os.close(self._lock_fd)
            raise
        except sqlite3.Error as exc:
            os.close(self._lock_fd)
            raise StateError(f"{self.path}: cannot open the delivery journal ({exc})") from None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="journal")
        self._pending: list[tuple[Any, ...]] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._flusher: asyncio.Task[None] | None = None

    def states(self, message_id: UUID) -> dict[str, DestinationState]:
        """Everything recorded for ``message_id``, keyed by destination."""
        return self.states_of([message_id]).get(message_id, {})

    def states_of(self, message_ids: list[UUID]) -> dict[UUID, dict[str, DestinationState]]:
        """``states`` for up to ``STATES_BATCH`` messages in one query (those with no row
        are left out): one query per batch of a poll instead of one per entry."""
        keys = {str(message_id): message_id for message_id in message_ids}
        if len(keys) > STATES_BATCH:
            raise ValueError(f"at most {STATES_BATCH} messages per call")
        # Always as many parameters, padded with an id no row has: one cached statement.
        padded = [*keys, *[""] * (STATES_BATCH - len(keys))]
        found: dict[UUID, dict[str, DestinationState]] = {}
        for key, destination, *state in self._reader.execute(_STATES_OF, padded):
            found.setdefault(keys[key], {})[destination] = DestinationState(*state)
        return found

    async def record(
        self,
        message_id: UUID,
        destination: str,
        state: str,
        *,
        now: float,
        attempts: int = 0,
        next_attempt: float | None = None,
        reply: str | None = None,
    ) -> None:
        """Write one row; returns once it is committed to disk, or raises StateError."""
        await asyncio.shield(
            self.submit(
                message_id,
                destination,
                state,
                now=now,
                attempts=attempts,
                next_attempt=next_attempt,
                reply=reply,
            )
        )

    def submit(
        self,
        message_id: UUID,
        destination: str,
        state: str,
        *,
        now: float,
        attempts: int = 0,
        next_attempt: float | None = None,
        reply: str | None = None,
    ) -> asyncio.Future[None]:
        """Queue one row for the next group commit; the future ends when it is on disk (or
        with StateError). The caller goes on meanwhile, so more rows share each commit."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._pending.append(
            (
                str(message_id),
                storable(destination),
                state,
                attempts,
                next_attempt,
                None if reply is None else storable(reply),
                now,
                now,
            )
        )
        self._waiters.append(waiter)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return waiter

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        batch: list[tuple[Any, ...]] = []
        waiters: list[asyncio.Future[None]] = []
        try:
            while self._pending:
                batch, waiters = self._pending, self._waiters
                self._pending, self._waiters = [], []
                failures = await loop.run_in_executor(self._executor, self._commit, batch)
                for index, waiter in enumerate(waiters):
                    if waiter.done():
                        continue
                    if index in failures:
                        waiter.set_exception(
                            JournalFailed(
                                f"{self.path}: writing the delivery journal failed "
                                f"({failures[index]}); stopping, since without it a mail could "
                                "be sent twice"
                            )
                        )
                    else:
                        waiter.set_result(None)
                batch, waiters = [], []
        except BaseException as exc:
            # Nothing may be left waiting for a writer that is gone.
            error = JournalFailed(f"{self.path}: the journal writer failed ({exc!r})")
            for waiter in [*waiters, *self._waiters]:
                if not waiter.done():
                    waiter.set_exception(error)
            self._pending, self._waiters = [], []
            if not isinstance(exc, Exception):
                raise

    def _commit(self, batch: list[tuple[Any, ...]]) -> dict[int, str]:
        """Commit ``batch`` in one transaction; if that fails, row by row, so one bad row
        never rolls back the others. Returns the rows that failed, with why."""
        try:
            self._commit_rows(batch)
        except (sqlite3.Error, ValueError) as exc:
            if len(batch) == 1:
                return {0: str(exc)}
        else:
            return {}
        failures: dict[int, str] = {}
        for index, row in enumerate(batch):
            try:
                self._commit_rows([row])
            except (sqlite3.Error, ValueError) as exc:
                failures[index] = str(exc)
        return failures

    def _commit_rows(self, rows: list[tuple[Any, ...]]) -> None:
        conn = self._writer
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(_UPSERT, rows)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    async def drain(self, within: float | None = None) -> None:
        """Wait until every pending write is committed, or ``within`` seconds."""
        flusher = self._flusher
        if flusher is None or flusher.done():
            return
        await asyncio.wait([flusher], timeout=within)

    def prune(self, now: float) -> int:
        """Forget rows older than Kanidm's retention; returns how many went."""
        cursor = self._writer.execute(
            "DELETE FROM delivery WHERE first_seen < ?", (now - RETENTION_SECONDS,)
        )
        return cursor.rowcount

    def recent_sends(self, since: float) -> list[float]:
        """When each destination's last attempt that reached the relay ended, since ``since``.

        For the sending limits after a restart; an earlier deferred attempt of the same
        destination is not kept, and counts no more.
        """
        rows = self._reader.execute(
            "SELECT updated FROM delivery WHERE updated >= ? AND state IN (?, ?, ?)",
            (since, ACCEPTED, REJECTED, DEFERRED),
        ).fetchall()
        return [row[0] for row in rows]

    def close(self, *, wait: bool = True) -> None:
        """Close the database and release the lock; ``wait=False`` does not wait for a
        commit under way (a stop after a writer failure)."""
        if self._lock_fd < 0:
            return
        busy = self._flusher is not None and not self._flusher.done()
        self._executor.shutdown(wait=wait and not busy)
        for conn in (self._reader, self._writer):
            with contextlib.suppress(sqlite3.Error):
                conn.close()
        os.close(self._lock_fd)
        self._lock_fd = -1
