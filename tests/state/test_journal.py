"""The delivery journal: durable, locked, pruned, read in batches, and clear when it cannot
be written."""

from __future__ import annotations

import time
from pathlib import Path
from uuid import uuid4

import pytest

from kanidm_mail_sender.core.states import ACCEPTED, DEFERRED, REJECTED
from kanidm_mail_sender.errors import AlreadyRunning, StateError
from kanidm_mail_sender.state.journal import RETENTION_SECONDS, STATES_BATCH, Journal


async def test_journal_is_durable_locked_and_pruned(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "state")
    message = uuid4()
    old = uuid4()
    await journal.record(message, "a@example.com", ACCEPTED, now=time.time(), reply="250 ok")
    await journal.record(old, "b@example.com", ACCEPTED, now=time.time() - RETENTION_SECONDS - 1)
    with pytest.raises(AlreadyRunning, match="already uses"):
        Journal(tmp_path / "state")
    assert journal.prune(time.time()) == 1
    journal.close()
    reopened = Journal(tmp_path / "state")
    assert reopened.states(message)["a@example.com"].reply == "250 ok"
    assert reopened.states(old) == {}
    reopened.close()


def test_unwritable_state_dir_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StateError, match="not writable"):
        Journal(blocker / "state")


async def test_states_of_reads_many_messages_in_one_query(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    try:
        ids = [uuid4() for _ in range(STATES_BATCH)]
        await journal.record(ids[0], "a@example.com", ACCEPTED, now=1.0, attempts=1)
        await journal.record(ids[0], "b@example.com", DEFERRED, now=1.0, attempts=2)
        await journal.record(ids[-1], "c@example.com", REJECTED, now=1.0, reply="550 no")
        found = journal.states_of(ids)
        assert set(found) == {ids[0], ids[-1]}
        assert found[ids[0]] == journal.states(ids[0])
        assert found[ids[-1]]["c@example.com"].reply == "550 no"
        assert journal.states_of([]) == {}
        with pytest.raises(ValueError, match="at most"):
            journal.states_of([*ids, uuid4()])
    finally:
        journal.close()
