"""State files are private whatever the umask, a state directory others can enter is tightened
or named, and a retry left by root reaches a daemon of another uid (or says why not)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import pytest
from structlog.testing import capture_logs

from kanidm_mail_sender.core.states import DEFERRED
from kanidm_mail_sender.errors import StateError
from kanidm_mail_sender.state.journal import Journal
from kanidm_mail_sender.state.retries import REQUESTS, RetryRequest, prepare_requests, submit_retry
from kanidm_mail_sender.state.status import publish

NOBODY = 65534


@pytest.fixture
def loose_umask() -> Iterator[None]:
    """The umask of a shell or a package's service (022): files would be world-readable."""
    before = os.umask(0o022)
    yield
    os.umask(before)


@pytest.fixture
def shared_root() -> Iterator[Path]:
    """A directory uid 65534 can enter (pytest's own tmp is root's 0700)."""
    if os.geteuid() != 0:
        pytest.skip("another uid's files need root")
    root = Path(tempfile.mkdtemp(prefix="privacy-"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.usefixtures("loose_umask")
async def test_every_state_file_is_private_under_umask_022(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    journal = Journal(state_dir)
    await journal.record(uuid4(), "a@example.com", DEFERRED, now=time.time(), reply="451 later")
    publish(state_dir, {"running": True})
    prepare_requests(state_dir)
    submit_retry(state_dir, RetryRequest(uuid4(), None, False))
    try:
        files = [p for p in state_dir.rglob("*") if p.is_file()]
        names = {p.name for p in files}
        assert {"journal.sqlite3", "journal.sqlite3-wal", "status.json", "lock"} <= names
        assert {p.name: _mode(p) for p in files} == dict.fromkeys(names, 0o600)
        assert _mode(state_dir) == 0o700
        assert _mode(state_dir / REQUESTS) == 0o700
        (secure,) = journal._writer.execute("PRAGMA secure_delete").fetchone()
        assert secure == 1
    finally:
        journal.close()


@pytest.mark.usefixtures("loose_umask")
def test_an_open_state_dir_of_ours_is_tightened_and_old_files_too(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o755)
    state_dir.chmod(0o755)
    (state_dir / "journal.sqlite3").touch(mode=0o644)
    with capture_logs() as logs:
        Journal(state_dir).close()
    assert _mode(state_dir) == 0o700
    assert _mode(state_dir / "journal.sqlite3") == 0o600
    (tightened,) = [e for e in logs if e["event"] == "state.tightened"]
    assert tightened["was"] == "0o755"


def test_an_open_state_dir_of_another_user_is_named(shared_root: Path) -> None:
    state_dir = shared_root / "state"
    state_dir.mkdir(mode=0o755)
    state_dir.chmod(0o755)
    os.chown(state_dir, NOBODY, NOBODY)
    with capture_logs() as logs:
        Journal(state_dir).close()
    assert _mode(state_dir) == 0o755  # not ours to change
    (exposed,) = [e for e in logs if e["event"] == "state.exposed"]
    assert f"chmod 0700 {state_dir}" in exposed["note"]


def test_a_retry_left_by_root_belongs_to_the_state_dir_s_owner(shared_root: Path) -> None:
    """``sudo kanidm-mail-sender retry`` beside a daemon of uid 65534: the request (and a
    ``requests/`` made now) is the daemon's, and the daemon can read it."""
    state_dir = shared_root / "state"
    state_dir.mkdir(mode=0o700)
    os.chown(state_dir, NOBODY, NOBODY)
    message = uuid4()
    left = submit_retry(state_dir, RetryRequest(message, "a@example.com", False))
    for path in (left, left.parent):
        assert (path.stat().st_uid, path.stat().st_gid) == (NOBODY, NOBODY)
    read = _as_nobody(f"print(open({str(left)!r}).read())")
    assert json.loads(read)["message_id"] == str(message)


def test_a_requests_dir_the_daemon_cannot_read_is_logged(shared_root: Path) -> None:
    """Made by root (an older sudo retry): the daemon says so once instead of ignoring it."""
    state_dir = shared_root / "state"
    state_dir.mkdir(mode=0o700)
    os.chown(state_dir, NOBODY, NOBODY)
    (state_dir / REQUESTS).mkdir(mode=0o700)  # root's
    script = f"""
import asyncio
from pathlib import Path
from structlog.testing import capture_logs
from kanidm_mail_sender.state.journal import Journal
from kanidm_mail_sender.state.retries import apply_retries
journal = Journal(Path({str(state_dir)!r}))
with capture_logs() as logs:
    asyncio.run(apply_retries(journal))
    asyncio.run(apply_retries(journal))
print(sorted(e["event"] for e in logs))
"""
    assert _as_nobody(script).strip() == "['operator.requests_unreadable']"


def test_a_request_that_cannot_be_left_is_a_clear_error(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    (state_dir / REQUESTS).write_text("not a directory")
    with pytest.raises(StateError, match="cannot leave the request for the daemon"):
        submit_retry(state_dir, RetryRequest(uuid4(), None, False))


def _as_nobody(code: str) -> str:
    """Run ``code`` as uid 65534, its imports done before the privileges go (root's Python
    lives where nobody cannot read)."""
    lines = code.strip().splitlines()
    imports = [line for line in lines if line.startswith(("import ", "from "))]
    rest = [line for line in lines if line not in imports]
    drop = f"os.setgroups([]); os.setgid({NOBODY}); os.setuid({NOBODY})"
    script = "\n".join(["import os", *imports, drop, *rest])
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout
