"""The journal's read-only view: refusals leave no connection behind."""

from __future__ import annotations

import gc
import sqlite3
import warnings
from pathlib import Path

import pytest

from kanidm_mail_sender.errors import StateError
from kanidm_mail_sender.state.view import JournalView


def test_a_journal_without_its_table_is_refused_and_closed(tmp_path: Path) -> None:
    """A daemon that has just created the file has no table yet; Python 3.13 warns about a
    connection left to the garbage collector (3.11 is silent), so the warning is caught."""
    sqlite3.connect(tmp_path / "journal.sqlite3").close()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(StateError, match="cannot read the delivery journal"):
            JournalView(tmp_path)
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]


def test_a_relative_state_dir_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with sqlite3.connect(tmp_path / "journal.sqlite3") as conn:
        conn.execute("CREATE TABLE delivery (message_id TEXT)")
    conn.close()
    monkeypatch.chdir(tmp_path.parent)
    view = JournalView(Path(tmp_path.name))
    view.close()
